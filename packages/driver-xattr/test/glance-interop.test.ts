/**
 * Glance's own xattr driver (Debian python3-glance, run by
 * @cache/glance-testing) and ours taking turns on one cache directory, in
 * both orders and alternating, on the OS temp dir (ext4, relatime: the Linux
 * default) and on every test filesystem with user xattrs. After every step
 * both must list the same images with the same sizes and hits, report the
 * same cache size, and rank the images alike for eviction; Glance's prune
 * and delete-all must remove images only.
 *
 * Glance ranks by atime in whole seconds (ties by size, then path), so every
 * step that changes recency starts just past a second boundary
 * ({@link nextSecond}): the orders compared below are orders of steps, never
 * of instants within one second.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, inject } from 'vitest';
import { getTestFilesystems, probeFilesystem, readImage, writeImage, type TestFilesystem } from '@cache/conformance';
import { compareByRecency, ImageCache } from '@cache/core';
import { GlancePython, glanceIt, type GlanceCache, type GlanceListing } from '@cache/glance-testing';
import { XattrDriver } from '../src/index.js';

const setup = inject('glance');

/** Waits until the clock is 50 ms past the next whole second (the kernel's coarse clock lags by a tick, 1-10 ms). */
async function nextSecond(): Promise<void> {
  await sleep(1000 - (Date.now() % 1000) + 50);
}

/**
 * Whether a plain read moves the atime of a file whose atime is two days old:
 * yes under relatime (and strictatime), no under noatime. Without that,
 * Glance's reads are invisible to Glance itself, and to us.
 */
async function readsMoveAtime(root: string): Promise<boolean> {
  const path = join(root, `.atime-probe-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    await writeFile(path, 'probe');
    const twoDaysAgo = Date.now() / 1000 - 2 * 86_400;
    await utimes(path, twoDaysAgo, twoDaysAgo);
    const handle = await open(path, 'r');
    await handle.read(Buffer.alloc(5), 0, 5, 0);
    await handle.close();
    return (await stat(path)).atimeMs / 1000 > twoDaysAgo + 86_400;
  } finally {
    await rm(path, { force: true });
  }
}

// The OS temp dir always (the machine's default mount), then every test filesystem that keeps user xattrs.
const candidates: TestFilesystem[] = [{ name: 'os-tmp', root: tmpdir(), fromEnv: false }];
for (const fs of getTestFilesystems()) if (!candidates.some((c) => c.root === fs.root)) candidates.push(fs);
const filesystems: (TestFilesystem & { glanceReadsSeen: boolean })[] = [];
for (const fs of candidates) {
  if ((await probeFilesystem(fs.root)).xattr.supported) filesystems.push({ ...fs, glanceReadsSeen: await readsMoveAtime(fs.root) });
}

let python: GlancePython | undefined;

beforeAll(() => {
  if (setup.available) python = GlancePython.start();
});

afterAll(async () => {
  await python?.close();
});

/** Glance's eviction order: `get_least_recently_accessed()` sorts (atime in whole seconds, size, path). */
function glanceOrder(listing: GlanceListing): string[] {
  return [...listing.images]
    .sort((a, b) => a.last_accessed - b.last_accessed || a.size - b.size || (a.image_id < b.image_id ? -1 : 1))
    .map((r) => r.image_id);
}

describe.each(filesystems)("Glance's xattr driver and ours on one cache directory on $name ($root)", (fs) => {
  let dir: string;
  let driver: XattrDriver;

  beforeEach(async () => {
    dir = await mkdtemp(join(fs.root, 'xattr-glance-'));
    driver = new XattrDriver({ cacheDir: dir });
    await driver.configure();
  });

  afterEach(async () => {
    await driver.close();
    await rm(dir, { recursive: true, force: true });
  });

  function glance(maxSize?: number): GlanceCache {
    if (python === undefined) throw new Error('Glance is not running');
    return python.cache(dir, 'xattr', maxSize === undefined ? {} : { maxSize });
  }

  /**
   * Both sides' view of the directory, compared: ids, sizes and hits, the
   * cache size, and the whole eviction order. Returns it, least recent first.
   */
  async function expectAgreement(g: GlanceCache, step: string): Promise<string[]> {
    const seen = await g.list();
    const mine = await driver.getCachedImages();
    expect(seen.images.map((r) => [r.image_id, r.size, r.hits]), `${step}: Glance's get_cached_images() against ours`).toEqual(
      mine.map((i) => [i.imageId, i.size, i.hits]),
    );
    expect(seen.hits, `${step}: Glance's get_hit_count()`).toEqual(Object.fromEntries(mine.map((i) => [i.imageId, i.hits])));
    expect(seen.size, `${step}: Glance's get_cache_size() against ours`).toBe(await driver.getCacheSize());
    const order = [...mine].sort(compareByRecency).map((i) => i.imageId);
    expect(glanceOrder(seen), `${step}: Glance's eviction order against ours`).toEqual(order);
    expect(seen.lru?.[0] ?? null, `${step}: least recently accessed`).toBe(order[0] ?? null);
    return order;
  }

  /** `seen` when reads by Glance move atime on this filesystem, `unseen` when they do not (noatime). */
  const ifGlanceReadsSeen = <T>(seen: T, unseen: T): T => (fs.glanceReadsSeen ? seen : unseen);

  /**
   * Our read of `id`, to the end (a hit), after which atime must not be past
   * ctime: relatime updates atime on a read only while it is not (or once a
   * day), so a later atime would hide Glance's next read from Glance itself.
   */
  async function ourRead(id: string): Promise<string> {
    const text = (await readImage(driver, id)).toString();
    const after = await stat(join(dir, id), { bigint: true });
    expect(after.atimeNs <= after.ctimeNs, `after our read of ${id}: atime ${after.atimeNs} must not be after ctime ${after.ctimeNs}`).toBe(true);
    return text;
  }

  glanceIt(setup, 'Glance first: Glance caches and reads, we read; each side ranks the other\'s reads', async () => {
    const g = glance();
    await g.configure();
    for (const [id, data] of [['a', 'aaaa'], ['b', 'bb'], ['c', 'cccccc']]) {
      await nextSecond();
      expect(await g.cache(id as string, data as string)).toBe(true);
    }
    await nextSecond();
    expect(await g.read('a')).toBe('aaaa');
    expect(await expectAgreement(g, 'after Glance cached a, b, c and read a')).toEqual(ifGlanceReadsSeen(['b', 'c', 'a'], ['a', 'b', 'c']));
    await nextSecond();
    expect(await ourRead('b')).toBe('bb');
    expect(await expectAgreement(g, 'after we read b')).toEqual(ifGlanceReadsSeen(['c', 'a', 'b'], ['a', 'c', 'b']));
    await nextSecond();
    expect(await g.read('c')).toBe('cccccc');
    expect(await expectAgreement(g, 'after Glance read c')).toEqual(ifGlanceReadsSeen(['a', 'b', 'c'], ['a', 'c', 'b']));
    expect((await driver.getCachedImages()).map((i) => [i.imageId, i.hits])).toEqual([
      ['a', 1],
      ['b', 1],
      ['c', 1],
    ]);
  });

  glanceIt(setup, 'ours first: we cache and read, Glance reads what we read last; its read counts for both sides', async () => {
    for (const id of ['x', 'y', 'z']) {
      await nextSecond();
      await writeImage(driver, id, Buffer.from(id.repeat(3)));
    }
    await nextSecond();
    await ourRead('x');
    const g = glance();
    expect(await expectAgreement(g, 'after we cached x, y, z and read x')).toEqual(['y', 'z', 'x']);
    await nextSecond();
    expect(await g.read('y')).toBe('yyy');
    expect(await expectAgreement(g, 'after Glance read y')).toEqual(ifGlanceReadsSeen(['z', 'x', 'y'], ['y', 'z', 'x']));
    await nextSecond();
    await ourRead('z');
    expect(await expectAgreement(g, 'after we read z')).toEqual(ifGlanceReadsSeen(['x', 'y', 'z'], ['y', 'x', 'z']));
    // A Glance read of an entry we read before: under relatime the kernel must still move its atime.
    await nextSecond();
    expect(await g.read('x')).toBe('xxx');
    expect(await expectAgreement(g, 'after Glance read x')).toEqual(ifGlanceReadsSeen(['y', 'z', 'x'], ['y', 'x', 'z']));
    expect(await driver.getHitCount('x')).toBe(2);
  });

  glanceIt(setup, 'alternating: each side ranks the reads of both, and prunes by either side agree', async () => {
    const g = glance();
    await g.configure();
    const steps: [string, () => Promise<unknown>][] = [
      ['Glance caches g1 (100 B)', () => g.cache('g1', '1'.repeat(100))],
      ['we cache o1 (200 B)', () => writeImage(driver, 'o1', Buffer.alloc(200, 1))],
      ['we read g1', () => ourRead('g1')],
      ['Glance caches g2 (300 B)', () => g.cache('g2', '2'.repeat(300))],
      ['Glance reads g1', () => g.read('g1')],
      ['we read o1', () => ourRead('o1')],
      ['we cache o2 (400 B)', () => writeImage(driver, 'o2', Buffer.alloc(400, 2))],
      ['Glance reads o1', () => g.read('o1')],
    ];
    for (const [step, run] of steps) {
      await nextSecond();
      await run();
      await expectAgreement(g, `after ${step}`);
    }
    // Last accesses: g2 s4, g1 s5 (Glance, after ours at s3), o2 s7, o1 s8 (Glance, after ours at s6).
    expect(await expectAgreement(g, 'after all steps')).toEqual(ifGlanceReadsSeen(['g2', 'g1', 'o2', 'o1'], ['g1', 'g2', 'o1', 'o2']));
    // 1000 B in all. A budget of 700 B: Glance evicts from the least recent until the rest fits.
    expect(await glance(700).prune()).toEqual(ifGlanceReadsSeen([1, 300], [2, 400]));
    const left = await expectAgreement(g, "after Glance's prune");
    expect(left).toEqual(ifGlanceReadsSeen(['g1', 'o2', 'o1'], ['o1', 'o2']));
    const cache = await ImageCache.open({ driver, maxSize: 600 });
    expect(await cache.prune()).toEqual(ifGlanceReadsSeen({ files: 1, bytes: 100 }, { files: 0, bytes: 0 }));
    expect(await expectAgreement(g, 'after our prune')).toEqual(ifGlanceReadsSeen(left.slice(1), left));
  });

  glanceIt(setup, "Glance's delete_all deletes our images and nothing else; we go on caching", async () => {
    await writeImage(driver, 'one', Buffer.from('1'));
    await writeImage(driver, 'two', Buffer.from('22'));
    await ourRead('one');
    const g = glance();
    await g.configure(); // Glance's probe file, checkme, comes and goes
    expect((await readdir(dir, { withFileTypes: true })).filter((e) => e.isFile()).map((e) => e.name).sort()).toEqual(['one', 'two']);
    expect(await g.deleteAll()).toBe(2);
    expect(await driver.getCachedImages()).toEqual([]);
    await writeImage(driver, 'three', Buffer.from('333'));
    await ourRead('three');
    expect(await expectAgreement(g, "after Glance's delete_all and our next write")).toEqual(['three']);
    expect((await g.list()).hits).toEqual({ three: 1 });
  });
});
