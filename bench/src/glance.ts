/**
 * The Python side of figure 14: one long-lived `/usr/bin/python3
 * glance_bench.py` process that runs OpenStack Glance's own `ImageCache`
 * (Debian's `python3-glance`, installed by `scripts/install-glance.sh`
 * through `@cache/glance-testing`'s `ensureGlance`) and times it. The
 * process is `@cache/glance-testing`'s {@link GlancePython} running
 * `glance_bench.py`, which adds the timed operations to that package's
 * `glance_driver.py` (same protocol, same facades).
 */
import { join } from 'node:path';
import { GlancePython } from '@cache/glance-testing';
import { BENCH_DIR } from './options.js';

/** The timing script (see its docstring for the operations). */
export const GLANCE_BENCH_SCRIPT = join(BENCH_DIR, 'glance_bench.py');

/** The phases of the small-entry workload, in the order both sides run them. */
export const WORKLOAD_PHASES = ['write', 'isCached', 'getHitCount', 'getImageSize', 'read', 'list', 'prune'] as const;
export type WorkloadPhase = (typeof WORKLOAD_PHASES)[number];

/**
 * What one workload run took: seconds per phase (`list`: one listing), what
 * the last listing returned, what prune removed. `write` and `prune` are one
 * pass each (they change what they measure); every other phase is the median
 * of its timed passes, after one warm-up pass that is not counted.
 */
export interface WorkloadResult {
  seconds: Record<WorkloadPhase, number>;
  listed: number;
  pruned: [number, number];
}

/** `image_cache_max_size` outside prune: large enough that Glance never prunes on its own. */
const NO_BUDGET = 10 * 1024 ** 4;

/** The Glance timing process; requests are answered in order, one JSON line each. */
export class GlanceBench {
  readonly #python = GlancePython.start({ script: GLANCE_BENCH_SCRIPT });

  /** The process id, so the bench's quiet-machine check does not count it as another process. */
  get pid(): number | undefined {
    return this.#python.pid;
  }

  /** Glance's version (and that its code runs). */
  version(): Promise<{ glance: string; python: string }> {
    return this.#python.request({ op: 'version' });
  }

  /** The small-entry workload on a fresh directory (see {@link WORKLOAD_PHASES}); `passes` timed passes of each repeatable phase, after a warm-up pass. */
  workload(dir: string, driver: 'sqlite' | 'xattr', ids: readonly string[], size: number, passes: number): Promise<WorkloadResult> {
    return this.#python.request({ op: 'workload', dir, driver, max_size: NO_BUDGET, ids, size, passes });
  }

  /** `get_cached_images()` `repeat` times on a populated directory: seconds of each. */
  list(dir: string, driver: 'sqlite' | 'xattr', repeat: number): Promise<{ seconds: number[]; listed: number }> {
    return this.#python.request({ op: 'list_timed', dir, driver, max_size: NO_BUDGET, repeat });
  }

  close(): Promise<void> {
    return this.#python.close();
  }
}
