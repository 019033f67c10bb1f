// Issue 13: every message that names a remedy names one an operator can run (`image-cache clean`, not
// `clean()`), and none advises what loses data. Greps the built code of every package the CLI runs, and
// checks messages built at run time.
import { readdir, readFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ImageBeingCachedError } from '@cache/core';
import { permissionAdvice, storageError } from '@cache/core/driver';

const PACKAGES = join(import.meta.dirname, '..', '..');
/** What the CLI and the server run (the conformance kit's messages are for driver authors' test runs). */
const BUILT = ['core', 'driver-sqlite', 'driver-xattr', 'driver-postgres', 'origin', 'server', 'cli'].map((name) => join(PACKAGES, name, 'dist'));

/** A remedy that names a function call: "run clean()", "call configure()", "removed by clean()", "use prune()". */
const CALL_REMEDY = /\b(?:run|runs|call|calls|use|by|then|try|retry with)\s+(?:and\s+await\s+)?`?[A-Za-z_][\w.]*\(\)/i;
/** Advice that throws data away for something that is not damage. */
const LOSES_DATA = /\bmove (?:it|them|the database|the file) aside\b|\bif it is damaged, move\b/i;

/**
 * Messages allowed to name a call, each with why: they can only reach a
 * program that uses the library wrongly, never an operator of the CLI or the
 * server (both always open caches through `ImageCache.open`).
 */
const ALLOWED = [
  // DriverNotOpenError('new'): a driver used before configure(); ImageCache.open configures every driver.
  'call and await configure() first (ImageCache.open does it)',
];

async function jsFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true }).catch(() => []);
  return entries.filter((entry) => entry.isFile() && entry.name.endsWith('.js')).map((entry) => join(entry.parentPath, entry.name));
}

/** The string and template literals on the code lines of a built file (comment lines skipped). */
function literals(text: string): { line: number; value: string }[] {
  const found: { line: number; value: string }[] = [];
  text.split('\n').forEach((raw, index) => {
    const line = raw.trim();
    if (line.startsWith('//') || line.startsWith('*') || line.startsWith('/*')) return;
    for (const match of line.matchAll(/(['"`])((?:\\.|(?!\1)[^\\])*)\1/g)) found.push({ line: index + 1, value: match[2] ?? '' });
  });
  return found;
}

describe('messages name remedies an operator can run', () => {
  it('no built message of core, the drivers, the origin, the server or the CLI advises a function call or moving data aside', async () => {
    const files = (await Promise.all(BUILT.map(jsFiles))).flat();
    expect(files.length).toBeGreaterThan(40); // the packages are built (a missing dist/ would pass vacuously)
    const offenders: string[] = [];
    for (const file of files) {
      for (const { line, value } of literals(await readFile(file, 'utf8'))) {
        if (ALLOWED.some((allowed) => value.includes(allowed))) continue;
        if (CALL_REMEDY.test(value) || LOSES_DATA.test(value)) offenders.push(`${relative(PACKAGES, file)}:${line}: ${value}`);
      }
    }
    expect(offenders).toEqual([]);
  });

  it('the grep finds what it is for (the patterns are not dead)', () => {
    const bad = [
      "'run clean() once the database is back'",
      '`A stalled file is removed by clean() after the stall time.`',
      '"call configure() to run the migrations"',
      "'Check the database file; if it is damaged, move it aside and run clean() to rebuild it from the files.'",
    ];
    for (const text of bad) {
      const value = literals(text)[0]?.value ?? '';
      expect(CALL_REMEDY.test(value) || LOSES_DATA.test(value), text).toBe(true);
    }
  });

  it('a stalled writer names `image-cache clean`', () => {
    const message = new ImageBeingCachedError('img', '/cache/incomplete/img').message;
    expect(message).toContain('`image-cache clean`');
    expect(message).not.toMatch(/clean\(\)/);
  });

  it('permission problems are named as such, with chown/chmod or running as the owner, and nothing to move', () => {
    for (const error of [
      storageError('write', '/var/cache/images/incomplete/img', Object.assign(new Error('EACCES: permission denied'), { code: 'EACCES' })),
      storageError('rename', '/var/cache/images/img', Object.assign(new Error('EPERM: operation not permitted'), { code: 'EPERM' })),
    ]) {
      expect(error.message).toMatch(/permissions problem, not damage/);
      expect(error.message).toMatch(/`chown -R \S+ \/var\/cache\/images[^`]*`/);
      expect(error.message).toMatch(/`chmod -R u\+rwX /);
      expect(error.message).toMatch(/run image-cache as the directory's owner/);
      expect(error.message).not.toMatch(LOSES_DATA);
    }
    expect(permissionAdvice('/srv/c/cache.db', '/srv/c')).toMatch(/`chown -R \S+ \/srv\/c`/);
  });
});
