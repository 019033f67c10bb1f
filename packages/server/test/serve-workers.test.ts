// `image-cache serve --workers N`: N processes (node:cluster) serving one cache directory on one
// port. The tests spawn the real binary and synchronise with its output, the origin's requests and
// process exits, never with sleeps.
import { request } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ImageCache } from '@cache/core';
import { SqliteDriver } from '@cache/driver-sqlite';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ClientOrigin, randomImage, sha256, startDownload, startServe, stopAll, type ServeProcess } from './process-helpers.js';

const MiB = 1024 * 1024;

let root: string;
let cacheDir: string;
let origin: ClientOrigin;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'server-serve-workers-'));
  cacheDir = join(root, 'cache');
  origin = await ClientOrigin.start();
});
afterEach(async () => {
  await stopAll();
  await origin.close();
  await rm(root, { recursive: true, force: true });
});

/** The worker pids the primary printed (`N worker processes (pids a b)`). */
function workerPids(server: ServeProcess): number[] {
  const match = /(\d+) worker processes \(pids ([\d ]+)\)/.exec(server.output().stderr);
  expect(match, server.output().stderr).not.toBeNull();
  return (match?.[2] ?? '').split(' ').map(Number);
}

/** GET on a connection of its own (so the primary hands it to the next worker): status and body. */
function getOnNewConnection(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent: false, headers: { connection: 'close' } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/** The pid label of `image_cache_server_process` in a /metrics answer. */
function scrapedPid(body: string): number {
  const match = /^image_cache_server_process\{pid="(\d+)"\} 1$/m.exec(body);
  expect(match, body.slice(0, 400)).not.toBeNull();
  return Number(match?.[1]);
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('image-cache serve --workers', () => {
  it('--workers 2: two processes answer on one port, a miss is fetched from the origin once, hits are recorded, SIGTERM stops both cleanly', async () => {
    const id = 'workers-image';
    const data = randomImage(3 * MiB + 123);
    origin.images.set(id, { data });
    const server = await startServe({ cacheDir, origin: origin.template, args: ['--workers', '2'] });
    const pids = workerPids(server);
    expect(pids).toHaveLength(2);
    expect(pids).not.toContain(server.pid);

    // Connections are handed to the workers in turn: new connections reach both (bounded, not timed).
    const seen = new Set<number>();
    for (let i = 0; i < 20 && seen.size < 2; i++) {
      const scrape = await getOnNewConnection(`${server.url}/metrics`);
      expect(scrape.status).toBe(200);
      seen.add(scrapedPid(scrape.body));
    }
    expect([...seen].sort()).toEqual([...pids].sort());

    // Ten clients on their own connections (spread over both workers) on one uncached id: one origin request.
    const downloads = Array.from({ length: 10 }, () => startDownload(`${server.url}/images/${id}`));
    const results = await Promise.all(downloads.map((download) => download.done));
    for (const result of results) {
      expect(result.status).toBe(200);
      expect(result.complete).toBe(true);
      expect(result.sha256).toBe(sha256(data));
    }
    expect(origin.count(id)).toBe(1);

    // Hits on both workers, counted in memory and written to the driver at the latest on shutdown.
    const hits = await Promise.all(Array.from({ length: 6 }, () => startDownload(`${server.url}/images/${id}`).done));
    for (const hit of hits) {
      expect(hit.status).toBe(200);
      expect(hit.headers['x-cache']).toBe('HIT');
      expect(hit.sha256).toBe(sha256(data));
    }

    server.child.kill('SIGTERM');
    const exit = await server.exited;
    expect(exit).toEqual({ code: 0, signal: null });
    expect(server.output().stderr).toMatch(/image-cache: stopped/);
    // The primary waits for its workers: none outlives it.
    for (const pid of pids) expect(alive(pid)).toBe(false);

    const cache = await ImageCache.open({ driver: new SqliteDriver({ cacheDir }), maxSize: 1024 ** 3 });
    try {
      expect(await cache.isCached(id)).toBe(true);
      // The ten fill readers that got the bytes from the cache after the commit count too: at least the six hits.
      expect(await cache.getHitCount(id)).toBeGreaterThanOrEqual(6);
    } finally {
      await cache.close();
    }
  }, 120_000);

  it('a worker that dies stops the others: the primary exits 1 and says which', async () => {
    const server = await startServe({ cacheDir, origin: origin.template, args: ['--workers', '2'] });
    const [first, second] = workerPids(server) as [number, number];
    process.kill(first, 'SIGKILL');
    const exit = await server.exited;
    expect(exit).toEqual({ code: 1, signal: null });
    expect(server.output().stderr).toMatch(new RegExp(`worker 0 \\(pid ${first}\\) exited \\(SIGKILL\\); stopping the other worker processes`));
    expect(alive(second)).toBe(false);
  }, 120_000);
});
