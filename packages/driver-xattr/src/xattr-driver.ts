import { randomBytes } from 'node:crypto';
import { lstatSync, utimesSync } from 'node:fs';
import { unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { getAttribute, getAttributeSync, removeAttributeSync, setAttribute, setAttributeSync } from 'fs-xattr';
import { BadDriverConfigurationError, SMALL_WRITE_BYTES, type DriverCapabilities, type ImageId } from '@cache/core';
import {
  DirectoryCacheDriver,
  fileIdentity,
  isErrnoError,
  LIST_SLICE,
  mapLimit,
  nsToSeconds,
  permissionAdvice,
  sameFile,
  type CommitInfo,
  type DirectoryDriverOptions,
  type DriverSupports,
  type EntryStat,
  type ImageMetadata,
  yieldToEventLoop,
} from '@cache/core/driver';
import { MAX_ERROR_LENGTH, XATTR } from './xattr-names.js';

/** Options of {@link XattrDriver}. */
export interface XattrDriverOptions extends DirectoryDriverOptions {}

const DRIVER_NAME = 'xattr';

/** How many attribute reads a listing keeps in flight. */
const LIST_CONCURRENCY = 64;

/**
 * How much later than our last-access attribute a file's atime must be to
 * count as a later access (10 ms): more than a kernel timestamp tick (atime
 * comes from the coarse clock, 1-10 ms) plus the millisecond of our clock, so
 * the atime of the file's own creation (the commit) never counts as one.
 */
export const ATIME_SLACK_NS = 10_000_000n;

/**
 * How long (50 ms) a file's ctime must lie before the moment its attributes
 * were read for the driver to keep them in memory keyed by (inode, ctime).
 * ctime comes from the kernel's coarse clock (a tick of 1-10 ms behind):
 * a change made just after the read, within the same tick, could otherwise
 * leave ctime unchanged and the kept attributes stale.
 */
export const ATTRIBUTE_CACHE_SLACK_NS = 50_000_000n;

/** The attributes a listing reads from one file, kept while the file's inode and ctime stay the same. */
interface FileAttributes {
  ino: bigint;
  ctimeNs: bigint;
  /** False when only `hits` and `recordedFor` were read (by `getHitCount`): a listing reads the rest. */
  complete: boolean;
  hits: number;
  accessedNs: bigint | undefined;
  committedNs: bigint | undefined;
  recordedFor: string | undefined;
  /**
   * Whether the attributes describe the file they were read from (no
   * recorded identity, or {@link sameFile}). Size and mtime cannot change
   * without moving ctime, so this holds as long as inode and ctime do.
   */
  matches: boolean;
  /** `accessedNs` in seconds and plus {@link ATIME_SLACK_NS} (an atime after that is a later access); `committedNs` in seconds. */
  accessed: number | undefined;
  accessedLimitNs: bigint | undefined;
  committed: number | undefined;
}

/**
 * Metadata in `user.*` extended attributes on the cache files, as Glance's
 * xattr driver keeps it: `user.hits` (decimal text) on every active file and
 * `user.error` on files moved to `invalid/`. No database: a cache file carries
 * its own metadata, and deleting it deletes its metadata.
 *
 * **Recency rule.** Glance ranks entries by atime (whole seconds). This
 * driver records its own last access, in nanoseconds, in
 * `user.image_cache.last_accessed_ns` at commit and whenever a read completes,
 * so `noatime` and `relatime` mounts keep an exact order for our reads. An
 * entry's last access is that attribute, or the file's atime when atime is
 * later by more than {@link ATIME_SLACK_NS} (a read by Glance, or anything
 * else that moved atime since our last access), or atime alone when the
 * attribute is missing (written by Glance and never read here). Our reads
 * open the file with `O_NOATIME` (where the process may: it owns the file or
 * has CAP_FOWNER), and a completed read sets atime itself, to the file's
 * ctime at most, so it never leaves atime after ctime: under `relatime` the
 * kernel then still updates atime on the next read, Glance's included
 * (relatime skips the update only while atime is later than both mtime and
 * ctime and less than a day old). Glance and this driver therefore rank every
 * read of either side alike, on `noatime` (where neither sees Glance's reads),
 * `relatime` and `strictatime` mounts; the driver needs user xattrs
 * (`capabilities.xattr`), not atime. The exact commit time is kept in
 * `user.image_cache.committed_ns`.
 *
 * **Hits** are a read-modify-write of `user.hits`, serialized per id within a
 * process (no lost hits between concurrent readers of one process); across
 * processes an increment can be lost, as in Glance. Hit accounting never
 * throws: failures are reported through `onWarning`.
 *
 * `configure()` probes the filesystem with a uniquely named dot-file that is
 * always removed, and refuses with `BadDriverConfigurationError` when a user
 * attribute cannot be set and read back, whatever the error. There is no
 * fallback to another driver.
 *
 * @example
 * ```ts
 * const cache = await ImageCache.open({ driver: new XattrDriver({ cacheDir: '/var/cache/images' }) });
 * ```
 */
export class XattrDriver extends DirectoryCacheDriver {
  readonly name = DRIVER_NAME;
  override readonly capabilities: DriverCapabilities = { xattr: true, atime: false };
  /** Attributes live on the file: shared by every process; digests kept; hits are read-modify-writes (best effort across processes). */
  override readonly supports: DriverSupports = { persistent: true, storedChecksum: true, crossProcessHits: 'best-effort', metadataStore: 'files' };
  /** Our reads leave atime alone; a completed one sets it (see the recency rule). */
  protected override readonly noAtimeReads = true;
  /** Per-id chains that serialize hit increments within this process. */
  readonly #hitChains = new Map<ImageId, Promise<void>>();
  /**
   * What was last read from each file's attributes, valid while its inode
   * and ctime are unchanged (every `setxattr`, by any process, moves ctime).
   * A listing stats every file anyway, so files whose ctime has not moved
   * cost no attribute read (docs/adr/0008). Rebuilt by every listing, so it
   * holds only files that exist.
   */
  #attributes = new Map<ImageId, FileAttributes>();

  constructor(options: XattrDriverOptions) {
    super(options);
  }

  protected async openMetadata(): Promise<void> {
    const probe = join(this.cacheDir, `.xattr-probe-${process.pid}-${randomBytes(6).toString('hex')}`);
    try {
      await writeFile(probe, 'probe', { flag: 'wx' });
      const value = `ok-${randomBytes(4).toString('hex')}`;
      await setAttribute(probe, XATTR.probe, value);
      const back = (await getAttribute(probe, XATTR.probe)).toString('utf8');
      if (back !== value) throw new Error(`read back ${JSON.stringify(back)} instead of ${JSON.stringify(value)}`);
    } catch (error) {
      throw new BadDriverConfigurationError(this.name, probeAdvice(this.cacheDir, error), { path: this.cacheDir, cause: error });
    } finally {
      await unlink(probe).catch(() => undefined);
    }
  }

  protected async closeMetadata(): Promise<void> {}

  protected override async prepareCommit(_id: ImageId, incompletePath: string, info: CommitInfo): Promise<void> {
    if (info.size <= SMALL_WRITE_BYTES) {
      // A small commit runs on the event loop (see SMALL_WRITE_BYTES): five setxattr calls of a few µs each.
      setAttributeSync(incompletePath, XATTR.hits, '0');
      setAttributeSync(incompletePath, XATTR.lastAccessed, secondsToNsText(info.time));
      setAttributeSync(incompletePath, XATTR.committed, secondsToNsText(info.time));
      setAttributeSync(incompletePath, XATTR.file, info.identity);
      if (info.checksum !== undefined) setAttributeSync(incompletePath, XATTR.checksum, info.checksum);
      return;
    }
    // Independent attributes of one file: set at once (one threadpool round trip instead of five in a row).
    await Promise.all([
      setAttribute(incompletePath, XATTR.hits, '0'),
      setAttribute(incompletePath, XATTR.lastAccessed, secondsToNsText(info.time)),
      setAttribute(incompletePath, XATTR.committed, secondsToNsText(info.time)),
      setAttribute(incompletePath, XATTR.file, info.identity),
      ...(info.checksum === undefined ? [] : [setAttribute(incompletePath, XATTR.checksum, info.checksum)]),
    ]);
  }

  /** Metadata is on the file, set before the rename: nothing left to record. */
  protected async recordCommit(): Promise<void> {}

  protected override async prepareRollback(_id: ImageId, incompletePath: string, reason: Error): Promise<void> {
    const text = (reason.message || String(reason)).slice(0, MAX_ERROR_LENGTH);
    await setAttribute(incompletePath, XATTR.error, text).catch((error: unknown) => {
      if (!isErrnoError(error, 'ENOENT')) throw error;
    });
  }

  /** Records why an entry was quarantined on its file in `invalid/`, as a rollback records its error. */
  protected override async noteQuarantine(_id: ImageId, invalidPath: string, reason: string): Promise<void> {
    await setAttribute(invalidPath, XATTR.error, reason.slice(0, MAX_ERROR_LENGTH)).catch((error: unknown) => {
      if (!isErrnoError(error, 'ENOENT')) throw error;
    });
  }

  protected async recordHit(id: ImageId, time: number, file: EntryStat): Promise<void> {
    const previous = this.#hitChains.get(id) ?? Promise.resolve();
    const next = previous.then(() => this.#incrementHits(id, time, file));
    const settled = next.catch(() => undefined);
    this.#hitChains.set(id, settled);
    void settled.then(() => {
      if (this.#hitChains.get(id) === settled) this.#hitChains.delete(id);
    });
    return next;
  }

  /**
   * One hit: a read-modify-write of `user.hits` and our last-access
   * attribute, then atime (see the recency rule). Every call is synchronous
   * (a few µs each on a local filesystem, against a thread-pool round trip
   * each for the asynchronous ones).
   */
  async #incrementHits(id: ImageId, time: number, file: EntryStat): Promise<void> {
    const path = this.dir.path(id, 'active');
    this.#attributes.delete(id);
    try {
      const hits = readCountSync(path);
      const recordedFor = readTextSync(path, XATTR.file);
      const replaced = recordedFor !== undefined && !sameFile(recordedFor, file);
      if (replaced) {
        // The file was rewritten in place by someone else: its old count and digest are not its own.
        try {
          removeAttributeSync(path, XATTR.checksum);
        } catch (error) {
          ignoreMissing(error);
        }
        setAttributeSync(path, XATTR.file, fileIdentity(file));
        setAttributeSync(path, XATTR.committed, nsText(file.mtimeNs));
      }
      setAttributeSync(path, XATTR.hits, replaced ? '1' : String(hits + 1));
      setAttributeSync(path, XATTR.lastAccessed, secondsToNsText(time));
      // Setting the attributes moved ctime to the kernel's (coarse) now. Set atime for Glance, which ranks by it,
      // to no later than that ctime, so relatime still updates it on the next read; leave mtime (the commit time).
      const { mtimeNs, ctimeNs } = lstatSync(path, { bigint: true });
      utimesSync(path, Math.min(time, nsToSeconds(ctimeNs - 1000n)), nsToSeconds(mtimeNs));
    } catch (error) {
      // The entry was deleted or pruned while it was being read: nothing to count.
      if (!isErrnoError(error, 'ENOENT')) throw error;
    }
  }

  /**
   * The four attributes of every listed file, read synchronously,
   * {@link LIST_SLICE} files at a time with a turn of the event loop between
   * slices (a listing of 100k entries never holds the loop for more than a
   * few milliseconds).
   */
  /**
   * The attributes of every listed file, {@link LIST_SLICE} files at a time
   * with a turn of the event loop between slices. A file whose inode and
   * ctime are those of the last read costs nothing more; the others cost
   * four synchronous `getxattr`.
   */
  protected async readMetadata(entries: readonly EntryStat[]): Promise<Map<ImageId, ImageMetadata>> {
    const records = new Map<ImageId, ImageMetadata>();
    const listing = entries.length > 1;
    const kept = listing ? new Map<ImageId, FileAttributes>() : this.#attributes;
    for (let start = 0; start < entries.length; start += LIST_SLICE) {
      if (start > 0) await yieldToEventLoop();
      const end = Math.min(entries.length, start + LIST_SLICE);
      for (let i = start; i < end; i++) {
        const entry = entries[i] as EntryStat;
        const attributes = this.#readAttributes(entry);
        if (attributes === undefined) continue;
        if (attributes.ctimeNs >= 0n) kept.set(entry.imageId, attributes);
        if (!attributes.matches) continue;
        const { accessed, accessedLimitNs, committed } = attributes;
        records.set(entry.imageId, {
          hits: attributes.hits,
          lastAccessed: accessed === undefined || accessedLimitNs === undefined || entry.atimeNs > accessedLimitNs ? entry.atime : accessed,
          lastModified: committed ?? entry.mtime,
        });
      }
    }
    if (listing) this.#attributes = kept;
    return records;
  }

  /** What was kept of `entry`'s file's attributes, while its inode and ctime are those they were read under. */
  #kept(entry: EntryStat): FileAttributes | undefined {
    const known = this.#attributes.get(entry.imageId);
    return known !== undefined && entry.ctimeNs !== undefined && known.ino === entry.ino && known.ctimeNs === entry.ctimeNs ? known : undefined;
  }

  /**
   * The attributes of `entry`'s file: from memory when its inode and ctime
   * are those of the last read, else read (and kept, with `ctimeNs` set,
   * when that ctime is older than the read by {@link ATTRIBUTE_CACHE_SLACK_NS};
   * `ctimeNs` -1 otherwise, not to be kept).
   */
  #readAttributes(entry: EntryStat): FileAttributes | undefined {
    const known = this.#kept(entry);
    if (known?.complete === true) return known;
    const readAtNs = BigInt(Date.now()) * 1_000_000n;
    const path = this.dir.path(entry.imageId, 'active');
    // A missing attribute (every one of ours on a file Glance wrote) is an exception from fs-xattr: without
    // a stack trace it costs a tenth. Nothing else runs meanwhile (all synchronous); the limit is restored.
    const stackTraceLimit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    let attributes: FileAttributes;
    try {
      const recordedFor = readTextSync(path, XATTR.file);
      const hits = readCountSync(path);
      const accessedNs = parseNs(readTextSync(path, XATTR.lastAccessed));
      const committedNs = parseNs(readTextSync(path, XATTR.committed));
      attributes = attributesOf(entry, readAtNs, true, { recordedFor, hits, accessedNs, committedNs });
    } finally {
      Error.stackTraceLimit = stackTraceLimit;
    }
    if (attributes.ctimeNs < 0n) this.#attributes.delete(entry.imageId);
    return attributes;
  }

  /**
   * `user.hits` and the identity it belongs to: from memory while the file's
   * inode and ctime have not moved, else two `getxattr`, kept (as a listing
   * keeps what it reads, by inode and ctime, see
   * {@link ATTRIBUTE_CACHE_SLACK_NS}) so the next call on an unchanged file
   * costs its `lstat` only.
   */
  protected override async readHitCount(entry: EntryStat): Promise<number> {
    let known = this.#kept(entry);
    if (known === undefined) {
      const readAtNs = BigInt(Date.now()) * 1_000_000n;
      const path = this.dir.path(entry.imageId, 'active');
      const recordedFor = readTextSync(path, XATTR.file);
      known = attributesOf(entry, readAtNs, false, { recordedFor, hits: readCountSync(path) });
      if (known.ctimeNs >= 0n) this.#attributes.set(entry.imageId, known);
      else this.#attributes.delete(entry.imageId);
    }
    return known.matches ? known.hits : 0;
  }

  protected override async readStoredChecksum(entry: EntryStat): Promise<Pick<ImageMetadata, 'checksum'> | undefined> {
    const path = this.dir.path(entry.imageId, 'active');
    const recordedFor = readTextSync(path, XATTR.file);
    return recordedFor === undefined || sameFile(recordedFor, entry) ? { checksum: readTextSync(path, XATTR.checksum) } : undefined;
  }

  /** Metadata lives on the file: deleting the file deleted it; what was kept of it in memory goes too. */
  protected async forgetImage(id: ImageId): Promise<void> {
    this.#attributes.delete(id);
  }

  protected async forgetAllImages(): Promise<void> {
    this.#attributes.clear();
  }

  /** Gives files without `user.hits` (dropped in by hand or by another tool) a count of 0. */
  protected override async reconcile(entries: readonly EntryStat[]): Promise<{ orphanRecords: number; adoptedFiles: number }> {
    const adopted = await mapLimit(entries, LIST_CONCURRENCY, async (entry) => {
      const path = this.dir.path(entry.imageId, 'active');
      if ((await readText(path, XATTR.hits)) !== undefined) return 0;
      await setAttribute(path, XATTR.hits, '0').catch((error: unknown) => {
        if (!isErrnoError(error, 'ENOENT')) throw error;
      });
      return 1;
    });
    return { orphanRecords: 0, adoptedFiles: adopted.reduce<number>((sum, n) => sum + n, 0) };
  }
}

/**
 * The record of attributes read from `entry`'s file at `readAtNs`: complete
 * when the times were read too (a listing), else `hits` and `recordedFor`
 * only (`getHitCount`).
 */
function attributesOf(
  entry: EntryStat,
  readAtNs: bigint,
  complete: boolean,
  read: { recordedFor: string | undefined; hits: number; accessedNs?: bigint | undefined; committedNs?: bigint | undefined },
): FileAttributes {
  const { recordedFor, hits, accessedNs, committedNs } = read;
  return {
    ino: entry.ino,
    ctimeNs: keptCtime(entry, readAtNs),
    complete,
    recordedFor,
    hits,
    accessedNs,
    committedNs,
    matches: recordedFor === undefined || sameFile(recordedFor, entry),
    accessed: accessedNs === undefined ? undefined : nsToSeconds(accessedNs),
    accessedLimitNs: accessedNs === undefined ? undefined : accessedNs + ATIME_SLACK_NS,
    committed: committedNs === undefined ? undefined : nsToSeconds(committedNs),
  };
}

/**
 * The ctime under which attributes read at `readAtNs` may be kept: the
 * file's, when it is older than the read by {@link ATTRIBUTE_CACHE_SLACK_NS}
 * (a later change then always gets a later ctime), else -1 (not to be kept).
 */
function keptCtime(entry: EntryStat, readAtNs: bigint): bigint {
  return entry.ctimeNs !== undefined && entry.ctimeNs + ATTRIBUTE_CACHE_SLACK_NS < readAtNs ? entry.ctimeNs : -1n;
}

/** An attribute's text, or `undefined` when the file or the attribute is missing. */
async function readText(path: string, attribute: string): Promise<string | undefined> {
  try {
    return (await getAttribute(path, attribute)).toString('utf8');
  } catch (error) {
    if (isErrnoError(error, 'ENODATA', 'ENOATTR', 'ENOENT')) return undefined;
    throw error;
  }
}

/** {@link readText} with a synchronous `getxattr`. */
function readTextSync(path: string, attribute: string): string | undefined {
  try {
    return getAttributeSync(path, attribute).toString('utf8');
  } catch (error) {
    if (isErrnoError(error, 'ENODATA', 'ENOATTR', 'ENOENT')) return undefined;
    throw error;
  }
}

/** `user.hits` as a number; 0 when missing or not a decimal number (Glance's default). */
function readCountSync(path: string): number {
  const text = readTextSync(path, XATTR.hits);
  const value = text === undefined ? 0 : Number.parseInt(text, 10);
  return Number.isSafeInteger(value) && value >= 0 ? value : 0;
}

function ignoreMissing(error: unknown): void {
  if (!isErrnoError(error, 'ENODATA', 'ENOATTR', 'ENOENT')) throw error;
}

function nsText(ns: bigint): string {
  return ns.toString();
}

function secondsToNsText(seconds: number): string {
  return (BigInt(Math.round(seconds * 1e6)) * 1000n).toString();
}

function parseNs(text: string | undefined): bigint | undefined {
  if (text === undefined || !/^\d{1,20}$/.test(text)) return undefined;
  return BigInt(text);
}

function probeAdvice(cacheDir: string, error: unknown): string {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  const detail = error instanceof Error ? error.message : String(error);
  if (code === 'ENOTSUP' || code === 'EOPNOTSUPP') {
    return (
      `the filesystem of ${cacheDir} does not keep user extended attributes (${detail}). ` +
      'Put the cache on a filesystem that has them (ext4, xfs, btrfs, tmpfs) and mount it with user_xattr ' +
      'where that option exists, or use @cache/driver-sqlite, which needs no xattrs.'
    );
  }
  if (code === 'EACCES' || code === 'EPERM') {
    return `no permission to set user extended attributes in ${cacheDir} (${detail}). ${permissionAdvice(cacheDir, cacheDir)}.`;
  }
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return `no space for extended attributes in ${cacheDir} (${detail}): free space on the filesystem.`;
  }
  return `cannot set and read back a user extended attribute in ${cacheDir} (${detail}).`;
}
