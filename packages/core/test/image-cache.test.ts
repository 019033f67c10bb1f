import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, readFile, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ErrorCodes, ImageCache, ImageNotCachedError, MemoryDriver, type CacheWriter, type ImageId } from '../src/index.js';
import type { CommitInfo, DirectoryDriverOptions } from '../src/driver-api.js';
import { EARLY_FLUSH_BYTES } from '../src/streams.js';
import { chunks, collect, tempDir, tree, write } from './helpers.js';
import { collector, controlledSource } from './fill-helpers.js';

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');
const md5 = (data: Buffer) => createHash('md5').update(data).digest('hex');

/** A real driver whose cache side can be made to fail on demand. */
class FlakyDriver extends MemoryDriver {
  failCommit = false;
  failWriteAfter: number | undefined;
  /** Reads that found no entry (openForRead rejecting with ImageNotCachedError). */
  misses = 0;
  readonly #missWaiters: { count: number; resolve: () => void }[] = [];
  constructor(options: DirectoryDriverOptions) {
    super(options);
  }
  override async openForRead(id: ImageId): Promise<Readable> {
    try {
      return await super.openForRead(id);
    } catch (error) {
      if (ImageNotCachedError.isInstance(error)) {
        this.misses++;
        for (const waiter of this.#missWaiters.filter((w) => w.count <= this.misses)) {
          this.#missWaiters.splice(this.#missWaiters.indexOf(waiter), 1);
          waiter.resolve();
        }
      }
      throw error;
    }
  }
  /**
   * Resolves once `count` reads in all have missed and their callers have had
   * a turn of the event loop to act on it (e.g. to find a fetch in flight and
   * wait for it): a single-flight test's origin waits for this before it
   * answers, so no caller arrives after the fetch it should have joined ended.
   */
  async missed(count: number): Promise<void> {
    if (this.misses < count) await new Promise<void>((resolve) => this.#missWaiters.push({ count, resolve }));
    await new Promise((resolve) => setImmediate(resolve));
  }
  protected override async recordCommit(id: ImageId, info: CommitInfo): Promise<void> {
    if (this.failCommit) throw new Error('metadata store is down');
    return super.recordCommit(id, info);
  }
  override async openForWrite(id: ImageId): Promise<CacheWriter> {
    const writer = await super.openForWrite(id);
    const limit = this.failWriteAfter;
    if (limit !== undefined) {
      const original = writer.write.bind(writer);
      let seen = 0;
      writer.write = ((chunk: Buffer, ...rest: never[]) => {
        seen += chunk.length;
        if (seen > limit) {
          writer.destroy(Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' }));
          return false;
        }
        return original(chunk, ...rest);
      }) as typeof writer.write;
    }
    return writer;
  }
}

let dir: string;
let cleanup: () => Promise<void>;
let driver: FlakyDriver;
let cache: ImageCache;

beforeEach(async () => {
  ({ dir, cleanup } = await tempDir('image-cache'));
  driver = new FlakyDriver({ cacheDir: dir, onWarning: () => undefined });
  cache = await ImageCache.open({ driver, maxSize: 5 * 1024 });
});

afterEach(async () => {
  await cache.close();
  await cleanup();
});

function sink(): { writable: Writable; data: () => Buffer } {
  const parts: Buffer[] = [];
  return {
    writable: new Writable({
      write(chunk: Buffer, _e, cb) {
        parts.push(chunk);
        cb();
      },
    }),
    data: () => Buffer.concat(parts),
  };
}

async function* failingSource(good: Buffer[], error: Error): AsyncGenerator<Buffer> {
  for (const chunk of good) yield chunk;
  throw error;
}

describe('ImageCache.open', () => {
  it.each([
    [{ maxSize: -1 }, /maxSize/],
    [{ maxSize: Number.NaN }, /maxSize/],
    [{ stallTime: -5 }, /stallTime/],
  ])('rejects %j with BadDriverConfigurationError', async (options, message) => {
    const other = new MemoryDriver({ cacheDir: join(dir, 'other') });
    await expect(ImageCache.open({ driver: other, ...options })).rejects.toMatchObject({
      code: ErrorCodes.BAD_DRIVER_CONFIGURATION,
      message: expect.stringMatching(message),
    });
    expect(existsSync(join(dir, 'other'))).toBe(false);
  });

  it('rejects a missing driver', async () => {
    await expect(ImageCache.open({} as never)).rejects.toMatchObject({ code: ErrorCodes.BAD_DRIVER_CONFIGURATION });
  });

  it('defaults to Glance: 10 GiB budget, 86400 s stall time', async () => {
    const other = await ImageCache.open({ driver: new MemoryDriver({ cacheDir: join(dir, 'd') }) });
    expect([other.maxSize, other.stallTime]).toEqual([10 * 1024 ** 3, 86_400]);
    await other.close();
  });
});

describe('prune()', () => {
  it('evicts least recently accessed entries until the size is within budget (eleven 1 KiB, budget 5 KiB -> six)', async () => {
    for (let i = 0; i < 11; i++) await write(driver, `img-${String(i).padStart(2, '0')}`, Buffer.alloc(1024, i));
    await collect(await cache.openForRead('img-00')); // the oldest becomes the most recent
    expect(await cache.prune()).toEqual({ files: 6, bytes: 6 * 1024 });
    expect((await cache.getCachedImages()).map((i) => i.imageId)).toEqual(['img-00', 'img-07', 'img-08', 'img-09', 'img-10']);
    expect(await cache.prune()).toEqual({ files: 0, bytes: 0 });
  });

  it('with budget 0 removes everything and stops', async () => {
    const zero = await ImageCache.open({ driver, maxSize: 0 });
    for (const id of ['a', 'b', 'c']) await write(driver, id, id);
    expect(await zero.prune()).toEqual({ files: 3, bytes: 3 });
    expect(await zero.prune()).toEqual({ files: 0, bytes: 0 });
  });

  it('skips entries this process reads or fills (openForRead, a fill reader), as the space policy does: the next ones go', async () => {
    for (let i = 0; i < 11; i++) await write(driver, `img-${String(i).padStart(2, '0')}`, Buffer.alloc(1024, i));
    // The two least recently used are busy: one read open, one read through a fill of the cached entry.
    const reading = await cache.openForRead('img-00');
    const fill = cache.fill('img-01', { fetch: () => Readable.from([]) });
    const fillReader = fill.openReader();
    expect(await fill.done).toMatchObject({ status: 'committed', via: 'cached' });
    expect(await cache.prune()).toEqual({ files: 6, bytes: 6 * 1024 });
    expect((await cache.getCachedImages()).map((i) => i.imageId).sort()).toEqual(['img-00', 'img-01', 'img-08', 'img-09', 'img-10']);
    expect((await collect(reading)).equals(Buffer.alloc(1024, 0))).toBe(true);
    expect((await collect(fillReader)).equals(Buffer.alloc(1024, 1))).toBe(true);
    // Closed: no longer busy, and within the budget already.
    expect(await cache.prune()).toEqual({ files: 0, bytes: 0 });
  });

  it('leaves the cache over budget rather than evict an entry being read; evicts it once the read is closed', async () => {
    const zero = await ImageCache.open({ driver, maxSize: 0 });
    for (const id of ['a', 'b']) await write(driver, id, id);
    const reading = await zero.openForRead('a');
    expect(await zero.prune()).toEqual({ files: 1, bytes: 1 });
    expect(await zero.isCached('a')).toBe(true);
    expect((await collect(reading)).toString()).toBe('a');
    expect(await zero.prune()).toEqual({ files: 1, bytes: 1 });
    expect(await zero.isCached('a')).toBe(false);
  });

  it('counts a file that has no metadata as a candidate (by its mtime), so the budget is reached', async () => {
    await writeFile(join(dir, 'stray'), Buffer.alloc(6 * 1024));
    expect(await cache.prune()).toEqual({ files: 1, bytes: 6 * 1024 });
    expect(await cache.getCacheSize()).toBe(0);
  });
});

describe('prune({ includeInvalid: true })', () => {
  it('counts invalid/ against the budget and deletes invalid files (oldest first) before evicting any entry', async () => {
    for (const id of ['a', 'b', 'c']) await write(driver, id, Buffer.alloc(1024));
    await writeFile(join(dir, 'invalid', 'old-broken'), Buffer.alloc(2048));
    await utimes(join(dir, 'invalid', 'old-broken'), 1000, 1000);
    await writeFile(join(dir, 'invalid', 'new-broken'), Buffer.alloc(2048));
    // 3 KiB active + 4 KiB invalid, budget 5 KiB: the older invalid file goes, no entry does.
    expect(await cache.prune({ includeInvalid: true })).toEqual({ files: 0, bytes: 0, invalid: { files: 1, bytes: 2048 } });
    expect(await readdir(join(dir, 'invalid'))).toEqual(['new-broken']);
    expect((await cache.getCachedImages()).length).toBe(3);
    // Budget 2 KiB: the other invalid file, then the least recently accessed entry.
    const small = await ImageCache.open({ driver, maxSize: 2048 });
    expect(await small.prune({ includeInvalid: true })).toEqual({ files: 1, bytes: 1024, invalid: { files: 1, bytes: 2048 } });
    expect(await readdir(join(dir, 'invalid'))).toEqual([]);
  });

  it('without the option, invalid/ is left alone (Glance: active entries only)', async () => {
    await writeFile(join(dir, 'invalid', 'broken'), Buffer.alloc(64 * 1024));
    expect(await cache.prune()).toEqual({ files: 0, bytes: 0 });
    expect(await readdir(join(dir, 'invalid'))).toEqual(['broken']);
  });
});

describe('cacheImage()', () => {
  it('caches from a Readable, an async iterable and a file path, and verifies each checksum form', async () => {
    const data = Buffer.concat(chunks(8, 1000));
    const path = join(dir, 'incomplete', '..', '..', 'source.bin');
    await writeFile(path, data);
    expect(await cache.cacheImage('from-stream', Readable.from(chunks(8, 1000)), { checksum: md5(data) })).toBe(true);
    expect(
      await cache.cacheImage('from-iterable', (async function* () { yield* chunks(8, 1000); })(), {
        checksum: { algorithm: 'sha256', digest: sha256(data) },
      }),
    ).toBe(true);
    expect(await cache.cacheImage('from-path', path)).toBe(true);
    for (const id of ['from-stream', 'from-iterable', 'from-path']) {
      expect((await readFile(join(dir, id))).equals(data)).toBe(true);
    }
  });

  it('returns false without reading the source when the image is already cached or being cached', async () => {
    await write(driver, 'img', 'x');
    const source = Readable.from([Buffer.from('never read')]);
    expect(await cache.cacheImage('img', source)).toBe(false);
    expect(source.readableFlowing).toBe(null);
    const writer = await driver.openForWrite('busy');
    expect(await cache.cacheImage('busy', Readable.from([Buffer.from('y')]))).toBe(false);
    writer.destroy();
  });

  it('a checksum mismatch rejects with ChecksumMismatchError and leaves the bytes in invalid/ only', async () => {
    const error = await cache
      .cacheImage('img', Readable.from([Buffer.from('tampered')]), { checksum: { algorithm: 'sha256', digest: sha256(Buffer.from('original')) } })
      .catch((e: unknown) => e);
    expect(error).toMatchObject({ code: ErrorCodes.CHECKSUM_MISMATCH, algorithm: 'sha256' });
    expect(await cache.isCached('img')).toBe(false);
    expect(await readdir(join(dir, 'invalid'))).toEqual(['img']);
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
  });

  it('rejects malformed checksums and sources before touching the disk', async () => {
    const before = await tree(dir);
    await expect(cache.cacheImage('img', Readable.from([]), { checksum: 'xyz' })).rejects.toMatchObject({ code: ErrorCodes.INVALID_ARGUMENT });
    await expect(cache.cacheImage('img', 42 as never)).rejects.toMatchObject({ code: ErrorCodes.INVALID_ARGUMENT });
    await expect(cache.cacheImage('../img', Readable.from([]))).rejects.toMatchObject({ code: ErrorCodes.INVALID_IMAGE_ID });
    expect(await tree(dir)).toEqual(before);
  });

  it('a storage failure while writing rejects with the error and leaves nothing active', async () => {
    driver.failWriteAfter = 2000;
    await expect(cache.cacheImage('img', Readable.from(chunks(4, 1000)))).rejects.toThrow(/ENOSPC/);
    expect(await cache.isCached('img')).toBe(false);
    expect(await readdir(join(dir, 'invalid'))).toEqual(['img']);
  });
});

describe('getCachingStream()', () => {
  it('passes every byte to the client, and the entry is committed and verified when the stream ends', async () => {
    const parts = chunks(20, 4096);
    const data = Buffer.concat(parts);
    const client = sink();
    const stream = cache.getCachingStream('img', Readable.from(parts), { checksum: { algorithm: 'sha512', digest: createHash('sha512').update(data).digest('hex') } });
    await pipeline(stream, client.writable);
    expect(client.data().equals(data)).toBe(true);
    expect(await cache.isCached('img')).toBe(true);
    expect((await readFile(join(dir, 'img'))).equals(data)).toBe(true);
    expect(await stream.cacheOutcome).toEqual({ status: 'committed' });
  });

  it('an image past the early-flush size (background fdatasync) commits every byte; aborting after a flush rolls back', async () => {
    const big = await ImageCache.open({ driver, maxSize: 1 << 30 });
    const parts = chunks(EARLY_FLUSH_BYTES / (1 << 20) + 20, 1 << 20);
    const data = Buffer.concat(parts);
    expect(await big.cacheImage('big', Readable.from(parts), { checksum: { algorithm: 'sha256', digest: sha256(data) } })).toBe(true);
    expect((await readFile(join(dir, 'big'))).equals(data)).toBe(true);

    const stream = big.getCachingStream('cut', failingSource(parts.slice(0, parts.length - 5), new Error('origin reset')));
    await expect(pipeline(stream, sink().writable)).rejects.toThrow('origin reset');
    expect(await big.isCached('cut')).toBe(false);
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
    expect(await readdir(join(dir, 'invalid'))).toEqual(['cut']);
  });

  it('a client that goes away right after the last byte (before end) does not abort the commit', async () => {
    const parts = chunks(12, 1 << 20); // 12 MiB: verified on the hash worker, so the commit takes a while
    const data = Buffer.concat(parts);
    const big = await ImageCache.open({ driver, maxSize: 1 << 30 });
    const stream = big.getCachingStream('img', Readable.from(parts), { checksum: { algorithm: 'sha256', digest: sha256(data) } });
    let received = 0;
    await new Promise<void>((resolve) => {
      stream.on('data', (chunk: Buffer) => {
        received += chunk.length;
        if (received === data.length) {
          stream.destroy(); // as an HTTP client closing the connection on reaching Content-Length
          resolve();
        }
      });
    });
    expect(await stream.cacheOutcome).toEqual({ status: 'committed' });
    expect(await big.isCached('img')).toBe(true);
    expect((await readFile(join(dir, 'img'))).equals(data)).toBe(true);
  });

  it('a client that goes away before the last byte aborts the cache write; nothing is active', async () => {
    const parts = chunks(12, 1 << 20);
    const big = await ImageCache.open({ driver, maxSize: 1 << 30 });
    const stream = big.getCachingStream('img', Readable.from(parts));
    let received = 0;
    await new Promise<void>((resolve) => {
      stream.on('data', (chunk: Buffer) => {
        received += chunk.length;
        if (received >= 3 << 20) {
          stream.destroy();
          resolve();
        }
      });
    });
    expect(await stream.cacheOutcome).toMatchObject({ status: 'aborted', abortedBy: 'client' });
    expect(await big.isCached('img')).toBe(false);
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
  });

  it('a checksum mismatch: the client gets all bytes, then ChecksumMismatchError; the entry is in invalid/', async () => {
    const parts = chunks(5, 1000);
    const client = sink();
    const stream = cache.getCachingStream('img', Readable.from(parts), { checksum: md5(Buffer.from('something else')) });
    const error = await pipeline(stream, client.writable).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: ErrorCodes.CHECKSUM_MISMATCH });
    expect(client.data().equals(Buffer.concat(parts))).toBe(true);
    expect(await cache.isCached('img')).toBe(false);
    expect(await readdir(join(dir, 'invalid'))).toEqual(['img']);
    expect(await stream.cacheOutcome).toMatchObject({ status: 'aborted', abortedBy: 'source' });
  });

  it('a source failure reaches the client as an error (never a short clean end) and rolls the entry back', async () => {
    const client = sink();
    const stream = cache.getCachingStream('img', failingSource(chunks(3, 1000), new Error('origin reset')));
    await expect(pipeline(stream, client.writable)).rejects.toThrow('origin reset');
    expect(client.data().length).toBe(3000);
    expect(await cache.isCached('img')).toBe(false);
    expect(await readdir(join(dir, 'invalid'))).toEqual(['img']);
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
  });

  it('a cache write failure never breaks the client: every byte arrives once, the failure is reported', async () => {
    driver.failWriteAfter = 3000;
    const reported: Error[] = [];
    const parts = chunks(10, 1000);
    const client = sink();
    const stream = cache.getCachingStream('img', Readable.from(parts));
    stream.on('cacheError', (e: Error) => reported.push(e));
    await pipeline(stream, client.writable);
    expect(client.data().equals(Buffer.concat(parts))).toBe(true);
    expect(reported.map((e) => e.message)).toEqual([expect.stringMatching(/ENOSPC/)]);
    expect((await stream.cacheOutcome).status).toBe('failed');
    expect(await cache.isCached('img')).toBe(false);
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
  });

  it('a failed commit never breaks the client; no active file is left without metadata', async () => {
    driver.failCommit = true;
    const seen: [Error, string][] = [];
    const withReporter = await ImageCache.open({ driver, onCacheError: (e, id) => seen.push([e, id]) });
    const client = sink();
    const stream = withReporter.getCachingStream('img', Readable.from(chunks(3, 100)));
    await pipeline(stream, client.writable);
    expect(client.data().length).toBe(300);
    expect(seen.map(([e, id]) => [e.name, id])).toEqual([['CacheStorageError', 'img']]);
    expect(await cache.isCached('img')).toBe(false);
    expect(await readdir(join(dir, 'invalid'))).toEqual(['img']);
  });

  it('when another writer has the id, the client is served from the source and nothing is disturbed', async () => {
    const writer = await driver.openForWrite('img');
    writer.write(Buffer.from('first writer'));
    const client = sink();
    const stream = cache.getCachingStream('img', Readable.from([Buffer.from('second')]));
    await pipeline(stream, client.writable);
    expect(client.data().toString()).toBe('second');
    expect((await stream.cacheOutcome).status).toBe('skipped');
    await new Promise<void>((resolve, reject) => writer.end((e?: Error | null) => (e ? reject(e) : resolve())));
    expect(await readFile(join(dir, 'img'), 'utf8')).toBe('first writer');
  });

  it('a client that stops early leaves nothing active and the partial file in invalid/', async () => {
    const stream = cache.getCachingStream('img', Readable.from(chunks(100, 64 * 1024)));
    for await (const _ of stream) break; // destroys the stream after the first chunk
    expect(await stream.cacheOutcome).toMatchObject({ status: 'aborted', abortedBy: 'client' });
    expect(await cache.isCached('img')).toBe(false);
    expect(await readdir(join(dir, 'invalid'))).toEqual(['img']);
  });

  it('a source failure and the client leaving at once: cacheOutcome settles only once the partial file is in invalid/', async () => {
    // As at a server's shutdown timeout: the origin request is aborted and the client's connection destroyed together.
    const source = controlledSource();
    const stream = cache.getCachingStream('img', source.iterable);
    const client = collector(stream);
    source.push(Buffer.alloc(64 * 1024, 1));
    await client.until(64 * 1024);
    source.fail(new Error('origin aborted'));
    stream.destroy();
    expect(await stream.cacheOutcome).toMatchObject({ status: 'aborted' });
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
    expect(await readdir(join(dir, 'invalid'))).toEqual(['img']);
  });

  it('an already cached image streams from the source unchanged and is not rewritten', async () => {
    await write(driver, 'img', 'cached');
    const client = sink();
    const stream = cache.getCachingStream('img', Readable.from([Buffer.from('fresh')]));
    await pipeline(stream, client.writable);
    expect(client.data().toString()).toBe('fresh');
    expect(await readFile(join(dir, 'img'), 'utf8')).toBe('cached');
    expect((await stream.cacheOutcome).status).toBe('skipped');
  });

  it('throws synchronously for an invalid id or checksum', () => {
    expect(() => cache.getCachingStream('a/b', Readable.from([]))).toThrowError(expect.objectContaining({ code: ErrorCodes.INVALID_IMAGE_ID }));
    expect(() => cache.getCachingStream('a', Readable.from([]), { checksum: 'nope' })).toThrowError(
      expect.objectContaining({ code: ErrorCodes.INVALID_ARGUMENT }),
    );
  });
});

describe('the copy kept in invalid/ is whole (issue 13)', () => {
  // 512 KiB in 64 KiB chunks: at the end of the source most of it still sat in the writer's buffer,
  // and destroy() dropped it (invalid/ kept 64 KiB of 512).
  const parts = chunks(8, 64 * 1024);
  const data = Buffer.concat(parts);
  const wrong = { algorithm: 'sha256', digest: sha256(Buffer.from('something else')) } as const;

  it('cacheImage(): after a checksum mismatch, invalid/<id> has every byte of the download', async () => {
    const big = await ImageCache.open({ driver, maxSize: 1 << 30 });
    await expect(big.cacheImage('img', Readable.from(parts), { checksum: wrong })).rejects.toMatchObject({ code: ErrorCodes.CHECKSUM_MISMATCH });
    expect((await readFile(join(dir, 'invalid', 'img'))).equals(data)).toBe(true);
    expect(await big.isCached('img')).toBe(false);
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
  });

  it('getCachingStream(): after a checksum mismatch, invalid/<id> has every byte the client got', async () => {
    const big = await ImageCache.open({ driver, maxSize: 1 << 30 });
    const client = sink();
    const stream = big.getCachingStream('img', Readable.from(parts), { checksum: wrong });
    await expect(pipeline(stream, client.writable)).rejects.toMatchObject({ code: ErrorCodes.CHECKSUM_MISMATCH });
    expect(await stream.cacheOutcome).toMatchObject({ status: 'aborted', abortedBy: 'source' });
    expect(client.data().equals(data)).toBe(true);
    expect((await readFile(join(dir, 'invalid', 'img'))).equals(data)).toBe(true);
    expect(await big.isCached('img')).toBe(false);
  });

  it('getCachingStream(): after a source failure, invalid/<id> has every byte received before it', async () => {
    const big = await ImageCache.open({ driver, maxSize: 1 << 30 });
    const stream = big.getCachingStream('img', failingSource(parts, new Error('origin reset')));
    await expect(pipeline(stream, sink().writable)).rejects.toThrow('origin reset');
    expect((await readFile(join(dir, 'invalid', 'img'))).equals(data)).toBe(true);
  });

  it('a client that leaves early still rolls back at once (the partial file is not completed)', async () => {
    const big = await ImageCache.open({ driver, maxSize: 1 << 30 });
    const stream = big.getCachingStream('img', Readable.from(chunks(12, 1 << 20)));
    await new Promise<void>((resolve) => stream.once('data', () => (stream.destroy(), resolve())));
    expect(await stream.cacheOutcome).toMatchObject({ status: 'aborted', abortedBy: 'client' });
    expect((await readFile(join(dir, 'invalid', 'img'))).length).toBeLessThan(12 << 20);
  });
});

describe('readThrough() single-flight', () => {
  const image = Buffer.concat(chunks(16, 4096));

  /**
   * An origin that counts its fetches; each fetch streams the image slowly, in
   * chunks. `before(n)` runs at the start of the n-th fetch (e.g. to wait until
   * every concurrent caller has missed the cache).
   */
  function origin(options: { fail?: Error; failTimes?: number; data?: Buffer; before?: (fetch: number) => Promise<void> | void } = {}) {
    let fetches = 0;
    return {
      get fetches() {
        return fetches;
      },
      fetch: async () => {
        fetches++;
        await options.before?.(fetches);
        const failing = options.fail !== undefined && fetches <= (options.failTimes ?? Infinity);
        const data = options.data ?? image;
        return (async function* () {
          for (let i = 0; i < data.length; i += 4096) {
            await new Promise((resolve) => setImmediate(resolve));
            if (failing && i >= data.length / 2) throw options.fail;
            yield data.subarray(i, i + 4096);
          }
        })();
      },
    };
  }

  it('100 concurrent misses of one id read the origin once; every caller gets the whole image', async () => {
    const big = await ImageCache.open({ driver });
    const src = origin({ before: () => driver.missed(100) });
    const results = await Promise.all(
      Array.from({ length: 100 }, async () => {
        const { stream, from } = await big.readThrough('img', { fetch: src.fetch, checksum: { algorithm: 'sha256', digest: sha256(image) } });
        return { from, data: await collect(stream) };
      }),
    );
    expect(src.fetches).toBe(1);
    expect(results.filter((r) => r.from === 'origin')).toHaveLength(1);
    expect(results.every((r) => r.data.equals(image))).toBe(true);
    expect(await big.getHitCount('img')).toBe(99);
    const again = await big.readThrough('img', { fetch: src.fetch });
    expect(again.from).toBe('cache');
    await collect(again.stream);
    expect(src.fetches).toBe(1);
  });

  it('a failed fetch releases every waiter with the error, and the next request tries again', async () => {
    const big = await ImageCache.open({ driver });
    const src = origin({ fail: new Error('origin 503'), failTimes: 1, before: (n) => (n === 1 ? driver.missed(10) : undefined) });
    const attempts = await Promise.allSettled(
      Array.from({ length: 10 }, async () => collect((await big.readThrough('img', { fetch: src.fetch })).stream)),
    );
    expect(attempts.map((a) => a.status === 'rejected' && (a.reason as Error).message)).toEqual(Array(10).fill('origin 503'));
    expect(src.fetches).toBe(1);
    expect(await big.isCached('img')).toBe(false);
    const { stream, from } = await big.readThrough('img', { fetch: src.fetch });
    expect(from).toBe('origin');
    expect((await collect(stream)).equals(image)).toBe(true);
    expect(src.fetches).toBe(2);
    expect(await big.isCached('img')).toBe(true);
  });

  it('a checksum mismatch reaches every waiter as ChecksumMismatchError', async () => {
    const big = await ImageCache.open({ driver });
    const src = origin({ before: () => driver.missed(5) });
    const attempts = await Promise.allSettled(
      Array.from({ length: 5 }, async () => collect((await big.readThrough('img', { fetch: src.fetch, checksum: md5(Buffer.from('other')) })).stream)),
    );
    expect(attempts.every((a) => a.status === 'rejected' && (a.reason as { code?: string }).code === ErrorCodes.CHECKSUM_MISMATCH)).toBe(true);
    expect(src.fetches).toBe(1);
    expect(await big.isCached('img')).toBe(false);
  });

  it('a fetch() that throws releases the waiters with its error', async () => {
    const big = await ImageCache.open({ driver });
    let calls = 0;
    const fetch = async () => {
      calls++;
      await driver.missed(5); // every caller is waiting on this fetch
      throw new Error('no route to origin');
    };
    const attempts = await Promise.allSettled(Array.from({ length: 5 }, () => big.readThrough('img', { fetch })));
    expect(attempts.map((a) => a.status === 'rejected' && (a.reason as Error).message)).toEqual(Array(5).fill('no route to origin'));
    expect(calls).toBe(1);
  });

  it('when caching fails (not the source), waiters try again and one of them leads a new fetch', async () => {
    const big = await ImageCache.open({ driver });
    driver.failCommit = true;
    // First fetch: once all 8 callers missed. Second: once the 7 waiters missed again after the failed commit.
    const src = origin({ before: (n) => driver.missed(n === 1 ? 8 : 15) });
    let first = true;
    const fetch = async () => {
      const source = await src.fetch();
      if (!first) driver.failCommit = false;
      first = false;
      return source;
    };
    const results = await Promise.all(
      Array.from({ length: 8 }, async () => collect((await big.readThrough('img', { fetch })).stream)),
    );
    expect(results.every((data) => data.equals(image))).toBe(true);
    expect(src.fetches).toBe(2);
    expect(await big.isCached('img')).toBe(true);
  });

  it('fetch() may resolve to { source, checksum }: the checksum the origin announced is verified and stored', async () => {
    const big = await ImageCache.open({ driver });
    const good = origin();
    const { stream, from } = await big.readThrough('img', {
      fetch: async () => ({ source: await good.fetch(), checksum: { algorithm: 'sha512', digest: createHash('sha512').update(image).digest('hex') } }),
    });
    expect(from).toBe('origin');
    expect((await collect(stream)).equals(image)).toBe(true);
    expect(await big.driver.getStoredChecksum?.('img')).toBe(`sha512:${createHash('sha512').update(image).digest('hex')}`);

    const bad = origin();
    const wrong = await big.readThrough('other', { fetch: async () => ({ source: await bad.fetch(), checksum: md5(Buffer.from('not it')) }) });
    await expect(collect(wrong.stream)).rejects.toMatchObject({ code: ErrorCodes.CHECKSUM_MISMATCH });
    expect(await big.isCached('other')).toBe(false);
    expect(await readdir(join(dir, 'invalid'))).toEqual(['other']);
  });

  it("the caller's checksum option wins over the one fetch() announces", async () => {
    const big = await ImageCache.open({ driver });
    const src = origin();
    const { stream } = await big.readThrough('img', {
      checksum: md5(Buffer.from('not it')),
      fetch: async () => ({ source: await src.fetch(), checksum: md5(image) }),
    });
    await expect(collect(stream)).rejects.toMatchObject({ code: ErrorCodes.CHECKSUM_MISMATCH });
    expect(await big.isCached('img')).toBe(false);
  });

  it('fetch() resolving to { source, cache: false }: streamed without caching; waiters do not wait, each fetches', async () => {
    const big = await ImageCache.open({ driver });
    const src = origin({ before: (n) => (n === 1 ? driver.missed(4) : undefined) });
    const results = await Promise.all(
      Array.from({ length: 4 }, async () => {
        const { stream, from } = await big.readThrough('img', { fetch: async () => ({ source: await src.fetch(), cache: false }) });
        return { from, caching: 'cacheOutcome' in stream, data: await collect(stream) };
      }),
    );
    expect(results.every((r) => r.from === 'origin' && !r.caching && r.data.equals(image))).toBe(true);
    expect(src.fetches).toBe(4);
    expect(await big.isCached('img')).toBe(false);
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
  });

  it('rejects an invalid id or a missing fetch before touching the disk', async () => {
    await expect(cache.readThrough('../x', { fetch: origin().fetch })).rejects.toMatchObject({ code: ErrorCodes.INVALID_IMAGE_ID });
    await expect(cache.readThrough('x', {} as never)).rejects.toMatchObject({ code: ErrorCodes.INVALID_ARGUMENT });
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
  });
});
