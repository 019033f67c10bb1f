/**
 * The space policy on small real filesystems (issue 14, ADR 0006): a 64 MiB
 * tmpfs and a 64 MiB loop-mounted ext4, mounted for the test (root only;
 * otherwise skipped with the reason). Another process fills the disk beside
 * the cache; the tests wait for the watcher's reaction by polling a
 * condition, never for a fixed time.
 */
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { mkdir, readdir, rm, statfs } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { CacheStorageError, ImageCache, MemoryDriver, type SpaceEvent } from '../src/index.js';
import { collect } from './helpers.js';

const MiB = 1024 * 1024;
const run = promisify(execFile);

function sh(command: string, args: readonly string[]): string {
  return execFileSync(command, args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString().trim();
}

function errorText(error: unknown): string {
  return (error as { stderr?: Buffer }).stderr?.toString().trim() || (error as Error).message;
}

/** Mounts a small tmpfs and a small loop ext4 in one temp dir; says why not when it cannot. */
function mountBoth(): { root: string; tmpfs: string; ext4: string; loop: string } | string {
  if (process.getuid?.() !== 0) return 'not root: mounting a small tmpfs and a loop ext4 needs root';
  const root = mkdtempSync(join(tmpdir(), 'space-mounts-'));
  const tmpfs = join(root, 'tmpfs');
  const ext4 = join(root, 'ext4');
  const image = join(root, 'ext4.img');
  try {
    sh('mkdir', [tmpfs, ext4]);
    sh('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', tmpfs]);
  } catch (error) {
    rmSync(root, { recursive: true, force: true });
    return `mount -t tmpfs failed: ${errorText(error)}`;
  }
  try {
    sh('truncate', ['-s', '64M', image]);
    sh('mkfs.ext4', ['-q', '-F', '-m', '0', image]);
    const loop = sh('losetup', ['--find', '--show', image]);
    sh('mount', [loop, ext4]);
    return { root, tmpfs, ext4, loop };
  } catch (error) {
    sh('umount', [tmpfs]);
    rmSync(root, { recursive: true, force: true });
    return `a loop ext4 could not be set up (mkfs.ext4, losetup, mount): ${errorText(error)}`;
  }
}

const mounts = mountBoth();
const skip = typeof mounts === 'string' ? mounts : undefined;
console.log(skip === undefined ? '[space] a 64 MiB tmpfs and a 64 MiB loop ext4, mounted for the test' : `[space] mounts skipped: ${skip}`);
const suffix = skip === undefined ? '' : ` [skipped: ${skip}]`;

afterAll(() => {
  if (typeof mounts === 'string') return;
  for (const dir of [mounts.tmpfs, mounts.ext4]) {
    try {
      sh('umount', [dir]);
    } catch {
      sh('umount', ['-l', dir]);
    }
  }
  try {
    sh('losetup', ['-d', mounts.loop]);
  } catch {
    // detached by umount already (autoclear)
  }
  rmSync(mounts.root, { recursive: true, force: true });
});

let cache: ImageCache | undefined;
let events: SpaceEvent[] = [];
const fillers: string[] = [];

afterEach(async () => {
  await cache?.close();
  cache = undefined;
  events = [];
  for (const file of fillers.splice(0)) rmSync(file, { force: true });
});

/**
 * Another process takes `bytes` of the disk beside the cache, in one step
 * (`fallocate`, as a VM disk image would be allocated): the watcher then sees
 * one crossing, not a disk that keeps filling while it culls.
 */
async function fillBeside(file: string, bytes: number): Promise<void> {
  fillers.push(file);
  await run('fallocate', ['-l', String(bytes), file]);
}

async function freeBytes(dir: string): Promise<number> {
  const info = await statfs(dir);
  return info.bavail * info.bsize;
}

/** Polls `condition` until it holds (generous overall timeout: a loaded machine is slow, never wrong). */
async function until(what: string, condition: () => Promise<boolean> | boolean, timeoutMs = 60_000, explain?: () => Promise<string>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}${explain === undefined ? '' : ` (${await explain()})`}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function content(id: string, size: number): Buffer {
  const data = Buffer.alloc(size);
  for (let i = 0; i < size; i += 4096) data.write(`${id}:${i};`, i);
  return data;
}

async function* chunked(data: Buffer): AsyncGenerator<Buffer> {
  for (let i = 0; i < data.length; i += 256 * 1024) yield data.subarray(i, i + 256 * 1024);
}

async function openOn(base: string, name: string, options: Partial<Parameters<typeof ImageCache.open>[0]> = {}): Promise<{ cache: ImageCache; dir: string }> {
  const dir = join(base, name);
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir);
  cache = await ImageCache.open({ driver: new MemoryDriver({ cacheDir: dir }), onSpaceEvent: (event) => events.push(event), ...options });
  return { cache, dir };
}

describe.each(['tmpfs', 'ext4'] as const)('free-space thresholds on a 64 MiB %s', (fs) => {
  const base = () => (mounts as { tmpfs: string; ext4: string })[fs];

  it.skipIf(skip !== undefined)(
    `${fs}: another process fills the disk below cull: the watcher evicts least recently used idle entries until run is free${suffix}`,
    { timeout: 90_000 },
    async () => {
      const { cache } = await openOn(base(), 'cull', {
        freeSpace: { run: { percent: 40 }, cull: { percent: 25 }, stop: { percent: 5 }, intervalMs: 100 },
      });
      const ids = ['e1', 'e2', 'e3', 'e4', 'e5', 'e6'];
      for (const id of ids) expect(await cache.cacheImage(id, Readable.from(chunked(content(id, 4 * MiB))))).toBe(true);
      await collect(await cache.openForRead('e1')); // e1 becomes the most recently used
      const held = await cache.openForRead('e2'); // e2 is being read: never evicted
      const { thresholds } = await cache.spaceStatus();
      const cull = thresholds?.cull.bytes as number;
      const run = thresholds?.run.bytes as number;
      // Leave about 4 MiB less than cull free (the watcher may react before the filler has even exited).
      await fillBeside(join(base(), 'filler'), (await freeBytes(base())) - cull + 4 * MiB);
      // The watcher culls once free space is below cull, until run is free (the filler may still be writing then:
      // what it takes afterwards is above cull, and culling does not start again).
      const culled = () => events.findIndex((event) => event.type === 'state' && event.state === 'ok' && event.disk.freeBytes >= run);
      await until('culling brought free space back to run', async () => culled() >= 0 && (await cache.spaceStatus()).state === 'ok', 60_000, async () =>
        JSON.stringify({ free: await freeBytes(base()), run, cull, events }),
      );
      expect(await freeBytes(base())).toBeGreaterThanOrEqual(cull);
      const evicted = events.flatMap((event) => (event.type === 'evict' ? [event] : []));
      expect(evicted.length).toBeGreaterThan(0);
      expect(evicted.every((event) => event.cause === 'cull')).toBe(true);
      // Least recently used first: e3, e4, ... never e2 (read) and e1 (most recent) only last.
      expect(evicted.map((event) => event.imageId)).toEqual(['e3', 'e4', 'e5', 'e6', 'e1'].slice(0, evicted.length));
      expect(await cache.isCached('e2')).toBe(true);
      expect((await collect(held)).length).toBe(4 * MiB);
      expect(events).toContainEqual(expect.objectContaining({ type: 'state', state: 'culling' }));
    },
  );

  it.skipIf(skip !== undefined)(
    `${fs}: below stop, new images are not cached (bypassed, disk-low) until space is back${suffix}`,
    async () => {
      const { cache } = await openOn(base(), 'stop', {
        freeSpace: { run: { percent: 30 }, cull: { percent: 20 }, stop: { percent: 10 }, intervalMs: 100 },
      });
      const { thresholds } = await cache.spaceStatus();
      const stop = thresholds?.stop.bytes as number;
      const filler = join(base(), 'filler-stop');
      await fillBeside(filler, (await freeBytes(base())) - stop + 2 * MiB);
      await until('the watcher stops caching', async () => (await cache.spaceStatus()).state === 'stopped');
      const data = content('late', MiB);
      const fill = cache.fill('late', { fetch: () => ({ source: Readable.from(chunked(data)), size: data.length }) });
      expect(await fill.done).toMatchObject({ status: 'bypassed', reason: 'disk-low' });
      const taken = fill.takeSource();
      expect((await collect(taken?.source as AsyncIterable<unknown>)).equals(data), 'the client still gets every byte').toBe(true);
      expect(await cache.isCached('late')).toBe(false);
      rmSync(filler);
      await until('caching resumes', async () => (await cache.spaceStatus()).state === 'ok');
      const again = cache.fill('late', { fetch: () => ({ source: Readable.from(chunked(data)), size: data.length }) });
      expect(await again.done).toMatchObject({ status: 'committed', size: data.length });
    },
  );

  it.skipIf(skip !== undefined)(
    `${fs}: ENOSPC in the middle of a fill of known size evicts idle entries and retries once: committed, every byte read${suffix}`,
    async () => {
      const { cache } = await openOn(base(), 'enospc', { maxSize: 1024 * MiB });
      for (const id of ['old-1', 'old-2', 'old-3']) expect(await cache.cacheImage(id, Readable.from(chunked(content(id, 8 * MiB))))).toBe(true);
      // Leave 6 MiB free; the fill needs 16 MiB: two entries must go.
      await fillBeside(join(base(), 'filler-enospc'), (await freeBytes(base())) - 6 * MiB);
      const data = content('new', 16 * MiB);
      const fill = cache.fill('new', { fetch: () => ({ source: Readable.from(chunked(data)), size: data.length }) });
      const read = collect(fill.openReader());
      expect(await fill.done).toMatchObject({ status: 'committed', size: data.length });
      expect((await read).equals(data)).toBe(true);
      // Each write in flight that hit ENOSPC asked once (two are in flight at a time), and each could go on.
      const enospc = events.filter((event) => event.type === 'enospc');
      expect(enospc.length).toBeGreaterThan(0);
      expect(enospc.every((event) => event.type === 'enospc' && event.imageId === 'new' && event.retried)).toBe(true);
      expect(events.filter((event) => event.type === 'evict').every((event) => event.type === 'evict' && event.cause === 'enospc')).toBe(true);
      expect(await cache.isCached('old-3'), 'the most recent old entry was not needed').toBe(true);
    },
  );

  it.skipIf(skip !== undefined)(
    `${fs}: ENOSPC that eviction cannot make room for rolls the fill back cleanly; entries stay${suffix}`,
    async () => {
      const { cache, dir } = await openOn(base(), 'enospc-2', { maxSize: 1024 * MiB });
      expect(await cache.cacheImage('keep', Readable.from(chunked(content('keep', 2 * MiB))))).toBe(true);
      await fillBeside(join(base(), 'filler-enospc-2'), (await freeBytes(base())) - 4 * MiB);
      const data = content('huge', 16 * MiB);
      const fill = cache.fill('huge', { fetch: () => ({ source: Readable.from(chunked(data)), size: data.length }) });
      const outcome = await fill.done;
      expect(outcome.status).toBe('failed');
      expect(CacheStorageError.isInstance((outcome as { error: Error }).error)).toBe(true);
      expect(events).toContainEqual({ type: 'enospc', imageId: 'huge', retried: false });
      expect(await cache.isCached('keep')).toBe(true);
      expect(await cache.isCached('huge')).toBe(false);
      expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
    },
  );

  it.skipIf(skip !== undefined)(
    `${fs}: ENOSPC in a fill and a caching stream of unknown size evicts a write buffer's worth at a time and goes on: committed${suffix}`,
    async () => {
      // The earlier tests' caches go first: this one needs most of the 64 MiB.
      for (const earlier of ['cull', 'stop', 'enospc', 'enospc-2']) await rm(join(base(), earlier), { recursive: true, force: true });
      const { cache } = await openOn(base(), 'enospc-unknown', { maxSize: 1024 * MiB });
      const old = ['old-1', 'old-2', 'old-3', 'old-4', 'old-5'];
      for (const id of old) expect(await cache.cacheImage(id, Readable.from(chunked(content(id, 6 * MiB))))).toBe(true);
      // Leave 3 MiB free; each 12 MiB write needs about two entries more.
      await fillBeside(join(base(), 'filler-enospc-unknown'), (await freeBytes(base())) - 3 * MiB);
      const data = content('new', 12 * MiB);
      const fill = cache.fill('new', { fetch: () => Readable.from(chunked(data)) });
      const read = collect(fill.openReader());
      expect(await fill.done).toMatchObject({ status: 'committed', size: data.length });
      expect((await read).equals(data)).toBe(true);
      const other = content('streamed', 12 * MiB);
      const stream = cache.getCachingStream('streamed', Readable.from(chunked(other)));
      expect((await collect(stream)).equals(other)).toBe(true);
      expect((await stream.cacheOutcome).status).toBe('committed');
      const enospc = events.filter((event) => event.type === 'enospc');
      expect(enospc.length, 'the disk was full').toBeGreaterThan(0);
      expect(enospc.every((event) => event.type === 'enospc' && event.retried)).toBe(true);
      expect(events.filter((event) => event.type === 'evict').every((event) => event.type === 'evict' && event.cause === 'enospc')).toBe(true);
      expect(await cache.isCached('new')).toBe(true);
      expect(await cache.isCached('streamed')).toBe(true);
    },
  );
});
