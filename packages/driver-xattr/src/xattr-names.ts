/**
 * The extended attributes the driver keeps on each cache file. The first two
 * are Glance's (`glance/image_cache/drivers/xattr.py`), with Glance's value
 * format (UTF-8 decimal text); the others are ours, in their own `user.`
 * sub-namespace, which Glance ignores.
 */
export const XATTR = {
  /** Completed reads, decimal text. Glance's name and format. */
  hits: 'user.hits',
  /** Why a write was rolled back or an entry quarantined, set on files moved to `invalid/`. Glance's name. */
  error: 'user.error',
  /** Last completed read, nanoseconds since the epoch as decimal text (ours). */
  lastAccessed: 'user.image_cache.last_accessed_ns',
  /**
   * Commit time, nanoseconds since the epoch as decimal text (ours). The file's
   * mtime would do, but setting atime for Glance rewrites mtime at microsecond
   * precision, so the commit time is kept exactly here.
   */
  committed: 'user.image_cache.committed_ns',
  /** Verified digest stored at commit: `sha256:<hex>` or md5 hex (ours). */
  checksum: 'user.image_cache.checksum',
  /**
   * The file the metadata was written for: `<inode>:<size>:<mtime ns>` at
   * commit (ours). A file rewritten in place by another process keeps its
   * attributes but not its mtime and size, so stale hits and digests are
   * recognised and ignored.
   */
  file: 'user.image_cache.file',
  /** Set on the configure-time probe file only. */
  probe: 'user.image_cache.probe',
} as const;

/** Longest `user.error` text we store (ext4 keeps ~4 KiB of attributes per file in all). */
export const MAX_ERROR_LENGTH = 1024;
