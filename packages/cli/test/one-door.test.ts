// The CLI reaches cache files only through @cache/core (ImageCache): no command opens, stats,
// renames or lists a file of the cache directory itself. This guards that rule.
import { readdir, readFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';

const src = join(import.meta.dirname, '..', 'src');

/** Files that use node:fs for something other than cache files, and what for. */
const ALLOWED_FS = new Map([
  ['open-cache.ts', 'checks that --cache-dir is a cache directory before opening it (directories only)'],
  ['commands/prefetch.ts', 'checks the --origin-dir directory'],
  ['prefetch/checksums.ts', 'reads a --checksums file'],
  ['settings-file.ts', "writes and reads serve's own dot-file (.image-cache-settings.json), never an entry"],
  ['commands/serve.ts', 'reads the --tls-cert and --tls-key files'],
]);

/** Files that may call `rename` & co. on something that is not a cache file, and what for. */
const ALLOWED_DIRECT = new Map([['settings-file.ts', 'renames its temp file onto .image-cache-settings.json (atomic replace)']]);

async function sources(): Promise<string[]> {
  const entries = await readdir(src, { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile() && e.name.endsWith('.ts')).map((e) => join(e.parentPath, e.name));
}

describe('one door to the cache files', () => {
  it('no CLI source uses CacheDirectory, and only the listed ones import node:fs (for things that are not cache files)', async () => {
    const offenders: string[] = [];
    for (const file of await sources()) {
      const name = relative(src, file);
      const text = await readFile(file, 'utf8');
      if (/\bCacheDirectory\b/.test(text)) offenders.push(`${name}: CacheDirectory`);
      if (/from 'node:fs(\/promises)?'/.test(text) && !ALLOWED_FS.has(name)) offenders.push(`${name}: node:fs`);
      if (/\b(createReadStream|rename|lstat)\(/.test(text) && !ALLOWED_DIRECT.has(name)) offenders.push(`${name}: direct file call`);
    }
    expect(offenders).toEqual([]);
  });
});
