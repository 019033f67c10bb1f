// `image-cache serve --access-log / --tls-cert / --tls-key / --max-connections / --rate-limit`: the real binary, real ports.
import { execFile } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { AccessLogEntry } from '@cache/server';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { resolveConfig } from '../src/index.js';
import { bin, startServe, tempDir, type ServeProcess } from './helpers.js';

const MiB = 1024 * 1024;

/** A line of the access log as written: the server's entry, and pino's message. */
type AccessLine = AccessLogEntry & { msg: string };

let root: string;
let cleanup: () => Promise<void>;
let server: ServeProcess | undefined;

beforeEach(async () => {
  ({ dir: root, cleanup } = await tempDir('logs-limits'));
});
afterEach(async () => {
  server?.kill();
  if (server !== undefined) await server.exited;
  server = undefined;
  await cleanup();
});

/** A directory origin holding `images` (id -> bytes), and a cache directory. */
async function fixture(images: Record<string, Buffer>): Promise<{ origin: string; cacheDir: string }> {
  const origin = join(root, 'origin');
  await mkdir(origin, { recursive: true });
  for (const [id, data] of Object.entries(images)) await writeFile(join(origin, id), data);
  return { origin, cacheDir: join(root, 'cache') };
}

function bytes(size: number): Buffer {
  const out = Buffer.allocUnsafe(size);
  for (let i = 0; i < size; i++) out[i] = (i * 7) % 251;
  return out;
}

/** The JSON lines of `text` (stdout also holds the `listening on` line). */
function accessLines(text: string): AccessLine[] {
  return text
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as AccessLine)
    .filter((line) => line.msg === 'request');
}

async function until(check: () => boolean | Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`timed out waiting for ${what}`);
}

interface Got {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

function get(url: string, headers: Record<string, string> = {}): Promise<Got> {
  const send = url.startsWith('https:') ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = send(url, { headers: { connection: 'close', ...headers }, rejectUnauthorized: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/** A raw connection sending one keep-alive GET: resolves with the first bytes back, or 'closed'. */
function rawGet(url: string, path: string): { socket: Socket; first: Promise<Buffer | 'closed'> } {
  const { hostname, port } = new URL(url);
  const socket = connect({ host: hostname, port: Number(port) }, () => {
    socket.write(`GET ${path} HTTP/1.1\r\nHost: ${hostname}\r\nConnection: keep-alive\r\n\r\n`);
  });
  socket.on('error', () => undefined);
  const first = new Promise<Buffer | 'closed'>((resolve) => {
    socket.once('data', (chunk: Buffer) => resolve(chunk));
    socket.once('close', () => resolve('closed'));
  });
  return { socket, first };
}

describe('serve --access-log', () => {
  it('writes one JSON line per request to stdout: a miss, a hit, a ranged hit and a cut download', async () => {
    const big = bytes(64 * MiB);
    const { origin, cacheDir } = await fixture({ 'img-a': bytes(MiB + 3), 'img-big': big });
    server = startServe(['serve', '--port', '0', '--cache-dir', cacheDir, '--origin', origin, '--access-log'], { cwd: root });
    const url = await server.url;
    const s = server;

    expect((await get(`${url}/images/img-a`)).headers['x-cache']).toBe('MISS');
    expect((await get(`${url}/images/img-a`)).headers['x-cache']).toBe('HIT');
    expect((await get(`${url}/images/img-a`, { range: 'bytes=100-199' })).status).toBe(206);
    await until(() => accessLines(s.output().stdout).length >= 3, 'three lines');

    // The big one is cached first, then a client reads a little of a hit and hangs up.
    expect((await get(`${url}/images/img-big`)).body.length).toBe(big.length);
    const cut = rawGet(url, '/images/img-big');
    expect(await cut.first).not.toBe('closed');
    cut.socket.destroy();
    await until(() => accessLines(s.output().stdout).length >= 5, 'five lines');

    const [miss, hit, ranged, bigMiss, cutHit] = accessLines(s.output().stdout) as [AccessLine, AccessLine, AccessLine, AccessLine, AccessLine];
    expect(miss).toMatchObject({ id: 'img-a', cache: 'MISS', status: 200, bytes: MiB + 3, range: null, method: 'GET', client: '127.0.0.1', complete: true });
    expect(hit).toMatchObject({ id: 'img-a', cache: 'HIT', status: 200, bytes: MiB + 3, range: null, complete: true });
    expect(ranged).toMatchObject({ id: 'img-a', cache: 'HIT', status: 206, bytes: 100, range: 'bytes=100-199', complete: true });
    expect(bigMiss).toMatchObject({ id: 'img-big', cache: 'MISS', status: 200, bytes: big.length, complete: true });
    expect(cutHit).toMatchObject({ id: 'img-big', cache: 'HIT', status: 200, complete: false });
    expect(cutHit.bytes).toBeLessThan(big.length);
    for (const line of [miss, hit, ranged, bigMiss, cutHit]) expect(typeof line.ms).toBe('number');
  }, 60_000);

  it('IMAGE_CACHE_ACCESS_LOG names a file (relative to the working directory); the startup lines stay on their streams', async () => {
    const { origin, cacheDir } = await fixture({ 'img-f': bytes(1000) });
    server = startServe(['serve', '--port', '0', '--cache-dir', cacheDir, '--origin', origin], { cwd: root, env: { IMAGE_CACHE_ACCESS_LOG: 'logs/access.log' } });
    const url = await server.url;
    await get(`${url}/images/img-f`);
    const path = join(root, 'logs', 'access.log');
    await until(async () => accessLines(await readFile(path, 'utf8').catch(() => '')).length === 1, 'the file line');
    expect(accessLines(await readFile(path, 'utf8'))[0]).toMatchObject({ id: 'img-f', cache: 'MISS', status: 200, bytes: 1000 });
    expect(accessLines(server.output().stdout)).toEqual([]);
  }, 30_000);

  it('resolveConfig: accessLog from a flag (switch or path), the environment, the config file', async () => {
    const base = { env: {}, cwd: root, requireCacheDir: false };
    expect((await resolveConfig({ ...base, flags: { accessLog: true } })).accessLog).toBe(true);
    expect((await resolveConfig({ ...base, flags: { accessLog: 'a.log' } })).accessLog).toBe(join(root, 'a.log'));
    expect((await resolveConfig({ ...base, env: { IMAGE_CACHE_ACCESS_LOG: 'stdout' } })).accessLog).toBe(true);
    await writeFile(join(root, 'image-cache.config.json'), JSON.stringify({ accessLog: 'from-file.log', rateLimit: '10/1m', maxConnections: 5 }));
    const fromFile = await resolveConfig(base);
    expect(fromFile.accessLog).toBe(join(root, 'from-file.log'));
    expect(fromFile.rateLimit).toEqual({ max: 10, window: 60 });
    expect(fromFile.maxConnections).toBe(5);
    expect(fromFile.accessLog === undefined || fromFile.sources.accessLog === 'file').toBe(true);
    expect((await resolveConfig({ ...base, flags: { accessLog: 'off' } })).accessLog).toBeUndefined();
  });
});

describe('serve --tls-cert/--tls-key', () => {
  it('serves HTTPS and prints an https:// URL', async () => {
    const keyPath = join(root, 'key.pem');
    const certPath = join(root, 'cert.pem');
    await promisify(execFile)('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-days', '1', '-keyout', keyPath, '-out', certPath]);
    const { origin, cacheDir } = await fixture({ 'img-t': bytes(5000) });
    server = startServe(['serve', '--port', '0', '--cache-dir', cacheDir, '--origin', origin, '--tls-cert', certPath, '--tls-key', keyPath], { cwd: root });
    const url = await server.url;
    expect(url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const s = server;
    await until(() => s.output().stdout.includes(`listening on ${url}`), 'the listening line');
    const response = await get(`${url}/images/img-t`);
    expect(response.status).toBe(200);
    expect(response.body.equals(bytes(5000))).toBe(true);
  }, 30_000);

  it('one without the other is a usage error; an unreadable file is an error naming its path', async () => {
    const cacheDir = join(root, 'cache');
    const alone = await bin(['serve', '--port', '0', '--cache-dir', cacheDir, '--tls-cert', join(root, 'cert.pem')]);
    expect(alone.code).toBe(2);
    expect(alone.stderr).toMatch(/--tls-cert needs --tls-key.*\[CLI_TLS\]/);
    const keyOnly = await bin(['serve', '--port', '0', '--cache-dir', cacheDir], { env: { IMAGE_CACHE_TLS_KEY: 'k.pem' } });
    expect(keyOnly.code).toBe(2);
    expect(keyOnly.stderr).toMatch(/--tls-key needs --tls-cert/);
    const missing = join(root, 'nope', 'cert.pem');
    const unreadable = await bin(['serve', '--port', '0', '--cache-dir', cacheDir, '--tls-cert', missing, '--tls-key', join(root, 'key.pem')]);
    expect(unreadable.code).toBe(1);
    expect(unreadable.stderr).toContain(`cannot read the TLS certificate ${missing}: ENOENT`);
    await writeFile(join(root, 'junk.pem'), 'not a certificate');
    const junk = await bin(['serve', '--port', '0', '--cache-dir', cacheDir, '--tls-cert', join(root, 'junk.pem'), '--tls-key', join(root, 'junk.pem')]);
    expect(junk.code).toBe(1);
    expect(junk.stderr).toContain(`cannot use the TLS certificate ${join(root, 'junk.pem')}`);
    expect(junk.stderr).toContain('[CLI_TLS]');
  }, 30_000);
});

describe('serve --max-connections / --rate-limit', () => {
  it('--max-connections 2: a third connection is closed without an answer', async () => {
    const { origin, cacheDir } = await fixture({});
    server = startServe(['serve', '--port', '0', '--cache-dir', cacheDir, '--origin', origin, '--max-connections', '2'], { cwd: root });
    const url = await server.url;
    const sockets: Socket[] = [];
    try {
      for (let i = 0; i < 2; i++) {
        const held = rawGet(url, '/healthz');
        sockets.push(held.socket);
        const answer = await held.first;
        expect(answer === 'closed' ? 'closed' : answer.toString('latin1')).toMatch(/^HTTP\/1\.1 200/);
      }
      const third = rawGet(url, '/healthz');
      sockets.push(third.socket);
      expect(await third.first).toBe('closed');
    } finally {
      for (const socket of sockets) socket.destroy();
    }
  }, 30_000);

  it('--rate-limit 3/1m: three requests pass, the fourth gets 429 with Retry-After, /healthz is not limited', async () => {
    const { origin, cacheDir } = await fixture({ 'img-r': bytes(100) });
    server = startServe(['serve', '--port', '0', '--cache-dir', cacheDir, '--origin', origin, '--rate-limit', '3/1m'], { cwd: root });
    const url = await server.url;
    for (let i = 0; i < 3; i++) expect((await get(`${url}/images/img-r`)).status).toBe(200);
    const limited = await get(`${url}/images/img-r`);
    expect(limited.status).toBe(429);
    expect(Number(limited.headers['retry-after'])).toBeGreaterThan(0);
    expect((await get(`${url}/v2/cache`)).status).toBe(429);
    expect((await get(`${url}/healthz`)).status).toBe(200);
  }, 30_000);

  it('refuses a malformed --rate-limit and --max-connections with usage errors', async () => {
    const cacheDir = join(root, 'cache');
    const rate = await bin(['serve', '--port', '0', '--cache-dir', cacheDir, '--rate-limit', '10']);
    expect(rate.code).toBe(2);
    expect(rate.stderr).toMatch(/--rate-limit.*<requests>\/<duration>/);
    const max = await bin(['serve', '--port', '0', '--cache-dir', cacheDir, '--max-connections', '0']);
    expect(max.code).toBe(2);
    expect(max.stderr).toMatch(/--max-connections/);
  }, 30_000);
});
