/**
 * Glance's own sqlite driver (Debian python3-glance, run by
 * @cache/glance-testing) and ours taking turns on one cache directory, in
 * both orders and alternating. After every step both must list the same
 * images with the same sizes, hits and times, name the same least recently
 * used image and report the same cache size; Glance's prune and delete-all
 * must remove images only; and while our driver runs, the directory holds no
 * `-wal`/`-shm`/`-journal` file for Glance to count or delete.
 *
 * Access times: Glance stamps with Python's time.time() (microseconds), we
 * with a millisecond clock, so a step of ours in the same millisecond as the
 * Glance step just before it can be stamped earlier than it. Both sides read
 * the same stamps, so they still agree; the expected orders below never rest
 * on a Glance step and the step of ours right after it.
 */
import { readdir } from 'node:fs/promises';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, inject } from 'vitest';
import { readImage, writeImage } from '@cache/conformance';
import { compareByRecency, ImageCache } from '@cache/core';
import { GlancePython, glanceIt, type GlanceCache } from '@cache/glance-testing';
import { SqliteDriver } from '../src/index.js';
import { tempDir } from './helpers.js';

const setup = inject('glance');

let python: GlancePython | undefined;
let dir: string;
let cleanup: () => Promise<void>;
const open: SqliteDriver[] = [];

beforeAll(() => {
  if (setup.available) python = GlancePython.start();
});

afterAll(async () => {
  await python?.close();
});

beforeEach(async () => {
  ({ dir, cleanup } = await tempDir('sqlite-glance'));
});

afterEach(async () => {
  for (const d of open.splice(0)) await d.close();
  await cleanup();
});

function glance(maxSize?: number): GlanceCache {
  if (python === undefined) throw new Error('Glance is not running');
  return python.cache(dir, 'sqlite', maxSize === undefined ? {} : { maxSize });
}

async function ours(): Promise<SqliteDriver> {
  const d = new SqliteDriver({ cacheDir: dir });
  await d.configure();
  open.push(d);
  return d;
}

const bytes = (text: string) => Buffer.from(text);

/** Files in the cache directory whose names start with the database's: only `cache.db` itself may be there. */
async function databaseFiles(): Promise<string[]> {
  return (await readdir(dir)).filter((name) => name.startsWith('cache.db')).sort();
}

/**
 * Both sides' view of the directory, compared: ids, sizes, hits and times of
 * every image, the cache size, and the least recently used image; and no
 * journal file beside the database. Returns the shared LRU id.
 */
async function expectAgreement(g: GlanceCache, d: SqliteDriver, step: string): Promise<string | null> {
  const seen = await g.list();
  const mine = await d.getCachedImages();
  expect(
    seen.images.map((r) => [r.image_id, r.size, r.hits, r.last_accessed, r.last_modified]),
    `${step}: Glance's get_cached_images() against ours`,
  ).toEqual(mine.map((i) => [i.imageId, i.size, i.hits, i.lastAccessed, i.lastModified]));
  expect(seen.hits, `${step}: Glance's get_hit_count()`).toEqual(Object.fromEntries(mine.map((i) => [i.imageId, i.hits])));
  expect(seen.size, `${step}: Glance's get_cache_size() against ours`).toBe(await d.getCacheSize());
  const lru = (await d.getLeastRecentlyAccessed())?.imageId ?? null;
  expect(seen.lru?.[0] ?? null, `${step}: Glance's least recently accessed against ours`).toBe(lru);
  // Glance's whole eviction order (ORDER BY last_accessed) is ours.
  const glanceOrder = [...seen.images].sort((a, b) => a.last_accessed - b.last_accessed).map((r) => r.image_id);
  expect(glanceOrder, `${step}: eviction order`).toEqual([...mine].sort(compareByRecency).map((i) => i.imageId));
  expect(await databaseFiles(), `${step}: files beside the database while our driver runs`).toEqual(['cache.db']);
  return lru;
}

describe("Glance's sqlite driver and ours on one cache directory", () => {
  glanceIt(setup, 'Glance first: what Glance cached and read, we list, read and count; Glance then sees our reads', async () => {
    const g = glance();
    await g.configure();
    expect(await g.cache('a', 'aaaa')).toBe(true);
    expect(await g.cache('b', 'bb')).toBe(true);
    expect(await g.cache('c', 'cccccc')).toBe(true);
    expect(await g.read('a')).toBe('aaaa');
    const d = await ours();
    expect(await expectAgreement(g, d, 'after Glance cached a, b, c and read a')).toBe('b');
    expect((await readImage(d, 'b')).toString()).toBe('bb');
    expect(await expectAgreement(g, d, 'after we read b')).toBe('c');
    expect(await g.read('c')).toBe('cccccc');
    expect(await expectAgreement(g, d, 'after Glance read c')).toBe('a');
    expect((await d.getCachedImages()).map((i) => [i.imageId, i.hits])).toEqual([
      ['a', 1],
      ['b', 1],
      ['c', 1],
    ]);
  });

  glanceIt(setup, 'ours first: what we cached and read, Glance lists, reads and counts; we then see its reads', async () => {
    const d = await ours();
    await writeImage(d, 'x', bytes('x'));
    await writeImage(d, 'y', bytes('yy'));
    await writeImage(d, 'z', bytes('zzz'));
    await readImage(d, 'x');
    await readImage(d, 'x');
    const g = glance();
    expect(await expectAgreement(g, d, 'after we cached x, y, z and read x twice')).toBe('y');
    expect(await g.read('y')).toBe('yy');
    expect(await expectAgreement(g, d, 'after Glance read y')).toBe('z');
    await readImage(d, 'z');
    expect(await expectAgreement(g, d, 'after we read z')).toBe('x');
    expect(await d.getHitCount('x')).toBe(2);
    expect(await d.getHitCount('y')).toBe(1);
  });

  glanceIt(setup, "alternating writes and reads; Glance's prune then removes exactly the images that were due, and ours agrees", async () => {
    const d = await ours();
    const g = glance();
    await g.configure();
    const steps: [string, () => Promise<unknown>][] = [
      ['Glance caches g1', () => g.cache('g1', '1'.repeat(100))],
      ['we cache o1', () => writeImage(d, 'o1', Buffer.alloc(200, 1))],
      ['Glance reads o1', () => g.read('o1')],
      ['we read g1', () => readImage(d, 'g1')],
      ['Glance caches g2', () => g.cache('g2', '2'.repeat(300))],
      ['we cache o2', () => writeImage(d, 'o2', Buffer.alloc(400, 2))],
      ['we read o1', () => readImage(d, 'o1')],
      ['Glance reads g2', () => g.read('g2')],
      ['Glance reads g1', () => g.read('g1')],
    ];
    for (const [step, run] of steps) {
      await run();
      await expectAgreement(g, d, `after ${step}`);
    }
    // Least recent first: o2 (400 B), o1 (200 B), g2 (300 B), g1 (100 B); 1000 B in all. (Each of these
    // orders rests on two steps of one side, or on a step of ours followed by one of Glance.)
    const order = [...(await d.getCachedImages())].sort(compareByRecency).map((i) => [i.imageId, i.size]);
    expect(order).toEqual([
      ['o2', 400],
      ['o1', 200],
      ['g2', 300],
      ['g1', 100],
    ]);
    // A budget of 600 B makes one image due (o2). With our database's -wal/-shm counted, Glance pruned three.
    expect(await glance(600).prune()).toEqual([1, 400]);
    expect((await d.getCachedImages()).map((i) => i.imageId)).toEqual(['g1', 'g2', 'o1']);
    expect(await expectAgreement(g, d, "after Glance's prune")).toBe('o1');
    const cache = await ImageCache.open({ driver: d, maxSize: 600 });
    expect(await cache.prune(), 'nothing left to prune for us either').toEqual({ files: 0, bytes: 0 });
    expect(await databaseFiles()).toEqual(['cache.db']);
  });

  glanceIt(setup, "Glance's delete_all removes the images only: our database keeps working and keeps what we write next", async () => {
    const d = await ours();
    await writeImage(d, 'one', bytes('1'));
    await writeImage(d, 'two', bytes('22'));
    await readImage(d, 'one');
    const g = glance();
    await g.configure(); // Glance's own external lock file, image_cache_db_init, appears in the directory
    const before = (await readdir(dir, { withFileTypes: true })).filter((e) => e.isFile()).map((e) => e.name).sort();
    expect(before).toEqual(['cache.db', 'image_cache_db_init', 'one', 'two']);
    // Glance deletes every regular file but the database: our two images and its own lock file.
    expect(await g.deleteAll()).toBe(3);
    expect(await databaseFiles()).toEqual(['cache.db']);
    expect(await d.getCachedImages()).toEqual([]);
    await writeImage(d, 'three', bytes('333'));
    await readImage(d, 'three');
    await d.close();
    // Nothing we wrote after Glance's delete_all was lost with a deleted log.
    const reopened = await ours();
    expect((await reopened.getCachedImages()).map((i) => [i.imageId, i.size, i.hits])).toEqual([['three', 3, 1]]);
    await expectAgreement(g, reopened, "after Glance's delete_all and our next write");
  });
});
