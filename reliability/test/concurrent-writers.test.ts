/**
 * 32 writers of one id, in one process and in 32 processes: exactly one
 * commits, every other one is refused (CACHE_IMAGE_BEING_CACHED, or `false`
 * from cacheImage), and the active file is exactly the winner's bytes.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { ImageCache, type CacheDriver, type CacheWriter } from '@cache/core';
import { chunksOf, makeContent, sha256Hex } from './fixtures/content.mjs';
import { createDriver, DRIVER_NAMES, freshDir, namesIn, reliabilityTarget, removeDir, startFixture, type Fixture } from './helpers.js';

const target = await reliabilityTarget();

const WRITERS = 32;
const SIZE = 1024 * 1024;
const ID = 'contended-image';

interface RaceReport {
  index: number;
  sha256: string;
  result?: boolean;
  error?: { code: string | null; message: string };
  startedAt: number;
  endedAt: number;
}

let dirs: string[] = [];
let drivers: CacheDriver[] = [];

afterEach(async (context) => {
  for (const driver of drivers.splice(0)) await driver.close();
  if (context.task.result?.state === 'fail') {
    console.error(`[reliability] test failed: cache directories kept: ${dirs.join(', ')}`);
  } else {
    for (const dir of dirs) await removeDir(dir);
  }
  dirs = [];
});

async function openCache(name: (typeof DRIVER_NAMES)[number], prefix: string): Promise<{ cacheDir: string; cache: ImageCache }> {
  const cacheDir = await freshDir(target.fs.root, `${prefix}-${name}`);
  dirs.push(cacheDir);
  const driver = createDriver(name, cacheDir);
  drivers.push(driver);
  return { cacheDir, cache: await ImageCache.open({ driver }) };
}

/** The entry is exactly `expected`, listed alone with 0 hits, nothing left in incomplete/ or invalid/. */
async function expectSoleEntry(cache: ImageCache, cacheDir: string, expected: Buffer, storedChecksum?: string): Promise<void> {
  const bytes = await readFile(join(cacheDir, ID));
  expect(bytes.length, 'size of the active file').toBe(expected.length);
  expect(sha256Hex(bytes), 'the active file is exactly the winner’s bytes').toBe(sha256Hex(expected));
  expect(await namesIn(join(cacheDir, 'incomplete')), 'incomplete/').toEqual([]);
  expect(await namesIn(join(cacheDir, 'invalid')), 'invalid/ (a refused writer never creates a file)').toEqual([]);
  expect((await cache.getCachedImages()).map(({ imageId, size, hits }) => ({ imageId, size, hits }))).toEqual([
    { imageId: ID, size: expected.length, hits: 0 },
  ]);
  if (storedChecksum !== undefined) {
    expect(await (cache.driver as CacheDriver & { getStoredChecksum(id: string): Promise<string | undefined> }).getStoredChecksum(ID), 'the stored checksum is the winner’s').toBe(storedChecksum);
  }
}

describe(`32 concurrent writers of one id on ${target.fs.name} (${target.fs.root})`, () => {
  for (const name of DRIVER_NAMES) {
    const skip = name === 'xattr' ? target.xattrSkipReason : undefined;
    const suffix = skip === undefined ? '' : ` [skipped: ${skip}]`;

    it.skipIf(skip !== undefined)(
      `${name}: 32 openForWrite(id) racing in one process: exactly one resolves, 31 reject with CACHE_IMAGE_BEING_CACHED; the winner commits whole${suffix}`,
      async () => {
        const { cacheDir, cache } = await openCache(name, 'race-open');
        const outcomes = await Promise.allSettled(Array.from({ length: WRITERS }, () => cache.driver.openForWrite(ID)));
        const winners = outcomes.filter((o): o is PromiseFulfilledResult<CacheWriter> => o.status === 'fulfilled');
        const losers = outcomes.filter((o): o is PromiseRejectedResult => o.status === 'rejected');
        expect(winners, 'writers that got the id').toHaveLength(1);
        expect(losers.map((o) => (o.reason as { code?: string }).code)).toEqual(Array(WRITERS - 1).fill('CACHE_IMAGE_BEING_CACHED'));
        expect(await cache.isBeingCached(ID)).toBe(true);
        expect(await cache.isCached(ID), 'nothing is visible before the commit').toBe(false);
        const data = makeContent(`${ID}#open`, SIZE);
        await pipeline(Readable.from(chunksOf(data, 16 * 1024)), (winners[0] as PromiseFulfilledResult<CacheWriter>).value);
        expect(await cache.isCached(ID)).toBe(true);
        await expectSoleEntry(cache, cacheDir, data);
      },
    );

    it.skipIf(skip !== undefined)(
      `${name}: 32 cacheImage(id) calls with distinct content racing in one process: exactly one true, the file is the winner's${suffix}`,
      async () => {
        const { cacheDir, cache } = await openCache(name, 'race-cache');
        const contents = Array.from({ length: WRITERS }, (_, i) => makeContent(`${ID}#${i}`, SIZE));
        const outcomes = await Promise.allSettled(
          contents.map((data) =>
            cache.cacheImage(ID, Readable.from(chunksOf(data, 16 * 1024)), { checksum: { algorithm: 'sha256', digest: sha256Hex(data) } }),
          ),
        );
        const rejected = outcomes.filter((o) => o.status === 'rejected').map((o) => String((o as PromiseRejectedResult).reason));
        expect(rejected, 'no cacheImage call rejects: losers resolve false').toEqual([]);
        const winners = outcomes.flatMap((o, i) => (o.status === 'fulfilled' && o.value === true ? [i] : []));
        expect(winners, 'calls that committed').toHaveLength(1);
        const winner = winners[0] as number;
        await expectSoleEntry(cache, cacheDir, contents[winner] as Buffer, `sha256:${sha256Hex(contents[winner] as Buffer)}`);
      },
    );

    it.skipIf(skip !== undefined)(
      `${name}: 32 processes started at one signal race cacheImage(id) with distinct content: exactly one commits, the others report false or CACHE_IMAGE_BEING_CACHED, the file is exactly the winner's bytes${suffix}`,
      { timeout: 120_000 },
      async () => {
        const { cacheDir, cache } = await openCache(name, 'race-procs');
        const racers: Fixture[] = [];
        try {
          for (let index = 0; index < WRITERS; index++) {
            racers.push(startFixture('race-writer.mjs', [JSON.stringify({ driver: name, cacheDir, id: ID, index, size: SIZE })]));
          }
          // The barrier: every racer has opened the cache before any starts.
          for (const racer of racers) expect(await racer.nextLine()).toBe('ready');
          for (const racer of racers) racer.child.stdin?.write('go\n');
          const reports = await Promise.all(racers.map(async (racer) => JSON.parse(await racer.nextLine()) as RaceReport));
          const exits = await Promise.all(racers.map((racer) => racer.exited));
          expect(exits.filter((exit) => exit.code !== 0), `racers that failed:\n${racers.map((r) => r.stderr()).join('')}`).toEqual([]);

          const committed = reports.filter((report) => report.result === true);
          const refused = reports.filter(
            (report) => report.result === false || report.error?.code === 'CACHE_IMAGE_BEING_CACHED',
          );
          const other = reports.filter((report) => !committed.includes(report) && !refused.includes(report));
          expect(other, 'racers that neither committed nor were refused').toEqual([]);
          expect(committed.map((report) => report.index), 'racers that committed').toHaveLength(1);
          const winner = committed[0] as RaceReport;
          expect(new Set(reports.map((report) => report.sha256)).size, 'every racer had its own content').toBe(WRITERS);
          const expected = makeContent(`${ID}#${winner.index}`, SIZE);
          expect(sha256Hex(expected)).toBe(winner.sha256);
          await expectSoleEntry(cache, cacheDir, expected, `sha256:${winner.sha256}`);
          const overlapping = reports.filter((r) => r !== winner && r.startedAt < winner.endedAt).length;
          console.log(
            `[reliability] ${name}: 32 racing processes: racer ${winner.index} committed; ` +
              `${reports.filter((r) => r.result === false).length} got false, ` +
              `${reports.filter((r) => r.error !== undefined).length} got CACHE_IMAGE_BEING_CACHED; ` +
              `${overlapping} of the 31 losers started before the winner's commit returned`,
          );
        } finally {
          for (const racer of racers) if (racer.child.exitCode === null) racer.child.kill('SIGKILL');
        }
      },
    );
  }
});
