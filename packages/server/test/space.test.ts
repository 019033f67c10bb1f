/**
 * The space policy behind the server (issue 14, ADR 0006): a miss that the
 * write budget cannot hold is served uncached (every byte, `x-cache-bypass`),
 * counted in /metrics and logged; a miss that fits evicts the least recently
 * used entry first; /metrics shows the budget's parts, free space and the
 * free-space thresholds.
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { METRIC_NAMES, type AccessLogEntry } from '../src/index.js';
import { imageBytes, rawRequest, scrape, startHarness, waitFor, type Harness } from './helpers.js';

const MiB = 1024 * 1024;

describe('space policy in the server', () => {
  let h: Harness | undefined;
  afterEach(async () => {
    await h?.close();
    h = undefined;
  });

  it('a miss larger than the whole budget is streamed uncached: every byte, x-cache-bypass, counted; nothing on disk', async () => {
    h = await startHarness({ maxSize: 2 * MiB, writeBudget: true });
    const big = imageBytes('big', 3 * MiB);
    h.origin.images.set('big', { kind: 'ok', data: big });
    for (let i = 0; i < 2; i++) {
      const response = await rawRequest(`${h.url}/images/big`);
      expect(response.status).toBe(200);
      expect(response.headers['x-cache']).toBe('MISS');
      expect(response.headers['x-cache-bypass']).toBe('too-large');
      expect(response.headers['content-length']).toBe(String(big.length));
      expect(response.complete).toBe(true);
      expect(response.body.equals(big), 'every byte, from the origin').toBe(true);
    }
    // One origin request per client: the first got the response the fill opened.
    expect(h.origin.count('big')).toBe(2);
    expect(await h.cache.isCached('big')).toBe(false);
    expect(await readdir(join(h.cacheDir, 'incomplete'))).toEqual([]);
    expect(await readdir(join(h.cacheDir, 'invalid'))).toEqual([]);
    const m = await scrape(h.url);
    expect(m.get(`${METRIC_NAMES.bypassed}{reason="too-large"}`)).toBe(2);
    expect(m.get(METRIC_NAMES.misses)).toBe(2);
    expect(m.get(`${METRIC_NAMES.servedBytes}{source="origin"}`)).toBe(2 * big.length);
  });

  it('a chunked miss (no length) that outgrows the budget: both clients get every byte, 200; not cached; counted and in the access log', async () => {
    const lines: (AccessLogEntry & { msg: string })[] = [];
    h = await startHarness({ maxSize: 2 * MiB, writeBudget: true, accessLog: { write: (line: string) => void lines.push(JSON.parse(line)) } });
    const big = imageBytes('chunked-big', 5 * MiB + 77);
    h.origin.images.set('chunked-big', { kind: 'ok', data: big, chunked: true });
    const responses = await Promise.all([rawRequest(`${h.url}/images/chunked-big`), rawRequest(`${h.url}/images/chunked-big`)]);
    for (const response of responses) {
      expect(response.status).toBe(200);
      expect(response.headers['x-cache']).toBe('MISS');
      expect(response.headers['transfer-encoding']).toBe('chunked');
      // The status line went out before the fill outgrew the budget: no x-cache-bypass can say so.
      expect(response.headers['x-cache-bypass']).toBeUndefined();
      expect(response.error).toBeUndefined();
      expect(response.complete).toBe(true);
      expect(response.body.equals(big), 'every byte, passed through').toBe(true);
    }
    expect(h.origin.count('chunked-big'), 'one fill for both clients').toBe(1);
    expect(await h.cache.isCached('chunked-big')).toBe(false);
    await waitFor(async () => (await readdir(join(h?.cacheDir as string, 'invalid'))).length === 0, 30_000, 'the partial file deleted');
    expect(await readdir(join(h.cacheDir, 'incomplete'))).toEqual([]);
    const m = await scrape(h.url);
    expect(m.get(`${METRIC_NAMES.bypassed}{reason="too-large"}`)).toBe(1);
    await waitFor(() => lines.filter((line) => line.id === 'chunked-big').length === 2, 30_000, 'two access log lines');
    for (const line of lines.filter((l) => l.id === 'chunked-big')) {
      expect(line).toMatchObject({ status: 200, bytes: big.length, complete: true, bypass: 'too-large' });
    }
    // A later request goes to the origin again, and gets every byte too.
    const again = await rawRequest(`${h.url}/images/chunked-big`);
    expect(again.body.equals(big)).toBe(true);
    expect(h.origin.count('chunked-big')).toBe(2);
  });

  it('a miss that fits evicts the least recently used entry before it is written; /metrics shows the budget and the disk', async () => {
    h = await startHarness({
      maxSize: 2 * MiB,
      writeBudget: true,
      freeSpace: { run: { bytes: 3 * MiB }, cull: { bytes: 2 * MiB }, stop: { bytes: MiB } },
    });
    for (const id of ['a', 'b', 'c']) h.origin.images.set(id, { kind: 'ok', data: imageBytes(id, MiB) });
    for (const id of ['a', 'b']) {
      expect((await rawRequest(`${h.url}/images/${id}`)).status).toBe(200);
      await waitFor(() => h?.cache.isCached(id) ?? false);
    }
    const c = await rawRequest(`${h.url}/images/c`);
    expect(c.body.equals(imageBytes('c', MiB))).toBe(true);
    expect(c.headers['x-cache-bypass']).toBeUndefined();
    await waitFor(async () => (await h?.cache.isCached('c')) ?? false);
    expect(await h.cache.isCached('a'), 'the least recently used entry went').toBe(false);
    expect(await h.cache.isCached('b')).toBe(true);
    const m = await scrape(h.url);
    expect(m.get(`${METRIC_NAMES.evictions}{cause="budget"}`)).toBe(1);
    expect(m.get(`${METRIC_NAMES.evictedBytes}{cause="budget"}`)).toBe(MiB);
    expect(m.get(`${METRIC_NAMES.usedBytes}{part="active"}`)).toBe(2 * MiB);
    expect(m.get(`${METRIC_NAMES.usedBytes}{part="incomplete"}`)).toBe(0);
    expect(m.get(METRIC_NAMES.freeBytes)).toBeGreaterThan(0);
    expect(m.get(METRIC_NAMES.fsBytes)).toBeGreaterThan(m.get(METRIC_NAMES.freeBytes) as number);
    expect(m.get(`${METRIC_NAMES.freeThreshold}{threshold="run"}`)).toBe(3 * MiB);
    expect(m.get(`${METRIC_NAMES.freeThreshold}{threshold="stop"}`)).toBe(MiB);
    expect(m.get(`${METRIC_NAMES.spaceState}{state="ok"}`)).toBe(1);
    expect(m.get(`${METRIC_NAMES.spaceState}{state="stopped"}`)).toBe(0);
  });
});
