/**
 * Figure 14: ours beside OpenStack Glance's own Python drivers (Debian's
 * `python3-glance`, its `ImageCache` facade with the sqlite and the xattr
 * driver), same run, same filesystem, same workload:
 *
 * - 2000 images of 4 KiB written (`cache_image_iter` / `cacheImage`), then on
 *   each: isCached, getHitCount, getImageSize, a complete read with its hit
 *   counted; the whole cache listed; pruned to half its bytes. Each phase is
 *   a loop over every id, timed on its own side's clock
 *   (`time.perf_counter()` in Python, `performance.now()` here) around the
 *   whole loop. A loop of 2000 calls takes a few ms, so JIT warm-up, a GC or
 *   one scheduler hiccup would dominate a single pass: both sides run every
 *   phase that can be repeated (all but write and prune) {@link PASSES} + 1
 *   times over the same ids, the first pass a warm-up that is not counted,
 *   and report the median of the others. Before every phase but the write,
 *   both sides write back every dirty page (sync(2), untimed): on a
 *   disk-backed ext4, a hit's journal file otherwise waits behind the
 *   writeback of the 2000 images just written (ours read 1,600 counted
 *   reads/s right after the writes, 8,500/s once they were written back).
 *   Every round uses fresh directories; the two sides alternate, the order
 *   rotating; medians of the rounds.
 * - Floor rows (ours only, in the same run and directory, right after each
 *   of our phases, with the same passes): the syscalls an operation cannot
 *   do without, made raw (see {@link FLOORS}).
 * - getCachedImages of the large population (100,000 entries; 10,000 with
 *   `--quick`) of 1 KiB entries. Writing 100k entries through either API
 *   would take minutes (an fsync per commit), so the directory is populated
 *   directly, once, by `populate()` (as for figure 5): the files, and the
 *   metadata in the format both sides read (sqlite: rows of Glance's
 *   `cached_images` table; xattr: `user.hits` plus our two time attributes,
 *   which Glance ignores). Both sides then list that same directory,
 *   alternately.
 */
import { closeSync, constants as fsConstants, fstatSync, lstatSync, openSync, readSync, utimesSync } from 'node:fs';
import { mkdir, readdir, rm } from 'node:fs/promises';
import Database from 'better-sqlite3';
import { getAttributeSync, setAttributeSync } from 'fs-xattr';
import { XATTR } from '@cache/driver-xattr';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { ensureGlance, type GlanceSetup } from '@cache/glance-testing';
import { ImageCache, type Durability } from '@cache/core';
import { createDriver, dbPathOf, DRIVERS, openCache, populate, type DriverName } from '../drivers.js';
import { GlanceBench, WORKLOAD_PHASES, type WorkloadPhase, type WorkloadResult } from '../glance.js';
import { collectGarbage, ignoreProcessTree, makeChunk, median, settle, waitForQuiet } from '../measure.js';
import { countLabel, figure, type Goal } from '../report.js';
import { rawCommitFloor } from './durability.js';
import type { SuiteContext } from '../run.js';

export const GLANCE_FIGURE = 14;

/** Images of the small-entry workload, and their size. */
const IMAGES = 2000;
const IMAGE_BYTES = 4096;
/** Timed passes of each repeatable phase per workload run (after one warm-up pass); their median is the phase's time. */
const PASSES = 5;

/**
 * Our write rows. Each runs the whole workload with its driver's
 * `durability` (ADR 0007); the first one's results are the other phases'
 * rows. `strict` (fsync + rename + directory fsync) has its goal against the
 * raw durable floor (figure 15), not Glance; `relaxed` (no fsync, as Glance)
 * is compared with Glance's write: goal ≥ 1 × Glance.
 */
const OUR_WRITE_MODES: readonly { label: string; durability: Durability; goal: Goal | null }[] = [
  { label: 'default (strict)', durability: 'strict', goal: null },
  { label: 'relaxed', durability: 'relaxed', goal: { on: 'ratio', op: '>=', target: 1 } },
];

/** Goal of each read-side phase, ours ÷ Glance (issue 12, item 1). */
function goalOf(phase: WorkloadPhase, driver: DriverName): Goal | null {
  switch (phase) {
    case 'write':
      return null;
    case 'read':
      return { on: 'ratio', op: '>=', target: driver === 'sqlite' ? 2 : 1 };
    case 'list':
      return { on: 'ratio', op: '>=', target: driver === 'sqlite' ? 2 : 5 };
    default:
      return { on: 'ratio', op: '>=', target: 1 };
  }
}

let glanceSetup: Promise<GlanceSetup> | undefined;

export async function glanceFigures(ctx: SuiteContext): Promise<void> {
  if (!ctx.wanted(GLANCE_FIGURE)) return;
  glanceSetup ??= ensureGlance();
  const setup = await glanceSetup;
  if (!setup.available) {
    ctx.skip([GLANCE_FIGURE], `Glance's code cannot run here: ${setup.reason}`);
    return;
  }
  const glance = new GlanceBench();
  // Glance works for this figure: its CPU is not another process disturbing a run.
  if (glance.pid !== undefined) ignoreProcessTree(glance.pid);
  try {
    const { glance: version } = await glance.version();
    for (const driver of DRIVERS) {
      await smallWorkload(ctx, glance, version, driver);
      await largeListing(ctx, glance, version, driver);
    }
  } finally {
    await glance.close();
  }
}

async function smallWorkload(ctx: SuiteContext, glance: GlanceBench, version: string, driver: 'sqlite' | 'xattr'): Promise<void> {
  const rounds = ctx.sizes.repeats;
  const data = makeChunk(IMAGE_BYTES);
  const theirs: WorkloadResult[] = [];
  const ours = OUR_WRITE_MODES.map(() => [] as OurResult[]);
  // The floor of our relaxed write: its own system calls made raw (figure 15's `rawCommitFloor`), ms per round.
  const floorMs: number[] = [];
  const sides = [
    async (round: number) => {
      const dir = join(ctx.fs.path, `glance-${driver}-floor-${round}`);
      for (const sub of ['incomplete', 'queue']) await mkdir(join(dir, sub), { recursive: true });
      const floor = rawCommitFloor(dir, driver);
      try {
        const start = performance.now();
        for (const id of ids('f', round)) await floor.run(id, data);
        floorMs.push(performance.now() - start);
      } finally {
        await floor.close();
        await rm(dir, { recursive: true, force: true });
      }
    },
    async (round: number) => {
      const dir = join(ctx.fs.path, `glance-${driver}-glance-${round}`);
      try {
        const result = await glance.workload(dir, driver, ids('g', round), IMAGE_BYTES, PASSES);
        check(result, 'Glance');
        theirs.push(result);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    },
    ...OUR_WRITE_MODES.map((mode, m) => async (round: number) => {
      const dir = join(ctx.fs.path, `glance-${driver}-ours-${m}-${round}`);
      try {
        // Only the first mode's other phases are reported: the others run each of them once, without floors.
        const result = await ourWorkload(driver, dir, ids(`o${m}`, round), data, mode.durability, m === 0);
        if (result === undefined) throw new Error(`the ${driver} driver refused ${ctx.fs.path}`);
        check(result, 'ours');
        ours[m]!.push(result);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    }),
  ];
  const probe = await openCache(driver, join(ctx.fs.path, `glance-${driver}-probe`));
  await rm(join(ctx.fs.path, `glance-${driver}-probe`), { recursive: true, force: true });
  if (typeof probe === 'string') {
    ctx.skipDriver([GLANCE_FIGURE], driver, probe);
    return;
  }
  await probe.close();
  for (let round = 0; round < rounds; round++) {
    for (let i = 0; i < sides.length; i++) {
      collectGarbage();
      await waitForQuiet();
      await sides[(i + round) % sides.length]!(round);
    }
  }
  const perPhase = (results: WorkloadResult[], phase: WorkloadPhase) => results.map((r) => r.seconds[phase] * 1000);
  floorRow(ctx, driver, version, floorMs, perPhase(theirs, 'write'));
  for (const phase of WORKLOAD_PHASES) {
    const modes = phase === 'write' ? OUR_WRITE_MODES.map((_, m) => m) : [0];
    for (const m of modes) {
      const ourMs = perPhase(ours[m]!, phase);
      const glanceMs = perPhase(theirs, phase);
      const title =
        phase === 'write'
          ? `write of a 4 KiB image, ours ${OUR_WRITE_MODES[m]!.label}`
          : phase === 'list'
            ? `getCachedImages of ${countLabel(IMAGES)}`
            : phase === 'prune'
              ? `prune ${countLabel(IMAGES)} → ${countLabel(IMAGES / 2)}`
              : phase === 'read'
                ? 'read of a 4 KiB image (hit counted)'
                : phase;
      // Per-op phases are reported in ops/s (images / time); a listing per second; prune as a time.
      const perOp = phase === 'list' ? 1 : IMAGES;
      const measured = (label: string, ms: number[]) =>
        phase === 'prune'
          ? { label, value: median(ms), unit: 'ms' as const, samples: ms }
          : { label, value: (perOp * 1000) / median(ms), unit: 'ops/s' as const, samples: ms };
      ctx.add(
        figure({
          figure: GLANCE_FIGURE,
          title: `${title} (vs Glance)`,
          fs: ctx.fs.name,
          driver,
          ours: measured(phase === 'write' ? `cacheImage of the bytes (a Buffer), ${OUR_WRITE_MODES[m]!.label}` : 'ours', ourMs),
          baseline: measured(`Glance ${version} ${driver}`, glanceMs),
          goal: phase === 'write' ? OUR_WRITE_MODES[m]!.goal : goalOf(phase, driver),
        }),
      );
    }
  }
  // Context for the goals: ours beside the raw syscalls of the same operation, same run, same directory.
  for (const floor of FLOORS) {
    if (floor.driver !== undefined && floor.driver !== driver) continue;
    const ourMs = perPhase(ours[0]!, floor.phase);
    const floorMs = ours[0]!.map((r) => (r.floors[floor.phase] ?? NaN) * 1000);
    const perOp = floor.phase === 'list' ? 1 : IMAGES;
    ctx.add(
      figure({
        figure: GLANCE_FIGURE,
        title: `${floor.title} beside its floor (${floor.label})`,
        fs: ctx.fs.name,
        driver,
        ours: { label: 'ours', value: (perOp * 1000) / median(ourMs), unit: 'ops/s', samples: ourMs },
        baseline: { label: floor.label, value: (perOp * 1000) / median(floorMs), unit: 'ops/s', samples: floorMs },
        goal: null,
      }),
    );
  }
}

/** Our workload's result, with the floors measured beside it. */
interface OurResult extends WorkloadResult {
  /** Seconds of each floor (median of its passes), by the phase it is the floor of. */
  floors: Partial<Record<WorkloadPhase, number>>;
}

/**
 * The floor rows: the syscalls each operation cannot do without (files are
 * the truth, ADR 0008; the hit and atime rules, ADR 0005), made raw in a
 * loop over the same ids, awaited like our calls.
 */
const FLOORS: readonly { phase: WorkloadPhase; driver?: 'sqlite' | 'xattr'; title: string; label: string }[] = [
  { phase: 'isCached', title: 'isCached', label: 'an awaited async function around lstatSync' },
  { phase: 'getImageSize', title: 'getImageSize', label: 'an awaited async function around lstatSync, its size' },
  { phase: 'getHitCount', driver: 'xattr', title: 'getHitCount', label: 'lstatSync + fs-xattr getAttributeSync of the hits and of the identity they belong to' },
  {
    phase: 'read',
    driver: 'sqlite',
    title: 'read of a 4 KiB image (hit counted)',
    label: 'openSync, fstatSync, readSync, closeSync + the hit UPDATE through better-sqlite3, synchronous = OFF',
  },
  {
    phase: 'read',
    driver: 'xattr',
    title: 'read of a 4 KiB image (hit counted)',
    label: 'openSync, fstatSync, readSync, closeSync + getxattr of hits and identity, setxattr of hits and last access, lstatSync, utimesSync',
  },
  { phase: 'list', title: `getCachedImages of ${countLabel(IMAGES)}`, label: 'readdir + synchronous lstat of every name' },
];

/** Runs `fn` `PASSES` + 1 times; seconds of the median pass, the first (warm-up) pass not counted. */
async function passes(fn: () => Promise<void>): Promise<number> {
  const seconds: number[] = [];
  for (let pass = 0; pass <= PASSES; pass++) {
    const start = performance.now();
    await fn();
    seconds.push((performance.now() - start) / 1000);
  }
  return median(seconds.slice(1));
}

/**
 * The write's floor row: our relaxed commit's own system calls made raw, beside
 * Glance's whole write (same rounds). Below 1, ours cannot reach 1 × Glance on
 * that filesystem whatever its JavaScript costs.
 */
function floorRow(ctx: SuiteContext, driver: 'sqlite' | 'xattr', version: string, floorMs: number[], glanceMs: number[]): void {
  ctx.add(
    figure({
      figure: GLANCE_FIGURE,
      title: 'write of a 4 KiB image: the floor of ours relaxed (its own system calls raw) (vs Glance)',
      fs: ctx.fs.name,
      driver,
      ours: { label: `relaxed commit's system calls raw (lock socket, checks, create, write, fstat, ${driver === 'xattr' ? '4 setxattr' : 'SQLite upsert, synchronous OFF'}, journal line, rename, close)`, value: (IMAGES * 1000) / median(floorMs), unit: 'ops/s', samples: floorMs },
      baseline: { label: `Glance ${version} ${driver}`, value: (IMAGES * 1000) / median(glanceMs), unit: 'ops/s', samples: glanceMs },
      goal: null,
    }),
  );
}

/** Ids of one round of one side (distinct across rounds, so no directory state carries over). */
function ids(prefix: string, round: number): string[] {
  return Array.from({ length: IMAGES }, (_, i) => `${prefix}${round}-img-${String(i).padStart(5, '0')}`);
}

function check(result: WorkloadResult, side: string): void {
  if (result.listed !== IMAGES) throw new Error(`${side} listed ${result.listed} images, expected ${IMAGES}`);
  if (result.pruned[0] !== IMAGES / 2) throw new Error(`${side} pruned ${result.pruned[0]} images, expected ${IMAGES / 2}`);
}

/**
 * Reads a stream to its end, as Glance's side reads its file (`f.read()`):
 * a `data` listener and the `end` event, which our reader emits once the hit
 * is recorded. (`stream.pipeline` into a sink costs an AbortController and a
 * DOMException per call in Node 20, more than a 4 KiB read itself.)
 */
function drain(stream: Readable): Promise<number> {
  return new Promise((resolve, reject) => {
    let bytes = 0;
    stream.on('data', (chunk: Buffer) => (bytes += chunk.length));
    stream.once('end', () => resolve(bytes));
    stream.once('error', reject);
  });
}

/** The same workload through our `ImageCache`, each phase an awaited loop over every id, timed with performance.now() (repeatable phases: {@link passes}, when `full`). */
async function ourWorkload(
  driver: 'sqlite' | 'xattr',
  dir: string,
  imageIds: readonly string[],
  data: Buffer,
  durability: Durability,
  full: boolean,
): Promise<OurResult | undefined> {
  const cache = await ImageCache.open({ driver: createDriver(driver, dir, undefined, durability), maxSize: (imageIds.length * data.length) / 2 }).catch(() => undefined);
  if (cache === undefined) return undefined;
  const seconds = {} as Record<WorkloadPhase, number>;
  const floors: OurResult['floors'] = {};
  const time = async (phase: WorkloadPhase, fn: () => Promise<void>) => {
    // Untimed, as Glance's side (glance_bench.py `_settle`): no phase pays the writeback of the one before it.
    if (phase !== 'write') await settle();
    if (phase === 'write' || phase === 'prune' || !full) {
      const start = performance.now();
      await fn();
      seconds[phase] = (performance.now() - start) / 1000;
    } else {
      seconds[phase] = await passes(fn);
      const floor = floorOf(phase, driver, dir, imageIds, data.length);
      if (floor !== undefined) {
        try {
          await settle();
          floors[phase] = await passes(floor.run);
        } finally {
          floor.close?.();
        }
      }
    }
  };
  let listed = 0;
  let pruned: [number, number] = [0, 0];
  try {
    await time('write', async () => {
      for (const id of imageIds) {
        // The bytes in memory, as Glance is handed them (`cache_image_iter(id, [data])`).
        if (!(await cache.cacheImage(id, data))) throw new Error(`${id} was not cached`);
      }
    });
    await time('isCached', async () => {
      for (const id of imageIds) if (!(await cache.isCached(id))) throw new Error(`${id} is not cached`);
    });
    await time('getHitCount', async () => {
      for (const id of imageIds) await cache.getHitCount(id);
    });
    await time('getImageSize', async () => {
      for (const id of imageIds) await cache.getImageSize(id);
    });
    await time('read', async () => {
      for (const id of imageIds) {
        const bytes = await drain(await cache.openForRead(id));
        if (bytes !== data.length) throw new Error(`short read of ${id}: ${bytes} bytes`);
      }
    });
    await time('list', async () => {
      listed = (await cache.getCachedImages()).length;
    });
    await time('prune', async () => {
      const result = await cache.prune();
      pruned = [result.files, result.bytes];
    });
  } finally {
    await cache.close();
  }
  return { seconds, listed, pruned, floors };
}

/** What a floor pass does (see {@link FLOORS}); `undefined` where a phase has no floor row for this driver. */
function floorOf(
  phase: WorkloadPhase,
  driver: 'sqlite' | 'xattr',
  dir: string,
  imageIds: readonly string[],
  bytes: number,
): { run: () => Promise<void>; close?: () => void } | undefined {
  const paths = imageIds.map((id) => `${dir}/${id}`);
  if (!FLOORS.some((f) => f.phase === phase && (f.driver === undefined || f.driver === driver))) return undefined;
  switch (phase) {
    case 'isCached': {
      const exists = async (path: string) => lstatSync(path, { throwIfNoEntry: false }) !== undefined;
      return {
        run: async () => {
          for (const path of paths) if (!(await exists(path))) throw new Error(`${path} is missing`);
        },
      };
    }
    case 'getImageSize': {
      const size = async (path: string) => lstatSync(path, { throwIfNoEntry: false })?.size;
      return {
        run: async () => {
          for (const path of paths) if ((await size(path)) !== bytes) throw new Error(`${path} is not ${bytes} bytes`);
        },
      };
    }
    case 'getHitCount': {
      const hits = async (path: string) => {
        lstatSync(path, { bigint: true });
        getAttributeSync(path, XATTR.file);
        return Number.parseInt(getAttributeSync(path, XATTR.hits).toString('utf8'), 10);
      };
      return {
        run: async () => {
          for (const path of paths) await hits(path);
        },
      };
    }
    case 'read': {
      const buffer = Buffer.allocUnsafe(bytes);
      const readRaw = (path: string) => {
        // O_NOATIME as our reads (ADR 0005); it needs the file's owner, else a plain open.
        let fd: number;
        try {
          fd = openSync(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | (fsConstants.O_NOATIME ?? 0));
        } catch {
          fd = openSync(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
        }
        try {
          fstatSync(fd, { bigint: true });
          if (readSync(fd, buffer, 0, bytes, 0) !== bytes) throw new Error(`short read of ${path}`);
        } finally {
          closeSync(fd);
        }
      };
      if (driver === 'sqlite') {
        const db = new Database(dbPathOf(dir), { timeout: 5000 });
        db.pragma('synchronous = OFF');
        const hit = db.prepare('UPDATE cached_images SET hits = hits + 1, last_accessed = ? WHERE image_id = ?');
        return {
          run: async () => {
            for (let i = 0; i < paths.length; i++) {
              readRaw(paths[i]!);
              await Promise.resolve(hit.run(Date.now() / 1000, imageIds[i]));
            }
          },
          close: () => db.close(),
        };
      }
      return {
        run: async () => {
          for (const path of paths) {
            readRaw(path);
            const count = Number.parseInt(getAttributeSync(path, XATTR.hits).toString('utf8'), 10);
            getAttributeSync(path, XATTR.file);
            const now = Date.now() / 1000;
            setAttributeSync(path, XATTR.hits, String(count + 1));
            setAttributeSync(path, XATTR.lastAccessed, String(BigInt(Math.round(now * 1e6)) * 1000n));
            const { mtimeMs } = lstatSync(path);
            await Promise.resolve(utimesSync(path, now, mtimeMs / 1000));
          }
        },
      };
    }
    case 'list':
      return {
        run: async () => {
          const found = await statEveryFile(dir, (name) => !name.startsWith('cache.db'));
          if (found !== imageIds.length) throw new Error(`readdir + lstat found ${found} of ${imageIds.length}`);
        },
      };
    default:
      return undefined;
  }
}

/** The floor of a listing that keeps files the truth: one `readdir`, one synchronous `lstat` (nanosecond times) of every entry name. */
async function statEveryFile(dir: string, isEntry: (name: string) => boolean): Promise<number> {
  let found = 0;
  for (const name of await readdir(dir)) {
    if (!isEntry(name)) continue;
    if (lstatSync(`${dir}/${name}`, { bigint: true, throwIfNoEntry: false })?.isFile()) found++;
  }
  return found;
}

const ENTRY_NAME = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** getCachedImages of the large population, both sides on the same directory, alternating. */
async function largeListing(ctx: SuiteContext, glance: GlanceBench, version: string, driver: 'sqlite' | 'xattr'): Promise<void> {
  const count = ctx.sizes.entries[1];
  const needed = count * 4096 * 1.5;
  if ((await ctx.freeBytes()) < needed) {
    ctx.skipDriver([GLANCE_FIGURE], driver, `the ${countLabel(count)} listing needs about ${(needed / 2 ** 20).toFixed(0)} MiB free`);
    return;
  }
  const dir = join(ctx.fs.path, `glance-${driver}-list-${count}`);
  try {
    await populate(driver, dir, count, ctx.sizes.entryBytes);
    // Ours first: the sqlite driver puts the database in the rollback journal Glance uses (populate() wrote it in WAL).
    const cache = await openCache(driver, dir);
    if (typeof cache === 'string') {
      ctx.skipDriver([GLANCE_FIGURE], driver, cache);
      return;
    }
    const oursMs: number[] = [];
    const glanceMs: number[] = [];
    const floorMs: number[] = [];
    try {
      const steps = [
        async () => {
          const start = performance.now();
          const listed = await statEveryFile(dir, (name) => ENTRY_NAME.test(name));
          floorMs.push(performance.now() - start);
          if (listed !== count) throw new Error(`readdir + lstat found ${listed} of ${count}`);
        },
        async () => {
          const start = performance.now();
          const listed = (await cache.getCachedImages()).length;
          oursMs.push(performance.now() - start);
          if (listed !== count) throw new Error(`ours listed ${listed} of ${count}`);
        },
        async () => {
          const { seconds, listed } = await glance.list(dir, driver, 1);
          glanceMs.push(...seconds.map((s) => s * 1000));
          if (listed !== count) throw new Error(`Glance listed ${listed} of ${count}`);
        },
      ];
      for (let rep = 0; rep < ctx.sizes.repeats; rep++) {
        for (let i = 0; i < steps.length; i++) {
          collectGarbage();
          await waitForQuiet();
          await steps[(i + rep) % steps.length]!();
        }
      }
    } finally {
      await cache.close();
    }
    ctx.add(
      figure({
        figure: GLANCE_FIGURE,
        title: `getCachedImages of ${countLabel(count)} (populated directly; vs Glance)`,
        fs: ctx.fs.name,
        driver,
        ours: { label: 'ours', value: median(oursMs), unit: 'ms', samples: oursMs },
        baseline: { label: `Glance ${version} ${driver}`, value: median(glanceMs), unit: 'ms', samples: glanceMs },
        goal: goalOf('list', driver),
      }),
    );
    // Context for the goal: what keeping files the truth costs at least (every name lstat'ed, nothing else).
    ctx.add(
      figure({
        figure: GLANCE_FIGURE,
        title: `getCachedImages of ${countLabel(count)} beside its floor (readdir + synchronous lstat of every name)`,
        fs: ctx.fs.name,
        driver,
        ours: { label: 'ours', value: median(oursMs), unit: 'ms', samples: oursMs },
        baseline: { label: 'readdir + lstatSync each', value: median(floorMs), unit: 'ms', samples: floorMs },
        goal: null,
      }),
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
