import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import Database from 'better-sqlite3';
import { setAttributeSync } from 'fs-xattr';
import { BadDriverConfigurationError, ImageCache, SUBDIRECTORIES, type CacheDriver } from '@cache/core';
import { CREATE_LRU_INDEX, CREATE_TABLE, SqliteDriver } from '@cache/driver-sqlite';
import { XATTR, XattrDriver } from '@cache/driver-xattr';

export const DRIVERS = ['sqlite', 'xattr'] as const;
export type DriverName = (typeof DRIVERS)[number];

export function createDriver(name: DriverName, cacheDir: string): CacheDriver {
  // Warnings (e.g. a hit not recorded) would only be noise in the figures.
  const onWarning = () => undefined;
  return name === 'sqlite' ? new SqliteDriver({ cacheDir, onWarning }) : new XattrDriver({ cacheDir, onWarning });
}

/**
 * Opens a cache on `cacheDir`; `undefined` (with the reason) when the driver
 * refuses the filesystem (e.g. xattr where user xattrs are missing).
 */
export async function openCache(
  name: DriverName,
  cacheDir: string,
  maxSize = Number.MAX_SAFE_INTEGER,
): Promise<ImageCache | string> {
  try {
    return await ImageCache.open({ driver: createDriver(name, cacheDir), maxSize });
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
 * the driver's nanosecond last-access and commit times for xattr. Access
 * times are spread over the last 30 days so that prune has an order to
 * follow.
 */
export function populate(driver: DriverName, cacheDir: string, count: number, entryBytes: number): Population {
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
