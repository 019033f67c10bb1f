/**
 * The Node floor of figure 16: the least a Node.js server can do to answer a
 * hit, run by the bench in a child process of its own (started by
 * http/processes.ts with an IPC channel; it exits when that channel closes).
 *
 * The same process shape as `image-cache serve --workers N`: a node:cluster
 * primary and N workers sharing one port (the primary hands connections out
 * round-robin, Node's default on Linux), each a bare `node:http` server.
 * `GET /images/<id>` answers the file `<dir>/<id>` (the same active files
 * nginx serves) with no cache logic at all: no id check beyond refusing a
 * `/`, no metadata, no hit counting, no metrics, no logs, no framework.
 *
 * - a file of at most {@link WHOLE_READ_BYTES}: `openSync`, `fstatSync`,
 *   `readSync` of the whole file, `closeSync`, then `res.end(buffer)` with
 *   the headers nginx sends (Content-Type, Content-Length, Last-Modified,
 *   ETag, Accept-Ranges): one `write` of headers and body;
 * - a larger one: `fs.read` of 1 MiB at a time, each chunk written with
 *   `res.write(chunk, callback)`, the read paused while the response is
 *   full (Node has no `sendfile`).
 *
 * Buffers above 64 KiB come from a pool of 1 MiB buffers and go back to it
 * once the response has finished (whole reads) or the socket has written
 * the chunk (streamed ones): a fresh 1 MiB buffer per response costs more
 * CPU than the read itself, and the floor must be the best a Node server
 * can do, not a naive one (our server pools its read chunks the same way).
 *
 * Usage: `node node-floor.js <dir> <workers>`; sends `{ port }` over the IPC
 * channel once every worker listens.
 */
import cluster from 'node:cluster';
import { close, closeSync, fstatSync, openSync, read, readSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';

/** Files up to this size are read whole and sent with one `res.end(buffer)`. */
export const WHOLE_READ_BYTES = 1024 * 1024;
const CHUNK = 1024 * 1024;
/** Reads above this size use a pooled {@link CHUNK} buffer. */
const POOLED = 64 * 1024;
const pool: Buffer[] = [];
const take = (size: number) => (size > POOLED ? (pool.pop() ?? Buffer.allocUnsafeSlow(CHUNK)) : Buffer.allocUnsafe(size));
const give = (buffer: Buffer) => {
  if (buffer.length === CHUNK && pool.length < 32) pool.push(buffer);
};

/** Sends `size` bytes of `fd` from pooled chunks, each back in the pool once the socket has written it; closes `fd`. */
function stream(fd: number, size: number, res: import('node:http').ServerResponse): void {
  let position = 0;
  let reading = false;
  let done = false;
  const finish = () => {
    if (done) return;
    done = true;
    close(fd, () => undefined);
  };
  const next = () => {
    if (reading || done) return;
    if (position >= size) {
      finish();
      res.end();
      return;
    }
    reading = true;
    const chunk = take(CHUNK);
    read(fd, chunk, 0, Math.min(CHUNK, size - position), position, (error, bytes) => {
      reading = false;
      if (res.destroyed) {
        give(chunk);
        finish();
        return;
      }
      if (error !== null || bytes === 0) {
        give(chunk);
        finish();
        res.destroy(error ?? undefined);
        return;
      }
      position += bytes;
      // One chunk read ahead while the socket writes the last (as a piped stream's buffer does).
      if (res.write(bytes === CHUNK ? chunk : chunk.subarray(0, bytes), () => give(chunk)) || res.writableLength <= CHUNK) next();
    });
  };
  res.on('drain', next);
  // Not while a read is in flight (its callback closes the file): the descriptor could be reused under it.
  res.once('close', () => {
    if (!reading) finish();
  });
  next();
}

const [dir = '', workersArg = '1'] = process.argv.slice(2);

if (cluster.isPrimary) {
  const workers = Math.max(1, Number(workersArg));
  let listening = 0;
  for (let i = 0; i < workers; i++) {
    const worker = cluster.fork();
    worker.on('message', (message: { port: number }) => {
      if (++listening === workers) process.send?.({ port: message.port });
    });
    worker.on('exit', () => {
      // A worker gone is a broken floor: stop, the bench sees the exit.
      if (process.connected) process.disconnect();
      process.exitCode = 1;
      for (const other of Object.values(cluster.workers ?? {})) other?.kill('SIGKILL');
    });
  }
  process.on('disconnect', () => {
    for (const worker of Object.values(cluster.workers ?? {})) worker?.kill('SIGKILL');
    process.exit(0);
  });
} else {
  const server = createServer((req, res) => {
    const url = req.url ?? '';
    const id = url.startsWith('/images/') ? decodeURIComponent(url.slice('/images/'.length)) : '';
    if (id === '' || id.includes('/') || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(404, { 'content-length': 0 }).end();
      return;
    }
    const path = join(dir, id);
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch {
      res.writeHead(404, { 'content-length': 0 }).end();
      return;
    }
    const stat = fstatSync(fd);
    const headers = {
      'content-type': 'application/octet-stream',
      'content-length': stat.size,
      'last-modified': stat.mtime.toUTCString(),
      etag: `"${Math.floor(stat.mtimeMs / 1000).toString(16)}-${stat.size.toString(16)}"`,
      'accept-ranges': 'bytes',
    };
    if (req.method === 'HEAD') {
      closeSync(fd);
      res.writeHead(200, headers).end();
      return;
    }
    if (stat.size <= WHOLE_READ_BYTES) {
      const whole = take(stat.size);
      const buffer = whole.subarray(0, stat.size);
      let done = 0;
      while (done < buffer.length) {
        const n = readSync(fd, buffer, done, buffer.length - done, done);
        if (n === 0) break;
        done += n;
      }
      closeSync(fd);
      res.once('close', () => give(whole));
      res.writeHead(200, headers).end(done === buffer.length ? buffer : buffer.subarray(0, done));
      return;
    }
    res.writeHead(200, headers);
    stream(fd, stat.size, res);
  });
  server.keepAliveTimeout = 65_000;
  server.listen(0, '127.0.0.1', () => {
    const address = server.address();
    process.send?.({ port: typeof address === 'object' && address !== null ? address.port : 0 });
  });
}
