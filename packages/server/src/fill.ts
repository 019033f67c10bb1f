import { Transform, type Readable, type TransformCallback } from 'node:stream';
import { OriginError, normalizeChecksum, type FetchedFill, type Fill, type FillRole, type ImageCache, type ImageId } from '@cache/core';
import { expectedChecksum, type Origin, type OriginImage } from '@cache/origin';
import type { FastifyBaseLogger } from 'fastify';
import { digestEtag } from './entry.js';
import type { ClusterMember } from './cluster.js';
import type { ServerMetrics } from './metrics.js';

/** How the server fills the cache from one opened origin image. */
export interface OriginFill {
  /**
   * For a fill's `fetch`: the stream, and what the origin announced: its
   * length as the size, its digest as the checksum, and whether to cache it.
   */
  fetched: FetchedFill;
  /**
   * The strong ETag the entry gets once the announced digest is verified and
   * stored (`"<algorithm>:<hex>"`), for the miss response; `undefined` without a digest.
   */
  etag: string | undefined;
}

/**
 * Turns what the origin announced into the cache fill: the digest becomes the
 * checksum core verifies while caching (a mismatch is a `ChecksumMismatchError`
 * and nothing is committed), the length becomes the fill's expected size
 * (already enforced by the origin's stream, and announced to readers), and an
 * unverifiable body is read but not cached.
 */
export function originFill(id: ImageId, image: OriginImage): OriginFill {
  let checksum;
  try {
    checksum = normalizeChecksum(expectedChecksum(image));
  } catch (cause) {
    image.stream.destroy();
    throw new OriginError(id, `the origin announced an unusable digest: ${(cause as Error).message}`, { cause });
  }
  return {
    fetched: {
      source: image.stream,
      ...(checksum === undefined ? {} : { checksum }),
      ...(image.size === undefined ? {} : { size: image.size }),
      // False for bytes nothing can verify (a close-delimited body without a digest, from an origin without
      // allowUnverified): read by the clients, not cached. An origin that does not say is trusted.
      cache: image.cacheable !== false,
    },
    etag: checksum === undefined ? undefined : digestEtag(checksum),
  };
}

/** What {@link ServerFills} needs. */
export interface ServerFillsOptions {
  cache: ImageCache;
  origin: Origin;
  metrics: ServerMetrics;
  log: FastifyBaseLogger;
  /** Seconds a fill runs on without any reader before it is abandoned (`FillOptions.abandonAfter`); `undefined`: never. */
  abandonAfter: number | undefined;
  /** Registers a fill's `done` as work `close()` waits for. */
  track: (work: Promise<unknown>) => void;
  /** The cluster this server is a node of: a fill asks the live peers holding the image before the origin. */
  cluster?: ClusterMember | undefined;
}

/**
 * The fills this server started or joined (`ImageCache.fill`), one per id:
 * client misses and prefetches of the same id share one, and with it one
 * origin request per host. Keeps the fills-in-progress gauge, and lets
 * `close()` stop them.
 */
export class ServerFills {
  readonly #options: ServerFillsOptions;
  readonly #fills = new Map<ImageId, Fill>();
  /** Where each running fill of this process reads from, once its fetch has chosen. */
  readonly #sources = new Map<ImageId, 'peer' | 'origin'>();

  constructor(options: ServerFillsOptions) {
    this.#options = options;
  }

  /** Fills running now. */
  get size(): number {
    return this.#fills.size;
  }

  /** The fills running now, in the order they started (for the status page). */
  list(): Fill[] {
    return [...this.#fills.values()];
  }

  /** The running fill of `id` that this server knows of, if any (no origin request, no lock). */
  running(id: ImageId): Fill | undefined {
    return this.#fills.get(id);
  }

  /** Where the running fill of `id` reads from (a peer node or the origin); undefined before it has chosen, or for a fill of another process. */
  source(id: ImageId): 'peer' | 'origin' | undefined {
    return this.#sources.get(id);
  }

  /**
   * Starts the fill of `id` from a live peer holding it (when this server
   * is a cluster node) or else from the origin, or joins the one running in
   * this process (or follows another process's fill of it: core decides).
   */
  fill(id: ImageId): Fill {
    const { cache, origin, metrics, log, abandonAfter, track, cluster } = this.#options;
    const fill = cache.fill(id, {
      fetch: async ({ signal }) => {
        const fromPeer = await cluster?.fetch(id, signal);
        if (fromPeer !== undefined) {
          this.#sources.set(id, 'peer');
          return fromPeer;
        }
        this.#sources.set(id, 'origin');
        metrics.originFetches.inc();
        const { fetched } = originFill(id, await origin.open(id, { signal }));
        if (cluster !== undefined && !cluster.connected) {
          // No entry can be committed before the node has reached its database: the clients get the bytes, the cache does not.
          log.warn({ imageId: id }, 'not caching: the metadata database has not been reached since the start; serving the origin\'s bytes uncached');
          return { ...fetched, cache: false };
        }
        return fetched;
      },
      ...(abandonAfter === undefined ? {} : { abandonAfter }),
    });
    if (this.#fills.get(id) === fill) return fill;
    this.#fills.set(id, fill);
    // Counted under its role, moved when the role changes (a follower that takes over becomes the owner).
    let role: FillRole = fill.role;
    metrics.fillsInProgress.inc({ role });
    const onRole = (next: FillRole) => {
      metrics.fillsInProgress.dec({ role });
      role = next;
      metrics.fillsInProgress.inc({ role });
    };
    fill.on('role', onRole);
    fill.on('announced', (announcement: { cache: boolean }) => {
      if (!announcement.cache) {
        // Nothing can tell a cut of this close-delimited body from its end: the clients get the bytes, the cache does not.
        log.warn({ imageId: id }, 'not caching: the origin announced no length or digest and its body is close-delimited (allowUnverified is off)');
      }
    });
    const done = fill.done.then((outcome) => {
      if (this.#fills.get(id) === fill) {
        if (this.#sources.get(id) === 'peer') cluster?.fillEnded(id, outcome.status === 'failed' ? outcome.error : undefined);
        this.#fills.delete(id);
        this.#sources.delete(id);
      }
      fill.off('role', onRole);
      metrics.fillsInProgress.dec({ role });
      if (outcome.status === 'failed') log.warn({ err: outcome.error, imageId: id }, 'fill failed; nothing was cached');
    });
    track(done);
    return fill;
  }

  /**
   * Aborts the fills nobody in this process streams from: those whose
   * origin has not answered yet (their clients are still before their
   * status line) and those without a reader (their clients left; a
   * prefetch). They are rolled back to `invalid/`.
   */
  abortUnread(reason: Error): void {
    for (const fill of this.#fills.values()) {
      if (fill.announcement === undefined || fill.readers === 0) fill.abort(reason);
    }
  }

  /** Aborts every running fill (rolled back to `invalid/`; a fill already committing commits). */
  abortAll(reason: Error): void {
    for (const fill of this.#fills.values()) fill.abort(reason);
  }
}

/**
 * Passes `reader` through, but ends only once `fill` has ended well
 * (committed, or read to its end uncached) and fails with the fill's error
 * when it failed. For a range read of a fill, whose reader ends as soon as
 * its last byte is in the file: with the last byte held back until the
 * source ends ({@link responseBody}'s `holdLast`), a client never gets a
 * whole-looking range of a fill that failed verification. Destroying it
 * destroys the reader (never the fill).
 */
export function untilVerdict(reader: Readable, fill: Fill): Readable {
  const gate = new Transform({
    transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback) {
      callback(null, chunk);
    },
    flush(callback: TransformCallback) {
      void fill.done.then((outcome) => callback(outcome.status === 'failed' ? outcome.error : null));
    },
    destroy(error, callback) {
      reader.destroy();
      callback(error);
    },
  });
  reader.on('error', (error: Error) => gate.destroy(error));
  reader.pipe(gate);
  return gate;
}
