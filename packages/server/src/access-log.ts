import type { ServerResponse } from 'node:http';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { BypassReason, Fill } from '@cache/core';
import { pino, type DestinationStream, type Logger } from 'pino';

/**
 * Where the access log goes: `true` for stdout, a file path (appended to,
 * created if missing), or a pino destination (any `{ write(line) }`).
 */
export type AccessLogDestination = true | string | DestinationStream;

/**
 * How an image request was served: from the cache (`HIT`), from a fill this
 * request started (`MISS`), from a fill another request or process had
 * started (`FILL-WAIT`), from a fill this request started that reads a peer
 * node's copy instead of the origin (`PEER`, cluster nodes only).
 */
export type CacheStatus = 'HIT' | 'MISS' | 'FILL-WAIT' | 'PEER';

/** One line of the access log (besides pino's `level`, `time` and `msg`). */
export interface AccessLogEntry {
  /** The image id of `/images/:id`, else `null`. */
  id: string | null;
  /** How an image request was served (see {@link CacheStatus}); `null` for other routes or before the cache was asked. */
  cache: CacheStatus | null;
  status: number;
  /** Body bytes handed to the connection (headers not counted). */
  bytes: number;
  /** The request's `Range` header, or `null`. */
  range: string | null;
  /** Milliseconds from the request's arrival to the end of its response. */
  ms: number;
  method: string;
  /** The client's IP address. */
  client: string;
  /** The path and query. */
  url: string;
  /** False when the response ended before its last byte (the client left, or the body was cut). */
  complete: boolean;
  /**
   * Why the image was served uncached by the space policy (ADR 0006), else
   * `null`: the `x-cache-bypass` header's reason, or, for a miss whose fill
   * outgrew the budget after its headers were sent (an origin response
   * without a length), the reason the fill passed the rest through.
   */
  bypass: BypassReason | null;
}

/** Requests of a miss that joined a fill another request (or process) had started. */
const joinedFills = new WeakSet<FastifyRequest>();

/** Requests of a miss served from a fill that reads from a peer node. */
const peerFills = new WeakSet<FastifyRequest>();

/** The fill a miss request streams from: its outcome says whether it was passed through uncached. */
const streamedFills = new WeakMap<FastifyRequest, Fill>();

/** Records the fill `request` streams from (its access log line says `bypass` when the fill stopped caching mid-way). */
export function markFill(request: FastifyRequest, fill: Fill): void {
  streamedFills.set(request, fill);
}

/** Marks `request` as served from a peer node's copy: its access log says `PEER` (unless it joined a fill: `FILL-WAIT`). */
export function markPeer(request: FastifyRequest): void {
  peerFills.add(request);
}

/** Marks `request` as having joined a fill it did not start: its access log says `FILL-WAIT`, not `MISS`. */
export function markFillWait(request: FastifyRequest): void {
  joinedFills.add(request);
}

/** The access log's logger, and how to close it. */
export interface AccessLog {
  logger: Logger;
  /** Flushes; closes the file this module opened (never stdout, never a destination the caller gave). */
  close(): void;
}

/** The pino logger of the access log, writing to `destination` (synchronously: no line is lost when the process exits). */
export function accessLogger(destination: AccessLogDestination): AccessLog {
  const file = typeof destination === 'string' ? pino.destination({ dest: destination, sync: true, append: true, mkdir: true }) : undefined;
  const stream = destination === true ? pino.destination({ dest: 1, sync: true }) : (file ?? (destination as DestinationStream));
  const logger = pino({ base: null, timestamp: pino.stdTimeFunctions.isoTime, formatters: { level: (label) => ({ level: label }) } }, stream);
  let closed = false;
  return {
    logger,
    close() {
      if (closed) return;
      closed = true;
      if (destination === true || file !== undefined) logger.flush();
      file?.end();
    },
  };
}

/**
 * Writes one {@link AccessLogEntry} per request to `logger` once its
 * response has ended: finished, or closed early (`complete: false`).
 */
export function installAccessLog(app: FastifyInstance, logger: Logger): void {
  app.addHook('onRequest', async (request, reply) => {
    const raw = reply.raw;
    const counter = countBodyBytes(raw);
    raw.once('close', () => {
      // Fastify keeps its headers until it writes them (with writeHead, which leaves the raw response's own map empty).
      const header = reply.getHeader('x-cache') ?? raw.getHeader('x-cache');
      const xCache = typeof header === 'string' ? header : undefined;
      const params = request.params as { id?: unknown } | undefined;
      const bypassHeader = reply.getHeader('x-cache-bypass') ?? raw.getHeader('x-cache-bypass');
      const outcome = streamedFills.get(request)?.outcome;
      const entry: AccessLogEntry = {
        id: request.routeOptions.url === '/images/:id' && typeof params?.id === 'string' ? params.id : null,
        cache:
          xCache === 'MISS' && joinedFills.has(request) ? 'FILL-WAIT' : xCache === 'MISS' && peerFills.has(request) ? 'PEER' : xCache === 'HIT' || xCache === 'MISS' ? xCache : null,
        status: raw.statusCode,
        bytes: counter(),
        range: typeof request.headers.range === 'string' ? request.headers.range : null,
        ms: Math.round(reply.elapsedTime * 1000) / 1000,
        method: request.method,
        client: request.ip,
        url: request.url,
        complete: raw.writableFinished,
        bypass: typeof bypassHeader === 'string' ? (bypassHeader as BypassReason) : outcome?.status === 'bypassed' ? outcome.reason : null,
      };
      try {
        logger.info(entry, 'request');
      } catch (error) {
        // A line after close() (its file is closed) or a destination that throws: the response is over either way.
        app.log.warn({ err: error }, 'access log line not written');
      }
    });
  });
}

/** Counts the body bytes written to `response` (a HEAD response's body is never sent, so it counts 0). */
function countBodyBytes(response: ServerResponse): () => number {
  let bytes = 0;
  const count = (chunk: unknown, encoding: unknown) => {
    if (typeof chunk === 'string') bytes += Buffer.byteLength(chunk, typeof encoding === 'string' ? (encoding as BufferEncoding) : 'utf8');
    else if (chunk instanceof Uint8Array) bytes += chunk.byteLength;
  };
  const write = response.write;
  const end = response.end;
  response.write = function (this: ServerResponse, chunk: unknown, ...rest: unknown[]) {
    count(chunk, rest[0]);
    return (write as (...args: unknown[]) => boolean).call(this, chunk, ...rest);
  } as ServerResponse['write'];
  response.end = function (this: ServerResponse, chunk?: unknown, ...rest: unknown[]) {
    if (typeof chunk !== 'function') count(chunk, rest[0]);
    return (end as (...args: unknown[]) => ServerResponse).call(this, chunk, ...rest);
  } as ServerResponse['end'];
  return () => (response.req.method === 'HEAD' ? 0 : bytes);
}
