/**
 * Figure 4: single operations per second, per driver, each beside the raw
 * call it is built on, measured with tinybench on one committed 4 KiB entry.
 */
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import Database from 'better-sqlite3';
import { getAttribute } from 'fs-xattr';
import { Bench } from 'tinybench';
import { XATTR } from '@cache/driver-xattr';
import { dbPathOf, DRIVERS, openCache } from '../drivers.js';
import { collectGarbage, makeChunk, NullSink, waitForQuiet } from '../measure.js';
import { figure } from '../report.js';
import type { SuiteContext } from '../run.js';

const SMALL = 4096;

export async function opsFigures(ctx: SuiteContext): Promise<void> {
  if (!ctx.wanted(4)) return;
  const { fs, sizes } = ctx;
  for (const driver of DRIVERS) {
    const cacheDir = join(fs.path, `ops-${driver}`);
    const cache = await openCache(driver, cacheDir);
    if (typeof cache === 'string') {
      ctx.skipDriver([4], driver, cache);
      continue;
    }
    const id = 'small-image';
    await cache.cacheImage(id, Readable.from([makeChunk(SMALL)]));
    const path = cache.getImageFilepath(id);
    const db = driver === 'sqlite' ? new Database(dbPathOf(cacheDir), { readonly: true }) : undefined;
    const select = db?.prepare('SELECT hits FROM cached_images WHERE image_id = ?');
    const rawHits =
      select !== undefined
        ? { label: 'better-sqlite3 SELECT hits', run: async () => select.get(id) }
        : { label: 'fs-xattr getAttribute(user.hits)', run: () => getAttribute(path, XATTR.hits) };

    const pairs = [
      { title: 'isCached', ours: () => cache.isCached(id), rawLabel: 'fs.promises.stat', raw: () => stat(path) },
      { title: 'getHitCount', ours: () => cache.getHitCount(id), rawLabel: rawHits.label, raw: rawHits.run },
      { title: 'getImageSize', ours: () => cache.getImageSize(id), rawLabel: 'fs.promises.stat', raw: () => stat(path) },
      {
        title: 'read of a 4 KiB entry (hit recorded)',
        ours: async () => pipeline(await cache.openForRead(id), new NullSink()),
        rawLabel: 'fs.promises.readFile',
        raw: () => readFile(path),
      },
    ];
    const bench = new Bench({ time: sizes.opsTimeMs, warmupTime: Math.min(250, sizes.opsTimeMs), throws: true });
    for (const pair of pairs) {
      bench.add(`ours ${pair.title}`, async () => {
        await pair.ours();
      });
      bench.add(`raw ${pair.title}`, async () => {
        await pair.raw();
      });
    }
    bench.addEventListener('cycle', () => collectGarbage());
    await waitForQuiet();
    await bench.run();

    const opsPerSecond = (name: string) => {
      const task = bench.getTask(name);
      const result = task?.result;
      if (result === undefined || !('period' in result)) throw new Error(`tinybench task ${name} has no result`);
      return {
        value: 1000 / result.period,
        stats: { meanMs: result.period, p50Ms: result.latency.p50, p99Ms: result.latency.p99, runs: task?.runs ?? 0 },
      };
    };
    for (const pair of pairs) {
      const ours = opsPerSecond(`ours ${pair.title}`);
      const raw = opsPerSecond(`raw ${pair.title}`);
      ctx.add(
        figure({
          figure: 4,
          title: pair.title,
          fs: fs.name,
          driver,
          ours: { label: pair.title, value: ours.value, unit: 'ops/s', stats: ours.stats },
          baseline: { label: pair.rawLabel, value: raw.value, unit: 'ops/s', stats: raw.stats },
          goal: null,
        }),
      );
    }
    db?.close();
    await cache.close();
  }
}
