import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import Database from 'better-sqlite3';
import { setAttributeSync } from 'fs-xattr';
import { BadDriverConfigurationError, ImageCache, SUBDIRECTORIES, type CacheDriver, type Durability } from '@cache/core';
import { CREATE_LRU_INDEX, CREATE_TABLE, SqliteDriver } from '@cache/driver-sqlite';
import { XATTR, XattrDriver } from '@cache/driver-xattr';
import { defaultNodeId, PostgresDriver } from '@cache/driver-postgres';
import type { TestPostgres, TestPostgresClient } from '@cache/postgres-testing';

/** The drivers of figures 1-3, 6 and 7 (local metadata). */
export const DRIVERS = ['sqlite', 'xattr'] as const;
/** The drivers of figures 4 and 5: the local ones plus postgres (when the bench's PostgreSQL server runs). */
export const ALL_DRIVERS = [...DRIVERS, 'postgres'] as const;
export type DriverName = (typeof ALL_DRIVERS)[number];

/** A database of the bench's PostgreSQL server, made for one measurement and dropped after it. */
export interface BenchDatabase {
  name: string;
  /** Its connection string. */
  url: string;
  /** A client of it, for the raw baselines and direct inserts (`end()` it). */
  connect(): Promise<TestPostgresClient>;
  /** Drops it (closing its connections). */
  drop(): Promise<void>;
}

/** Creates database `name` (dropping a leftover of that name first). */
export async function createBenchDatabase(server: TestPostgres, name: string): Promise<BenchDatabase> {
  await server.dropDatabase(name);
  const url = await server.createDatabase(name);
  return { name, url, connect: () => server.connect(name), drop: () => server.dropDatabase(name) };
}

/**
 * `connectionString` is the database of a postgres driver (required for it, ignored otherwise);
 * `durability` the drivers' commit mode (docs/adr/0007; default `strict`).
 */
export function createDriver(name: DriverName, cacheDir: string, connectionString?: string, durability: Durability = 'strict'): CacheDriver {
  // Warnings (e.g. a hit not recorded) would only be noise in the figures.
  const onWarning = () => undefined;
  switch (name) {
    case 'sqlite':
      return new SqliteDriver({ cacheDir, onWarning, durability });
    case 'xattr':
      return new XattrDriver({ cacheDir, onWarning, durability });
    case 'postgres':
      if (connectionString === undefined) throw new Error('the postgres driver needs a connection string');
      return new PostgresDriver({ cacheDir, connectionString, onWarning, durability });
  }
}

/**
 * Opens a cache on `cacheDir`; `undefined` (with the reason) when the driver
 * refuses the filesystem (e.g. xattr where user xattrs are missing).
 */
export async function openCache(
  name: DriverName,
  cacheDir: string,
  maxSize = Number.MAX_SAFE_INTEGER,
  connectionString?: string,
  durability: Durability = 'strict',
): Promise<ImageCache | string> {
  try {
    return await ImageCache.open({ driver: createDriver(name, cacheDir, connectionString, durability), maxSize });
  } catch (error) {
    if (BadDriverConfigurationError.isInstance(error)) return (error as Error).message;
    throw error;
  }
}

/** The sqlite driver's database path for a cache directory (its default). */
export const dbPathOf = (cacheDir: string) => join(cacheDir, 'cache.db');

function secondsToNsText(seconds: number): string {
  return (BigInt(Math.round(seconds * 1e6)) * 1000n).toString();
}

export interface Population {
  ids: string[];
  totalBytes: number;
}

/**
 * Fills `cacheDir` with `count` entries of `entryBytes` each, quickly: the
 * files are written directly (no fsync), and the metadata is written the way
 * the driver keeps it, in Glance's format: one transaction of rows in
 * Glance's `cached_images` table for sqlite; `user.hits` (decimal text) plus
 * the driver's nanosecond last-access and commit times for xattr; for
 * postgres (`db` required) the schema and node row made by the
 * driver's own `configure()`, then one multi-row `INSERT` of this node's rows
 * (see {@link insertPostgresRows}). Access times are spread over the last 30
 * days so that prune has an order to follow.
 */
export async function populate(
  driver: DriverName,
  cacheDir: string,
  count: number,
  entryBytes: number,
  db?: BenchDatabase,
): Promise<Population> {
  mkdirSync(cacheDir, { recursive: true });
  for (const sub of SUBDIRECTORIES) mkdirSync(join(cacheDir, sub), { recursive: true });
  const payload = Buffer.alloc(entryBytes, 0x42);
  const now = Date.now() / 1000;
  const month = 30 * 86_400;
  const rows = Array.from({ length: count }, () => {
    const lastModified = now - month + Math.random() * (month / 2);
    return {
      id: randomUUID(),
      lastModified,
      lastAccessed: lastModified + Math.random() * (month / 2),
      hits: Math.floor(Math.random() * 50),
    };
  });
  for (const row of rows) writeFileSync(join(cacheDir, row.id), payload);
  if (driver === 'sqlite') {
    const db = new Database(dbPathOf(cacheDir));
    try {
      db.pragma('journal_mode = WAL');
      db.exec(CREATE_TABLE);
      db.exec(CREATE_LRU_INDEX);
      const insert = db.prepare(
        'INSERT INTO cached_images (image_id, last_accessed, last_modified, size, hits, checksum) VALUES (?, ?, ?, ?, ?, NULL)',
      );
      db.transaction(() => {
        for (const row of rows) insert.run(row.id, row.lastAccessed, row.lastModified, entryBytes, row.hits);
      })();
    } finally {
      db.close();
    }
  } else if (driver === 'postgres') {
    if (db === undefined) throw new Error('populate(postgres) needs a database');
    // The driver makes the schema (its migrations) and registers the node; nothing else touches the database.
    const setup = new PostgresDriver({ cacheDir, connectionString: db.url });
    await setup.configure();
    await setup.close();
    await insertPostgresRows(db, [{ nodeId: defaultNodeId(cacheDir), rows: rows.map((row) => ({ ...row, size: entryBytes })) }]);
  } else {
    for (const row of rows) {
      const path = join(cacheDir, row.id);
      setAttributeSync(path, XATTR.hits, String(row.hits));
      setAttributeSync(path, XATTR.lastAccessed, secondsToNsText(row.lastAccessed));
      setAttributeSync(path, XATTR.committed, secondsToNsText(row.lastModified));
    }
  }
  return { ids: rows.map((row) => row.id), totalBytes: count * entryBytes };
}

/** A row of the central `cached_images` table, as {@link insertPostgresRows} writes it. */
export interface PostgresRow {
  id: string;
  /** Epoch seconds. */
  lastAccessed: number;
  lastModified: number;
  size: number;
  hits: number;
}

/**
 * Inserts rows into the central tables directly (the schema must exist):
 * registers each node, then one multi-row `INSERT ... SELECT FROM unnest(...)`
 * per node, all in one transaction; then `VACUUM ANALYZE` (the planner's
 * statistics, and no autovacuum of these rows during a later measurement)
 * and a `CHECKPOINT` (no write-back of them either).
 */
export async function insertPostgresRows(db: BenchDatabase, nodes: readonly { nodeId: string; rows: readonly PostgresRow[] }[]): Promise<void> {
  const client = await db.connect();
  try {
    await client.query('BEGIN');
    for (const node of nodes) {
      const registered = await client.query<{ node_reference_id: string }>(
        `INSERT INTO node_reference (node_reference_url) VALUES ($1)
         ON CONFLICT (node_reference_url) DO UPDATE SET node_reference_url = EXCLUDED.node_reference_url
         RETURNING node_reference_id`,
        [node.nodeId],
      );
      await client.query(
        `INSERT INTO cached_images (node_reference_id, image_id, last_accessed, last_modified, size, hits, checksum)
         SELECT $1, f.id, to_timestamp(f.la), to_timestamp(f.lm), f.size, f.hits, NULL
         FROM unnest($2::text[], $3::float8[], $4::float8[], $5::bigint[], $6::bigint[]) AS f(id, la, lm, size, hits)`,
        [
          registered.rows[0]?.node_reference_id,
          node.rows.map((row) => row.id),
          node.rows.map((row) => Math.round(row.lastAccessed * 1e6) / 1e6),
          node.rows.map((row) => Math.round(row.lastModified * 1e6) / 1e6),
          node.rows.map((row) => row.size),
          node.rows.map((row) => row.hits),
        ],
      );
    }
    await client.query('COMMIT');
    await client.query('VACUUM ANALYZE node_reference, cached_images');
    await client.query('CHECKPOINT');
  } finally {
    await client.end();
  }
}
