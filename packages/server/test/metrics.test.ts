import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { METRIC_NAMES } from '../src/index.js';
import { imageBytes, rawRequest, scrape, startHarness, waitFor, type Harness } from './helpers.js';

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
