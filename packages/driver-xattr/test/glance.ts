/**
 * What Glance's xattr driver (glance/image_cache/drivers/xattr.py) does to a
 * cache directory, replayed with Python's own os.setxattr/os.getxattr, so the
 * compatibility tests exercise a second implementation, not our code reading
 * its own output.
 */
import { execFileSync } from 'node:child_process';

function python<T>(script: string, ...args: string[]): T {
  return JSON.parse(execFileSync('python3', ['-c', script, ...args], { encoding: 'utf8' })) as T;
}

const PRELUDE = `
import json, os, stat, sys, time
base = sys.argv[1]
def get_xattr(path, key, default=None):
    try:
        return os.getxattr(path, 'user.%s' % key).decode()
    except OSError:
        if default is not None:
            return default
        raise
def set_xattr(path, key, value):
    os.setxattr(path, 'user.%s' % key, str(value).encode())
def get_all_regular_files(basepath):
    for fname in os.listdir(basepath):
        path = os.path.join(basepath, fname)
        if os.path.isfile(path):
            yield path
`;

/** Glance's open_for_write + commit: write incomplete/<id>, set user.hits=0, rename, drop the marker; atime as given. */
export function glanceCache(base: string, id: string, data: string, atime: number): void {
  python(
    `${PRELUDE}
image_id, data, atime = sys.argv[2], sys.argv[3], float(sys.argv[4])
for sub in ('incomplete', 'invalid', 'queue'):
    os.makedirs(os.path.join(base, sub), exist_ok=True)
incomplete = os.path.join(base, 'incomplete', image_id)
with open(incomplete, 'wb') as f:
    f.write(data.encode())
set_xattr(incomplete, 'hits', 0)
final = os.path.join(base, image_id)
os.rename(incomplete, final)
queued = os.path.join(base, 'queue', image_id)
if os.path.exists(queued):
    os.unlink(queued)
os.utime(final, (atime, os.stat(final).st_mtime))
print('null')`,
    base,
    id,
    data,
    String(atime),
  );
}

/** Glance's open_for_read: read, then increment user.hits (read-modify-write). */
export function glanceRead(base: string, id: string): string {
  return python<string>(
    `${PRELUDE}
path = os.path.join(base, sys.argv[2])
with open(path, 'rb') as f:
    data = f.read()
hits = int(get_xattr(path, 'hits', default=0))
set_xattr(path, 'hits', hits + 1)
print(json.dumps(data.decode()))`,
    base,
    id,
  );
}

/** Glance's get_cached_images and get_least_recently_accessed. */
export function glanceList(base: string): {
  cached: { image_id: string; hits: number; last_accessed: number; size: number }[];
  lru: string | null;
} {
  return python(
    `${PRELUDE}
entries = []
for path in get_all_regular_files(base):
    st = os.stat(path)
    entries.append({'image_id': os.path.basename(path), 'hits': int(get_xattr(path, 'hits', default=0)),
                    'last_accessed': st[stat.ST_ATIME], 'size': st[stat.ST_SIZE]})
entries.sort(key=lambda e: e['image_id'])
stats = sorted((os.stat(p)[stat.ST_ATIME], os.stat(p)[stat.ST_SIZE], p) for p in get_all_regular_files(base))
print(json.dumps({'cached': entries, 'lru': os.path.basename(stats[0][2]) if stats else None}))`,
    base,
  );
}

/** Reads one user attribute of a file the way Glance does ('' when missing). */
export function glanceGetXattr(path: string, key: string): string {
  return python<string>(`${PRELUDE}\nprint(json.dumps(get_xattr(base, sys.argv[2], default='')))`, path, key);
}
