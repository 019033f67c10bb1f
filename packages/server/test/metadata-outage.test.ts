import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { ImageCache, type CacheWarning } from '@cache/core';
import { PostgresDriver } from '@cache/driver-postgres';
import { tryStartTestPostgres, type TestPostgresServer } from '@cache/postgres-testing';
import { createCacheServer, type CacheServer } from '../src/index.js';
import { imageBytes } from './helpers.js';

// A real PostgreSQL server of this file's own, stopped (pg_ctl stop -m immediate) and started again mid-test.
const { pg: cluster, skipReason } = await tryStartTestPostgres();

let pgServer: TestPostgresServer;
let dir: string;
let cache: ImageCache;
let server: CacheServer;
let url: string;
const warnings: CacheWarning[] = [];

beforeAll(async () => {
  if (cluster === undefined) return;
  pgServer = await cluster.startServer(`outage-${randomBytes(3).toString('hex')}`);
  const connectionString = await pgServer.createDatabase('outage');
  dir = await mkdtemp(join(tmpdir(), 'server-outage-'));
  const driver = new PostgresDriver({
    cacheDir: dir,
    connectionString,
    connectionTimeoutMillis: 1000,
    statementTimeoutMillis: 2000,
    unavailableBackoffMillis: 300,
    onWarning: (warning) => warnings.push(warning),
  });
  cache = await ImageCache.open({ driver, maxSize: 1024 ** 3 });
  server = await createCacheServer({ cache, pruneInterval: 0, cleanInterval: 0, prefetchInterval: 0, closeCache: true });
  url = await server.listen();
}, 120_000);

afterAll(async () => {
  await server?.close();
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  await cluster?.stop();
});

const pgDescribe = skipReason === undefined ? describe : describe.skip;
const title = `the metadata store (PostgreSQL) goes down and comes back${skipReason === undefined ? '' : ` [skipped: ${skipReason}]`}`;

async function get(path: string, headers: Record<string, string> = {}, method = 'GET') {
  const response = await fetch(`${url}${path}`, { method, headers });
  return { status: response.status, headers: response.headers, body: Buffer.from(await response.arrayBuffer()) };
}

async function unrecordedHits(): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return Number(/^image_cache_hits_unrecorded_total (\d+)$/m.exec(text)?.[1]);
}

pgDescribe(title, () => {
  it('hits are served from the files with the same strong ETag; /readyz says why it is degraded, /healthz stays 200; ready again once it is back', async () => {
    const data = imageBytes('outage', 64 * 1024);
    const digest = createHash('sha256').update(data).digest('hex');
    const other = imageBytes('never-seen', 1000);
    await cache.cacheImage('img', Readable.from([data]), { checksum: { algorithm: 'sha256', digest } });
    await cache.cacheImage('unseen', Readable.from([other]), { checksum: { algorithm: 'sha256', digest: createHash('sha256').update(other).digest('hex') } });

    const before = await get('/images/img');
    expect(before.status).toBe(200);
    const etag = before.headers.get('etag');
    expect(etag).toBe(`"sha256:${digest}"`);
    const lastModified = before.headers.get('last-modified');
    expect(await get('/readyz')).toMatchObject({ status: 200 });
    expect(JSON.parse((await get('/readyz')).body.toString())).toEqual({ status: 'ok' });
    expect(await unrecordedHits()).toBe(0);
    // The server writes its hits in batches: this one is in the database before the outage.
    await vi.waitFor(async () => expect(await cache.getHitCount('img')).toBe(1), { timeout: 60_000, interval: 20 });

    await pgServer.stop({ mode: 'immediate' });
    // A first request finds the outage (this server remembers img from before it, and would not ask the store for it).
    const first = await get('/images/unseen');
    expect(first.status).toBe(200);
    expect(first.body.equals(other)).toBe(true);

    const hit = await get('/images/img');
    expect(hit.status).toBe(200);
    expect(hit.body.equals(data)).toBe(true);
    expect(hit.headers.get('etag')).toBe(etag);
    expect(hit.headers.get('last-modified')).toBe(lastModified);
    expect(hit.headers.get('x-cache')).toBe('HIT');

    const head = await get('/images/img', {}, 'HEAD');
    expect(head.status).toBe(200);
    expect(head.headers.get('etag')).toBe(etag);
    expect(head.headers.get('content-length')).toBe(String(data.length));

    const range = await get('/images/img', { range: 'bytes=100-199', 'if-range': etag as string });
    expect(range.status).toBe(206);
    expect(range.headers.get('content-range')).toBe(`bytes 100-199/${data.length}`);
    expect(range.body.equals(data.subarray(100, 200))).toBe(true);

    const notModified = await get('/images/img', { 'if-none-match': etag as string });
    expect(notModified.status).toBe(304);

    // Never stat'ed by this process before the outage: no remembered digest, so a weak ETag.
    const unseen = await get('/images/unseen');
    expect(unseen.status).toBe(200);
    expect(unseen.body.equals(other)).toBe(true);
    expect(unseen.headers.get('etag')).toMatch(/^W\/"[0-9a-f]{32}"$/);

    const ready = await get('/readyz');
    expect(ready.status).toBe(503);
    const report = JSON.parse(ready.body.toString());
    expect(report).toMatchObject({ status: 'degraded', reasons: [{ reason: 'metadata_store_unavailable' }] });
    expect(report.reasons).toHaveLength(1);
    expect(report.reasons[0].message).toMatch(/unreachable/);

    const health = await get('/healthz');
    expect(health.status).toBe(200);
    expect(JSON.parse(health.body.toString())).toMatchObject({ status: 'degraded', driver: 'postgres' });

    // GET unseen twice and GET img (the range does not reach the last byte: not a hit).
    expect(await unrecordedHits()).toBe(3);

    await pgServer.start();
    await vi.waitFor(async () => expect((await get('/readyz')).status).toBe(200), { timeout: 60_000, interval: 100 });
    expect(JSON.parse((await get('/healthz')).body.toString())).toMatchObject({ status: 'ok' });
    const after = await get('/images/unseen');
    expect(after.headers.get('etag')).toMatch(/^"sha256:/);
    expect((await get('/images/img')).headers.get('etag')).toBe(etag);
  }, 120_000);
});
