import { constants as fsConstants, lstat as lstatCallback, lstatSync, openSync, renameSync, statSync, unlink as unlinkCallback, unlinkSync, type BigIntStats, type Stats } from 'node:fs';
import { access, mkdir, open, readdir, rename, stat, type FileHandle } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { BadDriverConfigurationError, CacheStorageError, ImageBeingCachedError } from './errors.js';
import { assertImageId, isValidImageId, type ImageId } from './image-id.js';
import { FdHandle } from './write-handle.js';

/**
 * Entries up to this size (64 KiB) are committed with synchronous calls on
 * the event loop where each asynchronous one would be a threadpool round trip
 * costing more than the work: the data write (into the page cache), the
 * fstat, the rename into place, the close, the queue marker's unlink and the
 * xattr driver's attributes (docs/adr/0007-durability-modes.md, "Small
 * commits"). The fsyncs of strict mode always stay on the threadpool. A small
 * commit blocks the event loop for one write of at most this many bytes into
 * the page cache plus a few metadata calls (microseconds each on a local
 * disk; longer only when the kernel throttles a writer for dirty pages).
 */
export const SMALL_WRITE_BYTES = 64 * 1024;

/** Where an image's file lives: the active set or one of the three sub-directories. */
export type EntryStatus = 'active' | 'incomplete' | 'invalid' | 'queue';

/** The sub-directories of a cache directory, as Glance names them. */
export const SUBDIRECTORIES = ['incomplete', 'invalid', 'queue'] as const;

/** How many checked ids {@link CacheDirectory.checkedActivePath} remembers before it starts over. */
const CHECKED_PATHS = 4096;

/** What one directory scan knows about a file in the cache directory. */
export interface EntryStat {
  readonly imageId: ImageId;
  /** Bytes. */
  readonly size: number;
  /** Modification time, epoch seconds (float, nanosecond source). */
  readonly mtime: number;
  /** Access time, epoch seconds (float, nanosecond source). */
  readonly atime: number;
  /** Modification time in nanoseconds since the epoch. */
  readonly mtimeNs: bigint;
  /** Access time in nanoseconds since the epoch. */
  readonly atimeNs: bigint;
  /** Inode number: with size and `mtimeNs`, what tells one file from another under the same name. */
  readonly ino: bigint;
  /**
   * Status-change time in nanoseconds since the epoch (from a `stat`; absent
   * where an entry was made otherwise). Every change of the file's
   * attributes moves it (`setxattr`, `utimes`, `chmod`, a write), a read
   * does not: a driver may keep what it read from the file's attributes
   * while ctime and the inode stay the same.
   */
  readonly ctimeNs?: bigint;
}

/**
 * A short text that identifies one file's content under its name: inode,
 * size and mtime in nanoseconds. A file replaced by another process (new
 * inode) or rewritten in place (new mtime or size) gets another identity, so
 * a driver that stores it with an entry's metadata can tell that the
 * metadata belongs to a file that is gone. Reads and attribute changes leave
 * it as it is.
 */
export function fileIdentity(entry: Pick<EntryStat, 'ino' | 'size' | 'mtimeNs'>): string {
  return `${entry.ino}:${entry.size}:${entry.mtimeNs}`;
}

/** `lstatSync` options, made once: the small queries call it per id (an object literal per call is garbage). */
const NO_THROW = { throwIfNoEntry: false } as const;
const NO_THROW_BIGINT = { bigint: true, throwIfNoEntry: false } as const;

/**
 * `lstat` (synchronous; with BigInt nanosecond times only when `bigint`) of
 * `path` when it is a regular file; `undefined` when it is missing or
 * something else; a {@link CacheStorageError} when the `lstat` fails
 * otherwise. The one rule of every synchronous stat of an entry.
 */
function regularFileSync(path: string): Stats | undefined;
function regularFileSync(path: string, bigint: true): BigIntStats | undefined;
function regularFileSync(path: string, bigint = false): Stats | BigIntStats | undefined {
  let info: Stats | BigIntStats | undefined;
  try {
    info = bigint ? lstatSync(path, NO_THROW_BIGINT) : lstatSync(path, NO_THROW);
  } catch (error) {
    if (isErrnoError(error, 'ENOENT', 'ENOTDIR')) return undefined;
    throw storageError('stat', path, error);
  }
  return info !== undefined && info.isFile() ? info : undefined;
}

/** How far (ns) an mtime may move and still be the same file: `utimes` from Node rounds to whole microseconds. */
const MTIME_SLACK_NS = 5_000n;
const MTIME_SLACK_NS_NUMBER = Number(MTIME_SLACK_NS);
/** An identity whose inode and size have at most 15 digits and whose mtime at most 19 (see {@link sameFile}). */
const SHORT_IDENTITY = /^\d{1,15}:\d{1,15}:\d{1,19}$/;
const MAX_EXACT_INO = 999_999_999_999_999n;

/**
 * True when an identity recorded with {@link fileIdentity} is that of
 * `entry`: same inode and size, mtime within a few microseconds (a tool that
 * sets atime through Node's `utimes` rewrites mtime rounded to the
 * microsecond; any real rewrite moves it far more). An identity in another
 * format is not ours to judge, and matches.
 */
export function sameFile(recorded: string, entry: Pick<EntryStat, 'ino' | 'size' | 'mtimeNs'>): boolean {
  // The common case without a BigInt or a match array (a listing calls this for every file): inode and size
  // of at most 15 digits compare exactly as doubles, and an mtime in ns of at most 19 digits converts with an
  // error of at most 128 ns each side, well inside MTIME_SLACK_NS (real rewrites move mtime by far more).
  if (SHORT_IDENTITY.test(recorded) && entry.ino <= MAX_EXACT_INO) {
    const first = recorded.indexOf(':');
    const second = recorded.indexOf(':', first + 1);
    if (Number(recorded.slice(0, first)) !== Number(entry.ino) || Number(recorded.slice(first + 1, second)) !== entry.size) return false;
    const drift = Number(recorded.slice(second + 1)) - Number(entry.mtimeNs);
    return drift > -MTIME_SLACK_NS_NUMBER && drift < MTIME_SLACK_NS_NUMBER;
  }
  const match = /^(\d+):(\d+):(\d+)$/.exec(recorded);
  if (match === null) return true;
  if (BigInt(match[1] as string) !== entry.ino || Number(match[2]) !== entry.size) return false;
  const drift = BigInt(match[3] as string) - entry.mtimeNs;
  return drift > -MTIME_SLACK_NS && drift < MTIME_SLACK_NS;
}

const NS_PER_S = 1_000_000_000n;

/** Converts nanoseconds since the epoch to float seconds without losing the whole-second part. */
export function nsToSeconds(ns: bigint): number {
  return Number(ns / NS_PER_S) + Number(ns % NS_PER_S) / 1e9;
}

/**
 * `lstat` with nanosecond times through the callback API: in Node 20 a call
 * through `fs.promises` costs about twice as much, which listings pay once
 * per entry.
 */
function lstatNs(path: string): Promise<BigIntStats> {
  return new Promise((resolve, reject) => {
    lstatCallback(path, { bigint: true }, (error, stats) => (error ? reject(error) : resolve(stats)));
  });
}

/** `unlink` through the callback API (see {@link lstatNs}). */
function unlinkFile(path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    unlinkCallback(path, (error) => (error ? reject(error) : resolve()));
  });
}

/** Names a listing `stat`s between two turns of the event loop. */
export const LIST_SLICE = 512;

/** Lets other callbacks run (one turn of the event loop). */
export function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Incomplete files owned by live writers of this process (any CacheDirectory instance). */
const liveWriters = new Set<string>();

/** Strictly increasing queue-marker times for this process, so FIFO order survives coarse clocks. */
let lastQueueMs = 0;

/** True for a Node system error with one of `codes`. */
export function isErrnoError(error: unknown, ...codes: string[]): error is NodeJS.ErrnoException {
  return typeof error === 'object' && error !== null && codes.includes((error as NodeJS.ErrnoException).code ?? '');
}

/**
 * What to do about a permission problem on `path` (a file or directory of
 * the cache), for people: who owns it, which user this process is, and the
 * three fixes (`chown` the directory to the user running the cache, `chmod`
 * it writable for that user, or run as its owner). `directory` is what to
 * `chown`/`chmod`: the cache directory when known, else `path`'s directory.
 * It says plainly that nothing is damaged, so no one moves data aside for it.
 */
export function permissionAdvice(path: string, directory: string = dirname(path)): string {
  const uid = typeof process.getuid === 'function' ? process.getuid() : undefined;
  let owner = '';
  for (const candidate of [path, directory]) {
    try {
      const info = statSync(candidate);
      owner = ` (${candidate} belongs to uid ${info.uid}, mode ${(info.mode & 0o7777).toString(8).padStart(4, '0')})`;
      break;
    } catch {
      // missing: try the directory
    }
  }
  const user = uid === undefined ? '<user>' : String(uid);
  return (
    `This is a permissions problem, not damage (nothing needs to be moved or rebuilt): this process runs as ${uid === undefined ? 'a user that' : `uid ${uid} and`} ` +
    `cannot write there${owner}. Fix: \`chown -R ${user} ${directory}\` (the user that runs the cache), ` +
    `or \`chmod -R u+rwX ${directory}\` (g+rwX for a group that user is in), or run image-cache as the directory's owner`
  );
}

/**
 * Wraps an `fs` error as a {@link CacheStorageError} that names the operation,
 * the path and what to do about the most common causes.
 */
export function storageError(operation: string, path: string, cause: unknown): CacheStorageError {
  const code = (cause as NodeJS.ErrnoException | undefined)?.code;
  const hint =
    code === 'ENOSPC' || code === 'EDQUOT'
      ? '. The filesystem is full: free space, or lower the budget (--max-size) and run `image-cache prune`'
      : code === 'EACCES' || code === 'EPERM'
        ? `. ${permissionAdvice(path)}`
        : code === 'EROFS'
          ? '. The filesystem is read-only: remount it read-write, or point --cache-dir (cacheDir) at a writable filesystem'
          : code === 'EMFILE' || code === 'ENFILE'
            ? '. Too many open files: raise the open-file limit (ulimit -n)'
            : '';
  const reason = cause instanceof Error ? cause.message : String(cause);
  return new CacheStorageError(`${operation} failed for ${path} (${reason})${hint}`, { path, cause });
}

/**
 * The cache-directory logic, written once and composed by every driver:
 * paths, exclusive create, durable commit (fsync + atomic rename + directory
 * fsync), rollback to `invalid/`, listings of real entries, the FIFO queue and
 * reaping of stalled and invalid files.
 *
 * It validates nothing about ids: callers (the driver base class) validate at
 * their public boundary. Listings skip names that are not valid ids, so the
 * database, lock files, probes and junk never count as images.
 */
export class CacheDirectory {
  /** The base directory: active entries live directly in it. */
  readonly baseDir: string;
  readonly #driverName: string;
  readonly #reserved: readonly string[];
  /** The directory of each part of the cache, normalized, with one trailing separator. */
  readonly #prefixes: Readonly<Record<EntryStatus, string>>;

  /**
   * @param baseDir - the cache directory.
   * @param options.driverName - used in error messages.
   * @param options.reservedNames - extra file names in `baseDir` that are not entries (e.g. a DB file).
   */
  constructor(baseDir: string, options: { driverName: string; reservedNames?: readonly string[] }) {
    this.baseDir = baseDir;
    this.#prefixes = {
      active: join(baseDir, '/'),
      incomplete: join(baseDir, 'incomplete', '/'),
      invalid: join(baseDir, 'invalid', '/'),
      queue: join(baseDir, 'queue', '/'),
    };
    this.#driverName = options.driverName;
    this.#reserved = options.reservedNames ?? [];
  }

  /** Active paths of ids that passed the id check (see {@link checkedActivePath}). */
  readonly #checked = new Map<string, string>();

  /**
   * The active path of `id` once it passes the id check (`InvalidImageIdError`
   * otherwise, as `assertImageId` with this directory's reserved names). The
   * answer is remembered for the next {@link CHECKED_PATHS} ids asked: a valid
   * id stays valid and its path the same, so a repeated query skips the check
   * and builds no string.
   */
  checkedActivePath(id: unknown): string {
    let path = this.#checked.get(id as string);
    if (path === undefined) {
      assertImageId(id, this.#reserved);
      path = this.#prefixes.active + id;
      if (this.#checked.size >= CHECKED_PATHS) this.#checked.clear();
      this.#checked.set(id, path);
    }
    return path;
  }

  /** Extra reserved names given at construction. */
  get reservedNames(): readonly string[] {
    return this.#reserved;
  }

  /** The path of `id` in the given part of the cache. Pure: no I/O. */
  path(id: ImageId, status: EntryStatus = 'active'): string {
    // A valid id is one plain file name: `join` would only repeat the normalization of the prefix.
    return this.#prefixes[status] + id;
  }

  /** Path of one of the sub-directories, or of the base directory for `active`. */
  dir(status: EntryStatus): string {
    return status === 'active' ? this.baseDir : join(this.baseDir, status);
  }

  /** Creates the base directory and `incomplete/`, `invalid/`, `queue/`; refuses a base that is not a directory. */
  async create(): Promise<void> {
    try {
      await mkdir(this.baseDir, { recursive: true });
      for (const sub of SUBDIRECTORIES) await mkdir(join(this.baseDir, sub), { recursive: true });
      for (const sub of ['', ...SUBDIRECTORIES]) {
        const info = await stat(join(this.baseDir, sub));
        if (!info.isDirectory()) throw Object.assign(new Error('not a directory'), { code: 'ENOTDIR' });
        // Every part is written to (commits, rollbacks, markers): refuse now rather than fail each write later.
        await access(join(this.baseDir, sub), fsConstants.W_OK | fsConstants.X_OK);
      }
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      const path = (error as NodeJS.ErrnoException).path ?? this.baseDir;
      const advice =
        code === 'EACCES' || code === 'EPERM'
          ? `${permissionAdvice(path, this.baseDir)}.`
          : code === 'EROFS'
            ? 'The filesystem is read-only: remount it read-write, or point --cache-dir (cacheDir) at a writable directory.'
            : 'Point --cache-dir (cacheDir) at a writable directory (it is created if missing).';
      throw new BadDriverConfigurationError(this.#driverName, `cannot use cache directory ${this.baseDir}: ${(error as Error).message}. ${advice}`, {
        path: this.baseDir,
        cause: error,
      });
    }
  }

  /**
   * Stat of a regular file (symlinks and directories are not entries), or `undefined`.
   * A synchronous `lstat` (see {@link statFileSync}) behind the promise.
   */
  async statFile(id: ImageId, status: EntryStatus = 'active'): Promise<EntryStat | undefined> {
    return this.statFileSync(id, status);
  }

  /**
   * {@link statFile} without the promise: one synchronous `lstat`. On a local
   * filesystem it costs 1-3 µs, where the asynchronous call costs a round
   * trip through libuv's thread pool (10-40 µs, more on a busy machine):
   * the small queries (`isCached`, `getImageSize`, `getHitCount`) and the
   * listings are made of these, so they pay the syscall only.
   */
  statFileSync(id: ImageId, status: EntryStatus = 'active'): EntryStat | undefined {
    const info = regularFileSync(this.path(id, status), true);
    return info === undefined ? undefined : toEntryStat(id, info);
  }

  /** The size of the regular file at `path` (from {@link checkedActivePath}), or `undefined`: as {@link sizeSync}. */
  sizeAtSync(path: string): number | undefined {
    return regularFileSync(path)?.size;
  }

  /** True when a regular file is at `path` (from {@link checkedActivePath}): as {@link existsSync}. */
  existsAtSync(path: string): boolean {
    return regularFileSync(path) !== undefined;
  }

  /**
   * The size of the regular file for `id`, or `undefined`: one synchronous
   * `lstat` without nanosecond times (sizes up to 2^53 bytes are exact), for
   * `getImageSize`, which needs nothing else of the file.
   */
  sizeSync(id: ImageId, status: EntryStatus = 'active'): number | undefined {
    return this.sizeAtSync(this.path(id, status));
  }

  /** True when a regular file for `id` exists in that part of the cache. */
  async exists(id: ImageId, status: EntryStatus = 'active'): Promise<boolean> {
    return this.existsSync(id, status);
  }

  /** {@link exists} without the promise: one synchronous `lstat` without nanosecond times. */
  existsSync(id: ImageId, status: EntryStatus = 'active'): boolean {
    return this.existsAtSync(this.path(id, status));
  }

  /**
   * Every entry of one part of the cache, sorted by id: regular files whose
   * names are valid ids. One `readdir`, then one synchronous `lstat` per
   * name (see {@link statFileSync}), {@link LIST_SLICE} names at a time with
   * a turn of the event loop between slices, so a listing of 100k entries
   * never holds the loop for more than about a millisecond. Files that
   * vanish during the scan are skipped.
   */
  async list(status: EntryStatus = 'active'): Promise<EntryStat[]> {
    const names = await this.listNames(status);
    const stats: EntryStat[] = [];
    for (let start = 0; start < names.length; start += LIST_SLICE) {
      if (start > 0) await yieldToEventLoop();
      const end = Math.min(names.length, start + LIST_SLICE);
      for (let i = start; i < end; i++) {
        const entry = this.statFileSync(names[i] as ImageId, status);
        if (entry !== undefined) stats.push(entry);
      }
    }
    return stats.sort((a, b) => compareIds(a.imageId, b.imageId));
  }

  /**
   * The names of one part of the cache that may be entries (one `readdir`):
   * valid ids whose directory entry is a regular file,
   * unsorted. Nothing is `stat`ed: a caller that needs sizes or times calls
   * {@link list}, or {@link statFileSync} for the names it cannot answer otherwise.
   */
  async listNames(status: EntryStatus = 'active'): Promise<ImageId[]> {
    const dir = this.dir(status);
    try {
      const dirents = await readdir(dir, { withFileTypes: true });
      const names: ImageId[] = [];
      for (const d of dirents) {
        if (d.isFile() && isValidImageId(d.name, this.#reserved)) names.push(d.name);
      }
      return names;
    } catch (error) {
      if (isErrnoError(error, 'ENOENT')) return [];
      throw storageError('list', dir, error);
    }
  }

  /** Queued ids, oldest marker first; ties in marker time are broken by id. */
  async listQueue(): Promise<ImageId[]> {
    const markers = await this.list('queue');
    return markers
      .sort((a, b) => (a.mtimeNs < b.mtimeNs ? -1 : a.mtimeNs > b.mtimeNs ? 1 : compareIds(a.imageId, b.imageId)))
      .map((m) => m.imageId);
  }

  /**
   * Creates the zero-byte `queue/<id>` marker atomically (`wx`). Returns false
   * when it already exists. The marker's mtime is set at least 1 ms later than
   * any earlier marker of this process, so FIFO order holds on coarse clocks too.
   */
  async createQueueMarker(id: ImageId): Promise<boolean> {
    const path = this.path(id, 'queue');
    let handle: FileHandle;
    try {
      handle = await open(path, 'wx');
    } catch (error) {
      if (isErrnoError(error, 'EEXIST')) return false;
      throw storageError('queue', path, error);
    }
    try {
      // Whole milliseconds: far coarser than the float rounding of utimes (~0.24 µs at today's epoch),
      // far finer than any queueing an operator does.
      const now = Date.now();
      lastQueueMs = now > lastQueueMs ? now : lastQueueMs + 1;
      await handle.utimes(lastQueueMs / 1000, lastQueueMs / 1000);
    } finally {
      await handle.close();
    }
    return true;
  }

  /** Deletes one file; false when it was not there. */
  async remove(id: ImageId, status: EntryStatus = 'active'): Promise<boolean> {
    const path = this.path(id, status);
    try {
      const info = await lstatNs(path);
      if (!info.isFile()) return false;
      await unlinkFile(path);
      return true;
    } catch (error) {
      if (isErrnoError(error, 'ENOENT')) return false;
      throw storageError('delete', path, error);
    }
  }

  /**
   * Deletes `queue/<id>` with one `unlink` (no `lstat` first, as {@link remove}
   * does): what a commit does, where the marker is usually absent. A
   * directory of that name is left alone. Returns false when nothing was deleted.
   */
  async removeQueueMarker(id: ImageId): Promise<boolean> {
    const path = this.path(id, 'queue');
    try {
      // Usually absent: a synchronous lstat that does not throw (an ENOENT error's stack costs more than the call),
      // then one unlink of the (empty) marker; both cost less than a threadpool round trip.
      if (lstatSync(path, NO_THROW) === undefined) return false;
      unlinkSync(path);
      return true;
    } catch (error) {
      if (isErrnoError(error, 'ENOENT', 'ENOTDIR')) return false;
      // A directory (EISDIR, or EPERM as POSIX has it) or a real permission problem: let remove() tell them apart.
      if (isErrnoError(error, 'EISDIR', 'EPERM')) return this.remove(id, 'queue');
      throw storageError('delete', path, error);
    }
  }

  /** Deletes every entry of one part of the cache and returns how many files it deleted. */
  async removeAll(status: EntryStatus): Promise<number> {
    const entries = await this.list(status);
    let removed = 0;
    for (const entry of entries) if (await this.remove(entry.imageId, status)) removed++;
    return removed;
  }

  /**
   * Creates `incomplete/<id>` exclusively (a synchronous `open`) and registers
   * it as owned by a live writer of this process. A second writer gets
   * {@link ImageBeingCachedError}.
   */
  async openIncomplete(id: ImageId): Promise<FdHandle> {
    const path = this.path(id, 'incomplete');
    try {
      // One synchronous create (a metadata call of a few µs on a local disk) instead of a threadpool round trip.
      const handle = new FdHandle(openSync(path, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, 0o644));
      liveWriters.add(path);
      return handle;
    } catch (error) {
      if (isErrnoError(error, 'EEXIST')) throw new ImageBeingCachedError(id, path, error);
      throw storageError('create', path, error);
    }
  }

  /** Forgets that this process writes `incomplete/<id>` (after commit or rollback). */
  releaseIncomplete(id: ImageId): void {
    liveWriters.delete(this.path(id, 'incomplete'));
  }

  /** True while a writer of this process owns `incomplete/<id>`. */
  isLiveWriter(id: ImageId): boolean {
    return liveWriters.has(this.path(id, 'incomplete'));
  }

  /**
   * Makes the incomplete file durable and active: fsync the data, rename
   * `incomplete/<id>` over `<id>` atomically, fsync the base directory so the
   * rename survives a crash. Returns the committed file's stat.
   */
  async promote(id: ImageId, handle: FileHandle): Promise<EntryStat> {
    const from = this.path(id, 'incomplete');
    const to = this.path(id, 'active');
    try {
      await handle.sync();
    } catch (error) {
      throw storageError('fsync', from, error);
    }
    try {
      await rename(from, to);
    } catch (error) {
      throw storageError('rename', `${from} -> ${to}`, error);
    }
    await this.syncDir('active');
    const info = await this.statFile(id, 'active');
    if (info === undefined) throw storageError('stat', to, new Error('committed file vanished'));
    return info;
  }

  /**
   * Renames `incomplete/<id>` over `<id>` atomically, nothing more: the
   * caller decides what is fsynced before and after (see the durability
   * modes of the directory driver; {@link promote} does all of it).
   * @param size - the file's size: up to {@link SMALL_WRITE_BYTES} the rename is a synchronous call.
   */
  async activate(id: ImageId, size = Number.POSITIVE_INFINITY): Promise<void> {
    const from = this.path(id, 'incomplete');
    const to = this.path(id, 'active');
    try {
      // A small entry's rename is one metadata call: cheaper on the event loop than a threadpool round trip.
      if (size <= SMALL_WRITE_BYTES) renameSync(from, to);
      else await rename(from, to);
    } catch (error) {
      throw storageError('rename', `${from} -> ${to}`, error);
    }
  }

  /**
   * Moves a file to `invalid/<id>` (replacing an older one). Missing source is
   * fine (returns false): the file was already reaped or moved.
   */
  async moveToInvalid(id: ImageId, from: 'incomplete' | 'active'): Promise<boolean> {
    const source = this.path(id, from);
    try {
      await rename(source, this.path(id, 'invalid'));
      return true;
    } catch (error) {
      if (isErrnoError(error, 'ENOENT')) return false;
      throw storageError('move to invalid', source, error);
    }
  }

  /** fsync of a directory, so renames and unlinks in it are durable. */
  async syncDir(status: EntryStatus): Promise<void> {
    await syncDirectory(this.dir(status));
  }

  /** Deletes every file in `invalid/`. A file that cannot be deleted is counted in `errors`, not fatal. */
  async reapInvalid(): Promise<ReapResult> {
    return this.#reap('invalid', () => true);
  }

  /**
   * Deletes files in `incomplete/` whose mtime is older than `stallSeconds`
   * (every one at 0), except those a live writer of this process owns.
   */
  async reapStalled(stallSeconds: number): Promise<ReapResult> {
    const threshold = Date.now() / 1000 - stallSeconds;
    return this.#reap('incomplete', (entry) => !this.isLiveWriter(entry.imageId) && (stallSeconds <= 0 || entry.mtime < threshold));
  }

  async #reap(status: 'invalid' | 'incomplete', select: (entry: EntryStat) => boolean): Promise<ReapResult> {
    const result: ReapResult = { removed: [], errors: [] };
    for (const entry of await this.list(status)) {
      if (!select(entry)) continue;
      try {
        if (await this.remove(entry.imageId, status)) result.removed.push(entry.imageId);
      } catch (error) {
        result.errors.push(error as Error);
      }
    }
    return result;
  }
}

/** What a reap did. */
export interface ReapResult {
  removed: ImageId[];
  errors: Error[];
}

function toEntryStat(imageId: ImageId, info: BigIntStats): EntryStat {
  return {
    imageId,
    size: Number(info.size),
    mtimeNs: info.mtimeNs,
    atimeNs: info.atimeNs,
    mtime: nsToSeconds(info.mtimeNs),
    atime: nsToSeconds(info.atimeNs),
    ino: info.ino,
    ctimeNs: info.ctimeNs,
  };
}

/** The {@link EntryStat} of an open file (from `FileHandle.stat({ bigint: true })`). */
export function entryStatOf(imageId: ImageId, info: BigIntStats): EntryStat {
  return toEntryStat(imageId, info);
}

/** Orders ids by code unit, as SQLite's default `ORDER BY` on TEXT does for ASCII ids. */
export function compareIds(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** `Promise.all` over `items` with at most `limit` calls in flight. */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/**
 * fsync of a directory, so renames and unlinks in it are durable. Some
 * filesystems refuse fsync on directories (EINVAL, EISDIR, ENOTSUP): that is
 * tolerated, the rename is still atomic; any other failure is a
 * {@link CacheStorageError}.
 */
export async function syncDirectory(dir: string): Promise<void> {
  let handle: FileHandle | undefined;
  try {
    handle = await open(dir, 'r');
    await handle.sync();
  } catch (error) {
    if (!isErrnoError(error, 'EINVAL', 'EISDIR', 'ENOTSUP', 'EOPNOTSUPP')) throw storageError('fsync', dir, error);
  } finally {
    await handle?.close().catch(() => undefined);
  }
}
