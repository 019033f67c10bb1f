import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, request, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ImageCache, type ImageCacheOptions } from '@cache/core';
import { SqliteDriver } from '@cache/driver-sqlite';
import { createOrigin } from '@cache/origin';
import { createCacheServer, type CacheServer, type CacheServerOptions } from '../src/index.js';

/** Deterministic bytes for an image id (different ids, different bytes). */
export function imageBytes(id: string, size: number): Buffer {
  const seed = [...id].reduce((sum, c) => sum + c.charCodeAt(0), 0);
  const out = Buffer.allocUnsafe(size);
  for (let i = 0; i < size; i++) out[i] = (i * 31 + seed) % 251;
  return out;
}

/** How the test origin answers one id. */
export type OriginBehaviour =
  /**
   * The whole image. With `delayMs` or `until`, the headers go out at once and
   * the body after that many ms, or once `until` resolves (a test that must
   * know the response is still in flight holds it with `until`). With
   * `until` and `first`, the first `first` bytes go out with the headers.
   * `headers` are added to the response (a `repr-digest`...). `closeDelimited`:
   * no Content-Length and not chunked, the end of the body is the end of the
   * connection (written on the raw socket).
   */
  | {
      kind: 'ok';
      data: Buffer;
      chunked?: boolean;
      closeDelimited?: boolean;
      delayMs?: number;
      until?: Promise<unknown>;
      first?: number;
      headers?: Record<string, string>;
    }
  /**
   * Sends `after` bytes (with Content-Length of the whole unless chunked),
   * then cuts the connection once they have left: at once, or with `manual`
   * when the test calls {@link TestOrigin.cut} (e.g. once its client has the
   * response headers, so that the cut is surely mid-body for the client too).
   */
  | { kind: 'cut'; data: Buffer; after: number; chunked?: boolean; manual?: boolean }
  /** Sends `after` bytes, then waits forever (until the connection is closed). */
  | { kind: 'stall'; data: Buffer; after: number }
  /** Sends nothing, not even the headers, until the connection is closed. */
  | { kind: 'silent' }
  | { kind: 'status'; status: number; headers?: Record<string, string> };

/** A real HTTP origin on 127.0.0.1 serving `/images/<id>`, counting requests per id. */
export class TestOrigin {
  readonly images = new Map<string, OriginBehaviour>();
  readonly requests = new Map<string, number>();
  readonly server: Server = createServer((req, res) => this.#handle(req, res));
  /** Per id: how to cut each `manual` cut response that is waiting for {@link cut}. */
  readonly #cuttable = new Map<string, Set<() => void>>();
  url = '';

  static async start(): Promise<TestOrigin> {
    const origin = new TestOrigin();
    origin.server.listen(0, '127.0.0.1');
    await once(origin.server, 'listening');
    origin.url = `http://127.0.0.1:${(origin.server.address() as AddressInfo).port}`;
    return origin;
  }

  /** The `{id}` URL template for `createOrigin`. */
  get template(): string {
    return `${this.url}/images/{id}`;
  }

  count(id: string): number {
    return this.requests.get(id) ?? 0;
  }

  /**
   * Cuts every `manual` cut response of `id` that is waiting (each as soon as
   * its bytes have left); returns how many there were.
   */
  cut(id: string): number {
    const waiting = [...(this.#cuttable.get(id) ?? [])];
    this.#cuttable.delete(id);
    for (const cut of waiting) cut();
    return waiting.length;
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    const id = decodeURIComponent((req.url ?? '').replace(/^\/images\//, ''));
    this.requests.set(id, this.count(id) + 1);
    const behaviour = this.images.get(id) ?? { kind: 'status', status: 404 };
    switch (behaviour.kind) {
      case 'status':
        res.writeHead(behaviour.status, { 'content-type': 'text/plain', ...behaviour.headers });
        res.end(`status ${behaviour.status}`);
        return;
      case 'ok': {
        if (behaviour.closeDelimited) {
          const head = Object.entries(behaviour.headers ?? {}).map(([name, value]) => `${name}: ${value}\r\n`).join('');
          const socket = res.socket;
          socket?.write(`HTTP/1.1 200 OK\r\nconnection: close\r\n${head}\r\n`);
          const first = behaviour.until === undefined ? behaviour.data.length : (behaviour.first ?? 0);
          socket?.write(behaviour.data.subarray(0, first));
          void Promise.resolve(behaviour.until).then(() => socket?.end(behaviour.data.subarray(first)));
          return;
        }
        res.writeHead(200, { ...(behaviour.chunked ? {} : { 'content-length': behaviour.data.length }), ...behaviour.headers });
        const send = () => res.end(behaviour.data);
        if (behaviour.until !== undefined && behaviour.first !== undefined) {
          const first = behaviour.first;
          res.write(behaviour.data.subarray(0, first));
          void behaviour.until.then(() => res.end(behaviour.data.subarray(first)));
        } else if (behaviour.until !== undefined) {
          res.flushHeaders();
          void behaviour.until.then(send);
        } else if (behaviour.delayMs) {
          res.flushHeaders();
          setTimeout(send, behaviour.delayMs);
        } else send();
        return;
      }
      case 'cut': {
        res.writeHead(200, behaviour.chunked ? {} : { 'content-length': behaviour.data.length });
        // Destroying the socket drops what is still buffered: cut only once the bytes have left (and, if manual, when told).
        let sent = false;
        let told = !behaviour.manual;
        const cut = () => {
          if (sent && told) res.socket?.destroy();
        };
        if (behaviour.manual) {
          const waiting = this.#cuttable.get(id) ?? new Set();
          this.#cuttable.set(id, waiting);
          waiting.add(() => {
            told = true;
            cut();
          });
        }
        res.write(behaviour.data.subarray(0, behaviour.after), () => {
          sent = true;
          cut();
        });
        return;
      }
      case 'silent':
        return;
      case 'stall':
        res.writeHead(200, { 'content-length': behaviour.data.length });
        res.write(behaviour.data.subarray(0, behaviour.after));
        return;
    }
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    this.server.close();
    await once(this.server, 'close');
  }
}

/** A temp cache directory with a SqliteDriver cache on it. */
export async function openCache(
  maxSize = 1024 ** 3,
  space: Pick<ImageCacheOptions, 'writeBudget' | 'freeSpace'> = {},
): Promise<{ cache: ImageCache; cacheDir: string; cleanup: () => Promise<void> }> {
  const cacheDir = await mkdtemp(join(tmpdir(), 'server-test-'));
  const cache = await ImageCache.open({ driver: new SqliteDriver({ cacheDir }), maxSize, ...space });
  return {
    cache,
    cacheDir,
    cleanup: async () => {
      await cache.close();
      await rm(cacheDir, { recursive: true, force: true });
    },
  };
}

/** Everything a server test needs: origin, cache, server, base URL, and one teardown. */
export interface Harness {
  origin: TestOrigin;
  cache: ImageCache;
  cacheDir: string;
  server: CacheServer;
  url: string;
  close: () => Promise<void>;
}

export async function startHarness(
  options: Partial<CacheServerOptions> & { maxSize?: number } & Pick<ImageCacheOptions, 'writeBudget' | 'freeSpace'> = {},
): Promise<Harness> {
  const { maxSize, writeBudget, freeSpace, ...serverOptions } = options;
  const origin = await TestOrigin.start();
  const { cache, cacheDir, cleanup } = await openCache(maxSize, {
    ...(writeBudget === undefined ? {} : { writeBudget }),
    ...(freeSpace === undefined ? {} : { freeSpace }),
  });
  const server = await createCacheServer({
    cache,
    origin: createOrigin(origin.template),
    pruneInterval: 0,
    cleanInterval: 0,
    prefetchInterval: 0,
    ...serverOptions,
  });
  const url = await server.listen();
  return {
    origin,
    cache,
    cacheDir,
    server,
    url,
    close: async () => {
      await server.close();
      await origin.close();
      await cleanup();
    },
  };
}

/** A response read with node:http, which does not hide a cut body: `error` is set when it was. */
export interface RawResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  /** Set when the connection broke before the body was complete. */
  error?: Error;
  /** Whether node:http saw the message end properly (the whole Content-Length, or the last chunk). */
  complete: boolean;
}

export function rawRequest(
  url: string,
  options: {
    method?: string;
    headers?: Record<string, string>;
    path?: string;
    /** A request body, sent with its Content-Length. */
    body?: string;
    /** Called when the response headers have arrived, before the body is read. */
    onResponse?: (response: IncomingMessage) => void;
  } = {},
): Promise<RawResponse> {
  const target = new URL(url);
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: target.hostname,
        port: target.port,
        path: options.path ?? `${target.pathname}${target.search}`,
        method: options.method ?? 'GET',
        headers: { connection: 'close', ...options.headers },
      },
      (res) => {
        options.onResponse?.(res);
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        const done = (error?: Error) =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), complete: res.complete, ...(error ? { error } : {}) });
        res.on('end', () => done());
        res.on('error', (error) => done(error));
        res.on('aborted', () => done(new Error('aborted')));
      },
    );
    req.on('error', reject);
    req.end(options.body);
  });
}

/** Parses the Prometheus text exposition into `name{labels}` → value. */
export function parseMetrics(text: string): Map<string, number> {
  const values = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const match = /^(\S+?)(\{.*\})? (\S+)$/.exec(line);
    if (match === null) continue;
    values.set(`${match[1]}${match[2] ?? ''}`, Number(match[3]));
  }
  return values;
}

export async function scrape(url: string, headers: Record<string, string> = {}): Promise<Map<string, number>> {
  const response = await fetch(`${url}/metrics`, { headers });
  if (response.status !== 200) throw new Error(`/metrics answered ${response.status}`);
  return parseMetrics(await response.text());
}

/**
 * Polls `check` until it returns true. `timeoutMs` only guards against a
 * condition that never comes (generous, for a loaded machine); it is not
 * part of what a test checks.
 */
export async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs = 30_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what}: not met in time`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
