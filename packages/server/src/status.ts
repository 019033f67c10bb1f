import type { CacheDriver, FillRole, ImageId, SpaceState } from '@cache/core';
import type { ServerContext } from './context.js';
import type { ClusterDirectory } from './cluster.js';
import { publicMessage } from './http-errors.js';
import { METRIC_NAMES, errorLabel } from './metrics.js';
import { processPids, sampleSum } from './worker-metrics.js';

/** How many images {@link StatusReport.topImages} lists (the most hit first). */
export const STATUS_TOP_IMAGES = 10;

/** Health of a cluster node as the status page shows it. */
export type NodeHealth = 'alive' | 'dead' | 'stopped' | 'unknown';

/** One node of the cluster, as a {@link ClusterStatusSource} reports it. */
export interface ClusterNodeStatus {
  /** The node's identity (e.g. `web-3:/var/cache/images`, the postgres driver's `nodeId`). */
  id: string;
  /** The URL the node serves on, when it advertises one. */
  url: string | null;
  /** Whether this is the node answering. */
  self: boolean;
  /** `alive` (heartbeat within the expiry), `dead` (heartbeat expired), `stopped` (said goodbye on shutdown), `unknown` (no heartbeat recorded). */
  health: NodeHealth;
  /** The node's last heartbeat, epoch seconds; `null` when none is recorded. */
  lastSeen: number | null;
  /** Images the node holds, when known. */
  images: number | null;
  /** Bytes the node holds, when known. */
  bytes: number | null;
}

/**
 * Where the status page reads the cluster's nodes from. A server on its own
 * has none (the page shows this node only). The server derives one from
 * its driver ({@link clusterStatusFromDriver}); a cluster layer with
 * heartbeats provides its own.
 */
export interface ClusterStatusSource {
  /** Every node known to the cluster, this one included. */
  nodes(): Promise<ClusterNodeStatus[]>;
}

/** One fill running on this node (a miss or a prefetch being fetched, or followed from another process). */
export interface FillStatus {
  /** The image id. */
  id: ImageId;
  /** Bytes in the cache file so far. */
  written: number;
  /** The size the origin announced; `null` until it answers, or when it sent none (chunked). */
  expectedSize: number | null;
  /** `owner` (this process fetches), `follower` (another process does), `pending` (deciding). */
  role: FillRole;
  /** Clients of this process reading it now. */
  readers: number;
}

/** One free-space threshold, resolved against the cache filesystem. */
export interface ThresholdStatus {
  /** Free bytes below which it is crossed. */
  bytes: number;
  /** Free inodes below which it is crossed; `null` for a byte threshold. */
  files: number | null;
}

/** The space policy (ADR 0006) as the status page shows it: `ImageCache.spaceStatus()`. */
export interface SpaceReport {
  /** The byte budget. */
  maxBytes: number;
  /** Whether the budget is held on the write path (always with `image-cache serve`). */
  writeBudget: boolean;
  /** Bytes counted against the budget, by part: active entries, `incomplete/`, `invalid/`, reserved by writes beyond what they wrote. */
  parts: { active: number; incomplete: number; invalid: number; reserved: number };
  /** The sum of the parts. */
  usedBytes: number;
  /** The cache filesystem (statfs): size and free bytes, inodes and free inodes. */
  disk: { totalBytes: number; freeBytes: number; totalFiles: number; freeFiles: number };
  /** The free-space thresholds (`run` > `cull` > `stop`), `null` when none are set. */
  thresholds: { run: ThresholdStatus; cull: ThresholdStatus; stop: ThresholdStatus } | null;
  /** The free-space watcher: `ok`, `culling` (below `cull`, evicting until `run`), `stopped` (below `stop`: nothing new is cached). */
  state: SpaceState;
}

/** The body of `GET /v2/status`, which the status page polls. */
export interface StatusReport {
  /** When this report was made (ISO 8601). */
  generatedAt: string;
  node: {
    /** The metadata driver's name (`sqlite`, `xattr`, `postgres`, ...). */
    driver: string;
    /** The node's identity in a cluster (the postgres driver's `nodeId`), else `null`. */
    nodeId: string | null;
    /** The process that answered (one of the workers of `serve --workers N`). */
    pid: number;
    /** Seconds since the process that answered started. */
    uptimeSeconds: number;
  };
  cache: {
    /** Bytes in active entries. */
    bytes: number;
    /** The byte budget prune enforces. */
    maxBytes: number;
    /** Active entries. */
    images: number;
    /** Images queued for prefetch. */
    queued: number;
  };
  /**
   * Image responses since the server started (the `image_cache_hits_total`/`misses_total`
   * counters): of every process of a server of several processes (`serve --workers N`,
   * from the metrics its primary aggregates), see `scope`.
   */
  requests: {
    /**
     * `server`: the figures are the whole server's (its one process, or every
     * worker's summed); `process`: a worker whose primary did not answer in
     * time reports its own figures only.
     */
    scope: 'server' | 'process';
    /** How many processes the figures sum (the pids of `image_cache_server_process`; 1 for a server on its own). */
    processes: number;
    hits: number;
    misses: number;
    /** `hits / (hits + misses)`, `null` before the first image response. */
    hitRatio: number | null;
    /** Image bytes sent, by where they came from. */
    servedBytes: { cache: number; origin: number };
  };
  /** The {@link STATUS_TOP_IMAGES} most hit entries (hits recorded by the driver, all time), most hit first. */
  topImages: { id: ImageId; hits: number; size: number; lastAccessed: number }[];
  /** Fills running now in the process that answered (with `serve --workers N`, each worker lists its own). */
  fills: FillStatus[];
  /**
   * The space policy: the budget by part, the filesystem's free space, the
   * thresholds and the watcher's state; `null` when it could not be read
   * (the error is counted in /metrics).
   */
  space: SpaceReport | null;
  /**
   * The cluster's nodes; `null` when this server is on its own. When the
   * source failed, `nodes` is empty and `error` says why (code and short message).
   */
  cluster: { nodes: ClusterNodeStatus[]; error: { code: string; message: string } | null } | null;
}

/** A driver that can list the nodes of its cluster itself (with heartbeats). */
interface NodesDriver {
  getClusterNodes(): Promise<ClusterNodeStatus[]>;
}

/** A driver that lists the images of every node (`@cache/driver-postgres`'s `getClusterImages`). */
interface ClusterImagesDriver {
  readonly nodeId: string;
  getClusterImages(): Promise<{ nodes: string[]; size: number }[]>;
}

/**
 * The cluster source a driver offers, if any: its own `getClusterNodes()`
 * when it has one, else the nodes named by `getClusterImages()` (those
 * holding at least one image, with their counts and bytes; health `alive` for
 * this node and `unknown` for the others, as no heartbeat is recorded), else
 * `undefined` (a node on its own: sqlite, xattr).
 */
export function clusterStatusFromDriver(driver: CacheDriver): ClusterStatusSource | undefined {
  const candidate = driver as CacheDriver & Partial<NodesDriver> & Partial<ClusterImagesDriver>;
  if (typeof candidate.getClusterNodes === 'function') {
    const nodes = candidate.getClusterNodes.bind(candidate);
    return { nodes };
  }
  if (typeof candidate.getClusterImages === 'function' && typeof candidate.nodeId === 'string') {
    const self = candidate.nodeId;
    const images = candidate.getClusterImages.bind(candidate);
    return {
      async nodes() {
        const held = new Map<string, { images: number; bytes: number }>([[self, { images: 0, bytes: 0 }]]);
        for (const image of await images()) {
          for (const node of image.nodes) {
            const totals = held.get(node) ?? { images: 0, bytes: 0 };
            totals.images += 1;
            totals.bytes += image.size;
            held.set(node, totals);
          }
        }
        return [...held].map(([id, totals]) => ({
          id,
          url: null,
          self: id === self,
          health: id === self ? 'alive' : 'unknown',
          lastSeen: null,
          images: totals.images,
          bytes: totals.bytes,
        }));
      },
    };
  }
  return undefined;
}

/**
 * The cluster source of a server that is a node of a cluster
 * (the `cluster` option of `createCacheServer`): every registered node with its
 * advertised URL, heartbeat health and holdings, from the shared directory.
 */
export function clusterStatusFromDirectory(directory: ClusterDirectory): ClusterStatusSource {
  return {
    async nodes() {
      const { nodes } = await directory.getClusterStatus();
      return nodes.map((node) => ({
        id: node.nodeId,
        url: node.url ?? null,
        self: node.self,
        health: (['alive', 'dead', 'stopped'].includes(node.health) ? node.health : 'unknown') as NodeHealth,
        lastSeen: node.lastHeartbeat ?? null,
        images: node.images,
        bytes: node.bytes,
      }));
    },
  };
}

async function counterTotal(counter: { get(): Promise<{ values: { value: number; labels: Record<string, unknown> }[] }> }, label?: [string, string]): Promise<number> {
  const { values } = await counter.get();
  return values.filter((v) => label === undefined || v.labels[label[0]] === label[1]).reduce((sum, v) => sum + v.value, 0);
}

/** The request figures of this process's own counters. */
async function processRequests(context: ServerContext, scope: 'server' | 'process'): Promise<RequestFigures> {
  const { metrics } = context;
  const [hits, misses, fromCache, fromOrigin] = await Promise.all([
    counterTotal(metrics.hits),
    counterTotal(metrics.misses),
    counterTotal(metrics.servedBytes, ['source', 'cache']),
    counterTotal(metrics.servedBytes, ['source', 'origin']),
  ]);
  return { scope, processes: 1, hits, misses, fromCache, fromOrigin };
}

interface RequestFigures {
  scope: 'server' | 'process';
  processes: number;
  hits: number;
  misses: number;
  fromCache: number;
  fromOrigin: number;
}

/**
 * The request figures of the whole server: this process's counters, or, in a
 * worker of a server of several processes, the sums in the metrics its
 * primary aggregated (this process's own, `scope: 'process'`, when they did not arrive).
 */
async function requestFigures(context: ServerContext): Promise<RequestFigures> {
  if (!context.aggregatedMetrics) return processRequests(context, 'server');
  let text: string;
  try {
    text = await context.wholeServerMetrics();
  } catch (error) {
    context.metrics.countError(error, 503);
    return processRequests(context, 'process');
  }
  return {
    scope: 'server',
    processes: processPids(text, METRIC_NAMES.process).length,
    hits: sampleSum(text, METRIC_NAMES.hits),
    misses: sampleSum(text, METRIC_NAMES.misses),
    fromCache: sampleSum(text, METRIC_NAMES.servedBytes, ['source', 'cache']),
    fromOrigin: sampleSum(text, METRIC_NAMES.servedBytes, ['source', 'origin']),
  };
}

/** Builds the {@link StatusReport} of this node (reads the driver: size, listing, queue). */
export async function buildStatus(context: ServerContext): Promise<StatusReport> {
  const { cache, fills, clusterNodes } = context;
  const [bytes, images, queued, { scope, processes, hits, misses, fromCache, fromOrigin }, clusterReport, space] = await Promise.all([
    cache.getCacheSize(),
    cache.getCachedImages(),
    cache.getQueuedImages(),
    requestFigures(context),
    clusterStatus(clusterNodes, context),
    spaceReport(context),
  ]);
  const driver = cache.driver as CacheDriver & { nodeId?: unknown };
  return {
    generatedAt: new Date().toISOString(),
    node: {
      driver: cache.driver.name,
      nodeId: typeof driver.nodeId === 'string' ? driver.nodeId : null,
      pid: process.pid,
      uptimeSeconds: Math.round(process.uptime()),
    },
    cache: { bytes, maxBytes: cache.maxSize, images: images.length, queued: queued.length },
    requests: {
      scope,
      processes,
      hits,
      misses,
      hitRatio: hits + misses === 0 ? null : hits / (hits + misses),
      servedBytes: { cache: fromCache, origin: fromOrigin },
    },
    topImages: [...images]
      .sort((a, b) => b.hits - a.hits || b.lastAccessed - a.lastAccessed || (a.imageId < b.imageId ? -1 : 1))
      .slice(0, STATUS_TOP_IMAGES)
      .map((image) => ({ id: image.imageId, hits: image.hits, size: image.size, lastAccessed: image.lastAccessed })),
    fills: (fills?.list() ?? []).map((fill) => ({
      id: fill.imageId,
      written: fill.written,
      expectedSize: fill.expectedSize ?? null,
      role: fill.role,
      readers: fill.readers,
    })),
    space,
    cluster: clusterReport,
  };
}

async function spaceReport(context: ServerContext): Promise<SpaceReport | null> {
  try {
    const now = await context.cache.spaceStatus();
    const threshold = (t: { bytes: number; files: number | undefined }): ThresholdStatus => ({ bytes: t.bytes, files: t.files ?? null });
    return {
      maxBytes: now.maxSize,
      writeBudget: now.writeBudget,
      parts: { active: now.active, incomplete: now.incomplete, invalid: now.invalid, reserved: now.reserved },
      usedBytes: now.active + now.incomplete + now.invalid + now.reserved,
      disk: { ...now.disk },
      thresholds:
        now.thresholds === undefined
          ? null
          : { run: threshold(now.thresholds.run), cull: threshold(now.thresholds.cull), stop: threshold(now.thresholds.stop) },
      state: now.state,
    };
  } catch (error) {
    // The rest of the page still renders; the error is counted (and reaches readiness).
    context.metrics.countError(error);
    return null;
  }
}

async function clusterStatus(source: ClusterStatusSource | undefined, context: ServerContext): Promise<StatusReport['cluster']> {
  if (source === undefined) return null;
  try {
    return { nodes: await source.nodes(), error: null };
  } catch (error) {
    // The rest of the page still renders; the whole error is counted (and reaches readiness).
    context.metrics.countError(error);
    return { nodes: [], error: { code: errorLabel(error, 503), message: publicMessage(error, 503) } };
  }
}
