import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CacheDriver, CachedImage } from '@cache/core';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { verifyCacheDir } from '../src/index.js';

let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'conformance-verify-'));
  for (const sub of ['incomplete', 'invalid', 'queue']) await mkdir(join(dir, sub));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function kinds(problems: { kind: string; path: string }[]): [string, string][] {
  return problems.map((p): [string, string] => [p.kind, p.path.slice(dir.length + 1)]).sort();
}

/** A stand-in driver that lists what it is told to. */
function fakeDriver(images: Pick<CachedImage, 'imageId' | 'size'>[], queued: string[]): CacheDriver {
  return {
    name: 'fake',
    getCachedImages: async () => images.map((i) => ({ ...i, hits: 0, lastAccessed: 0, lastModified: 0 })),
    getQueuedImages: async () => queued,
  } as unknown as CacheDriver;
}

describe('verifyCacheDir()', () => {
  it('finds nothing wrong in a sound layout with entries, driver files and dot-files', async () => {
    await writeFile(join(dir, 'a'), 'aaa');
    await writeFile(join(dir, 'cache.db'), 'db');
    await writeFile(join(dir, '.lock'), '');
    await writeFile(join(dir, 'incomplete', 'b'), 'b');
    await writeFile(join(dir, 'invalid', 'c'), 'c');
    await writeFile(join(dir, 'queue', 'd'), '');
    expect(await verifyCacheDir(dir)).toEqual([]);
    expect(await verifyCacheDir(dir, { driver: fakeDriver([{ imageId: 'a', size: 3 }], ['d']) })).toEqual([]);
  });

  it('reports a missing cache directory, and a file in its place', async () => {
    expect(kinds(await verifyCacheDir(join(dir, 'nope')))).toEqual([['missing-directory', 'nope']]);
    await writeFile(join(dir, 'file'), 'x');
    expect(kinds(await verifyCacheDir(join(dir, 'file')))).toEqual([['not-a-directory', 'file']]);
  });

  it('reports missing and non-directory sub-directories', async () => {
    await rm(join(dir, 'queue'), { recursive: true });
    await rm(join(dir, 'invalid'), { recursive: true });
    await writeFile(join(dir, 'invalid'), 'x');
    expect(kinds(await verifyCacheDir(dir))).toEqual([
      ['missing-directory', 'queue'],
      ['not-a-directory', 'invalid'],
    ]);
  });

  it('reports non-regular entries and names that are not valid ids', async () => {
    await mkdir(join(dir, 'subdir'));
    await symlink('subdir', join(dir, 'link'));
    await writeFile(join(dir, 'incomplete', 'a\\b'), 'x');
    await writeFile(join(dir, 'invalid', '.hidden'), 'x');
    await mkdir(join(dir, 'queue', 'q'));
    await writeFile(join(dir, 'x'.repeat(255)), 'ok');
    expect(kinds(await verifyCacheDir(dir))).toEqual(
      [
        ['invalid-name', 'incomplete/a\\b'],
        ['invalid-name', 'invalid/.hidden'],
        ['not-a-regular-file', 'link'],
        ['not-a-regular-file', 'queue/q'],
        ['not-a-regular-file', 'subdir'],
      ].sort(),
    );
  });

  it('reports hidden names in the cache dir only when allowHidden is false, and driver files only outside ownFiles', async () => {
    await writeFile(join(dir, '.lock'), '');
    await writeFile(join(dir, 'my.db'), '');
    expect(kinds(await verifyCacheDir(dir, { ownFiles: ['my.db'] }))).toEqual([]);
    expect(kinds(await verifyCacheDir(dir, { allowHidden: false, ownFiles: ['my.db'] }))).toEqual([['invalid-name', '.lock']]);
  });

  it('reports a queue marker with content and an id both cached and queued', async () => {
    await writeFile(join(dir, 'a'), 'a');
    await writeFile(join(dir, 'queue', 'a'), '');
    await writeFile(join(dir, 'queue', 'b'), 'not empty');
    expect(kinds(await verifyCacheDir(dir))).toEqual([
      ['queue-marker-not-empty', 'queue/b'],
      ['queued-and-cached', 'queue/a'],
    ]);
  });

  it('with a driver, reports listings that disagree with the files', async () => {
    await writeFile(join(dir, 'a'), 'aaa');
    await writeFile(join(dir, 'b'), 'b');
    await writeFile(join(dir, 'queue', 'q'), '');
    const driver = fakeDriver(
      [
        { imageId: 'a', size: 4 },
        { imageId: 'ghost', size: 1 },
      ],
      ['r'],
    );
    expect(kinds(await verifyCacheDir(dir, { driver }))).toEqual([
      ['file-not-listed', 'b'],
      ['listed-without-file', 'ghost'],
      ['queue-mismatch', 'queue'],
      ['size-mismatch', 'a'],
    ]);
  });
});
