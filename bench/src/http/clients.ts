/**
 * Many concurrent HTTP clients (figures 9 and 12), run by the bench in a
 * child process of its own so that the client side has its own event loop
 * and is not starved by the measuring process. Started by
 * http/processes.ts with an IPC channel: it gets {@link ClientsJob}, sends
 * {@link ClientsResult} back, and exits (also when the channel closes).
 *
 * Each client is one `node:http` GET on a connection of its own (an agent
 * without keep-alive and without a socket limit); all requests are issued in
 * the same turn of the event loop, at `t0`. Every time is in ms since `t0`.
 * The body is counted and dropped.
 */
import { Agent, get } from 'node:http';

export interface ClientsJob {
  urls: string[];
  /** A client not done after this many ms is aborted and reported with an error. */
  timeoutMs: number;
}

/** One client's view. Times are ms since the burst started (t0); null when it never got there. */
export interface ClientTiming {
  url: string;
  status: number | null;
  bytes: number;
  /** Content-Length announced, if any. */
  expected: number | null;
  headersMs: number | null;
  firstByteMs: number | null;
  lastByteMs: number | null;
  error?: string;
}

export interface ClientsResult {
  clients: ClientTiming[];
}

function runOne(agent: Agent, url: string, t0: number, timeoutMs: number): Promise<ClientTiming> {
  const timing: ClientTiming = { url, status: null, bytes: 0, expected: null, headersMs: null, firstByteMs: null, lastByteMs: null };
  return new Promise((resolve) => {
    let settled = false;
    const finish = (error?: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (error !== undefined) timing.error = error.message;
      resolve(timing);
    };
    const request = get(url, { agent }, (res) => {
      timing.headersMs = performance.now() - t0;
      timing.status = res.statusCode ?? null;
      const length = res.headers['content-length'];
      if (length !== undefined) timing.expected = Number(length);
      res.on('data', (chunk: Buffer) => {
        if (timing.firstByteMs === null) timing.firstByteMs = performance.now() - t0;
        timing.bytes += chunk.length;
      });
      res.on('end', () => {
        timing.lastByteMs = performance.now() - t0;
        finish(res.complete ? undefined : new Error('the response ended before its last byte'));
      });
      res.on('error', (error) => finish(error));
      res.on('aborted', () => finish(new Error('the response was aborted')));
    });
    request.on('error', (error) => finish(error));
    const timer = setTimeout(() => {
      finish(new Error(`not done after ${timeoutMs} ms`));
      request.destroy();
    }, timeoutMs);
  });
}

process.once('message', (message: ClientsJob) => {
  const agent = new Agent({ keepAlive: false, maxSockets: Infinity });
  const t0 = performance.now();
  void Promise.all(message.urls.map((url) => runOne(agent, url, t0, message.timeoutMs))).then((clients) => {
    const result: ClientsResult = { clients };
    process.send?.(result, () => process.exit(0));
  });
});
process.on('disconnect', () => process.exit(0));
