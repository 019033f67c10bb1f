import { execFile, spawn } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { ImageCache, type CacheDriver, type Checksum } from '@cache/core';
import { SqliteDriver } from '@cache/driver-sqlite';
import { XattrDriver } from '@cache/driver-xattr';
import { runCli } from '../src/index.js';

/** The built binary, as users run it. */
export const BIN = join(import.meta.dirname, '..', 'bin', 'image-cache.js');

/** A fresh directory on the OS temp filesystem (real files, no mocks). */
export async function tempDir(prefix: string): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), `cli-${prefix}-`));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** A Writable that keeps what was written. */
export class Capture extends Writable {
  text = '';
  override _write(chunk: Buffer | string, _encoding: BufferEncoding, callback: () => void): void {
    this.text += chunk.toString();
    callback();
  }
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the CLI in-process with an isolated environment (no inherited IMAGE_CACHE_* or DEBUG). */
export async function cli(
  argv: string[],
  options: { env?: Record<string, string | undefined>; cwd?: string; signal?: AbortSignal } = {},
): Promise<RunResult> {
  const stdout = new Capture();
  const stderr = new Capture();
  const code = await runCli(argv, {
    stdout,
    stderr,
    env: options.env ?? {},
    cwd: options.cwd ?? tmpdir(),
    ...(options.signal === undefined ? {} : { signal: options.signal }),
  });
  return { code, stdout: stdout.text, stderr: stderr.text };
}

/** Runs the built binary as a subprocess. */
export function bin(argv: string[], options: { env?: Record<string, string>; cwd?: string } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [BIN, ...argv],
      { cwd: options.cwd ?? tmpdir(), env: { PATH: process.env['PATH'] ?? '', ...options.env }, maxBuffer: 1 << 22 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : 1;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

export type DriverName = 'sqlite' | 'xattr';

export function createDriver(name: DriverName, cacheDir: string): CacheDriver {
  return name === 'sqlite' ? new SqliteDriver({ cacheDir }) : new XattrDriver({ cacheDir });
}

/** Opens the cache with the library (not the CLI), runs `body`, closes it. */
export async function withCache<T>(name: DriverName, cacheDir: string, body: (cache: ImageCache) => Promise<T>): Promise<T> {
  const cache = await ImageCache.open({ driver: createDriver(name, cacheDir) });
  try {
    return await body(cache);
  } finally {
    await cache.close();
  }
}

/** Caches `data` under `id`, optionally verified against `checksum` (which is then stored). */
export async function put(cache: ImageCache, id: string, data: Buffer | string, checksum?: Checksum): Promise<void> {
  await cache.cacheImage(id, Readable.from([Buffer.from(data)]), checksum === undefined ? {} : { checksum });
}

/** Reads an entry to the end through the cache (counts a hit, updates last access). */
export async function read(cache: ImageCache, id: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of await cache.openForRead(id)) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Every path under `dir`, sorted, with a trailing slash on directories; [] when `dir` is missing. */
export async function tree(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true }).catch(() => []);
  return entries
    .map((e) => join(e.parentPath, e.name).slice(dir.length + 1) + (e.isDirectory() ? '/' : ''))
    .sort();
}

/**
 * Whether the temp filesystem keeps user xattrs: `undefined` when it does,
 * else the reason (from the driver's own capability probe).
 */
export async function xattrUnsupportedReason(): Promise<string | undefined> {
  const { dir, cleanup } = await tempDir('xattr-probe');
  const driver = new XattrDriver({ cacheDir: dir });
  try {
    await driver.configure();
    return undefined;
  } catch (error) {
    return `${tmpdir()} does not keep user.* xattrs: ${(error as Error).message}`;
  } finally {
    await driver.close();
    await cleanup();
  }
}

/** The drivers to run each suite with; xattr only where the temp filesystem supports it. */
export async function driverMatrix(): Promise<{ name: DriverName; skip: string | undefined }[]> {
  return [
    { name: 'sqlite', skip: undefined },
    { name: 'xattr', skip: await xattrUnsupportedReason() },
  ];
}

/** A suite title that carries the skip reason, as the conformance kit does. */
export function suiteTitle(name: DriverName, skip: string | undefined): string {
  return skip === undefined ? `${name} driver` : `${name} driver [skipped: ${skip}]`;
}

/** A running `image-cache serve` (the built binary, a child process). */
export interface ServeProcess {
  /** The base URL it printed (`serving ... on <url>`), once both startup lines are out; rejects when it exits first. */
  url: Promise<string>;
  /** Its exit code (null when killed by a signal). */
  exited: Promise<number | null>;
  /** What it printed so far. */
  output: () => { stdout: string; stderr: string };
  /** SIGKILL unless it has exited; safe to call twice. */
  kill: () => void;
  /** Sends `signal` (e.g. SIGTERM for a graceful stop) unless it has exited. */
  signal: (signal: NodeJS.Signals) => void;
}

/** Starts `image-cache <argv...>` (argv includes `serve`; `--workers 1` unless argv or env sets workers) and watches its stderr for the listening URL. */
export function startServe(argv: string[], options: { cwd: string; env?: Record<string, string> }): ServeProcess {
  // One process unless the test asks for workers (`serve --workers N`; the default is one per core).
  const workers = argv.includes('--workers') || options.env?.['IMAGE_CACHE_WORKERS'] !== undefined ? [] : ['--workers', '1'];
  const proc = spawn(process.execPath, [BIN, ...argv, ...workers], {
    cwd: options.cwd,
    env: { PATH: process.env['PATH'] ?? '', ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  let onOutput = () => undefined as void;
  proc.stdout.on('data', (chunk: Buffer) => {
    stdout += chunk.toString();
    onOutput();
  });
  proc.stderr.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
    onOutput();
  });
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  const url = new Promise<string>((resolve, reject) => {
    onOutput = () => {
      // Its startup lines: `serving <dir> (...) on <url>`, then `origin <...>`.
      const match = /serving .* on (https?:\/\/\S+)\n(?:.*\n)*?image-cache: origin .*\n/.exec(stderr);
      if (match?.[1] !== undefined) resolve(match[1]);
    };
    void exited.then((code) => reject(new Error(`serve exited (${code}) before listening: ${stderr}`)));
  });
  url.catch(() => undefined);
  const signal = (name: NodeJS.Signals) => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill(name);
  };
  return {
    url,
    exited,
    output: () => ({ stdout, stderr }),
    kill: () => signal('SIGKILL'),
    signal,
  };
}
