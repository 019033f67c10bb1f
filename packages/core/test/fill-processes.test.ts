import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, realpath } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createServer as createNetServer } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { fillLockName } from '../src/fill/lock.js';
import { imageBytes } from './fill-helpers.js';
import { tempDir } from './helpers.js';

// Fills across processes: each child (fixtures/fill-child.mjs) opens the cache
// directory, fills one id from the origin this test runs, and reads it with
// one reader, reporting every step as a JSON line.

const FIXTURE = join(import.meta.dirname, 'fixtures', 'fill-child.mjs');
const DIST = join(import.meta.dirname, '..', 'dist', 'index.js');
const C = 64 * 1024;
const ID = 'img';

type Event = Record<string, unknown> & { event: string };

interface OriginRequest {
  who: string;
  /** Sends the rest of the image. */
  release(): void;
  /** Breaks the connection mid-body. */
  cut(): void;
}

/**
 * An HTTP origin that counts requests. `plan(n, who)` decides per request:
 * `all` sends the image at once; `half` sends the first half and waits for
 * `release()` or `cut()`.
 */
async function startOrigin(image: Buffer, plan: (n: number, who: string) => 'all' | 'half', headers: Record<string, string> = {}) {
  const requests: OriginRequest[] = [];
  let waiters: { n: number; resolve: (request: OriginRequest) => void }[] = [];
  const half = image.length / 2;
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const who = new URL(req.url ?? '/', 'http://origin').searchParams.get('who') ?? '?';
    res.on('error', () => undefined);
    req.socket.on('error', () => undefined);
    res.writeHead(200, { 'content-length': image.length, 'content-type': 'application/octet-stream', ...headers });
    const request: OriginRequest = {
      who,
      release: () => res.end(image.subarray(half)),
      cut: () => req.socket.destroy(),
    };
    requests.push(request);
    if (plan(requests.length, who) === 'all') res.end(image);
    else res.write(image.subarray(0, half));
    waiters = waiters.filter((w) => (requests.length >= w.n ? (w.resolve(requests[w.n - 1] as OriginRequest), false) : true));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    get count() {
      return requests.length;
    },
    /** Resolves with the n-th request once it has arrived. */
    request(n: number): Promise<OriginRequest> {
      if (requests.length >= n) return Promise.resolve(requests[n - 1] as OriginRequest);
      return new Promise((resolve) => waiters.push({ n, resolve }));
    },
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

interface Child {
  name: string;
  events: Event[];
  waitFor(predicate: (event: Event) => boolean): Promise<Event>;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  kill(signal: NodeJS.Signals): void;
}

const children: Child[] = [];

function startChild(name: string, cacheDir: string, origin: string): Child {
  const child = spawn(process.execPath, [FIXTURE, JSON.stringify({ cacheDir, id: ID, origin, name })], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const events: Event[] = [];
  let stderr = '';
  let waiters: { predicate: (event: Event) => boolean; resolve: (event: Event) => void; reject: (error: Error) => void }[] = [];
  child.stderr.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  createInterface({ input: child.stdout }).on('line', (line) => {
    const event = JSON.parse(line) as Event;
    events.push(event);
    waiters = waiters.filter((w) => (w.predicate(event) ? (w.resolve(event), false) : true));
  });
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on('exit', (code, signal) => {
      // Lines still in the pipe are read before 'close'.
      child.on('close', () => {
        for (const w of waiters) w.reject(new Error(`${name} exited (${code ?? signal}) before the awaited event; stderr: ${stderr}`));
        waiters = [];
        resolve({ code, signal });
      });
    });
  });
  const handle: Child = {
    name,
    events,
    waitFor(predicate) {
      const seen = events.find(predicate);
      if (seen !== undefined) return Promise.resolve(seen);
      return new Promise((resolve, reject) => waiters.push({ predicate, resolve, reject }));
    },
    exit,
    kill: (signal) => child.kill(signal),
  };
  children.push(handle);
  return handle;
}

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');
const ended = (event: Event) => event.event === 'end' || event.event === 'error';
const readAtLeast = (bytes: number) => (event: Event) => event.event === 'read' && (event.bytes as number) >= bytes;
const role = (name: string) => (event: Event) => event.event === 'role' && event.role === name;

/** Whether the test itself could take the fill lock now (it never keeps it). */
async function lockIsFree(cacheDir: string): Promise<boolean> {
  const server = createNetServer();
  const path = fillLockName(await realpath(cacheDir), ID);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ path }, resolve);
    });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EADDRINUSE') return false;
    throw error;
  }
  await new Promise((resolve) => server.close(resolve));
  return true;
}

let dir: string;
let cleanup: () => Promise<void>;
let origin: Awaited<ReturnType<typeof startOrigin>> | undefined;

beforeAll(() => {
  if (!existsSync(DIST)) throw new Error(`${DIST} is missing: run \`pnpm build\` first (the child processes import the built core)`);
});

beforeEach(async () => {
  ({ dir, cleanup } = await tempDir('fill-processes'));
  for (const sub of ['incomplete', 'invalid', 'queue']) await mkdir(join(dir, sub), { recursive: true });
});

afterEach(async () => {
  for (const child of children.splice(0)) child.kill('SIGKILL');
  await origin?.close();
  origin = undefined;
  await cleanup();
});

describe.skipIf(process.platform !== 'linux')('fills across processes (abstract-socket lock)', () => {
  it('two processes fill the same id: the origin is read once, both readers get identical bytes', async () => {
    const image = imageBytes('two-processes', 16 * C);
    origin = await startOrigin(image, () => 'half');
    const a = startChild('A', dir, origin.url);
    const first = await origin.request(1);
    expect(first.who).toBe('A');
    await a.waitFor(readAtLeast(C)); // A's reader has bytes while the fill runs
    expect(await lockIsFree(dir)).toBe(false); // A holds the host lock

    const b = startChild('B', dir, origin.url);
    await b.waitFor(role('follower'));
    await b.waitFor(readAtLeast(image.length / 2)); // B reads A's file as it grows
    expect(origin.count).toBe(1);

    first.release();
    const [endA, endB] = await Promise.all([a.waitFor(ended), b.waitFor(ended)]);
    for (const end of [endA, endB]) expect(end).toEqual({ event: 'end', bytes: image.length, sha256: sha256(image) });
    expect(await a.waitFor((e) => e.event === 'done')).toMatchObject({ status: 'committed', via: 'fetched', size: image.length });
    expect(await b.waitFor((e) => e.event === 'done')).toMatchObject({ status: 'committed', via: 'followed', size: image.length });
    expect((await a.exit).code).toBe(0);
    expect((await b.exit).code).toBe(0);
    expect(origin.count).toBe(1);
    expect((await readFile(join(dir, ID))).equals(image)).toBe(true);
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
    expect(await readdir(join(dir, 'invalid'))).toEqual([]);
    expect(await lockIsFree(dir)).toBe(true);
  });

  it('a follower process learns the size and digest the owner announced, from the hello; the commit stores the digest', async () => {
    const image = imageBytes('announced', 16 * C);
    origin = await startOrigin(image, () => 'half', { 'x-sha256': sha256(image) });
    const a = startChild('A', dir, origin.url);
    const first = await origin.request(1);
    const want = { event: 'announced', expectedSize: image.length, checksum: `sha256:${sha256(image)}`, cache: true };
    expect(await a.waitFor((e) => e.event === 'announced')).toEqual(want);
    await a.waitFor(readAtLeast(C));

    const b = startChild('B', dir, origin.url);
    await b.waitFor(role('follower'));
    expect(await b.waitFor((e) => e.event === 'announced')).toEqual(want);
    first.release();
    for (const child of [a, b]) expect(await child.waitFor(ended)).toEqual({ event: 'end', bytes: image.length, sha256: sha256(image) });
    expect(await b.waitFor((e) => e.event === 'done')).toMatchObject({ status: 'committed', via: 'followed', checksum: `sha256:${sha256(image)}` });
    expect(await a.waitFor((e) => e.event === 'done')).toMatchObject({ status: 'committed', via: 'fetched', checksum: `sha256:${sha256(image)}` });
    expect(origin.count).toBe(1);
  });

  it('SIGKILL of the owner mid-fill: one follower takes over, every reader gets the origin\'s bytes, nothing torn is committed', async () => {
    const image = imageBytes('takeover', 16 * C);
    // The first owner gets half the image and then nothing; whoever asks next gets all of it.
    origin = await startOrigin(image, (n) => (n === 1 ? 'half' : 'all'));
    const a = startChild('A', dir, origin.url);
    expect((await origin.request(1)).who).toBe('A');
    const b = startChild('B', dir, origin.url);
    const c = startChild('C', dir, origin.url);
    for (const follower of [b, c]) {
      await follower.waitFor(role('follower'));
      await follower.waitFor(readAtLeast(image.length / 2)); // read from A's file before A dies
    }
    expect(await lockIsFree(dir)).toBe(false);

    a.kill('SIGKILL');
    expect((await a.exit).signal).toBe('SIGKILL');

    const [endB, endC] = await Promise.all([b.waitFor(ended), c.waitFor(ended)]);
    for (const end of [endB, endC]) expect(end).toEqual({ event: 'end', bytes: image.length, sha256: sha256(image) });
    expect((await b.exit).code).toBe(0);
    expect((await c.exit).code).toBe(0);

    // Exactly one of them became the owner, and only once A was gone; it alone fetched again.
    const owners = [b, c].filter((child) => child.events.some(role('owner')));
    expect(owners.map((child) => child.name)).toHaveLength(1);
    const winner = owners[0] as Child;
    expect(winner.events.find((e) => e.event === 'owner')).toEqual({ event: 'owner', previousOwnerDead: true });
    expect(origin.count).toBe(2);
    expect((await origin.request(2)).who).toBe(winner.name);
    expect(await winner.waitFor((e) => e.event === 'done')).toMatchObject({ status: 'committed', via: 'fetched' });

    // The committed entry is the origin's image; A's torn file went to invalid/ and is a strict prefix of it.
    expect((await readFile(join(dir, ID))).equals(image)).toBe(true);
    const torn = await readFile(join(dir, 'invalid', ID));
    expect(torn.length).toBeLessThan(image.length);
    expect(torn.equals(image.subarray(0, torn.length))).toBe(true);
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
  });

  it('an origin failure in the owner reaches a follower as OriginError after the written bytes; nobody fetches again', async () => {
    const image = imageBytes('origin-cut', 16 * C);
    origin = await startOrigin(image, () => 'half');
    const a = startChild('A', dir, origin.url);
    const first = await origin.request(1);
    const b = startChild('B', dir, origin.url);
    await b.waitFor(role('follower'));
    await b.waitFor(readAtLeast(image.length / 2));

    first.cut();
    const failedB = await b.waitFor(ended);
    expect(failedB).toMatchObject({ event: 'error', name: 'OriginError', code: 'CACHE_ORIGIN_ERROR', bytes: image.length / 2 });
    expect(await b.waitFor((e) => e.event === 'done')).toMatchObject({ status: 'failed', code: 'CACHE_ORIGIN_ERROR' });
    expect(await a.waitFor(ended)).toMatchObject({ event: 'error', bytes: image.length / 2 });
    expect(await a.waitFor((e) => e.event === 'done')).toMatchObject({ status: 'failed' });
    expect((await a.exit).code).toBe(0);
    expect((await b.exit).code).toBe(0);
    expect(origin.count).toBe(1);
    expect(existsSync(join(dir, ID))).toBe(false);
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
    expect(await readdir(join(dir, 'invalid'))).toEqual([ID]);
  });
});
