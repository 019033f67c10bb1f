/**
 * LRU order during a burst of accesses within one millisecond.
 *
 * core's `nowSeconds()` returns `Date.now() / 1000`, and within one
 * millisecond steps `last + 1e-6`. Each entry's recency comes from it. When
 * more than about ten accesses land in one millisecond (a burst of reads
 * completing on a busy server), the clock is in its stepping regime. This
 * test puts it there for the whole test, deterministically, by advancing it
 * with 5,000,000 calls (which takes it about 5 s ahead of the wall clock;
 * the reads below take milliseconds), then commits 30 entries in one order
 * and reads them in the opposite order: the LRU order must be the read order.
 *
 * Runs in its own file: the advanced clock is per process (per test file).
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { nowSeconds } from '@cache/core/driver';
import { readImage, writeImage } from '@cache/conformance';
import { makeContent } from './fixtures/content.mjs';
import { createDriver, DRIVER_NAMES, freshDir, reliabilityTarget, removeDir } from './helpers.js';

const target = await reliabilityTarget();

describe(`LRU order in a burst of accesses within one millisecond on ${target.fs.name} (${target.fs.root})`, () => {
  for (const name of DRIVER_NAMES) {
    const skip = name === 'xattr' ? target.xattrSkipReason : undefined;
    it.skipIf(skip !== undefined)(
      `${name}: 30 reads made back to back while the clock steps within one millisecond keep their order in getLeastRecentlyAccessed() (the order prune() evicts in)${skip === undefined ? '' : ` [skipped: ${skip}]`}`,
      async () => {
        const work = await freshDir(target.fs.root, `burst-${name}`);
        const driver = createDriver(name, join(work, 'cache'));
        await driver.configure();
        try {
          const ids = Array.from({ length: 30 }, (_, i) => `entry-${String(i).padStart(2, '0')}`);
          // Committed in reverse, so that a tie in access time falls back to an order opposite to the reads.
          for (const id of [...ids].reverse()) await writeImage(driver, id, makeContent(id, 100));
          for (let i = 0; i < 5_000_000; i++) nowSeconds();
          for (const id of ids) await readImage(driver, id);

          const images = await driver.getCachedImages();
          const accessed = new Map(images.map((image) => [image.imageId, image.lastAccessed]));
          const ties = ids.slice(1).filter((id, i) => (accessed.get(id) as number) <= (accessed.get(ids[i] as string) as number));
          const seen: string[] = [];
          for (let lra = await driver.getLeastRecentlyAccessed(); lra !== null; lra = await driver.getLeastRecentlyAccessed()) {
            seen.push(lra.imageId);
            await driver.deleteCachedImage(lra.imageId);
          }
          expect(ties, 'entries whose recorded access time is not later than that of the entry read just before them').toEqual([]);
          expect(seen, 'least recently accessed first = the read order').toEqual(ids);
        } finally {
          await driver.close();
          await removeDir(work);
        }
      },
    );
  }
});
