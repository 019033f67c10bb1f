// Plain hits answered on node:http below fastify (options.directHits, ADR 0008): the same response, hit and metrics
// as fastify's route, and every other request (and an entry that fails to open) left to the route.
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { rename, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createCacheServer, type CacheServer } from '../src/index.js';
import { resolveOptions } from '../src/options.js';
import { imageBytes, openCache, rawRequest, scrape, type RawResponse } from './helpers.js';

/** Counts the requests fastify's router hands to a route handler (fastify publishes each on this tracing channel). */
class RouteHandlerCount {
  static readonly CHANNEL = 'tracing:fastify.request.handler:start';
  count = 0;
  readonly #listener = () => {
    this.count++;
  };
  constructor() {
    subscribe(RouteHandlerCount.CHANNEL, this.#listener);
  }
  /** How many handlers ran during `fn`. */
  async during<T>(fn: () => Promise<T>): Promise<{ result: T; handlers: number }> {
    const before = this.count;
    const result = await fn();
    return { result, handlers: this.count - before };
  }
  stop(): void {
    unsubscribe(RouteHandlerCount.CHANNEL, this.#listener);
  }
}

/** Status, headers but `date`, and body of a response, for comparing two servers' answers. */
function comparable(response: RawResponse) {
  const { date: _date, ...headers } = response.headers;
  return { status: response.status, headers, body: response.body.toString('base64'), complete: response.complete };
}

const METRICS = [
  'image_cache_hits_total',
  'image_cache_served_bytes_total{source="cache"}',
  'image_cache_http_request_duration_seconds_count{method="GET",route="/images/:id",status_code="200"}',
];

async function counters(url: string): Promise<number[]> {
  const scraped = await scrape(url);
  return METRICS.map((name) => scraped.get(name) ?? 0);
}

describe('direct hits', () => {
  let cleanup: () => Promise<void>;
  let cache: Awaited<ReturnType<typeof openCache>>['cache'];
  let cacheDir: string;
  const servers: CacheServer[] = [];
  let handlers: RouteHandlerCount;

  beforeEach(async () => {
    ({ cache, cacheDir, cleanup } = await openCache());
    handlers = new RouteHandlerCount();
  });
  afterEach(async () => {
    handlers.stop();
    for (const server of servers.splice(0)) await server.close();
    await cleanup();
  });

  async function serve(directHits: boolean): Promise<string> {
    const server = await createCacheServer({ cache, directHits, pruneInterval: 0, cleanInterval: 0, prefetchInterval: 0 });
    servers.push(server);
    return server.listen();
  }

  it('a plain GET hit of up to 1 MiB gets from node:http exactly what the route sends: status, headers, body, hit and metrics', async () => {
    const sizes = { one: 1, small: 5000, pooled: 65_537, whole: 1024 * 1024, streamed: 1024 * 1024 + 1, empty: 0 };
    for (const [id, size] of Object.entries(sizes)) await cache.cacheImage(id, imageBytes(id, size));
    const direct = await serve(true);
    const routed = await serve(false);
    for (const [id, size] of Object.entries(sizes)) {
      const answers = [];
      for (const url of [direct, routed]) {
        // The first GET describes the entry (a stat) and remembers it; the next ones may be answered directly.
        await rawRequest(`${url}/images/${id}`);
        const before = await counters(url);
        const { result, handlers: routedCount } = await handlers.during(() => rawRequest(`${url}/images/${id}`));
        // The duration is observed once the response has finished: after the client has it all.
        const after = await counters(url);
        answers.push({ response: comparable(result), routedCount, counted: after.map((value, i) => value - (before[i] as number)) });
        expect(result.status, `${id} from ${url}`).toBe(200);
        expect(result.body.equals(imageBytes(id, size)), `${id} from ${url}`).toBe(true);
      }
      const [fromDirect, fromRoute] = answers as [(typeof answers)[0], (typeof answers)[0]];
      expect(fromDirect.response, id).toEqual(fromRoute.response);
      expect(fromDirect.counted, `${id}: hits, bytes, timed requests`).toEqual(fromRoute.counted);
      expect(fromDirect.counted, id).toEqual([1, size, 1]);
      expect(fromRoute.routedCount, `${id} through fastify with directHits: false`).toBe(1);
      // Whole bodies of 1 byte to 1 MiB go directly; a streamed body (above 1 MiB) and an empty one through the route.
      expect(fromDirect.routedCount, `${id} with directHits`).toBe(size > 0 && size <= 1024 * 1024 ? 0 : 1);
    }
    for (const server of servers.splice(0)) await server.close(); // flushes the batched hits
    for (const id of Object.keys(sizes)) expect(await cache.getHitCount(id), `${id}: two GETs on each server`).toBe(4);
  });

  it('every other request goes through the route: ranges, conditionals, HEAD, queries, encoded ids, request bodies', async () => {
    const data = imageBytes('img', 70_000);
    await cache.cacheImage('img', data);
    const url = await serve(true);
    await rawRequest(`${url}/images/img`); // remembered
    const plain = await handlers.during(() => rawRequest(`${url}/images/img`));
    expect(plain.handlers).toBe(0);
    const etag = plain.result.headers.etag as string;
    const lastModified = plain.result.headers['last-modified'] as string;
    const cases: { what: string; path?: string; method?: string; headers?: Record<string, string>; body?: string; status: number; bytes?: Buffer }[] = [
      { what: 'a range', headers: { range: 'bytes=10-19' }, status: 206, bytes: data.subarray(10, 20) },
      { what: 'If-None-Match that matches', headers: { 'if-none-match': etag }, status: 304, bytes: Buffer.alloc(0) },
      { what: 'If-None-Match that does not', headers: { 'if-none-match': '"other"' }, status: 200, bytes: data },
      { what: 'If-Modified-Since', headers: { 'if-modified-since': lastModified }, status: 304, bytes: Buffer.alloc(0) },
      { what: 'HEAD', method: 'HEAD', status: 200, bytes: Buffer.alloc(0) },
      { what: 'a query string', path: '/images/img?x=1', status: 200, bytes: data },
      { what: 'a percent-encoded id', path: '/images/im%67', status: 200, bytes: data },
      { what: 'a request body', headers: { 'content-type': 'text/plain', 'content-length': '3' }, body: 'abc', status: 200, bytes: data },
      { what: 'a chunked request body', headers: { 'content-type': 'text/plain', 'transfer-encoding': 'chunked' }, body: 'abc', status: 200, bytes: data },
    ];
    for (const c of cases) {
      const { result, handlers: routed } = await handlers.during(() =>
        rawRequest(`${url}${c.path ?? '/images/img'}`, { method: c.method ?? 'GET', headers: c.headers ?? {}, ...(c.body === undefined ? {} : { body: c.body }) }),
      );
      expect(routed, c.what).toBe(1);
      expect(result.status, c.what).toBe(c.status);
      if (c.bytes !== undefined) expect(result.body.equals(c.bytes), c.what).toBe(true);
    }
  });

  it('an entry replaced or deleted after it was remembered: the route answers, with the new file or a 404', async () => {
    const first = imageBytes('first', 9000);
    await cache.cacheImage('img', first);
    const url = await serve(true);
    await rawRequest(`${url}/images/img`);
    expect((await handlers.during(() => rawRequest(`${url}/images/img`))).handlers).toBe(0);

    // Another file renamed over it, without the driver: the direct open refuses it (another identity), the route serves it.
    const second = imageBytes('second', 9000);
    await writeFile(join(cacheDir, 'incoming'), second);
    await rename(join(cacheDir, 'incoming'), join(cacheDir, 'img'));
    const replaced = await handlers.during(() => rawRequest(`${url}/images/img`));
    expect(replaced.handlers).toBe(1);
    expect(replaced.result.status).toBe(200);
    expect(replaced.result.body.equals(second)).toBe(true);
    // Remembered again (the new file), answered directly again.
    const again = await handlers.during(() => rawRequest(`${url}/images/img`));
    expect(again.handlers).toBe(0);
    expect(again.result.body.equals(second)).toBe(true);
    expect(again.result.headers.etag).toBe(replaced.result.headers.etag);

    await unlink(join(cacheDir, 'img'));
    const gone = await handlers.during(() => rawRequest(`${url}/images/img`));
    expect(gone.handlers).toBe(1);
    expect(gone.result.status).toBe(404); // no origin: not cached
    expect(JSON.parse(gone.result.body.toString())).toMatchObject({ code: 'CACHE_IMAGE_NOT_CACHED' });
  });

  it('the route answers everything when directHits is off, or when the logger, the access log or the rate limit must see every request', async () => {
    const base = { cache };
    expect(resolveOptions(base).directHits).toBe(true);
    expect(resolveOptions({ ...base, directHits: false }).directHits).toBe(false);
    expect(resolveOptions({ ...base, logger: true }).directHits).toBe(false);
    expect(resolveOptions({ ...base, accessLog: true }).directHits).toBe(false);
    expect(resolveOptions({ ...base, rateLimit: { max: 100, timeWindow: 1000 } }).directHits).toBe(false);
    expect(() => resolveOptions({ ...base, directHits: 'yes' as unknown as boolean })).toThrow(/directHits must be a boolean/);

    await cache.cacheImage('img', imageBytes('img', 100));
    const server = await createCacheServer({ cache, accessLog: false, rateLimit: { max: 1000, timeWindow: 60_000 }, pruneInterval: 0, cleanInterval: 0, prefetchInterval: 0 });
    servers.push(server);
    const url = await server.listen();
    await rawRequest(`${url}/images/img`);
    const { result, handlers: routed } = await handlers.during(() => rawRequest(`${url}/images/img`));
    expect(result.status).toBe(200);
    expect(result.headers['x-ratelimit-limit']).toBe('1000'); // the rate limit saw it
    expect(routed).toBe(1);
  });
});
