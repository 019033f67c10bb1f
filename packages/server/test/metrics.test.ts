import { Readable } from 'node:stream';
import { SqliteDriver } from '@cache/driver-sqlite';
import { createOrigin } from '@cache/origin';
import { InvalidArgumentError } from '@cache/core';
import { AggregatorRegistry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { METRIC_NAMES, createCacheServer, type StatusReport } from '../src/index.js';
import { imageBytes, parseMetrics, rawRequest, scrape, startHarness, waitFor, type Harness } from './helpers.js';

describe('/metrics', () => {
  let h: Harness;
  beforeEach(async () => {
    h = await startHarness({ maxSize: 10_000 });
  });
  afterEach(() => h.close());

  it('exact counts after known traffic', async () => {
    const a = imageBytes('a', 4000);
    h.origin.images.set('a', { kind: 'ok', data: a });
    h.origin.images.set('down', { kind: 'status', status: 500 });

    // 1 miss (4000 bytes from origin), then 2 hits (8000 bytes from cache), 1 range hit (10 bytes).
    expect((await fetch(`${h.url}/images/a`)).status).toBe(200);
    await waitFor(() => h.cache.isCached('a'));
    for (let i = 0; i < 2; i++) await (await fetch(`${h.url}/images/a`)).arrayBuffer();
    expect((await rawRequest(`${h.url}/images/a`, { headers: { range: 'bytes=0-9' } })).status).toBe(206);
    // Errors: origin 404 (miss), origin 500 -> 502 (miss), invalid id (400), unknown route (404).
    expect((await fetch(`${h.url}/images/nope`)).status).toBe(404);
    expect((await fetch(`${h.url}/images/down`)).status).toBe(502);
    expect((await fetch(`${h.url}/images/.bad`)).status).toBe(400);
    expect((await fetch(`${h.url}/no/such/route`)).status).toBe(404);
    // A queued id and more data to prune.
    await h.cache.queueImage('queued-1');
    await h.cache.cacheImage('b', Readable.from([imageBytes('b', 7000)]));
    const prune = await fetch(`${h.url}/v2/cache/prune`, { method: 'POST' });
    expect(await prune.json()).toEqual({ total_files_pruned: 1, total_bytes_pruned: 4000 });

    const m = await scrape(h.url);
    expect(m.get(METRIC_NAMES.hits)).toBe(3);
    expect(m.get(METRIC_NAMES.misses)).toBe(3);
    expect(m.get(`${METRIC_NAMES.servedBytes}{source="origin"}`)).toBe(4000);
    expect(m.get(`${METRIC_NAMES.servedBytes}{source="cache"}`)).toBe(8010);
    expect(m.get(METRIC_NAMES.originFetches)).toBe(3);
    expect(m.get(METRIC_NAMES.prunedFiles)).toBe(1);
    expect(m.get(METRIC_NAMES.prunedBytes)).toBe(4000);
    expect(m.get(METRIC_NAMES.size)).toBe(7000);
    expect(m.get(METRIC_NAMES.maxSize)).toBe(10_000);
    expect(m.get(METRIC_NAMES.queueLength)).toBe(1);
    expect(m.get(`${METRIC_NAMES.errors}{code="CACHE_ORIGIN_ERROR"}`)).toBe(2);
    expect(m.get(`${METRIC_NAMES.errors}{code="CACHE_INVALID_IMAGE_ID"}`)).toBe(1);
    expect(m.get(`${METRIC_NAMES.errors}{code="HTTP_4XX"}`)).toBe(1);
    expect(m.get(`${METRIC_NAMES.requestDuration}_count{method="GET",route="/images/:id",status_code="200"}`)).toBe(3);
    expect(m.get(`${METRIC_NAMES.requestDuration}_count{method="GET",route="/images/:id",status_code="206"}`)).toBe(1);
  });

  it('a mid-stream origin failure is counted once under its code', async () => {
    // Cut once the client has the headers: a cut before the server sent a byte would be a 502 instead.
    h.origin.images.set('cut', { kind: 'cut', data: imageBytes('cut', 500_000), after: 100_000, manual: true });
    const response = await fetch(`${h.url}/images/cut`);
    expect(response.status).toBe(200);
    expect(h.origin.cut('cut')).toBe(1);
    await expect(response.arrayBuffer()).rejects.toThrow();
    await waitFor(async () => (await scrape(h.url)).get(`${METRIC_NAMES.errors}{code="CACHE_ORIGIN_ERROR"}`) === 1);
    expect((await scrape(h.url)).get(METRIC_NAMES.misses)).toBe(1);
  });

  it('a scrape lists the cache directory once: the size and the space gauges share one listing', async () => {
    await h.cache.cacheImage('x', Readable.from([imageBytes('x', 3000)]));
    await h.cache.cacheImage('y', Readable.from([imageBytes('y', 2000)]));
    // Counted on the driver's class (the cache holds it behind its guard), for this scrape only.
    const prototype = SqliteDriver.prototype as unknown as Record<'getCachedImages' | 'getCacheSize', (...args: unknown[]) => Promise<unknown>>;
    const calls = { getCachedImages: 0, getCacheSize: 0 };
    const originals = { getCachedImages: prototype.getCachedImages, getCacheSize: prototype.getCacheSize };
    for (const name of ['getCachedImages', 'getCacheSize'] as const) {
      prototype[name] = function (this: unknown, ...args: unknown[]) {
        calls[name]++;
        return originals[name].apply(this, args);
      };
    }
    let m: Map<string, number>;
    try {
      m = await scrape(h.url);
    } finally {
      Object.assign(prototype, originals);
    }
    expect(m.get(METRIC_NAMES.size)).toBe(5000);
    expect(m.get(`${METRIC_NAMES.usedBytes}{part="active"}`)).toBe(5000);
    expect(calls).toEqual({ getCachedImages: 1, getCacheSize: 0 });
  });

  it('each server has its own registry', async () => {
    const other = await startHarness();
    try {
      await h.cache.cacheImage('x', Readable.from([Buffer.from('x')]));
      await (await fetch(`${h.url}/images/x`)).arrayBuffer();
      expect((await scrape(h.url)).get(METRIC_NAMES.hits)).toBe(1);
      expect((await scrape(other.url)).get(METRIC_NAMES.hits)).toBe(0);
      expect(other.server.registry).not.toBe(h.server.registry);
    } finally {
      await other.close();
    }
  });
});

describe('/healthz', () => {
  it('200 JSON while the cache answers, 503 when it does not', async () => {
    const h = await startHarness();
    try {
      const ok = await fetch(`${h.url}/healthz`);
      expect(ok.status).toBe(200);
      expect(await ok.json()).toEqual({ status: 'ok', driver: 'sqlite', size: 0, max_size: 1024 ** 3 });
      await h.cache.close(); // the driver refuses calls from now on
      const down = await fetch(`${h.url}/healthz`);
      expect(down.status).toBe(503);
      expect(await down.json()).toMatchObject({ status: 'unavailable', code: 'CACHE_DRIVER_NOT_OPEN' });
    } finally {
      await h.close();
    }
  });
});

describe('/metrics of a server of several processes (workerMetrics)', () => {
  it('two servers on one directory, aggregated as the primary of serve --workers does: counters and histograms summed, directory gauges once, per-process gauges per pid', async () => {
    const h = await startHarness({ maxSize: 100_000 });
    // A second process on the same directory (its own registry), as a second worker would be.
    const second = await createCacheServer({ cache: h.cache, origin: createOrigin(h.origin.template), pruneInterval: 0, cleanInterval: 0, prefetchInterval: 0 });
    const secondUrl = await second.listen();
    try {
      h.origin.images.set('a', { kind: 'ok', data: imageBytes('a', 3000) });
      expect((await fetch(`${h.url}/images/a`)).status).toBe(200);
      await waitFor(() => h.cache.isCached('a'));
      for (const url of [h.url, secondUrl, secondUrl]) await (await fetch(`${url}/images/a`)).arrayBuffer();
      await h.cache.queueImage('queued-1');
      // Each process's own registry: 1 miss + 1 hit here, 2 hits there.
      const own = [await scrape(h.url), await scrape(secondUrl)];
      expect(own.map((m) => m.get(METRIC_NAMES.hits))).toEqual([1, 2]);

      const registries = [h.server.registry, second.registry];
      const text = await AggregatorRegistry.aggregate(await Promise.all(registries.map((registry) => registry.getMetricsAsJSON()))).metrics();
      const all = parseMetrics(text);
      expect(all.get(METRIC_NAMES.hits)).toBe(3);
      expect(all.get(METRIC_NAMES.misses)).toBe(1);
      expect(all.get(`${METRIC_NAMES.servedBytes}{source="cache"}`)).toBe(9000);
      expect(all.get(`${METRIC_NAMES.servedBytes}{source="origin"}`)).toBe(3000);
      expect(all.get(`${METRIC_NAMES.requestDuration}_count{method="GET",route="/images/:id",status_code="200"}`)).toBe(4);
      // The directory's values, not twice them.
      expect(all.get(METRIC_NAMES.size)).toBe(3000);
      expect(all.get(`${METRIC_NAMES.usedBytes}{part="active"}`)).toBe(3000);
      expect(all.get(METRIC_NAMES.maxSize)).toBe(100_000);
      expect(all.get(METRIC_NAMES.queueLength)).toBe(1);
      expect(all.get(`${METRIC_NAMES.spaceState}{state="ok"}`)).toBe(1);
      expect(all.get(METRIC_NAMES.fsBytes)).toBe(own[0]?.get(METRIC_NAMES.fsBytes));
      // Per process: summed, or one series per pid (here both servers are this process).
      for (const role of ['pending', 'owner', 'follower', 'cached']) expect(all.get(`${METRIC_NAMES.fillsInProgress}{role="${role}"}`)).toBe(0);
      expect(all.get(`${METRIC_NAMES.process}{pid="${process.pid}"}`)).toBe(2);
      expect(all.get(`${METRIC_NAMES.usedBytes}{part="reserved",pid="${process.pid}"}`)).toBe(0);

      // Every gauge says how it aggregates (a new one must decide too).
      const gauges = (await h.server.registry.getMetricsAsJSON()).filter((metric) => String(metric.type) === 'gauge');
      expect(gauges.length).toBeGreaterThan(10);
      for (const gauge of gauges) expect([gauge.name, ['sum', 'first'].includes(gauge.aggregator)]).toEqual([gauge.name, true]);
    } finally {
      await second.close();
      await h.close();
    }
  });

  it('outside a cluster worker, workerMetrics changes nothing: /metrics is this server\'s registry, with the answering pid', async () => {
    const h = await startHarness({ workerMetrics: true });
    try {
      await h.cache.cacheImage('x', Readable.from([Buffer.from('xyz')]));
      await (await fetch(`${h.url}/images/x`)).arrayBuffer();
      const response = await fetch(`${h.url}/metrics`);
      expect(response.status).toBe(200);
      expect(response.headers.get('x-image-cache-pid')).toBe(String(process.pid));
      const m = parseMetrics(await response.text());
      expect(m.get(METRIC_NAMES.hits)).toBe(1);
      expect(m.get(`${METRIC_NAMES.process}{pid="${process.pid}"}`)).toBe(1);
      const status = (await (await fetch(`${h.url}/v2/status`)).json()) as StatusReport;
      expect(status.requests).toMatchObject({ scope: 'server', processes: 1, hits: 1, misses: 0 });
    } finally {
      await h.close();
    }
  });

  it('a bad workerMetrics option is an InvalidArgumentError naming it', async () => {
    const h = await startHarness();
    try {
      for (const workerMetrics of [{ timeout: 0 }, { timeout: 1.5 }, 'yes', null] as unknown[]) {
        await expect(createCacheServer({ cache: h.cache, workerMetrics: workerMetrics as boolean })).rejects.toThrow(InvalidArgumentError);
        await expect(createCacheServer({ cache: h.cache, workerMetrics: workerMetrics as boolean })).rejects.toThrow(/options\.workerMetrics/);
      }
    } finally {
      await h.close();
    }
  });
});
