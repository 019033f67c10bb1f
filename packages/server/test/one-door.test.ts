// The server reaches cache files only through @cache/core (ImageCache.stat / openForRead): it never
// opens, stats or renames a file of the cache directory itself. This guards that rule.
import { readdir, readFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';

const src = join(import.meta.dirname, '..', 'src');
/** The one module allowed node:fs: it reads the status page's files (status-page/ of the package). */
const PAGE_FILES_MODULE = 'status-assets.ts';

describe('one door to the cache files', () => {
  it('no server source imports node:fs or uses CacheDirectory or file calls', async () => {
    const entries = await readdir(src, { recursive: true, withFileTypes: true });
    const offenders: string[] = [];
    for (const entry of entries.filter((e) => e.isFile() && e.name.endsWith('.ts'))) {
      const file = join(entry.parentPath, entry.name);
      const text = await readFile(file, 'utf8');
      const name = relative(src, file);
      if (name === PAGE_FILES_MODULE) {
        // It reads the status page's own files from the package, and nothing else.
        if (!/new URL\('\.\.\/status-page\/', import\.meta\.url\)/.test(text) || (text.match(/readFile\(/g) ?? []).length !== 1) {
          offenders.push(`${name}: reads more than the package's status-page/ files`);
        }
        continue;
      }
      if (/from 'node:fs(\/promises)?'/.test(text)) offenders.push(`${name}: node:fs`);
      if (/\bCacheDirectory\b/.test(text)) offenders.push(`${name}: CacheDirectory`);
      if (/\b(createReadStream|rename|lstat)\(/.test(text)) offenders.push(`${name}: direct file call`);
    }
    expect(offenders).toEqual([]);
  });
});
