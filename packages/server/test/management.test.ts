import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ImageCache } from '@cache/core';
import { SqliteDriver } from '@cache/driver-sqlite';
import { createCacheServer } from '../src/index.js';
import { imageBytes, startHarness, waitFor, type Harness } from './helpers.js';

const TOKEN = 's3cret-token';
const auth = { authorization: `Bearer ${TOKEN}` };

async function put(h: Harness, id: string): Promise<void> {
  await h.cache.cacheImage(id, Readable.from([imageBytes(id, 1000)]));
}

describe('management API (Glance /v2/cache shapes)', () => {
  let h: Harness;
  beforeEach(async () => {
    h = await startHarness({ token: TOKEN, prefetchOnQueue: false });
  });
  afterEach(() => h.close());

  it('401 with WWW-Authenticate without a token or with a wrong one; images, healthz and metrics stay open', async () => {
    const none = await fetch(`${h.url}/v2/cache`);
    expect(none.status).toBe(401);
    expect(none.headers.get('www-authenticate')).toBe('Bearer realm="image-cache"');
    expect(await none.json()).toMatchObject({ statusCode: 401, code: 'UNAUTHORIZED' });

    for (const authorization of ['Bearer wrong', `Bearer ${TOKEN}x`, `Bearer ${TOKEN.slice(0, -1)}`]) {
      const wrong = await fetch(`${h.url}/v2/cache`, { headers: { authorization } });
      expect(wrong.status).toBe(401);
      expect(wrong.headers.get('www-authenticate')).toBe('Bearer realm="image-cache", error="invalid_token"');
    }
    const basic = await fetch(`${h.url}/v2/cache`, { headers: { authorization: `Basic ${TOKEN}` } });
    expect(basic.status).toBe(401);
    // Guarded before anything happens: a DELETE without the token deletes nothing.
    await put(h, 'keep');
    expect((await fetch(`${h.url}/v2/cache`, { method: 'DELETE' })).status).toBe(401);
    expect(await h.cache.isCached('keep')).toBe(true);

    expect((await fetch(`${h.url}/v2/cache`, { headers: auth })).status).toBe(200);
    expect((await fetch(`${h.url}/healthz`)).status).toBe(200);
    expect((await fetch(`${h.url}/metrics`)).status).toBe(200);
    expect((await fetch(`${h.url}/images/keep`)).status).toBe(200);
  });

  it('GET /v2/cache lists cached records and queued ids', async () => {
    await put(h, 'b-image');
    await put(h, 'a-image');
    await h.cache.queueImage('q-1');
    const response = await fetch(`${h.url}/v2/cache`, { headers: auth });
    expect(response.status).toBe(200);
    const body = (await response.json()) as { cached_images: Record<string, unknown>[]; queued_images: string[] };
    expect(body.cached_images.map((image) => image.image_id)).toEqual(['a-image', 'b-image']);
    expect(Object.keys(body.cached_images[0] as object).sort()).toEqual(['hits', 'image_id', 'last_accessed', 'last_modified', 'size']);
    expect(body.cached_images[0]).toMatchObject({ image_id: 'a-image', hits: 0, size: 1000 });
    expect(typeof body.cached_images[0]?.last_accessed).toBe('number');
    expect(body.queued_images).toEqual(['q-1']);
  });

  it('PUT /v2/cache/{id} queues (202, empty); DELETE /v2/cache/{id} removes cached and queued (204), 404 when neither', async () => {
    const queued = await fetch(`${h.url}/v2/cache/new-image`, { method: 'PUT', headers: auth });
    expect(queued.status).toBe(202);
    expect(await queued.text()).toBe('');
    expect(await h.cache.getQueuedImages()).toEqual(['new-image']);

    await put(h, 'cached-one');
    const deleted = await fetch(`${h.url}/v2/cache/cached-one`, { method: 'DELETE', headers: auth });
    expect(deleted.status).toBe(204);
    expect(await h.cache.isCached('cached-one')).toBe(false);
    const dequeued = await fetch(`${h.url}/v2/cache/new-image`, { method: 'DELETE', headers: auth });
    expect(dequeued.status).toBe(204);
    expect(await h.cache.getQueuedImages()).toEqual([]);

    const unknown = await fetch(`${h.url}/v2/cache/never-seen`, { method: 'DELETE', headers: auth });
    expect(unknown.status).toBe(404);
    const invalid = await fetch(`${h.url}/v2/cache/.hidden`, { method: 'PUT', headers: auth });
    expect(invalid.status).toBe(400);
    expect(await invalid.json()).toMatchObject({ code: 'CACHE_INVALID_IMAGE_ID' });
  });

  it('DELETE /v2/cache honours x-image-cache-clear-target: absent = both, cache, queue, anything else 400', async () => {
    const reset = async () => {
      await put(h, 'c1');
      await put(h, 'c2');
      await h.cache.queueImage('q1');
    };
    await reset();
    let response = await fetch(`${h.url}/v2/cache`, { method: 'DELETE', headers: { ...auth, 'x-image-cache-clear-target': 'cache' } });
    expect(response.status).toBe(204);
    expect(await h.cache.getCachedImages()).toEqual([]);
    expect(await h.cache.getQueuedImages()).toEqual(['q1']);

    await reset();
    response = await fetch(`${h.url}/v2/cache`, { method: 'DELETE', headers: { ...auth, 'x-image-cache-clear-target': 'QUEUE' } });
    expect(response.status).toBe(204);
    expect((await h.cache.getCachedImages()).map((image) => image.imageId)).toEqual(['c1', 'c2']);
    expect(await h.cache.getQueuedImages()).toEqual([]);

    await reset();
    response = await fetch(`${h.url}/v2/cache`, { method: 'DELETE', headers: { ...auth, 'x-image-cache-clear-target': 'both' } });
    expect(response.status).toBe(400);
    expect((await h.cache.getCachedImages()).length).toBe(2);

    response = await fetch(`${h.url}/v2/cache`, { method: 'DELETE', headers: auth });
    expect(response.status).toBe(204);
    expect(await response.text()).toBe('');
    expect(await h.cache.getCachedImages()).toEqual([]);
    expect(await h.cache.getQueuedImages()).toEqual([]);
  });

  it('POST /v2/cache/prune evicts LRU entries to the budget and reports Glance totals', async () => {
    await h.close();
    h = await startHarness({ token: TOKEN, maxSize: 2500 });
    for (const id of ['p1', 'p2', 'p3', 'p4']) await put(h, id);
    const response = await fetch(`${h.url}/v2/cache/prune`, { method: 'POST', headers: auth });
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ total_files_pruned: 2, total_bytes_pruned: 2000 });
    expect((await h.cache.getCachedImages()).map((image) => image.imageId)).toEqual(['p3', 'p4']);
    const again = await fetch(`${h.url}/v2/cache/prune`, { method: 'POST', headers: auth });
    expect(await again.json()).toEqual({ total_files_pruned: 0, total_bytes_pruned: 0 });
  });

  it('POST /v2/cache/prune counts invalid/ against the budget and deletes invalid files first (issue 13)', async () => {
    await h.close();
    h = await startHarness({ token: TOKEN, maxSize: 2500 });
    for (const id of ['p1', 'p2']) await put(h, id);
    await writeFile(`${h.cacheDir}/invalid/broken`, Buffer.alloc(1500));
    const response = await fetch(`${h.url}/v2/cache/prune`, { method: 'POST', headers: auth });
    expect(await response.json()).toEqual({ total_files_pruned: 1, total_bytes_pruned: 1500 });
    expect(await readdir(`${h.cacheDir}/invalid`)).toEqual([]);
    expect((await h.cache.getCachedImages()).map((image) => image.imageId)).toEqual(['p1', 'p2']);
    const metrics = await (await fetch(`${h.url}/metrics`)).text();
    expect(metrics).toMatch(/^image_cache_cleaned_files_total\{kind="invalid"\} 1$/m);
  });

  it('POST /v2/cache/clean removes invalid files (200, empty body)', async () => {
    // A failed write leaves its file in invalid/.
    const failing = new Readable({
      read() {
        this.push(Buffer.alloc(100));
        this.destroy(new Error('source broke'));
      },
    });
    await expect(h.cache.cacheImage('failed', failing)).rejects.toThrow('source broke');
    expect(await readdir(`${h.cacheDir}/invalid`)).toEqual(['failed']);
    const response = await fetch(`${h.url}/v2/cache/clean`, { method: 'POST', headers: auth });
    expect(response.status).toBe(200);
    expect(await response.text()).toBe('');
    expect(await readdir(`${h.cacheDir}/invalid`)).toEqual([]);
  });

  it('GET /v2/cache/nodes/{id} is 409 on a per-node driver (sqlite)', async () => {
    const response = await fetch(`${h.url}/v2/cache/nodes/some-id`, { headers: auth });
    expect(response.status).toBe(409);
  });

  it('other methods are 405 with Allow; literal segments win over {id}', async () => {
    const putClean = await fetch(`${h.url}/v2/cache/clean`, { method: 'PUT', headers: auth });
    expect(putClean.status).toBe(405);
    expect(putClean.headers.get('allow')).toBe('POST');
    expect(await h.cache.getQueuedImages()).toEqual([]); // not "queue image clean"
    const getPrune = await fetch(`${h.url}/v2/cache/prune`, { headers: auth });
    expect(getPrune.status).toBe(405);
    const postCache = await fetch(`${h.url}/v2/cache`, { method: 'POST', headers: auth });
    expect(postCache.status).toBe(405);
    expect(postCache.headers.get('allow')).toBe('GET, DELETE, HEAD');
    const getId = await fetch(`${h.url}/v2/cache/abc`, { headers: auth });
    expect(getId.status).toBe(405);
    expect(getId.headers.get('allow')).toBe('PUT, DELETE');
  });

  it('legacy glance-cache-manage endpoints: 200 with JSON bodies', async () => {
    await put(h, 'l1');
    await put(h, 'l2');
    let response = await fetch(`${h.url}/v2/cached_images`, { headers: auth });
    expect(((await response.json()) as { cached_images: { image_id: string }[] }).cached_images.map((i) => i.image_id)).toEqual(['l1', 'l2']);
    response = await fetch(`${h.url}/v2/queued_images/lq`, { method: 'PUT', headers: auth });
    expect(response.status).toBe(200);
    expect(await response.text()).toBe('null');
    expect(await (await fetch(`${h.url}/v2/queued_images`, { headers: auth })).json()).toEqual({ queued_images: ['lq'] });
    response = await fetch(`${h.url}/v2/cached_images/l1`, { method: 'DELETE', headers: auth });
    expect(await response.text()).toBe('null');
    expect(await h.cache.isCached('l1')).toBe(false);
    expect(await (await fetch(`${h.url}/v2/cached_images`, { method: 'DELETE', headers: auth })).json()).toEqual({ num_deleted: 1 });
    expect(await (await fetch(`${h.url}/v2/queued_images`, { method: 'DELETE', headers: auth })).json()).toEqual({ num_deleted: 1 });
    expect((await fetch(`${h.url}/v2/queued_images/x`, { method: 'DELETE', headers: auth })).status).toBe(200);
  });

  it('queueing through the API starts a prefetch run when prefetchOnQueue is on', async () => {
    await h.close();
    h = await startHarness({ token: TOKEN });
    h.origin.images.set('pf', { kind: 'ok', data: imageBytes('pf', 10_000) });
    expect((await fetch(`${h.url}/v2/cache/pf`, { method: 'PUT', headers: auth })).status).toBe(202);
    await waitFor(() => h.cache.isCached('pf'));
    // The commit removes the marker just after the file becomes active.
    await waitFor(async () => (await h.cache.getQueuedImages()).length === 0);
    expect(h.origin.count('pf')).toBe(1);
  });
});

describe('management API without a token', () => {
  it('is open', async () => {
    const h = await startHarness();
    try {
      expect((await fetch(`${h.url}/v2/cache`)).status).toBe(200);
    } finally {
      await h.close();
    }
  });
});

describe('protectMetrics', () => {
  it('puts /metrics behind the token too', async () => {
    const h = await startHarness({ token: TOKEN, protectMetrics: true });
    try {
      expect((await fetch(`${h.url}/metrics`)).status).toBe(401);
      expect((await fetch(`${h.url}/metrics`, { headers: auth })).status).toBe(200);
      expect((await fetch(`${h.url}/healthz`)).status).toBe(200);
    } finally {
      await h.close();
    }
  });
});

describe('GET /v2/cache/nodes/{id} on a driver that knows its cluster', () => {
  /** A real sqlite cache that also answers getCachedNodes, as @cache/driver-postgres does. */
  class ClusterAwareDriver extends SqliteDriver {
    async getCachedNodes(id: string): Promise<string[]> {
      return (await this.isCached(id)) ? ['node-b', 'this-node'] : [];
    }
  }

  it('200 with the node ids holding the image, [] when none; 400 for a bad id', async () => {
    const cacheDir = await mkdtemp(join(tmpdir(), 'server-nodes-'));
    const cache = await ImageCache.open({ driver: new ClusterAwareDriver({ cacheDir }) });
    const server = await createCacheServer({ cache, token: TOKEN, closeCache: true, pruneInterval: 0, cleanInterval: 0, prefetchInterval: 0 });
    try {
      const url = await server.listen();
      await cache.cacheImage('img', Readable.from([imageBytes('img', 100)]));
      const held = await fetch(`${url}/v2/cache/nodes/img`, { headers: auth });
      expect(held.status).toBe(200);
      expect(await held.json()).toEqual(['node-b', 'this-node']);
      const none = await fetch(`${url}/v2/cache/nodes/other`, { headers: auth });
      expect(await none.json()).toEqual([]);
      expect((await fetch(`${url}/v2/cache/nodes/.hidden`, { headers: auth })).status).toBe(400);
      expect((await fetch(`${url}/v2/cache/nodes/img`)).status).toBe(401);
    } finally {
      await server.close();
      await rm(cacheDir, { recursive: true, force: true });
    }
  });
});
