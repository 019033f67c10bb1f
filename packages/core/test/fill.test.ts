import { closeSync, openSync, readSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  ChecksumMismatchError,
  ErrorCodes,
  FillAbandonedError,
  ImageCache,
  OriginError,
  type Fill,
} from '../src/index.js';
import { collect, memoryCacheEach } from './helpers.js';
import { collector, controlledSource, failureOf, imageBytes, split, expectRolledBack, whenRole, whenWritten } from './fill-helpers.js';

const C = 64 * 1024;

let dir: string;
let cache: ImageCache;

memoryCacheEach('fill', (opened) => ({ cache, dir } = opened));

/**
 * A caching stream of `img` (4 chunks of a 4-chunk image, from a source the
 * test drives) whose client has received the first chunk: the host's write
 * lock of `img` is held by a writer that is not a fill.
 */
async function cachingStreamUnderWay(seed: string) {
  const image = imageBytes(seed, 4 * C);
  const chunks = split(image, C);
  const source = controlledSource();
  const client = cache.getCachingStream('img', source.iterable);
  const clientBytes = collector(client);
  source.push(chunks[0] as Buffer);
  await clientBytes.until(C);
  return { image, chunks, source, client, clientBytes };
}

/** A fetch that counts its calls and returns the given source. */
function counting(make: () => Readable | AsyncIterable<Uint8Array>) {
  let calls = 0;
  return {
    get calls() {
      return calls;
    },
    fetch: () => {
      calls++;
      return make();
    },
  };
}

describe('fill(): readers follow the file as it grows', () => {
  it('a reader gets chunk 1 before the origin has sent chunk 2', async () => {
    const image = imageBytes('first-byte', 4 * C);
    const [c0, ...rest] = split(image, C);
    const source = controlledSource();
    const fill = cache.fill('img', { fetch: () => source.iterable });
    const reader = collector(fill.openReader());
    let settled = false;
    void fill.done.then(() => (settled = true));

    source.push(c0 as Buffer);
    await reader.until(C);
    // Chunk 2 has not been released: the reader got chunk 1 from the file while the fill is still running.
    expect(reader.bytes().equals(c0 as Buffer)).toBe(true);
    expect(settled).toBe(false);
    expect(fill.role).toBe('owner');
    expect(await readdir(join(dir, 'incomplete'))).toEqual(['img']);

    for (const chunk of rest) source.push(chunk);
    source.end();
    expect((await reader.ended).equals(image)).toBe(true);
    expect(await fill.done).toMatchObject({ status: 'committed', size: image.length, via: 'fetched' });
    expect((await readFile(join(dir, 'img'))).equals(image)).toBe(true);
  });

  it('progress never runs ahead of what another descriptor reads from the file', async () => {
    const image = imageBytes('progress', 64 * C);
    const fill = cache.fill('img', { fetch: () => Readable.from(split(image, 16 * 1024)) });
    const checked: number[] = [];
    fill.on('progress', (written: number) => {
      if (fill.role !== 'owner') return;
      // Synchronously, at the moment of the notification: the first `written` bytes are in the file.
      const fd = openSync(join(dir, 'incomplete', 'img'), 'r');
      try {
        const buffer = Buffer.alloc(written);
        expect(readSync(fd, buffer, 0, written, 0)).toBe(written);
        expect(buffer.equals(image.subarray(0, written))).toBe(true);
      } finally {
        closeSync(fd);
      }
      checked.push(written);
    });
    expect((await fill.done).status).toBe('committed');
    expect(checked.length).toBeGreaterThan(1);
    expect(checked.at(-1)).toBe(image.length);
  });

  it('a slow (paused) reader and a fast one: the fast one finishes and the fill commits while the slow one has read one chunk', async () => {
    const image = imageBytes('slow-fast', 32 * C);
    const fill = cache.fill('img', { fetch: () => Readable.from(split(image, C)) });
    const slow = fill.openReader({ highWaterMark: C });
    const fast = collector(fill.openReader());
    const first = await new Promise<Buffer>((resolve) => {
      slow.once('readable', () => resolve(slow.read() as Buffer));
    });
    // From here on the slow reader is paused: nobody calls read().
    expect((await fast.ended).equals(image)).toBe(true);
    expect(await fill.done).toMatchObject({ status: 'committed', size: image.length });
    expect(await cache.isCached('img')).toBe(true);
    // It took one chunk and buffers at most its highWaterMark: it has not been pushed the image.
    expect(first.length).toBeLessThanOrEqual(C);
    expect(slow.position).toBeLessThanOrEqual(2 * C);
    expect(slow.readableLength).toBeLessThanOrEqual(slow.readableHighWaterMark);
    // It reads the rest at its own pace, from the committed file.
    const rest = await collect(slow);
    expect(Buffer.concat([first, rest]).equals(image)).toBe(true);
  });

  it('a reader that leaves mid-way does not abort the fill', async () => {
    const image = imageBytes('leaver', 8 * C);
    const chunks = split(image, C);
    const source = controlledSource();
    const fill = cache.fill('img', { fetch: () => source.iterable });
    const leaver = fill.openReader();
    const got = collector(leaver);
    source.push(chunks[0] as Buffer);
    await got.until(C);
    await new Promise((resolve) => {
      leaver.on('close', resolve);
      leaver.destroy();
    });
    expect(fill.readers).toBe(0);
    for (const chunk of chunks.slice(1)) source.push(chunk);
    source.end();
    expect(await fill.done).toMatchObject({ status: 'committed', size: image.length });
    expect((await collect(await cache.openForRead('img'))).equals(image)).toBe(true);
  });

  it('100 readers on one fill: none buffers more than its highWaterMark, and each gets every byte', async () => {
    const image = imageBytes('hundred', 64 * C);
    const source = controlledSource();
    const fill = cache.fill('img', { fetch: () => source.iterable });
    const fast = Array.from({ length: 50 }, () => fill.openReader({ highWaterMark: C }));
    const slow = Array.from({ length: 50 }, () => fill.openReader({ highWaterMark: C }));
    const fastDone = fast.map((reader) => collect(reader));
    // Slow readers let their buffer fill (a 'readable' listener) and never read.
    for (const reader of slow) reader.on('readable', () => undefined);
    let worst = 0;
    const measure = () => {
      for (const reader of [...fast, ...slow]) worst = Math.max(worst, reader.readableLength - reader.readableHighWaterMark);
    };
    fill.on('progress', measure);
    for (const reader of [...fast, ...slow]) reader.on('data', measure);
    for (const chunk of split(image, C)) source.push(chunk);
    source.end();
    for (const data of await Promise.all(fastDone)) expect(data.equals(image)).toBe(true);
    expect((await fill.done).status).toBe('committed');
    measure();
    expect(worst).toBeLessThanOrEqual(0);
    for (const reader of slow) {
      expect(reader.readableLength).toBeGreaterThan(0); // they did buffer: up to the bound, not beyond
      expect(reader.readableLength).toBeLessThanOrEqual(C);
    }
    for (const reader of slow) reader.removeAllListeners('readable');
    for (const data of await Promise.all(slow.map((reader) => collect(reader)))) expect(data.equals(image)).toBe(true);
  });

  it('ranged readers that start beyond the written bytes wait, then get exactly their range', async () => {
    const image = imageBytes('ranges', 8 * C);
    const chunks = split(image, C);
    const source = controlledSource();
    const fill = cache.fill('img', { fetch: () => source.iterable, expectedSize: image.length });
    expect(fill.expectedSize).toBe(image.length);
    source.push(chunks[0] as Buffer);
    source.push(chunks[1] as Buffer);
    await whenWritten(fill, 2 * C);

    const ahead = collector(fill.openReader({ start: 5 * C + 100, end: 6 * C + 99 }));
    const clamped = collector(fill.openReader({ start: 7 * C, end: 100 * C }));
    const past = collector(fill.openReader({ start: 8 * C + 5 }));
    // A range inside the written bytes is served before the fill ends.
    expect((await collector(fill.openReader({ start: 10, end: C + 9 })).ended).equals(image.subarray(10, C + 10))).toBe(true);

    for (const chunk of chunks.slice(2, 5)) source.push(chunk);
    await whenWritten(fill, 5 * C);
    expect(fill.written).toBe(5 * C);
    expect(ahead.length).toBe(0); // its first byte is not in the file yet

    for (const chunk of chunks.slice(5)) source.push(chunk);
    source.end();
    expect((await ahead.ended).equals(image.subarray(5 * C + 100, 6 * C + 100))).toBe(true);
    expect((await clamped.ended).equals(image.subarray(7 * C))).toBe(true);
    expect((await past.ended).length).toBe(0);
    expect((await fill.done).status).toBe('committed');
  });

  it('an origin error mid-way: readers below the written size get their bytes, readers past it get the error; the entry is in invalid/', async () => {
    const image = imageBytes('broken', 8 * C);
    const chunks = split(image, C);
    const source = controlledSource();
    const fill = cache.fill('img', { fetch: () => source.iterable });
    for (const chunk of chunks.slice(0, 3)) source.push(chunk);
    await whenWritten(fill, 3 * C);
    const below = collector(fill.openReader({ end: 3 * C - 1 }));
    const whole = collector(fill.openReader());
    const past = fill.openReader({ start: 4 * C });
    const pastError = failureOf(past);

    const error = new OriginError('img', 'connection reset by the origin');
    source.fail(error);
    const outcome = await fill.done;
    expect(outcome).toEqual({ status: 'failed', error });

    expect((await below.ended).equals(image.subarray(0, 3 * C))).toBe(true);
    await expect(whole.ended).rejects.toBe(error);
    expect(whole.bytes().equals(image.subarray(0, 3 * C))).toBe(true);
    expect(await pastError).toBe(error);
    // A reader opened after the failure still reads what was written (from invalid/), then gets the error.
    expect((await collector(fill.openReader({ start: C, end: 2 * C - 1 })).ended).equals(chunks[1] as Buffer)).toBe(true);
    expect(await failureOf(fill.openReader({ start: 3 * C }))).toBe(error);
    await expectRolledBack(cache, dir, 'img');
  });

  it('a checksum mismatch fails every reader that reaches the end with ChecksumMismatchError; a match is stored', async () => {
    const image = imageBytes('digest', 4 * C);
    const bad = cache.fill('bad', {
      fetch: () => Readable.from(split(image, C)),
      checksum: { algorithm: 'sha256', digest: '0'.repeat(64) },
    });
    const readers = [bad.openReader(), bad.openReader({ start: 2 * C })];
    for (const reader of readers) expect(ChecksumMismatchError.isInstance(await failureOf(reader))).toBe(true);
    const outcome = await bad.done;
    expect(outcome.status === 'failed' && outcome.error.name).toBe('ChecksumMismatchError');
    await expectRolledBack(cache, dir, 'bad');

    const digest = createHash('sha256').update(image).digest('hex');
    const good = cache.fill('good', { fetch: () => Readable.from(split(image, C)), checksum: { algorithm: 'sha256', digest } });
    expect((await collect(good.openReader())).equals(image)).toBe(true);
    expect(await good.done).toMatchObject({ status: 'committed', checksum: `sha256:${digest}` });
    expect(await cache.driver.getStoredChecksum?.('good')).toBe(`sha256:${digest}`);
  });

  it('expectedSize is verified: an origin that ends short fails the fill with OriginError', async () => {
    const image = imageBytes('short', 3 * C);
    const fill = cache.fill('img', { fetch: () => Readable.from(split(image, C)), expectedSize: 4 * C });
    const error = await failureOf(fill.openReader());
    expect(OriginError.isInstance(error)).toBe(true);
    expect(error.message).toContain(`ended after ${3 * C} of the expected ${4 * C} bytes`);
    await expectRolledBack(cache, dir, 'img');
  });

  it('one fill per id per process: fill() while it runs returns the same fill; the origin is read once', async () => {
    const image = imageBytes('shared', 4 * C);
    const origin = counting(() => Readable.from(split(image, C)));
    const first = cache.fill('img', { fetch: origin.fetch });
    const second = cache.fill('img', { fetch: origin.fetch });
    expect(second).toBe(first);
    const [a, b] = await Promise.all([collect(first.openReader()), collect(second.openReader())]);
    expect(a.equals(image) && b.equals(image)).toBe(true);
    await first.done;
    expect(origin.calls).toBe(1);
    // Once committed, a new fill() finds the entry cached and never fetches.
    const later = cache.fill('img', { fetch: origin.fetch });
    expect(later).not.toBe(first);
    expect(await later.done).toMatchObject({ status: 'committed', size: image.length, via: 'cached' });
    expect(later.role).toBe('cached');
    expect((await collect(later.openReader({ start: C, end: 2 * C - 1 }))).equals(image.subarray(C, 2 * C))).toBe(true);
    expect(origin.calls).toBe(1);
  });

  it('a stale incomplete/<id> (its writer died) is moved to invalid/ and never served', async () => {
    const image = imageBytes('stale', 2 * C);
    const torn = Buffer.alloc(3 * C, 0xee);
    await writeFile(join(dir, 'incomplete', 'img'), torn);
    const fill = cache.fill('img', { fetch: () => Readable.from(split(image, C)) });
    expect((await collect(fill.openReader())).equals(image)).toBe(true);
    expect((await fill.done).status).toBe('committed');
    expect((await readFile(join(dir, 'invalid', 'img'))).equals(torn)).toBe(true);
    expect((await readFile(join(dir, 'img'))).equals(image)).toBe(true);
  });

  it('abandonAfter: 0: when the last reader leaves, the fill stops and rolls back with FillAbandonedError', async () => {
    const image = imageBytes('abandon', 4 * C);
    const chunks = split(image, C);
    const source = controlledSource();
    const fill = cache.fill('img', { fetch: () => source.iterable, abandonAfter: 0 });
    const reader = fill.openReader();
    const got = collector(reader);
    source.push(chunks[0] as Buffer);
    await got.until(C);
    reader.destroy();
    const outcome = await fill.done;
    expect(outcome.status === 'failed' && FillAbandonedError.isInstance(outcome.error)).toBe(true);
    await expectRolledBack(cache, dir, 'img');
  });

  it('abandonAfter: a fill nobody reads aborts the signal given to fetch()', async () => {
    let signal: AbortSignal | undefined;
    const fill = cache.fill('img', {
      abandonAfter: 0,
      fetch: ({ signal: given }) => {
        signal = given;
        return new Promise<never>((_, reject) => given.addEventListener('abort', () => reject(given.reason)));
      },
    });
    const outcome = await fill.done;
    expect(outcome.status === 'failed' && outcome.error.name).toBe('FillAbandonedError');
    expect(signal?.aborted).toBe(true);
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
  });

  it('rejects bad arguments synchronously', () => {
    expect(() => cache.fill('a/b', { fetch: () => Readable.from([]) })).toThrowError(expect.objectContaining({ code: ErrorCodes.INVALID_IMAGE_ID }));
    expect(() => cache.fill('a', {} as never)).toThrowError(expect.objectContaining({ code: ErrorCodes.INVALID_ARGUMENT }));
    expect(() => cache.fill('a', { fetch: () => Readable.from([]), expectedSize: -1 })).toThrowError(
      expect.objectContaining({ code: ErrorCodes.INVALID_ARGUMENT }),
    );
  });
});

describe('fill() and the other writers share the host lock', () => {
  it('while a fill owns the id: cacheImage resolves false, getCachingStream does not cache, readThrough reads the fill', async () => {
    const image = imageBytes('owned', 4 * C);
    const chunks = split(image, C);
    const source = controlledSource();
    const fill = cache.fill('img', { fetch: () => source.iterable });
    source.push(chunks[0] as Buffer);
    await whenWritten(fill, C);

    expect(await cache.cacheImage('img', Readable.from([Buffer.from('other bytes')]))).toBe(false);
    const passing = cache.getCachingStream('img', Readable.from([Buffer.from('client bytes')]));
    expect((await collect(passing)).toString()).toBe('client bytes');
    expect((await passing.cacheOutcome).status).toBe('skipped');
    const origin = counting(() => Readable.from([Buffer.from('never')]));
    const through = await cache.readThrough('img', { fetch: origin.fetch });
    expect(through.from).toBe('origin');
    expect(through.fill).toBe(fill);

    for (const chunk of chunks.slice(1)) source.push(chunk);
    source.end();
    expect((await collect(through.stream)).equals(image)).toBe(true);
    expect(origin.calls).toBe(0);
    expect((await readFile(join(dir, 'img'))).equals(image)).toBe(true);
  });

  it('a fill started while getCachingStream caches the id follows it: its readers get the bytes, the origin is read once', async () => {
    const { image, chunks, source, client, clientBytes } = await cachingStreamUnderWay('follow-stream');

    const origin = counting(() => Readable.from([Buffer.from('never')]));
    const fill = cache.fill('img', { fetch: origin.fetch });
    await whenRole(fill, 'follower');
    const reader = collector(fill.openReader());
    for (const chunk of chunks.slice(1)) source.push(chunk);
    source.end();
    expect((await clientBytes.ended).equals(image)).toBe(true);
    expect((await reader.ended).equals(image)).toBe(true);
    expect(await fill.done).toMatchObject({ status: 'committed', size: image.length, via: 'followed' });
    expect((await client.cacheOutcome).status).toBe('committed');
    expect(origin.calls).toBe(0);
  });

  it('readThrough while a caching stream of the host writes the id: it reads that write as a fill, without a second fetch', async () => {
    const { image, chunks, source } = await cachingStreamUnderWay('through-stream');

    const origin = counting(() => Readable.from([Buffer.from('never')]));
    // Not a flight of readThrough and not a fill: only the host lock tells that the id is being written.
    const through = await cache.readThrough('img', { fetch: origin.fetch });
    expect(through.from).toBe('origin');
    expect(through.fill?.role === 'pending' || through.fill?.role === 'follower').toBe(true);
    const reader = collector(through.stream);
    for (const chunk of chunks.slice(1)) source.push(chunk);
    source.end();
    expect((await reader.ended).equals(image)).toBe(true);
    expect(await through.fill?.done).toMatchObject({ status: 'committed', via: 'followed' });
    expect(origin.calls).toBe(0);
  });

  it('a fill following a caching stream whose client leaves takes over and fetches itself', async () => {
    const { image, client } = await cachingStreamUnderWay('takeover-local');

    const origin = counting(() => Readable.from(split(image, C)));
    const fill = cache.fill('img', { fetch: origin.fetch });
    await whenRole(fill, 'follower');
    const reader = collector(fill.openReader());
    client.destroy(); // the caching stream's client leaves: it rolls back
    expect((await client.cacheOutcome).status).toBe('aborted');
    expect((await reader.ended).equals(image)).toBe(true);
    expect(await fill.done).toMatchObject({ status: 'committed', via: 'fetched' });
    expect(origin.calls).toBe(1);
    expect((await readFile(join(dir, 'img'))).equals(image)).toBe(true);
  });

  it('cacheImage moves a dead writer\'s incomplete file to invalid/ and caches', async () => {
    await mkdir(join(dir, 'incomplete'), { recursive: true });
    await writeFile(join(dir, 'incomplete', 'img'), 'torn');
    expect(await cache.cacheImage('img', Readable.from([Buffer.from('whole')]))).toBe(true);
    expect(await readFile(join(dir, 'img'), 'utf8')).toBe('whole');
    expect(await readFile(join(dir, 'invalid', 'img'), 'utf8')).toBe('torn');
  });
});
