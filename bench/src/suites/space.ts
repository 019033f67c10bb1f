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
 * the fastest run of each is reported (as figures 1-3).
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { BadDriverConfigurationError, ImageCache, suggestedHeadroom } from '@cache/core';
import { createDriver, DRIVERS } from '../drivers.js';
import { collectGarbage, fastest, generate, makeChunk, median, mibPerSecond, timedRun } from '../measure.js';
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
