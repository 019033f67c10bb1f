import { existsSync } from 'node:fs';
import { mkdir, readFile, unlink, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import pg from 'pg';
import { afterEach, beforeEach, describe, expect, vi } from 'vitest';
import { ErrorCodes, ImageCache, type CacheWarning } from '@cache/core';
import { readImage, writeImage } from '@cache/conformance';
import { MIGRATIONS, PostgresDriver, SCHEMA_VERSION, defaultNodeId, type PostgresDriverOptions } from '../src/index.js';
import { createDatabase, pgIt, skipReason, sql, startProxy, tempDir } from './helpers.js';

let url: string;
let dir: string;
let cleanup: () => Promise<void>;
const opened: PostgresDriver[] = [];
const warnings: CacheWarning[] = [];

async function driver(options: Partial<PostgresDriverOptions> = {}): Promise<PostgresDriver> {
  const d = new PostgresDriver({ cacheDir: dir, connectionString: url, onWarning: (w) => warnings.push(w), ...options });
  opened.push(d);
  await d.configure();
  return d;
}

// A database per test: cluster-wide queries must not see other tests' nodes.
beforeEach(async () => {
  if (skipReason === undefined) url = await createDatabase('driver');
  ({ dir, cleanup } = await tempDir('pg-driver'));
  warnings.length = 0;
});

afterEach(async () => {
  for (const d of opened.splice(0)) await d.close();
  await cleanup();
});

describe('schema and migrations', () => {
  pgIt("configure() creates Glance's node_reference + cached_images shape with text ids and timestamptz times", async () => {
    await driver();
    const columns = await sql<{ table_name: string; column_name: string; data_type: string; is_nullable: string }>(
      url,
      `SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns
       WHERE table_name IN ('node_reference', 'cached_images') ORDER BY table_name, ordinal_position`,
    );
    expect(columns.map((c) => `${c.table_name}.${c.column_name} ${c.data_type}${c.is_nullable === 'NO' ? ' not null' : ''}`)).toEqual([
      'cached_images.id bigint not null',
      'cached_images.image_id text not null',
      'cached_images.last_accessed timestamp with time zone not null',
      'cached_images.last_modified timestamp with time zone not null',
      'cached_images.size bigint not null',
      'cached_images.hits bigint not null',
      'cached_images.checksum text',
      'cached_images.node_reference_id bigint not null',
      'cached_images.file_id text',
      'node_reference.node_reference_id bigint not null',
      'node_reference.node_reference_url text not null',
    ]);
    const constraints = await sql<{ conname: string }>(
      url,
      `SELECT conname FROM pg_constraint WHERE conrelid IN ('cached_images'::regclass, 'node_reference'::regclass) AND contype = 'u' ORDER BY 1`,
    );
    expect(constraints.map((c) => c.conname)).toEqual([
      'ix_cached_images_image_id_node_reference_id',
      'uq_node_reference_node_reference_url',
    ]);
    const versions = await sql<{ version: number }>(url, 'SELECT version FROM cache_schema_migrations ORDER BY version');
    expect(versions.map((v) => v.version)).toEqual(MIGRATIONS.map((m) => m.version));
    expect(SCHEMA_VERSION).toBe(4);
  });

  pgIt('the LRU query of one node is served by the (node, last_accessed, last_modified, image_id) index', async () => {
    await driver();
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      await client.query('SET enable_seqscan = off');
      const plan = await client.query<{ 'QUERY PLAN': string }>(
        'EXPLAIN SELECT image_id FROM cached_images WHERE node_reference_id = 1 ORDER BY last_accessed, last_modified, image_id LIMIT 1',
      );
      expect(plan.rows.map((r) => r['QUERY PLAN']).join('\n')).toContain('cached_images_node_lru_idx');
    } finally {
      await client.end();
    }
  });

  pgIt('many nodes configuring a fresh database at once: the migrations run exactly once, under the advisory lock', async () => {
    const url = await createDatabase('race');
    const dirs = await Promise.all(Array.from({ length: 8 }, (_, i) => mkdir(join(dir, `n${i}`)).then(() => join(dir, `n${i}`))));
    const drivers = dirs.map((cacheDir) => new PostgresDriver({ cacheDir, connectionString: url }));
    opened.push(...drivers);
    await Promise.all(drivers.map((d) => d.configure()));
    const applied = drivers.map((d) => d.getMigrationState()?.applied ?? []);
    expect(applied.filter((a) => a.length > 0)).toEqual([[1, 2, 3, 4]]);
    expect(drivers.every((d) => d.getMigrationState()?.to === SCHEMA_VERSION)).toBe(true);
    const versions = await sql<{ version: number }>(url, 'SELECT version FROM cache_schema_migrations ORDER BY version');
    expect(versions.map((v) => v.version)).toEqual([1, 2, 3, 4]);
    const nodes = await sql<{ n: string }>(url, 'SELECT count(*) AS n FROM node_reference');
    expect(Number(nodes[0]?.n)).toBe(8);
  });

  pgIt("refuses a database whose cached_images was not made by this driver (e.g. Glance's) with BadDriverConfigurationError that says what to do", async () => {
    const url = await createDatabase('glance_tables');
    await sql(url, 'CREATE TABLE node_reference (node_reference_id bigserial PRIMARY KEY, node_reference_url varchar(255) NOT NULL UNIQUE)');
    const d = new PostgresDriver({ cacheDir: dir, connectionString: url });
    opened.push(d);
    const error = await d.configure().catch((e: unknown) => e);
    expect(error).toMatchObject({ code: ErrorCodes.BAD_DRIVER_CONFIGURATION });
    expect((error as Error).message).toMatch(/own database, or its own schema/);
    await expect(d.isCached('a')).rejects.toMatchObject({ code: ErrorCodes.DRIVER_NOT_OPEN });
  });

  pgIt('a schema of its own via search_path in the connection string keeps the tables apart', async () => {
    await sql(url, 'CREATE SCHEMA IF NOT EXISTS image_cache');
    const scoped = `${url}?options=${encodeURIComponent('-c search_path=image_cache')}`;
    const d = await driver({ connectionString: scoped });
    await writeImage(d, 'img', Buffer.from('x'));
    const rows = await sql<{ n: string }>(url, 'SELECT count(*) AS n FROM image_cache.cached_images');
    expect(Number(rows[0]?.n)).toBe(1);
  });
});

describe('metadata', () => {
  pgIt('ids longer than 36 characters (up to 255 bytes) are stored whole', async () => {
    const d = await driver();
    const long = 'sha256-' + 'a'.repeat(248);
    await writeImage(d, long, Buffer.from('payload'));
    await readImage(d, long);
    expect(await d.getCachedImages()).toMatchObject([{ imageId: long, hits: 1, size: 7 }]);
    const rows = await sql<{ image_id: string }>(url, 'SELECT image_id FROM cached_images WHERE image_id = $1', [long]);
    expect(rows).toHaveLength(1);
  });

  pgIt('times keep microsecond precision and read back exactly, whatever the session time zone', async () => {
    const zoned = `${url}?options=${encodeURIComponent('-c TimeZone=Pacific/Chatham')}`;
    const d = await driver({ connectionString: zoned });
    const before = Date.now() / 1000;
    await writeImage(d, 'a', Buffer.from('a'));
    await writeImage(d, 'b', Buffer.from('b'));
    for (let i = 0; i < 5; i++) {
      await readImage(d, 'a');
      await readImage(d, 'b');
    }
    const [a, b] = await d.getCachedImages();
    const after = Date.now() / 1000;
    // Committed between the two clock reads (core's clock may step a few µs ahead within one millisecond).
    expect(a?.lastModified).toBeGreaterThanOrEqual(before);
    expect(a?.lastModified).toBeLessThanOrEqual(after + 0.001);
    // Whole microseconds, as core's clock makes them, and in order even within one millisecond.
    for (const t of [a?.lastAccessed, a?.lastModified, b?.lastAccessed, b?.lastModified]) {
      expect(Math.round((t ?? 0) * 1e6) / 1e6).toBe(t);
    }
    expect(b!.lastAccessed).toBeGreaterThan(a!.lastAccessed);
    expect((await d.getLeastRecentlyAccessed())?.imageId).toBe('a');
    const raw = await sql<{ us: string }>(url, "SELECT (EXTRACT(EPOCH FROM last_accessed) * 1000000)::bigint AS us FROM cached_images WHERE image_id = 'b'");
    expect(Number(raw[0]?.us) / 1e6).toBe(b?.lastAccessed);
  });

  pgIt('hits are incremented atomically: concurrent reads from two workers of one node lose none', async () => {
    const w1 = await driver();
    const w2 = await driver();
    expect(w1.nodeId).toBe(w2.nodeId);
    await writeImage(w1, 'hot', Buffer.alloc(1000, 1));
    await Promise.all(Array.from({ length: 40 }, (_, i) => readImage(i % 2 === 0 ? w1 : w2, 'hot')));
    expect(await w1.getHitCount('hot')).toBe(40);
    expect(await w2.getHitCount('hot')).toBe(40);
  });

  pgIt('workers on one host share one node identity by default (host + cache directory); another directory is another node', async () => {
    const d = await driver();
    expect(d.nodeId).toBe(`${hostname()}:${dir}`);
    expect(defaultNodeId(dir)).toBe(d.nodeId);
    const other = await driver({ cacheDir: join(dir, 'elsewhere') });
    expect(other.nodeId).not.toBe(d.nodeId);
    await writeImage(d, 'img', Buffer.from('x'));
    expect(await other.getCachedImages()).toEqual([]);
    expect(await d.getCachedNodes('img')).toEqual([d.nodeId]);
  });

  pgIt('getCachedNodes and getClusterImages look across nodes; every other call sees only its own node', async () => {
    const a = await driver({ cacheDir: join(dir, 'a'), nodeId: 'http://node-a:9292' });
    const b = await driver({ cacheDir: join(dir, 'b'), nodeId: 'http://node-b:9292' });
    await writeImage(a, 'both', Buffer.alloc(10));
    await writeImage(b, 'both', Buffer.alloc(10));
    await writeImage(b, 'only-b', Buffer.alloc(3));
    await readImage(a, 'both');
    await readImage(b, 'both');
    await readImage(b, 'both');
    expect(await a.getCachedNodes('both')).toEqual(['http://node-a:9292', 'http://node-b:9292']);
    expect(await a.getCachedNodes('only-b')).toEqual(['http://node-b:9292']);
    expect(await a.getCachedNodes('nowhere')).toEqual([]);
    await expect(a.getCachedNodes('../x')).rejects.toMatchObject({ code: ErrorCodes.INVALID_IMAGE_ID });
    const cluster = await a.getClusterImages();
    expect(cluster.map(({ imageId, nodes, hits, size }) => ({ imageId, nodes, hits, size }))).toEqual([
      { imageId: 'both', nodes: ['http://node-a:9292', 'http://node-b:9292'], hits: 3, size: 10 },
      { imageId: 'only-b', nodes: ['http://node-b:9292'], hits: 0, size: 3 },
    ]);
    const bBoth = (await b.getCachedImages()).find((i) => i.imageId === 'both');
    expect(cluster[0]?.lastAccessed).toBe(bBoth?.lastAccessed);
    expect(await a.getCachedImages()).toMatchObject([{ imageId: 'both', hits: 1 }]);
    expect(await a.deleteAllCachedImages()).toBe(1);
    expect(await b.getCachedImages()).toHaveLength(2);
    expect(await b.getCachedNodes('both')).toEqual(['http://node-b:9292']);
    // A decommissioned node is forgotten with its rows; its files are not touched.
    expect(await a.forgetNode('http://node-b:9292')).toBe(2);
    expect(await a.getClusterImages()).toEqual([]);
    expect(existsSync(join(dir, 'b', 'only-b'))).toBe(true);
  });

  pgIt('a commit stores the verified checksum; a re-commit resets hits and replaces the row (upsert)', async () => {
    const d = await driver();
    const cache = await ImageCache.open({ driver: d });
    const data = Buffer.from('hello');
    const digest = (await import('node:crypto')).createHash('sha256').update(data).digest('hex');
    await cache.cacheImage('img', Readable.from([data]), { checksum: { algorithm: 'sha256', digest } });
    expect(await d.getStoredChecksum('img')).toBe(`sha256:${digest}`);
    await readImage(d, 'img');
    await d.deleteCachedImage('img');
    await writeImage(d, 'img', Buffer.from('hello world'));
    expect(await d.getCachedImages()).toMatchObject([{ imageId: 'img', hits: 0, size: 11 }]);
    expect(await d.getStoredChecksum('img')).toBeUndefined();
  });

  pgIt('clean() reconciles: rows without files are deleted, files without rows adopted, a rewritten file gets a fresh row', async () => {
    const d = await driver();
    await writeImage(d, 'gone', Buffer.from('1'));
    await writeImage(d, 'grown', Buffer.from('1'));
    await unlink(join(dir, 'gone'));
    await writeFile(join(dir, 'grown'), 'longer');
    await writeFile(join(dir, 'by-hand'), 'abc');
    const report = await d.clean();
    // `gone`'s row, and `grown`'s row (its file was rewritten: the row belonged to the old file); `by-hand` and the new `grown` adopted.
    expect(report).toMatchObject({ orphanRecords: 2, adoptedFiles: 2 });
    const rows = await sql<{ image_id: string; size: string }>(
      url,
      'SELECT image_id, size FROM cached_images c JOIN node_reference n USING (node_reference_id) WHERE n.node_reference_url = $1 ORDER BY image_id',
      [d.nodeId],
    );
    expect(rows.map((r) => [r.image_id, Number(r.size)])).toEqual([['by-hand', 3], ['grown', 6]]);
    expect(await d.clean()).toMatchObject({ orphanRecords: 0, adoptedFiles: 0 });
  });

  pgIt('a read of a file without a row adopts it with that hit', async () => {
    const d = await driver();
    await writeFile(join(dir, 'manual'), 'abc');
    await readImage(d, 'manual');
    await readImage(d, 'manual');
    expect(await d.getHitCount('manual')).toBe(2);
  });

  pgIt("a node row deleted behind the driver's back is registered again on the next write", async () => {
    const d = await driver({ nodeId: 'node-to-delete' });
    await writeImage(d, 'a', Buffer.from('a'));
    await sql(url, "DELETE FROM node_reference WHERE node_reference_url = 'node-to-delete'");
    await writeImage(d, 'b', Buffer.from('b'));
    expect(await d.getCachedNodes('b')).toEqual(['node-to-delete']);
  });
});

describe('database failures are typed errors', () => {
  pgIt('a commit whose row cannot be written (statement timeout behind a lock) is rolled back: no active file without a row', async () => {
    const d = await driver({ statementTimeoutMillis: 300 });
    const locker = new pg.Client({ connectionString: url });
    await locker.connect();
    try {
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE cached_images IN ACCESS EXCLUSIVE MODE');
      const error = await writeImage(d, 'img', Buffer.from('data')).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: ErrorCodes.STORAGE });
      expect((error as Error).message).toMatch(/statement timeout \(300 ms\).*raise statementTimeoutMillis/);
      await locker.query('ROLLBACK');
    } finally {
      await locker.end();
    }
    expect(existsSync(join(dir, 'img'))).toBe(false);
    expect(await readFile(join(dir, 'invalid', 'img'), 'utf8')).toBe('data');
    expect(await d.getCachedImages()).toEqual([]);
    expect(await d.getCachedNodes('img')).toEqual([]);
  });

  pgIt('an unreachable server at configure() is a CacheStorageError that says what to do', async () => {
    const d = new PostgresDriver({ cacheDir: dir, connectionString: 'postgresql://postgres@127.0.0.1:1/none', connectionTimeoutMillis: 1000 });
    opened.push(d);
    const error = await d.configure().catch((e: unknown) => e);
    expect(error).toMatchObject({ code: ErrorCodes.STORAGE });
    expect((error as Error).message).toMatch(/127\.0\.0\.1:1\/none is unreachable: start it or fix the connection string/);
    await expect(d.getCachedImages()).rejects.toMatchObject({ code: ErrorCodes.DRIVER_NOT_OPEN });
  });

  pgIt('a database that does not exist is a BadDriverConfigurationError naming CREATE DATABASE', async () => {
    const missing = url.replace(/\/[^/]+$/, '/no_such_database');
    const d = new PostgresDriver({ cacheDir: dir, connectionString: missing });
    opened.push(d);
    const error = await d.configure().catch((e: unknown) => e);
    expect(error).toMatchObject({ code: ErrorCodes.BAD_DRIVER_CONFIGURATION });
    expect((error as Error).message).toMatch(/3D000.*CREATE DATABASE/);
  });

  pgIt('the connection string is required (or DATABASE_URL); bad numeric options are refused', () => {
    const saved = process.env.DATABASE_URL;
    delete process.env.DATABASE_URL;
    try {
      expect(() => new PostgresDriver({ cacheDir: dir })).toThrow(expect.objectContaining({ code: ErrorCodes.INVALID_ARGUMENT }));
      process.env.DATABASE_URL = url;
      expect(new PostgresDriver({ cacheDir: dir }).target).toMatch(/^127\.0\.0\.1:\d+\/driver_/);
    } finally {
      if (saved === undefined) delete process.env.DATABASE_URL;
      else process.env.DATABASE_URL = saved;
    }
    expect(() => new PostgresDriver({ cacheDir: dir, connectionString: url, poolSize: 0 })).toThrow(/poolSize/);
    expect(new PostgresDriver({ cacheDir: dir, connectionString: 'postgresql://u:secret@db:5433/cache' }).target).toBe('db:5433/cache');
  });

  pgIt('idle connections killed by the server emit pool errors that never crash the process; the next call reconnects', async () => {
    const d = await driver({ nodeId: 'killed-idle' });
    await writeImage(d, 'a', Buffer.from('a'));
    await Promise.all([d.getCachedImages(), d.getHitCount('a'), d.getCachedNodes('a')]);
    const killed = await sql<{ ok: boolean }>(
      url,
      "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE application_name = 'image-cache killed-idle'",
    );
    expect(killed.length).toBeGreaterThan(0);
    // pg_terminate_backend only signals: wait until those backends are gone. Their sockets then have the
    // server's goodbye; one turn of the event loop later the pool has handled it and dropped the clients.
    await vi.waitFor(
      async () =>
        expect(await sql(url, "SELECT pid FROM pg_stat_activity WHERE application_name = 'image-cache killed-idle'")).toEqual([]),
      { timeout: 30_000, interval: 20 },
    );
    await new Promise((resolve) => setImmediate(resolve));
    await readImage(d, 'a');
    expect(await d.getHitCount('a')).toBe(1);
  });

  pgIt('a silent network partition (packets swallowed): reads of cached files stop waiting after the first, hits are dropped with warnings, close() does not hang', async () => {
    const port = Number(new URL(url).port);
    const proxy = await startProxy(port);
    const via = url.replace(`:${port}/`, `:${proxy.port}/`);
    const d = await driver({ connectionString: via, statementTimeoutMillis: 500, connectionTimeoutMillis: 500, unavailableBackoffMillis: 300 });
    try {
      await writeImage(d, 'a', Buffer.alloc(100, 1));
      await readImage(d, 'a');
      expect(await d.getHitCount('a')).toBe(1);
      proxy.blackhole();
      const hitWarnings = () => warnings.filter((w) => w.code === 'CACHE_HIT_NOT_RECORDED');
      // The first read's hit waits for the client-side timeout (500 + 2000 ms), fails, is reported, then the read ends.
      expect((await readImage(d, 'a')).length).toBe(100);
      expect(hitWarnings()).toHaveLength(1);
      expect(hitWarnings()[0]?.message).not.toMatch(/dropped/);
      // From then on no read waits for the database: its hit is either dropped at once (a "dropped" warning
      // before the read ends) or written in the background (it fails after the read ended). A read that
      // waited would end only after its own query failed, with that failure reported first.
      for (let i = 0; i < 5; i++) {
        const seen = hitWarnings().length;
        expect((await readImage(d, 'a')).length).toBe(100);
        const beforeEnd = hitWarnings().slice(seen);
        expect(beforeEnd.length, `read ${i + 2}`).toBeLessThanOrEqual(1);
        for (const warning of beforeEnd) expect(warning.message, `read ${i + 2}`).toMatch(/dropped: PostgreSQL at .* was unreachable moments ago/);
        // Its hit's fate is known before the next read, so that every warning belongs to the read that caused it.
        await vi.waitFor(() => expect(hitWarnings()).toHaveLength(seen + 1), { timeout: 30_000 });
      }
      expect(hitWarnings()).toHaveLength(6);
      const error = await writeImage(d, 'b', Buffer.from('b')).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: ErrorCodes.STORAGE });
      expect(existsSync(join(dir, 'b'))).toBe(false);
      // Statements are stuck in the black hole: close() must still return (the test's timeout is the guard).
      await d.close();
    } finally {
      await proxy.close();
    }
  });
});
