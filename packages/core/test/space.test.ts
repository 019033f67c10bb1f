/**
 * The space policy's byte budget on the write path (issue 14, ADR 0006), on
 * real files in the OS temp directory: reservations before a known-size
 * fill, eviction of idle least recently used entries (never one being read
 * or filled), bypass of what cannot fit, growth of unknown-size writes, and
 * the budget sampled while 16 fills run at once.
 */
import { createHash } from 'node:crypto';
import { readdirSync, statSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  CacheFullError,
  ImageCache,
  InvalidArgumentError,
  MemoryDriver,
  resolveThresholds,
  type FillSource,
  type SpaceEvent,
} from '../src/index.js';
import { WRITE_HIGH_WATER_MARK } from '../src/streams.js';
import { collect, tempDir } from './helpers.js';

const KiB = 1024;
const MiB = 1024 * KiB;

let dir: string;
let cleanup: () => Promise<void>;
let cache: ImageCache;
let events: SpaceEvent[];

beforeEach(async () => {
  ({ dir, cleanup } = await tempDir('space'));
  events = [];
});

afterEach(async () => {
  await cache?.close();
  await cleanup();
});

async function open(maxSize: number): Promise<ImageCache> {
  cache = await ImageCache.open({
    driver: new MemoryDriver({ cacheDir: dir }),
    maxSize,
    writeBudget: true,
    onSpaceEvent: (event) => events.push(event),
  });
  return cache;
}

function content(id: string, size: number): Buffer {
  const data = Buffer.alloc(size);
  for (let i = 0; i < size; i += 4096) data.write(`${id}:${i};`, i);
  return data;
}

/** `data` in 64 KiB chunks, calling `onChunk` before each. */
async function* chunked(data: Buffer, onChunk?: () => void): AsyncGenerator<Buffer> {
  for (let i = 0; i < data.length; i += 64 * KiB) {
    onChunk?.();
    await new Promise((resolve) => setImmediate(resolve));
    yield data.subarray(i, i + 64 * KiB);
  }
}

/** Bytes of the files in the cache directory, `incomplete/` and `invalid/`. */
function bytesOnDisk(): number {
  let total = 0;
  for (const sub of ['', 'incomplete', 'invalid']) {
    const path = join(dir, sub);
    for (const entry of readdirSync(path, { withFileTypes: true })) {
      if (!entry.isFile() || entry.name.startsWith('.')) continue;
      try {
        total += statSync(join(path, entry.name)).size;
      } catch {
        // moved or deleted while listing: counted where it went, or gone
      }
    }
  }
  return total;
}

async function cacheEntry(id: string, size: number): Promise<Buffer> {
  const data = content(id, size);
  expect(await cache.cacheImage(id, Readable.from(chunked(data)))).toBe(true);
  return data;
}

async function readAll(id: string): Promise<Buffer> {
  return collect(await cache.openForRead(id));
}

const evicted = () => events.flatMap((event) => (event.type === 'evict' ? [event.imageId] : []));

describe('the byte budget on the write path', () => {
  it('a fill of known size evicts the least recently used idle entries before it writes, never one being read', async () => {
    await open(4 * MiB);
    for (const id of ['a', 'b', 'c']) await cacheEntry(id, MiB);
    await readAll('a'); // a is now the most recently used
    const reading = await cache.openForRead('b'); // b is the least recently used, but being read
    const d = content('d', 2 * MiB);
    const fill = cache.fill('d', { fetch: () => ({ source: Readable.from(chunked(d)), size: d.length }) });
    const outcome = await fill.done;
    expect(outcome).toMatchObject({ status: 'committed', size: d.length });
    expect(evicted(), 'c went (b is read, a is recent)').toEqual(['c']);
    expect(await cache.isCached('b')).toBe(true);
    expect((await collect(reading)).length, 'the reader of b got all of it').toBe(MiB);
    expect((await cache.getCachedImages()).map((image) => image.imageId).sort()).toEqual(['a', 'b', 'd']);
    expect(bytesOnDisk()).toBeLessThanOrEqual(4 * MiB);
  });

  it('an image larger than the whole budget is not cached: the fill ends bypassed before writing, and hands its source over', async () => {
    await open(2 * MiB);
    await cacheEntry('small', MiB);
    const big = content('big', 3 * MiB);
    const fill = cache.fill('big', { fetch: () => ({ source: Readable.from(chunked(big)), size: big.length }) });
    const outcome = await fill.done;
    expect(outcome).toEqual({ status: 'bypassed', reason: 'too-large', size: big.length, via: 'fetched' });
    const taken = fill.takeSource();
    expect(taken, 'the first caller gets the source').toBeDefined();
    expect(fill.takeSource(), 'only once').toBeUndefined();
    expect((await collect(taken?.source as AsyncIterable<unknown>)).equals(big), 'every byte, uncached').toBe(true);
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
    expect(await readdir(join(dir, 'invalid'))).toEqual([]);
    expect(await cache.isCached('small'), 'nothing was evicted for it').toBe(true);
    expect(events).toContainEqual({ type: 'bypass', imageId: 'big', reason: 'too-large', size: big.length });
    await expect(collect(fill.openReader())).rejects.toSatisfy((error: unknown) => CacheFullError.isInstance(error));
  });

  it('when the rest of the budget is held by reads, a fill is bypassed (budget-full) and nothing is evicted', async () => {
    await open(3 * MiB);
    for (const id of ['a', 'b', 'c']) await cacheEntry(id, MiB);
    const readers = await Promise.all(['a', 'b', 'c'].map((id) => cache.openForRead(id)));
    const d = content('d', MiB);
    const outcome = await cache.fill('d', { fetch: () => ({ source: Readable.from(chunked(d)), size: d.length }) }).done;
    expect(outcome).toMatchObject({ status: 'bypassed', reason: 'budget-full' });
    expect(evicted()).toEqual([]);
    for (const reader of readers) expect((await collect(reader)).length).toBe(MiB);
    // Once the readers are gone, the same image caches (evicting the least recently used).
    const again = await cache.fill('d', { fetch: () => ({ source: Readable.from(chunked(d)), size: d.length }) }).done;
    expect(again).toMatchObject({ status: 'committed' });
    expect(evicted()).toHaveLength(1);
  });

  it('a fill of unknown size evicts as it grows and stays within the budget at every chunk', async () => {
    await open(4 * MiB);
    for (const id of ['a', 'b', 'c']) await cacheEntry(id, MiB);
    let max = 0;
    const d = content('d', 2 * MiB + 512 * KiB);
    const outcome = await cache.fill('d', { fetch: () => Readable.from(chunked(d, () => (max = Math.max(max, bytesOnDisk())))) }).done;
    expect(outcome).toMatchObject({ status: 'committed', size: d.length });
    expect(evicted(), 'least recently used first').toEqual(['a', 'b']);
    expect(max).toBeLessThanOrEqual(4 * MiB);
    expect((await readAll('d')).equals(d)).toBe(true);
  });

  it('a write of unknown size that outgrows what can be evicted fails with CacheFullError and rolls back; earlier entries stay', async () => {
    await open(2 * MiB);
    await cacheEntry('a', MiB);
    const reading = await cache.openForRead('a');
    const big = content('big', 2 * MiB);
    const error = await cache.cacheImage('big', Readable.from(chunked(big))).then(
      () => new Error('cached'),
      (e: unknown) => e as Error,
    );
    expect(CacheFullError.isInstance(error), String(error)).toBe(true);
    expect((error as CacheFullError).reason).toBe('budget-full');
    expect(await cache.isCached('big')).toBe(false);
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
    expect(await cache.isCached('a')).toBe(true);
    await collect(reading);
  });

  it('a caching stream that outgrows the budget: the client still gets every byte, the cache write fails with CacheFullError and rolls back', async () => {
    await open(2 * MiB);
    await cacheEntry('a', MiB);
    const reading = await cache.openForRead('a');
    const big = content('big', 2 * MiB);
    const stream = cache.getCachingStream('big', Readable.from(chunked(big)));
    const received = await collect(stream);
    expect(received.equals(big), 'every byte').toBe(true);
    const outcome = await stream.cacheOutcome;
    expect(outcome.status).toBe('failed');
    expect(CacheFullError.isInstance(outcome.error), String(outcome.error)).toBe(true);
    expect(await cache.isCached('big')).toBe(false);
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
    expect(bytesOnDisk()).toBeLessThanOrEqual(2 * MiB);
    await collect(reading);
  });

  it('a fill of unknown size that outgrows the budget stops caching but passes the rest through: two readers get every byte', async () => {
    await open(2 * MiB);
    const big = content('big', 5 * MiB + 123);
    const digest = createHash('sha256').update(big).digest('hex');
    let max = 0;
    const fill = cache.fill('big', {
      fetch: () => Readable.from(chunked(big, () => (max = Math.max(max, bytesOnDisk())))),
      checksum: { algorithm: 'sha256', digest },
    });
    let passed: string | undefined;
    fill.on('passThrough', (reason: string) => {
      passed = reason;
      // Later callers start a fill of their own (the running one is no longer shared).
      expect(cache.fill('big', { fetch: () => Readable.from([]), signal: AbortSignal.abort() })).not.toBe(fill);
    });
    const fast = collect(fill.openReader());
    // A slow reader: it is still reading the partial file when the fill switches, and paces the origin.
    const slow = (async () => {
      const parts: Buffer[] = [];
      for await (const part of fill.openReader({ highWaterMark: 16 * KiB })) {
        parts.push(part as Buffer);
        await new Promise((resolve) => setImmediate(resolve));
      }
      return Buffer.concat(parts);
    })();
    const outcome = await fill.done;
    expect(outcome).toEqual({ status: 'bypassed', reason: 'too-large', size: undefined, streamed: big.length, via: 'fetched' });
    expect(passed).toBe('too-large');
    for (const received of [await fast, await slow]) {
      expect(received.length).toBe(big.length);
      expect(createHash('sha256').update(received).digest('hex'), 'the right digest').toBe(digest);
    }
    expect(events).toContainEqual({ type: 'bypass', imageId: 'big', reason: 'too-large', size: undefined });
    expect(max, 'never more on disk than the budget').toBeLessThanOrEqual(2 * MiB);
    expect(await cache.isCached('big')).toBe(false);
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
    expect(await readdir(join(dir, 'invalid')), 'the partial file was rolled back and deleted').toEqual([]);
    expect((await cache.spaceStatus()).reserved).toBe(0);
    // A reader opened after the end needs bytes nobody holds: CacheFullError.
    await expect(collect(fill.openReader())).rejects.toSatisfy((error: unknown) => CacheFullError.isInstance(error));
  });

  it('an uncacheable fill (cache: false) of unknown size that outgrows the budget passes through too; a finished ranged reader does not hold it', async () => {
    await open(MiB);
    const big = content('nocache', 3 * MiB);
    const fill = cache.fill('nocache', { fetch: () => ({ source: Readable.from(chunked(big)), cache: false }) });
    const head = fill.openReader({ end: 999 }); // read to its end, then left open: it needs no more bytes
    const whole = collect(fill.openReader());
    const first = await new Promise<Buffer>((resolve) => head.once('data', (chunk: Buffer) => resolve(chunk)));
    expect(first.equals(big.subarray(0, first.length))).toBe(true);
    head.pause();
    expect(await fill.done).toMatchObject({ status: 'bypassed', reason: 'too-large', streamed: big.length });
    expect((await whole).equals(big)).toBe(true);
    head.destroy();
    expect(bytesOnDisk()).toBe(0);
  });

  it('a passed-through fill whose origin fails mid-way fails its readers with the origin error; nothing is cached', async () => {
    await open(MiB);
    const big = content('cut', 3 * MiB);
    async function* cut(): AsyncGenerator<Buffer> {
      yield* chunked(big.subarray(0, 2 * MiB));
      throw new Error('origin cut');
    }
    const fill = cache.fill('cut', { fetch: () => Readable.from(cut()) });
    const reader = collect(fill.openReader());
    const outcome = await fill.done;
    expect(outcome.status).toBe('failed');
    expect((outcome as { error: Error }).error.message).toContain('origin cut');
    await expect(reader).rejects.toThrow('origin cut');
    expect(await cache.isCached('cut')).toBe(false);
    expect(bytesOnDisk()).toBeLessThanOrEqual(MiB);
  });

  it('incomplete/ and invalid/ count: a failed write in invalid/ is evicted first', async () => {
    await open(3 * MiB);
    await cacheEntry('a', MiB);
    const bad = content('bad', MiB);
    await expect(
      cache.cacheImage('bad', Readable.from(chunked(bad)), { checksum: { algorithm: 'sha256', digest: '0'.repeat(64) } }),
    ).rejects.toThrow(/checksum/i);
    expect(await readdir(join(dir, 'invalid'))).toEqual(['bad']);
    const status = await cache.spaceStatus();
    expect(status).toMatchObject({ maxSize: 3 * MiB, writeBudget: true, active: MiB, invalid: MiB, incomplete: 0, state: 'ok' });
    const c = content('c', 2 * MiB);
    expect(await cache.fill('c', { fetch: () => ({ source: Readable.from(chunked(c)), size: c.length }) }).done).toMatchObject({
      status: 'committed',
    });
    expect(events.filter((event) => event.type === 'evict')).toEqual([
      { type: 'evict', imageId: 'bad', bytes: MiB, cause: 'budget', from: 'invalid' },
    ]);
    expect(await cache.isCached('a')).toBe(true);
  });

  it('16 concurrent fills of random sizes: active + incomplete + invalid never exceed the budget by more than one write buffer per fill', async () => {
    const budget = 16 * MiB;
    await open(budget);
    // A few entries to evict, and a failed write in invalid/.
    for (const id of ['old-1', 'old-2', 'old-3', 'old-4', 'old-5', 'old-6']) await cacheEntry(id, 2 * MiB);
    await expect(
      cache.cacheImage('broken', Readable.from(chunked(content('broken', 512 * KiB))), { checksum: { algorithm: 'sha256', digest: '0'.repeat(64) } }),
    ).rejects.toThrow();
    let max = 0;
    let samples = 0;
    const sample = () => {
      samples++;
      max = Math.max(max, bytesOnDisk());
    };
    // Deterministic "random" sizes from 256 KiB to 3 MiB; every other fill announces its size.
    let seed = 14;
    const next = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31);
    const fills = Array.from({ length: 16 }, (_, i) => {
      const size = 256 * KiB + (next() % (11 * 256)) * KiB;
      const data = content(`f${i}`, size);
      const source: FillSource = Readable.from(chunked(data, sample));
      const fill = cache.fill(`f${i}`, { fetch: () => (i % 2 === 0 ? { source, size } : source) });
      // A reader per fill (a client): what it got is checked against the origin's bytes for every fill that committed.
      return { id: `f${i}`, data, fill, read: collect(fill.openReader()).catch((error: unknown) => error as Error) };
    });
    const outcomes = await Promise.all(fills.map(({ fill }) => fill.done));
    const reads = await Promise.all(fills.map(({ read }) => read));
    sample();
    for (const [i, outcome] of outcomes.entries()) {
      expect(['committed', 'bypassed', 'failed'], `fill ${i}: ${JSON.stringify(outcome)}`).toContain(outcome.status);
      if (outcome.status === 'failed') expect(CacheFullError.isInstance(outcome.error), String(outcome.error)).toBe(true);
      if (outcome.status === 'committed') expect((reads[i] as Buffer).equals(fills[i]?.data as Buffer), `bytes of fill ${i}`).toBe(true);
    }
    const committed = outcomes.filter((outcome) => outcome.status === 'committed').length;
    console.log(`[space] 16 fills into ${budget} bytes: ${committed} committed, ${evicted().length} evictions, max ${max} bytes on disk over ${samples} samples`);
    expect(committed, 'fills were cached').toBeGreaterThanOrEqual(4);
    const total = fills.reduce((sum, { data }) => sum + data.length, 12 * MiB);
    expect(total, 'the budget was binding: everything together does not fit').toBeGreaterThan(budget);
    expect(evicted().length, 'the budget was reached: entries were evicted').toBeGreaterThan(0);
    expect(samples).toBeGreaterThan(100);
    expect(max).toBeLessThanOrEqual(budget + 16 * WRITE_HIGH_WATER_MARK);
    expect(bytesOnDisk()).toBeLessThanOrEqual(budget);
  });

  it('with headroom, idle entries are evicted behind each reservation, so the next fill finds its room without evicting', async () => {
    cache = await ImageCache.open({
      driver: new MemoryDriver({ cacheDir: dir }),
      maxSize: 4 * MiB,
      writeBudget: true,
      headroom: MiB,
      onSpaceEvent: (event) => events.push(event),
    });
    const fillOf = async (id: string) => {
      const data = content(id, MiB);
      return cache.fill(id, { fetch: () => ({ source: Readable.from(chunked(data)), size: data.length }) }).done;
    };
    for (const id of ['a', 'b', 'c']) expect(await fillOf(id)).toMatchObject({ status: 'committed' });
    expect(evicted(), 'three of four MiB used: the headroom is there').toEqual([]);
    // d fits without an eviction; behind its reservation, the least recently used entry goes to restore the headroom.
    expect(await fillOf('d')).toMatchObject({ status: 'committed' });
    await cache.spaceStatus(); // queued behind the background eviction: it has run
    expect(evicted()).toEqual(['a']);
    expect(await fillOf('e')).toMatchObject({ status: 'committed' });
    const status = await cache.spaceStatus();
    expect(evicted()).toEqual(['a', 'b']);
    expect(status.active, 'the budget minus the headroom').toBe(3 * MiB);
    expect(bytesOnDisk()).toBeLessThanOrEqual(4 * MiB);
  });

  it('refuses a headroom that is not 0..maxSize bytes', async () => {
    for (const headroom of [-1, 1.5, 5 * MiB]) {
      await expect(
        ImageCache.open({ driver: new MemoryDriver({ cacheDir: dir }), maxSize: 4 * MiB, writeBudget: true, headroom }),
      ).rejects.toSatisfy((error: unknown) => InvalidArgumentError.isInstance(error));
    }
  });

  it('without writeBudget, writes never evict (Glance: prune() enforces the budget)', async () => {
    cache = await ImageCache.open({ driver: new MemoryDriver({ cacheDir: dir }), maxSize: MiB, onSpaceEvent: (event) => events.push(event) });
    for (const id of ['a', 'b']) await cacheEntry(id, MiB);
    expect(events).toEqual([]);
    expect(await cache.prune()).toMatchObject({ files: 1, bytes: MiB });
  });
});

describe('free-space thresholds: options', () => {
  const disk = { totalBytes: 1000 * MiB, freeBytes: 500 * MiB, totalFiles: 1000, freeFiles: 500 };

  it('resolves percentages against blocks and inodes, sizes against blocks only', () => {
    const resolved = resolveThresholds({ run: { percent: 10 }, cull: { bytes: 50 * MiB }, stop: { percent: 2 } }, disk);
    expect(resolved.run).toEqual({ bytes: 100 * MiB, files: 100 });
    expect(resolved.cull).toEqual({ bytes: 50 * MiB, files: undefined });
    expect(resolved.stop).toEqual({ bytes: 20 * MiB, files: 20 });
  });

  it.each([
    [{ run: { percent: 5 }, cull: { percent: 7 }, stop: { percent: 3 } }, /stop < cull < run/],
    [{ run: { percent: 100 }, cull: { percent: 7 }, stop: { percent: 3 } }, /percent must be a number >= 0 and < 100/],
    [{ run: { bytes: -1 }, cull: { percent: 7 }, stop: { percent: 3 } }, /bytes must be an integer >= 0/],
    [{ run: { percent: 10, bytes: 1 }, cull: { percent: 7 }, stop: { percent: 3 } }, /not both/],
    [{ run: { bytes: 2000 * MiB }, cull: { percent: 7 }, stop: { percent: 3 } }, /below the filesystem's size/],
    [{ run: { percent: 10 }, cull: { percent: 7 }, stop: { percent: 3 }, intervalMs: 0 }, /intervalMs/],
  ])('refuses %j with a typed error', (options, message) => {
    expect(() => resolveThresholds(options as never, disk)).toThrow(message);
    expect(() => resolveThresholds(options as never, disk)).toThrow(InvalidArgumentError);
  });

  it('ImageCache.open rejects bad thresholds with InvalidArgumentError', async () => {
    await expect(
      ImageCache.open({ driver: new MemoryDriver({ cacheDir: dir }), freeSpace: { run: { percent: 1 }, cull: { percent: 2 }, stop: { percent: 3 } } }),
    ).rejects.toSatisfy((error: unknown) => InvalidArgumentError.isInstance(error));
  });
});
