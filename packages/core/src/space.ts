import { statfs } from 'node:fs/promises';
import type { CacheDirectory, EntryStat } from './cache-dir.js';
import { compareByRecency } from './directory-driver.js';
import type { CachedImage, CacheDriver } from './driver.js';
import { CacheFullError, InvalidArgumentError } from './errors.js';
import type { ImageId } from './image-id.js';
import { WRITE_BEHIND_BYTES } from './streams.js';

// The space policy (issue 14, ADR 0006): the byte budget held on the write
// path by reservations, and free-space thresholds in the manner of Linux's
// cachefiles (brun/bcull/bstop), watched with statfs.

/** A free-space threshold: a percentage of the filesystem (blocks and inodes), or a number of free bytes (blocks only). */
export type SpaceThreshold = { percent: number } | { bytes: number };

/**
 * Free-space thresholds of the cache's filesystem, as cachefiles' `brun`,
 * `bcull`, `bstop` (`stop` < `cull` < `run`): below `stop` free space no new
 * image is cached (misses are served uncached); below `cull` least recently
 * used entries are evicted until `run` is free again. A percentage applies to
 * blocks and inodes (`statfs` `bavail`/`blocks`, `ffree`/`files`), a byte
 * count to blocks only.
 */
export interface FreeSpaceOptions {
  /** Culling stops once this much is free. */
  run: SpaceThreshold;
  /** Culling starts below this. */
  cull: SpaceThreshold;
  /** No new image is cached below this. */
  stop: SpaceThreshold;
  /** Milliseconds between two statfs of the watcher. @default 250 */
  intervalMs?: number;
}

/** One threshold resolved against the filesystem: free bytes, and free inodes when it is a percentage. */
export interface ResolvedThreshold {
  /** Free bytes (statfs `bavail` × `bsize`) below which the threshold is crossed. */
  bytes: number;
  /** Free inodes below which it is crossed; `undefined` for a byte threshold or a filesystem without an inode count. */
  files: number | undefined;
}

/** The thresholds in bytes and inodes of the cache's filesystem, as given (`spec`) and resolved. */
export interface ResolvedThresholds {
  run: ResolvedThreshold;
  cull: ResolvedThreshold;
  stop: ResolvedThreshold;
  /** The options they were resolved from. */
  spec: { run: SpaceThreshold; cull: SpaceThreshold; stop: SpaceThreshold };
}

/** The cache filesystem's size and free space, from statfs. */
export interface DiskSpace {
  totalBytes: number;
  /** Bytes available to this process (`bavail` × `bsize`). */
  freeBytes: number;
  totalFiles: number;
  freeFiles: number;
}

/** `ok`; `culling` (free space below `cull`, evicting until `run`); `stopped` (below `stop`: nothing new is cached). */
export type SpaceState = 'ok' | 'culling' | 'stopped';

/** Why an image was not cached: larger than the whole budget, the rest of the budget held by reads and fills, or the disk below `stop`. */
export type BypassReason = 'too-large' | 'budget-full' | 'disk-low';

/** Why an entry was evicted outside `prune()`: to make room for a write, because free space fell below `cull`, or after an ENOSPC. */
export type EvictionCause = 'budget' | 'cull' | 'enospc';

/** What the space policy did, for logs and metrics ({@link ImageCacheSpaceOptions.onSpaceEvent}). */
export type SpaceEvent =
  | { type: 'bypass'; imageId: ImageId; reason: BypassReason; size: number | undefined }
  | { type: 'evict'; imageId: ImageId; bytes: number; cause: EvictionCause; from: 'active' | 'invalid' }
  | { type: 'state'; state: SpaceState; disk: DiskSpace }
  | { type: 'enospc'; imageId: ImageId; retried: boolean };

/** The space options of `ImageCache.open`. */
export interface ImageCacheSpaceOptions {
  /**
   * Hold `maxSize` on the write path: each write reserves its space before
   * it writes (the whole size when known, else as it grows), evicting least
   * recently used entries that nothing in this process reads or fills;
   * `incomplete/` and `invalid/` count. A write that cannot fit is not
   * cached. Off: `maxSize` is enforced by `prune()` only (Glance's
   * behaviour). @default false
   */
  writeBudget?: boolean;
  /**
   * With {@link writeBudget}: bytes kept free below `maxSize` ahead of the
   * next write. After a reservation leaves less than this free in the
   * budget, least recently used idle entries are evicted in the background
   * (after the decision, while the write runs), so that the next write finds
   * its room without waiting for an unlink. The budget itself is never
   * exceeded either way. `image-cache serve` uses {@link suggestedHeadroom}. @default 0
   */
  headroom?: number;
  /** Free-space thresholds with a background watcher (see {@link FreeSpaceOptions}). @default none */
  freeSpace?: FreeSpaceOptions;
  /** Told of every bypass, eviction, state change and ENOSPC of the space policy. */
  onSpaceEvent?: (event: SpaceEvent) => void;
}

/** What {@link ImageCache.spaceStatus} reports. */
export interface SpaceStatus {
  /** The byte budget. */
  maxSize: number;
  /** Whether the budget is held on the write path ({@link ImageCacheSpaceOptions.writeBudget}). */
  writeBudget: boolean;
  /** Bytes of active entries (metadata sizes). */
  active: number;
  /** Bytes in `incomplete/`. */
  incomplete: number;
  /** Bytes in `invalid/`. */
  invalid: number;
  /** Bytes reserved by this process's writes beyond what they have written. */
  reserved: number;
  /** The filesystem now. */
  disk: DiskSpace;
  /** The watcher's state (`ok` without thresholds). */
  state: SpaceState;
  /** The thresholds, when set. */
  thresholds: ResolvedThresholds | undefined;
}

/** What the space policy needs of the cache. */
export interface SpaceHost {
  driver: CacheDriver;
  files: CacheDirectory;
  maxSize: number;
  writeBudget: boolean;
  /** Bytes kept free below the budget by background eviction (see {@link ImageCacheSpaceOptions.headroom}). */
  headroom: number;
  /** True while this process reads or fills `id` (such an entry is never evicted). */
  isBusy(id: ImageId): boolean;
  onEvent: ((event: SpaceEvent) => void) | undefined;
}

/** What a write needs of the space policy (fills, caching streams, `cacheImage`). @internal */
export interface WriteSpace {
  /**
   * Admits a write of `size` bytes (`undefined`: unknown, reserved as it
   * grows): resolves `undefined`, or the reason it must not be cached.
   */
  admit(id: ImageId, size: number | undefined): Promise<BypassReason | undefined>;
  /** Makes sure `total` bytes of `id` are reserved; resolves the error when they cannot be. */
  grow(id: ImageId, total: number): Promise<CacheFullError | undefined>;
  /** Bytes reserved for `id` now (a write grows its reservation only past this). */
  reservedFor(id: ImageId): number;
  /**
   * An ENOSPC: frees `remaining` bytes on the filesystem by eviction when it
   * can (see {@link noSpaceNeed}); resolves true to retry the write.
   * `undefined`: nothing is evicted, the write fails.
   */
  noSpace(id: ImageId, remaining: number | undefined): Promise<boolean>;
  /** The write has ended (committed, rolled back or bypassed): its reservation goes. */
  release(id: ImageId): void;
}

/**
 * What an ENOSPC asks the policy to free (see {@link WriteSpace.noSpace}):
 * for a write of known size, the rest of it (`rest`: the size less what is
 * written), at least the failed write's `unwritten` bytes; for a write of
 * unknown size (`rest` undefined), one write buffer's worth
 * ({@link WRITE_BEHIND_BYTES}, what a writer holds accepted but unwritten),
 * at least the failed write's bytes. A write of unknown size that keeps
 * hitting ENOSPC asks again at each write that fails, and fails once
 * eviction cannot free that much.
 */
export function noSpaceNeed(rest: number | undefined, unwritten: number): number {
  return Math.max(unwritten, rest ?? WRITE_BEHIND_BYTES);
}

/** Largest step an unknown-size write grows its reservation by (else 1/64 of the budget). */
const MAX_GROW_STEP = 64 * 1024 * 1024;
/** The watcher's default interval: a threshold crossing is seen within it. */
export const DEFAULT_SPACE_INTERVAL_MS = 250;

const MESSAGES: Record<BypassReason, string> = {
  'too-large': 'it is larger than the whole cache budget',
  'budget-full': 'the cache budget is held by images being read or written',
  'disk-low': 'free space on the cache filesystem is below the stop threshold',
};

/**
 * A headroom for a budget of `maxSize` bytes: 1/64 of it, at most 64 MiB
 * (what `image-cache serve` keeps free below its budget, see
 * {@link ImageCacheSpaceOptions.headroom}).
 */
export function suggestedHeadroom(maxSize: number): number {
  return Math.min(MAX_GROW_STEP, Math.floor(maxSize / 64));
}

/** A {@link CacheFullError} for `reason`. */
export function cacheFull(id: ImageId, reason: BypassReason, detail = ''): CacheFullError {
  return new CacheFullError(id, reason, `${MESSAGES[reason]}${detail}`);
}

/** statfs of `dir` as a {@link DiskSpace}. */
export async function diskSpace(dir: string): Promise<DiskSpace> {
  const info = await statfs(dir);
  return {
    totalBytes: info.blocks * info.bsize,
    freeBytes: info.bavail * info.bsize,
    totalFiles: info.files,
    freeFiles: info.ffree,
  };
}

function thresholdProblem(name: string, value: unknown): string | undefined {
  if (typeof value !== 'object' || value === null) return `${name} must be { percent } or { bytes }`;
  const { percent, bytes } = value as { percent?: unknown; bytes?: unknown };
  if (percent !== undefined && bytes !== undefined) return `${name} must have percent or bytes, not both`;
  if (percent !== undefined) {
    return typeof percent === 'number' && Number.isFinite(percent) && percent >= 0 && percent < 100
      ? undefined
      : `${name}.percent must be a number >= 0 and < 100, got ${String(percent)}`;
  }
  if (bytes !== undefined) {
    return typeof bytes === 'number' && Number.isSafeInteger(bytes) && bytes >= 0 ? undefined : `${name}.bytes must be an integer >= 0, got ${String(bytes)}`;
  }
  return `${name} must be { percent } or { bytes }`;
}

/**
 * Validates thresholds and resolves them against a filesystem of `disk`'s
 * size. Throws `InvalidArgumentError` unless `stop` < `cull` < `run` (in
 * bytes, and in inodes where all three have an inode count) and `run` is
 * below the filesystem's size.
 */
export function resolveThresholds(options: FreeSpaceOptions, disk: DiskSpace): ResolvedThresholds {
  if (typeof options !== 'object' || options === null) throw new InvalidArgumentError('freeSpace must be { run, cull, stop }');
  for (const name of ['run', 'cull', 'stop'] as const) {
    const problem = thresholdProblem(`freeSpace.${name}`, options[name]);
    if (problem !== undefined) throw new InvalidArgumentError(problem);
  }
  const { intervalMs } = options;
  if (intervalMs !== undefined && (typeof intervalMs !== 'number' || !Number.isFinite(intervalMs) || intervalMs <= 0)) {
    throw new InvalidArgumentError(`freeSpace.intervalMs must be a number of milliseconds > 0, got ${String(intervalMs)}`);
  }
  const resolve = (t: SpaceThreshold): ResolvedThreshold =>
    'percent' in t
      ? {
          bytes: Math.ceil((disk.totalBytes * t.percent) / 100),
          files: disk.totalFiles > 0 ? Math.ceil((disk.totalFiles * t.percent) / 100) : undefined,
        }
      : { bytes: t.bytes, files: undefined };
  const resolved = { run: resolve(options.run), cull: resolve(options.cull), stop: resolve(options.stop) };
  const { run, cull, stop } = resolved;
  if (!(stop.bytes < cull.bytes && cull.bytes < run.bytes)) {
    throw new InvalidArgumentError(
      `freeSpace thresholds must satisfy stop < cull < run, got stop ${stop.bytes}, cull ${cull.bytes}, run ${run.bytes} free bytes`,
    );
  }
  if (run.bytes >= disk.totalBytes) {
    throw new InvalidArgumentError(`freeSpace.run (${run.bytes} bytes) must be below the filesystem's size (${disk.totalBytes} bytes)`);
  }
  if (stop.files !== undefined && cull.files !== undefined && run.files !== undefined && !(stop.files <= cull.files && cull.files <= run.files)) {
    throw new InvalidArgumentError('freeSpace thresholds must satisfy stop <= cull <= run in inodes');
  }
  return { ...resolved, spec: { run: options.run, cull: options.cull, stop: options.stop } };
}

/** What is on disk and reserved, as one scan saw it. */
interface Usage {
  images: CachedImage[];
  invalid: EntryStat[];
  used: number;
  active: number;
  incomplete: number;
  invalidBytes: number;
  reservedExtra: number;
}

/**
 * The space policy of one `ImageCache`: reservations of this process's
 * writes against the byte budget, eviction on the write path, the ENOSPC
 * handler and the free-space watcher. Every decision runs one at a time
 * (a promise chain), so two writes never both take the last free bytes.
 */
export class SpacePolicy implements WriteSpace {
  readonly #host: SpaceHost;
  readonly #reserved = new Map<ImageId, number>();
  #chain: Promise<unknown> = Promise.resolve();
  #state: SpaceState = 'ok';
  #thresholds: ResolvedThresholds | undefined;
  #timer: NodeJS.Timeout | undefined;
  #ticking = false;
  #disk: DiskSpace | undefined;

  constructor(host: SpaceHost) {
    this.#host = host;
  }

  /** The resolved thresholds, when set. */
  get thresholds(): ResolvedThresholds | undefined {
    return this.#thresholds;
  }

  /**
   * True while this process reads, fills, or holds a reservation for `id`:
   * the one "busy" test of every eviction (the space policy's, and
   * `prune()`'s). Such an entry is never evicted by this process.
   */
  isBusy(id: ImageId): boolean {
    return this.#host.isBusy(id) || this.#reserved.has(id);
  }

  /** The watcher's state. */
  get state(): SpaceState {
    return this.#state;
  }

  /** Resolves the thresholds against the cache's filesystem and starts the watcher (its timer never keeps the process alive). */
  async watch(options: FreeSpaceOptions): Promise<void> {
    this.#thresholds = resolveThresholds(options, await diskSpace(this.#host.files.baseDir));
    await this.tick();
    this.#timer = setInterval(() => void this.tick(), options.intervalMs ?? DEFAULT_SPACE_INTERVAL_MS);
    this.#timer.unref();
  }

  /** Stops the watcher. */
  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #serialize<T>(work: () => Promise<T>): Promise<T> {
    const run = this.#chain.then(work, work);
    this.#chain = run.catch(() => undefined);
    return run;
  }

  #emit(event: SpaceEvent): void {
    try {
      this.#host.onEvent?.(event);
    } catch {
      // A broken listener must not break a write.
    }
  }

  #below(disk: DiskSpace, threshold: ResolvedThreshold): boolean {
    return disk.freeBytes < threshold.bytes || (threshold.files !== undefined && disk.totalFiles > 0 && disk.freeFiles < threshold.files);
  }

  #setState(state: SpaceState, disk: DiskSpace): void {
    if (state === this.#state) return;
    this.#state = state;
    this.#emit({ type: 'state', state, disk });
  }

  /**
   * One look at the filesystem: sets the state, and below `cull` evicts
   * least recently used entries (failed writes in `invalid/` first) until
   * `run` is free again by its count, or nothing evictable is left.
   */
  async tick(): Promise<void> {
    const thresholds = this.#thresholds;
    if (thresholds === undefined || this.#ticking) return;
    this.#ticking = true;
    try {
      let disk = await diskSpace(this.#host.files.baseDir);
      this.#disk = disk;
      if (this.#below(disk, thresholds.cull)) {
        this.#setState(this.#below(disk, thresholds.stop) ? 'stopped' : 'culling', disk);
        await this.#serialize(async () => {
          const usage = await this.#usage();
          const bytes = Math.max(0, thresholds.run.bytes - disk.freeBytes);
          const files = thresholds.run.files === undefined ? 0 : Math.max(0, thresholds.run.files - disk.freeFiles);
          await this.#evict(usage, bytes, files, 'cull', true);
        });
        disk = await diskSpace(this.#host.files.baseDir);
        this.#disk = disk;
      }
      this.#setState(this.#below(disk, thresholds.stop) ? 'stopped' : this.#below(disk, thresholds.cull) ? 'culling' : 'ok', disk);
    } catch {
      // The next tick looks again; a failing filesystem fails the writes themselves.
    } finally {
      this.#ticking = false;
    }
  }

  /** Lists `incomplete/`, the entries and `invalid/`, in that order (a file moving between them is counted twice, never missed). */
  async #usage(): Promise<Usage> {
    const incompleteFiles = await this.#host.files.list('incomplete');
    const images = await this.#host.driver.getCachedImages();
    const invalid = await this.#host.files.list('invalid');
    const active = images.reduce((sum, image) => sum + image.size, 0);
    const invalidBytes = invalid.reduce((sum, file) => sum + file.size, 0);
    let incomplete = 0;
    let reservedExtra = 0;
    const onDisk = new Map<string, number>();
    for (const file of incompleteFiles) {
      onDisk.set(file.imageId, file.size);
      incomplete += file.size;
    }
    for (const [id, bytes] of this.#reserved) reservedExtra += Math.max(0, bytes - (onDisk.get(id) ?? 0));
    return { images, invalid, used: active + invalidBytes + incomplete + reservedExtra, active, incomplete, invalidBytes, reservedExtra };
  }

  /**
   * Evicts until `bytes` (and `files` files) are freed: `invalid/` oldest
   * first, then active entries least recently used first, never one this
   * process reads, fills or reserves. With `partial` false nothing is
   * evicted unless the evictable entries add up to `bytes`. Resolves the bytes freed.
   */
  async #evict(usage: Usage, bytes: number, files: number, cause: EvictionCause, partial: boolean): Promise<number> {
    if (bytes <= 0 && files <= 0) return 0;
    const busy = (id: ImageId) => this.isBusy(id);
    const invalid = usage.invalid
      .filter((file) => !this.#reserved.has(file.imageId))
      .sort((a, b) => (a.mtimeNs < b.mtimeNs ? -1 : a.mtimeNs > b.mtimeNs ? 1 : a.imageId < b.imageId ? -1 : 1));
    const images = usage.images.filter((image) => !busy(image.imageId)).sort(compareByRecency);
    const victims: { id: ImageId; size: number; from: 'active' | 'invalid' }[] = [];
    let chosen = 0;
    for (const file of invalid) {
      if (chosen >= bytes && victims.length >= files) break;
      victims.push({ id: file.imageId, size: file.size, from: 'invalid' });
      chosen += file.size;
    }
    for (const image of images) {
      if (chosen >= bytes && victims.length >= files) break;
      victims.push({ id: image.imageId, size: image.size, from: 'active' });
      chosen += image.size;
    }
    if (!partial && chosen < bytes) return 0;
    let freed = 0;
    for (const victim of victims) {
      // Looked at again: a read or fill may have begun since the listing.
      if (victim.from === 'active' && busy(victim.id)) continue;
      try {
        if (victim.from === 'invalid') {
          if (!(await this.#host.files.remove(victim.id, 'invalid'))) continue;
        } else {
          await this.#host.driver.deleteCachedImage(victim.id);
        }
      } catch {
        continue; // gone already, or the store failed: the next decision looks again
      }
      freed += victim.size;
      this.#emit({ type: 'evict', imageId: victim.id, bytes: victim.size, cause, from: victim.from });
    }
    return freed;
  }

  /** The budget and the disk now. */
  async status(): Promise<SpaceStatus> {
    const usage = await this.#serialize(() => this.#usage());
    const disk = await diskSpace(this.#host.files.baseDir);
    return {
      maxSize: this.#host.maxSize,
      writeBudget: this.#host.writeBudget,
      active: usage.active,
      incomplete: usage.incomplete,
      invalid: usage.invalidBytes,
      reserved: usage.reservedExtra,
      disk,
      state: this.#state,
      thresholds: this.#thresholds,
    };
  }

  async #diskLow(): Promise<boolean> {
    const thresholds = this.#thresholds;
    if (thresholds === undefined) return false;
    const disk = await diskSpace(this.#host.files.baseDir).catch(() => this.#disk);
    return disk !== undefined && this.#below(disk, thresholds.stop);
  }

  /** Reserves `bytes` more for `id` (evicting for them); resolves the reason when it cannot. */
  #reserve(id: ImageId, bytes: number, total: number): Promise<BypassReason | undefined> {
    return this.#serialize(async () => {
      const maxSize = this.#host.maxSize;
      if (this.#host.writeBudget) {
        if (total > maxSize) return 'too-large';
        const usage = await this.#usage();
        const over = usage.used + bytes - maxSize;
        if (over > 0 && (await this.#evict(usage, over, 0, 'budget', false)) < over) return 'budget-full';
      }
      this.#reserved.set(id, total);
      if (this.#host.writeBudget && this.#host.headroom > 0) this.#keepHeadroom();
      return undefined;
    });
  }

  /**
   * Queued behind the decision that called it (never awaited by the write):
   * evicts idle least recently used entries until the budget has
   * `headroom` bytes free again, or nothing idle is left.
   */
  #keepHeadroom(): void {
    void this.#serialize(async () => {
      const usage = await this.#usage();
      const over = usage.used + this.#host.headroom - this.#host.maxSize;
      if (over > 0) await this.#evict(usage, over, 0, 'budget', true);
    }).catch(() => undefined);
  }

  async admit(id: ImageId, size: number | undefined): Promise<BypassReason | undefined> {
    let reason: BypassReason | undefined;
    if (await this.#diskLow()) reason = 'disk-low';
    else if (this.#host.writeBudget) {
      const first = size ?? Math.min(this.#step(), this.#host.maxSize);
      reason = await this.#reserve(id, first, first);
    }
    if (reason !== undefined) this.#emit({ type: 'bypass', imageId: id, reason, size });
    return reason;
  }

  #step(): number {
    return Math.min(MAX_GROW_STEP, Math.max(1, Math.floor(this.#host.maxSize / 64)));
  }

  reservedFor(id: ImageId): number {
    return this.#host.writeBudget ? (this.#reserved.get(id) ?? 0) : Number.POSITIVE_INFINITY;
  }

  async grow(id: ImageId, total: number): Promise<CacheFullError | undefined> {
    const current = this.#reserved.get(id) ?? 0;
    if (!this.#host.writeBudget || total <= current) return undefined;
    // Ahead by a step (at most the budget): few decisions, each a listing.
    const target = Math.max(total, Math.min(this.#host.maxSize, current + this.#step()));
    let reason = await this.#reserve(id, target - current, target);
    if (reason !== undefined && target > total) reason = await this.#reserve(id, total - current, total);
    if (reason === undefined) return undefined;
    this.#emit({ type: 'bypass', imageId: id, reason, size: undefined });
    return cacheFull(id, reason, ` (grown to ${total} bytes, budget ${this.#host.maxSize})`);
  }

  async noSpace(id: ImageId, remaining: number | undefined): Promise<boolean> {
    const retried =
      remaining !== undefined &&
      (await this.#serialize(async () => {
        const disk = await diskSpace(this.#host.files.baseDir);
        const missing = remaining - disk.freeBytes;
        if (missing > 0 && (await this.#evict(await this.#usage(), missing, 0, 'enospc', false)) < missing) return false;
        // A journaling filesystem (ext4, xfs) counts the blocks of unlinked files as free at once
        // (statfs) but hands them to writers only once the transaction holding the unlinks commits
        // (every few seconds, later on a busy machine): an ENOSPC while statfs shows room is that.
        // An fsync of the directories commits it, so the retry finds the space.
        await Promise.all([this.#host.files.syncDir('active'), this.#host.files.syncDir('invalid')]);
        return true;
      }).catch(() => false));
    this.#emit({ type: 'enospc', imageId: id, retried });
    return retried;
  }

  release(id: ImageId): void {
    this.#reserved.delete(id);
  }
}
