/**
 * The processes of the HTTP figures (9-12): the throttled origin
 * (http/origin.js), `image-cache serve` servers, the concurrent-clients
 * process (http/clients.js), curl and aria2c. Every process started here is
 * tracked: its CPU does not count as "other processes" disturbing a run (it
 * works for our figures), and it is killed when the suite ends
 * ({@link stopAll}), when this process exits (an `exit` handler), and, as a
 * backstop for a measuring process that died of a signal, by main.ts, which
 * kills run.js's whole process group.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { createRequire } from 'node:module';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { forgetProcessTree, ignoreProcessTree } from '../measure.js';
import type { ClientsJob, ClientsResult } from './clients.js';
import type { OriginIdStats } from './origin.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const ORIGIN_SCRIPT = join(HERE, 'origin.js');
const CLIENTS_SCRIPT = join(HERE, 'clients.js');
const NODE_FLOOR_SCRIPT = join(HERE, 'node-floor.js');

/** The `image-cache` binary of the workspace (packages/cli/bin/image-cache.js, built by `pnpm bench`). */
export const CLI_BIN = join(dirname(createRequire(import.meta.url).resolve('@cache/cli/package.json')), 'bin', 'image-cache.js');

const running = new Set<ChildProcess>();

/** Tracks `child` (see the module's description): killed with the others, its CPU not counted as other processes'. */
export function track(child: ChildProcess): ChildProcess {
  running.add(child);
  if (child.pid !== undefined) ignoreProcessTree(child.pid);
  child.once('exit', () => {
    running.delete(child);
    if (child.pid !== undefined) forgetProcessTree(child.pid);
  });
  return child;
}

const alive = (child: ChildProcess) => child.exitCode === null && child.signalCode === null;

/** Kills every process this module started that still runs (SIGKILL). Synchronous: safe in an `exit` handler. */
export function killAll(): void {
  for (const child of running) if (alive(child)) child.kill('SIGKILL');
}
process.on('exit', killAll);

/** Stops `child`: `signal` first, SIGKILL after `graceMs`; resolves once it has exited. */
export function stopProcess(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', graceMs = 5_000): Promise<void> {
  if (!alive(child)) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill(signal);
  });
}

/** Stops every process this module started (servers get a clean SIGTERM first). */
export async function stopAll(): Promise<void> {
  await Promise.all([...running].map((child) => stopProcess(child)));
}

function lastLines(text: string, lines = 5): string {
  return text.trim().split('\n').slice(-lines).join(' / ');
}

// ---- tools --------------------------------------------------------------------------------

/** The command-line clients the figures name, and the Debian package of each. */
export const TOOLS = { curl: 'curl', aria2c: 'aria2', nginx: 'nginx', wrk: 'wrk' } as const;
export type Tool = keyof typeof TOOLS;

function onPath(command: string): string | undefined {
  // nginx lives in /usr/sbin, which a non-login PATH may lack.
  for (const dir of [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/usr/local/sbin']) {
    if (dir === '') continue;
    const path = join(dir, command);
    try {
      accessSync(path, constants.X_OK);
      return path;
    } catch {
      // not here
    }
  }
  return undefined;
}

function run(command: string, args: readonly string[], timeoutMs: number): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = track(
      spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } }),
    );
    let output = '';
    child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

const toolPaths = new Map<Tool, Promise<{ path: string } | { reason: string }>>();

/**
 * Finds `tool` on the PATH; as root, installs the missing ones' packages with
 * `apt-get install -y --no-install-recommends` (after an `apt-get update`
 * when the first attempt fails), the way the bench installs PostgreSQL.
 * Once per run; the answer is the path, or why there is none.
 */
export function ensureTool(tool: Tool): Promise<{ path: string } | { reason: string }> {
  let found = toolPaths.get(tool);
  if (found === undefined) {
    found = (async () => {
      const path = onPath(tool);
      if (path !== undefined) return { path };
      const pkg = TOOLS[tool];
      if (process.getuid?.() !== 0) return { reason: `${tool} is not installed, and not root, so cannot apt-get install ${pkg}` };
      if (onPath('apt-get') === undefined) return { reason: `${tool} is not installed and there is no apt-get to install ${pkg}` };
      process.stdout.write(`  installing ${pkg} with apt-get (for ${tool})\n`);
      const install = ['install', '-y', '-q', '--no-install-recommends', pkg];
      let result = await run('apt-get', install, 300_000).catch((error: Error) => ({ code: -1, output: error.message }));
      if (result.code !== 0) {
        await run('apt-get', ['update', '-q'], 300_000).catch(() => undefined);
        result = await run('apt-get', install, 300_000).catch((error: Error) => ({ code: -1, output: error.message }));
      }
      const installed = onPath(tool);
      if (installed !== undefined) return { path: installed };
      return { reason: `${tool} is not installed and apt-get install ${pkg} failed: ${lastLines(result.output, 1)}` };
    })();
    toolPaths.set(tool, found);
  }
  return found;
}

// ---- the origin ---------------------------------------------------------------------------

export interface BenchOrigin {
  port: number;
  /** The URL template of images of `size` bytes sent at `rate` bytes/s (per request). */
  template(size: number, rate: number): string;
  /** The direct URL of one image (what the server fetches). */
  url(id: string, size: number, rate: number): string;
  stats(id: string): Promise<OriginIdStats>;
  stop(): Promise<void>;
}

/**
 * Starts a bench script of ours in a tracked child process with an IPC
 * channel, and waits (30 s at most) for the `{ port }` it sends once it
 * listens. `what` names it in the errors.
 */
async function startListening(script: string, args: readonly string[], what: string): Promise<{ child: ChildProcess; port: number }> {
  const child = track(spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what} did not start within 30 s`)), 30_000);
    child.once('message', (message: { port: number }) => {
      clearTimeout(timer);
      resolve(message.port);
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited (${signal ?? code}) before listening`));
    });
  });
  return { child, port };
}

/** Starts the throttled origin (http/origin.js) in a child process. */
export async function startOrigin(): Promise<BenchOrigin> {
  const { child, port } = await startListening(ORIGIN_SCRIPT, [], 'the bench origin');
  const base = `http://127.0.0.1:${port}`;
  const query = (size: number, rate: number) => `size=${size}&rate=${Math.round(rate)}`;
  return {
    port,
    template: (size, rate) => `${base}/images/{id}?${query(size, rate)}`,
    url: (id, size, rate) => `${base}/images/${encodeURIComponent(id)}?${query(size, rate)}`,
    async stats(id) {
      const response = await fetch(`${base}/_stats?id=${encodeURIComponent(id)}`);
      return (await response.json()) as OriginIdStats;
    },
    stop: () => stopProcess(child),
  };
}

// ---- image-cache serve ------------------------------------------------------------------------

export interface BenchServer {
  url: string;
  child: ChildProcess;
  /** `<url>/images/<id>`. */
  image(id: string): string;
  stop(): Promise<void>;
}

/**
 * Starts `image-cache serve` (the workspace's CLI, sqlite driver) on
 * `cacheDir` with `origin` as its origin template, on a free port of
 * 127.0.0.1, with prune, clean and prefetch timers off (no background work
 * during a measurement); resolves with the URL it prints (`listening on
 * <url>`), as `workers` processes (`--workers`, default 1). The environment's `IMAGE_CACHE_*` settings are dropped and the
 * working directory is `cwd`, so no configuration of the machine applies.
 */
export async function startServer(options: { cacheDir: string; origin?: string; cwd: string; workers?: number }): Promise<BenchServer> {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) if (!key.startsWith('IMAGE_CACHE_') && key !== 'DATABASE_URL') env[key] = value;
  const args = [
    CLI_BIN,
    '--cache-dir', options.cacheDir,
    '--driver', 'sqlite',
    'serve',
    ...(options.origin === undefined ? [] : ['--origin', options.origin]),
    '--host', '127.0.0.1',
    '--port', '0',
    '--prune-interval', '0',
    '--clean-interval', '0',
    '--prefetch-interval', '0',
    '--shutdown-timeout', '1s',
    '--workers', String(options.workers ?? 1),
  ];
  const child = track(spawn(process.execPath, args, { cwd: options.cwd, env, stdio: ['ignore', 'pipe', 'pipe'] }));
  let stdout = '';
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-8192);
  });
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`image-cache serve did not print its URL within 30 s: ${lastLines(stderr)}`)), 30_000);
    child.stdout?.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      const match = /listening on (\S+)/.exec(stdout);
      if (match !== null) {
        clearTimeout(timer);
        resolve(match[1] as string);
      }
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`image-cache serve exited (${signal ?? code}) before listening: ${lastLines(stderr)}`));
    });
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
  return { url, child, image: (id) => `${url}/images/${encodeURIComponent(id)}`, stop: () => stopProcess(child) };
}

// ---- the Node floor (figure 16) ------------------------------------------------------------------

/**
 * Starts the Node floor of figure 16 (http/node-floor.js: a node:cluster
 * primary and `workers` bare `node:http` workers serving the files of `dir`
 * under `/images/<id>`) on a free port of 127.0.0.1.
 */
export async function startNodeFloor(options: { dir: string; workers: number }): Promise<BenchServer> {
  const { child, port } = await startListening(NODE_FLOOR_SCRIPT, [options.dir, String(options.workers)], 'the Node floor server');
  const url = `http://127.0.0.1:${port}`;
  return { url, child, image: (id) => `${url}/images/${encodeURIComponent(id)}`, stop: () => stopProcess(child) };
}

// ---- clients ----------------------------------------------------------------------------------

/** Runs the concurrent clients (http/clients.js) in a child process: one GET per URL, all at once. */
export async function runClients(urls: readonly string[], timeoutMs: number): Promise<ClientsResult> {
  const child = track(spawn(process.execPath, [CLIENTS_SCRIPT], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
  try {
    return await new Promise<ClientsResult>((resolve, reject) => {
      child.once('message', (result: ClientsResult) => resolve(result));
      child.once('exit', (code, signal) => reject(new Error(`the clients process exited (${signal ?? code}) without a result`)));
      child.once('error', reject);
      const job: ClientsJob = { urls: [...urls], timeoutMs };
      child.send(job);
    });
  } finally {
    await stopProcess(child, 'SIGKILL', 0);
  }
}

/** What one command-line client run gave. */
export interface ToolRun {
  /** Wall-clock ms from spawn to exit, as seen by this process. */
  ms: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  /** stdout (e.g. curl's `-w` line) and stderr, trimmed. */
  stdout: string;
  stderr: string;
}

/** Runs `command` (curl, aria2c) to its end and times it; `timeoutMs` or `signal` kills it. */
export function runTool(command: string, args: readonly string[], timeoutMs: number, signal?: AbortSignal): Promise<ToolRun> {
  return new Promise((resolve, reject) => {
    const start = performance.now();
    const child = track(spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] }));
    const kill = () => child.kill('SIGKILL');
    signal?.addEventListener('abort', kill, { once: true });
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => {
      stderr = (stderr + chunk.toString()).slice(-8192);
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.once('exit', (code, exitSignal) => {
      const ms = performance.now() - start;
      clearTimeout(timer);
      signal?.removeEventListener('abort', kill);
      // 'close' would also wait for the pipes; the output is complete once both have ended.
      let open = 2;
      const done = () => {
        if (--open === 0) resolve({ ms, code, signal: exitSignal, stdout: stdout.trim(), stderr: stderr.trim() });
      };
      if (child.stdout === null || child.stdout.readableEnded) done();
      else child.stdout.once('end', done);
      if (child.stderr === null || child.stderr.readableEnded) done();
      else child.stderr.once('end', done);
    });
  });
}

/** curl's `-w` figures for one download. */
export interface CurlRun extends ToolRun {
  status: number;
  bytes: number;
  /** curl's time_starttransfer and time_total, ms. */
  firstByteMs: number;
  totalMs: number;
}

/** `curl -sS -o <output> [--limit-rate R] <url>` with its timings (`-w`); `signal` kills it. */
export async function curl(
  path: string,
  url: string,
  options: { output?: string; limitRate?: string; timeoutMs: number; signal?: AbortSignal },
): Promise<CurlRun> {
  const args = ['-sS', '-o', options.output ?? '/dev/null', '-w', '%{http_code} %{size_download} %{time_starttransfer} %{time_total}'];
  if (options.limitRate !== undefined) args.push('--limit-rate', options.limitRate);
  args.push(url);
  const result = await runTool(path, args, options.timeoutMs, options.signal);
  const [status = NaN, bytes = NaN, start = NaN, total = NaN] = result.stdout.split(/\s+/).map(Number);
  return { ...result, status, bytes, firstByteMs: start * 1000, totalMs: total * 1000 };
}

/** What one `wrk` run gave. */
export interface WrkRun {
  /** Requests completed in the run, and its length as wrk reports it (s). */
  requests: number;
  seconds: number;
  /** wrk's `Requests/sec`. */
  requestsPerSecond: number;
  /** Socket errors and non-2xx/3xx responses wrk reported, if any. */
  errors?: string;
}

/**
 * `wrk -t<threads> -c<connections> -d<seconds>s <url>`: keep-alive
 * connections, each sending its next request as soon as the previous
 * response is in, for a fixed duration.
 */
export async function wrk(path: string, url: string, options: { connections: number; threads: number; seconds: number }): Promise<WrkRun> {
  const args = [`-t${options.threads}`, `-c${options.connections}`, `-d${options.seconds}s`, '--timeout', '30s', url];
  const result = await runTool(path, args, (options.seconds + 60) * 1000);
  const done = /(\d+) requests in ([\d.]+)(us|ms|s|m)\b/.exec(result.stdout);
  const rate = /Requests\/sec:\s+([\d.]+)/.exec(result.stdout);
  if (result.code !== 0 || done === null || rate === null) {
    throw new Error(`wrk ${args.join(' ')} failed (${result.signal ?? result.code}): ${lastLines(result.stdout + '\n' + result.stderr)}`);
  }
  const scale = { us: 1e-6, ms: 1e-3, s: 1, m: 60 }[done[3] as 'us' | 'ms' | 's' | 'm'];
  const errors = [/Socket errors:[^\n]*/.exec(result.stdout)?.[0], /Non-2xx or 3xx responses:[^\n]*/.exec(result.stdout)?.[0]].filter((e) => e !== undefined);
  return {
    requests: Number(done[1]),
    seconds: Number(done[2]) * scale,
    requestsPerSecond: Number(rate[1]),
    ...(errors.length === 0 ? {} : { errors: errors.join('; ') }),
  };
}
