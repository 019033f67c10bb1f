import { once } from 'node:events';
import { readdir } from 'node:fs/promises';
import { request } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { imageBytes, startHarness, waitFor, type Harness } from './helpers.js';

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

  it('lets an in-flight response finish within the timeout, and refuses new connections meanwhile', async () => {
    // The timeout only bounds a response that never ends: generous, so that a loaded machine never reaches it.
    h = await startHarness({ shutdownTimeout: 30_000 });
    const data = imageBytes('slow-ok', 500_000);
    // The origin sends the headers, then holds the body until the server is closing: the response is surely in flight.
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    h.origin.images.set('slow-ok', { kind: 'ok', data, chunked: false, until: held });
    const atOrigin = once(h.origin.server, 'request');
    const download = new Promise<{ status: number; body: Buffer }>((resolve, reject) => {
      const req = request(`${h!.url}/images/slow-ok`, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
      });
      req.on('error', reject);
      req.end();
    });
    await atOrigin; // the request is in the handler, waiting for the origin's body
    const closing = h.server.close();
    const listener = h.server.app.server;
    await waitFor(() => !listener.listening); // close() first stops the workers, then the listener
    await expect(fetch(`${h.url}/healthz`)).rejects.toThrow(); // no longer accepting connections
    release();
    const result = await download;
    await closing;
    expect(result.status).toBe(200);
    expect(result.body.equals(data)).toBe(true);
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
