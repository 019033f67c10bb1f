import { createReadStream, readFileSync, writeSync } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, unlink, type FileHandle } from 'node:fs/promises';
import { uptime } from 'node:os';
import { join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { createChecksumHash, parseStoredChecksum } from './checksum.js';
import { isErrnoError, storageError, syncDirectory } from './cache-dir.js';
import { InvalidArgumentError } from './errors.js';
import type { ImageId } from './image-id.js';

/**
 * How a commit is made durable (see docs/adr/0007-durability-modes.md).
 *
 * - `strict`: the file is fsynced, renamed into place, the directory fsynced
 *   and the metadata recorded before the write reports success. Concurrent
 *   commits in one directory share one directory fsync and one metadata
 *   transaction (group commit).
 * - `relaxed`: no fsync, as Glance. The file is renamed into place as soon as
 *   its bytes are written. Commits since the last sync point are listed in a
 *   journal under `<cacheDir>/.image-cache/`; a periodic sync (see
 *   `syncInterval`) and `close()` make them durable and clear it. After an
 *   unclean shutdown, the next `configure()` of any driver on the directory
 *   re-verifies those entries against their stored digest, or moves them to
 *   `invalid/` when there is none, so a torn file is never served.
 */
export type Durability = 'strict' | 'relaxed';

/** Default period (ms) of the relaxed mode's background sync. */
export const DEFAULT_SYNC_INTERVAL_MS = 5_000;

/** The dot-directory in a cache directory for the cache's own files (never an entry; Glance ignores sub-directories). */
export const STATE_DIRECTORY = '.image-cache';

/** Throws `InvalidArgumentError` unless `value` is a durability mode; returns the mode (default `strict`). */
export function normalizeDurability(value: unknown): Durability {
  if (value === undefined) return 'strict';
  if (value === 'strict' || value === 'relaxed') return value;
  throw new InvalidArgumentError(`durability must be 'strict' or 'relaxed', got ${JSON.stringify(value)}`);
}

/** Throws `InvalidArgumentError` unless `value` is a sync interval in ms (>= 0; 0 = only at close). */
export function normalizeSyncInterval(value: unknown): number {
  if (value === undefined) return DEFAULT_SYNC_INTERVAL_MS;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new InvalidArgumentError(`syncInterval must be a number of milliseconds >= 0, got ${JSON.stringify(value)}`);
  }
  return value;
}

/**
 * Group commit: callers `add()` an item and wait for the batch that contains
 * it. A batch starts at once when none is running; items that arrive while
 * one runs form the next batch, which starts when it ends. So an item is only
 * settled by a flush that started after it was added.
 */
export class CommitGroup<T> {
  #pending: { item: T; resolve: () => void; reject: (error: Error) => void }[] = [];
  #running = false;
  /**
   * @param flush - handles one batch; returns, per item (same order), the error that item failed with, or undefined.
   */
  constructor(private readonly flush: (items: readonly T[]) => Promise<(Error | undefined)[]>) {}

  add(item: T): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#pending.push({ item, resolve, reject });
      if (!this.#running) void this.#drain();
    });
  }

  async #drain(): Promise<void> {
    this.#running = true;
    try {
      while (this.#pending.length > 0) {
        const batch = this.#pending.splice(0);
        let errors: (Error | undefined)[];
        try {
          errors = await this.flush(batch.map((entry) => entry.item));
        } catch (error) {
          errors = batch.map(() => error as Error);
        }
        batch.forEach((entry, i) => {
          const error = errors[i];
          if (error === undefined) entry.resolve();
          else entry.reject(error);
        });
      }
    } finally {
      this.#running = false;
    }
  }
}

/** This boot of the machine: Linux's boot id, else the boot time to 10 s. */
export const BOOT_ID: string = (() => {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return `boot@${Math.round((Date.now() / 1000 - uptime()) / 10) * 10}`;
  }
})();

/** A short tag of {@link BOOT_ID}, in the names of claimed journals. */
const BOOT_TAG = createHash('sha256').update(BOOT_ID).digest('hex').slice(0, 8);

/** Journals of live relaxed windows of this process (any driver instance). */
const liveJournals = new Set<string>();

/** Journals this process has claimed and is recovering now. */
const recoveringNow = new Set<string>();

/** Says that the recovery of a claimed journal ended (done or failed): another `configure()` may claim it again. */
export function releaseClaim(path: string): void {
  recoveringNow.delete(path);
}

/** The first line of a journal. */
interface JournalHeader {
  /** Format tag. */
  journal: 'image-cache relaxed commits';
  bootId: string;
  pid: number;
  /** mtime (ns) of the journal when it was created: every file committed in its window has an mtime at or after it. */
  since: string;
}

/**
 * The relaxed mode's record of commits that are not yet durable, one file
 * per open window: `<cacheDir>/.image-cache/unsynced-<pid>-<token>`. Its
 * header is made durable before the first relaxed write of the window; each
 * commit appends its id (no fsync) before its rename.
 */
export class RelaxedWindow {
  /** Active paths committed in this window, to fsync at the sync point. */
  readonly committed = new Set<string>();
  /** How many commits were noted (a sync compares it before and after). */
  notes = 0;
  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
  ) {}

  /** Creates the journal and makes it durable (file and directory fsync). */
  static async open(stateDir: string): Promise<RelaxedWindow> {
    await mkdir(stateDir, { recursive: true }).catch((error: unknown) => {
      throw storageError('create', stateDir, error);
    });
    const token = `${process.pid}-${randomBytes(6).toString('hex')}`;
    const path = join(stateDir, `unsynced-${token}`);
    // Written under another name first: a scan never sees a journal without its header.
    const creating = join(stateDir, `creating-${token}`);
    let handle: FileHandle;
    try {
      handle = await open(creating, 'wx');
    } catch (error) {
      throw storageError('create', creating, error);
    }
    try {
      const { mtimeNs } = await handle.stat({ bigint: true });
      const header: JournalHeader = { journal: 'image-cache relaxed commits', bootId: BOOT_ID, pid: process.pid, since: String(mtimeNs) };
      await handle.write(`${JSON.stringify(header)}\n`);
      await handle.sync();
      liveJournals.add(path);
      await rename(creating, path);
      await syncDirectory(stateDir);
    } catch (error) {
      liveJournals.delete(path);
      await handle.close().catch(() => undefined);
      await unlink(creating).catch(() => undefined);
      await unlink(path).catch(() => undefined);
      throw storageError('create', path, error);
    }
    return new RelaxedWindow(path, handle);
  }

  /** Appends `id` (no fsync): after a process crash the page cache still has it. */
  note(id: ImageId, activePath: string): void {
    this.committed.add(activePath);
    this.notes++;
    try {
      // A few bytes into the page cache: done at once instead of a threadpool round trip per commit.
      const line = `${id}\n`;
      const length = Buffer.byteLength(line);
      const written = writeSync(this.handle.fd, line);
      if (written !== length) throw new Error(`short write (${written} of ${length} bytes)`);
    } catch (error) {
      throw storageError('write', this.path, error);
    }
  }

  /** Fsyncs every file committed in the window so far (a file gone since is skipped). */
  async syncCommitted(): Promise<void> {
    const paths = [...this.committed];
    await Promise.all(paths.map((path) => syncPath(path)));
  }

  /** Deletes the journal: call once every committed file and the directory are durable. */
  async close(stateDir: string): Promise<void> {
    liveJournals.delete(this.path);
    await this.handle.close().catch(() => undefined);
    try {
      await unlink(this.path);
    } catch (error) {
      if (!isErrnoError(error, 'ENOENT')) throw storageError('delete', this.path, error);
    }
    await syncDirectory(stateDir);
  }
}

/** fsync of one file by path; a missing file is fine. */
export async function syncPath(path: string): Promise<void> {
  let handle: FileHandle;
  try {
    handle = await open(path, 'r');
  } catch (error) {
    if (isErrnoError(error, 'ENOENT', 'ELOOP', 'EISDIR')) return;
    throw storageError('open', path, error);
  }
  try {
    await handle.sync();
  } catch (error) {
    throw storageError('fsync', path, error);
  } finally {
    await handle.close().catch(() => undefined);
  }
}

/** A journal whose owner is gone: what the next `configure()` must re-verify. */
export interface AbandonedJournal {
  /** Path of the journal after it was claimed (renamed) by this process; call {@link releaseClaim} with it when the recovery ends. */
  path: string;
  /** Ids the journal lists. */
  ids: Set<ImageId>;
  /** mtime (ns) the window started at. */
  since: bigint;
  /** True when the machine restarted since: the journal's tail may be lost too, so every file with an mtime at or after `since` is suspect. */
  rebooted: boolean;
}

function ownerAlive(bootId: string, pid: number, path: string, ofThisProcess: Set<string> = liveJournals): boolean {
  if (bootId !== BOOT_ID) return false;
  if (pid === process.pid) return ofThisProcess.has(path);
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return !isErrnoError(error, 'ESRCH');
  }
}

/**
 * Finds the journals of relaxed windows whose process is gone (another boot,
 * or no such process) and claims each by renaming it (two processes never
 * recover the same one). A journal that cannot be parsed is claimed with
 * `since` 0 and `rebooted`, so every entry is checked.
 */
export async function claimAbandonedJournals(stateDir: string): Promise<AbandonedJournal[]> {
  let names: string[];
  try {
    names = await readdir(stateDir);
  } catch (error) {
    if (isErrnoError(error, 'ENOENT')) return [];
    throw storageError('list', stateDir, error);
  }
  const claimed: AbandonedJournal[] = [];
  for (const name of names) {
    const recovering = /^recovering-(\d+)-([0-9a-f]{8})-[0-9a-f]+-(unsynced-.*)$/.exec(name);
    if (!name.startsWith('unsynced-') && recovering === null) continue;
    const path = join(stateDir, name);
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (error) {
      if (isErrnoError(error, 'ENOENT')) continue;
      throw storageError('read', path, error);
    }
    const [first = '', ...rest] = text.split('\n');
    let header: JournalHeader | undefined;
    try {
      const parsed = JSON.parse(first) as JournalHeader;
      if (parsed.journal === 'image-cache relaxed commits' && typeof parsed.pid === 'number') header = parsed;
    } catch {
      header = undefined;
    }
    if (recovering !== null) {
      // Claimed by a recovery that may still run: leave it to that process while it lives (its boot tag is this boot's).
      const claimantBoot = recovering[2] === BOOT_TAG ? BOOT_ID : 'another boot';
      if (ownerAlive(claimantBoot, Number(recovering[1]), path, recoveringNow)) continue;
    } else if (header !== undefined && ownerAlive(header.bootId, header.pid, path)) {
      continue;
    }
    const target = join(stateDir, `recovering-${process.pid}-${BOOT_TAG}-${randomBytes(4).toString('hex')}-${recovering?.[3] ?? name}`);
    try {
      await rename(path, target);
    } catch (error) {
      if (isErrnoError(error, 'ENOENT')) continue; // another process claimed it first
      throw storageError('claim', path, error);
    }
    recoveringNow.add(target);
    const ids = new Set(rest.map((line) => line.trim()).filter((line) => line.length > 0));
    claimed.push({
      path: target,
      ids,
      since: header === undefined ? 0n : BigInt(header.since),
      rebooted: header === undefined || header.bootId !== BOOT_ID,
    });
  }
  return claimed;
}

/** True when the file at `path` hashes to the stored digest `stored` (`sha256:<hex>` or md5 hex). */
export async function fileMatchesDigest(path: string, stored: string): Promise<boolean> {
  const checksum = parseStoredChecksum(stored);
  if (checksum === undefined) return false;
  const hash = createChecksumHash(checksum);
  try {
    for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) hash.update(chunk as Buffer);
  } catch (error) {
    if (isErrnoError(error, 'ENOENT')) return false;
    throw storageError('read', path, error);
  }
  return hash.digest('hex') === checksum.digest;
}
