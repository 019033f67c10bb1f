import { statSync } from 'node:fs';
import { realpath, rename } from 'node:fs/promises';
import { CacheDirectory, isErrnoError, storageError } from '../cache-dir.js';
import type { CacheDriver, CacheWriter } from '../driver.js';
import { ImageBeingCachedError } from '../errors.js';
import type { ImageId } from '../image-id.js';
import { fillLockName, HOST_LOCKS, OwnerLock, type Announcement } from './lock.js';

/** `dev:ino` of a file: what tells the file a follower opened from another file under the same name. */
export function fileKey(info: { dev: bigint | number; ino: bigint | number }): string {
  return `${info.dev}:${info.ino}`;
}

/** The real path of each driver's cache directory, resolved once (every write takes a lock named after it). */
const realCacheDirs = new WeakMap<CacheDriver, { cacheDir: string; real: string }>();

/** The lock name of `id` in the driver's cache directory. */
export async function lockNameFor(driver: CacheDriver, id: ImageId): Promise<string> {
  let known = realCacheDirs.get(driver);
  if (known === undefined || known.cacheDir !== driver.cacheDir) {
    known = { cacheDir: driver.cacheDir, real: await realpath(driver.cacheDir) };
    realCacheDirs.set(driver, known);
  }
  return fillLockName(known.real, id);
}

/**
 * The right to write one id on this host: the {@link OwnerLock} plus what
 * the owner must do before and while it writes. Every writer of this
 * project (`fill`, `cacheImage`, `getCachingStream`, `readThrough`) takes it
 * before it creates `incomplete/<id>`.
 */
export class WriteLock {
  readonly imageId: ImageId;
  readonly #lock: OwnerLock;
  #written = 0;
  #done = false;

  private constructor(imageId: ImageId, lock: OwnerLock) {
    this.imageId = imageId;
    this.#lock = lock;
  }

  /**
   * Takes the lock of `id`, or resolves `undefined` when a live writer of
   * this host has it. Once it is held, an `incomplete/<id>` left behind is a
   * dead writer's (every writer of this project takes the lock first): it
   * is moved to `invalid/`, so torn bytes are never served or committed.
   * A file that a writer of this process still owns without the lock (a
   * direct `driver.openForWrite` call) is left alone: the lock is given back
   * and `ImageBeingCachedError` is thrown. Off Linux (no abstract sockets)
   * the lock is per process only and no file is moved: the exclusive create
   * of `incomplete/<id>` is then all that keeps two processes apart.
   */
  static async acquire(driver: CacheDriver, id: ImageId): Promise<WriteLock | undefined> {
    const lock = await OwnerLock.acquire(await lockNameFor(driver, id));
    if (lock === undefined) return undefined;
    // Without host locks (off Linux) an incomplete file may be a live writer's: leave it to O_EXCL.
    if (!HOST_LOCKS) return new WriteLock(id, lock);
    try {
      await moveStaleIncomplete(driver, id);
    } catch (error) {
      lock.release();
      throw error;
    }
    return new WriteLock(id, lock);
  }

  /** Bytes announced as in the file. */
  get written(): number {
    return this.#written;
  }

  /** Followers connected now. */
  get followers(): number {
    return this.#lock.followers;
  }

  /** Called when a follower connects or leaves. */
  set onFollowersChange(listener: (() => void) | undefined) {
    this.#lock.onFollowersChange = listener;
  }

  /** Announces to followers what the origin announced (see {@link Announcement}). */
  announce(announcement: Announcement): void {
    this.#lock.announce(announcement);
  }

  /**
   * Announces the writer's file to followers and forwards its `progress`
   * (bytes in the file) to them and to `onProgress`. Resolves the file's
   * `dev:ino`.
   */
  async attach(writer: CacheWriter, path: string, onProgress?: (written: number) => void): Promise<string> {
    let info;
    try {
      // One stat of a file just created: a synchronous call costs less than a threadpool round trip.
      info = statSync(path, { bigint: true });
    } catch (error) {
      throw storageError('stat', path, error);
    }
    const key = fileKey(info);
    // A writer that announced nothing (cacheImage, a caching stream) has its source: there is nothing more to learn.
    if (!this.#lock.announced) this.#lock.announce({});
    this.#lock.setFile(key);
    const report = (written: number) => {
      if (this.#done || written <= this.#written) return;
      this.#written = written;
      this.#lock.progress(written);
      onProgress?.(written);
    };
    if (typeof writer.bytesInFile === 'number') {
      writer.on('progress', report);
      report(writer.bytesInFile);
    }
    return key;
  }

  /** The entry is active: tell the followers, then give the lock back. */
  committed(size: number, checksum?: string): void {
    if (this.#done) return;
    this.#done = true;
    this.#lock.commit(size, checksum);
    this.#lock.release();
  }

  /** Written and verified, but not committed (the file is in `invalid/`): tell the followers, then give the lock back. */
  uncached(size: number, checksum?: string): void {
    if (this.#done) return;
    this.#done = true;
    this.#lock.uncached(size, checksum);
    this.#lock.release();
  }

  /** Rolled back: tell the followers (final when `source`), then give the lock back. */
  failed(error: Error, source: boolean): void {
    if (this.#done) return;
    this.#done = true;
    this.#lock.fail(error, source);
    this.#lock.release();
  }

  /** Gives the lock back without an outcome (nothing was written, e.g. already cached): followers look again. */
  release(): void {
    this.#done = true;
    this.#lock.release();
  }
}

async function moveStaleIncomplete(driver: CacheDriver, id: ImageId): Promise<void> {
  const incomplete = driver.getImageFilepath(id, 'incomplete');
  try {
    // Usually absent: one synchronous stat instead of a threadpool round trip for every write.
    if (statSync(incomplete, { throwIfNoEntry: false }) === undefined) return;
  } catch (error) {
    if (isErrnoError(error, 'ENOENT', 'ENOTDIR')) return;
    throw storageError('stat', incomplete, error);
  }
  if (new CacheDirectory(driver.cacheDir, { driverName: driver.name }).isLiveWriter(id)) {
    throw new ImageBeingCachedError(id, incomplete);
  }
  try {
    await rename(incomplete, driver.getImageFilepath(id, 'invalid'));
  } catch (error) {
    if (!isErrnoError(error, 'ENOENT')) throw storageError('move to invalid', incomplete, error);
  }
}
