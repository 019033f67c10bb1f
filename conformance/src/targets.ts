import { statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { isAbsolute } from 'node:path';

/** Environment variable that names the filesystems the kit runs on: `name=/path,name=/path`. */
export const FILESYSTEMS_ENV = 'CACHE_TEST_FILESYSTEMS';

/** Name given to the OS temp dir when {@link FILESYSTEMS_ENV} is not set. */
export const OS_TMP_NAME = 'os-tmp';

/** One filesystem the kit runs every case on. */
export interface TestFilesystem {
  /** Short name used in suite titles and temp-dir prefixes (letters, digits, `.`, `_`, `-`). */
  readonly name: string;
  /** An existing directory on that filesystem; each case gets a fresh temp dir under it. */
  readonly root: string;
  /** True when it came from {@link FILESYSTEMS_ENV}, false for the OS temp dir fallback. */
  readonly fromEnv: boolean;
}

const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/**
 * Parses a {@link FILESYSTEMS_ENV} value (`name=/abs/path,name=/abs/path`).
 * Every entry must have a name (letters, digits, `.`, `_`, `-`), an absolute
 * path that exists and is a directory, and names must be unique; anything else
 * throws an `Error` that says which entry is wrong and how to write it.
 */
export function parseTestFilesystems(value: string): TestFilesystem[] {
  const entries = value
    .split(',')
    .map((entry) => entry.trim())
    .filter((entry) => entry.length > 0);
  if (entries.length === 0) {
    throw new Error(`${FILESYSTEMS_ENV} has no entries: write name=/path[,name=/path...] or leave it unset`);
  }
  const seen = new Set<string>();
  return entries.map((entry) => {
    const eq = entry.indexOf('=');
    const bad = (why: string) =>
      new Error(`${FILESYSTEMS_ENV} entry ${JSON.stringify(entry)} ${why} (expected name=/absolute/path, e.g. ext4=/mnt/ext4)`);
    if (eq < 0) throw bad('has no "="');
    const name = entry.slice(0, eq).trim();
    const root = entry.slice(eq + 1).trim();
    if (!NAME_PATTERN.test(name)) throw bad('has an empty or invalid name (use letters, digits, ".", "_", "-")');
    if (seen.has(name)) throw bad(`repeats the name "${name}"`);
    seen.add(name);
    if (!isAbsolute(root)) throw bad('has a path that is not absolute');
    let isDirectory: boolean;
    try {
      isDirectory = statSync(root).isDirectory();
    } catch (error) {
      throw bad(`names a path that cannot be used: ${(error as Error).message}`);
    }
    if (!isDirectory) throw bad('names a path that is not a directory');
    return { name, root, fromEnv: true };
  });
}

/**
 * The filesystems to test on: those of {@link FILESYSTEMS_ENV} when it is set
 * (and not blank), else the OS temp dir under the name `os-tmp`.
 *
 * @param env - where to read the variable from (default `process.env`).
 * @throws Error when the variable is set but malformed, or names a missing path.
 */
export function getTestFilesystems(env: NodeJS.ProcessEnv = process.env): TestFilesystem[] {
  const value = env[FILESYSTEMS_ENV];
  if (value === undefined || value.trim() === '') return [{ name: OS_TMP_NAME, root: tmpdir(), fromEnv: false }];
  return parseTestFilesystems(value);
}
