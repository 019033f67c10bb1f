import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ChecksumMismatchError, ImageCache, InvalidArgumentError, MemoryDriver } from '@cache/core';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { GlanceOrigin, OriginError, OriginLengthError, createOrigin, expectedChecksum } from '../src/index.js';
import { LoopbackServer, collect, rejection } from './helpers.js';

const TOKEN = 'gAAAAAB-test-token';

/** An image as the fake Glance holds it: its record fields, and how `/file` sends the bytes. */
interface FakeImage {
  data: Buffer;
  status?: string;
  /** Overrides of the record (a wrong size or hash, nulls). */
  record?: Record<string, unknown>;
  /** Send `/file` chunked, without Content-Length. */
  chunked?: boolean;
  /** Extra `/file` response headers. */
  headers?: Record<string, string>;
}

/**
 * A tiny Glance image API v2 on 127.0.0.1 (node:http): `GET /v2/images/{id}`
 * answers the image record as JSON, `GET /v2/images/{id}/file` the bytes with
 * `Content-Length` and `Content-MD5` (the hex checksum, as Glance sends it).
 * Both need `X-Auth-Token: TOKEN` (401 otherwise), like Glance behind Keystone.
 */
class FakeGlance extends LoopbackServer {
  readonly images = new Map<string, FakeImage>();
  readonly requests: { url: string; token: string | undefined }[] = [];
  constructor() {
    super((request, response) => this.#handle(request, response));
  }

  #handle(request: IncomingMessage, response: ServerResponse): void {
    const token = request.headers['x-auth-token'] as string | undefined;
    this.requests.push({ url: request.url ?? '', token });
    if (token !== TOKEN) {
      response.writeHead(401, { 'content-type': 'application/json', 'www-authenticate': `Keystone uri="${this.url}/identity"` });
      response.end(JSON.stringify({ error: { code: 401, title: 'Unauthorized', message: 'The request you have made requires authentication.' } }));
      return;
    }
    const match = /^\/v2\/images\/([^/]+)(\/file)?$/.exec(request.url ?? '');
    const id = match?.[1] === undefined ? undefined : decodeURIComponent(match[1]);
    const image = id === undefined ? undefined : this.images.get(id);
    if (image === undefined || request.method !== 'GET') {
      response.writeHead(404, { 'content-type': 'text/html' }).end('<html><body><h1>404 Not Found</h1></body></html>');
      return;
    }
    const checksum = createHash('md5').update(image.data).digest('hex');
    if (match?.[2] === undefined) {
      const record = {
        id,
        name: `image ${id}`,
        status: image.status ?? 'active',
        disk_format: 'qcow2',
        container_format: 'bare',
        visibility: 'public',
        size: image.data.length,
        virtual_size: null,
        checksum,
        os_hash_algo: 'sha512',
        os_hash_value: createHash('sha512').update(image.data).digest('hex'),
        file: `/v2/images/${id}/file`,
        self: `/v2/images/${id}`,
        schema: '/v2/schemas/image',
        ...image.record,
      };
      response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(record));
      return;
    }
    if ((image.status ?? 'active') !== 'active') {
      response.writeHead(204).end();
      return;
    }
    response.writeHead(200, {
      'content-type': 'application/octet-stream',
      'content-md5': checksum,
      ...(image.chunked === true ? {} : { 'content-length': String(image.data.length) }),
      ...image.headers,
    });
    response.end(image.data);
  }
}

const data = Buffer.from(Array.from({ length: 150_000 }, (_, i) => (i * 11 + 3) % 256));
const hex = (algorithm: string, bytes: Buffer) => createHash(algorithm).update(bytes).digest('hex');

const glance = new FakeGlance();
beforeAll(() => glance.start());
afterAll(() => glance.stop());
afterEach(() => {
  glance.images.clear();
  glance.requests.length = 0;
});

let cacheDir: string;
let cache: ImageCache;
beforeEach(async () => {
  cacheDir = await mkdtemp(join(tmpdir(), 'origin-glance-'));
  cache = await ImageCache.open({ driver: new MemoryDriver({ cacheDir }) });
});
afterEach(async () => {
  await cache.close();
  await rm(cacheDir, { recursive: true, force: true });
});

const authorized = () => new GlanceOrigin(glance.url, { headers: { 'X-Auth-Token': TOKEN } });

describe('GlanceOrigin against a Glance-shaped API', () => {
  it('without the token: OriginError 401 from the image record, and no /file request', async () => {
    glance.images.set('img', { data });
    const error = (await rejection(new GlanceOrigin(glance.url).open('img'))) as OriginError;
    expect(OriginError.isInstance(error)).toBe(true);
    expect(error.status).toBe(401);
    expect(error.notFound).toBe(false);
    const wrong = (await rejection(new GlanceOrigin(glance.url, { headers: { 'x-auth-token': 'nope' } }).open('img'))) as OriginError;
    expect(wrong.status).toBe(401);
    expect(glance.requests.map((r) => r.url)).toEqual(['/v2/images/img', '/v2/images/img']);
  });

  it('with the token: the record size and sha512 multihash are announced; both requests carry the token; the fill verifies', async () => {
    glance.images.set('img', { data });
    const image = await authorized().open('img');
    expect(image.expected).toEqual({
      length: data.length,
      lengthSource: 'glance',
      digest: { algorithm: 'sha512', hex: hex('sha512', data), source: 'glance' },
    });
    expect(image.verification).toBe('digest');
    expect(image.cacheable).toBe(true);
    expect(glance.requests).toEqual([
      { url: '/v2/images/img', token: TOKEN },
      { url: '/v2/images/img/file', token: TOKEN },
    ]);
    await cache.cacheImage('img', image.stream, { checksum: expectedChecksum(image) });
    expect(await cache.driver.getStoredChecksum?.('img')).toBe(`sha512:${hex('sha512', data)}`);
  });

  it('no multihash (an image from before Rocky), or one of an algorithm the cache cannot verify: the md5 checksum', async () => {
    glance.images.set('old', { data, record: { os_hash_algo: null, os_hash_value: null } });
    glance.images.set('sha384', { data, record: { os_hash_algo: 'sha384', os_hash_value: hex('sha384', data) } });
    for (const id of ['old', 'sha384']) {
      const image = await authorized().open(id);
      expect(image.expected.digest).toEqual({ algorithm: 'md5', hex: hex('md5', data), source: 'glance' });
      await cache.cacheImage(id, image.stream, { checksum: expectedChecksum(image) });
      expect(await cache.driver.getStoredChecksum?.(id)).toBe(hex('md5', data));
    }
  });

  it('a wrong os_hash_value: ChecksumMismatchError, nothing cached', async () => {
    glance.images.set('img', { data, record: { os_hash_value: hex('sha512', Buffer.from('other')) } });
    const image = await authorized().open('img');
    const error = await rejection(cache.cacheImage('img', image.stream, { checksum: expectedChecksum(image) }));
    expect(ChecksumMismatchError.isInstance(error)).toBe(true);
    expect(await cache.isCached('img')).toBe(false);
  });

  it('a body longer than the record size (sent chunked): OriginLengthError overlong, nothing cached', async () => {
    glance.images.set('img', { data, chunked: true, record: { size: 100_000 } });
    const image = await authorized().open('img');
    expect(image.expected.length).toBe(100_000);
    const error = (await rejection(cache.cacheImage('img', image.stream, { checksum: expectedChecksum(image) }))) as OriginLengthError;
    expect(OriginLengthError.isInstance(error)).toBe(true);
    expect(error.reason).toBe('overlong');
    expect(error.expectedLength).toBe(100_000);
    expect(await cache.isCached('img')).toBe(false);
  });

  it('a body shorter than the record size (sent chunked): OriginLengthError truncated', async () => {
    glance.images.set('img', { data, chunked: true, record: { size: 200_000 } });
    const image = await authorized().open('img');
    const error = (await rejection(collect(image.stream))) as OriginLengthError;
    expect(OriginLengthError.isInstance(error)).toBe(true);
    expect(error.reason).toBe('truncated');
    expect(error.receivedLength).toBe(data.length);
  });

  it('a record contradicting the /file headers (size vs Content-Length, checksum vs Content-MD5): OriginError at open', async () => {
    glance.images.set('size', { data, record: { size: 100_000 } });
    glance.images.set('md5', { data, headers: { 'content-md5': hex('md5', Buffer.from('other')) } });
    for (const [id, message] of [
      ['size', /glance length 100000 contradicts the content-length length 150000/],
      ['md5', /contradicts/],
    ] as const) {
      const error = (await rejection(authorized().open(id))) as OriginError;
      expect(OriginError.isInstance(error)).toBe(true);
      expect(error.status).toBeUndefined();
      expect(error.message).toMatch(message);
    }
  });

  it('an image that is not active: OriginError (not a 404) before any /file request', async () => {
    glance.images.set('queued', { data, status: 'queued', record: { size: null, checksum: null, os_hash_algo: null, os_hash_value: null } });
    const error = (await rejection(authorized().open('queued'))) as OriginError;
    expect(OriginError.isInstance(error)).toBe(true);
    expect(error.status).toBeUndefined();
    expect(error.message).toMatch(/"queued", not "active"/);
    expect(glance.requests.map((r) => r.url)).toEqual(['/v2/images/queued']);
  });

  it('a record whose body never completes: OriginError after the timeout (it covers the whole record)', async () => {
    const stalled = new FakeGlance();
    const pending: ServerResponse[] = [];
    stalled.server.removeAllListeners('request');
    stalled.server.on('request', (_request: IncomingMessage, response: ServerResponse) => {
      response.writeHead(200, { 'content-type': 'application/json' });
      response.write('{"status": "act');
      pending.push(response);
    });
    await stalled.start();
    try {
      const error = (await rejection(new GlanceOrigin(stalled.url, { timeout: 150, retries: 0 }).open('img'))) as OriginError;
      expect(OriginError.isInstance(error)).toBe(true);
      expect(error.status).toBeUndefined();
      expect(error.message).toMatch(/no complete answer within 150 ms/);
    } finally {
      for (const response of pending) response.socket?.destroy();
      await stalled.stop();
    }
  });

  it('an unknown image: OriginError 404', async () => {
    const error = (await rejection(authorized().open('nope'))) as OriginError;
    expect(error.notFound).toBe(true);
  });

  it('createOrigin("glance+http://...") makes a GlanceOrigin with the options', async () => {
    glance.images.set('img', { data });
    const origin = createOrigin(`glance+${glance.url}/`, { headers: { 'x-auth-token': TOKEN } });
    expect(origin).toBeInstanceOf(GlanceOrigin);
    expect(origin.description).toBe(`glance ${glance.url}`);
    const image = await origin.open('img');
    expect((await collect(image.stream)).equals(data)).toBe(true);
    expect(() => new GlanceOrigin('ftp://glance')).toThrow(InvalidArgumentError);
    expect(() => createOrigin('glance+ftp://glance')).toThrow(InvalidArgumentError);
  });
});
