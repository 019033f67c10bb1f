import type { IncomingMessage, ServerResponse } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { InvalidArgumentError, OriginError } from '@cache/core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { GlanceOrigin, HttpOrigin, OriginLengthError, OriginTimeoutError } from '../src/index.js';
import { retryWait } from '../src/request.js';
import { LoopbackServer, collect, rejection, type Handler } from './helpers.js';

/**
 * A real HTTP server on 127.0.0.1 whose behaviour each test sets: `handler`
 * gets the request's number (0 for the first) too, so a test can fail the
 * first requests and answer a later one.
 */
class TestOrigin extends LoopbackServer {
  handler: (request: IncomingMessage, response: ServerResponse, index: number) => void = (_request, response) => response.end();
  readonly requests: IncomingMessage[] = [];
  /** Responses left open by a test (a silent origin); cut at the end of each test. */
  readonly held: ServerResponse[] = [];
  constructor() {
    super(((request, response) => {
      const index = this.requests.length;
      this.requests.push(request);
      this.handler(request, response, index);
    }) satisfies Handler);
  }
}

const data = Buffer.from(Array.from({ length: 200_000 }, (_, i) => (i * 13) % 256));

function answer(response: ServerResponse, body: Buffer = data): void {
  response.writeHead(200, { 'content-length': body.length });
  response.end(body);
}

describe('HttpOrigin: the body idle timeout and the total timeout', () => {
  const origin = new TestOrigin();
  beforeAll(() => origin.start());
  afterAll(() => origin.stop());
  afterEach(() => {
    for (const response of origin.held.splice(0)) response.socket?.destroy();
    origin.requests.length = 0;
  });

  it('an origin that goes silent mid-body: the stream fails with an OriginTimeoutError (body-idle), the request is not retried', async () => {
    origin.handler = (_request, response) => {
      response.writeHead(200, { 'content-length': data.length });
      response.write(data.subarray(0, 1000));
      origin.held.push(response); // and nothing more, ever
    };
    const image = await new HttpOrigin(`${origin.url}/{id}`, { bodyIdleTimeout: 200, retries: 3, retryDelay: 1 }).open('silent');
    const error = await rejection(collect(image.stream));
    expect(OriginTimeoutError.isInstance(error)).toBe(true);
    expect(OriginError.isInstance(error)).toBe(true);
    expect((error as OriginTimeoutError).timeout).toBe('body-idle');
    expect((error as OriginTimeoutError).timeoutMs).toBe(200);
    expect((error as OriginError).status).toBeUndefined();
    expect((error as Error).message).toMatch(/no body byte for 200 ms after 1000 bytes \(body idle timeout\)/);
    expect(origin.requests).toHaveLength(1);
  });

  it('an origin silent right after its headers trips the idle timeout too', async () => {
    origin.handler = (_request, response) => {
      response.writeHead(200, { 'content-length': data.length });
      response.flushHeaders();
      origin.held.push(response);
    };
    const image = await new HttpOrigin(`${origin.url}/{id}`, { bodyIdleTimeout: 150 }).open('silent');
    const error = (await rejection(collect(image.stream))) as OriginTimeoutError;
    expect(error.timeout).toBe('body-idle');
    expect(error.message).toMatch(/after 0 bytes/);
  });

  it('a consumer that stops reading is not an idle origin: the whole body arrives', async () => {
    const big = Buffer.alloc(48 * 1024 * 1024, 7);
    let sent = false;
    origin.handler = (_request, response) => {
      response.on('finish', () => (sent = true));
      answer(response, big);
    };
    const image = await new HttpOrigin(`${origin.url}/{id}`, { bodyIdleTimeout: 300 }).open('big');
    // Nobody reads for several idle timeouts: the buffers fill, the origin is held back by backpressure.
    await sleep(1200);
    expect(sent).toBe(false); // the origin could not send it all: the pause really held it back
    expect((await collect(image.stream)).equals(big)).toBe(true);
  });

  it('bodyIdleTimeout 0 turns it off (the headers timeout still applies to the headers)', async () => {
    origin.handler = (_request, response) => {
      response.writeHead(200, { 'content-length': 3 });
      response.write('a');
      setTimeout(() => response.end('bc'), 300);
    };
    const image = await new HttpOrigin(`${origin.url}/{id}`, { bodyIdleTimeout: 0 }).open('slow');
    expect((await collect(image.stream)).toString()).toBe('abc');
  });

  it('a trickling body that never goes idle is cut by the total timeout (OriginTimeoutError total)', async () => {
    origin.handler = (_request, response) => {
      response.writeHead(200, { 'content-length': data.length });
      origin.held.push(response);
      const drip = setInterval(() => {
        if (response.destroyed) clearInterval(drip);
        else response.write('x');
      }, 20);
      response.on('close', () => clearInterval(drip));
    };
    const image = await new HttpOrigin(`${origin.url}/{id}`, { bodyIdleTimeout: 10_000, totalTimeout: 300, retries: 3 }).open('drip');
    const error = (await rejection(collect(image.stream))) as OriginTimeoutError;
    expect(OriginTimeoutError.isInstance(error)).toBe(true);
    expect(error.timeout).toBe('total');
    expect(error.message).toMatch(/not complete within 300 ms \(total timeout\)/);
    expect(origin.requests).toHaveLength(1);
  });

  it('the total timeout also bounds the retries: an origin that never answers fails at it, with no further request', async () => {
    origin.handler = (_request, response) => {
      response.writeHead(503, { 'retry-after': '5' });
      response.end();
    };
    const error = (await rejection(
      new HttpOrigin(`${origin.url}/{id}`, { totalTimeout: 300, retries: 5, maxRetryDelay: 10_000 }).open('busy'),
    )) as OriginTimeoutError;
    expect(error.timeout).toBe('total');
    expect(origin.requests).toHaveLength(1);
  });
});

describe('HttpOrigin: retries before the first byte', () => {
  const origin = new TestOrigin();
  beforeAll(() => origin.start());
  afterAll(() => origin.stop());
  afterEach(() => {
    for (const response of origin.held.splice(0)) response.socket?.destroy();
    origin.requests.length = 0;
  });

  it('an origin failing twice (503, then 500) then answering: retried, the image arrives, exactly 3 requests', async () => {
    origin.handler = (_request, response, index) => {
      if (index < 2) {
        response.writeHead(index === 0 ? 503 : 500);
        response.end('busy');
      } else answer(response);
    };
    const image = await new HttpOrigin(`${origin.url}/{id}`, { retries: 2, retryDelay: 10 }).open('img');
    expect((await collect(image.stream)).equals(data)).toBe(true);
    expect(origin.requests).toHaveLength(3);
  });

  it('connection resets and 429 before the headers are retried too', async () => {
    origin.handler = (_request, response, index) => {
      if (index === 0) response.socket?.destroy();
      else if (index === 1) {
        response.writeHead(429, { 'retry-after': '0' });
        response.end();
      } else answer(response);
    };
    const image = await new HttpOrigin(`${origin.url}/{id}`, { retries: 2, retryDelay: 10 }).open('img');
    expect((await collect(image.stream)).equals(data)).toBe(true);
    expect(origin.requests).toHaveLength(3);
  });

  it('no headers within the headers timeout: retried, and the second answer is taken', async () => {
    origin.handler = (_request, response, index) => {
      if (index === 0) origin.held.push(response);
      else answer(response);
    };
    const image = await new HttpOrigin(`${origin.url}/{id}`, { headersTimeout: 300, retries: 1, retryDelay: 1 }).open('img');
    expect((await collect(image.stream)).equals(data)).toBe(true);
    expect(origin.requests).toHaveLength(2);
  });

  it('retries run out: the last failure is thrown, after retries + 1 requests', async () => {
    origin.handler = (_request, response) => {
      response.writeHead(502);
      response.end();
    };
    const error = (await rejection(new HttpOrigin(`${origin.url}/{id}`, { retries: 3, retryDelay: 1 }).open('img'))) as OriginError;
    expect(error.status).toBe(502);
    expect(origin.requests).toHaveLength(4);
  });

  it('a 404 is requested once, whatever the retries', async () => {
    origin.handler = (_request, response) => {
      response.writeHead(404);
      response.end('no such image');
    };
    const error = (await rejection(new HttpOrigin(`${origin.url}/{id}`, { retries: 5, retryDelay: 1 }).open('missing'))) as OriginError;
    expect(error.notFound).toBe(true);
    expect(origin.requests).toHaveLength(1);
  });

  it('another 4xx (403) is not retried either', async () => {
    origin.handler = (_request, response) => {
      response.writeHead(403);
      response.end();
    };
    const error = (await rejection(new HttpOrigin(`${origin.url}/{id}`, { retries: 5, retryDelay: 1 }).open('x'))) as OriginError;
    expect(error.status).toBe(403);
    expect(origin.requests).toHaveLength(1);
  });

  it('a body cut after bytes flowed is not retried: the stream fails, one request', async () => {
    origin.handler = (_request, response) => {
      response.writeHead(200, { 'content-length': data.length });
      response.write(data.subarray(0, 50_000), () => setTimeout(() => response.socket?.destroy(), 10));
    };
    const image = await new HttpOrigin(`${origin.url}/{id}`, { retries: 5, retryDelay: 1 }).open('cut');
    const error = await rejection(collect(image.stream));
    expect(OriginLengthError.isInstance(error)).toBe(true);
    expect(origin.requests).toHaveLength(1);
  });

  it('a Retry-After longer than maxRetryDelay is not waited for: the 503 and its Retry-After are thrown after one request', async () => {
    origin.handler = (_request, response) => {
      response.writeHead(503, { 'retry-after': '120' });
      response.end();
    };
    const error = (await rejection(new HttpOrigin(`${origin.url}/{id}`, { retries: 3, maxRetryDelay: 5_000 }).open('x'))) as OriginError;
    expect([error.status, error.retryAfter]).toEqual([503, '120']);
    expect(origin.requests).toHaveLength(1);
  });

  it('a caller abort during a retry wait rejects with its reason, with no further request', async () => {
    const controller = new AbortController();
    origin.handler = (_request, response) => {
      response.writeHead(503, { 'retry-after': '5' });
      response.end();
      setTimeout(() => controller.abort(new Error('client went away')), 20);
    };
    const error = await rejection(
      new HttpOrigin(`${origin.url}/{id}`, { retries: 3, maxRetryDelay: 10_000 }).open('x', { signal: controller.signal }),
    );
    expect((error as Error).message).toBe('client went away');
    expect(OriginError.isInstance(error)).toBe(false);
    expect(origin.requests).toHaveLength(1);
  });

  it('retries: 0 makes a single request', async () => {
    origin.handler = (_request, response) => {
      response.writeHead(503);
      response.end();
    };
    await rejection(new HttpOrigin(`${origin.url}/{id}`, { retries: 0 }).open('x'));
    expect(origin.requests).toHaveLength(1);
  });

  it('a Glance origin retries its image record and its /file alike', async () => {
    const record = JSON.stringify({ status: 'active', size: data.length });
    origin.handler = (request, response, index) => {
      if (index === 0 || index === 2) {
        response.writeHead(503);
        response.end();
      } else if (request.url === '/v2/images/img') {
        response.writeHead(200, { 'content-type': 'application/json' });
        response.end(record);
      } else answer(response);
    };
    const image = await new GlanceOrigin(origin.url, { retries: 1, retryDelay: 1 }).open('img');
    expect((await collect(image.stream)).equals(data)).toBe(true);
    expect(origin.requests.map((request) => request.url)).toEqual(['/v2/images/img', '/v2/images/img', '/v2/images/img/file', '/v2/images/img/file']);
  });
});

describe('retryWait: exponential back-off with jitter, capped; Retry-After', () => {
  const error = (retryAfter?: string) => new OriginError('x', 'busy', { status: 503, ...(retryAfter === undefined ? {} : { retryAfter }) });
  const settings = { headers: {}, timeout: 1000, retryDelay: 100, maxRetryDelay: 1000 };

  it('doubles per attempt, between half and all of it, and stops growing at the cap', () => {
    expect([0, 1, 2, 3, 4, 10].map((attempt) => retryWait(error(), attempt, settings, () => 1))).toEqual([100, 200, 400, 800, 1000, 1000]);
    expect([0, 1, 2, 3, 4, 10].map((attempt) => retryWait(error(), attempt, settings, () => 0))).toEqual([50, 100, 200, 400, 500, 500]);
  });

  it('waits at least the Retry-After (seconds or a date); one beyond the cap means no retry', () => {
    expect(retryWait(error('1'), 0, settings, () => 0)).toBe(1000);
    expect(retryWait(error('0'), 0, settings, () => 0)).toBe(50);
    expect(retryWait(error('2'), 0, settings, () => 0)).toBeUndefined();
    expect(retryWait(error(new Date(Date.now() + 3_600_000).toUTCString()), 0, settings, () => 0)).toBeUndefined();
  });
});

describe('option validation', () => {
  it.each([
    ['headersTimeout', 0],
    ['headersTimeout', -1],
    ['timeout', Number.NaN],
    ['bodyIdleTimeout', -1],
    ['bodyIdleTimeout', '30s'],
    ['totalTimeout', Number.POSITIVE_INFINITY],
    ['totalTimeout', 2 ** 31],
    ['retries', -1],
    ['retries', 1.5],
    ['retries', 101],
    ['retries', '3'],
    ['retryDelay', -5],
    ['maxRetryDelay', Number.NaN],
  ])('%s: %j is an InvalidArgumentError naming it', (name, value) => {
    let error: unknown;
    try {
      new HttpOrigin('http://h/{id}', { [name]: value } as never);
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect((error as Error).message).toContain(name);
  });

  it('retryDelay above maxRetryDelay is refused; a Glance origin checks the same options', () => {
    expect(() => new HttpOrigin('http://h/{id}', { retryDelay: 2000, maxRetryDelay: 1000 })).toThrow(InvalidArgumentError);
    expect(() => new GlanceOrigin('http://h', { bodyIdleTimeout: -1 })).toThrow(InvalidArgumentError);
  });

  it('accepts 0 for bodyIdleTimeout, totalTimeout, retries and retryDelay (off / none)', () => {
    expect(() => new HttpOrigin('http://h/{id}', { bodyIdleTimeout: 0, totalTimeout: 0, retries: 0, retryDelay: 0 })).not.toThrow();
  });
});
