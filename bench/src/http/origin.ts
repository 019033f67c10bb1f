/**
 * The throttled origin of the HTTP figures (9-12), run by the bench in a
 * child process of its own so that its pacing is not disturbed by the
 * measuring process (started by http/processes.ts with an IPC channel; it
 * exits when that channel closes, i.e. when the bench process is gone).
 *
 * `GET /images/<id>?size=<bytes>&rate=<bytes per second>` answers 200 with
 * `Content-Length: size` (no digest) and incompressible bytes (one random
 * 1 MiB block repeated), paced per request: by t seconds after the status
 * line at most `rate × t` bytes have been written. Writes respect the
 * socket's backpressure, so a reader slower than the rate slows the origin
 * down, as a real network origin would. `Range` is ignored (always 200).
 *
 * `GET /_stats?id=<id>` answers the requests made for `id` so far (JSON
 * {@link OriginIdStats}): bytes the origin wrote into the socket (counted in
 * the write callbacks) and, per request, when it started and how long the
 * origin took from its status line to its last byte (its own send time).
 *
 * On start it sends `{ port }` over the IPC channel.
 */
import { randomFillSync } from 'node:crypto';
import { createServer, type ServerResponse } from 'node:http';

/** One request for an id, as the origin saw it. */
export interface OriginRequestStats {
  /** ms since the origin process started (performance.now()) when the status line was written. */
  startedAt: number;
  /** Bytes of the body written into the socket. */
  bytes: number;
  /** Status line to the callback of the last byte's write, ms; null while sending, or when the client left first. */
  sendMs: number | null;
  /** The client closed the connection before the last byte. */
  aborted: boolean;
}

/** What `/_stats?id=` answers. */
export interface OriginIdStats {
  id: string;
  /** Body bytes written for this id over all its requests. */
  bytes: number;
  requests: OriginRequestStats[];
}

const MiB = 1024 * 1024;
/** Bytes per write: small enough that the pacing is smooth (at 32 MiB/s, one write every 2 ms). */
const WRITE_BYTES = 64 * 1024;
const block = randomFillSync(Buffer.allocUnsafe(MiB));
const stats = new Map<string, OriginIdStats>();

function statsOf(id: string): OriginIdStats {
  let entry = stats.get(id);
  if (entry === undefined) {
    entry = { id, bytes: 0, requests: [] };
    stats.set(id, entry);
  }
  return entry;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** The bytes [offset, offset + length) of the image: the random block, repeated. */
function slice(offset: number, length: number): Buffer {
  const at = offset % MiB;
  if (at + length <= MiB) return block.subarray(at, at + length);
  return Buffer.concat([block.subarray(at), block.subarray(0, length - (MiB - at))]);
}

async function send(res: ServerResponse, id: string, size: number, rate: number): Promise<void> {
  const entry = statsOf(id);
  const request: OriginRequestStats = { startedAt: performance.now(), bytes: 0, sendMs: null, aborted: false };
  entry.requests.push(request);
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(size) });
  const start = performance.now();
  let queued = 0;
  let closed = false;
  res.on('close', () => {
    closed = true;
    if (request.bytes < size) request.aborted = true;
  });
  const written = (length: number) => (error?: Error | null) => {
    if (error !== undefined && error !== null) return;
    request.bytes += length;
    entry.bytes += length;
  };
  while (queued < size && !closed) {
    const due = rate === Infinity ? size : Math.min(size, Math.floor(((performance.now() - start) / 1000) * rate));
    if (due <= queued) {
      // The next write is due when the clock has paid for it.
      const next = Math.min(size, queued + WRITE_BYTES);
      await sleep(Math.max(1, ((next / rate) * 1000) - (performance.now() - start)));
      continue;
    }
    let ok = true;
    while (queued < due && ok) {
      const length = Math.min(WRITE_BYTES, due - queued);
      ok = res.write(slice(queued, length), written(length));
      queued += length;
    }
    if (!ok && !closed) await new Promise<void>((resolve) => {
      const done = () => {
        res.off('drain', done);
        res.off('close', done);
        resolve();
      };
      res.on('drain', done);
      res.on('close', done);
    });
  }
  if (closed) return;
  res.end(() => {
    request.sendMs = performance.now() - start;
  });
}

const server = createServer((req, res) => {
  const url = new URL(req.url ?? '/', 'http://origin');
  if (url.pathname === '/_stats') {
    const id = url.searchParams.get('id') ?? '';
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(stats.get(id) ?? { id, bytes: 0, requests: [] }));
    return;
  }
  const match = /^\/images\/([^/]+)$/.exec(url.pathname);
  const size = Number(url.searchParams.get('size'));
  const rateParam = url.searchParams.get('rate');
  const rate = rateParam === null ? Infinity : Number(rateParam);
  if (match === null || !Number.isSafeInteger(size) || size < 0 || !(rate > 0)) {
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('expected /images/<id>?size=<bytes>[&rate=<bytes/s>]\n');
    return;
  }
  const id = decodeURIComponent(match[1] as string);
  if (req.method === 'HEAD') {
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(size) });
    res.end();
    return;
  }
  send(res, id, size, rate).catch((error: unknown) => {
    process.stderr.write(`bench origin: ${(error as Error).message}\n`);
    res.destroy();
  });
});
server.keepAliveTimeout = 5_000;

server.listen(0, '127.0.0.1', () => {
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  process.send?.({ port: address.port });
});
// The bench process is gone (or done with us): stop.
process.on('disconnect', () => process.exit(0));
