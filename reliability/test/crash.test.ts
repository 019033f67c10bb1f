/**
 * Crash safety under SIGKILL. A child process (fixtures/crash-worker.mjs)
 * caches, reads, deletes, queues, prunes and cleans on one cache directory
 * and journals (with fsync) what it starts and what completed. The parent
 * kills it at a random moment, reopens the directory in-process with the same
 * driver and checks that nothing partial is active, nothing committed is
 * lost, clean(0) leaves metadata and files in agreement and `incomplete/`
 * empty. The directory is reused for every kill, so damage accumulates.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import Database from 'better-sqlite3';
import { getAttribute } from 'fs-xattr';
import { afterAll, describe, expect, it } from 'vitest';
import { ImageCache } from '@cache/core';
import { contentForId, seededRandom, sha256Hex, sizeForId } from './fixtures/content.mjs';
import {
  activeFileIds,
  createDriver,
  DRIVER_NAMES,
  freshDir,
  namesIn,
  reliabilityTarget,
  removeDir,
  startFixture,
  type DriverName,
} from './helpers.js';

const target = await reliabilityTarget();

/** Kills per driver: 200 (RELIABILITY_KILLS changes it for a local run). */
const KILLS = Number(process.env.RELIABILITY_KILLS ?? 200);
/** Base seed of the kill delays and of the children's work; printed, and settable to replay a run. */
const SEED = Number(process.env.RELIABILITY_SEED ?? 0x5eed);
/** 48 ids of 1 KiB..2 MiB (about 15 MiB if all are cached); the child prunes to 6 MiB. */
const IDS = Array.from({ length: 48 }, (_, i) => `img-${String(i).padStart(2, '0')}`);
const MAX_SIZE = 6 * 1024 * 1024;

const EXPECTED_SHA = new Map(IDS.map((id) => [id, sha256Hex(contentForId(id))]));

type Known = 'yes' | 'no' | 'maybe';

/** What the parent knows of each id: cached? queued? Reset to what it observed after every kill. */
interface State {
  cached: Map<string, Known>;
  queued: Map<string, Known>;
}

interface Stats {
  kills: number;
  journalLines: number;
  commits: number;
  killedInsideCacheImage: number;
  committedChecked: number;
  entriesHashed: number;
  incompleteLeftovers: number;
  invalidLeftovers: number;
  adoptedFiles: number;
  orphanRecords: number;
  queuedAndCached: number;
  maxEntries: number;
}

/** Applies one cycle's journal lines to what the parent knows. */
function applyJournal(state: State, lines: readonly string[], stats: Stats): void {
  const weaken = (map: Map<string, Known>, id: string) => {
    if (map.get(id) !== 'no') map.set(id, 'maybe');
  };
  for (const line of lines) {
    const [verb, ...args] = line.split(' ');
    const id = args[0] ?? '';
    switch (verb) {
      case 'begin':
        expect(args[1], `journal: ${line}`).toBe(EXPECTED_SHA.get(id));
        if (state.cached.get(id) !== 'yes') state.cached.set(id, 'maybe');
        weaken(state.queued, id); // a commit removes the marker
        break;
      case 'committed':
        stats.commits++;
        state.cached.set(id, 'yes');
        state.queued.set(id, 'no');
        break;
      case 'deleting':
        weaken(state.cached, id);
        break;
      case 'deleted':
        state.cached.set(id, 'no');
        break;
      case 'pruning':
      case 'deleting-all':
        for (const victim of args) weaken(state.cached, victim);
        break;
      case 'pruned':
        for (const victim of args) state.cached.set(victim, 'no');
        break;
      case 'deleted-all':
        for (const each of IDS) state.cached.set(each, 'no');
        break;
      case 'queuing':
        if (state.queued.get(id) !== 'yes') state.queued.set(id, 'maybe');
        break;
      case 'queued':
        state.queued.set(id, 'yes');
        break;
      case 'not-queued': // already queued, cached or being cached: nothing changed
        break;
      case 'dequeuing':
        weaken(state.queued, id);
        break;
      case 'dequeued':
        state.queued.set(id, 'no');
        break;
      // A write with a wrong checksum never makes an entry; `skipped`, `failed`
      // and `cleaned` change nothing the parent tracks.
      case 'begin-bad':
      case 'skipped':
      case 'failed':
      case 'cleaned':
        break;
      default:
        throw new Error(`unknown journal line ${JSON.stringify(line)}`);
    }
  }
}

/** Reopens the directory in-process after a kill and checks everything; then records what it saw. */
async function verifyAfterKill(
  name: DriverName,
  cacheDir: string,
  state: State,
  stats: Stats,
  context: string,
): Promise<void> {
  const cache = await ImageCache.open({ driver: createDriver(name, cacheDir), maxSize: MAX_SIZE });
  try {
    stats.incompleteLeftovers += (await namesIn(join(cacheDir, 'incomplete'))).length;
    stats.invalidLeftovers += (await namesIn(join(cacheDir, 'invalid'))).length;

    // Files are the truth: the listing is exactly the active files.
    const files = await activeFileIds(cacheDir);
    const listed = await cache.getCachedImages();
    expect(listed.map((image) => image.imageId), `${context}: listing = active files`).toEqual(files);

    // No partial file is ever active: every active file has its id's exact bytes.
    for (const image of listed) {
      const bytes = await readFile(join(cacheDir, image.imageId));
      stats.entriesHashed++;
      expect(bytes.length, `${context}: size of active ${image.imageId}`).toBe(sizeForId(image.imageId));
      expect(sha256Hex(bytes), `${context}: sha256 of active ${image.imageId}`).toBe(EXPECTED_SHA.get(image.imageId));
      expect(image.size, `${context}: listed size of ${image.imageId}`).toBe(bytes.length);
    }

    // No committed entry is lost; nothing deleted comes back.
    const present = new Set(files);
    for (const id of IDS) {
      const known = state.cached.get(id) ?? 'no';
      if (known === 'yes') {
        expect(present.has(id), `${context}: ${id} was journaled committed (and not deleted since) but is gone`).toBe(true);
        expect(await cache.isCached(id), `${context}: isCached(${id})`).toBe(true);
        stats.committedChecked++;
      } else if (known === 'no') {
        expect(present.has(id), `${context}: ${id} was deleted (or never committed) but is active`).toBe(false);
      }
    }

    const report = await cache.clean(0);
    expect(report.errors, `${context}: clean(0) errors`).toEqual([]);
    stats.adoptedFiles += report.adoptedFiles;
    stats.orphanRecords += report.orphanRecords;
    expect(await namesIn(join(cacheDir, 'incomplete')), `${context}: incomplete/ after clean(0)`).toEqual([]);
    expect(await namesIn(join(cacheDir, 'invalid')), `${context}: invalid/ after clean(0)`).toEqual([]);
    expect(await activeFileIds(cacheDir), `${context}: clean(0) never deletes an active entry`).toEqual(files);

    // After clean, metadata and files agree both ways.
    if (name === 'sqlite') {
      const db = new Database(join(cacheDir, 'cache.db'), { readonly: true, fileMustExist: true });
      try {
        const rows = db.prepare('SELECT image_id, size FROM cached_images ORDER BY image_id').all() as { image_id: string; size: number }[];
        expect(rows.map((row) => row.image_id).sort(), `${context}: cached_images rows = active files`).toEqual(files);
        for (const row of rows) expect(row.size, `${context}: row size of ${row.image_id}`).toBe(sizeForId(row.image_id));
      } finally {
        db.close();
      }
    } else {
      for (const id of files) {
        const hits = (await getAttribute(join(cacheDir, id), 'user.hits').catch((error: unknown) => error)) as Buffer | Error;
        expect(hits instanceof Error ? `no user.hits (${hits.message})` : 'user.hits', `${context}: metadata of ${id}`).toBe('user.hits');
        expect((hits as Buffer).toString(), `${context}: user.hits of ${id}`).toMatch(/^\d+$/);
      }
    }
    const after = await cache.getCachedImages();
    expect(after.map((image) => image.imageId), `${context}: listing after clean`).toEqual(files);
    expect(await cache.getCacheSize(), `${context}: getCacheSize()`).toBe(files.reduce((sum, id) => sum + sizeForId(id), 0));

    // Queue markers: a marker journaled as created (and not removed since) is still there.
    const queued = await cache.getQueuedImages();
    const queuedSet = new Set(queued);
    for (const marker of await namesIn(join(cacheDir, 'queue'))) {
      expect((await readFile(join(cacheDir, 'queue', marker))).length, `${context}: queue marker ${marker} is empty`).toBe(0);
    }
    for (const id of IDS) {
      const known = state.queued.get(id) ?? 'no';
      if (known === 'yes') expect(queuedSet.has(id), `${context}: ${id} was journaled queued but is not`).toBe(true);
      if (known === 'no') expect(queuedSet.has(id), `${context}: ${id} was dequeued or committed but is queued`).toBe(false);
      // A kill between a commit's rename and its marker removal leaves both; clean() removes such markers.
      if (queuedSet.has(id) && present.has(id)) stats.queuedAndCached++;
      expect(queuedSet.has(id) && present.has(id), `${context}: ${id} is cached and still queued after clean()`).toBe(false);
    }

    // From now on the parent knows exactly what is there.
    for (const id of IDS) {
      state.cached.set(id, present.has(id) ? 'yes' : 'no');
      state.queued.set(id, queuedSet.has(id) ? 'yes' : 'no');
    }
    stats.maxEntries = Math.max(stats.maxEntries, files.length);
  } finally {
    await cache.close();
  }
}

describe(`SIGKILL crash safety on ${target.fs.name} (${target.fs.root})`, () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const dir of dirs) await removeDir(dir);
  });

  for (const name of DRIVER_NAMES) {
    const skip = name === 'xattr' ? target.xattrSkipReason : undefined;
    const title =
      `${name}: ${KILLS} SIGKILLs at random moments on one cache directory: no partial entry active, ` +
      'no committed entry lost, clean(0) leaves metadata = files and incomplete/ empty' +
      (skip === undefined ? '' : ` [skipped: ${skip}]`);
    it.skipIf(skip !== undefined)(title, { timeout: 600_000 }, async () => {
      const work = await freshDir(target.fs.root, `crash-${name}`);
      const cacheDir = join(work, 'cache');
      const journalPath = join(work, 'journal');
      const state: State = { cached: new Map(), queued: new Map() };
      const stats: Stats = {
        kills: 0,
        journalLines: 0,
        commits: 0,
        killedInsideCacheImage: 0,
        committedChecked: 0,
        entriesHashed: 0,
        incompleteLeftovers: 0,
        invalidLeftovers: 0,
        adoptedFiles: 0,
        orphanRecords: 0,
        queuedAndCached: 0,
        maxEntries: 0,
      };
      const seed = SEED + (name === 'sqlite' ? 0 : 1_000_000);
      const delays = seededRandom(seed);
      const started = Date.now();
      let journalOffset = 0;
      let delaySum = 0;
      for (let cycle = 0; cycle < KILLS; cycle++) {
        const worker = startFixture('crash-worker.mjs', [
          JSON.stringify({ driver: name, cacheDir, journal: journalPath, seed: seed + cycle + 1, ids: IDS, maxSize: MAX_SIZE }),
        ]);
        expect(await worker.nextLine(), `cycle ${cycle}: the worker starts`).toBe('ready');
        const delay = 5 + Math.floor(delays() * 146);
        delaySum += delay;
        await sleep(delay);
        worker.child.kill('SIGKILL');
        const { code, signal } = await worker.exited;
        if (signal !== 'SIGKILL') {
          throw new Error(`cycle ${cycle}: the worker ended by itself (code ${code}) before the kill:\n${worker.stderr()}`);
        }
        stats.kills++;

        const journal = await readFile(journalPath, 'utf8');
        // Only whole lines count: a kill may land in the middle of an append.
        const end = journal.lastIndexOf('\n') + 1;
        const lines = journal.slice(journalOffset, end).split('\n').filter((line) => line.length > 0);
        journalOffset = end;
        stats.journalLines += lines.length;
        const last = lines.at(-1) ?? '';
        if (last.startsWith('begin')) stats.killedInsideCacheImage++;
        applyJournal(state, lines, stats);
        const context = `${name} cycle ${cycle} (seed ${seed + cycle + 1}, killed after ${delay} ms; last journal lines: ${lines.slice(-4).join(' | ')})`;
        try {
          await verifyAfterKill(name, cacheDir, state, stats, context);
        } catch (error) {
          console.error(`[reliability] crash ${name}: failed after kill ${cycle}; cache directory and journal kept in ${work}`);
          throw error;
        }
      }
      const seconds = (Date.now() - started) / 1000;
      console.log(
        `[reliability] crash ${name} on ${target.fs.name}: ${stats.kills} SIGKILLs in ${seconds.toFixed(1)} s ` +
          `(mean delay ${(delaySum / stats.kills).toFixed(0)} ms, seed ${seed}); ${stats.journalLines} journaled steps, ` +
          `${stats.commits} commits; ${stats.killedInsideCacheImage} kills landed inside cacheImage; ` +
          `${stats.committedChecked} committed-entry checks (present, exact bytes) and ${stats.entriesHashed} active files hashed, ` +
          `up to ${stats.maxEntries} entries at once; before clean(0): ${stats.incompleteLeftovers} incomplete and ` +
          `${stats.invalidLeftovers} invalid leftovers; clean adopted ${stats.adoptedFiles} files and dropped ` +
          `${stats.orphanRecords} orphan rows; ${stats.queuedAndCached} ids found both cached and queued`,
      );
      expect(stats.kills).toBe(KILLS);
      expect(stats.commits, 'the workers committed entries').toBeGreaterThan(0);
      expect(stats.committedChecked, 'committed entries were checked after kills').toBeGreaterThan(0);
      dirs.push(work);
    });
  }
});
