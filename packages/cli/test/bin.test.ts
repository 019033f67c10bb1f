import { Readable } from 'node:stream';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { bin, driverMatrix, suiteTitle, tempDir, tree, withCache } from './helpers.js';

let root: string;
let cleanup: () => Promise<void>;

beforeEach(async () => {
  ({ dir: root, cleanup } = await tempDir('bin'));
});
afterEach(() => cleanup());

for (const { name: driver, skip } of await driverMatrix()) {
  describe.skipIf(skip !== undefined)(`the built binary, ${suiteTitle(driver, skip)}`, () => {
    it('runs a whole session: queue, prefetch from a directory, list, verify, prune, stats', async () => {
      const env = { IMAGE_CACHE_DIR: join(root, 'cache'), IMAGE_CACHE_DRIVER: driver };
      await writeFile(join(root, 'img-a'), Buffer.alloc(4000, 'a'));
      await writeFile(join(root, 'img-b'), Buffer.alloc(6000, 'b'));
      expect(await bin(['queue', 'img-a', 'img-b'], { env })).toMatchObject({ code: 0, stdout: 'queued img-a\nqueued img-b\n' });

      // One at a time: img-a is committed before img-b, so prune's LRU choice below does not depend on which download finished first.
      const prefetch = await bin(['prefetch', '--origin', root, '--concurrency', '1'], { env });
      expect(prefetch.code).toBe(0);
      expect(prefetch.stdout).toMatch(/^prefetch: 2 fetched \(9\.77 KiB\), 0 failed of 2 in \S+\n$/);
      expect(prefetch.stderr).toMatch(/^fetched img-a: 3\.91 KiB in /m);

      const list = await bin(['list', '--json'], { env });
      expect(JSON.parse(list.stdout).map((r: { imageId: string; size: number }) => [r.imageId, r.size])).toEqual([
        ['img-a', 4000],
        ['img-b', 6000],
      ]);
      const verify = await bin(['verify'], { env });
      expect(verify).toMatchObject({ code: 0, stdout: expect.stringContaining('verified 2 images: 0 ok, 0 mismatched, 2 unverifiable') });

      const prune = await bin(['prune', '--max-size', '6000B', '--json'], { env });
      expect(JSON.parse(prune.stdout)).toMatchObject({ evicted: ['img-a'], files: 1, bytes: 4000 });
      const stats = await bin(['stats', '--json'], { env });
      expect(JSON.parse(stats.stdout)).toMatchObject({ driver, entries: 1, totalSize: 6000, queued: 0 });
    });
  });
}

describe('the built binary', () => {
  it('exits 2 on a usage error with one line on stderr and creates nothing', async () => {
    const result = await bin(['--cache-dir', 'cache', 'prune', '--max-size', '20XB'], { cwd: root });
    expect(result).toEqual({
      code: 2,
      stdout: '',
      stderr: 'image-cache: invalid --max-size "20XB": use bytes or a number with a unit, e.g. 500MB, 20GiB (units are powers of 1024) [CLI_INVALID_SIZE]\n',
    });
    expect(existsSync(join(root, 'cache'))).toBe(false);
  });

  it('exits 1 on an operational error and reads the config file from the working directory', async () => {
    await writeFile(join(root, 'image-cache.config.json'), JSON.stringify({ cacheDir: 'cache' }));
    const result = await bin(['info', 'img'], { cwd: root });
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/^image-cache: .*cache does not exist, so it is not an image cache directory.*\[CLI_NOT_A_CACHE_DIR\]\n$/);
    await withCache('sqlite', join(root, 'cache'), (cache) => cache.cacheImage('img', Readable.from([Buffer.from('hi')])));
    const info = await bin(['info', 'img', '--json'], { cwd: root });
    expect(JSON.parse(info.stdout)).toMatchObject({ imageId: 'img', size: 2, state: 'cached' });
    expect(await tree(join(root, 'cache', 'queue'))).toEqual([]);
  });
});
