import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { ensureGlance, GlanceError, GlancePython, glanceIt } from '../src/index.js';

const setup = inject('glance');

describe('ensureGlance', () => {
  it('with CACHE_TEST_GLANCE=0 does nothing and gives that as the reason', async () => {
    expect(await ensureGlance({ CACHE_TEST_GLANCE: '0' })).toEqual({
      available: false,
      reason: "CACHE_TEST_GLANCE=0: Glance's code is not run",
    });
  });
});

describe("Glance's own cache code over the JSON-lines pipe", () => {
  let python: GlancePython;
  let dir: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'glance-testing-'));
    if (setup.available) python = GlancePython.start();
  });

  afterAll(async () => {
    await python?.close();
    await rm(dir, { recursive: true, force: true });
  });

  for (const driver of ['sqlite', 'xattr'] as const) {
    glanceIt(setup, `${driver}: caches, reads (a hit), lists, prunes and deletes through Glance's ImageCache`, async () => {
      const base = join(dir, driver);
      const glance = python.cache(base, driver, { maxSize: 3 });
      expect(await glance.configure()).toEqual({ driver: `glance.image_cache.drivers.${driver}` });
      expect(await glance.cache('one', 'abc')).toBe(true);
      expect(await glance.cache('two', 'de')).toBe(true);
      expect(await glance.read('one')).toBe('abc');
      const listing = await glance.list();
      expect(listing.images.map((i) => [i.image_id, i.size, i.hits])).toEqual([
        ['one', 3, 1],
        ['two', 2, 0],
      ]);
      expect(listing.hits).toEqual({ one: 1, two: 0 });
      expect(listing.size).toBe(5);
      expect(await glance.prune()).toEqual([1, 2]); // 5 B > 3 B: the least recently used goes
      expect(await glance.deleteAll()).toBeGreaterThanOrEqual(1);
      expect((await readdir(base)).filter((name) => name === 'one')).toEqual([]);
    });
  }

  glanceIt(setup, "Glance's exceptions come back typed, and the process lives on", async () => {
    const glance = python.cache(join(dir, 'errors'), 'sqlite');
    const error = await glance.read('missing').then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(GlanceError);
    expect((error as GlanceError).pythonType).toBe('FileNotFoundError');
    expect((await glance.list()).images).toEqual([]);
  });
});
