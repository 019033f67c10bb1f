import { fileIdentity, type EntryStat } from './cache-dir.js';
import type { DriverSupports } from './driver.js';
import { DirectoryCacheDriver, metadataMatches, type CommitInfo, type DirectoryDriverOptions, type ImageMetadata } from './directory-driver.js';
import type { ImageId } from './image-id.js';

/**
 * A driver with files on disk and metadata in process memory: no native
 * dependency, nothing persisted besides the files. On start every existing
 * file is an entry with 0 hits and its mtime as last access. Good for tests,
 * ephemeral caches, and as the smallest example of a driver.
 */
export class MemoryDriver extends DirectoryCacheDriver {
  readonly name: string = 'memory';
  /** Metadata lives in this instance only: it is lost on `close()` and not seen by other instances. */
  override readonly supports: DriverSupports = { persistent: false, storedChecksum: true, crossProcessHits: 'best-effort', metadataStore: 'separate' };
  readonly #records = new Map<ImageId, ImageMetadata>();

  constructor(options: DirectoryDriverOptions) {
    super(options);
  }

  protected async openMetadata(): Promise<void> {}

  protected async closeMetadata(): Promise<void> {
    this.#records.clear();
  }

  protected async recordCommit(id: ImageId, info: CommitInfo): Promise<void> {
    this.#records.set(id, {
      hits: 0,
      lastAccessed: info.time,
      lastModified: info.time,
      checksum: info.checksum,
      identity: info.identity,
    });
  }

  protected async recordHit(id: ImageId, time: number, file: EntryStat): Promise<void> {
    const record = this.#records.get(id);
    if (record !== undefined && metadataMatches(record, file)) {
      record.hits += 1;
      record.lastAccessed = time;
      return;
    }
    // No record, or one of a file since replaced: this file starts with this hit (unless it was deleted meanwhile).
    if (record === undefined && !(await this.dir.exists(id, 'active'))) return;
    this.#records.set(id, { hits: 1, lastAccessed: time, lastModified: file.mtime, identity: fileIdentity(file) });
  }

  protected async readMetadata(entries: readonly EntryStat[]): Promise<Map<ImageId, ImageMetadata>> {
    const result = new Map<ImageId, ImageMetadata>();
    for (const entry of entries) {
      const record = this.#records.get(entry.imageId);
      if (record !== undefined) result.set(entry.imageId, { ...record });
    }
    return result;
  }

  protected async forgetImage(id: ImageId): Promise<void> {
    this.#records.delete(id);
  }

  protected async forgetAllImages(): Promise<void> {
    this.#records.clear();
  }

  protected override async reconcile(entries: readonly EntryStat[]): Promise<{ orphanRecords: number; adoptedFiles: number }> {
    const present = new Set(entries.map((entry) => entry.imageId));
    let orphanRecords = 0;
    let adoptedFiles = 0;
    for (const id of this.#records.keys()) {
      if (!present.has(id)) {
        this.#records.delete(id);
        orphanRecords++;
      }
    }
    for (const entry of entries) {
      if (this.#records.has(entry.imageId)) continue;
      this.#records.set(entry.imageId, {
        hits: 0,
        lastAccessed: entry.mtime,
        lastModified: entry.mtime,
        identity: fileIdentity(entry),
      });
      adoptedFiles++;
    }
    return { orphanRecords, adoptedFiles };
  }
}
