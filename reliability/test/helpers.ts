import { spawn, type ChildProcess } from 'node:child_process';
import { lstat, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { isValidImageId, type CacheDriver } from '@cache/core';
import { describeProbe, getTestFilesystems, probeFilesystem, type FilesystemProbe, type TestFilesystem } from '@cache/conformance';
import { SqliteDriver } from '@cache/driver-sqlite';
import { XattrDriver } from '@cache/driver-xattr';

export const FIXTURES = join(import.meta.dirname, 'fixtures');

/** The two persistent drivers every reliability test runs against. */
export type DriverName = 'sqlite' | 'xattr';
export const DRIVER_NAMES: readonly DriverName[] = ['sqlite', 'xattr'];

/** A new, unconfigured driver of that kind on `cacheDir`. */
export function createDriver(name: DriverName, cacheDir: string, options: { busyTimeout?: number } = {}): CacheDriver {
  return name === 'sqlite' ? new SqliteDriver({ cacheDir, ...options }) : new XattrDriver({ cacheDir });
}

/** Where the reliability tests run, and whether the xattr driver can run there. */
export interface ReliabilityTarget {
  fs: TestFilesystem;
  probe: FilesystemProbe;
  /** Set when the xattr driver cannot run on `fs`: why (used in skipped tests' titles). */
  xattrSkipReason: string | undefined;
}

let target: Promise<ReliabilityTarget> | undefined;

/**
 * The filesystem the tests run on: the first `CACHE_TEST_FILESYSTEMS` entry
 * that keeps user xattrs (so both drivers run on it); without one, the OS temp
 * dir. Prints which, once per test file.
 */
export function reliabilityTarget(): Promise<ReliabilityTarget> {
  target ??= (async () => {
    const fromEnv = getTestFilesystems().filter((fs) => fs.fromEnv);
    for (const fs of fromEnv) {
      const probe = await probeFilesystem(fs.root);
      if (probe.xattr.supported) {
        console.log(`[reliability] running on ${fs.name} (${fs.root}): the first CACHE_TEST_FILESYSTEMS entry with user xattrs`);
        return { fs, probe, xattrSkipReason: undefined };
      }
    }
    const fs: TestFilesystem = { name: 'os-tmp', root: tmpdir(), fromEnv: false };
    const probe = await probeFilesystem(fs.root);
    const why = fromEnv.length > 0 ? 'no CACHE_TEST_FILESYSTEMS entry keeps user xattrs' : 'CACHE_TEST_FILESYSTEMS is not set';
    console.log(`[reliability] running on the OS temp dir ${fs.root} (${why})`);
    console.log(describeProbe(fs.name, probe).replace('[conformance]', '[reliability]'));
    return {
      fs,
      probe,
      xattrSkipReason: probe.xattr.supported ? undefined : `the xattr driver needs user xattrs, but ${fs.name} ${probe.xattr.reason}`,
    };
  })();
  return target;
}

/** A fresh directory `<root>/reliability-<prefix>-XXXXXX`. */
export function freshDir(root: string, prefix: string): Promise<string> {
  return mkdtemp(join(root, `reliability-${prefix}-`));
}

/** Removes a directory tree (never follows mounts: used on our own temp dirs only). */
export function removeDir(dir: string): Promise<void> {
  return rm(dir, { recursive: true, force: true });
}

/** Names in a directory, sorted (empty when it does not exist). */
export async function namesIn(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).sort();
  } catch {
    return [];
  }
}

/** The ids of the active files of a cache directory: regular files whose names are valid ids. */
export async function activeFileIds(cacheDir: string, reserved: readonly string[] = []): Promise<string[]> {
  const ids: string[] = [];
  for (const name of await namesIn(cacheDir)) {
    if (!isValidImageId(name, reserved)) continue;
    if ((await lstat(join(cacheDir, name))).isFile()) ids.push(name);
  }
  return ids.sort(compareCodeUnits);
}

/** The order the cache lists ids in (by UTF-16 code unit). */
export function compareCodeUnits(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** A spawned node fixture with line-wise access to its stdout and its stderr collected. */
export interface Fixture {
  child: ChildProcess;
  /** Resolves with the next stdout line (rejects when the process ends first). */
  nextLine(): Promise<string>;
  /** Everything written to stderr so far. */
  stderr(): string;
  /** Resolves when the process has exited: its code and signal. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Starts `node <fixture> ...args` (a script in test/fixtures/) with piped stdio. */
export function startFixture(script: string, args: readonly string[]): Fixture {
  return startProcess(process.execPath, [join(FIXTURES, script), ...args], script);
}

/** Starts any command with piped stdio; `label` names it in errors. */
export function startProcess(command: string, args: readonly string[], label = command): Fixture {
  const script = label;
  const child = spawn(command, args, { cwd: FIXTURES, stdio: ['pipe', 'pipe', 'pipe'] });
  let errors = '';
  child.stderr?.setEncoding('utf8').on('data', (text: string) => (errors += text));
  const lines: string[] = [];
  const waiting: { resolve: (line: string) => void; reject: (error: Error) => void }[] = [];
  let ended = false;
  const rl = createInterface({ input: child.stdout! });
  rl.on('line', (line) => {
    const waiter = waiting.shift();
    if (waiter !== undefined) waiter.resolve(line);
    else lines.push(line);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('close', (code, signal) => {
      ended = true;
      for (const waiter of waiting.splice(0)) {
        waiter.reject(new Error(`${script} ended (code ${code}, signal ${signal}) before printing a line; stderr:\n${errors}`));
      }
      resolve({ code, signal });
    });
  });
  return {
    child,
    exited,
    stderr: () => errors,
    nextLine: () => {
      const line = lines.shift();
      if (line !== undefined) return Promise.resolve(line);
      if (ended) return Promise.reject(new Error(`${script} has ended; stderr:\n${errors}`));
      return new Promise((resolve, reject) => waiting.push({ resolve, reject }));
    },
  };
}
