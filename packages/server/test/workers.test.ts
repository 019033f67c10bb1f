import { utimes, writeFile } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { METRIC_NAMES } from '../src/index.js';
import { imageBytes, scrape, startHarness, waitFor, type Harness } from './helpers.js';

describe('background workers', () => {
  let h: Harness | undefined;
  afterEach(async () => {
    await h?.close();
    h = undefined;
  });

  it('the pruner keeps the cache within its budget on its interval', async () => {
    h = await startHarness({ maxSize: 3000, pruneInterval: 30 });
    const harness = h;
    for (const id of ['w1', 'w2', 'w3', 'w4', 'w5']) await harness.cache.cacheImage(id, Readable.from([imageBytes(id, 1000)]));
    await waitFor(async () => (await harness.cache.getCacheSize()) <= 3000);
    expect((await harness.cache.getCachedImages()).map((image) => image.imageId)).toEqual(['w3', 'w4', 'w5']);
    const m = await scrape(harness.url);
    expect(m.get(METRIC_NAMES.prunedFiles)).toBe(2);
    expect(m.get(METRIC_NAMES.prunedBytes)).toBe(2000);
    expect(m.get(`${METRIC_NAMES.workerRuns}{worker="prune",result="ok"}`)).toBeGreaterThanOrEqual(1);
  });

  it('the cleaner removes invalid files and stalled incomplete files on its interval', async () => {
    h = await startHarness({ cleanInterval: 30 });
    const harness = h;
    await writeFile(`${harness.cacheDir}/invalid/old-failure`, 'x');
    await writeFile(`${harness.cacheDir}/incomplete/stalled`, 'y');
    const longAgo = new Date(Date.now() - 2 * 86_400_000);
    await utimes(`${harness.cacheDir}/incomplete/stalled`, longAgo, longAgo);
    await waitFor(async () => {
      const m = await scrape(harness.url);
      return m.get(`${METRIC_NAMES.cleanedFiles}{kind="invalid"}`) === 1 && m.get(`${METRIC_NAMES.cleanedFiles}{kind="stalled"}`) === 1;
    });
    expect(await harness.cache.isBeingCached('stalled')).toBe(false);
  });

  it('the prefetch worker fetches queued images, dequeues them, and one failure does not stop the rest', async () => {
    h = await startHarness({ prefetchInterval: 40, prefetchConcurrency: 2 });
    const harness = h;
    for (const id of ['pf-1', 'pf-2', 'pf-3']) harness.origin.images.set(id, { kind: 'ok', data: imageBytes(id, 20_000) });
    harness.origin.images.set('pf-broken', { kind: 'cut', data: imageBytes('pf-broken', 200_000), after: 1000 });
    await harness.cache.cacheImage('pf-cached', Readable.from([Buffer.from('already')]));
    for (const id of ['pf-1', 'pf-broken', 'pf-2', 'pf-missing', 'pf-3']) await harness.cache.queueImage(id);

    // The worker retries the broken one on every run, so the count may be past 1 by the time it is looked at.
    await waitFor(async () => ((await scrape(harness.url)).get(`${METRIC_NAMES.prefetches}{outcome="failed"}`) ?? 0) >= 1);
    await waitFor(async () => (await harness.cache.getQueuedImages()).length === 1);
    for (const id of ['pf-1', 'pf-2', 'pf-3']) expect(await harness.cache.isCached(id)).toBe(true);
    expect(await harness.cache.isCached('pf-broken')).toBe(false);
    // The broken one stays queued for the next run; the one the origin does not have is dropped.
    expect(await harness.cache.getQueuedImages()).toEqual(['pf-broken']);
    const m = await scrape(harness.url);
    expect(m.get(`${METRIC_NAMES.prefetches}{outcome="cached"}`)).toBe(3);
    expect(m.get(`${METRIC_NAMES.prefetches}{outcome="not_found"}`)).toBe(1);
    expect(m.get(`${METRIC_NAMES.prefetches}{outcome="failed"}`)).toBeGreaterThanOrEqual(1);
    expect(m.get(`${METRIC_NAMES.errors}{code="CACHE_ORIGIN_ERROR"}`)).toBe(m.get(`${METRIC_NAMES.prefetches}{outcome="failed"}`));
    // It keeps retrying the broken one; once the origin recovers it is cached and dequeued.
    harness.origin.images.set('pf-broken', { kind: 'ok', data: imageBytes('pf-broken', 200_000) });
    await waitFor(() => harness.cache.isCached('pf-broken'));
    await waitFor(async () => (await harness.cache.getQueuedImages()).length === 0);
    for (const id of ['pf-1', 'pf-2', 'pf-3']) expect(harness.origin.count(id)).toBe(1);
  });

  it('a queued image that is already cached is dequeued without an origin request', async () => {
    h = await startHarness({ prefetchInterval: 20 });
    const again = h;
    await again.cache.cacheImage('dup', Readable.from([Buffer.from('data')]));
    // A stale marker (as a crash between commit and marker removal leaves it).
    await writeFile(`${again.cacheDir}/queue/dup`, '');
    await waitFor(async () => (await again.cache.getQueuedImages()).length === 0);
    expect(again.origin.count('dup')).toBe(0);
    expect((await scrape(again.url)).get(`${METRIC_NAMES.prefetches}{outcome="already_cached"}`)).toBe(1);
  });

  it('a slow run is never overlapped: later ticks are skipped while it runs', async () => {
    h = await startHarness({ prefetchInterval: 20, prefetchConcurrency: 1 });
    const harness = h;
    // The origin holds the body until 5 ticks have been skipped: the run is still going on, whatever the machine's speed.
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    harness.origin.images.set('slow', { kind: 'ok', data: imageBytes('slow', 1000), until: held });
    await harness.cache.queueImage('slow');
    const skipped = async () => (await scrape(harness.url)).get(`${METRIC_NAMES.workerRuns}{worker="prefetch",result="skipped"}`) ?? 0;
    // The run has reached the origin (its request is held there) and later ticks came and were skipped. Both are
    // waited for: on a loaded machine the run may take more than 5 ticks to send its request.
    await waitFor(async () => harness.origin.count('slow') === 1 && (await skipped()) >= 5);
    expect(await harness.cache.isCached('slow')).toBe(false);
    release();
    await waitFor(() => harness.cache.isCached('slow'));
    expect(harness.origin.count('slow')).toBe(1);
  });

  it('interval 0 disables a worker', async () => {
    h = await startHarness({ maxSize: 100, pruneInterval: 0, cleanInterval: 0, prefetchInterval: 0, prefetchOnQueue: false });
    const harness = h;
    await harness.cache.cacheImage('big', Readable.from([imageBytes('big', 1000)]));
    await harness.cache.queueImage('q');
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(await harness.cache.isCached('big')).toBe(true);
    expect(await harness.cache.getQueuedImages()).toEqual(['q']);
    const m = await scrape(harness.url);
    expect(m.get(`${METRIC_NAMES.workerRuns}{worker="prune",result="ok"}`)).toBeUndefined();
  });
});
