/**
 * The Python side of figure 14: one long-lived `/usr/bin/python3
 * glance_bench.py` process that runs OpenStack Glance's own `ImageCache`
 * (Debian's `python3-glance`, installed by `scripts/install-glance.sh`
 * through `@cache/glance-testing`'s `ensureGlance`) and times it.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { GLANCE_PYTHON } from '@cache/glance-testing';
import { BENCH_DIR } from './options.js';

/** The timing script (see its docstring for the operations). */
export const GLANCE_BENCH_SCRIPT = join(BENCH_DIR, 'glance_bench.py');

/** The phases of the small-entry workload, in the order both sides run them. */
export const WORKLOAD_PHASES = ['write', 'isCached', 'getHitCount', 'getImageSize', 'read', 'list', 'prune'] as const;
export type WorkloadPhase = (typeof WORKLOAD_PHASES)[number];

/** What one workload run took: seconds per phase (`list`: per listing), what the last listing returned, what prune removed. */
export interface WorkloadResult {
  seconds: Record<WorkloadPhase, number>;
  listed: number;
  pruned: [number, number];
}

interface Pending {
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
}

/** The Glance timing process; requests are answered in order, one JSON line each. */
export class GlanceBench {
  readonly #child: ChildProcessWithoutNullStreams;
  readonly #pending: Pending[] = [];
  readonly #exited: Promise<void>;
  #stderr = '';
  #gone: Error | undefined;

  constructor() {
    this.#child = spawn(GLANCE_PYTHON, [GLANCE_BENCH_SCRIPT], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.#child.stderr.setEncoding('utf8').on('data', (text: string) => {
      this.#stderr = (this.#stderr + text).slice(-4000);
    });
    createInterface({ input: this.#child.stdout }).on('line', (line) => {
      const waiter = this.#pending.shift();
      if (waiter === undefined) return;
      try {
        const answer = JSON.parse(line) as { ok: boolean; result?: unknown; error?: string; traceback?: string };
        if (answer.ok) waiter.resolve(answer.result);
        else waiter.reject(new Error(`Glance failed: ${answer.error ?? ''}\n${answer.traceback ?? ''}`));
      } catch {
        waiter.reject(new Error(`glance_bench.py wrote a line that is not JSON: ${line.slice(0, 200)}`));
      }
    });
    this.#exited = new Promise((resolve) => {
      const fail = (error: Error) => {
        this.#gone = error;
        for (const waiter of this.#pending.splice(0)) waiter.reject(error);
        resolve();
      };
      this.#child.on('error', (error) => fail(new Error(`cannot run ${GLANCE_PYTHON} ${GLANCE_BENCH_SCRIPT}: ${error.message}`)));
      this.#child.on('exit', (code, signal) => fail(new Error(`glance_bench.py exited (${signal ?? code}): ${this.#stderr.trim()}`)));
    });
  }

  /** The process id, so the bench's quiet-machine check does not count it as another process. */
  get pid(): number | undefined {
    return this.#child.pid;
  }

  #request<T>(request: Record<string, unknown>): Promise<T> {
    if (this.#gone !== undefined) return Promise.reject(this.#gone);
    return new Promise<T>((resolve, reject) => {
      this.#pending.push({ resolve: resolve as (value: unknown) => void, reject });
      this.#child.stdin.write(`${JSON.stringify(request)}\n`);
    });
  }

  /** Glance's version (and that its code runs). */
  version(): Promise<{ glance: string; python: string }> {
    return this.#request({ op: 'version' });
  }

  /** The small-entry workload on a fresh directory (see {@link WORKLOAD_PHASES}). */
  workload(dir: string, driver: 'sqlite' | 'xattr', ids: readonly string[], size: number, lists: number): Promise<WorkloadResult> {
    return this.#request({ op: 'workload', dir, driver, ids, size, lists });
  }

  /** `get_cached_images()` `repeat` times on a populated directory: seconds of each. */
  list(dir: string, driver: 'sqlite' | 'xattr', repeat: number): Promise<{ seconds: number[]; listed: number }> {
    return this.#request({ op: 'list', dir, driver, repeat });
  }

  async close(): Promise<void> {
    if (this.#gone === undefined) this.#child.stdin.end();
    await this.#exited;
  }
}
