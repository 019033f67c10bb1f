import { rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { ImageCache, type CacheDriver, type ReadOptions } from '@cache/core';
import { expect } from 'vitest';
import { makeBytes, readImage, whenClosed, writeImage } from '../helpers.js';
import type { CaseGroup } from '../kit.js';
import { ErrorCodes, expectRejects } from './common.js';

/** Bigger than a few read chunks of any sensible reader (core reads 256 KiB at a time), and odd. */
const SIZE = 1024 * 1024 + 4321;

/** Reads a range completely and returns its bytes. */
async function readRange(driver: CacheDriver, id: string, options: ReadOptions): Promise<Buffer> {
  const stream = await driver.openForRead(id, options);
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Consumes `stream` and destroys it in the `data` event that completes `bytes` bytes; resolves once it has closed. */
async function destroyAfter(stream: Readable, bytes: number): Promise<{ seen: number; ended: boolean }> {
  let seen = 0;
  let ended = false;
  stream.on('end', () => (ended = true));
  stream.on('error', () => undefined);
  stream.on('data', (chunk: Buffer) => {
    seen += chunk.length;
    if (seen >= bytes) stream.destroy();
  });
  await whenClosed(stream);
  return { seen, ended };
}

/**
 * Ranged reads and the hit rule. `openForRead(id, { start, end })` reads an
 * inclusive byte range (as HTTP `Range`); a read counts one hit when the
 * reader has been handed the image's last byte, so a range that reaches the
 * end counts and one that stops before it does not; `countHit: false` counts
 * nothing; `identity` pins the file.
 */
export const rangedReadCases: CaseGroup = {
  name: 'ranged reads',
  description:
    '`openForRead(id, { start, end })` returns exactly bytes `start..end` (inclusive, as HTTP `Range`), to the end when `end` is left out or past the last byte; rejects bad offsets with `InvalidArgumentError` and a start at or past the size with `RangeNotSatisfiableError` (an empty image reads from 0). A read counts one hit when the reader has been handed the last byte: a range reaching the end counts, one stopping before it does not, a reader that closes right after the last byte still counts. `countHit: false` reads without counting; `identity` refuses a replaced file with `ImageChangedError`.',
  register(kit) {
    kit.it('openForRead(id, { start, end }) returns exactly bytes start..end, end inclusive, within and across read chunks', async ({ driver }) => {
      const data = makeBytes(SIZE, 21);
      await writeImage(driver, 'img', data, 1024 * 1024);
      for (const [start, end] of [
        [0, 0],
        [0, 99],
        [7, 7],
        [1000, 300_000],
        [262_143, 262_144],
        [SIZE - 100, SIZE - 2],
        [SIZE - 1, SIZE - 1],
      ] as const) {
        const back = await readRange(driver, 'img', { start, end });
        expect(back.length, `bytes ${start}-${end}`).toBe(end - start + 1);
        expect(back.equals(data.subarray(start, end + 1)), `bytes ${start}-${end}`).toBe(true);
      }
    });

    kit.it('openForRead(id, { start }) reads from start to the end; an end at or past the last byte reads to the end', async ({ driver }) => {
      const data = makeBytes(SIZE, 22);
      await writeImage(driver, 'img', data, 1024 * 1024);
      expect((await readRange(driver, 'img', { start: 123_456 })).equals(data.subarray(123_456))).toBe(true);
      expect((await readRange(driver, 'img', { start: 10, end: SIZE - 1 })).equals(data.subarray(10))).toBe(true);
      expect((await readRange(driver, 'img', { start: 10, end: SIZE * 2 })).equals(data.subarray(10))).toBe(true);
      expect((await readRange(driver, 'img', { end: 4 })).equals(data.subarray(0, 5)), '{ end } alone reads from byte 0').toBe(true);
      expect((await readRange(driver, 'img', {})).equals(data), '{} is a full read').toBe(true);
    });

    kit.it('openForRead(id, { start, end }) rejects negative, fractional, inverted and non-number offsets with InvalidArgumentError, and counts nothing', async ({ driver }) => {
      await writeImage(driver, 'img', makeBytes(1000, 23));
      const bad: unknown[] = [{ start: -1 }, { end: -1 }, { start: 0.5 }, { end: 9.5 }, { start: Number.NaN }, { start: 10, end: 9 }, { start: '1' }];
      for (const options of bad) {
        await expectRejects(driver.openForRead('img', options as ReadOptions), ErrorCodes.INVALID_ARGUMENT, `openForRead('img', ${JSON.stringify(options)})`);
      }
      expect(await driver.getHitCount('img')).toBe(0);
    });

    kit.it('openForRead(id, { start }) rejects a start at or past the size with RangeNotSatisfiableError carrying the size; { start: 0 } of an empty image reads nothing', async ({ driver }) => {
      await writeImage(driver, 'img', makeBytes(1000, 24));
      for (const start of [1000, 1001, 10 ** 12]) {
        const error = await expectRejects(driver.openForRead('img', { start }), ErrorCodes.RANGE_NOT_SATISFIABLE, `openForRead('img', { start: ${start} }) of 1000 bytes`);
        expect((error as { size?: unknown }).size, 'the error carries the size (for Content-Range: bytes */size)').toBe(1000);
      }
      await writeImage(driver, 'empty', Buffer.alloc(0));
      expect((await readRange(driver, 'empty', { start: 0 })).length).toBe(0);
      await expectRejects(driver.openForRead('empty', { start: 1 }), ErrorCodes.RANGE_NOT_SATISFIABLE, "openForRead('empty', { start: 1 })");
      await expectRejects(driver.openForRead('absent', { start: 0, end: 9 }), ErrorCodes.IMAGE_NOT_CACHED, "openForRead('absent', range)");
    });

    kit.it('openForRead(id, { start, end }) counts one hit for a range that reaches the last byte, none for one that stops before it', async ({ driver }) => {
      await writeImage(driver, 'img', makeBytes(SIZE, 25), 1024 * 1024);
      const [before] = await driver.getCachedImages();
      await readRange(driver, 'img', { start: 0, end: SIZE - 2 });
      await readRange(driver, 'img', { start: 100, end: 200 });
      expect(await driver.getHitCount('img'), 'ranges that stop before the last byte').toBe(0);
      expect((await driver.getCachedImages())[0]?.lastAccessed, 'ranges that stop before the last byte leave lastAccessed').toBe(before?.lastAccessed);
      await readRange(driver, 'img', { start: SIZE - 1 });
      expect(await driver.getHitCount('img'), 'a range of the last byte alone').toBe(1);
      await readRange(driver, 'img', { start: 500_000, end: SIZE + 100 });
      expect(await driver.getHitCount('img'), 'a range whose end is past the last byte').toBe(2);
      await readImage(driver, 'img');
      expect(await driver.getHitCount('img'), 'a full read').toBe(3);
    });

    kit.it('openForRead(id) counts the hit of a reader that destroys the stream as soon as it has the last byte, by the time the stream closes', async ({ driver }) => {
      await writeImage(driver, 'img', makeBytes(SIZE, 26), 1024 * 1024);
      const full = await destroyAfter(await driver.openForRead('img'), SIZE);
      expect(full.seen).toBe(SIZE);
      expect(await driver.getHitCount('img'), 'an HTTP client closing on reaching Content-Length has read the image').toBe(1);
      const tail = await destroyAfter(await driver.openForRead('img', { start: SIZE - 5000 }), 5000);
      expect(tail.seen).toBe(5000);
      expect(await driver.getHitCount('img'), 'the same for a range that reaches the end').toBe(2);
      const early = await destroyAfter(await driver.openForRead('img'), 1);
      expect(early.seen).toBeLessThan(SIZE);
      expect(await driver.getHitCount('img'), 'a reader gone before the last byte').toBe(2);
    });

    kit.it('openForRead(id, { countHit: false }) reads every byte and counts no hit, leaving lastAccessed alone', async ({ driver }) => {
      const data = makeBytes(300_000, 27);
      await writeImage(driver, 'img', data);
      const [before] = await driver.getCachedImages();
      expect((await readRange(driver, 'img', { countHit: false })).equals(data)).toBe(true);
      expect((await readRange(driver, 'img', { start: 5, countHit: false })).equals(data.subarray(5))).toBe(true);
      expect(await driver.getHitCount('img')).toBe(0);
      const [after] = await driver.getCachedImages();
      expect(after?.hits).toBe(0);
      expect(after?.lastAccessed).toBe(before?.lastAccessed);
    });

    kit.it('openForRead(id, { identity }) reads the file stat(id) described and rejects with ImageChangedError once another file is renamed over it', async ({ driver, dir }) => {
      const cache = await ImageCache.open({ driver });
      await writeImage(driver, 'img', makeBytes(4000, 28));
      const first = await cache.stat('img');
      expect(first, 'stat(id) of a cached entry').not.toBeNull();
      const identity = first?.identity as string;
      expect((await readRange(driver, 'img', { identity })).length).toBe(4000);
      await writeFile(join(dir, 'incomplete', 'img'), makeBytes(5000, 29));
      await rename(join(dir, 'incomplete', 'img'), join(dir, 'img'));
      await expectRejects(driver.openForRead('img', { identity }), ErrorCodes.IMAGE_CHANGED, 'openForRead with the identity of the replaced file');
      const second = await cache.stat('img');
      expect(second?.identity).not.toBe(identity);
      expect((await readRange(driver, 'img', { identity: second?.identity as string })).equals(makeBytes(5000, 29))).toBe(true);
      expect(await driver.getHitCount('img'), 'the replaced file counts its own read only').toBe(1);
    });
  },
};
