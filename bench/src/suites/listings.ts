/**
 * Figures 5 and 6: listings (`getCachedImages`, `getCacheSize`) and `prune`
 * on populated cache directories of a small and a large number of entries,
 * per driver, beside raw `readdir` + `stat` and raw `unlink`s of the same
 * directory. The postgres driver (when the bench's server runs) has the
 * listings only, each population in a database of its own.
 */
import { readdir, rm, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { PruneResult } from '@cache/core';
import { createBenchDatabase, DRIVERS, openCache, populate, type BenchDatabase, type DriverName } from '../drivers.js';
import { collectGarbage, median, settle, timedRun } from '../measure.js';
import { countLabel, figure } from '../report.js';
import type { SuiteContext } from '../run.js';

const ENTRY_NAME = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** The raw listing: one readdir, then fs.promises.stat of every name, 64 in flight (as the cache's own scan). */
async function rawListing(dir: string): Promise<number> {
  const names = await readdir(dir);
  let next = 0;
  let bytes = 0;
  const worker = async () => {
    while (next < names.length) {
      const name = names[next++] as string;
      bytes += (await stat(join(dir, name))).size;
    }
  };
  await Promise.all(Array.from({ length: Math.min(64, names.length) }, worker));
  return bytes;
}

export async function listingFigures(ctx: SuiteContext): Promise<void> {
  const { fs, sizes, wanted } = ctx;
  if (!wanted(5) && !wanted(6)) return;
  const [small, large] = sizes.entries;
  const needed = large * Math.max(sizes.entryBytes, 4096) * 1.5;
  const free = await ctx.freeBytes();
  if (free < needed) {
    ctx.skip([5, 6], `needs about ${(needed / 2 ** 20).toFixed(0)} MiB free, ${(free / 2 ** 20).toFixed(0)} MiB available`);
    return;
  }
  const postgres = ctx.postgres;
  const drivers: DriverName[] = wanted(5) && postgres.available ? [...DRIVERS, 'postgres'] : [...DRIVERS];
  for (const driver of drivers) {
    const pruneMs = new Map<number, { ours: number; raw: number }>();
    // Prune (6) is measured for the local drivers only.
    const prunes = wanted(6) && driver !== 'postgres';
    let refused: string | undefined;
    for (const count of [small, large]) {
      // Prune is destructive: each prune run gets a freshly populated directory. The large size runs once.
      const pruneRuns = prunes ? (count === large && count > 10_000 ? 1 : sizes.repeats) : 1;
      const ours: number[] = [];
      const raw: number[] = [];
      for (let run = 0; run < pruneRuns && refused === undefined; run++) {
        const dir = join(fs.path, `listing-${driver}-${count}-${run}`);
        let db: BenchDatabase | undefined;
        if (driver === 'postgres' && postgres.available) db = await createBenchDatabase(postgres.server, `bench_listing_${count}`);
        let cache: Awaited<ReturnType<typeof openCache>>;
        let totalBytes: number;
        try {
          ({ totalBytes } = await populate(driver, dir, count, sizes.entryBytes, db));
          cache = await openCache(driver, dir, Math.floor(totalBytes / 2), db?.url);
        } catch (error) {
          await db?.drop();
          throw error;
        }
        if (typeof cache === 'string') {
          refused = cache;
          await rm(dir, { recursive: true, force: true });
          await db?.drop();
          break;
        }
        try {
          if (run === 0 && wanted(5)) await measureListings(ctx, driver, count, dir, cache, totalBytes);
          if (prunes) {
            await settle(fs.path);
            collectGarbage();
            let result: PruneResult = { files: 0, bytes: 0 };
            ours.push(await timedRun(async () => (result = await cache.prune()), { repeatable: false }));
            if (result.files !== count / 2) throw new Error(`prune evicted ${result.files} of ${count} entries, expected ${count / 2}`);
            const left = (await readdir(dir)).filter((name) => ENTRY_NAME.test(name));
            if (left.length !== result.files) throw new Error(`${left.length} entries left after prune, expected ${result.files}`);
            await settle(fs.path);
            collectGarbage();
            raw.push(
              await timedRun(
                async () => {
                  for (const name of left) await unlink(join(dir, name));
                },
                { repeatable: false },
              ),
            );
          }
        } finally {
          await cache.close();
          await rm(dir, { recursive: true, force: true });
          await db?.drop();
        }
      }
      if (refused !== undefined) break;
      if (!prunes) continue;
      pruneMs.set(count, { ours: median(ours), raw: median(raw) });
      ctx.add(
        figure({
          figure: 6,
          title: `prune ${countLabel(count)} → ${countLabel(count / 2)}`,
          fs: fs.name,
          driver,
          ours: { label: 'prune', value: median(ours), unit: 'ms', samples: ours },
          baseline: { label: `${countLabel(count / 2)} raw unlinks`, value: median(raw), unit: 'ms', samples: raw },
          goal: null,
        }),
      );
    }
    if (refused !== undefined) {
      ctx.skipDriver(prunes ? [5, 6] : [5], driver, refused);
      continue;
    }
    const a = pruneMs.get(small);
    const b = pruneMs.get(large);
    if (a !== undefined && b !== undefined) {
      ctx.add(
        figure({
          figure: 6,
          title: `prune time ${countLabel(large)} / ${countLabel(small)}`,
          fs: fs.name,
          driver,
          ours: { label: 'prune scaling', value: b.ours / a.ours, unit: 'x' },
          baseline: { label: 'raw unlink scaling', value: b.raw / a.raw, unit: 'x' },
          ratio: b.ours / a.ours,
          goal: { on: 'ratio', op: '<=', target: 12 },
        }),
      );
    }
  }
}

async function measureListings(
  ctx: SuiteContext,
  driver: DriverName,
  count: number,
  dir: string,
  cache: import('@cache/core').ImageCache,
  totalBytes: number,
): Promise<void> {
  // No untimed warm-up pass: populate() has just written every file and attribute, so the caches
  // are warm, and with the rotating order below a slower first run lands once on each call.
  const samples = { raw: [] as number[], images: [] as number[], size: [] as number[] };
  const steps = [
    async () => {
      samples.raw.push(await timedRun(() => rawListing(dir)));
    },
    async () => {
      let listed = 0;
      samples.images.push(await timedRun(async () => (listed = (await cache.getCachedImages()).length)));
      if (listed !== count) throw new Error(`listed ${listed} entries, expected ${count}`);
    },
    async () => {
      let size = 0;
      samples.size.push(await timedRun(async () => (size = await cache.getCacheSize())));
      if (size !== totalBytes) throw new Error(`getCacheSize() = ${size}, expected ${totalBytes}`);
    },
  ];
  for (let rep = 0; rep < ctx.sizes.repeats; rep++) {
    // The order rotates, so that no call always runs first on a freshly populated directory.
    for (let i = 0; i < steps.length; i++) {
      collectGarbage();
      await steps[(i + rep) % steps.length]!();
    }
  }
  const baseline = { label: 'readdir + stat each', value: median(samples.raw), unit: 'ms' as const, samples: samples.raw };
  for (const [title, ours] of [
    ['getCachedImages', samples.images],
    ['getCacheSize', samples.size],
  ] as const) {
    ctx.add(
      figure({
        figure: 5,
        title: `${title} at ${countLabel(count)}`,
        fs: ctx.fs.name,
        driver,
        ours: { label: title, value: median(ours), unit: 'ms', samples: ours },
        baseline,
        goal: null,
      }),
    );
  }
}
