/**
 * Figure 13: the space policy on the write path (issue 14, ADR 0006). N
 * fills of S bytes each (size known, as an origin's Content-Length), one
 * after the other, through `ImageCache.fill` with the write budget on:
 * - ours: into a full cache (N entries of S bytes, budget N × S), so that
 *   every fill needs the least recently used entry evicted (a listing, a
 *   choice, an unlink and a metadata delete), with the headroom
 *   `image-cache serve` keeps (`suggestedHeadroom`: 1/64 of the budget), so
 *   that, after the first, the unlink runs behind the previous fill's writes;
 * - baseline: the same fills into an empty cache (budget N × S, nothing to evict).
 * Both sides run `streamRepeats` times, interleaved, on the same filesystem;
 * the fastest run of each is reported (as figures 1-3). Before each timed
 * run the filesystem is settled (`sync -f`), so neither side pays the
 * writeback of what its preparation wrote.
 *
 * For context, once per filesystem, the floor no cache can go below: raw
 * `fs/promises` writes of the same files, each beside the `unlink` of an
 * old file of the same size, over the same writes alone. Freeing a file's
 * blocks (on tmpfs: its pages) is work for the kernel; where that alone
 * costs more than 5 %, the goal is below the floor.
 */
import { mkdir, open, rm, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { BadDriverConfigurationError, ImageCache, suggestedHeadroom } from '@cache/core';
import { createDriver, DRIVERS } from '../drivers.js';
import { collectGarbage, fastest, generate, makeChunk, median, mibPerSecond, settle, timedRun } from '../measure.js';
import { MiB } from '../options.js';
import { figure } from '../report.js';
import type { SuiteContext } from '../run.js';

async function openBudgeted(driver: (typeof DRIVERS)[number], dir: string, maxSize: number, headroom: number): Promise<ImageCache | string> {
  try {
    return await ImageCache.open({ driver: createDriver(driver, dir), maxSize, writeBudget: true, headroom });
  } catch (error) {
    if (BadDriverConfigurationError.isInstance(error)) return (error as Error).message;
    throw error;
  }
}

export async function spaceFigures(ctx: SuiteContext): Promise<void> {
  if (!ctx.wanted(13)) return;
  const { fs, sizes } = ctx;
  const count = sizes.spaceFills;
  const each = sizes.spaceFillBytes;
  const budget = count * each;
  const free = await ctx.freeBytes();
  if (free < 2.5 * budget) {
    ctx.skip([13], `needs ${((2.5 * budget) / MiB).toFixed(0)} MiB free, ${(free / MiB).toFixed(0)} MiB available`);
    return;
  }
  const chunk = makeChunk(sizes.chunkBytes);
  await rawFloor(ctx, count, each, chunk);
  for (const driver of DRIVERS) {
    // Ours as `image-cache serve` runs it (the write budget with its suggested headroom); for context, the same
    // without headroom (every eviction inside the fill's decision); the baseline, an empty cache.
    const variants = [
      { name: 'ours', headroom: suggestedHeadroom(budget) },
      { name: 'noHeadroom', headroom: 0 },
    ] as const;
    const caches = new Map<string, ImageCache>();
    let skipped = false;
    for (const variant of variants) {
      const dir = join(fs.path, `space-${driver}-${variant.name}`);
      await rm(dir, { recursive: true, force: true });
      const cache = await openBudgeted(driver, dir, budget, variant.headroom);
      if (typeof cache === 'string') {
        ctx.skipDriver([13], driver, cache);
        skipped = true;
        break;
      }
      caches.set(variant.name, cache);
    }
    if (skipped) {
      for (const cache of caches.values()) await cache.close();
      continue;
    }
    const samples = { ours: [] as number[], noHeadroom: [] as number[], baseline: [] as number[] };
    const base = caches.get('noHeadroom') as ImageCache;
    const fillAll = async (cache: ImageCache, prefix: string) => {
      for (let i = 0; i < count; i++) {
        const outcome = await cache.fill(`${prefix}-${i}`, { fetch: () => ({ source: generate(chunk, each), size: each }) }).done;
        if (outcome.status !== 'committed') throw new Error(`fill ${prefix}-${i} ended ${outcome.status}`);
      }
    };
    let round = 0;
    for (let run = 0; run < sizes.streamRepeats; run++) {
      collectGarbage();
      // Baseline: an empty cache, nothing to evict.
      const empty = async () => {
        await base.deleteAllCachedImages();
        await settle(fs.path);
      };
      samples.baseline.push(await timedRun(() => fillAll(base, `base-${run}`), { prepare: empty, cleanup: empty }));
      for (const variant of variants) {
        const cache = caches.get(variant.name) as ImageCache;
        let evictions = 0;
        const stop = cache.addSpaceListener((event) => {
          if (event.type === 'evict') evictions++;
        });
        collectGarbage();
        // A full cache: every fill needs an entry evicted.
        samples[variant.name].push(
          await timedRun(() => fillAll(cache, `evict-${run}-${round++}`), {
            prepare: async () => {
              await cache.deleteAllCachedImages();
              await fillAll(cache, `old-${run}-${round}`);
              await cache.spaceStatus(); // the headroom's evictions behind the last of these have run
              // The old entries written back before the clock starts, as the baseline's deletes are: otherwise
              // this side alone would pay the writeback of the gigabyte it was just filled with.
              await settle(fs.path);
              evictions = 0;
            },
            cleanup: async () => {
              if (evictions < count - 1) throw new Error(`expected about ${count} evictions, saw ${evictions}`);
              await cache.deleteAllCachedImages();
            },
          }),
        );
        stop();
      }
    }
    for (const variant of variants) {
      await (caches.get(variant.name) as ImageCache).close();
      await rm(join(fs.path, `space-${driver}-${variant.name}`), { recursive: true, force: true });
    }
    const ours = fastest(samples.ours);
    const baseline = fastest(samples.baseline);
    const noHeadroom = fastest(samples.noHeadroom);
    ctx.add(
      figure({
        figure: 13,
        title: `${count} fills of ${each / MiB} MiB with the write budget: into a full cache (each evicts one LRU entry) vs an empty one`,
        fs: fs.name,
        driver,
        ours: {
          label: 'fills evicting',
          value: mibPerSecond(budget, ours),
          unit: 'MiB/s',
          samples: samples.ours,
          stats: { medianMs: median(samples.ours), noHeadroomMiBps: mibPerSecond(budget, noHeadroom), noHeadroomMedianMs: median(samples.noHeadroom) },
        },
        baseline: {
          label: 'fills into an empty cache',
          value: mibPerSecond(budget, baseline),
          unit: 'MiB/s',
          samples: samples.baseline,
          stats: { medianMs: median(samples.baseline) },
        },
        goal: { on: 'ratio', op: '>=', target: 0.95 },
        note: `without headroom (every eviction inside the fill's decision): ${mibPerSecond(budget, noHeadroom).toFixed(0)} MiB/s, ratio ${(mibPerSecond(budget, noHeadroom) / mibPerSecond(budget, baseline)).toFixed(2)}`,
      }),
    );
  }
}

/** The raw floor of figure 13 (see the file's comment): a row without a driver and without a goal. */
async function rawFloor(ctx: SuiteContext, count: number, each: number, chunk: Buffer): Promise<void> {
  const dir = join(ctx.fs.path, 'space-raw');
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const write = async (path: string) => {
    const handle = await open(path, 'wx');
    try {
      for await (const piece of generate(chunk, each)) await handle.write(piece);
    } finally {
      await handle.close();
    }
  };
  const fillOld = async () => {
    for (let i = 0; i < count; i++) await write(join(dir, `old-${i}`));
  };
  const removeAll = async (prefix: string) => {
    for (let i = 0; i < count; i++) await unlink(join(dir, `${prefix}-${i}`)).catch(() => undefined);
  };
  const samples = { alone: [] as number[], beside: [] as number[] };
  try {
    for (let run = 0; run < ctx.sizes.streamRepeats; run++) {
      samples.alone.push(
        await timedRun(
          async () => {
            for (let i = 0; i < count; i++) await write(join(dir, `new-${i}`));
          },
          { prepare: () => settle(dir), cleanup: () => removeAll('new') },
        ),
      );
      samples.beside.push(
        await timedRun(
          async () => {
            for (let i = 0; i < count; i++) await Promise.all([write(join(dir, `new-${i}`)), unlink(join(dir, `old-${i}`))]);
          },
          {
            prepare: async () => {
              await fillOld();
              await settle(dir);
            },
            cleanup: async () => {
              await removeAll('new');
              await removeAll('old');
            },
          },
        ),
      );
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  const bytes = count * each;
  ctx.add(
    figure({
      figure: 13,
      title: `raw floor: ${count} writes of ${each / MiB} MiB (fs/promises), each beside the unlink of an old file of that size, vs the writes alone`,
      fs: ctx.fs.name,
      driver: null,
      ours: { label: 'writes beside unlinks', value: mibPerSecond(bytes, fastest(samples.beside)), unit: 'MiB/s', samples: samples.beside },
      baseline: { label: 'writes alone', value: mibPerSecond(bytes, fastest(samples.alone)), unit: 'MiB/s', samples: samples.alone },
      goal: null,
    }),
  );
}
