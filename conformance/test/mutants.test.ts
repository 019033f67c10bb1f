/**
 * The kit has teeth: a few deliberately broken drivers, each run through one
 * case of the kit that must catch the bug.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CachedImage, CacheDriver, ImageId } from '@cache/core';
import type { EntryStat, ImageMetadata } from '@cache/core/driver';
import { describe, expect, it } from 'vitest';
import {
  allCaseGroups,
  imageIdCases,
  listingCases,
  lruCases,
  probeFilesystem,
  readCases,
  type CaseFn,
  type CaseGroup,
  type ConformanceKit,
} from '../src/index.js';
import { MemoryDriver } from '@cache/core';

/** The cases of a group, by title, collected with a kit that registers nothing. */
function collect(group: CaseGroup): Map<string, CaseFn> {
  const cases = new Map<string, CaseFn>();
  const kit: ConformanceKit = {
    name: 'mutant',
    fs: { name: 'os-tmp', root: tmpdir(), fromEnv: false },
    probe: { root: tmpdir(), xattr: { supported: true, reason: '' }, atime: { supported: false, reason: '' } },
    persistent: true,
    it: (title, fn) => cases.set(title, fn),
    skip: () => undefined,
  };
  group.register(kit);
  return cases;
}

/** Runs one case of `group` (found by a title fragment) against drivers made by `create`. */
async function runCase(group: CaseGroup, titlePart: string, create: (dir: string) => CacheDriver): Promise<void> {
  const matches = [...collect(group)].filter(([title]) => title.includes(titlePart));
  expect(matches.map(([title]) => title), `exactly one case matches "${titlePart}"`).toHaveLength(1);
  const fn = (matches[0] as [string, CaseFn])[1];
  const dir = await mkdtemp(join(tmpdir(), 'conformance-mutant-'));
  const drivers: CacheDriver[] = [];
  const make = async (cacheDir = dir) => {
    const driver = create(cacheDir);
    drivers.push(driver);
    return driver;
  };
  try {
    const driver = await make();
    await driver.configure();
    await fn({ driver, dir, fs: { name: 'os-tmp', root: tmpdir(), fromEnv: false }, probe: await probeFilesystem(tmpdir()), create: make });
  } finally {
    for (const driver of drivers) await driver.close();
    await rm(dir, { recursive: true, force: true });
  }
}

class NoHitsDriver extends MemoryDriver {
  protected override async recordHit(): Promise<void> {}
}

class UnsortedDriver extends MemoryDriver {
  override async getCachedImages(): Promise<CachedImage[]> {
    return (await super.getCachedImages()).reverse();
  }
}

class UnvalidatedDriver extends MemoryDriver {
  override async isCached(id: ImageId): Promise<boolean> {
    return this.dir.exists(id, 'active');
  }
}

class CountsAbortedReadsDriver extends MemoryDriver {
  override async openForRead(id: ImageId) {
    const stream = await super.openForRead(id);
    stream.once('close', () => void this.dir.statFile(id).then((file) => file && this.recordHit(id, Date.now() / 1000, file)));
    return stream;
  }
}

class OldestIsNewestDriver extends MemoryDriver {
  protected override async readMetadata(entries: readonly EntryStat[]): Promise<Map<ImageId, ImageMetadata>> {
    const map = await super.readMetadata(entries);
    for (const [id, m] of map) map.set(id, { ...m, lastAccessed: -m.lastAccessed });
    return map;
  }
}

const mutants: [string, CaseGroup, string, (dir: string) => CacheDriver][] = [
  ['a driver that never records hits', readCases, 'three full reads', (dir) => new NoHitsDriver({ cacheDir: dir })],
  ['a driver that counts abandoned reads as hits', readCases, 'destroyed halfway', (dir) => new CountsAbortedReadsDriver({ cacheDir: dir })],
  ['a driver whose listing is not sorted by id', listingCases, 'sorted by id', (dir) => new UnsortedDriver({ cacheDir: dir })],
  ['a driver that does not validate ids in isCached', imageIdCases, 'reject "../x"', (dir) => new UnvalidatedDriver({ cacheDir: dir })],
  ['a driver with a reversed recency order', lruCases, 'read a -> b', (dir) => new OldestIsNewestDriver({ cacheDir: dir })],
];

describe('the kit catches broken drivers', () => {
  for (const [what, group, titlePart, create] of mutants) {
    it(`fails "${titlePart}" for ${what}`, async () => {
      await expect(runCase(group, titlePart, create)).rejects.toThrow();
    });
  }

  it('passes the same cases for the reference driver', async () => {
    for (const [, group, titlePart] of mutants) await runCase(group, titlePart, (dir) => new MemoryDriver({ cacheDir: dir }));
  });

  it('every case title names the call it checks', () => {
    for (const group of allCaseGroups) {
      for (const title of collect(group).keys()) expect(title, 'titles name the method call they check').toMatch(/\w+\(.*\)/);
    }
  });
});
