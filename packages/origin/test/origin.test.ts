import { once } from 'node:events';
import { truncateSync } from 'node:fs';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { InvalidArgumentError, InvalidImageIdError } from '@cache/core';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { DirectoryOrigin, HttpOrigin, OriginError, createOrigin, redactUrl } from '../src/index.js';
import { LoopbackServer, collect, rejection, type Handler } from './helpers.js';

/** A real HTTP server on 127.0.0.1 whose behaviour each test sets. */
class TestOrigin extends LoopbackServer {
  handler: Handler = (_request, response) => response.end();
  readonly requests: IncomingMessage[] = [];
  constructor() {
    super((request, response) => {
      this.requests.push(request);
      this.handler(request, response);
    });
  }
}

const data = Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 7) % 256));

describe('HttpOrigin against a real HTTP server', () => {
  const origin = new TestOrigin();
  beforeAll(() => origin.start());
  afterAll(() => origin.stop());
  afterEach(() => {
    origin.requests.length = 0;
  });

  it('200 with Content-Length: the bytes and the size; asks for an unencoded body; encodes the id', async () => {
    origin.handler = (_request, response) => {
      response.writeHead(200, { 'content-length': data.length });
      response.end(data);
    };
    const http = new HttpOrigin(`${origin.url}/images/{id}/file`, { headers: { Authorization: 'Bearer t' } });
    const image = await http.open('a b');
    expect(image.size).toBe(data.length);
    expect((await collect(image.stream)).equals(data)).toBe(true);
    expect(origin.requests[0]?.url).toBe('/images/a%20b/file');
    expect(origin.requests[0]?.headers['accept-encoding']).toBe('identity');
    expect(origin.requests[0]?.headers.authorization).toBe('Bearer t');
  });

  it('200 chunked (no Content-Length): size undefined, all bytes', async () => {
    origin.handler = (_request, response) => {
      response.writeHead(200);
      response.write(data.subarray(0, 1000));
      setTimeout(() => response.end(data.subarray(1000)), 5);
    };
    const image = await new HttpOrigin(`${origin.url}/{id}`).open('img');
    expect(image.size).toBeUndefined();
    expect((await collect(image.stream)).equals(data)).toBe(true);
  });

  it('a compressed body: Content-Length is not the image size, so size is undefined', async () => {
    const { gzipSync } = await import('node:zlib');
    const gz = gzipSync(data);
    origin.handler = (_request, response) => {
      response.writeHead(200, { 'content-encoding': 'gzip', 'content-length': gz.length });
      response.end(gz);
    };
    const image = await new HttpOrigin(`${origin.url}/{id}`).open('img');
    expect(image.size).toBeUndefined();
    expect((await collect(image.stream)).equals(data)).toBe(true);
  });

  it('404 rejects with OriginError status 404 (notFound)', async () => {
    origin.handler = (_request, response) => {
      response.writeHead(404);
      response.end('no such image');
    };
    const error = await rejection(new HttpOrigin(`${origin.url}/{id}`).open('missing'));
    expect(OriginError.isInstance(error)).toBe(true);
    expect((error as OriginError).status).toBe(404);
    expect((error as OriginError).notFound).toBe(true);
    expect((error as OriginError).imageId).toBe('missing');
    expect((error as OriginError).code).toBe('CACHE_ORIGIN_ERROR');
  });

  it('500 rejects with OriginError status 500', async () => {
    origin.handler = (_request, response) => {
      response.writeHead(500);
      response.end();
    };
    const error = (await rejection(new HttpOrigin(`${origin.url}/{id}`, { retries: 0 }).open('x'))) as OriginError;
    expect(OriginError.isInstance(error)).toBe(true);
    expect(error.status).toBe(500);
    expect(error.notFound).toBe(false);
    expect(error.message).toMatch(/answered 500/);
  });

  it.each([
    ['120', '120'],
    [' 7 ', '7'],
    ['Wed, 21 Oct 2026 07:28:00 GMT', 'Wed, 21 Oct 2026 07:28:00 GMT'],
    ['soon', undefined],
    ['-5', undefined],
    ['1234567890', undefined],
  ])('503 with Retry-After %j: OriginError.retryAfter is %j (passed on by a server in front)', async (header, expected) => {
    origin.handler = (_request, response) => {
      response.writeHead(503, { 'retry-after': header });
      response.end();
    };
    const error = (await rejection(new HttpOrigin(`${origin.url}/{id}`, { retries: 0 }).open('x'))) as OriginError;
    expect(error.status).toBe(503);
    expect(error.retryAfter).toBe(expected);
  });

  it('an error status without Retry-After has retryAfter undefined', async () => {
    origin.handler = (_request, response) => {
      response.writeHead(429);
      response.end();
    };
    const error = (await rejection(new HttpOrigin(`${origin.url}/{id}`, { retries: 0 }).open('x'))) as OriginError;
    expect([error.status, error.retryAfter]).toEqual([429, undefined]);
  });

  it('a refused connection rejects with OriginError without status', async () => {
    const closed = new TestOrigin();
    await closed.start();
    const url = closed.url;
    await closed.stop();
    const error = (await rejection(new HttpOrigin(`${url}/{id}`, { retries: 0 }).open('x'))) as OriginError;
    expect(OriginError.isInstance(error)).toBe(true);
    expect(error.status).toBeUndefined();
  });

  it('connection cut mid-body (Content-Length): the stream errors with OriginError', async () => {
    origin.handler = (_request, response) => {
      response.writeHead(200, { 'content-length': data.length });
      response.write(data.subarray(0, 100_000), () => setTimeout(() => response.socket?.destroy(), 10));
    };
    const image = await new HttpOrigin(`${origin.url}/{id}`).open('cut');
    expect(image.size).toBe(data.length);
    const error = await rejection(collect(image.stream));
    expect(OriginError.isInstance(error)).toBe(true);
  });

  it('connection cut mid-body (chunked): the stream errors with OriginError', async () => {
    origin.handler = (_request, response) => {
      response.writeHead(200);
      response.write(data.subarray(0, 100_000), () => setTimeout(() => response.socket?.destroy(), 10));
    };
    const image = await new HttpOrigin(`${origin.url}/{id}`).open('cut');
    expect(image.size).toBeUndefined();
    const error = await rejection(collect(image.stream));
    expect(OriginError.isInstance(error)).toBe(true);
  });

  it('a body shorter than Content-Length, then a clean close: OriginError, not a short success', async () => {
    origin.handler = (_request, response) => {
      // Write the headers and part of the body by hand, then end the socket politely.
      response.socket?.end(`HTTP/1.1 200 OK\r\ncontent-length: 1000\r\nconnection: close\r\n\r\n${'x'.repeat(400)}`);
    };
    const image = await new HttpOrigin(`${origin.url}/{id}`).open('short');
    expect(image.size).toBe(1000);
    const error = await rejection(collect(image.stream));
    expect(OriginError.isInstance(error)).toBe(true);
  });

  it('no response headers within the timeout: OriginError saying so, no status', async () => {
    const pending: ServerResponse[] = [];
    origin.handler = (_request, response) => void pending.push(response);
    // The server never answers: only the timeout can end this.
    const error = (await rejection(new HttpOrigin(`${origin.url}/{id}`, { timeout: 150, retries: 0 }).open('slow'))) as OriginError;
    expect(OriginError.isInstance(error)).toBe(true);
    expect(error.status).toBeUndefined();
    expect(error.message).toMatch(/no response headers within 150 ms/);
    for (const response of pending) response.socket?.destroy();
  });

  it('a slow body after prompt headers is not a timeout', async () => {
    let sendBody: (() => void) | undefined;
    origin.handler = (_request, response) => {
      response.writeHead(200, { 'content-length': 3 });
      response.flushHeaders();
      sendBody = () => response.end('abc');
    };
    // Fake timers: the header timeout fires only when the test advances the clock, so a slow machine
    // cannot trip it before the headers arrive; then the clock goes far past it before the body is sent.
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    try {
      const image = await new HttpOrigin(`${origin.url}/{id}`, { timeout: 100 }).open('slow-body');
      vi.advanceTimersByTime(10_000);
      sendBody?.();
      expect((await collect(image.stream)).toString()).toBe('abc');
    } finally {
      vi.useRealTimers();
    }
  });

  it('caller abort before the headers rejects with the abort reason, not an OriginError', async () => {
    const pending: ServerResponse[] = [];
    const controller = new AbortController();
    // Aborted once the request has reached the server, which never answers: surely before the headers.
    origin.handler = (_request, response) => {
      pending.push(response);
      controller.abort();
    };
    const opening = new HttpOrigin(`${origin.url}/{id}`).open('x', { signal: controller.signal });
    const error = await rejection(opening);
    expect((error as Error).name).toBe('AbortError');
    expect(OriginError.isInstance(error)).toBe(false);
    for (const response of pending) response.socket?.destroy();
  });

  it('caller abort mid-body errors the stream with the abort reason and drops the connection', async () => {
    let closed: Promise<unknown> = Promise.resolve();
    origin.handler = (_request, response) => {
      closed = once(response, 'close');
      response.writeHead(200, { 'content-length': data.length });
      response.write(data.subarray(0, 1000));
    };
    const controller = new AbortController();
    const image = await new HttpOrigin(`${origin.url}/{id}`).open('x', { signal: controller.signal });
    const reading = rejection(collect(image.stream));
    setTimeout(() => controller.abort(new Error('client went away')), 20);
    const error = (await reading) as Error;
    expect(error.message).toBe('client went away');
    await closed; // the origin saw the connection go
  });

  it('an already aborted signal rejects at once without a request', async () => {
    const error = await rejection(new HttpOrigin(`${origin.url}/{id}`).open('x', { signal: AbortSignal.abort() }));
    expect((error as Error).name).toBe('AbortError');
    expect(origin.requests).toHaveLength(0);
  });

  it('destroying the stream closes the origin connection', async () => {
    let closed: Promise<unknown> = Promise.resolve();
    origin.handler = (_request, response) => {
      closed = once(response, 'close');
      response.writeHead(200);
      response.write(data);
    };
    const image = await new HttpOrigin(`${origin.url}/{id}`).open('x');
    image.stream.destroy();
    await closed;
    expect(image.stream.destroyed).toBe(true);
  });

  it('invalid ids are refused before any request', async () => {
    const http = new HttpOrigin(`${origin.url}/{id}`);
    for (const id of ['..', '.hidden', 'a/b', '', 'x\0y', 'incomplete']) {
      await expect(http.open(id)).rejects.toSatisfy(InvalidImageIdError.isInstance);
    }
    expect(origin.requests).toHaveLength(0);
  });

  it('rejects bad templates and timeouts with InvalidArgumentError', () => {
    for (const make of [
      () => new HttpOrigin('http://h/images'),
      () => new HttpOrigin('ftp://h/{id}'),
      () => new HttpOrigin('http://[bad/{id}'),
      () => new HttpOrigin('http://h/{id}', { timeout: 0 }),
      () => new HttpOrigin('http://h/{id}', { timeout: Number.NaN }),
    ]) {
      expect(make).toThrow(InvalidArgumentError);
    }
  });
});

describe('DirectoryOrigin', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'origin-dir-'));
    await writeFile(join(dir, 'image-1'), data);
    await mkdir(join(dir, 'a-directory'));
    await writeFile(join(dir, 'cache.db'), 'not an image');
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('a file: its bytes and its size', async () => {
    const image = await new DirectoryOrigin(dir).open('image-1');
    expect(image.size).toBe(data.length);
    expect((await collect(image.stream)).equals(data)).toBe(true);
  });

  it('a missing file or a directory: OriginError 404', async () => {
    const origin = new DirectoryOrigin(dir);
    for (const id of ['nope', 'a-directory']) {
      const error = (await rejection(origin.open(id))) as OriginError;
      expect(OriginError.isInstance(error)).toBe(true);
      expect(error.status).toBe(404);
    }
  });

  it('hostile ids are rejected with InvalidImageIdError and never reach the filesystem', async () => {
    const outside = await mkdtemp(join(tmpdir(), 'origin-outside-'));
    await writeFile(join(outside, 'secret'), 'secret');
    try {
      const origin = new DirectoryOrigin(join(outside, 'sub'));
      await mkdir(join(outside, 'sub'));
      for (const id of ['..', '../secret', '..\\secret', '/etc/passwd', '.', '.env', 'a\0b', 'cache.db', 'x'.repeat(256)]) {
        await expect(origin.open(id)).rejects.toSatisfy(InvalidImageIdError.isInstance);
      }
    } finally {
      await rm(outside, { recursive: true, force: true });
    }
  });

  it('a file that shrinks while being read errors the stream with OriginError', async () => {
    const path = join(dir, 'shrinking');
    await writeFile(path, data);
    const image = await new DirectoryOrigin(dir).open('shrinking');
    truncateSync(path, 10); // the same inode, before the stream's first read completes
    const error = await rejection(collect(image.stream));
    expect(OriginError.isInstance(error)).toBe(true);
    expect((error as Error).message).toMatch(/ended after 10 of 300000 bytes/);
  });

  it('an aborted signal: rejects before opening, and errors an open stream with the reason', async () => {
    const origin = new DirectoryOrigin(dir);
    await expect(origin.open('image-1', { signal: AbortSignal.abort() })).rejects.toMatchObject({ name: 'AbortError' });
    const controller = new AbortController();
    const image = await origin.open('image-1', { signal: controller.signal });
    controller.abort(new Error('stop'));
    await expect(collect(image.stream)).rejects.toThrow('stop');
  });

  it('follows a symlink the operator put in the directory (the directory is trusted, ids are not)', async () => {
    await symlink(join(dir, 'image-1'), join(dir, 'alias'));
    const image = await new DirectoryOrigin(dir).open('alias');
    expect(image.size).toBe(data.length);
    image.stream.destroy();
  });
});

describe('createOrigin', () => {
  it('http(s) templates make an HttpOrigin', () => {
    const origin = createOrigin('https://images.example/v2/images/{id}/file');
    expect(origin).toBeInstanceOf(HttpOrigin);
    expect((origin as HttpOrigin).urlFor('a/b'.replace('/', '_'))).toBe('https://images.example/v2/images/a_b/file');
    expect(origin.description).toBe('https://images.example/v2/images/{id}/file');
    expect(createOrigin('HTTP://h/{id}')).toBeInstanceOf(HttpOrigin);
  });

  it('file:// URLs and paths make a DirectoryOrigin with an absolute path', () => {
    const fromUrl = createOrigin(pathToFileURL('/srv/images').href);
    expect(fromUrl).toBeInstanceOf(DirectoryOrigin);
    expect((fromUrl as DirectoryOrigin).directory).toBe('/srv/images');
    const relative = createOrigin('images');
    expect((relative as DirectoryOrigin).directory).toBe(join(process.cwd(), 'images'));
    expect((createOrigin('/srv/x') as DirectoryOrigin).directory).toBe('/srv/x');
  });

  it('rejects empty specs, other schemes, templates without {id} and unusable file URLs with InvalidArgumentError', () => {
    for (const spec of ['', '   ', 's3://bucket/{id}', 'http://h/images', 'file://remote-host/srv']) {
      expect(() => createOrigin(spec)).toThrow(InvalidArgumentError);
    }
  });
});

describe('redactUrl and origin descriptions (what startup lines and logs show)', () => {
  it('drops user-info credentials and query values, keeping the parameters that hold {id}', () => {
    expect(redactUrl('https://user:secret@images.example/v2/{id}/file')).toBe('https://images.example/v2/{id}/file');
    expect(redactUrl('https://images.example/get?id={id}&sig=abc&exp=1#frag')).toBe('https://images.example/get?id={id}&sig=…&exp=…');
    expect(redactUrl('https://images.example/images/{id}')).toBe('https://images.example/images/{id}');
    expect(redactUrl('/srv/images')).toBe('/srv/images');
  });

  it('an HTTP and a Glance origin describe themselves without secrets', () => {
    const http = createOrigin('https://user:secret@images.example/images/{id}?token=t0k');
    expect(http.description).toBe('https://images.example/images/{id}?token=…');
    const glance = createOrigin('glance+https://admin:pw@glance.example:9292');
    expect(glance.description).not.toMatch(/admin|pw@/);
  });
});
