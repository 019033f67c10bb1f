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
  checksum TEXT,
  file_id TEXT
)`;

/**
 * Our one column beyond Glance's: the identity (inode, size, mtime) of the file a
 * row describes, so a file replaced under its id by another process does not
 * inherit the old row's hits and digest. Glance names its columns in every
 * statement, so it neither reads nor clears it; its rows have it NULL (trusted).
 */
export const ADD_FILE_ID_COLUMN = `ALTER TABLE cached_images ADD COLUMN file_id TEXT`;

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
  file_id: string | null;
}

/** A row of {@link SQL.selectListing}, read with `.raw()`: id, hits, last access, commit time, file identity. */
export type ListingRow = [string, number | null, number | null, number | null, string | null];

/** A row describes the file `@fid` (or was written by Glance, which records no identity). */
const SAME_FILE = `(file_id IS NULL OR file_id = @fid)`;

export const SQL = {
  upsert: `INSERT INTO cached_images (image_id, last_accessed, last_modified, size, hits, checksum, file_id)
           VALUES (@id, @time, @time, @size, 0, @checksum, @fid)
           ON CONFLICT (image_id) DO UPDATE SET
             last_accessed = excluded.last_accessed, last_modified = excluded.last_modified,
             size = excluded.size, hits = 0, checksum = excluded.checksum, file_id = excluded.file_id`,
  // A row of a file since replaced starts over: this read is its first hit, and the old digest is dropped.
  hit: `UPDATE cached_images SET
          hits = CASE WHEN ${SAME_FILE} THEN hits + 1 ELSE 1 END,
          last_modified = CASE WHEN ${SAME_FILE} THEN last_modified ELSE @mtime END,
          checksum = CASE WHEN ${SAME_FILE} THEN checksum ELSE NULL END,
          size = @size, last_accessed = @time, file_id = @fid
        WHERE image_id = @id`,
  hits: `UPDATE cached_images SET
          hits = CASE WHEN ${SAME_FILE} THEN hits + @count ELSE @count END,
          last_modified = CASE WHEN ${SAME_FILE} THEN last_modified ELSE @mtime END,
          checksum = CASE WHEN ${SAME_FILE} THEN checksum ELSE NULL END,
          size = @size, last_accessed = MAX(COALESCE(last_accessed, 0), @time), file_id = @fid
        WHERE image_id = @id`,
  insertIfMissing: `INSERT OR IGNORE INTO cached_images (image_id, last_accessed, last_modified, size, hits, checksum, file_id)
                    VALUES (@id, @lastAccessed, @lastModified, @size, @hits, NULL, @fid)`,
  selectOne: `SELECT image_id, last_accessed, last_modified, size, hits, checksum, file_id FROM cached_images WHERE image_id = ?`,
  selectChecksum: `SELECT checksum, file_id FROM cached_images WHERE image_id = ?`,
  selectHits: `SELECT hits, file_id FROM cached_images WHERE image_id = ?`,
  // Walks the LRU index (cached_images_lru_idx) from its head: what prune evicts next.
  selectByRecency: `SELECT image_id, last_accessed, last_modified, file_id FROM cached_images
                    ORDER BY last_accessed, last_modified, image_id`,
  selectIdList: `SELECT image_id FROM cached_images`,
  syncOff: `PRAGMA synchronous = OFF`,
  syncNormal: `PRAGMA synchronous = NORMAL`,
  syncFull: `PRAGMA synchronous = FULL`,
  selectAll: `SELECT image_id, last_accessed, last_modified, size, hits, checksum, file_id FROM cached_images`,
  selectIds: `SELECT image_id, size FROM cached_images`,
  // What a listing needs of every row (not the digest), as arrays (see ListingRow).
  selectListing: `SELECT image_id, hits, last_accessed, last_modified, file_id FROM cached_images`,
  deleteOne: `DELETE FROM cached_images WHERE image_id = ?`,
  deleteAll: `DELETE FROM cached_images`,
  fixSize: `UPDATE cached_images SET size = @size WHERE image_id = @id`,
} as const;
