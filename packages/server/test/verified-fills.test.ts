import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { readdir } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { ImageCache } from '@cache/core';
import { GlanceOrigin, HttpOrigin, type Origin } from '@cache/origin';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { METRIC_NAMES, createCacheServer, type CacheServer, type CacheServerOptions } from '../src/index.js';
import { imageBytes, openCache, rawRequest, scrape, waitFor, type RawResponse } from './helpers.js';

type Handler = (request: IncomingMessage, response: ServerResponse) => void;

/** A real origin on 127.0.0.1 (node:http): each path answers as its handler says; requests are counted per path. */
class Upstream {
  readonly routes = new Map<string, Handler>();
  readonly counts = new Map<string, number>();
  readonly server: Server = createServer((request, response) => {
    const path = request.url ?? '';
    this.counts.set(path, (this.counts.get(path) ?? 0) + 1);
    const handler = this.routes.get(path);
    if (handler === undefined) response.writeHead(404).end();
    else handler(request, response);
  });
  url = '';
  async start(): Promise<void> {
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }
  async stop(): Promise<void> {
    this.server.closeAllConnections();
    this.server.close();
    await once(this.server, 'close');
  }
  count(path: string): number {
    return this.counts.get(path) ?? 0;
  }
}

/** Answers `body` with a Content-Length (unless `chunked`) and `headers`. */
function serve(body: Buffer, headers: Record<string, string> = {}, chunked = false): Handler {
  return (_request, response) => {
    response.writeHead(200, { ...(chunked ? {} : { 'content-length': String(body.length) }), ...headers });
    response.end(body);
  };
}

/** A raw HTTP/1.1 response written on the socket (any lie in `head`), then a clean close (FIN). */
function raw(head: string, body: Buffer): Handler {
  return (_request, response) => {
    response.socket?.end(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nconnection: close\r\n${head}\r\n`), body]));
  };
}

const b64 = (algorithm: string, bytes: Buffer) => createHash(algorithm).update(bytes).digest('base64');
const hex = (algorithm: string, bytes: Buffer) => createHash(algorithm).update(bytes).digest('hex');
const data = imageBytes('verified', 600_000);
const other = Buffer.from('some other image');

const upstream = new Upstream();
beforeAll(() => upstream.start());
afterAll(() => upstream.stop());

interface Node {
  server: CacheServer;
  cache: ImageCache;
  cacheDir: string;
  url: string;
  close: () => Promise<void>;
}

const nodes: Node[] = [];
/** A cache server (sqlite cache in a temp dir) in front of `origin`. */
async function startNode(origin: Origin, options: Partial<CacheServerOptions> = {}): Promise<Node> {
  const { cache, cacheDir, cleanup } = await openCache();
  const server = await createCacheServer({ cache, origin, pruneInterval: 0, cleanInterval: 0, prefetchInterval: 0, prefetchOnQueue: false, ...options });
  const url = await server.listen();
  const node = {
    server,
    cache,
    cacheDir,
    url,
    close: async () => {
      await server.close();
      await cleanup();
    },
  };
  nodes.push(node);
  return node;
}
afterEach(async () => {
  await Promise.all(nodes.splice(0).map((node) => node.close()));
  upstream.routes.clear();
  upstream.counts.clear();
});

const httpOrigin = (options: ConstructorParameters<typeof HttpOrigin>[1] = {}) => new HttpOrigin(`${upstream.url}/images/{id}`, options);

/** Waits until a failed fill has been rolled back (nothing left in incomplete/), so a new request is a new miss. */
async function settled(node: Node): Promise<void> {
  await waitFor(async () => (await readdir(join(node.cacheDir, 'incomplete'))).length === 0);
}

/**
 * A fill that failed verification never reaches the client as a success: it is
 * a 502 when the origin's failure came before the response headers went out,
 * and otherwise a 200 that is visibly incomplete (short of its
 * Content-Length, the connection cut), never a complete body.
 */
function expectFailed(response: RawResponse): void {
  if (response.status === 502) {
    expect(JSON.parse(response.body.toString()).code).toMatch(/^CACHE_(ORIGIN_ERROR|CHECKSUM_MISMATCH)$/);
    return;
  }
  expect(response.status).toBe(200);
  expect(response.complete).toBe(false);
}

/** The second request after a failed or unverifiable fill: never a HIT; the origin is asked again. */
async function expectNoHit(node: Node, id: string): Promise<RawResponse> {
  await settled(node);
  expect(await node.cache.isCached(id)).toBe(false);
  const before = upstream.count(`/images/${id}`);
  const again = await rawRequest(`${node.url}/images/${id}`);
  expect(again.headers['x-cache']).toBe('MISS');
  expect(upstream.count(`/images/${id}`)).toBe(before + 1);
  await settled(node);
  expect(await node.cache.isCached(id)).toBe(false);
  return again;
}

describe('a verified origin', () => {
  it('Repr-Digest: the miss carries the strong digest ETag; the hit has the same one; If-Range resumes with 206', async () => {
    upstream.routes.set('/images/img', serve(data, { 'repr-digest': `sha-256=:${b64('sha256', data)}:` }));
    const node = await startNode(httpOrigin());
    const etag = `"sha256:${hex('sha256', data)}"`;

    const miss = await rawRequest(`${node.url}/images/img`);
    expect(miss.headers['x-cache']).toBe('MISS');
    expect(miss.headers.etag).toBe(etag);
    expect(miss.complete).toBe(true);
    expect(miss.body.equals(data)).toBe(true);
    expect(await node.cache.isCached('img')).toBe(true); // the last byte was held back until the commit

    const hit = await rawRequest(`${node.url}/images/img`);
    expect(hit.headers['x-cache']).toBe('HIT');
    expect(hit.headers.etag).toBe(etag);
    expect(hit.body.equals(data)).toBe(true);

    // A client that got 250000 bytes of the miss resumes with the validator it was given.
    const resumed = await rawRequest(`${node.url}/images/img`, { headers: { range: 'bytes=250000-', 'if-range': etag } });
    expect(resumed.status).toBe(206);
    expect(resumed.headers['content-range']).toBe(`bytes 250000-${data.length - 1}/${data.length}`);
    expect(resumed.headers.etag).toBe(etag);
    expect(resumed.body.equals(data.subarray(250_000))).toBe(true);

    // Another representation's validator, or a weak one, never matches If-Range: the whole image.
    for (const ifRange of [`"sha256:${hex('sha256', other)}"`, `W/${etag}`]) {
      const whole = await rawRequest(`${node.url}/images/img`, { headers: { range: 'bytes=250000-', 'if-range': ifRange } });
      expect(whole.status).toBe(200);
      expect(whole.body.equals(data)).toBe(true);
    }
    expect(upstream.count('/images/img')).toBe(1);
  });

  it('two nodes caching the same bytes give the same ETag; HEAD on a miss announces it too', async () => {
    upstream.routes.set('/images/img', serve(data, { digest: `SHA-512=${b64('sha512', data)}` }));
    const [a, b] = [await startNode(httpOrigin()), await startNode(httpOrigin())];
    const head = await rawRequest(`${a.url}/images/img`, { method: 'HEAD' });
    expect(head.headers.etag).toBe(`"sha512:${hex('sha512', data)}"`);
    for (const node of [a, b]) await rawRequest(`${node.url}/images/img`);
    const [hitA, hitB] = [await rawRequest(`${a.url}/images/img`), await rawRequest(`${b.url}/images/img`)];
    expect(hitA.headers['x-cache']).toBe('HIT');
    expect(hitB.headers['x-cache']).toBe('HIT');
    expect(hitA.headers.etag).toBe(`"sha512:${hex('sha512', data)}"`);
    expect(hitB.headers.etag).toBe(hitA.headers.etag);
    expect(hitA.headers['last-modified']).toBeDefined();
  });

  it('a Glance origin with its token: the sha512 multihash becomes the ETag; 401 without the token is a 502, nothing cached', async () => {
    const token = 'secret-token';
    const record = { id: 'gl', status: 'active', size: data.length, checksum: hex('md5', data), os_hash_algo: 'sha512', os_hash_value: hex('sha512', data) };
    const guarded = (handler: Handler): Handler => (request, response) => {
      if (request.headers['x-auth-token'] !== token) response.writeHead(401, { 'content-type': 'application/json' }).end('{"error":{"code":401}}');
      else handler(request, response);
    };
    upstream.routes.set('/v2/images/gl', guarded((_request, response) => response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(record))));
    upstream.routes.set('/v2/images/gl/file', guarded(serve(data, { 'content-md5': hex('md5', data) })));

    const anonymous = await startNode(new GlanceOrigin(upstream.url));
    const refused = await rawRequest(`${anonymous.url}/images/gl`);
    expect(refused.status).toBe(502);
    expect(JSON.parse(refused.body.toString()).code).toBe('CACHE_ORIGIN_ERROR');
    expect(await anonymous.cache.isCached('gl')).toBe(false);

    const node = await startNode(new GlanceOrigin(upstream.url, { headers: { 'x-auth-token': token } }));
    const miss = await rawRequest(`${node.url}/images/gl`);
    expect(miss.body.equals(data)).toBe(true);
    const hit = await rawRequest(`${node.url}/images/gl`);
    expect(hit.headers['x-cache']).toBe('HIT');
    expect(hit.headers.etag).toBe(`"sha512:${hex('sha512', data)}"`);
  });

  it('a length-verified origin (Content-Length, no digest) is cached with a weak ETag', async () => {
    upstream.routes.set('/images/img', serve(data));
    const node = await startNode(httpOrigin());
    const miss = await rawRequest(`${node.url}/images/img`);
    expect(miss.headers.etag).toBeUndefined();
    const hit = await rawRequest(`${node.url}/images/img`);
    expect(hit.headers['x-cache']).toBe('HIT');
    expect(hit.headers.etag).toMatch(/^W\/"/);
  });
});

describe('origins that must never yield a HIT', () => {
  it.each([
    ['Repr-Digest', { 'repr-digest': `sha-256=:${b64('sha256', other)}:` }],
    ['Content-Digest', { 'content-digest': `sha-512=:${b64('sha512', other)}:` }],
    ['Digest', { digest: `SHA-256=${b64('sha256', other)}` }],
    ['Content-MD5', { 'content-md5': b64('md5', other) }],
  ])('a wrong %s: the client never gets a complete body, nothing is cached, the next request is a miss again', async (_name, headers) => {
    upstream.routes.set('/images/img', serve(data, headers));
    const node = await startNode(httpOrigin());
    const response = await rawRequest(`${node.url}/images/img`);
    expectFailed(response);
    // All bytes went through the cache before the digest could be checked: only the last one waited for the verdict.
    expect(response.body.length).toBeLessThan(data.length);
    await expectNoHit(node, 'img');
  });

  it('a wrong digest in the checksum manifest: nothing is cached', async () => {
    upstream.routes.set('/images/img', serve(data));
    upstream.routes.set('/SHA256SUMS', serve(Buffer.from(`${hex('sha256', other)}  img\n`)));
    const node = await startNode(httpOrigin({ manifest: `${upstream.url}/SHA256SUMS` }));
    expectFailed(await rawRequest(`${node.url}/images/img`));
    await expectNoHit(node, 'img');
  });

  it('Content-Length longer than the body, then a clean close: a short, failed response; nothing is cached', async () => {
    upstream.routes.set('/images/img', raw(`content-length: ${data.length}\r\n`, data.subarray(0, 200_000)));
    const node = await startNode(httpOrigin());
    expectFailed(await rawRequest(`${node.url}/images/img`));
    await expectNoHit(node, 'img');
  });

  it('Content-Length shorter than the image, with a digest of the image: the digest catches it', async () => {
    upstream.routes.set('/images/img', raw(`content-length: 1000\r\nrepr-digest: sha-256=:${b64('sha256', data)}:\r\n`, data));
    const node = await startNode(httpOrigin());
    expectFailed(await rawRequest(`${node.url}/images/img`));
    await expectNoHit(node, 'img');
  });

  it('a body longer than the length announced elsewhere (Glance size, chunked body): overlong, nothing cached', async () => {
    const record = { status: 'active', size: 100_000, checksum: null, os_hash_algo: null, os_hash_value: null };
    upstream.routes.set('/v2/images/gl', (_request, response) => response.writeHead(200).end(JSON.stringify(record)));
    upstream.routes.set('/v2/images/gl/file', serve(data, {}, true));
    const node = await startNode(new GlanceOrigin(upstream.url));
    expectFailed(await rawRequest(`${node.url}/images/gl`));
    await settled(node);
    expect(await node.cache.isCached('gl')).toBe(false);
    const again = await rawRequest(`${node.url}/images/gl`);
    expect(again.headers['x-cache']).toBe('MISS');
  });

  it('a close-delimited body with nothing to verify it: served to the client, not cached (a cut one looks the same)', async () => {
    upstream.routes.set('/images/whole', raw('', data));
    upstream.routes.set('/images/cut', raw('', data.subarray(0, 250_000))); // cut by the origin: a FIN like the real end
    const node = await startNode(httpOrigin());
    const whole = await rawRequest(`${node.url}/images/whole`);
    expect(whole.body.equals(data)).toBe(true);
    expect(whole.headers.etag).toBeUndefined();
    const cut = await rawRequest(`${node.url}/images/cut`);
    expect(cut.complete).toBe(true); // nothing on the wire tells it from a whole image
    expect(cut.body.length).toBe(250_000);
    const again = await expectNoHit(node, 'cut');
    expect(again.body.length).toBe(250_000);
    await expectNoHit(node, 'whole');
  });

  it('with allowUnverified on the origin, the operator accepts the risk: the cut body is cached as if whole', async () => {
    upstream.routes.set('/images/cut', raw('', data.subarray(0, 250_000)));
    const node = await startNode(httpOrigin({ allowUnverified: true }));
    await rawRequest(`${node.url}/images/cut`);
    const hit = await rawRequest(`${node.url}/images/cut`);
    expect(hit.headers['x-cache']).toBe('HIT');
    expect(hit.body.length).toBe(250_000);
  });

  it('the prefetch worker: a wrong digest and an unverifiable body are not cached (failed prefetches, markers kept)', async () => {
    upstream.routes.set('/images/wrong', serve(data, { 'repr-digest': `sha-256=:${b64('sha256', other)}:` }));
    upstream.routes.set('/images/unverified', raw('', data));
    upstream.routes.set('/images/good', serve(data, { 'repr-digest': `sha-256=:${b64('sha256', data)}:` }));
    const node = await startNode(httpOrigin(), { prefetchInterval: 20 });
    for (const id of ['wrong', 'unverified', 'good']) await node.cache.queueImage(id);
    // Each run retries the two bad ones: wait for two runs' worth of failures, and for good's commit to be
    // recorded (the file is active a moment before its row is written, and the runs may count failures first).
    await waitFor(async () => ((await scrape(node.url)).get(`${METRIC_NAMES.prefetches}{outcome="cached"}`) ?? 0) >= 1);
    await waitFor(async () => ((await scrape(node.url)).get(`${METRIC_NAMES.prefetches}{outcome="failed"}`) ?? 0) >= 4);
    expect(await node.cache.isCached('good')).toBe(true);
    expect(await node.cache.driver.getStoredChecksum?.('good')).toBe(`sha256:${hex('sha256', data)}`);
    expect(await node.cache.isCached('wrong')).toBe(false);
    expect(await node.cache.isCached('unverified')).toBe(false);
    expect((await node.cache.getQueuedImages()).sort()).toEqual(['unverified', 'wrong']);
  });
});

