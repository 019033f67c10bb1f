/**
 * Figure 15: commits of new 4 KiB entries per driver (sqlite, xattr) in both
 * durability modes (docs/adr/0007), each beside the raw file operations it
 * is built on, measured in interleaved rounds in the same run. Ours twice:
 * `cacheImage` of a stream (`Readable.from([bytes])`) and of the bytes
 * themselves (a `Buffer`: verified up front and committed without a stream,
 * ADR 0007 "Small commits from memory").
 *
 * - strict `cacheImage` ÷ the raw durable write (open wx in a staging
 *   directory, write, fsync, close, rename, fsync of the directory);
 * - the strict commit through the driver alone (`openForWrite` → `end`) ÷ the
 *   same raw durable write, for context (no host write lock, no cacheable check);
 * - sqlite only: strict `cacheImage` ÷ the raw durable write plus a raw
 *   better-sqlite3 upsert of the row in its own transaction (rollback journal,
 *   `synchronous = NORMAL`, as the driver's database): the floor when the
 *   metadata must be durable too;
 * - relaxed `cacheImage` ÷ the raw non-durable write (open wx, write, close, rename);
 * - relaxed `cacheImage` of the bytes ÷ its floor: the same system calls made
 *   raw, synchronously, in the same order (the host write lock's abstract
 *   socket, the checks, the exclusive create, the write, the fstat, the
 *   driver's attributes or its SQLite row, the journal line, the rename, the
 *   close, the queue-marker check), with nothing around them;
 * - 32 concurrent strict `cacheImage` calls ÷ 32 sequential ones (group
 *   commit), beside its floor: 32 concurrent raw durable writes ÷ 32
 *   sequential ones (how far the filesystem itself overlaps fsyncs);
 * - the same for the strict commit's own system calls made raw
 *   (`rawCommitFloor(…, durable)`: the lock socket, the checks, the
 *   driver's attributes or row, the fsyncs), and ours 32 at once ÷ them 32
 *   at once: a driver whose sequential commit is cheaper than its floor's
 *   overlaps less in proportion, so the absolute rate is the other check.
 *
 * Each side's rate is the median of its rounds' rates (a burst of another
 * process's load slows one round of one side, and counts once).
 */
import { closeSync, constants as fsConstants, fstatSync, fsync, lstatSync, openSync, renameSync, statSync, writeSync } from 'node:fs';
import { mkdir, open, rename, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';
import { setAttributeSync } from 'fs-xattr';
import type { CacheDriver, Durability, ImageCache } from '@cache/core';
import { DRIVERS, openCache, type DriverName } from '../drivers.js';
import { collectGarbage, makeChunk, median, waitForQuiet } from '../measure.js';
import { figure } from '../report.js';
import type { SuiteContext } from '../run.js';

const SMALL = 4096;
const fsyncAsync = promisify(fsync);
const CONCURRENCY = 32;

async function rawWrite(staging: string, active: string, name: string, bytes: Buffer, durable: boolean): Promise<void> {
  const from = join(staging, name);
  const file = await open(from, 'wx');
  try {
    await file.write(bytes, 0, bytes.length, 0);
    if (durable) await file.sync();
  } finally {
    await file.close();
  }
  await rename(from, join(active, name));
  if (!durable) return;
  const dir = await open(active, 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

/** The raw durable write plus a row upserted in a rollback-journal SQLite database beside the files. */
function rawSqlite(dir: string): { run: (name: string, bytes: Buffer) => Promise<void>; close: () => void } {
  const db = new Database(join(dir, 'active', 'raw.db'));
  db.pragma('journal_mode = DELETE');
  db.pragma('synchronous = NORMAL');
  db.exec('CREATE TABLE IF NOT EXISTS t (id TEXT PRIMARY KEY, size INTEGER, at REAL, checksum TEXT)');
  const upsert = db.prepare(
    'INSERT INTO t (id, size, at, checksum) VALUES (?, ?, ?, NULL) ON CONFLICT(id) DO UPDATE SET size = excluded.size, at = excluded.at',
  );
  return {
    run: async (name, bytes) => {
      await rawWrite(join(dir, 'staging'), join(dir, 'active'), name, bytes, true);
      upsert.run(name, bytes.length, Date.now() / 1000);
    },
    close: () => db.close(),
  };
}

/**
 * The floor of a relaxed commit of bytes in memory: the system calls ours
 * makes (strace of `cacheImage(id, buffer)`), raw and synchronous, in its
 * order. `driver` adds the xattr driver's four attributes, or the sqlite
 * driver's row (one upsert in its own transaction, rollback journal,
 * `synchronous = OFF`, as a relaxed commit's row: docs/adr/0007).
 *
 * With `durable`, the floor of a strict commit of bytes in memory instead:
 * no journal line; the file's fsync and, after the rename and close, an
 * fsync of the directory (an open handle on it, as the driver keeps) run on
 * the threadpool as ours do, but once per write (no group commit); the
 * sqlite row is upserted with `synchronous = NORMAL`, in its own transaction.
 */
export function rawCommitFloor(dir: string, driver: DriverName, durable = false): { run: (name: string, bytes: Buffer) => Promise<void>; close: () => Promise<void> } {
  const journal = durable ? undefined : openSync(join(dir, 'journal'), 'a');
  const dirHandle = durable ? open(dir, 'r') : undefined;
  dirHandle?.catch(() => undefined);
  let db: Database.Database | undefined;
  let upsert: Database.Statement | undefined;
  if (driver === 'sqlite') {
    db = new Database(join(dir, 'raw.db'));
    db.pragma('journal_mode = DELETE');
    db.pragma(durable ? 'synchronous = NORMAL' : 'synchronous = OFF');
    db.exec('CREATE TABLE IF NOT EXISTS t (id TEXT PRIMARY KEY, size INTEGER, at REAL, checksum TEXT, fid TEXT)');
    upsert = db.prepare(
      'INSERT INTO t (id, size, at, checksum, fid) VALUES (?, ?, ?, NULL, ?) ON CONFLICT(id) DO UPDATE SET size = excluded.size, at = excluded.at, fid = excluded.fid',
    );
  }
  const at = String(Date.now() * 1e6);
  return {
    run: async (name, bytes) => {
      // The host write lock: an abstract socket, listened on and closed.
      const server = createServer();
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ path: `\0image-cache-bench-floor/${process.pid}/${name}`, exclusive: true }, () => resolve());
      });
      const incomplete = join(dir, 'incomplete', name);
      const active = join(dir, name);
      statSync(incomplete, { throwIfNoEntry: false });
      lstatSync(active, { throwIfNoEntry: false });
      const fd = openSync(incomplete, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, 0o644);
      lstatSync(active, { throwIfNoEntry: false });
      writeSync(fd, bytes, 0, bytes.length, 0);
      const info = fstatSync(fd, { bigint: true });
      if (driver === 'xattr') {
        setAttributeSync(incomplete, 'user.hits', '0');
        setAttributeSync(incomplete, 'user.image_cache.last_accessed_ns', at);
        setAttributeSync(incomplete, 'user.image_cache.committed_ns', at);
        setAttributeSync(incomplete, 'user.image_cache.file', `${info.ino}:${info.size}:${info.mtimeNs}`);
      }
      if (journal !== undefined) writeSync(journal, `${name}\n`);
      if (dirHandle !== undefined) await fsyncAsync(fd);
      renameSync(incomplete, active);
      closeSync(fd);
      if (dirHandle !== undefined) await (await dirHandle).sync();
      lstatSync(join(dir, 'queue', name), { throwIfNoEntry: false });
      upsert?.run(name, bytes.length, Date.now() / 1000, `${info.ino}:${info.size}:${info.mtimeNs}`);
      server.close();
    },
    close: async () => {
      db?.close();
      if (journal !== undefined) closeSync(journal);
      if (dirHandle !== undefined) await (await dirHandle).close();
    },
  };
}

async function writeThroughDriver(driver: CacheDriver, id: string, bytes: Buffer): Promise<void> {
  await pipeline(Readable.from([bytes]), await driver.openForWrite(id));
}

/** Appends the rate (ops/s) of one timed batch of `fn` to `rates[key]`. */
async function timed(rates: Map<string, number[]>, key: string, ops: number, fn: () => Promise<unknown>): Promise<void> {
  const start = performance.now();
  await fn();
  const ms = performance.now() - start;
  const list = rates.get(key) ?? [];
  list.push((ops * 1000) / ms);
  rates.set(key, list);
}


export async function durabilityFigures(ctx: SuiteContext): Promise<void> {
  if (!ctx.wanted(15)) return;
  const { fs, sizes } = ctx;
  // Rounds of interleaved batches: every side sees the same disturbances.
  const rounds = sizes.opsTimeMs >= 500 ? 10 : 4;
  const perBatch = 16;
  const small = makeChunk(SMALL);
  for (const driver of DRIVERS) {
    const base = join(fs.path, `durability-${driver}`);
    const caches: Partial<Record<Durability, ImageCache>> = {};
    let sqliteRaw: ReturnType<typeof rawSqlite> | undefined;
    let floorRaw: ReturnType<typeof rawCommitFloor> | undefined;
    let strictFloorRaw: ReturnType<typeof rawCommitFloor> | undefined;
    try {
      for (const mode of ['strict', 'relaxed'] as const) {
        const cache = await openCache(driver, join(base, mode), Number.MAX_SAFE_INTEGER, undefined, mode);
        if (typeof cache === 'string') {
          ctx.skipDriver([15], driver, cache);
          break;
        }
        caches[mode] = cache;
      }
      const strict = caches.strict;
      const relaxed = caches.relaxed;
      if (strict === undefined || relaxed === undefined) continue;
      const raw = join(base, 'raw');
      for (const sub of ['staging', 'active']) await mkdir(join(raw, sub), { recursive: true });
      if (driver === 'sqlite') {
        await mkdir(join(base, 'raw-sqlite', 'staging'), { recursive: true });
        await mkdir(join(base, 'raw-sqlite', 'active'), { recursive: true });
        sqliteRaw = rawSqlite(join(base, 'raw-sqlite'));
      }
      const floorDir = join(base, 'raw-floor');
      for (const sub of ['incomplete', 'queue']) await mkdir(join(floorDir, sub), { recursive: true });
      const floor = rawCommitFloor(floorDir, driver);
      floorRaw = floor;
      const strictFloorDir = join(base, 'raw-strict-floor');
      for (const sub of ['incomplete', 'queue']) await mkdir(join(strictFloorDir, sub), { recursive: true });
      const strictFloor = rawCommitFloor(strictFloorDir, driver, true);
      strictFloorRaw = strictFloor;
      const sqlite = sqliteRaw;
      let n = 0;
      const next = (prefix: string) => `${prefix}-${++n}`;
      const sides: { key: string; ops: number; run: () => Promise<unknown> }[] = [
        { key: 'strict', ops: perBatch, run: async () => { for (let i = 0; i < perBatch; i++) await strict.cacheImage(next('s'), Readable.from([small])); } },
        { key: 'raw-durable', ops: perBatch, run: async () => { for (let i = 0; i < perBatch; i++) await rawWrite(join(raw, 'staging'), join(raw, 'active'), next('r'), small, true); } },
        { key: 'strict-driver', ops: perBatch, run: async () => { for (let i = 0; i < perBatch; i++) await writeThroughDriver(strict.driver, next('d'), small); } },
        { key: 'relaxed', ops: perBatch, run: async () => { for (let i = 0; i < perBatch; i++) await relaxed.cacheImage(next('x'), Readable.from([small])); } },
        { key: 'raw-plain', ops: perBatch, run: async () => { for (let i = 0; i < perBatch; i++) await rawWrite(join(raw, 'staging'), join(raw, 'active'), next('p'), small, false); } },
        { key: 'strict-bytes', ops: perBatch, run: async () => { for (let i = 0; i < perBatch; i++) await strict.cacheImage(next('sb'), small); } },
        { key: 'relaxed-bytes', ops: perBatch, run: async () => { for (let i = 0; i < perBatch; i++) await relaxed.cacheImage(next('xb'), small); } },
        { key: 'relaxed-floor', ops: perBatch, run: async () => { for (let i = 0; i < perBatch; i++) await floor.run(next('f'), small); } },
        { key: 'strict-32-seq-bytes', ops: CONCURRENCY, run: async () => { for (let i = 0; i < CONCURRENCY; i++) await strict.cacheImage(next('qb'), small); } },
        { key: 'strict-32-conc-bytes', ops: CONCURRENCY, run: () => Promise.all(Array.from({ length: CONCURRENCY }, () => strict.cacheImage(next('cb'), small))) },
        { key: 'strict-floor-32-seq', ops: CONCURRENCY, run: async () => { for (let i = 0; i < CONCURRENCY; i++) await strictFloor.run(next('fq'), small); } },
        { key: 'strict-floor-32-conc', ops: CONCURRENCY, run: () => Promise.all(Array.from({ length: CONCURRENCY }, () => strictFloor.run(next('fc'), small))) },
        { key: 'raw-durable-32-seq', ops: CONCURRENCY, run: async () => { for (let i = 0; i < CONCURRENCY; i++) await rawWrite(join(raw, 'staging'), join(raw, 'active'), next('rq'), small, true); } },
        { key: 'raw-durable-32-conc', ops: CONCURRENCY, run: () => Promise.all(Array.from({ length: CONCURRENCY }, () => rawWrite(join(raw, 'staging'), join(raw, 'active'), next('rc'), small, true))) },
        { key: 'strict-32-seq', ops: CONCURRENCY, run: async () => { for (let i = 0; i < CONCURRENCY; i++) await strict.cacheImage(next('q'), Readable.from([small])); } },
        { key: 'strict-32-conc', ops: CONCURRENCY, run: () => Promise.all(Array.from({ length: CONCURRENCY }, () => strict.cacheImage(next('c'), Readable.from([small])))) },
        ...(sqlite === undefined
          ? []
          : [{ key: 'raw-durable-sqlite', ops: perBatch, run: async () => { for (let i = 0; i < perBatch; i++) await sqlite.run(next('t'), small); } }]),
      ];
      // Warm-up: one batch of each, untimed.
      for (const side of sides) await side.run();
      const totals = new Map<string, number[]>();
      for (let round = 0; round < rounds; round++) {
        collectGarbage();
        await waitForQuiet();
        // Alternate the order so neither side always runs right after the other's writeback.
        const order = round % 2 === 0 ? sides : [...sides].reverse();
        for (const side of order) await timed(totals, side.key, side.ops, side.run);
      }
      // The median of the rounds' rates: a round that another process's burst of load slowed is one vote, not a sum.
      const rate = (key: string) => {
        const rates = totals.get(key);
        if (rates === undefined || rates.length === 0) throw new Error(`no measurement for ${key}`);
        return median(rates);
      };
      const add = (title: string, oursLabel: string, ours: number, baseLabel: string, baseline: number, goal: number | null) =>
        ctx.add(
          figure({
            figure: 15,
            title,
            fs: fs.name,
            driver,
            ours: { label: oursLabel, value: ours, unit: 'ops/s' },
            baseline: { label: baseLabel, value: baseline, unit: 'ops/s' },
            goal: goal === null ? null : { on: 'ratio', op: '>=', target: goal },
          }),
        );
      add('4 KiB commit, strict', 'cacheImage of a stream, durability strict', rate('strict'), 'raw durable write (wx, write, fsync, close, rename, fsync dir)', rate('raw-durable'), 0.9);
      add('4 KiB commit, strict, from memory', 'cacheImage of a Buffer, durability strict', rate('strict-bytes'), 'raw durable write (wx, write, fsync, close, rename, fsync dir)', rate('raw-durable'), 0.9);
      add('4 KiB commit, strict, driver alone', 'openForWrite → end, strict', rate('strict-driver'), 'raw durable write', rate('raw-durable'), null);
      if (sqlite !== undefined) {
        add('4 KiB commit, strict, vs durable write + row', 'cacheImage of a stream, durability strict', rate('strict'), 'raw durable write + better-sqlite3 upsert (delete journal, synchronous NORMAL)', rate('raw-durable-sqlite'), null);
        add('4 KiB commit, strict, from memory, vs durable write + row', 'cacheImage of a Buffer, durability strict', rate('strict-bytes'), 'raw durable write + better-sqlite3 upsert (delete journal, synchronous NORMAL)', rate('raw-durable-sqlite'), null);
      }
      add('4 KiB commit, relaxed', 'cacheImage of a stream, durability relaxed', rate('relaxed'), 'raw write without fsync (wx, write, close, rename)', rate('raw-plain'), null);
      add('4 KiB commit, relaxed, from memory', 'cacheImage of a Buffer, durability relaxed', rate('relaxed-bytes'), 'raw write without fsync (wx, write, close, rename)', rate('raw-plain'), null);
      add('4 KiB commit, relaxed, from memory, beside its floor', 'cacheImage of a Buffer, durability relaxed', rate('relaxed-bytes'), `the same system calls raw (lock socket, checks, create, write, fstat, ${driver === 'xattr' ? '4 setxattr' : 'SQLite upsert'}, journal line, rename, close)`, rate('relaxed-floor'), null);
      add(`${CONCURRENCY} concurrent strict 4 KiB commits`, `${CONCURRENCY} cacheImage of a stream at once, strict`, rate('strict-32-conc'), `${CONCURRENCY} strict cacheImage one after the other`, rate('strict-32-seq'), 4);
      add(`${CONCURRENCY} concurrent strict 4 KiB commits, from memory`, `${CONCURRENCY} cacheImage of a Buffer at once, strict`, rate('strict-32-conc-bytes'), `${CONCURRENCY} strict cacheImage of a Buffer one after the other`, rate('strict-32-seq-bytes'), 4);
      add(`${CONCURRENCY} concurrent raw durable writes (floor)`, `${CONCURRENCY} raw durable writes at once`, rate('raw-durable-32-conc'), `${CONCURRENCY} raw durable writes one after the other`, rate('raw-durable-32-seq'), null);
      const strictCalls = `lock socket, checks, create, write, fstat, ${driver === 'xattr' ? '4 setxattr' : 'SQLite upsert'}, fsync, rename, close, fsync dir`;
      add(`${CONCURRENCY} concurrent strict commits' own system calls (floor)`, `${CONCURRENCY} at once: the same system calls raw (${strictCalls}; no group commit)`, rate('strict-floor-32-conc'), `${CONCURRENCY} of them one after the other`, rate('strict-floor-32-seq'), null);
      add(`${CONCURRENCY} concurrent strict 4 KiB commits, from memory, beside their floor`, `${CONCURRENCY} cacheImage of a Buffer at once, strict`, rate('strict-32-conc-bytes'), `${CONCURRENCY} at once: the same system calls raw (no group commit)`, rate('strict-floor-32-conc'), null);
    } finally {
      sqliteRaw?.close();
      await floorRaw?.close();
      await strictFloorRaw?.close();
      for (const cache of Object.values(caches)) await cache?.close();
      await rm(base, { recursive: true, force: true });
    }
  }
}
