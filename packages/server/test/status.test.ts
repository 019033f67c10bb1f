import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, statfs } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { CacheStorageError, ImageCache } from '@cache/core';
import { PostgresDriver } from '@cache/driver-postgres';
import { SqliteDriver } from '@cache/driver-sqlite';
import { tryStartTestPostgres } from '@cache/postgres-testing';
import { createCacheServer, METRIC_NAMES, type ClusterNodeStatus, type StatusReport } from '../src/index.js';
import { imageBytes, scrape, startHarness, waitFor, type Harness } from './helpers.js';

const TOKEN = 'status-secret';

// A real PostgreSQL of this file's own, for the cluster listing of the postgres driver.
const { pg, skipReason } = await tryStartTestPostgres();
const auth = { authorization: `Bearer ${TOKEN}` };

let harness: Harness | undefined;
afterEach(async () => {
  await harness?.close();
  harness = undefined;
});

async function status(url: string, headers: Record<string, string> = auth): Promise<StatusReport> {
  const response = await fetch(`${url}/v2/status`, { headers });
  expect(response.status).toBe(200);
  expect(response.headers.get('cache-control')).toBe('no-store');
  return (await response.json()) as StatusReport;
}

async function download(url: string, id: string, headers: Record<string, string> = {}): Promise<Buffer> {
  const response = await fetch(`${url}/images/${id}`, { headers });
  expect(response.status).toBeLessThan(300);
  return Buffer.from(await response.arrayBuffer());
}

describe('the status page files', () => {
  it('GET /status is plain HTML with a strict CSP, its script and style are served, / redirects to it; none needs the token', async () => {
    harness = await startHarness({ token: TOKEN });
    const page = await fetch(`${harness.url}/status`);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toBe('text/html; charset=utf-8');
    expect(page.headers.get('content-security-policy')).toContain("script-src 'self'");
    expect(page.headers.get('content-security-policy')).toContain("frame-ancestors 'none'");
    expect(page.headers.get('x-content-type-options')).toBe('nosniff');
    const html = await page.text();
    expect(html).toContain('<script src="status-assets/status.js" defer></script>');
    expect(html).not.toMatch(/<script>|style="/); // nothing inline: the CSP would refuse it

    const script = await fetch(`${harness.url}/status-assets/status.js`);
    expect(script.status).toBe(200);
    expect(script.headers.get('content-type')).toBe('text/javascript; charset=utf-8');
    expect(await script.text()).toContain("fetch('v2/status'");
    const style = await fetch(`${harness.url}/status-assets/status.css`);
    expect(style.status).toBe(200);
    expect(style.headers.get('content-type')).toBe('text/css; charset=utf-8');

    const root = await fetch(`${harness.url}/`, { redirect: 'manual' });
    expect(root.status).toBe(302);
    expect(new URL(root.headers.get('location') ?? '', `${harness.url}/`).href).toBe(`${harness.url}/status`);
    const head = await fetch(`${harness.url}/status`, { method: 'HEAD' });
    expect(head.status).toBe(200);
  });
});

describe('GET /v2/status', () => {
  it('needs the management token when the server has one (401 without or with a wrong one), like the rest of /v2', async () => {
    harness = await startHarness({ token: TOKEN });
    const without = await fetch(`${harness.url}/v2/status`);
    expect(without.status).toBe(401);
    expect(without.headers.get('www-authenticate')).toBe('Bearer realm="image-cache"');
    const body = (await without.json()) as Record<string, unknown>;
    expect(body['code']).toBe('UNAUTHORIZED');
    expect(body).not.toHaveProperty('cache');
    const wrong = await fetch(`${harness.url}/v2/status`, { headers: { authorization: 'Bearer nope' } });
    expect(wrong.status).toBe(401);
    expect((await status(harness.url)).node.driver).toBe('sqlite');
  });

  it('is open when the management API is (no token: loopback only)', async () => {
    harness = await startHarness();
    expect((await status(harness.url, {})).cache.images).toBe(0);
  });

  it('reports size against budget, hit ratio, top images by hits, and agrees with /metrics', async () => {
    harness = await startHarness({ token: TOKEN, maxSize: 50 * 1024 * 1024 });
    const sizes = { a: 3000, b: 5000, c: 7000 };
    for (const [id, size] of Object.entries(sizes)) harness.origin.images.set(id, { kind: 'ok', data: imageBytes(id, size) });
    const empty = await status(harness.url);
    expect(empty.requests).toEqual({ scope: 'server', processes: 1, hits: 0, misses: 0, hitRatio: null, servedBytes: { cache: 0, origin: 0 } });
    expect(empty.topImages).toEqual([]);
    expect(empty.cluster).toBeNull(); // sqlite: a node on its own

    // a: 1 miss + 3 hits; b: 1 miss + 1 hit; c: 1 miss.
    for (const id of ['a', 'a', 'a', 'a', 'b', 'b', 'c']) await download(harness.url, id);
    // The driver records a hit once a read delivered the last byte, which may be just after the client has it.
    const { url } = harness;
    await waitFor(async () => (await status(url)).topImages.map((image) => image.hits).join() === '3,1,0', 30_000, 'the hits are recorded');
    const report = await status(harness.url);
    expect(report.cache).toEqual({ bytes: 15000, maxBytes: 50 * 1024 * 1024, images: 3, queued: 0 });
    expect(report.requests.hits).toBe(4);
    expect(report.requests.misses).toBe(3);
    expect(report.requests.hitRatio).toBeCloseTo(4 / 7, 10);
    expect(report.requests.servedBytes).toEqual({ cache: 3 * 3000 + 5000, origin: 15000 });
    expect(report.topImages.map((image) => [image.id, image.hits, image.size])).toEqual([
      ['a', 3, 3000],
      ['b', 1, 5000],
      ['c', 0, 7000],
    ]);
    expect(report.fills).toEqual([]);
    expect(report.node.pid).toBe(process.pid);
    // The space policy (ADR 0006): the budget by part, the filesystem, no thresholds (none set), the watcher ok.
    const fs = await statfs(harness.cacheDir);
    expect(report.space).toEqual({
      maxBytes: 50 * 1024 * 1024,
      writeBudget: false,
      parts: { active: 15000, incomplete: 0, invalid: 0, reserved: 0 },
      usedBytes: 15000,
      disk: { totalBytes: fs.blocks * fs.bsize, freeBytes: expect.any(Number), totalFiles: fs.files, freeFiles: expect.any(Number) },
      thresholds: null,
      state: 'ok',
    });
    expect(report.space?.disk.freeBytes).toBeGreaterThan(0);
    expect(report.space?.disk.freeBytes).toBeLessThanOrEqual(fs.blocks * fs.bsize);

    const metrics = await scrape(harness.url);
    expect(metrics.get('image_cache_size_bytes')).toBe(report.cache.bytes);
    expect(metrics.get('image_cache_max_size_bytes')).toBe(report.cache.maxBytes);
    expect(metrics.get('image_cache_hits_total')).toBe(report.requests.hits);
    expect(metrics.get('image_cache_misses_total')).toBe(report.requests.misses);
    for (const part of ['active', 'incomplete', 'invalid', 'reserved'] as const) {
      // `reserved` is per process: its series carries this process's pid.
      expect(metrics.get(`${METRIC_NAMES.usedBytes}{part="${part}"${part === 'reserved' ? `,pid="${process.pid}"` : ''}}`)).toBe(report.space?.parts[part]);
    }
    expect(metrics.get(METRIC_NAMES.fsBytes)).toBe(report.space?.disk.totalBytes);
  });

  it('shows the free-space thresholds and the watcher state of a cache that has them, and the bytes a running write reserved', async () => {
    harness = await startHarness({
      token: TOKEN,
      maxSize: 8 * 1024 * 1024,
      writeBudget: true,
      freeSpace: { run: { bytes: 3 * 1024 * 1024 }, cull: { bytes: 2 * 1024 * 1024 }, stop: { bytes: 1024 * 1024 } },
    });
    const data = imageBytes('held', 4 * 1024 * 1024);
    let release!: () => void;
    harness.origin.images.set('held', { kind: 'ok', data, until: new Promise<void>((resolve) => (release = resolve)), first: 1024 * 1024 });
    const downloading = download(harness.url, 'held');
    const { url } = harness;
    await waitFor(async () => (await status(url)).fills[0]?.written === 1024 * 1024, 30_000, 'the fill holds at 1 MiB');
    const report = await status(url);
    expect(report.space).toMatchObject({
      maxBytes: 8 * 1024 * 1024,
      writeBudget: true,
      // The whole announced size is reserved before the first byte: 1 MiB written, 3 MiB reserved beyond it.
      parts: { active: 0, incomplete: 1024 * 1024, invalid: 0, reserved: 3 * 1024 * 1024 },
      usedBytes: 4 * 1024 * 1024,
      thresholds: {
        run: { bytes: 3 * 1024 * 1024, files: null },
        cull: { bytes: 2 * 1024 * 1024, files: null },
        stop: { bytes: 1024 * 1024, files: null },
      },
      state: 'ok',
    });
    release();
    expect((await downloading).equals(data)).toBe(true);
    await waitFor(async () => (await status(url)).space?.parts.active === data.length, 30_000, 'committed');
    expect((await status(url)).space?.parts).toEqual({ active: data.length, incomplete: 0, invalid: 0, reserved: 0 });
  });

  it('lists a running fill with its bytes written and announced size, and drops it once committed', async () => {
    harness = await startHarness({ token: TOKEN });
    const data = imageBytes('slow', 1024 * 1024);
    let release!: () => void;
    const until = new Promise<void>((resolve) => (release = resolve));
    harness.origin.images.set('slow', { kind: 'ok', data, until, first: 256 * 1024 });
    const response = await fetch(`${harness.url}/images/slow`);
    expect(response.status).toBe(200);
    const { url } = harness;
    await waitFor(async () => (await status(url)).fills[0]?.written === 256 * 1024, 30_000, 'the fill has its first 256 KiB');
    const running = await status(url);
    expect(running.fills).toEqual([{ id: 'slow', written: 256 * 1024, expectedSize: 1024 * 1024, role: 'owner', readers: 1 }]);
    release();
    expect(Buffer.from(await response.arrayBuffer()).equals(data)).toBe(true);
    await waitFor(async () => (await status(url)).fills.length === 0, 30_000, 'the fill has ended');
    expect((await status(url)).topImages.map((image) => image.id)).toEqual(['slow']);
  });
});

/** A sqlite driver of a node whose cluster layer lists nodes (what a heartbeat table gives). */
class ListingDriver extends SqliteDriver {
  constructor(
    cacheDir: string,
    readonly list: () => Promise<ClusterNodeStatus[]>,
  ) {
    super({ cacheDir });
  }
  getClusterNodes(): Promise<ClusterNodeStatus[]> {
    return this.list();
  }
}

describe('the cluster section', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  async function serverWith(list: () => Promise<ClusterNodeStatus[]>) {
    const dir = await mkdtemp(join(tmpdir(), 'server-status-'));
    dirs.push(dir);
    const cache = await ImageCache.open({ driver: new ListingDriver(dir, list), maxSize: 1024 ** 2 });
    const server = await createCacheServer({ cache, pruneInterval: 0, cleanInterval: 0, prefetchInterval: 0, closeCache: true, token: TOKEN });
    return { server, url: await server.listen() };
  }

  it("shows the nodes a driver's getClusterNodes() lists; a failing one leaves the rest of the report and says why", async () => {
    const nodes: ClusterNodeStatus[] = [
      { id: 'n1', url: 'http://10.0.0.1:8080', self: true, health: 'alive', lastSeen: 1_800_000_000, images: 2, bytes: 100 },
      { id: 'n2', url: 'http://10.0.0.2:8080', self: false, health: 'dead', lastSeen: 1_799_999_000, images: 1, bytes: 50 },
    ];
    const ok = await serverWith(async () => nodes);
    try {
      expect((await status(ok.url)).cluster).toEqual({ nodes, error: null });
    } finally {
      await ok.server.close();
    }

    const failing = await serverWith(async () => {
      throw new CacheStorageError('connect ECONNREFUSED 10.9.9.9:5432 (postgres://secret@10.9.9.9/cache)');
    });
    try {
      const report = await status(failing.url);
      expect(report.cluster?.nodes).toEqual([]);
      expect(report.cluster?.error?.code).toBe('CACHE_STORAGE_ERROR');
      expect(JSON.stringify(report.cluster)).not.toContain('10.9.9.9'); // no internal address in the body
      expect(report.cache.images).toBe(0);
      const metrics = await scrape(failing.url);
      expect(metrics.get('image_cache_errors_total{code="CACHE_STORAGE_ERROR"}')).toBeGreaterThanOrEqual(1);
    } finally {
      await failing.server.close();
    }
  });

  // Real PostgreSQL (@cache/postgres-testing): two nodes on one database, each holding its own images.
  afterAll(async () => void (await pg?.stop()));
  const pgIt = skipReason === undefined ? it : it.skip;
  pgIt(`on the postgres driver, lists every node holding images (from getClusterImages), this one marked${skipReason === undefined ? '' : ` [skipped: ${skipReason}]`}`, async () => {
    const server = await pg!.startServer(`status-${randomBytes(3).toString('hex')}`);
    const connectionString = await server.createDatabase('status');
    const caches: ImageCache[] = [];
    for (const node of ['node-a', 'node-b']) {
      const dir = await mkdtemp(join(tmpdir(), `server-status-${node}-`));
      dirs.push(dir);
      caches.push(await ImageCache.open({ driver: new PostgresDriver({ cacheDir: dir, connectionString, nodeId: node }), maxSize: 1024 ** 2 }));
    }
    const [a, b] = caches as [ImageCache, ImageCache];
    await a.cacheImage('shared', Readable.from([imageBytes('shared', 1000)]));
    await a.cacheImage('only-a', Readable.from([imageBytes('only-a', 300)]));
    await b.cacheImage('shared', Readable.from([imageBytes('shared', 1000)]));
    const app = await createCacheServer({ cache: a, pruneInterval: 0, cleanInterval: 0, prefetchInterval: 0, token: TOKEN });
    try {
      const report = await status(await app.listen());
      expect(report.node).toMatchObject({ driver: 'postgres', nodeId: 'node-a' });
      expect(report.cluster?.error).toBeNull();
      expect(report.cluster?.nodes.sort((x, y) => x.id.localeCompare(y.id))).toEqual([
        { id: 'node-a', url: null, self: true, health: 'alive', lastSeen: null, images: 2, bytes: 1300 },
        { id: 'node-b', url: null, self: false, health: 'unknown', lastSeen: null, images: 1, bytes: 1000 },
      ]);
    } finally {
      await app.close();
      for (const cache of caches) await cache.close();
    }
  }, 120_000);
});
