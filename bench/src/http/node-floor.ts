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
 *   `readSync` of the whole file into a new buffer, `closeSync`, then
 *   `res.end(buffer)` with the headers nginx sends (Content-Type,
 *   Content-Length, Last-Modified, ETag, Accept-Ranges): one `write` of
 *   headers and body;
 * - a larger one: `fs.createReadStream(path, { highWaterMark: 1 MiB })`
 *   piped into the response (Node has no `sendfile`).
 *
 * Usage: `node node-floor.js <dir> <workers>`; sends `{ port }` over the IPC
 * channel once every worker listens.
 */
import cluster from 'node:cluster';
import { closeSync, createReadStream, fstatSync, openSync, readSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';

/** Files up to this size are read whole and sent with one `res.end(buffer)`. */
export const WHOLE_READ_BYTES = 1024 * 1024;
const CHUNK = 1024 * 1024;

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
      const buffer = Buffer.allocUnsafe(stat.size);
      let read = 0;
      while (read < buffer.length) {
        const n = readSync(fd, buffer, read, buffer.length - read, read);
        if (n === 0) break;
        read += n;
      }
      closeSync(fd);
      res.writeHead(200, headers).end(read === buffer.length ? buffer : buffer.subarray(0, read));
      return;
    }
    res.writeHead(200, headers);
    createReadStream('', { fd, highWaterMark: CHUNK }).pipe(res);
  });
  server.keepAliveTimeout = 65_000;
  server.listen(0, '127.0.0.1', () => {
    const address = server.address();
    process.send?.({ port: typeof address === 'object' && address !== null ? address.port : 0 });
  });
}
