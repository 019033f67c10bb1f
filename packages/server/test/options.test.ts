import { InvalidArgumentError } from '@cache/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULTS, createCacheServer, type CacheServerOptions } from '../src/index.js';
import { openCache } from './helpers.js';

describe('createCacheServer options', () => {
  let opened: Awaited<ReturnType<typeof openCache>>;
  beforeAll(async () => {
    opened = await openCache();
  });
  afterAll(() => opened.cleanup());

  it.each<[string, Record<string, unknown>]>([
    ['no cache', { cache: undefined }],
    ['a cache that is not an ImageCache', { cache: {} }],
    ['an origin without open()', { origin: { description: 'x' } }],
    ['an empty token', { token: '' }],
    ['a token with spaces', { token: 'a b' }],
    ['a negative interval', { pruneInterval: -1 }],
    ['a fractional interval', { cleanInterval: 1.5 }],
    ['an interval too long for a timer', { prefetchInterval: 2 ** 31 }],
    ['zero prefetch concurrency', { prefetchConcurrency: 0 }],
    ['a string timeout', { shutdownTimeout: '10' }],
    ['a non-boolean flag', { protectMetrics: 'yes' }],
    ['a negative fillAbandonAfter', { fillAbandonAfter: -1 }],
    ['a fillAbandonAfter too long for a timer', { fillAbandonAfter: 2 ** 31 }],
  ])('%s: InvalidArgumentError', async (_name, overrides) => {
    const options = { cache: opened.cache, ...overrides } as unknown as CacheServerOptions;
    await expect(createCacheServer(options)).rejects.toSatisfy(InvalidArgumentError.isInstance);
  });

  it('defaults are documented values and a valid server starts with them', async () => {
    expect(DEFAULTS).toEqual({ pruneInterval: 300_000, cleanInterval: 3_600_000, prefetchInterval: 60_000, prefetchConcurrency: 4, shutdownTimeout: 10_000, readinessWindow: 30_000 });
    const server = await createCacheServer({ cache: opened.cache });
    const url = await server.listen();
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
    await server.close();
  });
});
