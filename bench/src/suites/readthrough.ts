/**
 * Figure 7: many concurrent misses of one id through `readThrough`. The
 * origin is paced like a fast network origin (1 MiB chunks, 2 ms apart,
 * about 500 MiB/s). We count how often the origin was fetched (goal: once)
 * and time the whole burst, until every caller has read every byte, beside
 * one uncached fetch of the same image.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { DRIVERS, openCache } from '../drivers.js';
import { collectGarbage, makeChunk, NullSink, sleep, timedRun } from '../measure.js';
import { MiB } from '../options.js';
import { figure } from '../report.js';
import type { SuiteContext } from '../run.js';

const CHUNK_GAP_MS = 2;

export async function readThroughFigures(ctx: SuiteContext): Promise<void> {
  if (!ctx.wanted(7)) return;
  const { fs, sizes } = ctx;
  const total = sizes.readThroughBytes;
  const callers = sizes.readThroughCallers;
  const chunk = makeChunk(MiB);
  async function* origin(): AsyncGenerator<Buffer> {
    for (let left = total; left > 0; left -= chunk.length) {
      await sleep(CHUNK_GAP_MS);
      yield left >= chunk.length ? chunk : chunk.subarray(0, left);
    }
  }
  for (const driver of DRIVERS) {
    const dir = join(fs.path, `readthrough-${driver}`);
    const cache = await openCache(driver, dir);
    if (typeof cache === 'string') {
      ctx.skipDriver([7], driver, cache);
      continue;
    }
    collectGarbage();
    const oneFetch = await timedRun(() => pipeline(origin(), new NullSink()));
    let fetches = 0;
    const fetch = () => {
      fetches++;
      return origin();
    };
    const id = 'hot-image';
    let bytes = 0;
    let served = { cache: 0, origin: 0 };
    collectGarbage();
    const burst = await timedRun(
      () => {
        fetches = 0;
        bytes = 0;
        served = { cache: 0, origin: 0 };
        return Promise.all(
          Array.from({ length: callers }, async () => {
            const { stream, from } = await cache.readThrough(id, { fetch });
            served[from]++;
            const sink = new NullSink();
            await pipeline(stream, sink);
            bytes += sink.bytes;
          }),
        );
      },
      { cleanup: () => cache.deleteCachedImage(id) },
    );
    if (bytes !== callers * total) throw new Error(`the ${callers} callers read ${bytes} bytes, expected ${callers * total}`);
    await cache.close();
    await rm(dir, { recursive: true, force: true });
    const size = `${total / MiB} MiB`;
    ctx.add(
      figure({
        figure: 7,
        title: `readThrough: ${callers} concurrent misses of one ${size} id, origin fetches`,
        fs: fs.name,
        driver,
        ours: { label: 'origin fetches', value: fetches, unit: 'calls' },
        baseline: null,
        goal: { on: 'value', op: '==', target: 1 },
        note: `${served.origin} caller(s) served from the origin, ${served.cache} from the cache`,
      }),
    );
    ctx.add(
      figure({
        figure: 7,
        title: `readThrough: ${callers} concurrent misses of one ${size} id, time until all have read it`,
        fs: fs.name,
        driver,
        ours: { label: `${callers} callers, all bytes`, value: burst, unit: 'ms' },
        baseline: { label: 'one uncached fetch', value: oneFetch, unit: 'ms' },
        goal: null,
      }),
    );
  }
}
