import { once } from 'node:events';
import { readdir } from 'node:fs/promises';
import { request, type IncomingMessage } from 'node:http';
import { connect } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { imageBytes, rawRequest, startHarness, waitFor, type Harness, type RawResponse } from './helpers.js';

/** Starts a GET and resolves once `bytes` body bytes have arrived; `done` settles with how the response ended. */
function startDownload(url: string, bytes: number): Promise<{ received: () => number; done: Promise<{ complete: boolean; received: number }> }> {
  return new Promise((resolveStarted, reject) => {
    const req = request(url, (res) => {
      let received = 0;
      let started = false;
      const done = new Promise<{ complete: boolean; received: number }>((resolve) => {
        res.on('end', () => resolve({ complete: res.complete, received }));
        res.on('error', () => resolve({ complete: false, received }));
        res.on('aborted', () => resolve({ complete: false, received }));
        res.on('close', () => resolve({ complete: res.complete, received }));
      });
      res.on('data', (chunk: Buffer) => {
        received += chunk.length;
        if (!started && received >= bytes) {
          started = true;
          resolveStarted({ received: () => received, done });
        }
      });
    });
    req.on('error', reject);
    req.end();
  });
}

describe('graceful shutdown', () => {
  let h: Harness | undefined;
  afterEach(async () => {
    await h?.close();
    h = undefined;
  });

  it('lets a response already streaming finish within the timeout, and refuses new connections meanwhile', async () => {
    // The timeout only bounds a response that never ends: generous, so that a loaded machine never reaches it.
    h = await startHarness({ shutdownTimeout: 30_000 });
    const data = imageBytes('slow-ok', 500_000);
    // The origin sends the headers and a first part, then holds the rest until the server is closing.
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    h.origin.images.set('slow-ok', { kind: 'ok', data, chunked: false, until: held, first: 100_000 });
    const download = await startDownload(`${h.url}/images/slow-ok`, 50_000); // its status line and bytes are out
    const closing = h.server.close();
    const listener = h.server.app.server;
    await waitFor(() => !listener.listening); // close() first stops the workers, then the listener
    await expect(fetch(`${h.url}/healthz`)).rejects.toThrow(); // no longer accepting connections
    release();
    const result = await download.done;
    await closing;
    expect(result).toEqual({ complete: true, received: data.length });
    expect(await h.cache.isCached('slow-ok')).toBe(true);
  });

  it('destroys a response still running after the timeout; the partial write is rolled back, nothing half-written is active', async () => {
    h = await startHarness({ shutdownTimeout: 150 });
    const data = imageBytes('stuck', 1_000_000);
    h.origin.images.set('stuck', { kind: 'stall', data, after: 200_000 });
    const download = await startDownload(`${h.url}/images/stuck`, 100_000);
    expect(await readdir(`${h.cacheDir}/incomplete`)).toEqual(['stuck']); // being written right now

    // The origin never sends the rest: close() returns only because it destroys the response after shutdownTimeout.
    await h.server.close();

    const ended = await download.done;
    expect(ended.complete).toBe(false);
    expect(ended.received).toBeLessThan(data.length);
    expect(await h.cache.isCached('stuck')).toBe(false);
    const root = (await readdir(h.cacheDir)).filter((name) => !name.startsWith('cache.db'));
    expect(root.sort()).toEqual(['incomplete', 'invalid', 'queue']);
    expect(await readdir(`${h.cacheDir}/incomplete`)).toEqual([]);
    expect(await readdir(`${h.cacheDir}/invalid`)).toEqual(['stuck']);
    expect(await h.cache.getCachedImages()).toEqual([]);
  });

  it('answers a client whose miss waits for the origin\'s headers 503 with Retry-After, a whole response, and aborts the origin request', async () => {
    h = await startHarness({ shutdownTimeout: 30_000 });
    h.origin.images.set('silent', { kind: 'silent' }); // never sends even its headers
    const atOrigin = once(h.origin.server, 'request');
    let head: IncomingMessage | undefined;
    const response = rawRequest(`${h.url}/images/silent`, { onResponse: (res) => (head = res) });
    const [, originRes] = (await atOrigin) as [IncomingMessage, unknown];
    const originClosed = once(originRes as NodeJS.EventEmitter, 'close');

    const closing = h.server.close();
    const result: RawResponse = await response; // rejects on an empty reply ("socket hang up")
    expect(`HTTP/${head?.httpVersion} ${result.status} ${head?.statusMessage}`).toBe('HTTP/1.1 503 Service Unavailable');
    expect(result.complete).toBe(true);
    expect(result.error).toBeUndefined();
    expect(result.headers['retry-after']).toBe('30');
    expect(result.headers['connection']).toBe('close');
    expect(result.headers['etag']).toBeUndefined();
    expect(JSON.parse(result.body.toString())).toMatchObject({ statusCode: 503, code: 'SHUTTING_DOWN' });
    await originClosed; // the origin request was aborted, not left to the timeout
    await closing;
    expect(await h.cache.isCached('silent')).toBe(false);
    expect(await readdir(`${h.cacheDir}/incomplete`)).toEqual([]);
  });

  it('a second client of a fill that is streaming streams too: both finish within the timeout, one origin request, cached', async () => {
    h = await startHarness({ shutdownTimeout: 30_000 });
    const data = imageBytes('shared', 400_000);
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    h.origin.images.set('shared', { kind: 'ok', data, until: held, first: 100_000 });
    const first = await startDownload(`${h.url}/images/shared`, 50_000);
    const second = await startDownload(`${h.url}/images/shared`, 50_000); // a reader of the same fill, not a waiter
    const closing = h.server.close();
    release();
    const ended = await Promise.all([first.done, second.done]);
    await closing;
    expect(ended).toEqual([
      { complete: true, received: data.length },
      { complete: true, received: data.length },
    ]);
    expect(h.origin.count('shared')).toBe(1);
    expect(await h.cache.isCached('shared')).toBe(true);
  });

  it('every client waiting for the origin\'s headers gets 503 with Retry-After at once; the fill is rolled back', async () => {
    const lines: string[] = [];
    h = await startHarness({ shutdownTimeout: 30_000, logger: { level: 'info', stream: { write: (line: string) => void lines.push(line) } } });
    h.origin.images.set('silent', { kind: 'silent' });
    const atOrigin = once(h.origin.server, 'request');
    const waiting = [rawRequest(`${h.url}/images/silent`), rawRequest(`${h.url}/images/silent`)];
    await atOrigin;
    const incoming = () => lines.filter((line) => line.includes('incoming request') && line.includes('/images/silent')).length;
    await waitFor(() => incoming() === 2); // both are in the server, waiting on the one fill
    await h.server.close();
    for (const refused of await Promise.all(waiting)) {
      expect(refused.status).toBe(503);
      expect(refused.complete).toBe(true);
      expect(refused.headers['retry-after']).toBe('30');
      expect(JSON.parse(refused.body.toString())).toMatchObject({ code: 'SHUTTING_DOWN' });
    }
    expect(h.origin.count('silent')).toBe(1);
    expect(await h.cache.isCached('silent')).toBe(false);
    expect(await readdir(`${h.cacheDir}/incomplete`)).toEqual([]);
  });

  it('a fill whose only client left is stopped at once by close(): rolled back, without waiting for the timeout', async () => {
    h = await startHarness({ shutdownTimeout: 600_000 }); // close() would time out the test if it waited for it
    const data = imageBytes('left', 1_000_000);
    h.origin.images.set('left', { kind: 'stall', data, after: 200_000 });
    const req = request(`${h.url}/images/left`);
    const gotBytes = new Promise<void>((resolve) => {
      req.on('response', (res: IncomingMessage) => res.once('data', () => resolve()));
    });
    req.on('error', () => undefined);
    req.end();
    await gotBytes;
    req.destroy(); // the client leaves; the fill goes on (the origin stalls)
    await waitFor(async () => (await h?.cache.statFile('left', 'incomplete')) !== null);
    await h.server.close();
    expect(await h.cache.isCached('left')).toBe(false);
    expect(await readdir(`${h.cacheDir}/incomplete`)).toEqual([]);
    expect(await readdir(`${h.cacheDir}/invalid`)).toEqual(['left']);
  });

  // The second request: a probe, and a hit of an entry the server remembers (which a direct hit would answer, ADR 0008).
  it.each(['/healthz', '/images/small'])('a request arriving on an open keep-alive connection during shutdown gets 503 with Retry-After and Connection: close (%s)', async (next) => {
    h = await startHarness({ shutdownTimeout: 30_000 });
    await h.cache.cacheImage('small', imageBytes('small', 2000));
    expect((await rawRequest(`${h.url}/images/small`)).status).toBe(200); // described and remembered
    const data = imageBytes('kept', 300_000);
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    h.origin.images.set('kept', { kind: 'ok', data, until: held, first: 100_000 });
    // One keep-alive connection (an agent's socket): the first response is streaming when shutdown begins, the next
    // request goes out on the same connection once shutdown has begun (pipelined: no race with an idle close).
    const { hostname, port } = new URL(h.url);
    const socket = connect({ host: hostname, port: Number(port) });
    await once(socket, 'connect');
    let received = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => (received = Buffer.concat([received, chunk])));
    const ended = once(socket, 'close');
    socket.write(`GET /images/kept HTTP/1.1\r\nHost: ${hostname}\r\nConnection: keep-alive\r\n\r\n`);
    await waitFor(() => received.length > 50_000);
    const closing = h.server.close();
    const listener = h.server.app.server;
    await waitFor(() => !listener.listening); // shutdown has begun (the 503s are on)
    socket.write(`GET ${next} HTTP/1.1\r\nHost: ${hostname}\r\nConnection: keep-alive\r\n\r\n`);
    release();
    await ended;
    await closing;

    const text = received.toString('latin1');
    const firstEnd = text.indexOf('\r\n\r\n') + 4;
    expect(text.slice(0, firstEnd)).toMatch(/^HTTP\/1\.1 200 /);
    const second = text.indexOf('HTTP/1.1 ', firstEnd + data.length);
    expect(second).toBe(firstEnd + data.length); // the whole image, then the next response
    expect(received.subarray(firstEnd, second).equals(data)).toBe(true);
    const head = text.slice(second, text.indexOf('\r\n\r\n', second)).toLowerCase();
    expect(head).toMatch(/^http\/1\.1 503 /);
    expect(head).toContain('\r\nretry-after: 30');
    expect(head).toContain('\r\nconnection: close');
    expect(JSON.parse(text.slice(text.indexOf('\r\n\r\n', second) + 4))).toMatchObject({ statusCode: 503, code: 'SHUTTING_DOWN' });
  });

  it('close() is idempotent and stops the workers; closeCache closes the cache too', async () => {
    h = await startHarness({ pruneInterval: 10, closeCache: true });
    await Promise.all([h.server.close(), h.server.close()]);
    await expect(h.cache.getCacheSize()).rejects.toMatchObject({ code: 'CACHE_DRIVER_NOT_OPEN' });
  });

  it('without closeCache the cache stays open after close()', async () => {
    h = await startHarness();
    await h.server.close();
    expect(await h.cache.getCacheSize()).toBe(0);
  });
});
