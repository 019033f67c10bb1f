// Issue 13: safe by default (no open management API off loopback, a token of /metrics' own, the bound
// address), and error bodies that carry a code and a short message, never an internal address or path.
import { Writable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { createCacheServer, isLoopbackHost, MAX_ECHO, MAX_MESSAGE, type ErrorBody } from '../src/index.js';
import { imageBytes, openCache, rawRequest, startHarness, type Harness } from './helpers.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

/** A pino destination that keeps the log lines. */
class LogLines extends Writable {
  text = '';
  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: () => void): void {
    this.text += chunk.toString();
    callback();
  }
}

async function errorOf(response: Response): Promise<{ status: number; body: ErrorBody; raw: string }> {
  const raw = await response.text();
  return { status: response.status, body: JSON.parse(raw) as ErrorBody, raw };
}

describe('error bodies: a code and a short message, nothing internal', () => {
  it('origin 404: the client gets the code and the id, not the origin URL; the log has the URL', async () => {
    const log = new LogLines();
    h = await startHarness({ logger: { level: 'info', stream: log } });
    const { status, body, raw } = await errorOf(await fetch(`${h.url}/images/missing-image`));
    expect(status).toBe(404);
    expect(body).toEqual({ statusCode: 404, error: 'Not Found', code: 'CACHE_ORIGIN_ERROR', message: 'the origin does not have image "missing-image"' });
    expect(raw).not.toContain(h.origin.url.replace('http://', ''));
    expect(raw).not.toContain(h.cacheDir);
    // The whole error (with the origin URL) is in the server's log.
    expect(log.text).toContain(`${h.origin.url}/images/missing-image answered 404`);
  });

  it('origin 500 and an unreachable origin: 502, no URL in the body', async () => {
    h = await startHarness();
    h.origin.images.set('broken', { kind: 'status', status: 500 });
    const broken = await errorOf(await fetch(`${h.url}/images/broken`));
    expect([broken.status, broken.body.code, broken.body.message]).toEqual([502, 'CACHE_ORIGIN_ERROR', 'the origin answered 500 for image "broken"']);
    expect(broken.raw).not.toMatch(/127\.0\.0\.1|http:/);

    const { cache, cleanup } = await openCache();
    const { createOrigin } = await import('@cache/origin');
    const server = await createCacheServer({ cache, origin: createOrigin('http://127.0.0.1:9/images/{id}'), pruneInterval: 0, cleanInterval: 0, prefetchInterval: 0 });
    try {
      const url = await server.listen();
      const unreachable = await errorOf(await fetch(`${url}/images/x`));
      expect(unreachable.status).toBe(502);
      expect(unreachable.body.message).toMatch(/^the origin could not deliver image "x"/);
      expect(unreachable.raw).not.toMatch(/127\.0\.0\.1:9|ECONNREFUSED/);
    } finally {
      await server.close();
      await cleanup();
    }
  });

  it('a cache without an origin: 404 without the cache path', async () => {
    const { cache, cacheDir, cleanup } = await openCache();
    const server = await createCacheServer({ cache, pruneInterval: 0, cleanInterval: 0, prefetchInterval: 0 });
    try {
      const url = await server.listen();
      const { status, body, raw } = await errorOf(await fetch(`${url}/images/absent`));
      expect([status, body.code, body.message]).toEqual([404, 'CACHE_IMAGE_NOT_CACHED', 'image "absent" is not cached']);
      expect(raw).not.toContain(cacheDir);
    } finally {
      await server.close();
      await cleanup();
    }
  });

  it('a 10 KB id: the body echoes 64 characters and "…", not 10 KB', async () => {
    h = await startHarness();
    const id = 'x'.repeat(10_000);
    const long = await errorOf(await fetch(`${h.url}/images/${id}`));
    expect(long.status).toBe(414); // past the router's 1024-character parameter limit
    expect(long.body.code).toBe('URI_TOO_LONG');
    expect(long.raw.length).toBeLessThan(400);
    expect(long.body.message).toBe(`the path "/images/${'x'.repeat(MAX_ECHO - '/images/'.length)}…" is too long (an image id is at most 255 bytes)`);

    const noRoute = await errorOf(await fetch(`${h.url}/no/such/${'z'.repeat(10_000)}`));
    expect([noRoute.status, noRoute.body.code]).toEqual([404, 'ROUTE_NOT_FOUND']);
    expect(noRoute.raw.length).toBeLessThan(400);

    const tooLong = await errorOf(await fetch(`${h.url}/images/${'y'.repeat(300)}`)); // within the router's limit, over 255 bytes
    expect(tooLong.status).toBe(400);
    expect(tooLong.body.code).toBe('CACHE_INVALID_IMAGE_ID');
    expect(tooLong.body.message).toBe(`invalid image id "${'y'.repeat(MAX_ECHO)}…": it is longer than 255 bytes; an id is one path segment of at most 255 bytes, not starting with '.'`);
  });

  it('a long Range header on a hit: the 416 message is cut to MAX_MESSAGE characters', async () => {
    h = await startHarness();
    h.origin.images.set('small', { kind: 'ok', data: imageBytes('small', 100) });
    await (await fetch(`${h.url}/images/small`)).arrayBuffer();
    await h.cache.getCachedImages();
    const range = `bytes=${'9'.repeat(2000)}-`;
    const response = await rawRequest(`${h.url}/images/small`, { headers: { range } });
    expect(response.status).toBe(416);
    const body = JSON.parse(response.body.toString()) as ErrorBody;
    expect(Array.from(body.message).length).toBeLessThanOrEqual(MAX_MESSAGE + 1);
    expect(body.message.endsWith('…')).toBe(true);
  });

  it('/healthz when the cache fails: 503 without the database path', async () => {
    const { cache, cacheDir, cleanup } = await openCache();
    const server = await createCacheServer({ cache, pruneInterval: 0, cleanInterval: 0, prefetchInterval: 0 });
    try {
      const url = await server.listen();
      await cache.close(); // every call now fails (driver closed)
      const response = await fetch(`${url}/healthz`);
      const text = await response.text();
      expect(response.status).toBe(503);
      expect(JSON.parse(text)).toMatchObject({ status: 'unavailable', message: 'internal server error (CACHE_DRIVER_NOT_OPEN); see the server log' });
      expect(text).not.toContain(cacheDir);
    } finally {
      await server.close();
      await cleanup();
    }
  });
});

describe("Retry-After from the origin passes through", () => {
  it.each([
    [503, { 'retry-after': '17' }, 503, '17'],
    [429, { 'retry-after': 'Wed, 21 Oct 2026 07:28:00 GMT' }, 503, 'Wed, 21 Oct 2026 07:28:00 GMT'],
    [503, {}, 503, null],
    [502, { 'retry-after': '5' }, 502, '5'],
    [503, { 'retry-after': 'whenever' }, 503, null],
  ])('origin %d with %j: the client gets %d and Retry-After %j', async (originStatus, headers, status, retryAfter) => {
    h = await startHarness();
    h.origin.images.set('busy', { kind: 'status', status: originStatus, headers });
    const response = await fetch(`${h.url}/images/busy`);
    expect(response.status).toBe(status);
    expect(response.headers.get('retry-after')).toBe(retryAfter);
    expect(((await response.json()) as ErrorBody).code).toBe('CACHE_ORIGIN_ERROR');
  });
});

describe('safe by default', () => {
  it('listen() refuses an address other hosts can reach without a token (nothing is bound)', async () => {
    const { cache, cleanup } = await openCache();
    const server = await createCacheServer({ cache, pruneInterval: 0, cleanInterval: 0, prefetchInterval: 0 });
    try {
      for (const host of ['0.0.0.0', '::', '192.0.2.1']) {
        await expect(server.listen({ host })).rejects.toMatchObject({
          code: 'CACHE_INVALID_ARGUMENT',
          message: expect.stringMatching(/^refusing to listen on .*: without a token the management API .*insecureOpenManagementApi/),
        });
      }
      expect(server.app.server.listening).toBe(false);
      // Loopback is fine without a token.
      expect(await server.listen({ host: '127.0.0.1' })).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    } finally {
      await server.close();
      await cleanup();
    }
  });

  it('with a token (or insecureOpenManagementApi) a non-loopback address is allowed, and the URL is the bound address', async () => {
    const { cache, cleanup } = await openCache();
    const server = await createCacheServer({ cache, token: 't0ken', pruneInterval: 0, cleanInterval: 0, prefetchInterval: 0 });
    try {
      const url = await server.listen({ host: '0.0.0.0' });
      expect(url).toMatch(/^http:\/\/0\.0\.0\.0:\d+$/); // not http://127.0.0.1:…
      const port = new URL(url).port;
      expect((await fetch(`http://127.0.0.1:${port}/v2/cache`)).status).toBe(401);
    } finally {
      await server.close();
      await cleanup();
    }
    const open = await openCache();
    const insecure = await createCacheServer({ cache: open.cache, insecureOpenManagementApi: true, pruneInterval: 0, cleanInterval: 0, prefetchInterval: 0 });
    try {
      const url = await insecure.listen({ host: '0.0.0.0' });
      expect((await fetch(`http://127.0.0.1:${new URL(url).port}/v2/cache`)).status).toBe(200);
    } finally {
      await insecure.close();
      await open.cleanup();
    }
  });

  it('isLoopbackHost: loopback literals and localhost only', async () => {
    for (const host of ['127.0.0.1', '127.1.2.3', '::1', '[::1]', '::ffff:127.0.0.1', 'localhost', 'LOCALHOST']) expect(await isLoopbackHost(host), host).toBe(true);
    for (const host of ['0.0.0.0', '::', '10.0.0.1', '192.0.2.1', '::ffff:10.0.0.1', 'no-such-host.invalid']) expect(await isLoopbackHost(host), host).toBe(false);
  });

  it('metricsToken: /metrics takes its own token or the management token; the management API does not take the metrics token', async () => {
    h = await startHarness({ token: 'admin-token', metricsToken: 'scrape-token' });
    const metrics = (token?: string) => fetch(`${h!.url}/metrics`, token === undefined ? {} : { headers: { authorization: `Bearer ${token}` } });
    expect((await metrics()).status).toBe(401);
    expect((await metrics('wrong')).status).toBe(401);
    expect((await metrics('scrape-token')).status).toBe(200);
    expect((await metrics('admin-token')).status).toBe(200);
    const management = await fetch(`${h.url}/v2/cache`, { headers: { authorization: 'Bearer scrape-token' } });
    expect(management.status).toBe(401);
  });

  it('metricsToken without a management token guards /metrics only', async () => {
    h = await startHarness({ metricsToken: 'scrape-token' });
    expect((await fetch(`${h.url}/metrics`)).status).toBe(401);
    expect((await fetch(`${h.url}/metrics`, { headers: { authorization: 'Bearer scrape-token' } })).status).toBe(200);
    expect((await fetch(`${h.url}/v2/cache`)).status).toBe(200);
  });

  it('refuses an empty or blank metricsToken', async () => {
    const { cache, cleanup } = await openCache();
    try {
      for (const metricsToken of ['', ' ', 'a b']) {
        await expect(createCacheServer({ cache, metricsToken })).rejects.toMatchObject({ code: 'CACHE_INVALID_ARGUMENT', message: expect.stringMatching(/metricsToken/) });
      }
    } finally {
      await cleanup();
    }
  });
});
