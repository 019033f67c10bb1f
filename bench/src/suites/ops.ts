/**
 * Figure 4: single operations per second, per driver, each beside the raw
 * call it is built on, measured with tinybench on one committed 4 KiB entry;
 * and the commit of a new 4 KiB entry beside a raw durable write (write,
 * fsync, rename, fsync of the directory: what a commit does to the file).
 * The postgres driver runs when the bench's PostgreSQL server does, on a
 * database of its own per filesystem.
 */
import { mkdir, open, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import Database from 'better-sqlite3';
import { getAttribute } from 'fs-xattr';
import { Bench } from 'tinybench';
import type { ImageCache } from '@cache/core';
import { defaultNodeId } from '@cache/driver-postgres';
import type { TestPostgresClient } from '@cache/postgres-testing';
import { XATTR } from '@cache/driver-xattr';
import { createBenchDatabase, dbPathOf, DRIVERS, openCache, type BenchDatabase, type DriverName } from '../drivers.js';
import { collectGarbage, makeChunk, NullSink, waitForQuiet } from '../measure.js';
import { figure } from '../report.js';
import type { SuiteContext } from '../run.js';

const SMALL = 4096;

/** The raw durable write of a new file: open (exclusive) in a staging directory, write, fsync, close, rename into place, fsync of the directory. */
async function rawCommit(staging: string, active: string, name: string, bytes: Buffer): Promise<void> {
  const from = join(staging, name);
  const file = await open(from, 'wx');
  try {
    await file.write(bytes, 0, bytes.length, 0);
    await file.sync();
  } finally {
    await file.close();
  }
  await rename(from, join(active, name));
  const dir = await open(active, 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

/** The raw read of the hit count the driver keeps, for the getHitCount baseline; `close` afterwards. */
async function rawHitCount(
  driver: DriverName,
  cacheDir: string,
  path: string,
  id: string,
  db: BenchDatabase | undefined,
): Promise<{ label: string; run: () => Promise<unknown>; close: () => Promise<void> }> {
  switch (driver) {
    case 'sqlite': {
      const sqlite = new Database(dbPathOf(cacheDir), { readonly: true });
      const select = sqlite.prepare('SELECT hits FROM cached_images WHERE image_id = ?');
      return { label: 'better-sqlite3 SELECT hits', run: async () => select.get(id), close: async () => void sqlite.close() };
    }
    case 'xattr':
      return { label: 'fs-xattr getAttribute(user.hits)', run: () => getAttribute(path, XATTR.hits), close: async () => undefined };
    case 'postgres': {
      if (db === undefined) throw new Error('postgres needs a database');
      const client: TestPostgresClient = await db.connect();
      const [node] = (
        await client.query<{ node_reference_id: string }>('SELECT node_reference_id FROM node_reference WHERE node_reference_url = $1', [
          defaultNodeId(cacheDir),
        ])
      ).rows;
      if (node === undefined) throw new Error(`no node row for ${cacheDir}`);
      const text = 'SELECT hits FROM cached_images WHERE node_reference_id = $1 AND image_id = $2';
      return {
        label: 'pg SELECT hits (one connection)',
        run: () => client.query(text, [node.node_reference_id, id]),
        close: () => client.end(),
      };
    }
  }
}

export async function opsFigures(ctx: SuiteContext): Promise<void> {
  if (!ctx.wanted(4)) return;
  const { fs, sizes, postgres } = ctx;
  const drivers: DriverName[] = postgres.available ? [...DRIVERS, 'postgres'] : [...DRIVERS];
  for (const driver of drivers) {
    const cacheDir = join(fs.path, `ops-${driver}`);
    const rawDir = join(fs.path, `ops-raw-${driver}`);
    let db: BenchDatabase | undefined;
    if (driver === 'postgres' && postgres.available) db = await createBenchDatabase(postgres.server, 'bench_ops');
    let cache: ImageCache | string | undefined;
    let rawHits: Awaited<ReturnType<typeof rawHitCount>> | undefined;
    try {
      cache = await openCache(driver, cacheDir, Number.MAX_SAFE_INTEGER, db?.url);
      if (typeof cache === 'string') {
        ctx.skipDriver([4], driver, cache);
        continue;
      }
      const imageCache = cache;
      const id = 'small-image';
      const small = makeChunk(SMALL);
      await imageCache.cacheImage(id, Readable.from([small]));
      const path = imageCache.getImageFilepath(id);
      rawHits = await rawHitCount(driver, cacheDir, path, id, db);
      const hits = rawHits;
      await mkdir(join(rawDir, 'incomplete'), { recursive: true });
      await mkdir(join(rawDir, 'active'), { recursive: true });
      let commits = 0;
      let rawCommits = 0;

      const pairs = [
        { title: 'isCached', ours: () => imageCache.isCached(id), rawLabel: 'fs.promises.stat', raw: () => stat(path) },
        { title: 'getHitCount', ours: () => imageCache.getHitCount(id), rawLabel: hits.label, raw: hits.run },
        { title: 'getImageSize', ours: () => imageCache.getImageSize(id), rawLabel: 'fs.promises.stat', raw: () => stat(path) },
        {
          title: 'read of a 4 KiB entry (hit recorded)',
          ours: async () => pipeline(await imageCache.openForRead(id), new NullSink()),
          rawLabel: 'fs.promises.readFile',
          raw: () => readFile(path),
        },
        {
          title: 'commit of a new 4 KiB entry',
          ours: () => imageCache.cacheImage(`commit-${++commits}`, Readable.from([small])),
          rawLabel: 'write + fsync + rename + fsync dir',
          raw: () => rawCommit(join(rawDir, 'incomplete'), join(rawDir, 'active'), `raw-${++rawCommits}`, small),
        },
      ];
      const bench = new Bench({ time: sizes.opsTimeMs, warmupTime: Math.min(250, sizes.opsTimeMs), throws: true });
      for (const pair of pairs) {
        bench.add(`ours ${pair.title}`, async () => {
          await pair.ours();
        });
        bench.add(`raw ${pair.title}`, async () => {
          await pair.raw();
        });
      }
      bench.addEventListener('cycle', () => collectGarbage());
      await waitForQuiet();
      await bench.run();

      const opsPerSecond = (name: string) => {
        const task = bench.getTask(name);
        const result = task?.result;
        if (result === undefined || !('period' in result)) throw new Error(`tinybench task ${name} has no result`);
        return {
          value: 1000 / result.period,
          stats: { meanMs: result.period, p50Ms: result.latency.p50, p99Ms: result.latency.p99, runs: task?.runs ?? 0 },
        };
      };
      for (const pair of pairs) {
        const ours = opsPerSecond(`ours ${pair.title}`);
        const raw = opsPerSecond(`raw ${pair.title}`);
        ctx.add(
          figure({
            figure: 4,
            title: pair.title,
            fs: fs.name,
            driver,
            ours: { label: pair.title, value: ours.value, unit: 'ops/s', stats: ours.stats },
            baseline: { label: pair.rawLabel, value: raw.value, unit: 'ops/s', stats: raw.stats },
            goal: null,
          }),
        );
      }
    } finally {
      await rawHits?.close();
      if (typeof cache === 'object') await cache.close();
      await rm(cacheDir, { recursive: true, force: true });
      await rm(rawDir, { recursive: true, force: true });
      await db?.drop();
    }
  }
}
