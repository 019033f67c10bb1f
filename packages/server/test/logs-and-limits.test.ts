import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { request as httpsRequest } from 'node:https';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { createCacheServer, type AccessLogEntry, type CacheServerOptions } from '../src/index.js';
import { imageBytes, openCache, rawRequest, startHarness, waitFor, type Harness } from './helpers.js';
import { ClientOrigin, Gate, randomImage, startDownload, startServe, stopAll } from './process-helpers.js';

const MiB = 1024 * 1024;

/** Expects createCacheServer to refuse `options` with a message matching `message` (nothing left open). */
async function expectRefused(options: Partial<CacheServerOptions>, message: RegExp): Promise<void> {
  const { cache, cleanup } = await openCache();
  try {
    await expect(createCacheServer({ cache, ...options })).rejects.toThrow(message);
  } finally {
    await cleanup();
  }
}

type Line = AccessLogEntry & { level: string; time: string; msg: string };

/** A pino destination that keeps the parsed lines. */
function collector(): { lines: Line[]; write(line: string): void } {
  const lines: Line[] = [];
  return { lines, write: (line: string) => void lines.push(JSON.parse(line) as Line) };
}

/** A self-signed certificate for CN=localhost, made by openssl in a temp directory. */
async function selfSigned(): Promise<{ cert: string; key: string; dir: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'server-tls-'));
  const keyPath = join(dir, 'key.pem');
  const certPath = join(dir, 'cert.pem');
  await promisify(execFile)('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-days', '1', '-keyout', keyPath, '-out', certPath]);
  return { cert: await readFile(certPath, 'utf8'), key: await readFile(keyPath, 'utf8'), dir };
}

/** Opens a raw connection and sends one keep-alive GET; resolves with what came back before the connection closed or `ms` passed. */
function rawGet(url: string, path: string): { socket: Socket; firstData: Promise<Buffer | 'closed'> } {
  const { hostname, port } = new URL(url);
  const socket = connect({ host: hostname, port: Number(port) }, () => {
    socket.write(`GET ${path} HTTP/1.1\r\nHost: ${hostname}\r\nConnection: keep-alive\r\n\r\n`);
  });
  socket.on('error', () => undefined); // a refused connection may be reset
  const firstData = new Promise<Buffer | 'closed'>((resolve) => {
    socket.once('data', (chunk: Buffer) => resolve(chunk));
    socket.once('close', () => resolve('closed'));
  });
  return { socket, firstData };
}

describe('access log', () => {
  let h: Harness | undefined;
  afterEach(async () => {
    await h?.close();
    h = undefined;
  });

  it('logs a miss, a hit, a ranged hit and a non-image request with id, cache, status, bytes, range, ms, method, client', async () => {
    const log = collector();
    h = await startHarness({ accessLog: log });
    const data = imageBytes('img-log', MiB + 5);
    h.origin.images.set('img-log', { kind: 'ok', data });

    const miss = await rawRequest(`${h.url}/images/img-log`);
    expect(miss.status).toBe(200);
    const hit = await rawRequest(`${h.url}/images/img-log`);
    expect(hit.headers['x-cache']).toBe('HIT');
    const ranged = await rawRequest(`${h.url}/images/img-log`, { headers: { range: 'bytes=10-19' } });
    expect(ranged.status).toBe(206);
    await rawRequest(`${h.url}/healthz`);
    await waitFor(() => log.lines.length >= 4, 10_000, 'four access log lines');

    const [first, second, third, fourth] = log.lines as [Line, Line, Line, Line];
    expect(first).toMatchObject({ id: 'img-log', cache: 'MISS', status: 200, bytes: data.length, range: null, method: 'GET', client: '127.0.0.1', complete: true, msg: 'request', level: 'info' });
    expect(second).toMatchObject({ id: 'img-log', cache: 'HIT', status: 200, bytes: data.length, range: null, complete: true });
    expect(third).toMatchObject({ id: 'img-log', cache: 'HIT', status: 206, bytes: 10, range: 'bytes=10-19', complete: true });
    expect(fourth).toMatchObject({ id: null, cache: null, status: 200, url: '/healthz', complete: true });
    for (const line of log.lines) {
      expect(typeof line.ms).toBe('number');
      expect(line.ms).toBeGreaterThanOrEqual(0);
      expect(Number.isNaN(Date.parse(line.time))).toBe(false);
    }
  });

  it('a request that joins a fill another request started is FILL-WAIT', async () => {
    const log = collector();
    h = await startHarness({ accessLog: log });
    const data = imageBytes('img-join', 64 * 1024);
    let release!: () => void;
    const until = new Promise<void>((resolve) => (release = resolve));
    h.origin.images.set('img-join', { kind: 'ok', data, until });

    const first = rawRequest(`${h.url}/images/img-join`);
    const harness = h;
    await waitFor(() => harness.origin.count('img-join') === 1, 10_000, 'the origin request');
    const second = rawRequest(`${h.url}/images/img-join`);
    // The second request reads the same fill (ImageCache.fill shares the running one) before the origin answers.
    const running = harness.cache.fill('img-join', { fetch: () => Promise.reject(new Error('not this one')) });
    await waitFor(() => running.readers >= 2, 10_000, 'two readers of the fill');
    release();
    const [a, b] = await Promise.all([first, second]);
    expect(a.body.equals(data) && b.body.equals(data)).toBe(true);
    expect(h.origin.count('img-join')).toBe(1);
    await waitFor(() => log.lines.length >= 2, 10_000, 'two lines');
    expect(log.lines.map((line) => line.cache).sort()).toEqual(['FILL-WAIT', 'MISS']);
    for (const line of log.lines) expect(line).toMatchObject({ id: 'img-join', status: 200, bytes: data.length, complete: true });
  });

  it('a download the client cuts is logged when the connection closes, with complete: false and the bytes written so far', async () => {
    const log = collector();
    h = await startHarness({ accessLog: log });
    const size = 64 * MiB;
    const data = imageBytes('img-cut', size);
    await h.cache.cacheImage('img-cut', Readable.from([data]));

    const { socket, firstData } = rawGet(h.url, '/images/img-cut');
    expect(await firstData).not.toBe('closed');
    socket.destroy();
    await waitFor(() => log.lines.length >= 1, 10_000, 'the cut line');
    const line = log.lines[0] as Line;
    expect(line).toMatchObject({ id: 'img-cut', cache: 'HIT', status: 200, complete: false, range: null });
    expect(line.bytes).toBeGreaterThanOrEqual(0);
    expect(line.bytes).toBeLessThan(size);
  });

  it('writes to a file path, one JSON line per request', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'access-log-'));
    const path = join(dir, 'sub', 'access.log');
    try {
      h = await startHarness({ accessLog: path });
      await rawRequest(`${h.url}/images/nope`);
      await h.close();
      h = undefined;
      const lines = (await readFile(path, 'utf8')).trim().split('\n').map((text) => JSON.parse(text) as Line);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatchObject({ id: 'nope', cache: 'MISS', status: 404, complete: true });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses a bad accessLog option', async () => {
    await expectRefused({ accessLog: 42 as never }, /options.accessLog/);
  });
});

describe('access log across processes', () => {
  it('a process that follows another process\'s fill logs FILL-WAIT; the owner logs MISS (serve --access-log, two processes, one cache directory)', async () => {
    const cacheDir = await mkdtemp(join(tmpdir(), 'access-log-procs-'));
    const origin = await ClientOrigin.start();
    try {
      const id = 'shared-log';
      const data = randomImage(2 * MiB + 11);
      const gate = new Gate();
      origin.images.set(id, { data, head: 64 * 1024, gate });
      const [a, b] = await Promise.all([0, 1].map(() => startServe({ cacheDir, origin: origin.template, args: ['--access-log'] })));
      if (a === undefined || b === undefined) throw new Error('two processes');
      const owner = startDownload(`${a.url}/images/${id}`);
      await origin.whenRequested(id);
      await owner.firstBytes;
      const follower = startDownload(`${b.url}/images/${id}`);
      await follower.firstBytes;
      gate.open();
      expect(await owner.done).toMatchObject({ status: 200, complete: true, bytes: data.length });
      expect(await follower.done).toMatchObject({ status: 200, complete: true, bytes: data.length });
      expect(origin.count(id)).toBe(1);
      const lines = (text: string) => text.split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as Line);
      await waitFor(() => lines(a.output().stdout).length >= 1 && lines(b.output().stdout).length >= 1, 10_000, 'a line from each');
      expect(lines(a.output().stdout)[0]).toMatchObject({ id, cache: 'MISS', status: 200, bytes: data.length, complete: true });
      expect(lines(b.output().stdout)[0]).toMatchObject({ id, cache: 'FILL-WAIT', status: 200, bytes: data.length, complete: true });
    } finally {
      await stopAll();
      await origin.close();
      await rm(cacheDir, { recursive: true, force: true });
    }
  }, 60_000);
});

describe('TLS', () => {
  it('serves HTTPS with the given certificate and key; listen() returns an https:// URL', async () => {
    const tls = await selfSigned();
    const h = await startHarness({ https: { cert: tls.cert, key: tls.key } });
    try {
      expect(h.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
      const data = imageBytes('img-tls', 1000);
      h.origin.images.set('img-tls', { kind: 'ok', data });
      const get = () =>
        new Promise<{ status: number; body: Buffer; cn: unknown; xCache: unknown }>((resolve, reject) => {
          const req = httpsRequest(`${h.url}/images/img-tls`, { ca: tls.cert, checkServerIdentity: () => undefined }, (res) => {
            const cn = (res.socket as import('node:tls').TLSSocket).getPeerCertificate().subject?.CN;
            const chunks: Buffer[] = [];
            res.on('data', (chunk: Buffer) => chunks.push(chunk));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), cn, xCache: res.headers['x-cache'] }));
            res.on('error', reject);
          });
          req.on('error', reject);
          req.end();
        });
      // A miss, a hit that describes the entry, and a hit of the remembered entry (answered below fastify: directHits).
      for (const expected of ['MISS', 'HIT', 'HIT']) {
        const response = await get();
        expect(response.status).toBe(200);
        expect(response.xCache).toBe(expected);
        expect(response.body.equals(data)).toBe(true);
        expect(response.cn).toBe('localhost');
      }
    } finally {
      await h.close();
      await rm(tls.dir, { recursive: true, force: true });
    }
  });

  it('refuses https without a key', async () => {
    await expectRefused({ https: { cert: 'x' } as never }, /options.https/);
  });
});

describe('limits', () => {
  it('refuses a bad maxConnections or rateLimit', async () => {
    await expectRefused({ maxConnections: 0 }, /options.maxConnections must be an integer >= 1/);
    await expectRefused({ rateLimit: { max: 0, timeWindow: 1000 } }, /options.rateLimit/);
    await expectRefused({ rateLimit: { max: 5 } as never }, /options.rateLimit/);
  });

  it('maxConnections: the connection past the limit is closed without an answer; the others are served', async () => {
    const h = await startHarness({ maxConnections: 2 });
    const sockets: Socket[] = [];
    try {
      for (let i = 0; i < 2; i++) {
        const { socket, firstData } = rawGet(h.url, '/healthz');
        sockets.push(socket);
        const answer = await firstData;
        expect(answer).not.toBe('closed');
        expect((answer as Buffer).toString('latin1')).toMatch(/^HTTP\/1\.1 200/);
      }
      const third = rawGet(h.url, '/healthz');
      sockets.push(third.socket);
      expect(await third.firstData).toBe('closed');
      // Once one leaves, a new connection is served again.
      (sockets[0] as Socket).destroy();
      await waitFor(async () => (await new Promise<number>((resolve) => h.server.app.server.getConnections((_e, n) => resolve(n)))) === 1, 10_000, 'one connection');
      const fourth = rawGet(h.url, '/healthz');
      sockets.push(fourth.socket);
      expect(await fourth.firstData).not.toBe('closed');
    } finally {
      for (const socket of sockets) socket.destroy();
      await h.close();
    }
  });

  it('rateLimit: n requests per client pass, the next one gets 429 with Retry-After; images and /v2 share the count, probes are not limited', async () => {
    const h = await startHarness({ rateLimit: { max: 3, timeWindow: 60_000 } });
    try {
      h.origin.images.set('img-rl', { kind: 'ok', data: imageBytes('img-rl', 100) });
      expect((await rawRequest(`${h.url}/images/img-rl`)).status).toBe(200);
      expect((await rawRequest(`${h.url}/images/img-rl`)).status).toBe(200);
      expect((await rawRequest(`${h.url}/v2/cached_images`)).status).not.toBe(429);
      const limited = await rawRequest(`${h.url}/images/img-rl`);
      expect(limited.status).toBe(429);
      expect(Number(limited.headers['retry-after'])).toBeGreaterThanOrEqual(1);
      expect(JSON.parse(limited.body.toString()) as unknown).toMatchObject({ code: 'TOO_MANY_REQUESTS' });
      expect((await rawRequest(`${h.url}/v2/cached_images`)).status).toBe(429);
      expect((await rawRequest(`${h.url}/healthz`)).status).toBe(200);
      expect((await rawRequest(`${h.url}/metrics`)).status).toBe(200);
    } finally {
      await h.close();
    }
  });
});
