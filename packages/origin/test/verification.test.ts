import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import type { IncomingMessage } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ChecksumMismatchError, ImageCache, MemoryDriver } from '@cache/core';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  DirectoryOrigin,
  HttpOrigin,
  OriginError,
  OriginLengthError,
  createOrigin,
  expectedChecksum,
  type OriginImage,
} from '../src/index.js';
import { LoopbackServer, collect, rejection, type Handler } from './helpers.js';

/** A real HTTP server on 127.0.0.1 whose behaviour each test sets; routes by path. */
class TestServer extends LoopbackServer {
  readonly routes = new Map<string, Handler>();
  readonly requests: IncomingMessage[] = [];
  constructor() {
    super((request, response) => {
      this.requests.push(request);
      const handler = this.routes.get(request.url ?? '');
      if (handler === undefined) response.writeHead(404).end('not here');
      else handler(request, response);
    });
  }
}

const data = Buffer.from(Array.from({ length: 200_000 }, (_, i) => (i * 13 + 5) % 256));
const other = Buffer.from('not the image');
const hex = (algorithm: string, bytes: Buffer) => createHash(algorithm).update(bytes).digest('hex');
const b64 = (algorithm: string, bytes: Buffer) => createHash(algorithm).update(bytes).digest('base64');

/** Answers with `body` and the given headers (a Content-Length unless `chunked`). */
function serve(body: Buffer, headers: Record<string, string> = {}, options: { chunked?: boolean } = {}): Handler {
  return (_request, response) => {
    response.writeHead(200, { ...(options.chunked === true ? {} : { 'content-length': String(body.length) }), ...headers });
    response.end(body);
  };
}

/** Writes a raw HTTP/1.1 response (headers and body as given) on the socket, then closes it cleanly. */
function raw(head: string, body: Buffer): Handler {
  return (_request, response) => {
    const socket = response.socket;
    if (socket === null) throw new Error('no socket');
    socket.end(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nconnection: close\r\n${head}\r\n`), body]));
  };
}

const server = new TestServer();
beforeAll(() => server.start());
afterAll(() => server.stop());
afterEach(() => {
  server.routes.clear();
  server.requests.length = 0;
});

let cacheDir: string;
let cache: ImageCache;
beforeEach(async () => {
  cacheDir = await mkdtemp(join(tmpdir(), 'origin-verify-'));
  cache = await ImageCache.open({ driver: new MemoryDriver({ cacheDir }) });
});
afterEach(async () => {
  await cache.close();
  await rm(cacheDir, { recursive: true, force: true });
});

/** Caches an opened image the way a server does: the announced digest as the checksum. */
async function fill(id: string, image: OriginImage): Promise<unknown> {
  try {
    await cache.cacheImage(id, image.stream, { checksum: expectedChecksum(image) });
    return undefined;
  } catch (error) {
    return error;
  }
}

describe('what an HTTP origin announces', () => {
  it('Content-Length alone: length verification, cacheable; the fill commits with no digest', async () => {
    server.routes.set('/img', serve(data));
    const image = await new HttpOrigin(`${server.url}/{id}`).open('img');
    expect(image.expected).toEqual({ length: data.length, lengthSource: 'content-length' });
    expect(image.size).toBe(data.length);
    expect(image.verification).toBe('length');
    expect(image.cacheable).toBe(true);
    expect(expectedChecksum(image)).toBeUndefined();
    expect(await fill('img', image)).toBeUndefined();
    expect(await cache.isCached('img')).toBe(true);
    expect(await cache.driver.getStoredChecksum?.('img')).toBeFalsy();
  });

  it.each([
    ['Repr-Digest', { 'repr-digest': `sha-256=:${b64('sha256', data)}:` }, 'sha256', 'repr-digest'],
    ['Repr-Digest with sha-256 and sha-512: the stronger', { 'repr-digest': `sha-256=:${b64('sha256', data)}:, sha-512=:${b64('sha512', data)}:` }, 'sha512', 'repr-digest'],
    ['Content-Digest', { 'content-digest': `sha-512=:${b64('sha512', data)}:` }, 'sha512', 'content-digest'],
    ['Digest (RFC 3230) SHA-256', { digest: `SHA-256=${b64('sha256', data)}` }, 'sha256', 'digest'],
    ['Digest (RFC 3230) with MD5 and SHA-512: the stronger', { digest: `MD5=${b64('md5', data)}, sha-512=${b64('sha512', data)}` }, 'sha512', 'digest'],
    ['Content-MD5', { 'content-md5': b64('md5', data) }, 'md5', 'content-md5'],
    ['Repr-Digest beats Content-MD5', { 'content-md5': b64('md5', data), 'repr-digest': `sha-256=:${b64('sha256', data)}:` }, 'sha256', 'repr-digest'],
  ])('%s: announced, verified by the cache and stored', async (_name, headers, algorithm, source) => {
    server.routes.set('/img', serve(data, headers));
    const image = await new HttpOrigin(`${server.url}/{id}`).open('img');
    expect(image.expected.digest).toEqual({ algorithm, hex: hex(algorithm, data), source });
    expect(image.verification).toBe('digest');
    expect(await fill('img', image)).toBeUndefined();
    const stored = await cache.driver.getStoredChecksum?.('img');
    expect(stored).toBe(algorithm === 'md5' ? hex('md5', data) : `${algorithm}:${hex(algorithm, data)}`);
  });

  it.each([
    ['Repr-Digest', { 'repr-digest': `sha-256=:${b64('sha256', other)}:` }],
    ['Repr-Digest sha-512', { 'repr-digest': `sha-512=:${b64('sha512', other)}:` }],
    ['Content-Digest', { 'content-digest': `sha-256=:${b64('sha256', other)}:` }],
    ['Digest SHA-256', { digest: `SHA-256=${b64('sha256', other)}` }],
    ['Digest MD5', { digest: `MD5=${b64('md5', other)}` }],
    ['Content-MD5', { 'content-md5': b64('md5', other) }],
  ])('a wrong %s: ChecksumMismatchError, nothing cached', async (_name, headers) => {
    server.routes.set('/img', serve(data, headers));
    const image = await new HttpOrigin(`${server.url}/{id}`).open('img');
    const error = await fill('img', image);
    expect(ChecksumMismatchError.isInstance(error)).toBe(true);
    expect(await cache.isCached('img')).toBe(false);
  });

  it('digests it cannot use are ignored: other algorithms, wrong lengths, unparsable dictionaries', async () => {
    for (const headers of <Record<string, string>[]>[
      { 'repr-digest': `sha=:${createHash('sha1').update(data).digest('base64')}:, unixsum=:AAAA:` },
      { 'repr-digest': `sha-256=:${b64('md5', data)}:` }, // 16 bytes is not a sha-256
      { 'repr-digest': `sha-256=${hex('sha256', data)}` }, // hex, not a byte sequence
      { 'repr-digest': `sha-256=:${b64('sha256', data)}:,` }, // trailing comma: the whole field is invalid
      { digest: `SHA=${createHash('sha1').update(data).digest('base64')}, SHA-256=not base64!` },
      { 'content-md5': 'garbage' },
    ]) {
      server.routes.set('/img', serve(data, headers));
      const image = await new HttpOrigin(`${server.url}/{id}`).open('img');
      expect(image.expected.digest).toBeUndefined();
      expect(image.verification).toBe('length');
      await collect(image.stream);
    }
  });

  it('an origin contradicting itself (two digests of one algorithm) is an OriginError at open', async () => {
    server.routes.set('/img', serve(data, { 'repr-digest': `sha-256=:${b64('sha256', data)}:`, digest: `SHA-256=${b64('sha256', other)}` }));
    const error = (await rejection(new HttpOrigin(`${server.url}/{id}`).open('img'))) as OriginError;
    expect(OriginError.isInstance(error)).toBe(true);
    expect(error.status).toBeUndefined();
    expect(error.message).toMatch(/contradicts/);
  });

  it('an encoded body: its headers describe the compressed bytes, so length and digests are not announced', async () => {
    const { gzipSync } = await import('node:zlib');
    const gz = gzipSync(data);
    server.routes.set('/img', serve(gz, { 'content-encoding': 'gzip', 'repr-digest': `sha-256=:${b64('sha256', gz)}:` }));
    const image = await new HttpOrigin(`${server.url}/{id}`).open('img');
    expect(image.expected).toEqual({});
    expect(image.verification).toBe('framing'); // the compressed body's Content-Length still frames it
    expect(image.cacheable).toBe(true);
    expect((await collect(image.stream)).equals(data)).toBe(true);
  });

  it('chunked without a length or digest: framing (a cut is an error), cacheable', async () => {
    server.routes.set('/img', serve(data, {}, { chunked: true }));
    const image = await new HttpOrigin(`${server.url}/{id}`).open('img');
    expect(image.expected).toEqual({});
    expect(image.verification).toBe('framing');
    expect(image.cacheable).toBe(true);
    expect((await collect(image.stream)).equals(data)).toBe(true);
  });
});

describe('close-delimited bodies and lying lengths', () => {
  it('a close-delimited body with nothing announced: verification none, not cacheable unless allowUnverified', async () => {
    server.routes.set('/img', raw('', data));
    const strict = await new HttpOrigin(`${server.url}/{id}`).open('img');
    expect(strict.expected).toEqual({});
    expect(strict.verification).toBe('none');
    expect(strict.cacheable).toBe(false);
    expect((await collect(strict.stream)).equals(data)).toBe(true);

    const lenient = await new HttpOrigin(`${server.url}/{id}`, { allowUnverified: true }).open('img');
    expect(lenient.verification).toBe('none');
    expect(lenient.cacheable).toBe(true);
    await collect(lenient.stream);
  });

  it('why: a close-delimited body cut short ends like a whole one (no error), so only the policy protects the cache', async () => {
    server.routes.set('/img', raw('', data.subarray(0, 70_000)));
    const image = await new HttpOrigin(`${server.url}/{id}`).open('img');
    expect(image.cacheable).toBe(false);
    expect((await collect(image.stream)).length).toBe(70_000); // no error: indistinguishable from the end
  });

  it('a close-delimited body with a digest: verified, so cacheable; cut short, the cache refuses it', async () => {
    server.routes.set('/whole', raw(`repr-digest: sha-256=:${b64('sha256', data)}:\r\n`, data));
    server.routes.set('/cut', raw(`repr-digest: sha-256=:${b64('sha256', data)}:\r\n`, data.subarray(0, 70_000)));
    const origin = new HttpOrigin(`${server.url}/{id}`);
    const whole = await origin.open('whole');
    expect(whole.verification).toBe('digest');
    expect(whole.cacheable).toBe(true);
    expect(await fill('whole', whole)).toBeUndefined();
    const cut = await origin.open('cut');
    expect(ChecksumMismatchError.isInstance(await fill('cut', cut))).toBe(true);
    expect(await cache.isCached('cut')).toBe(false);
  });

  it('Content-Length longer than the body (then a clean close): OriginLengthError truncated, nothing cached', async () => {
    server.routes.set('/img', raw(`content-length: ${data.length}\r\n`, data.subarray(0, 50_000)));
    const image = await new HttpOrigin(`${server.url}/{id}`).open('img');
    expect(image.verification).toBe('length');
    const error = (await fill('img', image)) as OriginLengthError;
    expect(OriginLengthError.isInstance(error)).toBe(true);
    expect(OriginError.isInstance(error)).toBe(true);
    expect(error.code).toBe('CACHE_ORIGIN_ERROR');
    expect(error.reason).toBe('truncated');
    expect(error.expectedLength).toBe(data.length);
    expect(error.receivedLength).toBe(50_000);
    expect(await cache.isCached('img')).toBe(false);
  });

  it('Content-Length shorter than the body: HTTP ends the message at Content-Length; a digest then catches it', async () => {
    // On the wire this is a 1000-byte response followed by junk: fetch (any HTTP client) stops at
    // Content-Length. Without a digest the first 1000 bytes are all the origin said the image is.
    server.routes.set('/plain', raw('content-length: 1000\r\n', data));
    const plain = await new HttpOrigin(`${server.url}/{id}`).open('plain');
    expect((await collect(plain.stream)).equals(data.subarray(0, 1000))).toBe(true);

    server.routes.set('/digest', raw(`content-length: 1000\r\nrepr-digest: sha-256=:${b64('sha256', data)}:\r\n`, data));
    const withDigest = await new HttpOrigin(`${server.url}/{id}`).open('digest');
    expect(ChecksumMismatchError.isInstance(await fill('digest', withDigest))).toBe(true);
    expect(await cache.isCached('digest')).toBe(false);
  });
  // A body longer than a length announced elsewhere (Glance's size) is in glance.test.ts: overlong.
});

describe('checksum manifest', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'origin-manifest-'));
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  const manifestText = [
    '# sha256sum images/*',
    `${hex('sha256', other)}  images/unrelated`,
    `${hex('sha256', data)}  images/img`,
    `${hex('md5', data)} *md5-one`,
    `sha512:${hex('sha512', data)}  ./prefixed`,
    '',
  ].join('\n');

  it('a manifest file: the digest of the line naming the id (by name or as the last path segment)', async () => {
    await writeFile(join(dir, 'SHA256SUMS'), manifestText);
    server.routes.set('/img', serve(data, {}, { chunked: true }));
    server.routes.set('/md5-one', serve(data));
    server.routes.set('/prefixed', serve(data));
    server.routes.set('/absent', serve(data));
    const origin = new HttpOrigin(`${server.url}/{id}`, { manifest: join(dir, 'SHA256SUMS') });
    const image = await origin.open('img');
    expect(image.expected.digest).toEqual({ algorithm: 'sha256', hex: hex('sha256', data), source: 'manifest' });
    expect(image.verification).toBe('digest');
    expect(await fill('img', image)).toBeUndefined();
    expect((await origin.open('md5-one')).expected.digest).toMatchObject({ algorithm: 'md5', source: 'manifest' });
    expect((await origin.open('prefixed')).expected.digest).toMatchObject({ algorithm: 'sha512', source: 'manifest' });
    const absent = await origin.open('absent'); // not in the manifest: whatever the response announces
    expect(absent.expected.digest).toBeUndefined();
    expect(absent.verification).toBe('length');
    for (const opened of [absent]) opened.stream.destroy();
  });

  it('a wrong digest in the manifest: ChecksumMismatchError, nothing cached (also for a directory origin)', async () => {
    await writeFile(join(dir, 'SUMS'), `${hex('sha256', other)}  img\n`);
    server.routes.set('/img', serve(data));
    const http = await new HttpOrigin(`${server.url}/{id}`, { manifest: join(dir, 'SUMS') }).open('img');
    expect(ChecksumMismatchError.isInstance(await fill('img', http))).toBe(true);

    await writeFile(join(dir, 'img'), data);
    const local = await new DirectoryOrigin(dir, { manifest: join(dir, 'SUMS') }).open('img');
    expect(local.expected).toEqual({ length: data.length, lengthSource: 'file', digest: { algorithm: 'sha256', hex: hex('sha256', other), source: 'manifest' } });
    expect(ChecksumMismatchError.isInstance(await fill('img', local))).toBe(true);
    expect(await cache.isCached('img')).toBe(false);
  });

  it('a manifest URL, fetched with the origin headers; a file: URL', async () => {
    server.routes.set('/SHA256SUMS', (request, response) => {
      if (request.headers.authorization !== 'Bearer t') response.writeHead(401).end();
      else response.end(manifestText);
    });
    server.routes.set('/img', serve(data));
    const image = await new HttpOrigin(`${server.url}/{id}`, { manifest: `${server.url}/SHA256SUMS`, headers: { authorization: 'Bearer t' } }).open('img');
    expect(image.expected.digest).toMatchObject({ algorithm: 'sha256', source: 'manifest' });
    await collect(image.stream);

    await writeFile(join(dir, 'SUMS'), manifestText);
    const viaFileUrl = await createOrigin(`${server.url}/{id}`, { manifest: pathToFileURL(join(dir, 'SUMS')).href }).open('img');
    expect(viaFileUrl.expected.digest).toMatchObject({ algorithm: 'sha256', source: 'manifest' });
    await collect(viaFileUrl.stream);
  });

  it('a manifest that cannot be used fails the open with an OriginError that is not a 404, before the image is requested', async () => {
    await writeFile(join(dir, 'sha1'), `${createHash('sha1').update(data).digest('hex')}  img\n`);
    await writeFile(join(dir, 'contradicting'), `${hex('sha256', data)}  img\n${hex('sha256', other)}  a/img\n`);
    await writeFile(join(dir, 'garbage'), 'this is not a manifest\n');
    server.routes.set('/img', serve(data));
    for (const [manifest, message] of [
      [join(dir, 'missing'), /cannot read checksum manifest/],
      [`${server.url}/no-such-manifest`, /cannot read checksum manifest.*404/],
      [join(dir, 'sha1'), /40-character digest is not md5, sha256 or sha512/],
      [join(dir, 'contradicting'), /contradicts an earlier line/],
      [join(dir, 'garbage'), /line 1 is not/],
    ] as const) {
      const error = (await rejection(new HttpOrigin(`${server.url}/{id}`, { manifest }).open('img'))) as OriginError;
      expect(OriginError.isInstance(error)).toBe(true);
      expect(error.status).toBeUndefined();
      expect(error.message).toMatch(message);
    }
    expect(server.requests.filter((request) => request.url === '/img')).toHaveLength(0);
  });
});
