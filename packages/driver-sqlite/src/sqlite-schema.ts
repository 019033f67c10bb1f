/**
 * The schema of Glance's sqlite image-cache driver (`glance/image_cache/drivers/sqlite.py`),
 * kept exactly, so one cache directory works with both. We only add an index
 * for the LRU query, which Glance ignores.
 */

/** Glance's table, verbatim in meaning: epoch-second floats, size in bytes. */
export const CREATE_TABLE = `
CREATE TABLE IF NOT EXISTS cached_images (
  image_id TEXT PRIMARY KEY,
  last_accessed REAL DEFAULT 0.0,
  last_modified REAL DEFAULT 0.0,
  size INTEGER DEFAULT 0,
  hits INTEGER DEFAULT 0,
  checksum TEXT
)`;

/** Serves `ORDER BY last_accessed, last_modified, image_id LIMIT n` without a full scan. */
export const CREATE_LRU_INDEX = `
CREATE INDEX IF NOT EXISTS cached_images_lru_idx
  ON cached_images (last_accessed, last_modified, image_id)`;

/** Columns the driver reads and writes; a table lacking one is refused at configure. */
export const REQUIRED_COLUMNS = ['image_id', 'last_accessed', 'last_modified', 'size', 'hits', 'checksum'] as const;

/** A row of `cached_images`. */
export interface CachedImageRow {
  image_id: string;
  last_accessed: number | null;
  last_modified: number | null;
  size: number | null;
  hits: number | null;
  checksum: string | null;
}

export const SQL = {
  upsert: `INSERT INTO cached_images (image_id, last_accessed, last_modified, size, hits, checksum)
           VALUES (@id, @time, @time, @size, 0, @checksum)
           ON CONFLICT (image_id) DO UPDATE SET
             last_accessed = excluded.last_accessed, last_modified = excluded.last_modified,
             size = excluded.size, hits = 0, checksum = excluded.checksum`,
  hit: `UPDATE cached_images SET hits = hits + 1, last_accessed = @time WHERE image_id = @id`,
  insertIfMissing: `INSERT OR IGNORE INTO cached_images (image_id, last_accessed, last_modified, size, hits, checksum)
                    VALUES (@id, @lastAccessed, @lastModified, @size, @hits, NULL)`,
  selectOne: `SELECT image_id, last_accessed, last_modified, size, hits, checksum FROM cached_images WHERE image_id = ?`,
  selectAll: `SELECT image_id, last_accessed, last_modified, size, hits, checksum FROM cached_images`,
  selectIds: `SELECT image_id, size FROM cached_images`,
  deleteOne: `DELETE FROM cached_images WHERE image_id = ?`,
  deleteAll: `DELETE FROM cached_images`,
  fixSize: `UPDATE cached_images SET size = @size WHERE image_id = @id`,
} as const;
