import { mkdtemp, readdir, readlink, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterEach, beforeEach } from 'vitest';
import type { DirectoryDriverOptions } from '../src/driver-api.js';
import { ImageCache, MemoryDriver, type CacheDriver } from '../src/index.js';

/** A fresh directory on the OS temp filesystem (real files; no mocked fs). */
export async function tempDir(prefix: string): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), `${prefix}-`));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/**
 * For each test of the enclosing `describe` (or file): a fresh {@link tempDir}
 * with an `ImageCache` on a `MemoryDriver` (plus `driverOptions`), handed to
 * `use` before the test (a `beforeEach` registered after this call runs after
 * it, and may seed entries); closed and removed after the test.
 */
export function memoryCacheEach(
  prefix: string,
  use: (opened: { cache: ImageCache; dir: string }) => void,
  driverOptions: Omit<DirectoryDriverOptions, 'cacheDir'> = {},
): void {
  let opened: { cache?: ImageCache; cleanup: () => Promise<void> } | undefined;
  beforeEach(async () => {
    const { dir, cleanup } = await tempDir(prefix);
    opened = { cleanup };
    const cache = await ImageCache.open({ driver: new MemoryDriver({ ...driverOptions, cacheDir: dir }) });
    opened.cache = cache;
    use({ cache, dir });
  });
  afterEach(async () => {
    await opened?.cache?.close();
    await opened?.cleanup();
    opened = undefined;
  });
}

export async function write(driver: CacheDriver, id: string, data: Buffer | string): Promise<void> {
  await pipeline(Readable.from([Buffer.from(data)]), await driver.openForWrite(id));
}

export async function collect(stream: AsyncIterable<unknown>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Every path under `dir`, sorted, with a trailing slash on directories. */
export async function tree(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .map((e) => join(e.parentPath ?? (e as unknown as { path: string }).path, e.name).slice(dir.length + 1) + (e.isDirectory() ? '/' : ''))
    .sort();
}

/** Chunks of `size` bytes each, `count` of them, every chunk different. */
export function chunks(count: number, size: number): Buffer[] {
  return Array.from({ length: count }, (_, i) => Buffer.alloc(size, i % 251));
}

/**
 * Files under `dir` this process has open (Linux `/proc/self/fd`), leaving
 * out the driver's own state under `.image-cache/` (the relaxed journal);
 * the directory itself, held open for strict group fsyncs, is not under it.
 */
export async function openUnder(dir: string): Promise<string[]> {
  const open: string[] = [];
  for (const fd of await readdir('/proc/self/fd')) {
    const target = await readlink(`/proc/self/fd/${fd}`).catch(() => '');
    if (target.startsWith(`${dir}/`) && !target.startsWith(`${dir}/.image-cache/`)) open.push(target);
  }
  return open;
}
