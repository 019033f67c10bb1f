/**
 * `TemplateDriver`: a complete metadata driver for `@cache/core`, small enough
 * to copy. Files stay where `DirectoryCacheDriver` puts them (`<cacheDir>/<id>`,
 * `incomplete/`, `invalid/`, `queue/`); this driver only decides where the
 * per-image metadata lives: one JSON record per entry in a directory of its
 * own, `<cacheDir>/.template-meta/<id>`.
 *
 * Why these choices:
 * - **A dot-directory.** Image ids never start with `.`, so every dot-name in
 *   the cache directory belongs to a driver: it is never listed as an image,
 *   never accepted as an id, and `verifyCacheDir` ignores it.
 * - **The record is named exactly `<id>`**, not `<id>.json`: ids may be 255
 *   bytes long, the longest file name Linux filesystems take, so a suffix
 *   would make the longest ids fail with `ENAMETOOLONG`.
 * - **Atomic writes.** A record is written to a temp file (a dot-name, so never
 *   a record) and renamed over the old one: a reader sees the old record or
 *   the new one, never half of one. A record that cannot be parsed anyway (a
 *   crash on a filesystem that reorders the rename before the data) is
 *   treated as absent: the entry lists with 0 hits, and `clean()` rebuilds it.
 * - **Per-id serialization.** Within one process every write of one id's
 *   record (commit, hit, forget, reconcile) runs after the previous one, so
 *   concurrent reads of one image lose no hit and a hit cannot overwrite the
 *   record of a newer commit. Between processes a hit is a read-modify-write
 *   of a file and can be lost under a race: the driver declares
 *   `crossProcessHits: 'best-effort'`, as Glance's xattr driver would.
 * - **File identity.** Every record stores the `fileIdentity` of the file it
 *   describes. When another process replaces the file under the same id, the
 *   base class ignores the old record (0 hits, no digest) and a hit on the new
 *   file starts a fresh record at 1.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  BadDriverConfigurationError,
  DirectoryCacheDriver,
  fileIdentity,
  isErrnoError,
  mapLimit,
  metadataMatches,
  storageError,
  type CommitInfo,
  type DirectoryDriverOptions,
  type DriverSupports,
  type EntryStat,
  type ImageId,
  type ImageMetadata,
} from '@cache/core/driver';

/** Name of the driver's own directory inside the cache directory. */
export const META_DIR_NAME = '.template-meta';

/** Temp files and probes start with this prefix: a dot-name, so never a record (ids never start with `.`). */
const TEMP_PREFIX = '.tmp-';

/** A temp file left by a crash between write and rename is deleted by `clean()` once it is this old (seconds). */
const STALE_TEMP_SECONDS = 3600;

/** How many record files are read at once when listing. */
const READ_CONCURRENCY = 64;

/** Options of {@link TemplateDriver}. */
export type TemplateDriverOptions = DirectoryDriverOptions;

/** What one record file holds. */
interface StoredRecord {
  hits: number;
  lastAccessed: number;
  lastModified: number;
  checksum?: string;
  identity?: string;
}

/**
 * Metadata as one JSON file per entry in `<cacheDir>/.template-meta/`.
 *
 * @example
 * ```ts
 * import { ImageCache } from '@cache/core';
 * import { TemplateDriver } from 'image-cache-driver-template';
 *
 * const cache = await ImageCache.open({ driver: new TemplateDriver({ cacheDir: '/var/cache/images' }) });
 * ```
 */
export class TemplateDriver extends DirectoryCacheDriver {
  readonly name = 'template';
  /**
   * Records are files in the cache directory: every instance and process on
   * the directory sees them and they survive `close()`; digests are kept;
   * hits from several processes are a read-modify-write (best effort); the
   * records live apart from the image files, so a file deleted behind the
   * driver's back leaves an orphan record that `clean()` removes.
   */
  override readonly supports: DriverSupports = {
    persistent: true,
    storedChecksum: true,
    crossProcessHits: 'best-effort',
    metadataStore: 'separate',
  };
  /** The directory that holds the records. */
  readonly metaDir: string;
  /** One promise chain per id: every write of that id's record runs after the previous one settled. */
  readonly #chains = new Map<ImageId, Promise<unknown>>();

  constructor(options: TemplateDriverOptions) {
    super(options);
    this.metaDir = join(this.cacheDir, META_DIR_NAME);
  }

  // ---- lifecycle --------------------------------------------------------------------

  /** Creates the record directory and proves it is writable; refuses with `BadDriverConfigurationError` otherwise. */
  protected async openMetadata(): Promise<void> {
    const probe = join(this.metaDir, `${TEMP_PREFIX}probe-${process.pid}-${randomBytes(6).toString('hex')}`);
    try {
      await mkdir(this.metaDir, { recursive: true });
      if (!(await stat(this.metaDir)).isDirectory()) throw Object.assign(new Error('not a directory'), { code: 'ENOTDIR' });
      await writeFile(probe, 'probe', { flag: 'wx' });
    } catch (error) {
      throw new BadDriverConfigurationError(
        this.name,
        `cannot keep metadata in ${this.metaDir}: ${(error as Error).message}. ` +
          'Give the process read/write access to the cache directory; if a file has that name, move it away.',
        { path: this.metaDir, cause: error },
      );
    } finally {
      await unlink(probe).catch(() => undefined);
    }
  }

  /** Nothing to release but pending writes: wait for them, so no record is written after `close()` resolves. */
  protected async closeMetadata(): Promise<void> {
    while (this.#chains.size > 0) await Promise.allSettled([...this.#chains.values()]);
  }

  // ---- writes -----------------------------------------------------------------------

  /** A committed entry starts at 0 hits, accessed and modified at the commit time, with its digest and identity. */
  protected async recordCommit(id: ImageId, info: CommitInfo): Promise<void> {
    await this.#serialize(id, () =>
      this.#write(id, {
        hits: 0,
        lastAccessed: info.time,
        lastModified: info.time,
        ...(info.checksum !== undefined ? { checksum: info.checksum } : {}),
        identity: info.identity,
      }),
    );
  }

  /**
   * One more hit on the file that was read. A record of another file (the
   * entry was replaced since) or no record at all (a file committed by
   * another process) starts at 1, without a digest: no digest was verified
   * for this file.
   */
  protected async recordHit(id: ImageId, time: number, file: EntryStat): Promise<void> {
    await this.#serialize(id, async () => {
      const record = await this.#read(id);
      if (record !== undefined && metadataMatches(record, file)) {
        await this.#write(id, { ...record, hits: record.hits + 1, lastAccessed: time });
      } else {
        await this.#write(id, { hits: 1, lastAccessed: time, lastModified: file.mtime, identity: fileIdentity(file) });
      }
    });
  }

  protected async forgetImage(id: ImageId): Promise<void> {
    await this.#serialize(id, () => this.#remove(id));
  }

  protected async forgetAllImages(): Promise<void> {
    const ids = await this.#recordIds();
    await mapLimit(ids, READ_CONCURRENCY, (id) => this.#serialize(id, () => this.#remove(id)));
  }

  // ---- reads ------------------------------------------------------------------------

  /** The records of the given entries (checksum and identity included); entries without a readable record are left out. */
  protected async readMetadata(entries: readonly EntryStat[]): Promise<Map<ImageId, ImageMetadata>> {
    const records = await mapLimit(entries, READ_CONCURRENCY, (entry) => this.#read(entry.imageId));
    const metadata = new Map<ImageId, ImageMetadata>();
    entries.forEach((entry, i) => {
      const record = records[i];
      if (record !== undefined) metadata.set(entry.imageId, record);
    });
    return metadata;
  }

  // ---- clean ------------------------------------------------------------------------

  /**
   * Deletes records whose file is gone, creates records (0 hits, mtime as
   * access time) for files that have none, and deletes temp files a crash
   * left behind. The base class has already forgotten records of replaced
   * files, so those are adopted here as new.
   */
  protected override async reconcile(entries: readonly EntryStat[]): Promise<{ orphanRecords: number; adoptedFiles: number }> {
    const files = new Map(entries.map((entry) => [entry.imageId, entry]));
    let orphanRecords = 0;
    let adoptedFiles = 0;
    for (const id of await this.#recordIds()) {
      if (files.has(id)) continue;
      const removed = await this.#serialize(id, async () => {
        // Committed since the listing was taken: the record is not an orphan.
        if (await this.dir.exists(id, 'active')) return false;
        return this.#remove(id);
      });
      if (removed) orphanRecords++;
    }
    for (const entry of entries) {
      const adopted = await this.#serialize(entry.imageId, async () => {
        if ((await this.#read(entry.imageId)) !== undefined) return false;
        await this.#write(entry.imageId, {
          hits: 0,
          lastAccessed: entry.mtime,
          lastModified: entry.mtime,
          identity: fileIdentity(entry),
        });
        return true;
      });
      if (adopted) adoptedFiles++;
    }
    await this.#removeStaleTempFiles();
    return { orphanRecords, adoptedFiles };
  }

  // ---- the record files -------------------------------------------------------------

  /** Runs `task` after every earlier task of the same id has settled (this process only). */
  #serialize<T>(id: ImageId, task: () => Promise<T>): Promise<T> {
    const previous = this.#chains.get(id) ?? Promise.resolve();
    const next = previous.then(task);
    const settled = next.catch(() => undefined);
    this.#chains.set(id, settled);
    void settled.then(() => {
      if (this.#chains.get(id) === settled) this.#chains.delete(id);
    });
    return next;
  }

  #path(id: ImageId): string {
    return join(this.metaDir, id);
  }

  /** The record of `id`, or undefined when there is none or it cannot be parsed. */
  async #read(id: ImageId): Promise<StoredRecord | undefined> {
    const path = this.#path(id);
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (error) {
      if (isErrnoError(error, 'ENOENT', 'ENOTDIR', 'EISDIR')) return undefined;
      throw storageError('read metadata', path, error);
    }
    return parseRecord(text);
  }

  /** Replaces the record of `id` atomically: write a temp file, then rename it over the record. */
  async #write(id: ImageId, record: StoredRecord): Promise<void> {
    const path = this.#path(id);
    const temp = join(this.metaDir, `${TEMP_PREFIX}${process.pid}-${randomBytes(8).toString('hex')}`);
    try {
      await writeFile(temp, JSON.stringify(record), { flag: 'wx' });
      await rename(temp, path);
    } catch (error) {
      await unlink(temp).catch(() => undefined);
      throw storageError('write metadata', path, error);
    }
  }

  /** Deletes the record of `id`; false when there was none. */
  async #remove(id: ImageId): Promise<boolean> {
    const path = this.#path(id);
    try {
      await unlink(path);
      return true;
    } catch (error) {
      if (isErrnoError(error, 'ENOENT')) return false;
      throw storageError('delete metadata', path, error);
    }
  }

  /** Ids that have a record file (dot-names are temp files, not records). */
  async #recordIds(): Promise<ImageId[]> {
    try {
      const dirents = await readdir(this.metaDir, { withFileTypes: true });
      return dirents.filter((d) => d.isFile() && !d.name.startsWith('.')).map((d) => d.name);
    } catch (error) {
      if (isErrnoError(error, 'ENOENT')) return [];
      throw storageError('list metadata', this.metaDir, error);
    }
  }

  async #removeStaleTempFiles(): Promise<void> {
    const threshold = Date.now() - STALE_TEMP_SECONDS * 1000;
    let names: string[];
    try {
      names = (await readdir(this.metaDir)).filter((name) => name.startsWith(TEMP_PREFIX));
    } catch {
      return;
    }
    for (const name of names) {
      const path = join(this.metaDir, name);
      try {
        if ((await stat(path)).mtimeMs < threshold) await unlink(path);
      } catch {
        // Gone already, or renamed into place by its writer: nothing to do.
      }
    }
  }
}

/** Parses a record; anything malformed counts as no record. */
function parseRecord(text: string): StoredRecord | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null) return undefined;
  const { hits, lastAccessed, lastModified, checksum, identity } = value as Record<string, unknown>;
  if (!Number.isSafeInteger(hits) || (hits as number) < 0) return undefined;
  if (!Number.isFinite(lastAccessed) || !Number.isFinite(lastModified)) return undefined;
  return {
    hits: hits as number,
    lastAccessed: lastAccessed as number,
    lastModified: lastModified as number,
    ...(typeof checksum === 'string' ? { checksum } : {}),
    ...(typeof identity === 'string' ? { identity } : {}),
  };
}
