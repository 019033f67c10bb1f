import type { Readable } from 'node:stream';
import { CacheStorageError, CachingStream, ImageChangedError, ImageNotCachedError, assertImageId, type ImageId } from '@cache/core';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import parseRange from 'range-parser';
import type { ServerContext } from '../context.js';
import { ifRangeAllows, isNotModified, statEntry, type EntryInfo } from '../entry.js';
import { originFill, type OriginFill } from '../fill.js';
import { HttpError } from '../http-errors.js';
import type { ByteSource } from '../metrics.js';
import { responseBody } from '../response-body.js';

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
 * ETag, Last-Modified, a single byte range, 304), else streamed from the
 * origin while it is cached (single-flight per id).
 */
export async function imageRoutes(app: FastifyInstance, context: ServerContext): Promise<void> {
  app.route({
    method: ['GET', 'HEAD'],
    url: '/images/:id',
    handler: async (request: ImageRequest, reply) => {
      const work = serveImage(context, request, reply);
      context.track(work);
      await work;
      return reply;
    },
  });
}

async function serveImage(context: ServerContext, request: ImageRequest, reply: FastifyReply): Promise<void> {
  const { id } = request.params;
  assertImageId(id);
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const entry = await statEntry(context.cache, id);
    if (entry?.degraded !== undefined) {
      context.readiness.metadataFailed(id, entry.degraded);
      request.log.warn({ err: entry.degraded, imageId: id }, 'metadata store failed; serving the cached file as it is');
    } else if (entry !== undefined) {
      context.readiness.metadataAnswered();
    }
    const served = entry !== undefined ? await serveHit(context, request, reply, id, entry) : await serveMiss(context, request, reply, id);
    if (served === 'sent') return;
  }
  throw new CacheStorageError(`image '${id}' kept changing while being served (deleted or replaced ${MAX_ATTEMPTS} times); retry`);
}

function setImageHeaders(reply: FastifyReply, xCache: 'HIT' | 'MISS'): void {
  reply.header('content-type', 'application/octet-stream');
  reply.header('accept-ranges', 'bytes');
  reply.header('x-cache', xCache);
}

function selectRange(request: ImageRequest, entry: EntryInfo): RangePlan {
  const header = request.headers.range;
  if (typeof header !== 'string' || !ifRangeAllows(request.headers, entry)) return { kind: 'full' };
  const ranges = parseRange(entry.size, header, { combine: true });
  if (ranges === -1) return { kind: 'unsatisfiable' };
  // Malformed, not bytes, or several disjoint ranges: ignore the header and send everything (RFC 9110 14.2 allows it).
  if (ranges === -2 || ranges.type !== 'bytes' || ranges.length !== 1) return { kind: 'full' };
  const range = ranges[0] as parseRange.Range;
  return { kind: 'partial', start: range.start, end: range.end };
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
  if (plan.kind === 'unsatisfiable') {
    throw new HttpError(416, 'RANGE_NOT_SATISFIABLE', `the range ${JSON.stringify(request.headers.range)} is outside the image's ${entry.size} bytes`, {
      'content-range': `bytes */${entry.size}`,
      'accept-ranges': 'bytes',
    });
  }

  let source: Readable | undefined;
  if (!head && !notModified) {
    // Through the cache, pinned to the file the headers describe. A read that delivers the last byte (the whole
    // image, or a range that reaches the end) counts a hit, even when the client closes right after it.
    const range = plan.kind === 'partial' ? { start: plan.start, end: plan.end } : {};
    try {
      source = await cache.openForRead(id, { ...range, identity: entry.identity });
    } catch (error) {
      if (ImageNotCachedError.isInstance(error) || ImageChangedError.isInstance(error)) return 'retry'; // deleted or replaced since the stat
      throw error;
    }
  }

  metrics.hits.inc();
  // A read that reaches the last byte is a hit for the driver (core's rule); with the metadata store failing it cannot record it now.
  if (source !== undefined && entry.degraded !== undefined && (plan.kind === 'full' || plan.end === entry.size - 1)) metrics.hitsUnrecorded.inc();
  setImageHeaders(reply, 'HIT');
  reply.header('etag', entry.etag);
  reply.header('last-modified', entry.lastModified.toUTCString());
  if (notModified) {
    reply.code(304).send();
    return 'sent';
  }
  const length = plan.kind === 'partial' ? plan.end - plan.start + 1 : entry.size;
  reply.header('content-length', length);
  if (plan.kind === 'partial') {
    reply.code(206).header('content-range', `bytes ${plan.start}-${plan.end}/${entry.size}`);
  }
  reply.send(source === undefined ? undefined : body(context, reply, source, length, 'cache')); // no source: HEAD
  return 'sent';
}

async function serveMiss(context: ServerContext, request: ImageRequest, reply: FastifyReply, id: ImageId): Promise<Served> {
  const { cache, origin, metrics } = context;
  if (origin === undefined) throw new ImageNotCachedError(id, cache.getImageFilepath(id));

  if (request.method === 'HEAD') {
    // Answered from the origin's headers; the body is not fetched, so nothing is cached.
    metrics.misses.inc();
    metrics.originFetches.inc();
    reply.header('x-cache', 'MISS');
    const image = await beforeStatusLine(
      context,
      (signal) => origin.open(id, { signal }),
      (late) => late.stream.destroy(),
    );
    image.stream.destroy();
    setImageHeaders(reply, 'MISS');
    if (image.size !== undefined) reply.header('content-length', image.size);
    const { etag } = originFill(id, image);
    if (etag !== undefined) reply.header('etag', etag);
    reply.code(200).send();
    return 'sent';
  }

  let size: number | undefined;
  let fill: OriginFill | undefined;
  let result;
  try {
    // A leader waits here for the origin's headers, a waiter for another request's fetch to commit (single-flight).
    result = await beforeStatusLine(
      context,
      (signal) =>
        cache.readThrough(id, {
          fetch: async () => {
            metrics.originFetches.inc();
            const image = await origin.open(id, { signal });
            size = image.size;
            fill = originFill(id, image);
            return fill.fetched;
          },
        }),
      (late) => {
        // Shutdown answered this request already: drop what came too late (a caching stream rolls its write back).
        late.stream.destroy();
        if (late.stream instanceof CachingStream) context.track(late.stream.cacheOutcome);
      },
    );
  } catch (error) {
    metrics.misses.inc();
    reply.header('x-cache', 'MISS');
    throw error;
  }
  if (result.from === 'cache') {
    // Another request's fetch committed it (or it appeared meanwhile): serve it as a hit, ranges and all.
    result.stream.destroy();
    return 'retry';
  }
  const stream = result.stream;
  if (stream instanceof CachingStream) {
    context.track(stream.cacheOutcome);
    stream.on('cacheError', (error: Error) => {
      metrics.countError(error);
      request.log.warn({ err: error, imageId: id }, 'caching failed; the client still gets the image');
    });
  }
  if (fill?.cacheable === false) {
    // Nothing can tell a cut of this close-delimited body from its end: the client gets the bytes, the cache does not.
    request.log.warn({ imageId: id }, 'not caching: the origin announced no length or digest and its body is close-delimited (allowUnverified is off)');
  }
  // A Range on a miss is answered with the whole image (200): it is being cached anyway.
  metrics.misses.inc();
  setImageHeaders(reply, 'MISS');
  if (size !== undefined) reply.header('content-length', size);
  // The entry's ETag to be: the caching stream verifies that digest, and the body fails before its last byte unless it matches.
  if (fill?.etag !== undefined && stream instanceof CachingStream) reply.header('etag', fill.etag);
  reply.send(body(context, reply, stream, size, 'origin'));
  return 'sent';
}

/**
 * Waits for what a request waits on before its status line (an origin's
 * headers, another request's fetch of the same id) unless shutdown begins
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

function body(context: ServerContext, reply: FastifyReply, source: Readable, expected: number | undefined, from: ByteSource): Readable {
  const { metrics } = context;
  return responseBody(source, {
    expected,
    // From the origin, the last byte waits for the fill's verdict (length, digest): a client never
    // gets a whole-looking body that failed verification.
    holdLast: from === 'origin',
    onBytes: (bytes) => metrics.servedBytes.inc({ source: from }, bytes),
    onError: (error) => {
      // Before the headers, fastify's error handler answers (and counts) it; after them the response is cut.
      if (!reply.raw.headersSent) return;
      metrics.countError(error);
      reply.log.warn({ err: error }, 'image response cut short');
    },
  });
}

