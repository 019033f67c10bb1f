import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cli, driverMatrix, put, read, suiteTitle, tempDir, tree, withCache } from './helpers.js';

/**
 * Bit rot: other bytes of the same length in the same file, its times as they
 * were (a rewrite that moved mtime would be a replaced file, whose digest no
 * longer applies).
 */
async function rot(path: string, bytes: string): Promise<void> {
  const before = await stat(path);
  await writeFile(path, bytes, { flag: 'r+' });
  await utimes(path, before.atimeMs / 1000, before.mtimeMs / 1000);
}

const sha256 = (data: string) => createHash('sha256').update(data).digest('hex');

for (const { name: driver, skip } of await driverMatrix()) {
  describe.skipIf(skip !== undefined)(suiteTitle(driver, skip), () => {
    let root: string;
    let cacheDir: string;
    let cleanup: () => Promise<void>;
    const run = (...argv: string[]) => cli(['--driver', driver, '--cache-dir', cacheDir, ...argv]);
    const ids = async () => withCache(driver, cacheDir, async (cache) => (await cache.getCachedImages()).map((i) => i.imageId));

    beforeEach(async () => {
      ({ dir: root, cleanup } = await tempDir(`commands-${driver}`));
      cacheDir = join(root, 'cache');
    });
    afterEach(() => cleanup());

    describe('list', () => {
      it('prints a table of id, size, hits and last access, sorted by id', async () => {
        await withCache(driver, cacheDir, async (cache) => {
          await put(cache, 'beta', 'x'.repeat(2048));
          await put(cache, 'alpha', 'abc');
          await read(cache, 'alpha');
          await read(cache, 'alpha');
        });
        const { code, stdout, stderr } = await run('list');
        expect(code).toBe(0);
        expect(stderr).toBe('');
        const lines = stdout.trimEnd().split('\n');
        expect(lines[1]).toMatch(/ID\s+│\s+Size\s+│\s+Hits\s+│\s+Last accessed \(UTC\)\s+│\s+Last modified \(UTC\)/);
        const rows = lines.filter((line) => /alpha|beta/.test(line));
        expect(rows).toHaveLength(2);
        expect(rows[0]).toMatch(/│ alpha\s+│\s+3 B │\s+2 │ \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ │/);
        expect(rows[1]).toMatch(/│ beta\s+│\s+2 KiB │\s+0 │/);
      });

      it('--json prints the records with epoch-second times', async () => {
        const before = Date.now() / 1000;
        await withCache(driver, cacheDir, (cache) => put(cache, 'img-1', 'hello'));
        const { code, stdout } = await run('list', '--json');
        expect(code).toBe(0);
        const records = JSON.parse(stdout) as { imageId: string; size: number; hits: number; lastAccessed: number; lastModified: number }[];
        expect(records).toHaveLength(1);
        expect(records[0]).toMatchObject({ imageId: 'img-1', size: 5, hits: 0 });
        expect(records[0]!.lastAccessed).toBeGreaterThanOrEqual(before - 1);
        expect(records[0]!.lastModified).toBeLessThanOrEqual(Date.now() / 1000 + 1);
      });

      it('says so when the cache is empty, and --queued lists the queue oldest first', async () => {
        expect((await run('queue', 'q2', 'q1')).code).toBe(0);
        expect((await run('list')).stdout).toBe('No cached images.\n');
        expect((await run('list', '--queued')).stdout).toBe('q2\nq1\n');
        expect(JSON.parse((await run('list', '--queued', '--json')).stdout)).toEqual(['q2', 'q1']);
      });
    });

    describe('info', () => {
      it('shows state, size, hits, stored checksum and path of a cached image', async () => {
        await withCache(driver, cacheDir, async (cache) => {
          await put(cache, 'img', 'payload', { algorithm: 'sha256', digest: sha256('payload') });
          await read(cache, 'img');
        });
        const text = await run('info', 'img');
        expect(text.code).toBe(0);
        expect(text.stdout).toMatch(/^id\s+img$/m);
        expect(text.stdout).toMatch(/^state\s+cached$/m);
        expect(text.stdout).toMatch(/^size\s+7 B \(7 bytes\)$/m);
        expect(text.stdout).toMatch(/^hits\s+1$/m);
        expect(text.stdout).toContain(`sha256:${sha256('payload')}`);
        const json = JSON.parse((await run('info', 'img', '--json')).stdout) as Record<string, unknown>;
        expect(json).toMatchObject({ imageId: 'img', state: 'cached', cached: true, queued: false, size: 7, hits: 1, path: join(cacheDir, 'img') });
      });

      it('reports a queued image, and fails with exit code 1 for an unknown one', async () => {
        await run('queue', 'later');
        expect(JSON.parse((await run('info', 'later', '--json')).stdout)).toMatchObject({ state: 'queued', cached: false, size: null });
        const missing = await run('info', 'nothing');
        expect(missing.code).toBe(1);
        expect(missing.stdout).toBe('');
        expect(missing.stderr).toBe("image-cache: image 'nothing' is not in the cache (not cached, queued, being cached or invalid) [CLI_NOT_FOUND]\n");
      });
    });

    describe('queue and dequeue', () => {
      it('queues ids (creating the cache), skips cached ones, dequeues by id and --all', async () => {
        const queued = await run('queue', 'a', 'b', 'c', 'a');
        expect(queued.code).toBe(0);
        expect(queued.stdout).toBe('queued a\nqueued b\nqueued c\n');
        expect(await tree(join(cacheDir, 'queue'))).toEqual(['a', 'b', 'c']);
        expect((await run('queue', 'b')).stdout).toBe('not queued b: already queued\n');
        await withCache(driver, cacheDir, (cache) => put(cache, 'cached', 'x'));
        expect((await run('queue', 'cached')).stdout).toBe('not queued cached: already cached\n');

        const one = await run('dequeue', 'b', 'zzz');
        expect(one).toMatchObject({ code: 0, stdout: 'dequeued b\nnot queued zzz\n' });
        expect(await tree(join(cacheDir, 'queue'))).toEqual(['a', 'c']);
        expect(await run('dequeue', '--all')).toMatchObject({ code: 0, stdout: 'dequeued 2 images\n' });
        expect(await tree(join(cacheDir, 'queue'))).toEqual([]);
      });

      it('needs ids or --all, not both and not neither (exit code 2)', async () => {
        await run('queue', 'a');
        for (const argv of [['dequeue'], ['dequeue', 'a', '--all']]) {
          const result = await run(...argv);
          expect(result.code).toBe(2);
          expect(result.stderr).toMatch(/^image-cache: dequeue: give .* \[CLI_USAGE\]\n$/);
        }
        expect(await tree(join(cacheDir, 'queue'))).toEqual(['a']);
      });
    });

    describe('delete', () => {
      it('deletes given ids (unknown ones are a no-op) and --all deletes everything cached', async () => {
        await withCache(driver, cacheDir, async (cache) => {
          for (const id of ['a', 'b', 'c', 'd']) await put(cache, id, id);
          await cache.queueImage('q');
        });
        expect(await run('delete', 'b', 'nope')).toMatchObject({ code: 0, stdout: 'deleted b\nnot cached nope\n' });
        expect(await ids()).toEqual(['a', 'c', 'd']);
        expect(existsSync(join(cacheDir, 'b'))).toBe(false);
        expect(await run('delete', '--all')).toMatchObject({ code: 0, stdout: 'deleted 3 cached images\n' });
        expect(await ids()).toEqual([]);
        expect(await tree(join(cacheDir, 'queue'))).toEqual(['q']); // the queue is dequeue's business
      });
    });

    describe('prune', () => {
      it('evicts least recently accessed entries until the cache fits --max-size', async () => {
        await withCache(driver, cacheDir, async (cache) => {
          for (const id of ['a', 'b', 'c', 'd']) await put(cache, id, Buffer.alloc(1000, id));
          await read(cache, 'a');
          await read(cache, 'c');
        });
        // Access order, oldest first: b, d (never read), a, c.
        const result = await run('prune', '--max-size', '2000', '--json');
        expect(result.code).toBe(0);
        expect(JSON.parse(result.stdout)).toEqual({ evicted: ['b', 'd'], files: 2, bytes: 2000, invalid: { files: 0, bytes: 0 }, size: 2000, maxSize: 2000 });
        expect(await ids()).toEqual(['a', 'c']);
        const text = await run('--max-size', '1.5KB', 'prune');
        expect(text.stdout).toBe('pruned 1 image (1000 B): a; cache 1000 B of 1.5 KiB budget\n');
        expect(await ids()).toEqual(['c']);
        expect((await run('prune', '--max-size', '20GiB')).stdout).toBe('pruned 0 images (0 B); cache 1000 B of 20 GiB budget\n');
      });

      it('counts invalid/ against the budget and deletes invalid files first (issue 13)', async () => {
        await withCache(driver, cacheDir, async (cache) => {
          for (const id of ['a', 'b']) await put(cache, id, Buffer.alloc(1000, id));
        });
        await writeFile(join(cacheDir, 'invalid', 'broken'), Buffer.alloc(1500));
        // 2000 B active + 1500 B invalid, budget 2500 B: the invalid file goes, no image does.
        const result = await run('prune', '--max-size', '2500', '--json');
        expect(JSON.parse(result.stdout)).toEqual({ evicted: [], files: 0, bytes: 0, invalid: { files: 1, bytes: 1500 }, size: 2000, maxSize: 2500 });
        expect(await ids()).toEqual(['a', 'b']);
        expect(await tree(join(cacheDir, 'invalid'))).toEqual([]);
        await writeFile(join(cacheDir, 'invalid', 'broken'), Buffer.alloc(1500));
        expect((await run('prune', '--max-size', '1000')).stdout).toBe('removed 1 invalid file (1.46 KiB), pruned 1 image (1000 B): a; cache 1000 B of 1000 B budget\n');
      });
    });

    describe('clean', () => {
      it('deletes invalid files and incomplete files older than --stall-time, keeps younger ones', async () => {
        await withCache(driver, cacheDir, (cache) => put(cache, 'kept', 'active'));
        await writeFile(join(cacheDir, 'invalid', 'broken'), 'partial');
        await writeFile(join(cacheDir, 'incomplete', 'stalled'), 'old');
        await writeFile(join(cacheDir, 'incomplete', 'fresh'), 'new');
        const twoHoursAgo = Date.now() / 1000 - 7200;
        await utimes(join(cacheDir, 'incomplete', 'stalled'), twoHoursAgo, twoHoursAgo);

        const result = await run('clean', '--stall-time', '1h', '--json');
        expect(result.code).toBe(0);
        expect(JSON.parse(result.stdout)).toMatchObject({ invalid: 1, stalled: 1, errors: [], stallTime: 3600 });
        expect(await tree(join(cacheDir, 'invalid'))).toEqual([]);
        expect(await tree(join(cacheDir, 'incomplete'))).toEqual(['fresh']);
        expect(await ids()).toEqual(['kept']);

        const all = await run('clean', '--stall-time', '0');
        expect(all.stdout).toMatch(/^removed 0 invalid and 1 stalled file \(stall time 0ms\);/);
        expect(await tree(join(cacheDir, 'incomplete'))).toEqual([]);
      });
    });

    describe('stats', () => {
      it('reports entries, sizes, budget, queue, incomplete/invalid counts and the access range', async () => {
        await withCache(driver, cacheDir, async (cache) => {
          await put(cache, 'old', Buffer.alloc(300));
          await put(cache, 'new', Buffer.alloc(700));
          await read(cache, 'new');
          await cache.queueImage('q1');
        });
        await writeFile(join(cacheDir, 'invalid', 'bad'), 'xx');
        await writeFile(join(cacheDir, 'incomplete', 'half'), 'yyy');
        const result = await run('stats', '--json', '--max-size', '2000');
        expect(result.code).toBe(0);
        const stats = JSON.parse(result.stdout) as Record<string, unknown>;
        expect(stats).toMatchObject({
          driver,
          cacheDir,
          entries: 2,
          totalSize: 1000,
          maxSize: 2000,
          maxSizeSource: 'flag',
          usedPercent: 50.1, // (1000 + 2 invalid bytes) / 2000: invalid/ counts against the budget
          server: null,
          queued: 1,
          incomplete: { count: 1, size: 3 },
          invalid: { count: 1, size: 2 },
          oldestAccess: { imageId: 'old' },
          newestAccess: { imageId: 'new' },
        });
        const text = await run('stats');
        expect(text.stdout).toMatch(/^entries\s+2$/m);
        expect(text.stdout).toMatch(/^budget\s+10 GiB \(0% used, invalid\/ included; from the default\)$/m);
        expect(text.stdout).toMatch(/^oldest access\s+\S+Z \(old\)$/m);
      });
    });

    describe('verify', () => {
      it('passes intact entries, quarantines a tampered one in invalid/, reports undigested ones as unverifiable', async () => {
        const lastAccess = await withCache(driver, cacheDir, async (cache) => {
          await put(cache, 'good', 'good bytes', { algorithm: 'sha256', digest: sha256('good bytes') });
          await put(cache, 'tampered', 'original', { algorithm: 'sha256', digest: sha256('original') });
          await put(cache, 'md5', 'md5 bytes', createHash('md5').update('md5 bytes').digest('hex'));
          await put(cache, 'plain', 'no digest');
          await read(cache, 'good');
          return (await cache.stat('good'))?.lastAccessed;
        });
        await rot(join(cacheDir, 'tampered'), 'ORIGINAL'); // same size, other bytes

        const result = await run('verify');
        expect(result.code).toBe(1);
        expect(result.stdout.split('\n')).toEqual([
          'ok           good',
          'ok           md5',
          'unverifiable plain: no digest was stored when it was cached',
          `MISMATCH     tampered: expected sha256:${sha256('original')}, got sha256:${sha256('ORIGINAL')}; moved to ${join(cacheDir, 'invalid', 'tampered')}`,
          'verified 4 images: 2 ok, 1 mismatched (moved to invalid/), 1 unverifiable',
          '',
        ]);
        expect(await readFile(join(cacheDir, 'invalid', 'tampered'), 'utf8')).toBe('ORIGINAL');
        expect(await ids()).toEqual(['good', 'md5', 'plain']);
        // Verification reads count no hit and leave the LRU order alone.
        expect(await withCache(driver, cacheDir, (cache) => cache.stat('good'))).toMatchObject({ hits: 1, lastAccessed: lastAccess });

        const again = await run('verify', '--json');
        expect(again.code).toBe(0); // unverifiable is not a failure
        expect(JSON.parse(again.stdout).summary).toEqual({ ok: 2, mismatch: 0, unverifiable: 1, missing: 0 });
      });

      it('--delete deletes a mismatch; a given id that is not cached fails', async () => {
        await withCache(driver, cacheDir, (cache) => put(cache, 't', 'abc', { algorithm: 'sha256', digest: sha256('abc') }));
        await rot(join(cacheDir, 't'), 'xyz');
        const result = await run('verify', 't', '--delete', '--json');
        expect(result.code).toBe(1);
        expect(JSON.parse(result.stdout).results).toEqual([
          { imageId: 't', status: 'mismatch', expected: `sha256:${sha256('abc')}`, actual: `sha256:${sha256('xyz')}`, action: 'deleted' },
        ]);
        expect(await tree(join(cacheDir, 'invalid'))).toEqual([]);
        expect(await ids()).toEqual([]);
        const missing = await run('verify', 'ghost');
        expect(missing.code).toBe(1);
        expect(missing.stdout).toMatch(/^not cached {3}ghost$/m);
      });
    });

    it('read and delete commands refuse a directory that is not a cache, and create nothing', async () => {
      for (const argv of [['list'], ['stats'], ['delete', '--all'], ['prune'], ['verify']]) {
        const result = await run(...argv);
        expect(result.code).toBe(1);
        expect(result.stderr).toMatch(/^image-cache: .*cache does not exist, so it is not an image cache directory.* \[CLI_NOT_A_CACHE_DIR\]\n$/);
      }
      expect(existsSync(cacheDir)).toBe(false);
    });
  });
}
