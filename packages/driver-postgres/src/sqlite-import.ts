import { BadDriverConfigurationError, isValidImageId, type ImageId } from '@cache/core';
import { type CacheDirectory } from '@cache/core/driver';

/** What an import from a sqlite `cache.db` did. */
export interface SqliteImportReport {
  /** The sqlite file that was read. */
  dbPath: string;
  /** Rows found in its `cached_images` table. */
  rows: number;
  /** Rows upserted into the central tables for this node. */
  imported: number;
  /** Ids skipped because their file is not in the cache directory (any more). */
  missingFile: string[];
  /** Ids skipped because they cannot be cache entries here (e.g. `..`, a reserved name). */
  invalidId: string[];
}

/** One row ready to upsert. */
export interface ImportRow {
  imageId: ImageId;
  lastAccessed: number;
  lastModified: number;
  size: number;
  hits: number;
  checksum: string | null;
}

interface SqliteRow {
  image_id: unknown;
  last_accessed?: unknown;
  last_modified?: unknown;
  hits?: unknown;
  checksum?: unknown;
}

const OPTIONAL_COLUMNS = ['last_accessed', 'last_modified', 'hits', 'checksum'] as const;

/**
 * Reads the `cached_images` table of a sqlite cache database (ours, or
 * Glance's sqlite driver's: same table) and keeps the rows whose active file
 * exists in `dir`, with the file's real size. Times of 0 or NULL (Glance
 * before 2015 inserted `last_accessed = 0`) fall back to the commit time,
 * then to the file's mtime.
 */
export async function readSqliteCache(
  dbPath: string,
  driverName: string,
  dir: CacheDirectory,
): Promise<{ rows: ImportRow[]; report: SqliteImportReport }> {
  let Database: typeof import('better-sqlite3');
  try {
    Database = (await import('better-sqlite3')).default;
  } catch (error) {
    throw new BadDriverConfigurationError(
      driverName,
      `importing ${dbPath} needs the optional peer dependency better-sqlite3: install it (npm install better-sqlite3@12) and retry`,
      { cause: error, path: dbPath },
    );
  }
  let source: SqliteRow[];
  try {
    const db = new Database(dbPath, { readonly: true, fileMustExist: true });
    try {
      const columns = new Set((db.pragma('table_info(cached_images)') as { name: string }[]).map((c) => c.name));
      if (!columns.has('image_id')) throw new Error('it has no cached_images table with an image_id column');
      const select = ['image_id', ...OPTIONAL_COLUMNS.filter((c) => columns.has(c))].join(', ');
      source = db.prepare(`SELECT ${select} FROM cached_images ORDER BY image_id`).all() as SqliteRow[];
    } finally {
      db.close();
    }
  } catch (error) {
    throw new BadDriverConfigurationError(
      driverName,
      `cannot import ${dbPath}: ${(error as Error).message}. Pass the path of a sqlite cache database ` +
        "(the sqlite driver's or Glance's cache.db, which has a cached_images table).",
      { cause: error, path: dbPath },
    );
  }
  const report: SqliteImportReport = { dbPath, rows: source.length, imported: 0, missingFile: [], invalidId: [] };
  const rows: ImportRow[] = [];
  for (const row of source) {
    const id = typeof row.image_id === 'string' ? row.image_id : String(row.image_id);
    if (!isValidImageId(id, dir.reservedNames)) {
      report.invalidId.push(id);
      continue;
    }
    const file = await dir.statFile(id, 'active');
    if (file === undefined) {
      report.missingFile.push(id);
      continue;
    }
    const lastModified = positiveNumber(row.last_modified) ?? file.mtime;
    rows.push({
      imageId: id,
      lastModified,
      lastAccessed: positiveNumber(row.last_accessed) ?? lastModified,
      size: file.size,
      hits: Math.max(0, Math.trunc(positiveNumber(row.hits) ?? 0)),
      checksum: typeof row.checksum === 'string' && row.checksum.length > 0 ? row.checksum : null,
    });
  }
  report.imported = rows.length;
  return { rows, report };
}

function positiveNumber(value: unknown): number | undefined {
  const n = typeof value === 'number' ? value : typeof value === 'bigint' ? Number(value) : typeof value === 'string' ? Number(value) : NaN;
  return Number.isFinite(n) && n > 0 ? n : undefined;
}
