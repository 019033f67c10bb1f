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

async function openBudgeted(driver: (typeof DRIVERS)[number], dir: string, maxSize: number): Promise<ImageCache | string> {
  try {
    // As `image-cache serve` runs it: the write budget with its suggested headroom.
    return await ImageCache.open({ driver: createDriver(driver, dir), maxSize, writeBudget: true, headroom: suggestedHeadroom(maxSize) });
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
    const dir = join(fs.path, `space-${driver}`);
    await rm(dir, { recursive: true, force: true });
    const cache = await openBudgeted(driver, dir, budget);
    if (typeof cache === 'string') {
      ctx.skipDriver([13], driver, cache);
      continue;
    }
    let evictions = 0;
    cache.addSpaceListener((event) => {
      if (event.type === 'evict') evictions++;
    });
    const fillAll = async (prefix: string) => {
      for (let i = 0; i < count; i++) {
        const outcome = await cache.fill(`${prefix}-${i}`, { fetch: () => ({ source: generate(chunk, each), size: each }) }).done;
        if (outcome.status !== 'committed') throw new Error(`fill ${prefix}-${i} ended ${outcome.status}`);
      }
    };
    const empty = async () => {
      await cache.deleteAllCachedImages();
    };
    const samples = { ours: [] as number[], baseline: [] as number[] };
    let round = 0;
    for (let run = 0; run < sizes.streamRepeats; run++) {
      collectGarbage();
      // Baseline: an empty cache, nothing to evict.
      samples.baseline.push(await timedRun(() => fillAll(`base-${run}`), { prepare: empty, cleanup: empty }));
      collectGarbage();
      // Ours: a full cache, every fill evicts one entry first.
      let before = 0;
      samples.ours.push(
        await timedRun(() => fillAll(`evict-${run}-${round++}`), {
          prepare: async () => {
            await empty();
            await fillAll(`old-${run}-${round}`);
            before = evictions;
          },
          cleanup: async () => {
            if (evictions - before < count) throw new Error(`expected ${count} evictions, saw ${evictions - before}`);
            await empty();
          },
        }),
      );
    }
    await cache.close();
    await rm(dir, { recursive: true, force: true });
    const ours = fastest(samples.ours);
    const baseline = fastest(samples.baseline);
    ctx.add(
      figure({
        figure: 13,
        title: `${count} fills of ${each / MiB} MiB with the write budget: into a full cache (each evicts one LRU entry) vs an empty one`,
        fs: fs.name,
        driver,
        ours: { label: 'fills evicting', value: mibPerSecond(budget, ours), unit: 'MiB/s', samples: samples.ours, stats: { medianMs: median(samples.ours) } },
        baseline: {
          label: 'fills into an empty cache',
          value: mibPerSecond(budget, baseline),
          unit: 'MiB/s',
          samples: samples.baseline,
          stats: { medianMs: median(samples.baseline) },
        },
        goal: { on: 'ratio', op: '>=', target: 0.95 },
      }),
    );
  }
}
