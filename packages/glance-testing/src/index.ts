/**
 * `@cache/glance-testing`: OpenStack Glance's own image-cache code (Debian's
 * `python3-glance`) driven from tests, so interop tests run the original, not
 * a replay of it.
 *
 * - {@link ensureGlance} installs it once (`scripts/install-glance.sh`, as
 *   root with apt-get) and says why when it cannot; the package's
 *   `global-setup` entry runs it once per vitest run and hands the answer to
 *   the test files (`inject('glance')`).
 * - {@link GlancePython} is one long-lived `/usr/bin/python3 glance_driver.py`
 *   process (Glance's imports cost ~0.7 s, paid once per test file); a
 *   {@link GlanceCache} sends it requests for one cache directory and driver.
 * - {@link glanceIt} registers a test, or, without Glance, a skipped test whose
 *   title ends with `[skipped: <reason>]` (where `pnpm test` reads skip reasons).
 *
 * @packageDocumentation
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { basename } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { it } from 'vitest';

/** Debian's python3: python3-glance installs for it, whatever `python3` on PATH is (e.g. pyenv). */
export const GLANCE_PYTHON = '/usr/bin/python3';

/** The JSON-lines driver of Glance's cache (see the file's docstring for the operations). */
export const GLANCE_DRIVER_SCRIPT = fileURLToPath(new URL('../glance_driver.py', import.meta.url));

/** The repository's installer (idempotent; flock-guarded, so parallel test packages run apt once). */
export const INSTALL_SCRIPT = fileURLToPath(new URL('../../../scripts/install-glance.sh', import.meta.url));

/** Set to `0` to leave Glance alone: its tests are then skipped with that reason. */
export const GLANCE_ENV = 'CACHE_TEST_GLANCE';

/** Whether Glance's code can be run here, and which version, or why not. */
export type GlanceSetup = { available: true; version: string } | { available: false; reason: string };

declare module 'vitest' {
  export interface ProvidedContext {
    glance: GlanceSetup;
  }
}

/** Glance's two local drivers. */
export type GlanceDriverName = 'sqlite' | 'xattr';

/** A record of Glance's `get_cached_images()` (xattr: integer seconds; sqlite: float). */
export interface GlanceRecord {
  image_id: string;
  hits: number;
  last_accessed: number;
  last_modified: number;
  size: number;
}

/** What Glance sees in a cache directory, in one request. */
export interface GlanceListing {
  /** `get_cached_images()`, sorted by id. */
  images: GlanceRecord[];
  /** `get_cache_size()`. */
  size: number;
  /** The driver's `get_least_recently_accessed()`: `[id, size]`, or null. */
  lru: [string, number] | null;
  /** `get_hit_count(id)` of every listed id. */
  hits: Record<string, number>;
  /** `get_queued_images()`. */
  queued: string[];
}

/** An error Glance's code raised, with its Python type and traceback. */
export class GlanceError extends Error {
  constructor(
    readonly pythonType: string,
    message: string,
    readonly traceback: string,
  ) {
    super(`Glance raised ${pythonType}: ${message}`);
    this.name = 'GlanceError';
  }
}

/**
 * Makes Glance's code runnable: unless `CACHE_TEST_GLANCE=0`, runs
 * {@link INSTALL_SCRIPT} (a no-op when it is installed), then asks the Python
 * driver for Glance's version. Never throws: a failure is the reason.
 */
export async function ensureGlance(env: NodeJS.ProcessEnv = process.env): Promise<GlanceSetup> {
  if (env[GLANCE_ENV] === '0') return { available: false, reason: `${GLANCE_ENV}=0: Glance's code is not run` };
  const install = await run('bash', [INSTALL_SCRIPT]);
  if (install.code !== 0) {
    const said = install.stderr.trim().split('\n').pop() ?? '';
    return { available: false, reason: said.replace(/^install-glance: /, '') || `${INSTALL_SCRIPT} exited with ${install.code}` };
  }
  const python = GlancePython.start();
  try {
    const { glance } = await python.request<{ glance: string; python: string }>({ op: 'version' });
    return { available: true, version: glance };
  } catch (error) {
    return { available: false, reason: `python3-glance is installed but does not run: ${(error as Error).message.split('\n')[0]}` };
  } finally {
    await python.close();
  }
}

function run(command: string, args: string[]): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (text: string) => {
      stderr += text;
      process.stderr.write(text); // the installer's progress lines, for whoever watches the run
    });
    child.on('error', (error) => resolve({ code: 127, stderr: `${stderr}\n${error.message}` }));
    child.on('close', (code) => resolve({ code: code ?? 1, stderr }));
  });
}

interface Pending {
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
}

/**
 * One `/usr/bin/python3 glance_driver.py` process. Requests are answered in
 * order, one JSON line each; the process keeps a Glance `ImageCache` per
 * (directory, driver).
 */
export class GlancePython {
  readonly #child: ChildProcessWithoutNullStreams;
  readonly #pending: Pending[] = [];
  #stderr = '';
  #exited: Promise<void>;
  #gone: Error | undefined;

  private constructor(script: string, args: readonly string[]) {
    const name = basename(script);
    this.#child = spawn(GLANCE_PYTHON, [script, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.#child.stderr.setEncoding('utf8').on('data', (text: string) => {
      this.#stderr = (this.#stderr + text).slice(-4000);
    });
    createInterface({ input: this.#child.stdout }).on('line', (line) => {
      const waiter = this.#pending.shift();
      if (waiter === undefined) return;
      let answer: { ok: boolean; result?: unknown; type?: string; error?: string; traceback?: string };
      try {
        answer = JSON.parse(line) as typeof answer;
      } catch {
        waiter.reject(new Error(`${name} wrote a line that is not JSON: ${line.slice(0, 200)}`));
        return;
      }
      if (answer.ok) waiter.resolve(answer.result);
      else waiter.reject(new GlanceError(answer.type ?? 'Exception', answer.error ?? '', answer.traceback ?? ''));
    });
    this.#exited = new Promise((resolve) => {
      const fail = (error: Error) => {
        this.#gone = error;
        for (const waiter of this.#pending.splice(0)) waiter.reject(error);
        resolve();
      };
      this.#child.on('error', (error) => fail(new Error(`cannot run ${GLANCE_PYTHON} ${script}: ${error.message}`)));
      this.#child.on('exit', (code, signal) =>
        fail(new Error(`${name} exited (${signal ?? code})${this.#stderr ? `: ${this.#stderr.trim()}` : ''}`)),
      );
    });
  }

  /**
   * Starts the Python process (Glance is imported once, on start): by default
   * `glance_driver.py`; `script` runs another one that adds operations of its
   * own on the same protocol (it imports `glance_driver.py`, whose path it is
   * given as its first argument, and calls its `main({ op: fn })`).
   */
  static start(options: { script?: string } = {}): GlancePython {
    return options.script === undefined ? new GlancePython(GLANCE_DRIVER_SCRIPT, []) : new GlancePython(options.script, [GLANCE_DRIVER_SCRIPT]);
  }

  /** The Python process's id (e.g. for a benchmark's check that the machine is otherwise quiet). */
  get pid(): number | undefined {
    return this.#child.pid;
  }

  /** Sends one request and resolves with its result; Glance's exceptions reject as {@link GlanceError}. */
  request<T>(request: Record<string, unknown>): Promise<T> {
    if (this.#gone !== undefined) return Promise.reject(this.#gone);
    return new Promise<T>((resolve, reject) => {
      this.#pending.push({ resolve: resolve as (value: unknown) => void, reject });
      this.#child.stdin.write(`${JSON.stringify(request)}\n`);
    });
  }

  /** Glance's `ImageCache` on `dir` with one of its drivers. */
  cache(dir: string, driver: GlanceDriverName, options: { maxSize?: number } = {}): GlanceCache {
    return new GlanceCache(this, dir, driver, options.maxSize);
  }

  /** Ends the process (closing its stdin) and waits for it. */
  async close(): Promise<void> {
    if (this.#gone === undefined) this.#child.stdin.end();
    await this.#exited;
  }
}

/** Glance's `ImageCache` facade on one directory with one driver, as glance-api configures it. */
export class GlanceCache {
  constructor(
    readonly python: GlancePython,
    readonly dir: string,
    readonly driver: GlanceDriverName,
    readonly maxSize?: number,
  ) {}

  #call<T>(op: string, args: Record<string, unknown> = {}): Promise<T> {
    const config = this.maxSize === undefined ? {} : { max_size: this.maxSize };
    return this.python.request<T>({ dir: this.dir, driver: this.driver, ...config, op, ...args });
  }

  /** Builds and configures the facade (directories; sqlite: the table; xattr: the probe). */
  configure(): Promise<{ driver: string }> {
    return this.#call('configure');
  }

  /** `cache_image_iter(id, [data])`: true when Glance cached it. */
  async cache(id: string, data: string): Promise<boolean> {
    const { cached, is_cached } = await this.#call<{ cached: boolean; is_cached: boolean }>('cache', { id, data });
    return cached && is_cached;
  }

  /** `open_for_read(id)` read to the end (a hit for Glance). */
  async read(id: string): Promise<string> {
    return (await this.#call<{ data: string }>('read', { id })).data;
  }

  /** Everything Glance's listings say, in one request. */
  list(): Promise<GlanceListing> {
    return this.#call('list');
  }

  /** `prune()` with this cache's `image_cache_max_size`: `[files, bytes]`. */
  prune(): Promise<[number, number]> {
    return this.#call('prune');
  }

  /** `delete_all_cached_images()`: how many files Glance deleted. */
  deleteAll(): Promise<number> {
    return this.#call('delete_all');
  }

  /** `delete_cached_image(id)`. */
  async delete(id: string): Promise<void> {
    await this.#call('delete', { id });
  }

  /** `queue_image(id)`. */
  queue(id: string): Promise<boolean> {
    return this.#call('queue', { id });
  }

  /** `clean(stall_time)`. */
  async clean(stallTime?: number): Promise<void> {
    await this.#call('clean', { stall_time: stallTime ?? null });
  }
}

/**
 * `it(name, fn)` when Glance runs here; otherwise the test is registered as
 * skipped with `[skipped: <reason>]` at the end of its title.
 */
export function glanceIt(setup: GlanceSetup, name: string, fn: () => Promise<void>, timeout?: number): void {
  if (setup.available) it(name, fn, timeout);
  else it.skip(`${name} [skipped: ${setup.reason}]`, () => undefined);
}
