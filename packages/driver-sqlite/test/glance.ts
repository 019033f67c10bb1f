/**
 * What Glance's sqlite driver (glance/image_cache/drivers/sqlite.py) does to a
 * cache directory, replayed with Python's sqlite3 module and the same SQL, so
 * the compatibility tests exercise a real second implementation, not our own
 * code reading its own output.
 */
import { python } from './helpers.js';

const PRELUDE = `
import json, os, sqlite3, sys, time
base = sys.argv[1]
db = os.path.join(base, 'cache.db')
def connect():
    conn = sqlite3.connect(db, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute('PRAGMA synchronous = NORMAL')
    conn.execute('PRAGMA temp_store = MEMORY')
    return conn
`;

/** Glance's configure(): directories and the table. */
export function glanceConfigure(base: string): void {
  python(
    `${PRELUDE}
for sub in ('incomplete', 'invalid', 'queue'):
    os.makedirs(os.path.join(base, sub), exist_ok=True)
conn = connect()
conn.executescript("""
    CREATE TABLE IF NOT EXISTS cached_images (
        image_id TEXT PRIMARY KEY,
        last_accessed REAL DEFAULT 0.0,
        last_modified REAL DEFAULT 0.0,
        size INTEGER DEFAULT 0,
        hits INTEGER DEFAULT 0,
        checksum TEXT
    );
""")
conn.commit()
open(os.path.join(base, 'image_cache_db_init'), 'a').close()  # the lock file oslo leaves behind
print('null')`,
    base,
  );
}

/** Glance's open_for_write + commit: write incomplete/<id>, rename, drop the queue marker, insert the row. */
export function glanceCache(base: string, id: string, data: string, at?: number): void {
  python(
    `${PRELUDE}
image_id, data = sys.argv[2], sys.argv[3]
now = float(sys.argv[4]) if len(sys.argv) > 4 else time.time()
incomplete = os.path.join(base, 'incomplete', image_id)
with open(incomplete, 'wb') as f:
    f.write(data.encode())
final = os.path.join(base, image_id)
os.rename(incomplete, final)
queued = os.path.join(base, 'queue', image_id)
if os.path.exists(queued):
    os.unlink(queued)
conn = connect()
conn.execute("""INSERT INTO cached_images (image_id, last_accessed, last_modified, hits, size)
                VALUES (?, ?, ?, 0, ?)""", (image_id, now, now, os.path.getsize(final)))
conn.commit()
print('null')`,
    base,
    id,
    data,
    ...(at === undefined ? [] : [String(at)]),
  );
}

/** Glance's open_for_read: read the file, then one UPDATE of hits and last_accessed. */
export function glanceRead(base: string, id: string): string {
  return python<string>(
    `${PRELUDE}
image_id = sys.argv[2]
with open(os.path.join(base, image_id), 'rb') as f:
    data = f.read()
conn = connect()
conn.execute("UPDATE cached_images SET hits = hits + 1, last_accessed = ? WHERE image_id = ?", (time.time(), image_id))
conn.commit()
print(json.dumps(data.decode()))`,
    base,
    id,
  );
}

/** What Glance's listing calls return: get_cached_images, get_least_recently_accessed, get_queued_images. */
export function glanceList(base: string): {
  cached: { image_id: string; hits: number; last_accessed: number; last_modified: number; size: number; checksum: string | null }[];
  lru: string | null;
  queued: string[];
} {
  return python(
    `${PRELUDE}
conn = connect()
cached = [dict(r) for r in conn.execute("SELECT * FROM cached_images ORDER BY image_id")]
row = conn.execute("SELECT image_id FROM cached_images ORDER BY last_accessed LIMIT 1").fetchone()
qdir = os.path.join(base, 'queue')
files = [(os.stat(os.path.join(qdir, n)).st_mtime, n) for n in os.listdir(qdir) if os.path.isfile(os.path.join(qdir, n))]
print(json.dumps({'cached': cached, 'lru': row[0] if row else None, 'queued': [n for _, n in sorted(files)]}))`,
    base,
  );
}
