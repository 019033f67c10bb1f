// Issue 13 item 4: the origin's timeouts and retries as a client of the server sees them.
import { createOrigin } from '@cache/origin';
import { afterEach, describe, expect, it } from 'vitest';
import { createCacheServer, type CacheServer, type ErrorBody } from '../src/index.js';
import { imageBytes, openCache, rawRequest, TestOrigin } from './helpers.js';

let stop: (() => Promise<void>) | undefined;
afterEach(async () => {
  await stop?.();
  stop = undefined;
});

/** A server in front of a fresh TestOrigin opened with `options`. */
async function start(options: Parameters<typeof createOrigin>[1]): Promise<{ origin: TestOrigin; server: CacheServer; url: string; isCached: (id: string) => Promise<boolean> }> {
  const origin = await TestOrigin.start();
  const { cache, cleanup } = await openCache();
  const server = await createCacheServer({
    cache,
    origin: createOrigin(origin.template, options),
    pruneInterval: 0,
    cleanInterval: 0,
    prefetchInterval: 0,
  });
  const url = await server.listen();
  stop = async () => {
    await server.close();
    await origin.close();
    await cleanup();
  };
  return { origin, server, url, isCached: (id) => cache.isCached(id) };
}

describe('origin timeouts and retries behind the server', () => {
  it('an origin that sends no headers within headersTimeout: 504 with the timeout named, after retries + 1 requests', async () => {
    const { origin, url } = await start({ headersTimeout: 150, retries: 1, retryDelay: 1 });
    origin.images.set('slow', { kind: 'silent' });
    const response = await fetch(`${url}/images/slow`);
    const body = (await response.json()) as ErrorBody;
    expect(response.status).toBe(504);
    expect(body).toMatchObject({ code: 'CACHE_ORIGIN_ERROR', message: 'the origin did not start answering in time for image "slow" (headers timeout, 150 ms)' });
    expect(origin.requests.get('slow')).toBe(2);
  });

  it('an origin that goes silent mid-body: the client response is cut, one origin request, nothing cached', async () => {
    const data = imageBytes('stalled', 2_000_000);
    const { origin, url, isCached } = await start({ bodyIdleTimeout: 200, retries: 3 });
    origin.images.set('stalled', { kind: 'stall', data, after: 300_000 });
    const response = await rawRequest(`${url}/images/stalled`);
    expect(response.status).toBe(200); // the headers went out with the first bytes
    expect(response.complete).toBe(false); // then the body was cut, never ended as if complete
    expect(response.body.length).toBeLessThan(data.length);
    expect(origin.requests.get('stalled')).toBe(1);
    expect(await isCached('stalled')).toBe(false);
  });
});
