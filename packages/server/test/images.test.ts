import { createHash } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { connect } from 'node:net';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { imageBytes, rawRequest, startHarness, waitFor, type Harness } from './helpers.js';

const MiB = 1024 * 1024;

/**
 * GET over a raw keep-alive socket that reads the headers and exactly
 * Content-Length body bytes, then destroys the socket at once: a client that
 * closes on reaching Content-Length, before the server's stream has ended.
 */
function getThenClose(url: string, path: string): Promise<Buffer> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect({ host: hostname, port: Number(port) }, () => {
      socket.write(`GET ${path} HTTP/1.1\r\nHost: ${hostname}\r\nConnection: keep-alive\r\n\r\n`);
    });
    let buffered = Buffer.alloc(0);
    let length: number | undefined;
    let bodyStart = 0;
    socket.on('data', (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      if (length === undefined) {
        const end = buffered.indexOf('\r\n\r\n');
        if (end < 0) return;
        const match = /\r\ncontent-length: *(\d+)/i.exec(buffered.subarray(0, end).toString('latin1'));
        if (match === null) {
          reject(new Error('no Content-Length'));
          socket.destroy();
          return;
        }
        length = Number(match[1]);
        bodyStart = end + 4;
      }
      if (buffered.length - bodyStart >= length) {
        socket.destroy();
        resolve(buffered.subarray(bodyStart, bodyStart + length));
      }
    });
    socket.on('error', reject);
  });
}

async function bodyOf(response: Response): Promise<Buffer> {
  return Buffer.from(await response.arrayBuffer());
}

describe('GET/HEAD /images/:id', () => {
  let h: Harness;
  beforeEach(async () => {
    h = await startHarness();
  });
  afterEach(() => h.close());

  it('a miss streams from the origin and caches; the next GET is a hit with the same bytes and no origin request', async () => {
    const data = imageBytes('img-1', 3 * MiB + 17);
    h.origin.images.set('img-1', { kind: 'ok', data });

    const first = await fetch(`${h.url}/images/img-1`);
    expect(first.status).toBe(200);
    expect(first.headers.get('x-cache')).toBe('MISS');
    expect(first.headers.get('content-length')).toBe(String(data.length));
    expect(first.headers.get('content-type')).toBe('application/octet-stream');
    expect((await bodyOf(first)).equals(data)).toBe(true);
    // The client has every byte (Content-Length) a moment before the server's stream ends with the commit.
    await waitFor(() => h.cache.isCached('img-1'));

    const second = await fetch(`${h.url}/images/img-1`);
    expect(second.status).toBe(200);
    expect(second.headers.get('x-cache')).toBe('HIT');
    expect(second.headers.get('content-length')).toBe(String(data.length));
    expect(second.headers.get('etag')).toMatch(/^W\/"[0-9a-f]{32}"$/);
    expect(second.headers.get('last-modified')).toMatch(/GMT$/);
    expect((await bodyOf(second)).equals(data)).toBe(true);
    expect(h.origin.count('img-1')).toBe(1);
    await waitFor(async () => (await h.cache.getHitCount('img-1')) === 1); // the completed cache read was recorded
  });

  it('an origin without Content-Length: the miss is sent chunked and complete', async () => {
    const data = imageBytes('chunky', 200_000);
    h.origin.images.set('chunky', { kind: 'ok', data, chunked: true });
    const response = await rawRequest(`${h.url}/images/chunky`);
    expect(response.status).toBe(200);
    expect(response.headers['transfer-encoding']).toBe('chunked');
    expect(response.headers['content-length']).toBeUndefined();
    expect(response.complete).toBe(true);
    expect(response.body.equals(data)).toBe(true);
    expect(await h.cache.isCached('chunky')).toBe(true); // chunked: the last chunk is sent only after the commit
  });

  it('HEAD on a hit: headers (length, ETag, X-Cache) and no body, no hit recorded', async () => {
    const data = imageBytes('head', 5000);
    await h.cache.cacheImage('head', Readable.from([data]));
    const response = await rawRequest(`${h.url}/images/head`, { method: 'HEAD' });
    expect(response.status).toBe(200);
    expect(response.headers['content-length']).toBe('5000');
    expect(response.headers['x-cache']).toBe('HIT');
    expect(response.headers.etag).toBeDefined();
    expect(response.body.length).toBe(0);
    expect(await h.cache.getHitCount('head')).toBe(0);
  });

  it('a client that closes the connection as soon as it has Content-Length bytes still counts the hit', async () => {
    const data = imageBytes('closer', 3 * MiB + 5);
    await h.cache.cacheImage('closer', Readable.from([data]));
    const received = await getThenClose(h.url, '/images/closer');
    expect(received.equals(data)).toBe(true);
    await waitFor(async () => (await h.cache.getHitCount('closer')) === 1);
  });

  it('HEAD on a miss: answered from the origin headers; nothing is cached', async () => {
    const data = imageBytes('head-miss', 4096);
    h.origin.images.set('head-miss', { kind: 'ok', data });
    const response = await rawRequest(`${h.url}/images/head-miss`, { method: 'HEAD' });
    expect(response.status).toBe(200);
    expect(response.headers['x-cache']).toBe('MISS');
    expect(response.headers['content-length']).toBe('4096');
    expect(response.body.length).toBe(0);
    expect(h.origin.count('head-miss')).toBe(1);
    expect(await h.cache.isCached('head-miss')).toBe(false);
    const missing = await rawRequest(`${h.url}/images/nowhere`, { method: 'HEAD' });
    expect(missing.status).toBe(404);
  });

  it('ETag from a stored sha256 digest is strong; If-None-Match gives 304 (also with a list, W/ and *)', async () => {
    const data = imageBytes('digest', 10_000);
    const digest = createHash('sha256').update(data).digest('hex');
    await h.cache.cacheImage('digest', Readable.from([data]), { checksum: { algorithm: 'sha256', digest } });
    const response = await fetch(`${h.url}/images/digest`);
    await response.arrayBuffer();
    const etag = response.headers.get('etag');
    expect(etag).toBe(`"sha256:${digest}"`);

    for (const ifNoneMatch of [etag as string, `"other", ${etag}`, `W/${etag}`, '*']) {
      const notModified = await rawRequest(`${h.url}/images/digest`, { headers: { 'if-none-match': ifNoneMatch } });
      expect(notModified.status).toBe(304);
      expect(notModified.body.length).toBe(0);
      expect(notModified.headers.etag).toBe(etag);
      expect(notModified.headers['x-cache']).toBe('HIT');
    }
    const changed = await rawRequest(`${h.url}/images/digest`, { headers: { 'if-none-match': '"something-else"' } });
    expect(changed.status).toBe(200);
    expect(changed.body.equals(data)).toBe(true);
  });

  it('a weak ETag also gives 304, and changes when the entry is re-cached', async () => {
    await h.cache.cacheImage('weak', Readable.from([imageBytes('weak', 100)]));
    const first = await rawRequest(`${h.url}/images/weak`);
    const etag = first.headers.etag as string;
    expect(etag.startsWith('W/"')).toBe(true);
    expect((await rawRequest(`${h.url}/images/weak`, { headers: { 'if-none-match': etag } })).status).toBe(304);
    expect(
      (await rawRequest(`${h.url}/images/weak`, { headers: { 'if-modified-since': first.headers['last-modified'] as string } })).status,
    ).toBe(304);

    await h.cache.deleteCachedImage('weak');
    await h.cache.cacheImage('weak', Readable.from([imageBytes('weak-2', 100)]));
    const again = await rawRequest(`${h.url}/images/weak`, { headers: { 'if-none-match': etag } });
    expect(again.status).toBe(200);
    expect(again.headers.etag).not.toBe(etag);
    expect(again.body.equals(imageBytes('weak-2', 100))).toBe(true);
  });

  describe('ranges on a hit', () => {
    const data = imageBytes('ranged', 100_000);
    beforeEach(async () => {
      await h.cache.cacheImage('ranged', Readable.from([data]));
    });

    it('first bytes: 206 with Content-Range and exactly those bytes', async () => {
      const response = await rawRequest(`${h.url}/images/ranged`, { headers: { range: 'bytes=0-99' } });
      expect(response.status).toBe(206);
      expect(response.headers['content-range']).toBe('bytes 0-99/100000');
      expect(response.headers['content-length']).toBe('100');
      expect(response.headers['x-cache']).toBe('HIT');
      expect(response.body.equals(data.subarray(0, 100))).toBe(true);
      expect(await h.cache.getHitCount('ranged')).toBe(0); // the range stops before the last byte
    });

    it('a range that reaches the last byte counts one hit (a resumed or segmented download); one that stops before it counts none', async () => {
      const [before] = await h.cache.getCachedImages();
      await rawRequest(`${h.url}/images/ranged`, { headers: { range: 'bytes=10-99998' } });
      expect(await h.cache.getHitCount('ranged')).toBe(0);
      expect((await h.cache.getCachedImages())[0]?.lastAccessed).toBe(before?.lastAccessed);
      const tail = await rawRequest(`${h.url}/images/ranged`, { headers: { range: 'bytes=50000-' } });
      expect(tail.status).toBe(206);
      expect(tail.body.equals(data.subarray(50_000))).toBe(true);
      await waitFor(async () => (await h.cache.getHitCount('ranged')) === 1);
      const suffix = await rawRequest(`${h.url}/images/ranged`, { headers: { range: 'bytes=-1' } });
      expect(suffix.body.equals(data.subarray(99_999))).toBe(true);
      await waitFor(async () => (await h.cache.getHitCount('ranged')) === 2);
    });

    it('suffix range: the last N bytes', async () => {
      const response = await rawRequest(`${h.url}/images/ranged`, { headers: { range: 'bytes=-500' } });
      expect(response.status).toBe(206);
      expect(response.headers['content-range']).toBe('bytes 99500-99999/100000');
      expect(response.body.equals(data.subarray(99_500))).toBe(true);
    });

    it('open-ended range: from an offset to the end', async () => {
      const response = await rawRequest(`${h.url}/images/ranged`, { headers: { range: 'bytes=12345-' } });
      expect(response.status).toBe(206);
      expect(response.headers['content-range']).toBe('bytes 12345-99999/100000');
      expect(response.headers['content-length']).toBe(String(100_000 - 12_345));
      expect(response.body.equals(data.subarray(12_345))).toBe(true);
    });

    it('unsatisfiable: 416 with Content-Range bytes */size', async () => {
      const response = await rawRequest(`${h.url}/images/ranged`, { headers: { range: 'bytes=100000-' } });
      expect(response.status).toBe(416);
      expect(response.headers['content-range']).toBe('bytes */100000');
      expect(JSON.parse(response.body.toString())).toMatchObject({ statusCode: 416, code: 'RANGE_NOT_SATISFIABLE' });
    });

    it('several ranges, a malformed header, or a non-matching If-Range: the whole image with 200', async () => {
      for (const headers of <Record<string, string>[]>[
        { range: 'bytes=0-9,500-599' },
        { range: 'lines=1-2' },
        { range: 'bytes=abc' },
        { range: 'bytes=0-9', 'if-range': '"not-the-etag"' },
      ]) {
        const response = await rawRequest(`${h.url}/images/ranged`, { headers });
        expect(response.status).toBe(200);
        expect(response.body.equals(data)).toBe(true);
      }
    });

    it('If-Range with the current Last-Modified date: the range applies', async () => {
      const head = await rawRequest(`${h.url}/images/ranged`, { method: 'HEAD' });
      const response = await rawRequest(`${h.url}/images/ranged`, {
        headers: { range: 'bytes=10-19', 'if-range': head.headers['last-modified'] as string },
      });
      expect(response.status).toBe(206);
      expect(response.body.equals(data.subarray(10, 20))).toBe(true);
    });
  });

  it('a Range request on a miss is answered 206 from the fill, and the whole image is cached', async () => {
    const data = imageBytes('range-miss', 50_000);
    h.origin.images.set('range-miss', { kind: 'ok', data });
    const response = await rawRequest(`${h.url}/images/range-miss`, { headers: { range: 'bytes=0-9' } });
    expect(response.status).toBe(206);
    expect(response.headers['x-cache']).toBe('MISS');
    expect(response.headers['content-range']).toBe('bytes 0-9/50000');
    expect(response.body.equals(data.subarray(0, 10))).toBe(true);
    await waitFor(() => h.cache.isCached('range-miss')); // the fill goes on without the client
    const ranged = await rawRequest(`${h.url}/images/range-miss`, { headers: { range: 'bytes=0-9' } });
    expect(ranged.status).toBe(206);
    expect(ranged.headers['x-cache']).toBe('HIT');
    expect(ranged.body.equals(data.subarray(0, 10))).toBe(true);
    expect(h.origin.count('range-miss')).toBe(1);
  });

  it('100 concurrent misses of one id: exactly one origin request, every client gets every byte (from the fill, or from the cache once it committed)', async () => {
    const data = imageBytes('popular', 2 * MiB);
    h.origin.images.set('popular', { kind: 'ok', data, delayMs: 100 });
    const responses = await Promise.all(
      Array.from({ length: 100 }, async () => {
        const response = await fetch(`${h.url}/images/popular`);
        return { status: response.status, xCache: response.headers.get('x-cache'), body: await bodyOf(response) };
      }),
    );
    expect(h.origin.count('popular')).toBe(1);
    const want = createHash('sha256').update(data).digest('hex');
    for (const response of responses) {
      expect(response.status).toBe(200);
      expect(createHash('sha256').update(response.body).digest('hex')).toBe(want);
    }
    // Every request before the commit reads the fill (MISS); any after it reads the cache (HIT).
    expect(responses.filter((r) => r.xCache === 'MISS').length).toBeGreaterThanOrEqual(1);
    expect(responses.filter((r) => r.xCache === 'MISS' || r.xCache === 'HIT')).toHaveLength(100);
  });

  // The origin cuts its connection only once the client has the response headers (`manual` cut): a cut
  // before the server has sent any byte is another case (a 502). Each request uses its own id: a second
  // request of the same id could join the first one's fetch while it is still rolling back, and get its error.
  it('an origin failing mid-stream with Content-Length: the client sees a short, failed body; nothing is cached', async () => {
    const data = imageBytes('broken', 1 * MiB);
    h.origin.images.set('broken', { kind: 'cut', data, after: 300_000, manual: true });
    h.origin.images.set('broken-raw', { kind: 'cut', data, after: 300_000, manual: true });
    const response = await fetch(`${h.url}/images/broken`);
    expect(response.status).toBe(200);
    expect(response.headers.get('content-length')).toBe(String(data.length));
    expect(h.origin.cut('broken')).toBe(1);
    await expect(response.arrayBuffer()).rejects.toThrow();

    const raw = await rawRequest(`${h.url}/images/broken-raw`, { onResponse: () => h.origin.cut('broken-raw') });
    expect(raw.status).toBe(200);
    expect(raw.headers['content-length']).toBe(String(data.length));
    expect(raw.complete).toBe(false);
    expect(raw.body.length).toBeLessThan(data.length);

    // close() waits for the cache writes still rolling back.
    await h.server.close();
    for (const id of ['broken', 'broken-raw']) expect(await h.cache.isCached(id)).toBe(false);
    expect(await readdir(h.cacheDir)).not.toContain('broken');
    expect(await readdir(`${h.cacheDir}/incomplete`)).toEqual([]);
  });

  it('an origin failing mid-stream without Content-Length: chunked body without its last chunk; nothing is cached', async () => {
    const data = imageBytes('broken-chunked', 1 * MiB);
    h.origin.images.set('broken-chunked', { kind: 'cut', data, after: 300_000, chunked: true, manual: true });
    h.origin.images.set('broken-chunked-raw', { kind: 'cut', data, after: 300_000, chunked: true, manual: true });
    const response = await fetch(`${h.url}/images/broken-chunked`);
    expect(response.status).toBe(200);
    expect(response.headers.get('content-length')).toBeNull();
    expect(h.origin.cut('broken-chunked')).toBe(1);
    await expect(response.arrayBuffer()).rejects.toThrow();

    const raw = await rawRequest(`${h.url}/images/broken-chunked-raw`, { onResponse: () => h.origin.cut('broken-chunked-raw') });
    expect(raw.status).toBe(200);
    expect(raw.headers['transfer-encoding']).toBe('chunked');
    expect(raw.complete).toBe(false);
    await h.server.close();
    for (const id of ['broken-chunked', 'broken-chunked-raw']) expect(await h.cache.isCached(id)).toBe(false);
    expect(await readdir(`${h.cacheDir}/incomplete`)).toEqual([]);
  });

  it('an origin that fails before sending a byte: 502 with the origin error code', async () => {
    h.origin.images.set('down', { kind: 'status', status: 500 });
    const response = await fetch(`${h.url}/images/down`);
    expect(response.status).toBe(502);
    expect(response.headers.get('x-cache')).toBe('MISS');
    expect(await response.json()).toMatchObject({ statusCode: 502, code: 'CACHE_ORIGIN_ERROR' });
  });

  it('origin 404: 404 JSON with the origin error code', async () => {
    const response = await fetch(`${h.url}/images/unknown-image`);
    expect(response.status).toBe(404);
    expect(response.headers.get('content-type')).toMatch(/^application\/json/);
    expect(await response.json()).toMatchObject({ statusCode: 404, error: 'Not Found', code: 'CACHE_ORIGIN_ERROR' });
    expect(await h.cache.isCached('unknown-image')).toBe(false);
  });

  it('invalid ids: 400 with CACHE_INVALID_IMAGE_ID, and the origin is never asked', async () => {
    for (const path of ['/images/..', '/images/%2e%2e', '/images/.hidden', '/images/a%2Fb', '/images/incomplete', '/images/cache.db', `/images/${'x'.repeat(256)}`]) {
      const response = await rawRequest(h.url, { path });
      expect(response.status, path).toBe(400);
      expect(JSON.parse(response.body.toString())).toMatchObject({ statusCode: 400, code: 'CACHE_INVALID_IMAGE_ID' });
    }
    expect([...h.origin.requests.keys()]).toEqual([]);
  });
});

describe('without an origin', () => {
  it('a miss is a 404 CACHE_IMAGE_NOT_CACHED; a hit is served', async () => {
    const h = await startHarness();
    const { createCacheServer } = await import('../src/index.js');
    const server = await createCacheServer({ cache: h.cache, pruneInterval: 0, cleanInterval: 0 });
    try {
      const url = await server.listen();
      const missing = await fetch(`${url}/images/absent`);
      expect(missing.status).toBe(404);
      expect(await missing.json()).toMatchObject({ code: 'CACHE_IMAGE_NOT_CACHED' });
      await h.cache.cacheImage('present', Readable.from([Buffer.from('hello')]));
      const present = await fetch(`${url}/images/present`);
      expect(await present.text()).toBe('hello');
    } finally {
      await server.close();
      await h.close();
    }
  });
});
