// A GET miss is served from the id's fill (ADR 0003): every client is a reader at its own pace, the origin is
// read once, a range is a 206 as soon as the fill passes its start, a client leaving never rolls the fill back.
// Real HTTP on 127.0.0.1, a real origin (TestOrigin), a sqlite cache in a temp directory.
import { createHash } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { request, type IncomingHttpHeaders } from 'node:http';
import { ImageCache } from '@cache/core';
import { SqliteDriver } from '@cache/driver-sqlite';
import { createOrigin } from '@cache/origin';
import { afterEach, describe, expect, it } from 'vitest';
import { METRIC_NAMES, createCacheServer, type CacheServer } from '../src/index.js';
import { imageBytes, rawRequest, scrape, startHarness, waitFor, type Harness } from './helpers.js';

const MiB = 1024 * 1024;
const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');
const b64sha256 = (data: Buffer) => createHash('sha256').update(data).digest('base64');

/** A GET whose body the test controls: paused or flowing, read so far, destroyable. */
interface Download {
  status: number;
  headers: IncomingHttpHeaders;
  received(): number;
  pause(): void;
  resume(): void;
  /** The client goes away. */
  destroy(): void;
  /** Settles when the response ended or broke: whether it was complete, and the bytes received. */
  done: Promise<{ complete: boolean; body: Buffer }>;
}

/**
 * Starts a GET and resolves once its headers and at least `atLeast` body bytes have arrived. With `paused`,
 * the body is not read at all (a client that stopped reading: TCP pushes back) until `resume()`.
 */
function download(url: string, options: { atLeast?: number; paused?: boolean; headers?: Record<string, string> } = {}): Promise<Download> {
  const atLeast = options.atLeast ?? 0;
  return new Promise((resolve, reject) => {
    const req = request(url, { headers: options.headers ?? {} }, (res) => {
      if (options.paused === true) res.pause();
      const chunks: Buffer[] = [];
      let received = 0;
      let started = false;
      const done = new Promise<{ complete: boolean; body: Buffer }>((settle) => {
        const end = () => settle({ complete: res.complete, body: Buffer.concat(chunks) });
        res.on('end', end);
        res.on('error', end);
        res.on('close', end);
      });
      const handle: Download = {
        status: res.statusCode ?? 0,
        headers: res.headers,
        received: () => received,
        pause: () => res.pause(),
        resume: () => res.resume(),
        destroy: () => req.destroy(),
        done,
      };
      const check = () => {
        if (started || received < atLeast) return;
        started = true;
        resolve(handle);
      };
      res.on('data', (chunk: Buffer) => {
        chunks.push(chunk);
        received += chunk.length;
        check();
      });
      check();
    });
    req.on('error', reject);
    req.end();
  });
}

/** A promise the test resolves: the origin holds an image's tail until `release()`. */
function gate(): { held: Promise<void>; release: () => void } {
  let release!: () => void;
  const held = new Promise<void>((resolve) => (release = resolve));
  return { held, release };
}

describe('a GET miss is read from the fill', () => {
  let h: Harness | undefined;
  const extra: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const close of extra.splice(0).reverse()) await close();
    await h?.close();
    h = undefined;
  });

  it('a slow (paused) client and a fast one: the fast one gets every byte and the entry commits while the slow one has read almost nothing', async () => {
    h = await startHarness();
    const data = imageBytes('slow-fast', 8 * MiB);
    h.origin.images.set('slow-fast', { kind: 'ok', data });
    const slow = await download(`${h.url}/images/slow-fast`, { paused: true });
    expect(slow.headers['x-cache']).toBe('MISS');
    const fast = await rawRequest(`${h.url}/images/slow-fast`);
    expect(fast.headers['x-cache']).toBe('MISS');
    expect(fast.complete).toBe(true);
    expect(fast.body.equals(data)).toBe(true);
    // The fast client's last byte waited for the commit: the slow one never held the fill back.
    expect(await h.cache.isCached('slow-fast')).toBe(true);
    expect(slow.received()).toBeLessThan(data.length / 4);
    expect(h.origin.count('slow-fast')).toBe(1);
    slow.resume();
    const rest = await slow.done;
    expect(rest.complete).toBe(true);
    expect(rest.body.equals(data)).toBe(true);
  });

  it('the first client leaving mid-body does not roll the fill back: the entry commits, one origin request, the next GET is a hit', async () => {
    h = await startHarness();
    const data = imageBytes('leaver', 1_000_000);
    const tail = gate();
    h.origin.images.set('leaver', { kind: 'ok', data, until: tail.held, first: 200_000 });
    const first = await download(`${h.url}/images/leaver`, { atLeast: 100_000 });
    first.destroy();
    expect((await first.done).complete).toBe(false);
    tail.release();
    await waitFor(() => h?.cache.isCached('leaver') ?? false);
    expect(h.origin.count('leaver')).toBe(1);
    const hit = await rawRequest(`${h.url}/images/leaver`);
    expect(hit.headers['x-cache']).toBe('HIT');
    expect(hit.body.equals(data)).toBe(true);
    expect(h.origin.count('leaver')).toBe(1);
    expect(await readdir(`${h.cacheDir}/invalid`)).toEqual([]);
  });

  it('a Range on a miss: 206 with Content-Range as soon as the fill has its bytes; a tail range waits for them; 416 past the size; one origin request, then cached', async () => {
    h = await startHarness();
    const data = imageBytes('ranged-miss', 1_000_000);
    const tail = gate();
    h.origin.images.set('ranged-miss', { kind: 'ok', data, until: tail.held, first: 300_000 });
    const url = `${h.url}/images/ranged-miss`;

    const early = await rawRequest(url, { headers: { range: 'bytes=1000-1999' } });
    expect(early.status).toBe(206);
    expect(early.headers['x-cache']).toBe('MISS');
    expect(early.headers['content-range']).toBe('bytes 1000-1999/1000000');
    expect(early.headers['content-length']).toBe('1000');
    expect(early.complete).toBe(true);
    expect(early.body.equals(data.subarray(1000, 2000))).toBe(true);
    expect(await h.cache.isCached('ranged-miss')).toBe(false); // answered while the origin still holds the tail

    const unsatisfiable = await rawRequest(url, { headers: { range: 'bytes=1000000-' } });
    expect(unsatisfiable.status).toBe(416);
    expect(unsatisfiable.headers['content-range']).toBe('bytes */1000000');
    expect(unsatisfiable.headers['x-cache']).toBe('MISS');

    let tailHeaders = false;
    const later = rawRequest(url, { headers: { range: 'bytes=900000-' }, onResponse: () => (tailHeaders = true) });
    // Its status line goes out with its first byte, which the origin has not sent yet.
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(tailHeaders).toBe(false);
    tail.release();
    const end = await later;
    expect(end.status).toBe(206);
    expect(end.headers['content-range']).toBe('bytes 900000-999999/1000000');
    expect(end.body.equals(data.subarray(900_000))).toBe(true);
    // A range that reaches the last byte got it only after the verdict: the entry is committed.
    expect(await h.cache.isCached('ranged-miss')).toBe(true);
    expect(h.origin.count('ranged-miss')).toBe(1);
    const hit = await rawRequest(url, { headers: { range: 'bytes=0-9' } });
    expect(hit.headers['x-cache']).toBe('HIT');
    expect(hit.body.equals(data.subarray(0, 10))).toBe(true);
  });

  it('a Range on a miss of a chunked origin (size unknown) is ignored: 200 with the whole image', async () => {
    h = await startHarness();
    const data = imageBytes('chunked-range', 100_000);
    h.origin.images.set('chunked-range', { kind: 'ok', data, chunked: true });
    const response = await rawRequest(`${h.url}/images/chunked-range`, { headers: { range: 'bytes=0-9' } });
    expect(response.status).toBe(200);
    expect(response.headers['content-range']).toBeUndefined();
    expect(response.body.equals(data)).toBe(true);
  });

  it('an announced digest: the strong ETag on the miss, If-Range with it gives a 206, with another validator a 200', async () => {
    h = await startHarness();
    const data = imageBytes('digest-range', 200_000);
    const etag = `"sha256:${sha256(data)}"`;
    h.origin.images.set('digest-range', { kind: 'ok', data, headers: { 'repr-digest': `sha-256=:${b64sha256(data)}:` } });
    const url = `${h.url}/images/digest-range`;
    const ranged = await rawRequest(url, { headers: { range: 'bytes=10-19', 'if-range': etag } });
    expect(ranged.status).toBe(206);
    expect(ranged.headers.etag).toBe(etag);
    expect(ranged.body.equals(data.subarray(10, 20))).toBe(true);
    await waitFor(() => h?.cache.isCached('digest-range') ?? false);
    await h.cache.deleteCachedImage('digest-range');
    const whole = await rawRequest(url, { headers: { range: 'bytes=10-19', 'if-range': '"sha256:other"' } });
    expect(whole.status).toBe(200);
    expect(whole.headers['x-cache']).toBe('MISS');
    expect(whole.headers.etag).toBe(etag);
    expect(whole.body.equals(data)).toBe(true);
  });

  it('a body failing the announced digest: every client is cut before its last byte (a range too), nothing is committed', async () => {
    h = await startHarness();
    const data = imageBytes('bad-digest', 500_000);
    const tail = gate();
    h.origin.images.set('bad-digest', {
      kind: 'ok',
      data,
      until: tail.held,
      first: 100_000,
      headers: { 'repr-digest': `sha-256=:${b64sha256(Buffer.from('other bytes'))}:` },
    });
    const url = `${h.url}/images/bad-digest`;
    const whole = await download(url, { atLeast: 50_000 });
    const range = await download(url, { atLeast: 99, headers: { range: 'bytes=0-99' } });
    expect(range.status).toBe(206);
    tail.release();
    const [wholeEnd, rangeEnd] = await Promise.all([whole.done, range.done]);
    expect(wholeEnd.complete).toBe(false);
    expect(wholeEnd.body.length).toBeLessThan(data.length);
    expect(wholeEnd.body.equals(data.subarray(0, wholeEnd.body.length))).toBe(true);
    // The range's bytes were all in the file long before; its last byte still waited for the verdict.
    expect(rangeEnd.complete).toBe(false);
    expect(rangeEnd.body.equals(data.subarray(0, 99))).toBe(true);
    await waitFor(async () => (await readdir(`${h?.cacheDir}/incomplete`)).length === 0);
    expect(await h.cache.isCached('bad-digest')).toBe(false);
    expect(await readdir(`${h.cacheDir}/invalid`)).toEqual(['bad-digest']);
  });

  it('a close-delimited body without a digest: served to every client of the fill (one origin request), not cached; the next GET fetches again', async () => {
    h = await startHarness();
    const data = imageBytes('unverified', 300_000);
    const tail = gate();
    h.origin.images.set('unverified', { kind: 'ok', data, closeDelimited: true, until: tail.held, first: 100_000 });
    const url = `${h.url}/images/unverified`;
    const clients = [await download(url, { atLeast: 50_000 }), await download(url, { atLeast: 50_000 })];
    for (const client of clients) {
      expect(client.headers['content-length']).toBeUndefined();
      expect(client.headers.etag).toBeUndefined();
    }
    tail.release();
    for (const client of clients) {
      const end = await client.done;
      expect(end.complete).toBe(true);
      expect(end.body.equals(data)).toBe(true);
    }
    expect(h.origin.count('unverified')).toBe(1);
    await waitFor(async () => (await readdir(`${h?.cacheDir}/incomplete`)).length === 0);
    expect(await h.cache.isCached('unverified')).toBe(false);
    h.origin.images.set('unverified', { kind: 'ok', data, closeDelimited: true });
    const again = await rawRequest(url);
    expect(again.headers['x-cache']).toBe('MISS');
    expect(again.body.equals(data)).toBe(true);
    expect(h.origin.count('unverified')).toBe(2);
  });

  it('20 concurrent clients of one miss: identical bytes, one origin request, and each had bytes before the fill committed', async () => {
    h = await startHarness();
    const data = imageBytes('twenty', 2 * MiB);
    const tail = gate();
    h.origin.images.set('twenty', { kind: 'ok', data, until: tail.held, first: 500_000 });
    const url = `${h.url}/images/twenty`;
    // Each resolves once it has 100000 bytes: the origin holds the tail, so none of them can be from a committed entry.
    const clients = await Promise.all(Array.from({ length: 20 }, () => download(url, { atLeast: 100_000 })));
    expect(await h.cache.isCached('twenty')).toBe(false);
    const metrics = await scrape(h.url);
    expect(metrics.get(`${METRIC_NAMES.fillsInProgress}{role="owner"}`)).toBe(1);
    expect(metrics.get(`${METRIC_NAMES.fillsInProgress}{role="follower"}`)).toBe(0);
    for (const client of clients) expect(client.headers['x-cache']).toBe('MISS');
    tail.release();
    for (const client of clients) {
      const end = await client.done;
      expect(end.complete).toBe(true);
      expect(sha256(end.body)).toBe(sha256(data));
    }
    expect(h.origin.count('twenty')).toBe(1);
    expect(await h.cache.isCached('twenty')).toBe(true);
    const after = await scrape(h.url);
    expect(after.get(`${METRIC_NAMES.fillsInProgress}{role="owner"}`)).toBe(0);
    expect(after.get(METRIC_NAMES.misses)).toBe(20);
    expect(after.get(METRIC_NAMES.originFetches)).toBe(1);
    expect(after.get(`${METRIC_NAMES.servedBytes}{source="origin"}`)).toBe(20 * data.length);
  });

  it('fills_in_progress counts a fill by role: owner where it is fetched, follower where another cache on the directory reads it', async () => {
    h = await startHarness();
    const harness = h;
    // A second cache on the same directory, as a second worker would be: its fill follows the first's.
    const otherCache = await ImageCache.open({ driver: new SqliteDriver({ cacheDir: harness.cacheDir }) });
    const other = await createCacheServer({ cache: otherCache, origin: createOrigin(harness.origin.template), pruneInterval: 0, cleanInterval: 0, prefetchInterval: 0 });
    try {
      const otherUrl = await other.listen();
      const data = imageBytes('shared', 2 * MiB);
      const tail = gate();
      harness.origin.images.set('shared', { kind: 'ok', data, until: tail.held, first: 500_000 });
      const fetching = await download(`${harness.url}/images/shared`, { atLeast: 100_000 });
      const following = await download(`${otherUrl}/images/shared`, { atLeast: 100_000 });
      const role = (metrics: Map<string, number>, name: string) => metrics.get(`${METRIC_NAMES.fillsInProgress}{role="${name}"}`);
      const here = await scrape(harness.url);
      const there = await scrape(otherUrl);
      expect([role(here, 'owner'), role(here, 'follower')]).toEqual([1, 0]);
      expect([role(there, 'owner'), role(there, 'follower')]).toEqual([0, 1]);
      tail.release();
      for (const client of [fetching, following]) {
        const end = await client.done;
        expect(sha256(end.body)).toBe(sha256(data));
      }
      expect(harness.origin.count('shared')).toBe(1);
      const idle = async (url: string) => {
        const metrics = await scrape(url);
        return ['pending', 'owner', 'follower', 'cached'].every((name) => role(metrics, name) === 0);
      };
      await waitFor(async () => (await idle(harness.url)) && (await idle(otherUrl)), 30_000, 'both fills ended');
    } finally {
      await other.close();
      await otherCache.close();
    }
  });

  it('HEAD during a running fill answers from its announcement, without another origin request', async () => {
    h = await startHarness();
    const data = imageBytes('head-fill', 300_000);
    const tail = gate();
    h.origin.images.set('head-fill', { kind: 'ok', data, until: tail.held, first: 1000, headers: { 'repr-digest': `sha-256=:${b64sha256(data)}:` } });
    const client = await download(`${h.url}/images/head-fill`, { atLeast: 500 });
    const head = await rawRequest(`${h.url}/images/head-fill`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers['x-cache']).toBe('MISS');
    expect(head.headers['content-length']).toBe(String(data.length));
    expect(head.headers.etag).toBe(`"sha256:${sha256(data)}"`);
    expect(h.origin.count('head-fill')).toBe(1);
    tail.release();
    expect((await client.done).complete).toBe(true);
  });

  it('fillAbandonAfter: a fill whose clients all left is stopped and rolled back', async () => {
    h = await startHarness({ fillAbandonAfter: 0 });
    const data = imageBytes('abandoned', 1_000_000);
    h.origin.images.set('abandoned', { kind: 'stall', data, after: 200_000 });
    const client = await download(`${h.url}/images/abandoned`, { atLeast: 100_000 });
    client.destroy();
    await waitFor(async () => (await readdir(`${h?.cacheDir}/invalid`)).includes('abandoned'));
    expect(await readdir(`${h.cacheDir}/incomplete`)).toEqual([]);
    expect(await h.cache.isCached('abandoned')).toBe(false);
  });

  it('another process (another server on the same cache directory) owns the fill: its clients follow it, with the size and ETag from the owner', async () => {
    h = await startHarness();
    const data = imageBytes('followed', 1_000_000);
    const tail = gate();
    const etag = `"sha256:${sha256(data)}"`;
    h.origin.images.set('followed', { kind: 'ok', data, until: tail.held, first: 300_000, headers: { 'repr-digest': `sha-256=:${b64sha256(data)}:` } });
    const other = await ImageCache.open({ driver: new SqliteDriver({ cacheDir: h.cacheDir }) });
    const second: CacheServer = await createCacheServer({
      cache: other,
      origin: createOrigin(h.origin.template),
      pruneInterval: 0,
      cleanInterval: 0,
      prefetchInterval: 0,
    });
    extra.push(async () => {
      await second.close();
      await other.close();
    });
    const secondUrl = await second.listen();

    const owner = await download(`${h.url}/images/followed`, { atLeast: 100_000 });
    const follower = await download(`${secondUrl}/images/followed`, { atLeast: 100_000 });
    expect(follower.headers['x-cache']).toBe('MISS');
    expect(follower.headers['content-length']).toBe(String(data.length));
    expect(follower.headers.etag).toBe(etag);
    expect(h.origin.count('followed')).toBe(1);
    tail.release();
    for (const client of [owner, follower]) {
      const end = await client.done;
      expect(end.complete).toBe(true);
      expect(end.body.equals(data)).toBe(true);
    }
    expect(h.origin.count('followed')).toBe(1);
    const hit = await rawRequest(`${secondUrl}/images/followed`);
    expect(hit.headers['x-cache']).toBe('HIT');
    expect(hit.headers.etag).toBe(etag);
  });
});
