import { spawnSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { Writable } from 'node:stream';

/** Milliseconds a call took (wall clock). */
export async function timeMs(fn: () => Promise<unknown> | unknown): Promise<number> {
  const start = performance.now();
  await fn();
  return performance.now() - start;
}

/**
 * The fastest of the samples (smallest time). Used for the large-stream
 * figures, where interference is one-sided: other processes and the virtual
 * machine's host (writeback phases, memory handed back and forth) only ever
 * slow a run down, so the fastest run is the best estimate of what each side
 * costs. Both sides of a figure get the same rule; every sample is in the JSON.
 */
export function fastest(samples: readonly number[]): number {
  return samples.length === 0 ? NaN : Math.min(...samples);
}

export function median(samples: readonly number[]): number {
  if (samples.length === 0) return NaN;
  const sorted = [...samples].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

/** A full collection between measurements (the run is started with --expose-gc), so one run's garbage is not the next one's pause. */
export function collectGarbage(): void {
  (globalThis as { gc?: () => void }).gc?.();
}

/** One chunk of incompressible bytes, yielded over and over by {@link generate}. */
export function makeChunk(bytes: number): Buffer {
  return randomFillSync(Buffer.allocUnsafe(bytes));
}

/** The in-memory origin of the large-stream figures: `chunk` yielded until `total` bytes (the last one cut). */
export async function* generate(chunk: Buffer, total: number): AsyncGenerator<Buffer> {
  let left = total;
  while (left > 0) {
    const piece = left >= chunk.length ? chunk : chunk.subarray(0, left);
    left -= piece.length;
    yield piece;
  }
}

/** The same bytes, synchronously, for hashing on one core. */
export function* chunks(chunk: Buffer, total: number): Generator<Buffer> {
  let left = total;
  while (left > 0) {
    const piece = left >= chunk.length ? chunk : chunk.subarray(0, left);
    left -= piece.length;
    yield piece;
  }
}

/** The no-op sink both sides of a read figure are consumed by; counts what it got. */
export class NullSink extends Writable {
  bytes = 0;
  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.bytes += chunk.length;
    callback();
  }
}

export function mibPerSecond(bytes: number, ms: number): number {
  return bytes / (1024 * 1024) / (ms / 1000);
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Lets the filesystem settle between large runs: writes back what is dirty
 * (sync -f, on the filesystem of `path`) and waits a moment, so one run's writeback or discards do not
 * land in the next run's time.
 */
export async function settle(path?: string): Promise<void> {
  // sync -f: syncfs(2) of the filesystem holding `path` only.
  spawnSync('sync', path === undefined ? [] : ['-f', path], { stdio: 'ignore' });
  await sleep(50);
}

// ---- a shared machine -------------------------------------------------------------------
//
// Other processes (a test run, a build) take CPU from a measurement and make it
// look slower than it is. Before each timed run we wait (within a budget) until
// the machine is quiet, and we measure how many cores other processes used
// during the run; a disturbed run that can be repeated is repeated. What this
// cost is reported with the results.

const CLOCK_TICKS_PER_SECOND = 100; // USER_HZ on Linux
/** Other processes may use this many cores (on average) before a run counts as disturbed. */
const DISTURBED_CORES = 0.25;
/** Other processes count as quiet below this many cores (on average over 250 ms). */
const QUIET_CORES = 0.1;
const QUIET_WAIT_MAX_MS = 15_000;
const QUIET_WAIT_BUDGET_MS = 180_000;
const RETRIES = 2;

export const machineNoise = {
  /** Time spent waiting for the machine to be quiet. */
  waitedMs: 0,
  /** Waits that gave up (the machine stayed busy). */
  gaveUp: 0,
  /** Runs repeated because other processes took CPU during them. */
  repeated: 0,
  /** Runs kept although disturbed (out of retries, or not repeatable). */
  keptDisturbed: 0,
};

const PF_KTHREAD = 0x00200000;

/** Processes (and their children) that work for the bench itself, e.g. its PostgreSQL server. */
const ownProcessTrees = new Set<number>();

/**
 * Leaves `pid` and its children out of the other processes' CPU: the bench's
 * own PostgreSQL server (the postmaster; its backends are its children)
 * works for our figures, it does not disturb them; so do the servers,
 * origin and clients the HTTP figures start.
 */
export function ignoreProcessTree(pid: number): void {
  ownProcessTrees.add(pid);
}

/** Counts `pid` as another process again (it has exited: its number may be reused). */
export function forgetProcessTree(pid: number): void {
  ownProcessTrees.delete(pid);
}

/** One process as `/proc/<pid>/stat` describes it: its parent, its flags and its CPU time (user + system, clock ticks). */
interface ProcStat {
  pid: number;
  ppid: number;
  flags: number;
  ticks: number;
}

/** Every process `/proc` lists (those that exit while it is read are left out); `undefined` without `/proc`. */
function procStats(): ProcStat[] | undefined {
  let names: string[];
  try {
    names = readdirSync('/proc');
  } catch {
    return undefined;
  }
  const stats: ProcStat[] = [];
  for (const name of names) {
    if (!/^\d+$/.test(name)) continue;
    let text: string;
    try {
      text = readFileSync(`/proc/${name}/stat`, 'utf8');
    } catch {
      continue; // exited
    }
    // Fields after "(comm)": state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime ...
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
    stats.push({ pid: Number(name), ppid: Number(fields[1]), flags: Number(fields[6]), ticks: Number(fields[11]) + Number(fields[12]) });
  }
  return stats;
}

/**
 * CPU time (clock ticks) used so far by every user-space process but this
 * one. Kernel threads are left out: writeback, journal and loop-device
 * threads work for our own writes, and so does the bench's PostgreSQL server
 * ({@link ignoreProcessTree}). Processes that exit meanwhile drop out of
 * the sum, so this can only underestimate.
 */
function otherProcessesTicks(): number | undefined {
  const stats = procStats();
  if (stats === undefined) return undefined;
  let ticks = 0;
  for (const stat of stats) {
    if (stat.pid === process.pid || (stat.flags & PF_KTHREAD) !== 0) continue;
    if (ownProcessTrees.size > 0 && (ownProcessTrees.has(stat.pid) || ownProcessTrees.has(stat.ppid))) continue;
    ticks += stat.ticks;
  }
  return ticks;
}

/**
 * CPU time (user + system, seconds) used so far by process `pid` and every
 * process below it (a server's workers: nginx's, node:cluster's), from
 * `/proc`; `undefined` without `/proc` or once `pid` has exited. Children
 * that exit meanwhile drop out of the sum.
 */
export function processTreeCpuSeconds(pid: number): number | undefined {
  const stats = procStats();
  if (stats === undefined || !stats.some((stat) => stat.pid === pid)) return undefined;
  const tree = new Set([pid]);
  for (let grew = true; grew; ) {
    grew = false;
    for (const stat of stats) {
      if (!tree.has(stat.pid) && tree.has(stat.ppid)) {
        tree.add(stat.pid);
        grew = true;
      }
    }
  }
  let total = 0;
  for (const stat of stats) if (tree.has(stat.pid)) total += stat.ticks;
  return total / CLOCK_TICKS_PER_SECOND;
}

/** Waits until other processes use less than a tenth of one CPU (at most 15 s each time, 3 min per run). */
export async function waitForQuiet(): Promise<void> {
  const start = performance.now();
  for (;;) {
    const a = otherProcessesTicks();
    if (a === undefined) return;
    await sleep(250);
    const b = otherProcessesTicks();
    if (b === undefined) return;
    const cores = (b - a) / CLOCK_TICKS_PER_SECOND / 0.25;
    const waited = performance.now() - start;
    if (cores < QUIET_CORES) break;
    if (waited > QUIET_WAIT_MAX_MS || machineNoise.waitedMs + waited > QUIET_WAIT_BUDGET_MS) {
      machineNoise.gaveUp++;
      break;
    }
  }
  machineNoise.waitedMs += performance.now() - start - 250;
}

/** Times `fn` and how many cores other user-space processes used meanwhile. */
async function timeWithOthers(fn: () => Promise<unknown> | unknown): Promise<{ ms: number; others: number }> {
  const a = otherProcessesTicks();
  const start = performance.now();
  await fn();
  const ms = performance.now() - start;
  const b = otherProcessesTicks();
  if (a === undefined || b === undefined || ms < 50) return { ms, others: 0 };
  return { ms, others: (b - a) / CLOCK_TICKS_PER_SECOND / (ms / 1000) };
}

/**
 * One timed run on a quiet machine: waits for quiet, runs `fn` and, when
 * other processes took CPU meanwhile and `repeatable`, runs it again (up to
 * twice). `prepare` runs before and `cleanup` after every attempt, untimed.
 */
export async function timedRun(
  fn: () => Promise<unknown> | unknown,
  options: {
    repeatable?: boolean;
    /** Runs before every attempt, untimed (e.g. a warm-up write). */
    prepare?: () => Promise<unknown> | unknown;
    cleanup?: () => Promise<unknown> | unknown;
  } = {},
): Promise<number> {
  const repeatable = options.repeatable ?? true;
  for (let attempt = 0; ; attempt++) {
    await options.prepare?.();
    await waitForQuiet();
    const { ms, others } = await timeWithOthers(fn);
    await options.cleanup?.();
    if (others <= DISTURBED_CORES) return ms;
    if (!repeatable || attempt >= RETRIES) {
      machineNoise.keptDisturbed++;
      return ms;
    }
    machineNoise.repeated++;
  }
}
