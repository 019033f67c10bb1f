import type { IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import { Readable } from 'node:stream';
import {
  CacheStorageError,
  ImageChangedError,
  ImageNotCachedError,
  assertImageId,
  parseStoredChecksum,
  type Fill,
  type FillAnnouncement,
  type ImageId,
} from '@cache/core';
import { READ_CHUNK_SIZE, releaseReadChunk } from '@cache/core/driver';
import type { Origin } from '@cache/origin';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import parseRange from 'range-parser';
import { markFill, markFillWait, markPeer } from '../access-log.js';
import { PEER_HEADER } from '../cluster.js';
import type { ServerContext } from '../context.js';
import { digestEtag, ifRangeAllows, isNotModified, statEntry, type EntryInfo } from '../entry.js';
import { originFill, untilVerdict } from '../fill.js';
import type { HitBatch } from '../hit-batch.js';
import { HttpError } from '../http-errors.js';
import type { ByteSource } from '../metrics.js';
import { responseBody, sendCacheRead } from '../response-body.js';

type ImageRequest = FastifyRequest<{ Params: { id: string } }>;

/**
 * What a serving step did: `sent` (the reply is on its way) or `retry` (it
 * lost a race with a delete or replace: start over). Steps never return the
 * reply itself: a fastify reply is a thenable that settles when the response
 * has been sent, so returning it from an async function would wait for that.
 */
type Served = 'sent' | 'retry';

/** Times a request starts over after losing a race (an entry deleted or replaced under it) before giving up. */
const MAX_ATTEMPTS = 5;

/** The byte range a request gets: all of it, one range, or none (416). */
type RangePlan = { kind: 'full' } | { kind: 'partial'; start: number; end: number } | { kind: 'unsatisfiable' };

/**
 * `GET` and `HEAD /images/:id`: served from the cache when cached (with
 * ETag, Last-Modified, a single byte range, 304), else read from the id's
 * fill (ADR 0003) as it is fetched and cached: one origin request per id
 * per host, every client a reader at its own pace, a range answered 206 as
 * soon as the fill passes its start.
 */
export async function imageRoutes(app: FastifyInstance, context: ServerContext): Promise<void> {
  app.route({
    method: ['GET', 'HEAD'],
    url: IMAGE_ROUTE,
    handler: async (request: ImageRequest, reply) => {
      const work = serveImage(context, request, reply);
      context.track(work);
      await work;
      return reply;
    },
  });
}

/** The route of images, as fastify knows it and as `image_cache_http_request_duration_seconds` labels it. */
const IMAGE_ROUTE = '/images/:id';
const IMAGE_PATH_PREFIX = '/images/';
/** Ids a direct hit takes from the path as they are: nothing to decode, nothing fastify's router would read otherwise. */
const PLAIN_ID = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}$/;
const DIRECT_HIT_LABELS = { method: 'GET', route: IMAGE_ROUTE, status_code: '200' } as const;

/**
 * The plain hit answered on `node:http`, below fastify
 * ({@link CacheServerOptions.directHits}, ADR 0008): without fastify's
 * routing, request and reply objects and hooks, a 64 KiB hit costs about
 * 5 % less CPU (9 % more hits per second on one worker). Takes the request
 * (returns true) only when the route would send a 200 with the whole body
 * of an entry this process remembers, of at most one read chunk, with
 * batched hits: a `GET /images/<id>` with a plain id
 * and no query, no `Range`, `If-None-Match` or `If-Modified-Since`, no
 * request body, while the server is not draining and the metadata store is
 * not failing. It then sends what {@link serveHit} sends for it (status,
 * headers, body, the hit in the batch, the same metrics), or, when the
 * entry fails to open (deleted, replaced, or a storage error), calls
 * `fallback(req, res)`: fastify's route answers the request and says why.
 * Returns false, having touched nothing, for every other request.
 */
export function directHit(
  context: ServerContext,
  req: IncomingMessage,
  res: ServerResponse,
  fallback: (req: IncomingMessage, res: ServerResponse) => void,
): boolean {
  const batch = context.hits;
  const url = req.url;
  if (batch === undefined || req.method !== 'GET' || url === undefined || !url.startsWith(IMAGE_PATH_PREFIX)) return false;
  const headers = req.headers;
  if (headers.range !== undefined || headers['if-none-match'] !== undefined || headers['if-modified-since'] !== undefined) return false;
  if (headers['content-length'] !== undefined || headers['transfer-encoding'] !== undefined) return false;
  if (context.drainSignal.aborted || context.readiness.metadataFailing) return false;
  const id = url.slice(IMAGE_PATH_PREFIX.length);
  if (!PLAIN_ID.test(id)) return false;
  // Only ids a stat has described (valid, active, not degraded) are remembered; the open checks it is still that file.
  const entry = context.entries.get(id);
  if (entry === undefined || entry.size === 0 || entry.size > WHOLE_BODY_BYTES) return false;
  const started = performance.now();
  const work = sendDirectHit(context, batch, res, id, entry, started).then(
    (sent) => {
      if (!sent) fallback(req, res);
    },
    () => fallback(req, res),
  );
  context.track(work);
  return true;
}

async function sendDirectHit(context: ServerContext, batch: HitBatch, res: ServerResponse, id: ImageId, entry: EntryInfo, started: number): Promise<boolean> {
  const { metrics } = context;
  const length = entry.size;
  let data: Buffer;
  try {
    const source = await context.cache.openForRead(id, { identity: entry.identity, countHit: false });
    data = await readWhole(source, length);
  } catch (error) {
    if (ImageNotCachedError.isInstance(error) || ImageChangedError.isInstance(error)) context.entries.forget(id);
    return false; // the route opens it again, and answers the error or the file now there
  }
  metrics.hits.inc();
  metrics.servedBytes.inc(CACHE_SOURCE, length);
  batch.add(id, entry.identity);
  res.once('close', () => {
    releaseReadChunk(data);
    // As fastify's onResponse: once the response has finished (a client gone before that is not a response).
    if (res.writableFinished) metrics.requestDuration.observe(DIRECT_HIT_LABELS, (performance.now() - started) / 1000);
  });
  res.writeHead(200, { ...hitHeaders(entry), 'content-length': length });
  res.end(data);
  return true;
}

async function serveImage(context: ServerContext, request: ImageRequest, reply: FastifyReply): Promise<void> {
  const { id } = request.params;
  assertImageId(id);
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    // A GET that opens the file may use what an earlier request learned: the open checks it is still that file.
    let entry = attempt === 0 ? remembered(context, request, id) : undefined;
    if (entry === undefined) {
      entry = await statEntry(context.cache, id);
      if (entry?.degraded !== undefined) {
        context.readiness.metadataFailed(id, entry.degraded);
        request.log.warn({ err: entry.degraded, imageId: id }, 'metadata store failed; serving the cached file as it is');
      } else if (entry !== undefined) {
        context.readiness.metadataAnswered();
        context.entries.remember(id, entry);
      }
    }
    const served = entry !== undefined ? await serveHit(context, request, reply, id, entry) : await serveMiss(context, request, reply, id);
    if (served === 'sent') return;
  }
  throw new CacheStorageError(`image '${id}' kept changing while being served (deleted or replaced ${MAX_ATTEMPTS} times); retry`);
}

/**
 * The remembered entry of `id` when this request will open its file (a GET
 * that is not answered 304 by that entry's validators), else `undefined`.
 */
function remembered(context: ServerContext, request: ImageRequest, id: ImageId): EntryInfo | undefined {
  if (request.method !== 'GET') return undefined;
  // While the metadata store is known to fail, every hit is described from its file (degraded: its hit counted as
  // unrecorded, the driver's to drop or keep) and the first stat answered again ends it.
  if (context.readiness.metadataFailing) return undefined;
  const entry = context.entries.get(id);
  if (entry === undefined || isNotModified(request.headers, entry)) return undefined;
  return entry;
}

/** The headers of every image response: a miss's, and the first three of a hit's. */
function imageHeaders(xCache: 'HIT' | 'MISS'): Record<string, string> {
  return { 'content-type': 'application/octet-stream', 'accept-ranges': 'bytes', 'x-cache': xCache };
}

function setImageHeaders(reply: FastifyReply, xCache: 'HIT' | 'MISS'): void {
  reply.headers(imageHeaders(xCache));
}

/** The headers of every hit of `entry` (200, 206 and 304), on the route and on a direct hit alike. */
function hitHeaders(entry: EntryInfo): Record<string, string> {
  const headers = imageHeaders('HIT');
  headers.etag = entry.etag;
  headers['last-modified'] = entry.lastModifiedHeader;
  return headers;
}

function selectRange(request: ImageRequest, entry: EntryInfo): RangePlan {
  const header = request.headers.range;
  if (typeof header !== 'string' || !ifRangeAllows(request.headers, entry)) return { kind: 'full' };
  return planRange(header, entry.size);
}

/** One `Range` header against an image of `size` bytes. */
function planRange(header: string, size: number): RangePlan {
  const ranges = parseRange(size, header, { combine: true });
  if (ranges === -1) return { kind: 'unsatisfiable' };
  // Malformed, not bytes, or several disjoint ranges: ignore the header and send everything (RFC 9110 14.2 allows it).
  if (ranges === -2 || ranges.type !== 'bytes' || ranges.length !== 1) return { kind: 'full' };
  const range = ranges[0] as parseRange.Range;
  return { kind: 'partial', start: range.start, end: range.end };
}

function unsatisfiable(request: ImageRequest, size: number): HttpError {
  return new HttpError(416, 'RANGE_NOT_SATISFIABLE', `the range ${JSON.stringify(request.headers.range)} is outside the image's ${size} bytes`, {
    'content-range': `bytes */${size}`,
    'accept-ranges': 'bytes',
  });
}

async function serveHit(
  context: ServerContext,
  request: ImageRequest,
  reply: FastifyReply,
  id: ImageId,
  entry: EntryInfo,
): Promise<Served> {
  const { cache, metrics } = context;
  const head = request.method === 'HEAD';
  // Conditionals come before Range (RFC 9110 13.2.2): a matching If-None-Match is a 304 whatever the range.
  const notModified = isNotModified(request.headers, entry);
  const plan: RangePlan = notModified ? { kind: 'full' } : selectRange(request, entry);
  if (plan.kind === 'unsatisfiable') throw unsatisfiable(request, entry.size);

  const length = plan.kind === 'partial' ? plan.end - plan.start + 1 : entry.size;
  // A read that delivers the last byte (the whole image, or a range that reaches the end) counts a hit.
  const toEnd = plan.kind === 'full' || plan.end === entry.size - 1;
  // With a driver that takes batched hits, the read does not count its own: the server counts it in memory (HitBatch).
  // Not while the metadata store fails (a degraded entry): that read's hit is the driver's to drop or keep, as before.
  const batch = entry.degraded === undefined ? context.hits : undefined;
  let source: Readable | undefined;
  /** The whole body, when the read had it in memory (a small entry with batched hits). */
  let data: Buffer | undefined;
  if (!head && !notModified) {
    // Through the cache, pinned to the file the headers describe; counted even when the client closes right after.
    const range = plan.kind === 'partial' ? { start: plan.start, end: plan.end } : {};
    try {
      source = await cache.openForRead(id, { ...range, identity: entry.identity, countHit: batch === undefined });
    } catch (error) {
      if (ImageNotCachedError.isInstance(error) || ImageChangedError.isInstance(error)) {
        context.entries.forget(id);
        return 'retry'; // deleted or replaced since the stat
      }
      throw error;
    }
    // Core reads a small entry at open (ADR 0008), and a body of up to one read chunk in one read: its bytes go out
    // with the headers in one write, and the chunk goes back to core's pool once the response is done with it.
    if (batch !== undefined && length > 0 && length <= WHOLE_BODY_BYTES) data = await readWhole(source, length);
  }

  metrics.hits.inc();
  // A read that reaches the last byte is a hit for the driver (core's rule); with the metadata store failing it cannot record it now.
  if (source !== undefined && entry.degraded !== undefined && toEnd) metrics.hitsUnrecorded.inc();
  reply.headers(hitHeaders(entry));
  if (notModified) {
    reply.code(304).send();
    return 'sent';
  }
  reply.header('content-length', length);
  if (plan.kind === 'partial') {
    reply.code(206).header('content-range', `bytes ${plan.start}-${plan.end}/${entry.size}`);
  }
  if (source === undefined) {
    reply.send(); // HEAD
    return 'sent';
  }
  if (data !== undefined) {
    metrics.servedBytes.inc(CACHE_SOURCE, length);
    // Handed to the response whole: a read that reaches the end has delivered its last byte (core's hit rule).
    if (batch !== undefined && toEnd) batch.add(id, entry.identity);
    const body = data;
    // A response emits 'close' once finished (its last byte handed to the kernel) or once its connection is gone:
    // either way it no longer reads the chunk, and later reads may reuse it (cheaper than stream.finished's listeners).
    reply.raw.once('close', () => releaseReadChunk(body));
    reply.send(body);
    return 'sent';
  }
  if (batch !== undefined && toEnd) countHitAtLastByte(source, batch, id, entry.identity, length);
  // Written on the response itself, each chunk back to core's read pool once the socket has it.
  await sendCacheRead(reply, source, { expected: length, ...bodyReports(context, reply, 'cache') });
  return 'sent';
}

/**
 * Bodies up to this size are taken whole from the read and sent with one
 * `reply.send(buffer)`: core reads entries of up to 64 KiB at open, and a
 * larger body of at most one read chunk (1 MiB) in one `fs.read` into a
 * pooled buffer, released when the response is done with it.
 */
const WHOLE_BODY_BYTES = READ_CHUNK_SIZE;
const CACHE_SOURCE = { source: 'cache' } as const;

/**
 * The whole body of a read of at most one read chunk: what the read has at
 * hand, or its one chunk once read. A failed read rejects (before any header
 * is sent, so the client gets an error status, not a cut body).
 */
async function readWhole(source: Readable, length: number): Promise<Buffer> {
  const ready = takeWhole(source, length);
  if (ready !== undefined) return ready;
  await new Promise<void>((resolve, reject) => {
    const settle = (error?: Error) => {
      source.off('readable', onReadable);
      source.off('end', onReadable);
      source.off('error', settle);
      if (error === undefined) resolve();
      else reject(error);
    };
    const onReadable = () => settle();
    source.on('readable', onReadable);
    source.on('end', onReadable);
    source.on('error', settle);
  });
  const data = takeWhole(source, length);
  if (data === undefined) {
    source.destroy();
    throw new CacheStorageError(`image body ended before its ${length} bytes (was the entry cut short?)`);
  }
  return data;
}

/**
 * The whole body of a read whose bytes are in memory (core's read at open
 * of a small entry, ADR 0008, or the one chunk of a larger body once read):
 * one synchronous `read()` of the paused stream, which is then closed
 * (nothing is left to read). `undefined` when the read has no bytes at hand
 * yet (the `read()` has just started its read from the file: {@link readWhole}
 * waits for it).
 *
 * @throws CacheStorageError when the bytes at hand are not `length` (the file was cut short under its identity).
 */
function takeWhole(source: Readable, length: number): Buffer | undefined {
  const data: unknown = source.read();
  if (data === null) return undefined;
  source.destroy();
  if (!Buffer.isBuffer(data) || data.length !== length) {
    throw new CacheStorageError(`image body read ${Buffer.isBuffer(data) ? data.length : 0} of its ${length} bytes (was the entry cut short?)`);
  }
  return data;
}

/**
 * Core's hit rule for a read opened with `countHit: false`: one hit once the
 * reader has been handed the image's last byte (`length` bytes of a read
 * that reaches the end), even when the client closes right after it.
 */
function countHitAtLastByte(source: Readable, batch: HitBatch, id: ImageId, identity: string, length: number): void {
  let delivered = 0;
  const onData = (chunk: Buffer) => {
    delivered += chunk.length;
    if (delivered < length) return;
    source.off('data', onData);
    batch.add(id, identity);
  };
  if (length === 0) batch.add(id, identity);
  else source.on('data', onData);
}

async function serveMiss(context: ServerContext, request: ImageRequest, reply: FastifyReply, id: ImageId): Promise<Served> {
  const { cache, fills, metrics } = context;
  if (request.headers[PEER_HEADER] !== undefined) {
    // A peer node asks for our copy: answered from our files only, never from our origin or our peers (no loops).
    metrics.misses.inc();
    reply.header('x-cache', 'MISS');
    throw new HttpError(404, 'NOT_CACHED_HERE', `image '${id}' is not cached on this node (a peer request is answered from its files only)`);
  }
  if (fills === undefined) throw new ImageNotCachedError(id, cache.getImageFilepath(id));
  if (request.method === 'HEAD') return serveHeadMiss(context, reply, id);

  // Every client of a miss is a reader of the id's one fill (started, joined, or followed in another process).
  const joined = fills.running(id) !== undefined;
  const fill = fills.fill(id);
  // Until its reader is open, this request counts as a reader: a fill is never abandoned (fillAbandonAfter)
  // while a client waits for the origin's headers. The placeholder reads nothing.
  const placeholder = fill.openReader({ start: 0, end: 0 });
  let announcement: FillAnnouncement | undefined;
  try {
    try {
      // Until the origin has answered (size, digest) or the fill has ended: then the status line can be chosen.
      announcement = await beforeStatusLine(context, () => fill.whenAnnounced(), () => undefined);
    } catch (error) {
      metrics.misses.inc();
      reply.header('x-cache', 'MISS');
      throw error;
    } finally {
      // The access log's FILL-WAIT: another request of this process, or another process, started this fill.
      if (joined || fill.role === 'follower') markFillWait(request);
    }
    if (announcement === undefined) {
      const outcome = await fill.done;
      if (outcome.status === 'failed') {
        // Before any byte: the error's status (origin 404 -> 404, other origin failures 502, shutdown 503).
        metrics.misses.inc();
        reply.header('x-cache', 'MISS');
        throw outcome.error;
      }
      // The space policy would not cache it (ADR 0006): the client gets it from the origin, uncached.
      if (outcome.status === 'bypassed') return await sendUncached(context, reply, id, fill, outcome.reason);
      // Cached already, or committed by a writer this fill followed to its end: serve it as a hit, ranges and all.
      return 'retry';
    }
    return sendFill(context, request, reply, fill, announcement);
  } finally {
    placeholder.destroy();
  }
}

/** Answers a GET miss from its fill, once the origin's size and digest are known: 200 or, for a range the size allows, 206 / 416. */
function sendFill(context: ServerContext, request: ImageRequest, reply: FastifyReply, fill: Fill, announcement: FillAnnouncement): Served {
  const { metrics } = context;
  const size = announcement.expectedSize;
  const digest = parseStoredChecksum(announcement.checksum);
  // The entry's ETag to be: the fill verifies that digest, and a body fails before its last byte unless it matches.
  const etag = digest === undefined ? undefined : digestEtag(digest);
  const plan = selectMissRange(request, size, etag);
  metrics.misses.inc();
  if (plan.kind === 'unsatisfiable') {
    reply.header('x-cache', 'MISS');
    throw unsatisfiable(request, size as number);
  }
  setImageHeaders(reply, 'MISS');
  if (etag !== undefined) reply.header('etag', etag);
  const from: ByteSource = context.fills?.source(fill.imageId) === 'peer' ? 'peer' : 'origin';
  if (from === 'peer') markPeer(request);
  // A fill of unknown size may outgrow the budget after the status line: the client still gets every byte, the access log says so.
  markFill(request, fill);
  if (plan.kind === 'full') {
    // A full reader ends only once the fill has committed (or ended uncached) and fails if it failed.
    if (size !== undefined) reply.header('content-length', size);
    reply.send(body(context, reply, fill.openReader(), size, from, true));
    return 'sent';
  }
  const length = plan.end - plan.start + 1;
  reply.code(206).header('content-range', `bytes ${plan.start}-${plan.end}/${size as number}`).header('content-length', length);
  // The status line goes out with the range's first byte: once the fill has passed `start`.
  const reader = fill.openReader({ start: plan.start, end: plan.end });
  // A range that reaches the end, or any range of an image with a digest, waits for the verdict before its last byte:
  // only the digest can condemn bytes before the end, and only the end can be cut or overlong.
  const verdict = plan.end === (size as number) - 1 || digest !== undefined;
  reply.send(body(context, reply, verdict ? untilVerdict(reader, fill) : reader, length, from, verdict));
  return 'sent';
}

/**
 * Answers a miss the space policy would not cache (too large for the
 * budget, the budget held by reads and fills, the disk below `stop`): 200
 * with the origin's bytes, straight through (a range is ignored), from the
 * response the fill opened when this request gets it, else from a new
 * origin request. `x-cache-bypass` says why.
 */
async function sendUncached(context: ServerContext, reply: FastifyReply, id: ImageId, fill: Fill, reason: string): Promise<Served> {
  const { origin, metrics } = context;
  metrics.misses.inc();
  reply.header('x-cache', 'MISS');
  let fetched = fill.takeSource();
  if (fetched === undefined) {
    metrics.originFetches.inc();
    const image = await beforeStatusLine(
      context,
      (signal) => (origin as Origin).open(id, { signal }),
      (late) => late.stream.destroy(),
    );
    fetched = originFill(id, image).fetched;
  }
  const { source, size } = fetched;
  // The server's fills fetch an origin's stream (never a file path).
  const stream = source instanceof Readable ? source : Readable.from(source as AsyncIterable<Uint8Array>);
  setImageHeaders(reply, 'MISS');
  reply.header('x-cache-bypass', reason);
  if (size !== undefined) reply.header('content-length', size);
  reply.send(body(context, reply, stream, size, 'origin', false));
  return 'sent';
}

/**
 * HEAD on a miss: the headers of a running fill's announcement, else (a
 * cluster node) what a live peer recorded for the copy a GET would read,
 * else the origin's (its body is not fetched, nothing is cached).
 */
async function serveHeadMiss(context: ServerContext, reply: FastifyReply, id: ImageId): Promise<Served> {
  const { origin, fills, metrics, cluster } = context;
  metrics.misses.inc();
  reply.header('x-cache', 'MISS');
  let size: number | undefined;
  let etag: string | undefined;
  const announcement = fills?.running(id)?.announcement;
  const known: { size?: number | undefined; checksum?: string | undefined } | undefined =
    announcement !== undefined ? { size: announcement.expectedSize, checksum: announcement.checksum } : await cluster?.describe(id);
  if (known !== undefined) {
    size = known.size;
    const digest = parseStoredChecksum(known.checksum);
    etag = digest === undefined ? undefined : digestEtag(digest);
  } else {
    metrics.originFetches.inc();
    const image = await beforeStatusLine(
      context,
      (signal) => (origin as Origin).open(id, { signal }),
      (late) => late.stream.destroy(),
    );
    image.stream.destroy();
    size = image.size;
    etag = originFill(id, image).etag;
  }
  setImageHeaders(reply, 'MISS');
  if (size !== undefined) reply.header('content-length', size);
  if (etag !== undefined) reply.header('etag', etag);
  reply.code(200).send();
  return 'sent';
}

/**
 * The range a miss answers: a single range when the size is known (from
 * the origin) and `If-Range`, if any, is the strong ETag to be (a date never
 * matches: a miss has no Last-Modified yet). Without a size (a chunked
 * origin) the range is ignored: 200 with the whole image.
 */
function selectMissRange(request: ImageRequest, size: number | undefined, etag: string | undefined): RangePlan {
  const header = request.headers.range;
  if (typeof header !== 'string' || size === undefined) return { kind: 'full' };
  const ifRange = request.headers['if-range'];
  if (typeof ifRange === 'string' && (etag === undefined || ifRange.trim() !== etag)) return { kind: 'full' };
  return planRange(header, size);
}

/**
 * Waits for what a request waits on before its status line (a fill's
 * announcement: the origin's headers; an origin's headers for a HEAD miss) unless shutdown begins
 * first: then it throws the 503 `SHUTTING_DOWN` (with `Retry-After`) at once,
 * so the client gets a whole response and never an empty reply, aborts the
 * origin request `start` opened with the signal it was given, and hands what
 * `start` yields later to `discard`; `close()` waits for that too. The signal
 * also aborts at the end of the shutdown timeout (it stays tied to an origin
 * body that streams on).
 */
async function beforeStatusLine<T>(context: ServerContext, start: (signal: AbortSignal) => Promise<T>, discard: (late: T) => void): Promise<T> {
  const drain = context.drainSignal;
  if (drain.aborted) throw context.shuttingDown();
  const refusal = new AbortController();
  const work = start(AbortSignal.any([context.shutdownSignal, refusal.signal]));
  let onDrain!: () => void;
  const refused = new Promise<never>((_resolve, reject) => {
    onDrain = () => {
      refusal.abort(context.shuttingDown());
      reject(context.shuttingDown());
    };
  });
  drain.addEventListener('abort', onDrain, { once: true });
  try {
    return await Promise.race([work, refused]);
  } catch (error) {
    if (!drain.aborted) throw error;
    context.track(work.then(discard, () => undefined));
    throw context.shuttingDown(); // whichever came first, the client is told to come back
  } finally {
    drain.removeEventListener('abort', onDrain);
  }
}

/**
 * @param holdLast - the last byte waits until `source` ends: for a fill, its verdict (length, digest), so that
 *   a client never gets a whole-looking body that failed verification.
 */
function body(context: ServerContext, reply: FastifyReply, source: Readable, expected: number | undefined, from: ByteSource, holdLast: boolean): Readable {
  return responseBody(source, { expected, holdLast, ...bodyReports(context, reply, from) });
}

/** What an image body reports: its bytes to the served-bytes counter, and a failure that cut the response. */
function bodyReports(context: ServerContext, reply: FastifyReply, from: ByteSource): { onBytes: (bytes: number) => void; onError: (error: Error) => void } {
  const { metrics } = context;
  const labels = { source: from };
  return {
    onBytes: (bytes) => metrics.servedBytes.inc(labels, bytes),
    onError: (error) => {
      // Before the headers, fastify's error handler answers (and counts) it; after them the response is cut.
      if (!reply.raw.headersSent) return;
      metrics.countError(error);
      reply.log.warn({ err: error }, 'image response cut short');
    },
  };
}

