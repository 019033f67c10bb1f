import { once } from 'node:events';
import { rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { beforeEach, describe, expect, it } from 'vitest';
import { ErrorCodes, ImageCache, MemoryDriver, type ReadOptions } from '../src/index.js';
import { READ_CHUNK_SIZE, releaseReadChunk } from '../src/driver-api.js';
import { collect, memoryCacheEach, openUnder, write } from './helpers.js';

/** Deterministic bytes: every offset has its own value pattern, so a shifted range never matches. */
function bytes(size: number): Buffer {
  const out = Buffer.alloc(size);
  for (let i = 0; i < size; i++) out[i] = (i * 31 + (i >> 8)) & 0xff;
  return out;
}

describe('openForRead(id, { start, end }): ranged reads', () => {
  let dir: string;
  let cache: ImageCache;
  const SIZE = 2 * READ_CHUNK_SIZE + 1234; // three reads of the file
  const data = bytes(SIZE);

  memoryCacheEach('read-range', (opened) => ({ cache, dir } = opened));
  beforeEach(async () => {
    await write(cache.driver, 'img', data);
  });

  const read = async (options: ReadOptions) => collect(await cache.openForRead('img', options));

  it('returns exactly bytes start..end (end inclusive), across read-chunk boundaries', async () => {
    for (const [start, end] of [
      [0, 0],
      [0, 99],
      [1, 1],
      [READ_CHUNK_SIZE - 10, READ_CHUNK_SIZE + 10],
      [READ_CHUNK_SIZE, 2 * READ_CHUNK_SIZE - 1],
      [17, SIZE - 2],
      [SIZE - 1, SIZE - 1],
    ] as const) {
      const back = await read({ start, end });
      expect(back.length, `${start}-${end}`).toBe(end - start + 1);
      expect(back.equals(data.subarray(start, end + 1)), `${start}-${end}`).toBe(true);
    }
  });

  it('start alone reads to the end; an end at or past the last byte reads to the end; end alone reads from 0', async () => {
    expect((await read({ start: 12_345 })).equals(data.subarray(12_345))).toBe(true);
    expect((await read({ start: 100, end: SIZE - 1 })).equals(data.subarray(100))).toBe(true);
    expect((await read({ start: 100, end: SIZE + 10_000 })).equals(data.subarray(100))).toBe(true);
    expect((await read({ end: 9 })).equals(data.subarray(0, 10))).toBe(true);
    expect((await read({})).equals(data)).toBe(true);
  });

  it('rejects negative, fractional, inverted, non-number and unknown options with InvalidArgumentError before opening', async () => {
    const bad: unknown[] = [
      { start: -1 },
      { end: -5 },
      { start: 1.5 },
      { end: 2.25 },
      { start: Number.NaN },
      { start: Number.POSITIVE_INFINITY },
      { start: 2 ** 53 },
      { start: 10, end: 9 },
      { start: '0' },
      { end: 10n },
      { countHit: 'no' },
      { identity: '' },
      { identity: 42 },
      { stat: 1 },
      'bytes=0-9',
      [0, 9],
    ];
    for (const options of bad) {
      await expect(cache.openForRead('img', options as ReadOptions), JSON.stringify(options, (_k, v) => (typeof v === 'bigint' ? `${v}n` : v))).rejects.toMatchObject({
        code: ErrorCodes.INVALID_ARGUMENT,
      });
    }
    // Straight to the driver (no guard) too: the base class validates the same way.
    const raw = new MemoryDriver({ cacheDir: dir });
    await raw.configure();
    await expect(raw.openForRead('img', { start: 3, end: 2 })).rejects.toMatchObject({ code: ErrorCodes.INVALID_ARGUMENT });
    await raw.close();
    expect(await cache.getHitCount('img')).toBe(0);
  });

  it('a start at or past the size rejects with RangeNotSatisfiableError carrying the size; start 0 of an empty image is an empty read', async () => {
    for (const start of [SIZE, SIZE + 1, 2 ** 40]) {
      const error = await cache.openForRead('img', { start }).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: ErrorCodes.RANGE_NOT_SATISFIABLE, size: SIZE, start, imageId: 'img' });
    }
    await write(cache.driver, 'empty', Buffer.alloc(0));
    expect((await collect(await cache.openForRead('empty', { start: 0 }))).length).toBe(0);
    expect((await collect(await cache.openForRead('empty', { start: 0, end: 100 }))).length).toBe(0);
    await expect(cache.openForRead('empty', { start: 1 })).rejects.toMatchObject({ code: ErrorCodes.RANGE_NOT_SATISFIABLE, size: 0 });
  });
});

describe('the hit rule: a read counts one hit when the reader has been handed the last byte', () => {
  let cache: ImageCache;
  const SIZE = 3 * READ_CHUNK_SIZE + 77;
  const data = bytes(SIZE);

  memoryCacheEach('hit-rule', (opened) => ({ cache } = opened));
  beforeEach(async () => {
    await write(cache.driver, 'img', data);
  });

  it('a range that reaches the last byte counts one; a range that stops before it counts none', async () => {
    await collect(await cache.openForRead('img', { start: 0, end: SIZE - 2 }));
    await collect(await cache.openForRead('img', { start: 5, end: 10 }));
    expect(await cache.getHitCount('img')).toBe(0);
    await collect(await cache.openForRead('img', { start: SIZE - 1 }));
    expect(await cache.getHitCount('img')).toBe(1);
    await collect(await cache.openForRead('img', { start: 1000, end: SIZE + 5 }));
    expect(await cache.getHitCount('img')).toBe(2);
    await collect(await cache.openForRead('img'));
    expect(await cache.getHitCount('img')).toBe(3);
  });

  it('a reader that destroys the stream as soon as it has the last byte (before end) counts one, recorded by close', async () => {
    const stream = await cache.openForRead('img');
    let seen = 0;
    let ended = false;
    stream.on('end', () => (ended = true));
    stream.on('data', (chunk: Buffer) => {
      seen += chunk.length;
      if (seen === SIZE) stream.destroy(); // an HTTP client closing on reaching Content-Length
    });
    await once(stream, 'close');
    expect(seen).toBe(SIZE);
    expect(ended).toBe(false);
    expect(await cache.getHitCount('img')).toBe(1);
  });

  it('the same through pipe() into a sink that destroys the source on the last byte of a tail range', async () => {
    const start = SIZE - READ_CHUNK_SIZE - 3;
    const source = await cache.openForRead('img', { start });
    let seen = 0;
    const sink = new Writable({
      write(chunk: Buffer, _encoding, callback) {
        seen += chunk.length;
        callback();
        if (seen === SIZE - start) source.destroy(new Error('client went away'));
      },
    });
    const failed = new Promise((resolve) => source.once('error', resolve));
    const closed = new Promise((resolve) => source.once('close', resolve));
    source.pipe(sink);
    expect(await failed).toMatchObject({ message: 'client went away' });
    await closed;
    expect(seen).toBe(SIZE - start);
    expect(await cache.getHitCount('img')).toBe(1);
  });

  it('bytes read from the file but not yet handed to the reader do not count', async () => {
    await write(cache.driver, 'small', bytes(1000)); // one read: the last byte is buffered at once
    const stream = await cache.openForRead('small');
    await once(stream, 'readable');
    expect(stream.readableLength).toBe(1000);
    stream.destroy();
    await once(stream, 'close');
    expect(await cache.getHitCount('small')).toBe(0);
  });

  it('a read abandoned before the last byte counts none and leaves lastAccessed alone', async () => {
    const [before] = await cache.getCachedImages();
    const stream = await cache.openForRead('img');
    let seen = 0;
    stream.on('data', (chunk: Buffer) => {
      seen += chunk.length;
      if (seen >= READ_CHUNK_SIZE) stream.destroy();
    });
    await once(stream, 'close');
    expect(seen).toBeLessThan(SIZE);
    expect(await cache.getHitCount('img')).toBe(0);
    expect((await cache.getCachedImages())[0]?.lastAccessed).toBe(before?.lastAccessed);
  });

  it('the hit is recorded by the time end is emitted, for a full read and for a tail range', async () => {
    for (const options of [{}, { start: SIZE - 10 }]) {
      const before = await cache.getHitCount('img');
      const stream = await cache.openForRead('img', options);
      stream.resume();
      await once(stream, 'end');
      expect(await cache.getHitCount('img')).toBe(before + 1);
    }
  });

  it('{ countHit: false } reads every byte, counts nothing and leaves lastAccessed alone', async () => {
    const [before] = await cache.getCachedImages();
    expect((await collect(await cache.openForRead('img', { countHit: false }))).equals(data)).toBe(true);
    expect((await collect(await cache.openForRead('img', { start: 9, countHit: false }))).equals(data.subarray(9))).toBe(true);
    expect(await cache.getHitCount('img')).toBe(0);
    expect((await cache.getCachedImages())[0]?.lastAccessed).toBe(before?.lastAccessed);
  });

  it('an empty image counts one hit when its end is read, none when the stream is only opened', async () => {
    await write(cache.driver, 'empty', Buffer.alloc(0));
    const opened = await cache.openForRead('empty');
    opened.destroy();
    await once(opened, 'close');
    expect(await cache.getHitCount('empty')).toBe(0);
    await collect(await cache.openForRead('empty'));
    expect(await cache.getHitCount('empty')).toBe(1);
  });

  it('pipeline() to the end sees the hit when it resolves', async () => {
    const sink = new Writable({ write: (_chunk, _encoding, callback) => callback() });
    await pipeline(await cache.openForRead('img', { start: 1 }), sink);
    expect(await cache.getHitCount('img')).toBe(1);
  });
});

describe('openForRead(id, { identity }): only the file stat() described', () => {
  let dir: string;
  let cache: ImageCache;
  memoryCacheEach('read-identity', (opened) => ({ cache, dir } = opened));

  it('reads the file it names; rejects with ImageChangedError once another file is under the id, ImageNotCachedError once none is', async () => {
    await write(cache.driver, 'img', 'first');
    const first = await cache.stat('img');
    expect(first).not.toBeNull();
    expect((await collect(await cache.openForRead('img', { identity: first?.identity }))).toString()).toBe('first');

    // Another process renames a new file over the entry.
    await writeFile(join(dir, 'incomplete', 'img'), 'second, longer');
    await rename(join(dir, 'incomplete', 'img'), join(dir, 'img'));
    const error = await cache.openForRead('img', { identity: first?.identity }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: ErrorCodes.IMAGE_CHANGED, imageId: 'img', expected: first?.identity });
    const second = await cache.stat('img');
    expect(second?.identity).not.toBe(first?.identity);
    expect((await collect(await cache.openForRead('img', { identity: second?.identity }))).toString()).toBe('second, longer');

    await cache.deleteCachedImage('img');
    await expect(cache.openForRead('img', { identity: second?.identity })).rejects.toMatchObject({ code: ErrorCodes.IMAGE_NOT_CACHED });
  });
});

/** Resolves once `stream` has emitted `close` (at once if it already has). */
async function closed(stream: Readable): Promise<void> {
  if (!stream.closed) await once(stream, 'close');
}

describe('openForRead of an entry larger than a small read: the stream owns the descriptor it was opened with', () => {
  let dir: string;
  let cache: ImageCache;
  const SIZE = 2 * READ_CHUNK_SIZE + 77;
  const data = bytes(SIZE);

  memoryCacheEach('read-fd', (opened) => ({ cache, dir } = opened));
  beforeEach(async () => {
    await write(cache.driver, 'big', data);
  });

  it.skipIf(process.platform !== 'linux')('closes it after a whole read, after a range, and after a reader that leaves early', async () => {
    expect(await openUnder(dir)).toEqual([]);
    const whole = await cache.openForRead('big');
    expect(await openUnder(dir)).toEqual([join(dir, 'big')]);
    expect((await collect(whole)).equals(data)).toBe(true);
    await closed(whole);
    expect(await openUnder(dir)).toEqual([]);

    const range = await cache.openForRead('big', { start: READ_CHUNK_SIZE - 5, end: READ_CHUNK_SIZE + 5 });
    expect((await collect(range)).equals(data.subarray(READ_CHUNK_SIZE - 5, READ_CHUNK_SIZE + 6))).toBe(true);
    await closed(range);
    expect(await openUnder(dir)).toEqual([]);

    const early = await cache.openForRead('big');
    const [first] = (await once(early, 'data')) as [Buffer];
    expect(first.equals(data.subarray(0, first.length))).toBe(true);
    early.destroy();
    await closed(early);
    expect(await openUnder(dir)).toEqual([]);
    // Nothing was counted for the reads that stopped before the last byte; the whole read counted one.
    expect(await cache.getHitCount('big')).toBe(1);
  });

  it.skipIf(process.platform !== 'linux')('a refused read (range past the end, changed file) leaves no descriptor open', async () => {
    await expect(cache.openForRead('big', { start: SIZE })).rejects.toMatchObject({ code: ErrorCodes.RANGE_NOT_SATISFIABLE });
    const before = await cache.stat('big');
    expect(before).not.toBeNull();
    await writeFile(join(dir, 'replacement'), bytes(SIZE + 1));
    await rename(join(dir, 'replacement'), join(dir, 'big'));
    await expect(cache.openForRead('big', { identity: before!.identity })).rejects.toMatchObject({ code: ErrorCodes.IMAGE_CHANGED });
    expect(await openUnder(dir)).toEqual([]);
  });

  it('reads the bytes of a file replaced after the open from the file it opened (the descriptor, not the name)', async () => {
    const reader = await cache.openForRead('big');
    const other = bytes(SIZE).reverse();
    await writeFile(join(dir, 'replacement'), other);
    await rename(join(dir, 'replacement'), join(dir, 'big'));
    expect((await collect(reader)).equals(data)).toBe(true);
  });
});

describe('releaseReadChunk: read buffers of more than 64 KiB come from a pool', () => {
  let cache: ImageCache;

  memoryCacheEach('read-pool', (opened) => ({ cache } = opened));

  it('a released chunk is reused by a later read, which overwrites it with its own bytes; unreleased and foreign buffers are not', async () => {
    const a = bytes(200_000);
    const b = Buffer.from(bytes(300_000)).reverse();
    await write(cache.driver, 'a', a);
    await write(cache.driver, 'b', b);
    const first = await collectChunks(await cache.openForRead('a'));
    expect(first).toHaveLength(1);
    expect((first[0] as Buffer).equals(a)).toBe(true);
    releaseReadChunk(first[0] as Buffer);
    releaseReadChunk(Buffer.alloc(READ_CHUNK_SIZE)); // not the pool's: ignored
    const second = await collectChunks(await cache.openForRead('b'));
    expect((second[0] as Buffer).buffer, 'the released memory is reused').toBe((first[0] as Buffer).buffer);
    expect((second[0] as Buffer).equals(b)).toBe(true);
    // Not released: the next read gets other memory, and the chunk it holds keeps its bytes.
    const third = await collectChunks(await cache.openForRead('a'));
    expect((third[0] as Buffer).buffer).not.toBe((second[0] as Buffer).buffer);
    expect((second[0] as Buffer).equals(b)).toBe(true);
    expect((third[0] as Buffer).equals(a)).toBe(true);
  });
});

/** Every chunk a stream delivers, as delivered. */
async function collectChunks(stream: Readable): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for await (const chunk of stream) out.push(chunk as Buffer);
  return out;
}
