// Fills whose fetch announces what the origin said (size, digest, cache: false), and fills stopped early
// (abort(), FillOptions.signal). Real files in a temp directory, the real MemoryDriver.
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  ChecksumMismatchError,
  ErrorCodes,
  FillAbortedError,
  ImageCache,
  MemoryDriver,
  OriginError,
  type Fill,
  type FillAnnouncement,
} from '../src/index.js';
import { collect, tempDir } from './helpers.js';
import { collector, controlledSource, failureOf, imageBytes, split, expectRolledBack, whenRole, whenWritten } from './fill-helpers.js';

const C = 64 * 1024;
const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

let dir: string;
let cleanup: () => Promise<void>;
let cache: ImageCache;
const others: ImageCache[] = [];

beforeEach(async () => {
  ({ dir, cleanup } = await tempDir('fill-announce'));
  cache = await ImageCache.open({ driver: new MemoryDriver({ cacheDir: dir }) });
});

afterEach(async () => {
  for (const other of others.splice(0)) await other.close();
  await cache.close();
  await cleanup();
});

/**
 * A second ImageCache on the same directory: its fills follow this one's through the host lock
 * (the abstract socket refuses a second listener in the same process too), as another process's would.
 */
async function secondCache(): Promise<ImageCache> {
  const other = await ImageCache.open({ driver: new MemoryDriver({ cacheDir: dir }) });
  others.push(other);
  return other;
}

describe('fetch() announces what the origin said', () => {
  it('size and digest are announced before the first byte, verified, and the digest is stored', async () => {
    const image = imageBytes('announced', 4 * C);
    const source = controlledSource();
    let answer!: () => void;
    const answered = new Promise<void>((resolve) => (answer = resolve));
    const fill = cache.fill('img', {
      fetch: async () => {
        await answered;
        return { source: source.iterable, size: image.length, checksum: { algorithm: 'sha256', digest: sha256(image) } };
      },
    });
    const events: FillAnnouncement[] = [];
    fill.on('announced', (announcement: FillAnnouncement) => events.push(announcement));
    await whenRole(fill, 'owner');
    expect(fill.announcement).toBeUndefined();
    expect(fill.expectedSize).toBeUndefined();
    expect(fill.checksum).toBeUndefined();

    answer();
    const announcement = await fill.whenAnnounced();
    const want = { expectedSize: image.length, checksum: `sha256:${sha256(image)}`, cache: true };
    expect(announcement).toEqual(want);
    expect(events).toEqual([want]);
    expect(fill.written).toBe(0); // not a byte yet: the announcement does not wait for the body
    expect(fill.expectedSize).toBe(image.length);
    expect(fill.checksum).toBe(`sha256:${sha256(image)}`);

    const reader = collector(fill.openReader());
    for (const chunk of split(image, C)) source.push(chunk);
    source.end();
    expect((await reader.ended).equals(image)).toBe(true);
    expect(await fill.done).toEqual({ status: 'committed', size: image.length, checksum: `sha256:${sha256(image)}`, via: 'fetched' });
    expect(await cache.driver.getStoredChecksum?.('img')).toBe(`sha256:${sha256(image)}`);
  });

  it('the options win over the announcement: the options\' digest and size are the ones verified', async () => {
    const image = imageBytes('options-win', 2 * C);
    const fill = cache.fill('img', {
      checksum: { algorithm: 'sha256', digest: sha256(image) },
      expectedSize: image.length,
      fetch: () => ({ source: Readable.from(split(image, C)), size: 7, checksum: { algorithm: 'sha256', digest: '0'.repeat(64) } }),
    });
    expect(await fill.whenAnnounced()).toEqual({ expectedSize: image.length, checksum: `sha256:${sha256(image)}`, cache: true });
    expect(await fill.done).toMatchObject({ status: 'committed', size: image.length, checksum: `sha256:${sha256(image)}` });
  });

  it.each([
    ['shorter', 3 * C, 4 * C, `ended after ${3 * C} of the expected ${4 * C} bytes`],
    ['longer', 4 * C, 3 * C, `sent more than the expected ${3 * C} bytes`],
  ])('a body %s than the announced size fails with OriginError; nothing is committed', async (_name, actual, announced, message) => {
    const image = imageBytes('sized', actual);
    const fill = cache.fill('img', { fetch: () => ({ source: Readable.from(split(image, C)), size: announced }) });
    expect((await fill.whenAnnounced())?.expectedSize).toBe(announced);
    const error = await failureOf(fill.openReader());
    expect(OriginError.isInstance(error)).toBe(true);
    expect(error.message).toContain(message);
    expect((await fill.done).status).toBe('failed');
    await expectRolledBack(cache, dir, 'img');
  });

  it('a body that does not match the announced digest fails with ChecksumMismatchError; nothing is committed', async () => {
    const image = imageBytes('wrong-digest', 3 * C);
    const fill = cache.fill('img', {
      fetch: () => ({ source: Readable.from(split(image, C)), checksum: { algorithm: 'sha256', digest: sha256(Buffer.from('other')) } }),
    });
    const reader = collector(fill.openReader());
    await expect(reader.ended).rejects.toSatisfy((error: Error) => ChecksumMismatchError.isInstance(error));
    // Every byte but the verdict: the reader got what the file had, then the error instead of its end.
    expect(reader.finished).toBe(false);
    const outcome = await fill.done;
    expect(outcome.status === 'failed' && ChecksumMismatchError.isInstance(outcome.error)).toBe(true);
    await expectRolledBack(cache, dir, 'img');
    // The copy kept in invalid/ for inspection is the whole download, not what the writer had flushed when it failed.
    expect((await readFile(join(dir, 'invalid', 'img'))).equals(image)).toBe(true);
  });

  it('a malformed announcement is the origin\'s failure', async () => {
    const fill = cache.fill('img', { fetch: () => ({ source: Readable.from([Buffer.from('x')]), size: -1 }) });
    expect(await fill.whenAnnounced()).toBeUndefined();
    const outcome = await fill.done;
    expect(outcome.status === 'failed' && outcome.error.message).toContain('announced a size');
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
  });

  it('cache: false: readers get every byte, the fill ends uncached, nothing is active, and the next fill fetches again', async () => {
    const image = imageBytes('uncached', 5 * C + 7);
    const chunks = split(image, C);
    const source = controlledSource();
    let fetches = 0;
    const fill = cache.fill('img', {
      fetch: () => {
        fetches++;
        return { source: source.iterable, cache: false };
      },
    });
    expect(await fill.whenAnnounced()).toEqual({ expectedSize: undefined, checksum: undefined, cache: false });
    const early = collector(fill.openReader());
    source.push(chunks[0] as Buffer);
    await early.until(C); // read while the fill runs, as for any fill
    for (const chunk of chunks.slice(1)) source.push(chunk);
    source.end();
    expect((await early.ended).equals(image)).toBe(true);
    expect(await fill.done).toEqual({ status: 'uncached', size: image.length, checksum: undefined, via: 'fetched' });
    expect(fill.outcome).toEqual(await fill.done);
    // Readers opened after the end still get the whole image, and a range of it.
    expect((await collect(fill.openReader())).equals(image)).toBe(true);
    expect((await collect(fill.openReader({ start: C, end: 2 * C - 1 }))).equals(image.subarray(C, 2 * C))).toBe(true);
    await expectRolledBack(cache, dir, 'img');

    const again = cache.fill('img', { fetch: () => Readable.from(split(image, C)) });
    expect(again).not.toBe(fill);
    expect(await again.done).toMatchObject({ status: 'committed', via: 'fetched' });
    expect(fetches).toBe(1);
  });

  it('cache: false with an announced size that the body misses fails like any fill', async () => {
    const image = imageBytes('uncached-short', 2 * C);
    const fill = cache.fill('img', { fetch: () => ({ source: Readable.from(split(image, C)), size: 3 * C, cache: false }) });
    expect(OriginError.isInstance(await failureOf(fill.openReader()))).toBe(true);
    expect((await fill.done).status).toBe('failed');
    await expectRolledBack(cache, dir, 'img');
  });

  it('whenAnnounced() resolves undefined when the fill fails before the origin answers, or finds the entry cached', async () => {
    const error = new OriginError('img', 'not found', { status: 404 });
    const failed = cache.fill('img', {
      fetch: () => {
        throw error;
      },
    });
    expect(await failed.whenAnnounced()).toBeUndefined();
    expect(await failed.done).toEqual({ status: 'failed', error });

    await cache.cacheImage('there', Readable.from([Buffer.from('cached bytes')]));
    const cached = cache.fill('there', { fetch: () => Readable.from([Buffer.from('never')]) });
    expect(await cached.whenAnnounced()).toBeUndefined();
    expect(await cached.done).toMatchObject({ status: 'committed', via: 'cached' });
    expect(cached.announcement).toBeUndefined();
  });
});

describe('followers learn the announcement from the owner', () => {
  it('a follower that connected before the origin answered gets it when it comes; one that connects later gets it in the hello', async () => {
    const image = imageBytes('follow-announced', 4 * C);
    const chunks = split(image, C);
    const source = controlledSource();
    let answer!: () => void;
    const answered = new Promise<void>((resolve) => (answer = resolve));
    const digest = sha256(image);
    const owner = cache.fill('img', {
      fetch: async () => {
        await answered;
        return { source: source.iterable, size: image.length, checksum: { algorithm: 'sha256', digest } };
      },
    });
    await whenRole(owner, 'owner');
    const never = () => Readable.from([Buffer.from('never')]);
    const early = (await secondCache()).fill('img', { fetch: never });
    await whenRole(early, 'follower');
    expect(early.announcement).toBeUndefined();

    answer();
    const want = { expectedSize: image.length, checksum: `sha256:${digest}`, cache: true };
    expect(await early.whenAnnounced()).toEqual(want);
    expect(early.expectedSize).toBe(image.length);
    expect(early.checksum).toBe(`sha256:${digest}`);

    source.push(chunks[0] as Buffer);
    await whenWritten(owner, C);
    const late = (await secondCache()).fill('img', { fetch: never });
    await whenRole(late, 'follower');
    expect(await late.whenAnnounced()).toEqual(want);

    const readers = [early, late].map((fill) => collector(fill.openReader()));
    for (const chunk of chunks.slice(1)) source.push(chunk);
    source.end();
    for (const reader of readers) expect((await reader.ended).equals(image)).toBe(true);
    for (const fill of [early, late]) expect(await fill.done).toEqual({ status: 'committed', size: image.length, checksum: `sha256:${digest}`, via: 'followed' });
  });

  it('an uncached fill: followers read every byte and end uncached too', async () => {
    const image = imageBytes('follow-uncached', 3 * C + 1);
    const chunks = split(image, C);
    const source = controlledSource();
    const owner = cache.fill('img', { fetch: () => ({ source: source.iterable, cache: false }) });
    await owner.whenAnnounced();
    source.push(chunks[0] as Buffer);
    await whenWritten(owner, C);
    const follower = (await secondCache()).fill('img', { fetch: () => Readable.from([Buffer.from('never')]) });
    await whenRole(follower, 'follower');
    expect(await follower.whenAnnounced()).toEqual({ expectedSize: undefined, checksum: undefined, cache: false });
    const reader = collector(follower.openReader());
    for (const chunk of chunks.slice(1)) source.push(chunk);
    source.end();
    expect((await reader.ended).equals(image)).toBe(true);
    expect(await follower.done).toEqual({ status: 'uncached', size: image.length, checksum: undefined, via: 'followed' });
    expect(await owner.done).toMatchObject({ status: 'uncached', via: 'fetched' });
    await expectRolledBack(cache, dir, 'img');
  });
});

describe('stopping a fill early', () => {
  it('abort(reason) mid-way: readers get their bytes then the reason, done fails with it, the file is in invalid/', async () => {
    const image = imageBytes('abort', 6 * C);
    const chunks = split(image, C);
    const source = controlledSource();
    let signal: AbortSignal | undefined;
    const fill = cache.fill('img', {
      fetch: ({ signal: given }) => {
        signal = given;
        return source.iterable;
      },
    });
    for (const chunk of chunks.slice(0, 2)) source.push(chunk);
    await whenWritten(fill, 2 * C);
    const below = collector(fill.openReader({ end: 2 * C - 1 }));
    const whole = collector(fill.openReader());
    await whole.until(2 * C);

    const reason = new Error('server shutting down');
    fill.abort(reason);
    expect(await fill.done).toEqual({ status: 'failed', error: reason });
    expect(signal?.aborted).toBe(true);
    expect((await below.ended).equals(image.subarray(0, 2 * C))).toBe(true);
    await expect(whole.ended).rejects.toBe(reason);
    expect(whole.bytes().equals(image.subarray(0, 2 * C))).toBe(true);
    await expectRolledBack(cache, dir, 'img');

    fill.abort(new Error('again')); // after the end: no effect
    expect(fill.outcome).toEqual({ status: 'failed', error: reason });
  });

  it('abort() before the origin answers does not wait for a fetch that ignores its signal; its late source is destroyed', async () => {
    let deliver!: (source: Readable) => void;
    const late = new Promise<Readable>((resolve) => (deliver = resolve));
    let called!: () => void;
    const fetching = new Promise<void>((resolve) => (called = resolve));
    const fill = cache.fill('img', {
      fetch: () => {
        called();
        return late;
      },
    });
    await fetching;
    fill.abort();
    const outcome = await fill.done; // resolves while the fetch is still pending
    expect(outcome.status === 'failed' && FillAbortedError.isInstance(outcome.error)).toBe(true);
    expect(outcome.status === 'failed' && (outcome.error as FillAbortedError).code).toBe(ErrorCodes.FILL_ABORTED);
    expect(await fill.whenAnnounced()).toBeUndefined();
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);

    const source = Readable.from([Buffer.from('too late')]);
    deliver(source);
    await new Promise((resolve) => source.once('close', resolve));
    expect(source.destroyed).toBe(true);
    // The lock was given back: a new fill owns the id and commits.
    const next = cache.fill('img', { fetch: () => Readable.from([Buffer.from('now')]) });
    expect(await next.done).toMatchObject({ status: 'committed', via: 'fetched' });
  });

  it('FillOptions.signal aborts the fill with the signal\'s reason; an aborted signal stops it before fetch() is called', async () => {
    const image = imageBytes('signal', 4 * C);
    const source = controlledSource();
    const controller = new AbortController();
    const fill = cache.fill('img', { fetch: () => source.iterable, signal: controller.signal });
    source.push(split(image, C)[0] as Buffer);
    await whenWritten(fill, C);
    const reason = new Error('client asked to stop');
    controller.abort(reason);
    expect(await fill.done).toEqual({ status: 'failed', error: reason });
    await expectRolledBack(cache, dir, 'img');

    let called = false;
    const aborted = cache.fill('other', {
      fetch: () => {
        called = true;
        return Readable.from([]);
      },
      signal: AbortSignal.abort(new Error('already')),
    });
    expect(await aborted.done).toMatchObject({ status: 'failed', error: { message: 'already' } });
    expect(called).toBe(false);
    expect(() => cache.fill('third', { fetch: () => Readable.from([]), signal: {} as AbortSignal })).toThrowError(
      expect.objectContaining({ code: ErrorCodes.INVALID_ARGUMENT }),
    );
  });

  it('aborting a follower stops following only: the owner goes on and commits', async () => {
    const image = imageBytes('abort-follower', 4 * C);
    const chunks = split(image, C);
    const source = controlledSource();
    const owner = cache.fill('img', { fetch: () => source.iterable });
    source.push(chunks[0] as Buffer);
    await whenWritten(owner, C);
    const follower = (await secondCache()).fill('img', { fetch: () => Readable.from([Buffer.from('never')]) });
    await whenRole(follower, 'follower');
    const reader = collector(follower.openReader());
    await reader.until(C);
    const reason = new Error('this process is leaving');
    follower.abort(reason);
    expect(await follower.done).toEqual({ status: 'failed', error: reason });
    await expect(reader.ended).rejects.toBe(reason);

    for (const chunk of chunks.slice(1)) source.push(chunk);
    source.end();
    expect(await owner.done).toMatchObject({ status: 'committed', via: 'fetched' });
    expect((await collect(await cache.openForRead('img'))).equals(image)).toBe(true);
  });

  it('aborting an owner: its follower takes over and fetches itself', async () => {
    const image = imageBytes('abort-owner', 4 * C);
    const chunks = split(image, C);
    const source = controlledSource();
    const owner = cache.fill('img', { fetch: () => source.iterable });
    source.push(chunks[0] as Buffer);
    await whenWritten(owner, C);
    let fetched = 0;
    const follower = (await secondCache()).fill('img', {
      fetch: () => {
        fetched++;
        return Readable.from(split(image, C));
      },
    });
    await whenRole(follower, 'follower');
    const reader = collector(follower.openReader());
    owner.abort(new Error('shutting down'));
    expect((await owner.done).status).toBe('failed');
    expect((await reader.ended).equals(image)).toBe(true);
    expect(await follower.done).toMatchObject({ status: 'committed', via: 'fetched' });
    expect(fetched).toBe(1);
  });
});
