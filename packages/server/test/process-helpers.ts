// Helpers of the tests that run the server as users do: `image-cache serve` processes (the CLI's
// built binary) in front of a real HTTP origin, driven by real HTTP clients (curl, wget, aria2c)
// and node:http. Additive to helpers.ts (whose TestOrigin other tests use): the origin here adds
// held, throttled and drip-fed bodies and records each request's remote port.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer, request, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { it } from 'vitest';

/** The CLI's binary, as users run it; its `serve` is `@cache/server` on a cache directory. */
export const CLI_BIN = join(import.meta.dirname, '..', '..', 'cli', 'bin', 'image-cache.js');

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Random (incompressible) image bytes. */
export function randomImage(size: number): Buffer {
  const data = Buffer.allocUnsafe(size);
  // A cheap PRNG (xorshift32): random-looking bytes without the cost of crypto for many MiB.
  let x = (size ^ 0x9e3779b9) >>> 0 || 1;
  for (let i = 0; i + 4 <= size; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    data.writeUInt32LE(x, i);
  }
  for (let i = size - (size % 4); i < size; i++) data[i] = i & 0xff;
  return data;
}

// ---------------------------------------------------------------------------
// Tools

/** Why `tool` cannot run here (it is not installed), or undefined when it can. */
export function missingTool(tool: string): string | undefined {
  const probe = spawnSync(tool, ['--version'], { stdio: 'ignore' });
  if (probe.error === undefined) return undefined;
  const why = (probe.error as NodeJS.ErrnoException).code === 'ENOENT' ? 'is not installed' : `does not run (${probe.error.message})`;
  return `${tool} ${why}; scripts/test-tools.sh installs it as root with apt-get`;
}

/**
 * `it(title, fn)` when every tool in `tools` is installed; otherwise the test is
 * registered as skipped with the reason at the end of its title
 * (`[skipped: <reason>]`, which the repository's test summary counts by reason).
 */
export function itWithTools(tools: readonly string[], title: string, fn: () => Promise<void>, timeout?: number): void {
  const reasons = tools.map(missingTool).filter((reason) => reason !== undefined);
  if (reasons.length > 0) it.skip(`${title} [skipped: ${reasons.join('; ')}]`, () => undefined);
  else it(title, fn, timeout);
}

export interface ToolResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs a client tool to its end. Its environment has only PATH and a HOME of
 * `cwd`: no proxy variables, no user configuration (~/.curlrc, ~/.wgetrc).
 */
export function runTool(command: string, args: readonly string[], cwd: string): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd, env: { PATH: process.env['PATH'] ?? '', HOME: cwd }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

// ---------------------------------------------------------------------------
// A gate: what the tests hold an origin body with

/** A promise the test opens: the origin holds a body at a gate until then. */
export class Gate {
  readonly opened: Promise<void>;
  #open!: () => void;
  #isOpen = false;
  constructor() {
    this.opened = new Promise((resolve) => (this.#open = resolve));
  }
  open(): void {
    this.#isOpen = true;
    this.#open();
  }
  get isOpen(): boolean {
    return this.#isOpen;
  }
}

// ---------------------------------------------------------------------------
// The origin

/** How {@link ClientOrigin} serves one id (always 200 with Content-Length; Range is ignored, as by many origins). */
export interface OriginImageSpec {
  data: Buffer;
  /** Sent with the headers before the {@link gate}; the rest waits for it. @default 0 */
  head?: number;
  /** Holds the body after {@link head} bytes until the test opens it. */
  gate?: Gate;
  /** Only the first this many requests of the id wait at the gate (e.g. 1: a takeover's request goes through). @default all */
  gatedRequests?: number;
  /** Throttle: after the gate, the body goes out in {@link chunk}-byte writes at about this many bytes per second. */
  bytesPerSecond?: number;
  /** Size of the drip-fed writes. @default 256 KiB */
  chunk?: number;
}

/** One request the origin received. */
export interface OriginRequest {
  id: string;
  /** 1 for the first request of this id, 2 for the next... */
  ordinal: number;
  /** The requester's port: tells which process's connection it is. */
  remotePort: number;
  headers: IncomingHttpHeaders;
  /** Body bytes written so far. */
  sent: number;
  /** Whether the whole body was written. */
  finished: boolean;
  /** Settles when the response is over (ended, or the connection closed). */
  closed: Promise<void>;
}

/**
 * A real HTTP origin on 127.0.0.1 serving `/images/<id>` from {@link images}
 * (404 for others), counting and recording every request. A body can be held
 * at a {@link Gate} (after a first part) and throttled (drip-fed).
 */
export class ClientOrigin {
  readonly images = new Map<string, OriginImageSpec>();
  readonly requests: OriginRequest[] = [];
  readonly #server: Server = createServer((req, res) => void this.#handle(req, res));
  #arrivals: { id: string; count: number; resolve: () => void }[] = [];
  url = '';

  static async start(): Promise<ClientOrigin> {
    const origin = new ClientOrigin();
    origin.#server.listen(0, '127.0.0.1');
    await once(origin.#server, 'listening');
    origin.url = `http://127.0.0.1:${(origin.#server.address() as AddressInfo).port}`;
    return origin;
  }

  /** The `{id}` URL template for `--origin`. */
  get template(): string {
    return `${this.url}/images/{id}`;
  }

  /** Requests received for `id`. */
  count(id: string): number {
    return this.requests.filter((r) => r.id === id).length;
  }

  /** Resolves once `count` requests of `id` have arrived (no polling, no clock). */
  whenRequested(id: string, count = 1): Promise<void> {
    if (this.count(id) >= count) return Promise.resolve();
    return new Promise((resolve) => this.#arrivals.push({ id, count, resolve }));
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const id = decodeURIComponent(/^\/images\/([^/?]+)$/.exec(req.url ?? '')?.[1] ?? '');
    let onClosed!: () => void;
    const record: OriginRequest = {
      id,
      ordinal: this.count(id) + 1,
      remotePort: req.socket.remotePort ?? 0,
      headers: req.headers,
      sent: 0,
      finished: false,
      closed: new Promise((resolve) => (onClosed = resolve)),
    };
    res.on('close', onClosed);
    this.requests.push(record);
    const ready = this.#arrivals.filter((a) => a.id === id && a.count <= this.count(id));
    this.#arrivals = this.#arrivals.filter((a) => !ready.includes(a));
    for (const arrival of ready) arrival.resolve();

    const spec = this.images.get(id);
    if (spec === undefined) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('no such image');
      return;
    }
    const { data } = spec;
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': data.length });
    const write = async (part: Buffer): Promise<boolean> => {
      if (res.destroyed) return false;
      record.sent += part.length;
      if (!res.write(part)) await drainedOrClosed(res);
      return !res.destroyed;
    };
    let offset = 0;
    const head = Math.min(spec.head ?? 0, data.length);
    if (head > 0) {
      if (!(await write(data.subarray(0, head)))) return;
      offset = head;
    } else res.flushHeaders();
    if (spec.gate !== undefined && record.ordinal <= (spec.gatedRequests ?? Number.POSITIVE_INFINITY)) {
      await Promise.race([spec.gate.opened, record.closed]);
    }
    const chunk = spec.chunk ?? 256 * 1024;
    while (offset < data.length) {
      const end = spec.bytesPerSecond === undefined ? data.length : Math.min(offset + chunk, data.length);
      if (!(await write(data.subarray(offset, end)))) return;
      // Drip-feeding paces the origin only; no test measures it.
      if (spec.bytesPerSecond !== undefined && end < data.length) await sleep(Math.ceil(((end - offset) / spec.bytesPerSecond) * 1000));
      offset = end;
    }
    record.finished = true;
    res.end();
  }

  async close(): Promise<void> {
    for (const spec of this.images.values()) spec.gate?.open();
    this.#server.closeAllConnections();
    this.#server.close();
    await once(this.#server, 'close');
  }
}

/** Resolves once `res` can take more (drain) or is gone (close), leaving no listener behind. */
function drainedOrClosed(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

// ---------------------------------------------------------------------------
// `image-cache serve` processes

/** A running `image-cache serve` child process. */
export interface ServeProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  /** Its base URL, `http://127.0.0.1:<port>`. */
  readonly url: string;
  readonly port: number;
  /** Settles with its exit code (or signal) once it has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  output(): { stdout: string; stderr: string };
}

const running = new Set<ChildProcess>();

/** Throws, saying what to do, when the CLI has not been built (its tests need `dist/`). */
export function assertCliBuilt(): void {
  const dist = join(import.meta.dirname, '..', '..', 'cli', 'dist', 'index.js');
  if (!existsSync(dist)) throw new Error(`${dist} is missing: build the packages first (pnpm build at the repository root)`);
}

/**
 * Starts `image-cache --cache-dir <cacheDir> serve --port 0 --origin <origin>`
 * with the workers off (no prune, clean or prefetch runs), as one process
 * unless `args` has `--workers`, and resolves once it
 * printed the URL it listens on. {@link stopAll} kills what is left.
 */
export async function startServe(options: { cacheDir: string; origin: string; args?: readonly string[] }): Promise<ServeProcess> {
  assertCliBuilt();
  const child = spawn(
    process.execPath,
    [
      CLI_BIN,
      '--cache-dir',
      options.cacheDir,
      'serve',
      '--port',
      '0',
      '--origin',
      options.origin,
      '--prune-interval',
      '0',
      '--clean-interval',
      '0',
      '--prefetch-interval',
      '0',
      // One process unless a test asks for workers (`serve --workers N`, default: the number of cores).
      ...(options.args?.includes('--workers') === true ? [] : ['--workers', '1']),
      ...(options.args ?? []),
    ],
    { env: { PATH: process.env['PATH'] ?? '' }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  running.add(child);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => {
      running.delete(child);
      resolve({ code, signal });
    }),
  );
  let stdout = '';
  let stderr = '';
  const url = await new Promise<string>((resolve, reject) => {
    const look = () => {
      const match = /serving .* on (http:\/\/127\.0\.0\.1:\d+)\n/.exec(stderr);
      if (match?.[1] !== undefined) resolve(match[1]);
    };
    child.stdout?.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      look();
    });
    void exited.then(({ code, signal }) => reject(new Error(`image-cache serve exited (${code ?? signal}) before listening:\n${stderr}`)));
  });
  return {
    child,
    pid: child.pid as number,
    url,
    port: Number(new URL(url).port),
    exited,
    output: () => ({ stdout, stderr }),
  };
}

/** SIGKILLs every serve process still running and waits for them to exit (for afterEach/afterAll). */
export async function stopAll(): Promise<void> {
  const children = [...running];
  for (const child of children) child.kill('SIGKILL');
  await Promise.all(children.map((child) => (child.exitCode !== null || child.signalCode !== null ? undefined : once(child, 'exit'))));
}

// ---------------------------------------------------------------------------
// Downloads with node:http

/** How one download ended. */
export interface DownloadResult {
  status: number;
  headers: IncomingHttpHeaders;
  /** Body bytes received. */
  bytes: number;
  /** sha256 of the body bytes received. */
  sha256: string;
  /** Whether the response ended properly (the whole Content-Length, or the last chunk). */
  complete: boolean;
  /** Set when the request or the response failed. */
  error?: string;
}

/** A download under way. */
export interface Download {
  /** Resolves once the request has been written out (the server may not have read it yet). */
  sent: Promise<void>;
  /** Resolves once the first body byte arrived (never, if none does: race it with {@link done}). */
  firstBytes: Promise<void>;
  /** Settles (never rejects) when the download is over. */
  done: Promise<DownloadResult>;
}

/** GETs `url` with node:http (a connection of its own), hashing the body as it comes. */
export function startDownload(url: string, headers: Record<string, string> = {}): Download {
  let sentResolve!: () => void;
  let firstResolve!: () => void;
  const sent = new Promise<void>((resolve) => (sentResolve = resolve));
  const firstBytes = new Promise<void>((resolve) => (firstResolve = resolve));
  const done = new Promise<DownloadResult>((resolve) => {
    const hash = createHash('sha256');
    let bytes = 0;
    const req = request(url, { headers: { connection: 'close', ...headers } }, (res) => {
      let settled = false;
      const finish = (error?: string) => {
        if (settled) return;
        settled = true;
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          bytes,
          sha256: hash.digest('hex'),
          complete: res.complete,
          ...(error === undefined ? {} : { error }),
        });
      };
      res.on('data', (chunk: Buffer) => {
        if (bytes === 0) firstResolve();
        bytes += chunk.length;
        hash.update(chunk);
      });
      res.on('end', () => finish());
      res.on('error', (error) => finish(error.message));
      res.on('aborted', () => finish('aborted'));
      res.on('close', () => finish(res.complete ? undefined : 'closed before the end'));
    });
    req.on('finish', sentResolve);
    req.on('error', (error) => resolve({ status: 0, headers: {}, bytes, sha256: hash.digest('hex'), complete: false, error: error.message }));
    req.end();
  });
  return { sent, firstBytes, done };
}

/** Whether what a download received is `data` or the start of it (a cut response): never other bytes. */
export function isPrefixOf(result: DownloadResult, data: Buffer): boolean {
  return result.bytes <= data.length && sha256(data.subarray(0, result.bytes)) === result.sha256;
}

// ---------------------------------------------------------------------------
// Looking at the system

/** Client connections currently established to `port` on this host (from /proc/net/tcp and tcp6; Linux). */
export async function establishedConnections(port: number): Promise<number> {
  let count = 0;
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    const text = await readFile(table, 'utf8').catch(() => '');
    for (const line of text.split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/);
      // fields[1]: local address:port (hex), fields[3]: state (01 = ESTABLISHED)
      const localPort = Number.parseInt(fields[1]?.split(':')[1] ?? '', 16);
      if (localPort === port && fields[3] === '01') count++;
    }
  }
  return count;
}

