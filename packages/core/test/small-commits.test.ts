import { readdir, readFile, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FdHandle } from '../src/driver-api.js';
import { ImageCache, MemoryDriver, SMALL_WRITE_BYTES } from '../src/index.js';
import { tempDir } from './helpers.js';

/**
 * Paths of this process's open descriptors on entries under `dir` (the base
 * directory itself, held open for strict group fsyncs, and the relaxed
 * journal under `.image-cache/` are the driver's own).
 */
async function openUnder(dir: string): Promise<string[]> {
  const open: string[] = [];
  for (const fd of await readdir('/proc/self/fd')) {
    const target = await readlink(`/proc/self/fd/${fd}`).catch(() => '');
    if (target.startsWith(`${dir}/`) && !target.startsWith(`${dir}/.image-cache/`)) open.push(target);
  }
  return open;
}

/** `size` bytes, each position distinct enough that a misplaced chunk shows. */
function pattern(size: number, seed: number): Buffer {
  const data = Buffer.alloc(size);
  for (let i = 0; i < size; i++) data[i] = (i * 7 + seed) % 251;
  return data;
}

describe.each(['strict', 'relaxed'] as const)('small commits on the event loop (%s)', (durability) => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let cache: ImageCache;

  beforeEach(async () => {
    ({ dir, cleanup } = await tempDir(`small-commits-${durability}`));
    cache = await ImageCache.open({ driver: new MemoryDriver({ cacheDir: dir, durability, syncInterval: 0 }) });
  });

  afterEach(async () => {
    await cache.close();
    await cleanup();
  });

  it('commits entries below, at and above SMALL_WRITE_BYTES byte for byte, and in chunks that cross it', async () => {
    const cases: [string, Buffer[]][] = [
      ['tiny', [pattern(4096, 1)]],
      ['at-threshold', [pattern(SMALL_WRITE_BYTES, 2)]],
      ['one-above', [pattern(SMALL_WRITE_BYTES + 1, 3)]],
      // Chunks written synchronously (within the first SMALL_WRITE_BYTES) and on the threadpool after them.
      ['crossing', Array.from({ length: 40 }, (_, i) => pattern(4000, 10 + i))],
    ];
    for (const [id, parts] of cases) {
      expect(await cache.cacheImage(id, Readable.from(parts))).toBe(true);
      expect(await readFile(join(dir, id)), id).toEqual(Buffer.concat(parts));
      expect(await cache.driver.getImageSize(id)).toBe(Buffer.concat(parts).length);
    }
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
    expect(await openUnder(dir), 'no descriptor of a committed file stays open').toEqual([]);
  });

  it('a small write that fails is rolled back whole to invalid/ and its descriptor closed', async () => {
    const failing = Readable.from(
      (async function* () {
        yield pattern(1000, 5);
        throw new Error('origin reset');
      })(),
    );
    await expect(cache.cacheImage('broken', failing)).rejects.toThrow('origin reset');
    expect(await cache.driver.isCached('broken')).toBe(false);
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
    expect(await readdir(join(dir, 'invalid'))).toEqual(['broken']);
    expect(await openUnder(dir), 'the rolled-back file is closed').toEqual([]);
  });

  it('a source that closes before its end (destroyed without an error) fails the write with a premature close and commits nothing', async () => {
    const source = new Readable({ read() {} });
    source.push(pattern(2048, 7));
    const write = cache.cacheImage('cut', source);
    setImmediate(() => source.destroy());
    await expect(write).rejects.toMatchObject({ code: 'ERR_STREAM_PREMATURE_CLOSE' });
    expect(await cache.driver.isCached('cut')).toBe(false);
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
    expect(await openUnder(dir)).toEqual([]);
  });

  it('a checksum mismatch rolls the whole small file back to invalid/ and names both digests', async () => {
    const data = pattern(3000, 4);
    await expect(cache.cacheImage('bad-sum', Readable.from([data]), { checksum: { algorithm: 'md5', digest: '0'.repeat(32) } })).rejects.toMatchObject({
      code: 'CACHE_CHECKSUM_MISMATCH',
    });
    expect(await cache.driver.isCached('bad-sum')).toBe(false);
    expect(await readFile(join(dir, 'invalid', 'bad-sum'))).toEqual(data);
  });

  it('a second writer of an id being written gets no file of its own (the exclusive create still holds)', async () => {
    const first = await cache.driver.openForWrite('busy');
    await expect(cache.driver.openForWrite('busy')).rejects.toMatchObject({ code: 'CACHE_IMAGE_BEING_CACHED' });
    await pipeline(Readable.from([pattern(100, 9)]), first);
    expect(await readFile(join(dir, 'busy'))).toEqual(pattern(100, 9));
  });
});

describe('FdHandle', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await tempDir('fd-handle')));
  afterEach(async () => cleanup());

  it('closes once: a second close is a no-op, and a write after close fails with EBADF instead of reaching another file', async () => {
    const { openSync } = await import('node:fs');
    const handle = new FdHandle(openSync(join(dir, 'f'), 'wx'));
    expect((await handle.write(Buffer.from('abc'), 0, 3, 0)).bytesWritten).toBe(3);
    expect((await handle.writev([Buffer.from('de'), Buffer.from('f')], 3)).bytesWritten).toBe(3);
    await handle.sync();
    await handle.datasync();
    expect((await handle.stat({ bigint: true })).size).toBe(6n);
    handle.closeNow();
    expect(handle.fd).toBe(-1);
    await handle.close();
    handle.closeNow();
    await expect(handle.write(Buffer.from('x'), 0, 1, 0)).rejects.toMatchObject({ code: 'EBADF' });
    expect(await readFile(join(dir, 'f'), 'utf8')).toBe('abcdef');
    expect(await openUnder(dir)).toEqual([]);
  });
});
