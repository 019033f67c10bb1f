import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { RESERVED_NAMES, SUBDIRECTORIES, isValidImageId, type CacheDriver } from '@cache/core';

/** Kinds of problem {@link verifyCacheDir} reports. */
export type CacheDirProblemKind =
  /** The cache directory or one of `incomplete/`, `invalid/`, `queue/` does not exist. */
  | 'missing-directory'
  /** The cache directory or a sub-directory exists but is not a directory (or is a symlink). */
  | 'not-a-directory'
  /** An entry (active, incomplete, invalid or queued) is a symlink, directory or special file. */
  | 'not-a-regular-file'
  /** A file whose name is not a valid image id sits where entries live. */
  | 'invalid-name'
  /** A queue marker has content (markers are zero-byte). */
  | 'queue-marker-not-empty'
  /** An id is both active and queued (a commit must remove the marker). */
  | 'queued-and-cached'
  /** The driver lists an entry that has no active file. */
  | 'listed-without-file'
  /** An active file the driver does not list. */
  | 'file-not-listed'
  /** The driver's size for an entry differs from the file's. */
  | 'size-mismatch'
  /** The driver's queue differs from the markers on disk. */
  | 'queue-mismatch'
  /** The directory could not be read. */
  | 'unreadable';

/** One problem found on disk. */
export interface CacheDirProblem {
  kind: CacheDirProblemKind;
  /** The file or directory concerned. */
  path: string;
  /** What is wrong, in words. */
  message: string;
}

/** Options of {@link verifyCacheDir}. */
export interface VerifyCacheDirOptions {
  /**
   * File names in the cache directory that belong to the driver (its database,
   * journal...). They are neither entries nor problems.
   * @default the `cache.db*` names of `RESERVED_NAMES`
   */
  ownFiles?: readonly string[];
  /**
   * Ignore names starting with `.` in the cache directory (drivers keep lock
   * and probe files there: such names are never valid ids).
   * @default true
   */
  allowHidden?: boolean;
  /**
   * A configured driver on this directory: its listings (`getCachedImages`,
   * `getQueuedImages`) are compared with the files.
   */
  driver?: CacheDriver;
}

const DEFAULT_OWN_FILES = RESERVED_NAMES.filter((name) => !(SUBDIRECTORIES as readonly string[]).includes(name));

type Kind = 'file' | 'directory' | 'symlink' | 'other' | 'missing';

async function kindOf(path: string): Promise<{ kind: Kind; size: number }> {
  try {
    const info = await lstat(path);
    const kind: Kind = info.isFile() ? 'file' : info.isDirectory() ? 'directory' : info.isSymbolicLink() ? 'symlink' : 'other';
    return { kind, size: info.size };
  } catch {
    return { kind: 'missing', size: 0 };
  }
}

const KIND_WORDS: Record<Kind, string> = {
  file: 'a regular file',
  directory: 'a directory',
  symlink: 'a symlink',
  other: 'a special file',
  missing: 'missing',
};

/**
 * Checks a cache directory on disk and returns every problem it finds (an
 * empty list means the layout is sound): the three sub-directories exist and
 * are real directories; every active, incomplete, invalid and queued entry is a
 * regular file named by a valid image id; queue markers are empty; no id is
 * both active and queued; and, given a driver, that its listings agree with the
 * files. It only reads.
 *
 * @example
 * ```ts
 * expect(await verifyCacheDir(cacheDir, { driver })).toEqual([]);
 * ```
 */
export async function verifyCacheDir(dir: string, options: VerifyCacheDirOptions = {}): Promise<CacheDirProblem[]> {
  const ownFiles = options.ownFiles ?? DEFAULT_OWN_FILES;
  const allowHidden = options.allowHidden ?? true;
  const problems: CacheDirProblem[] = [];
  const add = (kind: CacheDirProblemKind, path: string, message: string) => problems.push({ kind, path, message });

  const base = await kindOf(dir);
  if (base.kind === 'missing') {
    add('missing-directory', dir, 'the cache directory does not exist');
    return problems;
  }
  if (base.kind !== 'directory') {
    add('not-a-directory', dir, `the cache directory is ${KIND_WORDS[base.kind]}, not a directory`);
    return problems;
  }

  const readNames = async (path: string): Promise<string[] | undefined> => {
    try {
      return (await readdir(path)).sort();
    } catch (error) {
      add('unreadable', path, `cannot list: ${(error as Error).message}`);
      return undefined;
    }
  };

  /** Files per part of the cache: id -> size. */
  const files = new Map<string, Map<string, number>>();
  const checkEntries = async (part: string, path: string, names: readonly string[]) => {
    const valid = new Map<string, number>();
    files.set(part, valid);
    for (const name of names) {
      const entryPath = join(path, name);
      const info = await kindOf(entryPath);
      if (info.kind === 'missing') continue; // vanished during the scan
      const nameOk = isValidImageId(name, ownFiles);
      if (!nameOk) add('invalid-name', entryPath, `${JSON.stringify(name)} in ${part} is not a valid image id`);
      if (info.kind !== 'file') {
        add('not-a-regular-file', entryPath, `${part} entry ${JSON.stringify(name)} is ${KIND_WORDS[info.kind]}`);
        continue;
      }
      if (nameOk) valid.set(name, info.size);
    }
  };

  const baseNames = await readNames(dir);
  if (baseNames !== undefined) {
    const entries = baseNames.filter(
      (name) =>
        !(SUBDIRECTORIES as readonly string[]).includes(name) &&
        !ownFiles.includes(name) &&
        !(allowHidden && name.startsWith('.')),
    );
    await checkEntries('active', dir, entries);
  }

  for (const sub of SUBDIRECTORIES) {
    const path = join(dir, sub);
    const info = await kindOf(path);
    if (info.kind === 'missing') {
      add('missing-directory', path, `${sub}/ does not exist (configure() creates it)`);
      continue;
    }
    if (info.kind !== 'directory') {
      add('not-a-directory', path, `${sub}/ is ${KIND_WORDS[info.kind]}, not a directory`);
      continue;
    }
    const names = await readNames(path);
    if (names !== undefined) await checkEntries(sub, path, names);
  }

  const active = files.get('active') ?? new Map<string, number>();
  const queue = files.get('queue') ?? new Map<string, number>();
  for (const [id, size] of queue) {
    const path = join(dir, 'queue', id);
    if (size !== 0) add('queue-marker-not-empty', path, `queue marker ${JSON.stringify(id)} has ${size} bytes (markers are empty)`);
    if (active.has(id)) add('queued-and-cached', path, `${JSON.stringify(id)} is both cached and queued`);
  }

  const driver = options.driver;
  if (driver !== undefined) {
    const listed = await driver.getCachedImages();
    const listedIds = new Set<string>();
    for (const image of listed) {
      listedIds.add(image.imageId);
      const path = join(dir, image.imageId);
      const size = active.get(image.imageId);
      if (size === undefined) {
        add('listed-without-file', path, `${driver.name} lists ${JSON.stringify(image.imageId)} but there is no active file`);
      } else if (size !== image.size) {
        add('size-mismatch', path, `${driver.name} lists ${JSON.stringify(image.imageId)} with ${image.size} bytes, the file has ${size}`);
      }
    }
    for (const id of active.keys()) {
      if (!listedIds.has(id)) add('file-not-listed', join(dir, id), `active file ${JSON.stringify(id)} is not listed by ${driver.name}`);
    }
    const queued = await driver.getQueuedImages();
    const onDisk = [...queue.keys()].sort();
    if (JSON.stringify([...queued].sort()) !== JSON.stringify(onDisk)) {
      add('queue-mismatch', join(dir, 'queue'), `${driver.name} queues [${queued.join(', ')}], markers on disk: [${onDisk.join(', ')}]`);
    }
  }
  return problems;
}
