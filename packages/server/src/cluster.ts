import { hostname } from 'node:os';
import { InvalidArgumentError, parseStoredChecksum, type FetchedFill, type ImageId } from '@cache/core';
import { HttpOrigin } from '@cache/origin';
import type { FastifyBaseLogger } from 'fastify';
import type { ServerMetrics } from './metrics.js';

/**
 * The request header a node sends when it fetches an image from a peer. A
 * server that gets it answers from its own files only: a miss is a `404`
 * (`NOT_CACHED_HERE`), never a fetch from its origin or its own peers, so
 * peer fetches cannot loop and the origin is read only by the node that
 * asked. Its value is the asking node's id (for the peer's logs).
 */
export const PEER_HEADER = 'x-image-cache-peer';

/** A copy of an image on a live peer (what `@cache/driver-postgres`'s `getPeerCopies` returns). */
export interface PeerCopyInfo {
  nodeId: string;
  /** The peer's advertised base URL: the copy is `GET <url>/images/<id>`. */
  url: string;
  /** The digest the peer verified when it cached the copy (`sha256:<hex>` or md5 hex), if any. */
  checksum: string | undefined;
  size: number;
}

/**
 * Where the nodes of a cluster meet: the shared metadata database.
 * `@cache/driver-postgres`'s `PostgresDriver` is one (pass the cache's driver).
 */
export interface ClusterDirectory {
  /** This node's identity. */
  readonly nodeId: string;
  /**
   * False while the node has not reached the database since it started
   * (`PostgresDriver`'s `startWhileUnavailable`): nothing can be committed
   * then, so misses are streamed from the origin without being cached.
   */
  readonly connected?: boolean;
  /** Advertises `url` for this node and says it is alive now. */
  heartbeat(url: string): Promise<void>;
  /** Says this node stopped (peers skip it at once). */
  leave(): Promise<void>;
  /** Live peers (not this node) holding `id`. */
  getPeerCopies(id: ImageId): Promise<PeerCopyInfo[]>;
  /** Every node and every image with its copies (served as `GET /v2/cache/cluster`). */
  getClusterStatus(): Promise<ClusterStatusInfo>;
}

/** What {@link ClusterDirectory.getClusterStatus} returns (the shape of `@cache/driver-postgres`'s `ClusterStatus`). */
export interface ClusterStatusInfo {
  nodes: {
    nodeId: string;
    url: string | undefined;
    health: string;
    lastHeartbeat: number | undefined;
    startedAt: number | undefined;
    images: number;
    bytes: number;
    hits: number;
    self: boolean;
  }[];
  images: {
    imageId: string;
    size: number;
    hits: number;
    copies: { nodeId: string; health: string; size: number; hits: number; lastAccessed: number; checksum: string | undefined }[];
  }[];
}

/** Options of a server that is one node of a cluster ({@link CacheServerOptions.cluster}). Times in ms. */
export interface ClusterOptions {
  /** The shared database: the cache's `PostgresDriver` (`cache.driver`). */
  directory: ClusterDirectory;
  /**
   * The URL peers fetch this node's images from (`<url>/images/<id>`).
   * @default the bound URL of `listen()`; on a wildcard address (`0.0.0.0`, `::`) the host name instead (`http://<os.hostname()>:<port>`)
   */
  advertiseUrl?: string;
  /** How often the node sends its heartbeat. Keep it well under the driver's `heartbeatExpiryMillis` (default 30 s). @default 10000 */
  heartbeatInterval?: number;
  /** How long a peer gets to answer with its response headers before the next peer (or the origin) is tried. @default 5000 */
  peerTimeout?: number;
  /**
   * Also fetch from peers whose copy has no recorded digest (it was cached
   * from an origin that announced none). Without it such a copy is skipped
   * and the origin is read: a peer's bytes are cached only when they can be
   * verified against the digest the peer recorded. @default false
   */
  allowUnverified?: boolean;
}

/** {@link ClusterOptions} validated, with defaults. */
export interface ResolvedCluster {
  directory: ClusterDirectory;
  advertiseUrl: string | undefined;
  heartbeatInterval: number;
  peerTimeout: number;
  allowUnverified: boolean;
}

/** Validates {@link ClusterOptions} (`InvalidArgumentError` naming the bad one). */
export function resolveCluster(value: unknown): ResolvedCluster | undefined {
  if (value === undefined) return undefined;
  const options = (value ?? {}) as Partial<ClusterOptions>;
  const directory = options.directory;
  if (
    typeof directory !== 'object' ||
    directory === null ||
    typeof directory.nodeId !== 'string' ||
    !['heartbeat', 'leave', 'getPeerCopies', 'getClusterStatus'].every((name) => typeof (directory as unknown as Record<string, unknown>)[name] === 'function')
  ) {
    throw new InvalidArgumentError('options.cluster.directory must be a cluster directory such as the PostgresDriver of the cache (cache.driver)');
  }
  const advertiseUrl = options.advertiseUrl;
  if (advertiseUrl !== undefined && !isHttpUrl(advertiseUrl)) {
    throw new InvalidArgumentError(`options.cluster.advertiseUrl must be an http(s) URL such as http://node-a:8080, got ${JSON.stringify(advertiseUrl)}`);
  }
  const ms = (name: 'heartbeatInterval' | 'peerTimeout', fallback: number) => {
    const v = options[name] ?? fallback;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 2 ** 31 - 1) {
      throw new InvalidArgumentError(`options.cluster.${name} must be an integer number of milliseconds >= 1, got ${String(v)}`);
    }
    return v;
  };
  if (options.allowUnverified !== undefined && typeof options.allowUnverified !== 'boolean') {
    throw new InvalidArgumentError('options.cluster.allowUnverified must be a boolean');
  }
  return {
    directory,
    advertiseUrl: advertiseUrl?.replace(/\/+$/, ''),
    heartbeatInterval: ms('heartbeatInterval', 10_000),
    peerTimeout: ms('peerTimeout', 5000),
    allowUnverified: options.allowUnverified === true,
  };
}

function isHttpUrl(value: unknown): value is string {
  if (typeof value !== 'string') return false;
  try {
    const url = new URL(value);
    return (url.protocol === 'http:' || url.protocol === 'https:') && url.hostname !== '';
  } catch {
    return false;
  }
}

/**
 * The URL a node advertises when none is configured: the bound URL, with a
 * wildcard address (`0.0.0.0`, `[::]`) replaced by the host name (peers cannot
 * connect to a wildcard).
 */
export function defaultAdvertiseUrl(boundUrl: string): string {
  const url = new URL(boundUrl);
  if (url.hostname === '0.0.0.0' || url.hostname === '[::]' || url.hostname === '::') url.hostname = hostname();
  return url.toString().replace(/\/+$/, '');
}

/**
 * This server as a node of a cluster: its heartbeat, and misses fetched
 * from the live peers that hold the image before the origin.
 */
export class ClusterMember {
  readonly #options: ResolvedCluster;
  readonly #log: FastifyBaseLogger;
  readonly #metrics: ServerMetrics;
  #timer: NodeJS.Timeout | undefined;
  #url: string | undefined;
  /** Whether the last heartbeat failed (a failure is logged once, then its recovery). */
  #failing = false;
  #beat: Promise<void> | undefined;
  /** The peer each running peer fill of this process reads from, by image id. */
  readonly #reading = new Map<ImageId, string>();
  /** Peer copies that failed (a digest mismatch, a cut body): `<nodeId>\n<imageId>`, skipped by later fetches of this process. */
  readonly #distrusted = new Set<string>();

  constructor(options: ResolvedCluster, log: FastifyBaseLogger, metrics: ServerMetrics) {
    this.#options = options;
    this.#log = log;
    this.#metrics = metrics;
  }

  /** The directory (for `/v2/cache/cluster`). */
  get directory(): ClusterDirectory {
    return this.#options.directory;
  }

  /** False while the directory has not been reached since the start (see {@link ClusterDirectory.connected}). */
  get connected(): boolean {
    return this.#options.directory.connected !== false;
  }

  /** The URL this node advertises, once listening. */
  get url(): string | undefined {
    return this.#url;
  }

  /** Starts the heartbeat (the first one at once; its failure is logged, never thrown: the node serves its files meanwhile). */
  async start(boundUrl: string): Promise<void> {
    this.#url = this.#options.advertiseUrl ?? defaultAdvertiseUrl(boundUrl);
    this.#timer = setInterval(() => void this.#heartbeat(), this.#options.heartbeatInterval);
    this.#timer.unref();
    await this.#heartbeat();
  }

  #heartbeat(): Promise<void> {
    const url = this.#url;
    if (url === undefined || this.#beat !== undefined) return this.#beat ?? Promise.resolve();
    this.#beat = (async () => {
      try {
        await this.#options.directory.heartbeat(url);
        if (this.#failing) this.#log.info({ nodeId: this.#options.directory.nodeId, url }, 'cluster heartbeat sent again: this node is visible to its peers');
        this.#failing = false;
      } catch (error) {
        if (!this.#failing) this.#log.warn({ err: error, nodeId: this.#options.directory.nodeId }, 'cluster heartbeat failed; peers will skip this node until it succeeds');
        this.#failing = true;
      } finally {
        this.#beat = undefined;
      }
    })();
    return this.#beat;
  }

  /** Stops the heartbeat and marks the node stopped (best effort: a failure is logged). */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    const wasStarted = this.#timer !== undefined;
    this.#timer = undefined;
    if (!wasStarted) return;
    await this.#beat;
    try {
      await this.#options.directory.leave();
    } catch (error) {
      this.#log.warn({ err: error }, 'could not mark this node stopped in the cluster; peers skip it once its heartbeat expires');
    }
  }

  /**
   * Tells how the fill of `id` that read from a peer ended: a failure (its
   * digest did not match, its body was cut) makes this process skip that
   * peer's copy of `id` from now on, so the next miss reads another peer or
   * the origin instead of the same bad copy.
   */
  fillEnded(id: ImageId, failed: Error | undefined): void {
    const peer = this.#reading.get(id);
    this.#reading.delete(id);
    if (peer === undefined || failed === undefined) return;
    this.#distrusted.add(`${peer}\n${id}`);
    this.#log.warn({ err: failed, imageId: id, peer }, 'the copy fetched from a peer failed; that copy is skipped from now on');
  }

  /**
   * What a HEAD of a miss can answer without any request: the size and
   * digest that a live peer recorded for the copy a GET would read first
   * (see {@link fetch}), or `undefined` when there is none (or the cluster
   * could not be asked): then the origin is asked.
   */
  async describe(id: ImageId): Promise<{ size: number; checksum?: string } | undefined> {
    const copy = (await this.#peerCopies(id, 'asking the origin'))?.find((candidate) => this.#skipReason(id, candidate) === undefined);
    if (copy === undefined) return undefined;
    return copy.checksum === undefined ? { size: copy.size } : { size: copy.size, checksum: copy.checksum };
  }

  /** The live peers' copies of `id`, or `undefined` (logged, ending with `instead`) when the cluster could not be asked. */
  async #peerCopies(id: ImageId, instead: string): Promise<PeerCopyInfo[] | undefined> {
    try {
      return await this.#options.directory.getPeerCopies(id);
    } catch (error) {
      this.#log.warn({ err: error, imageId: id }, `could not ask the cluster which peers hold the image; ${instead}`);
      return undefined;
    }
  }

  /** Why a miss does not read `copy`, or `undefined` when it may: not distrusted, and a digest to verify it against unless `allowUnverified`. */
  #skipReason(id: ImageId, copy: PeerCopyInfo): string | undefined {
    if (this.#distrusted.has(`${copy.nodeId}\n${id}`)) return 'an earlier fetch of it failed';
    if (parseStoredChecksum(copy.checksum) === undefined && !this.#options.allowUnverified) {
      return 'it has no recorded digest to verify it against (allowUnverified is off)';
    }
    return undefined;
  }

  /**
   * The image from a live peer that holds it, verified against the digest
   * that peer recorded (the fill checks it while caching: a mismatch fails
   * the fill and nothing is committed), or `undefined` when no peer could
   * give it (none holds it, each failed or had no digest to verify
   * against): then the caller reads the origin.
   */
  async fetch(id: ImageId, signal: AbortSignal): Promise<FetchedFill | undefined> {
    const { directory, peerTimeout, allowUnverified } = this.#options;
    const copies = await this.#peerCopies(id, 'reading the origin');
    if (copies === undefined) return undefined;
    for (const copy of copies) {
      signal.throwIfAborted();
      const checksum = parseStoredChecksum(copy.checksum);
      const skipped = this.#skipReason(id, copy);
      if (skipped !== undefined) {
        this.#log.info({ imageId: id, peer: copy.nodeId }, `peer copy skipped: ${skipped}`);
        continue;
      }
      const origin = new HttpOrigin(`${copy.url}/images/{id}`, {
        headers: { [PEER_HEADER]: directory.nodeId },
        headersTimeout: peerTimeout,
        retries: 0,
        allowUnverified,
      });
      try {
        const image = await origin.open(id, { signal });
        if (image.size !== undefined && image.size !== copy.size) {
          image.stream.destroy();
          throw new Error(`the peer sent ${image.size} bytes where it recorded ${copy.size}`);
        }
        this.#metrics.peerFetches.inc({ result: 'ok' });
        this.#reading.set(id, copy.nodeId);
        this.#log.info({ imageId: id, peer: copy.nodeId, url: copy.url }, 'miss: fetching the image from a peer');
        return {
          source: image.stream,
          ...(checksum === undefined ? {} : { checksum }),
          size: image.size ?? copy.size,
          cache: checksum !== undefined || image.cacheable,
        };
      } catch (error) {
        if (signal.aborted) throw error;
        this.#metrics.peerFetches.inc({ result: 'failed' });
        this.#log.warn({ err: error, imageId: id, peer: copy.nodeId }, 'peer fetch failed; trying the next peer, then the origin');
      }
    }
    return undefined;
  }
}
