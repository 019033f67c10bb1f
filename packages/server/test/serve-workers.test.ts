// `image-cache serve --workers N`: N processes (node:cluster) serving one cache directory on one
// port. The tests spawn the real binary and synchronise with its output, the origin's requests and
// process exits, never with sleeps.
import { Agent, request, type IncomingHttpHeaders } from 'node:http';
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

/** GET on a connection of its own (so the primary hands it to the next worker), or on `agent`'s: status, headers and body. */
function getOnNewConnection(url: string, agent?: Agent): Promise<{ status: number; headers: IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, agent === undefined ? { agent: false, headers: { connection: 'close' } } : { agent }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/** The process that answered a /metrics scrape (its `x-image-cache-pid` header). */
function scrapedPid(scrape: { headers: IncomingHttpHeaders }): number {
  const pid = scrape.headers['x-image-cache-pid'];
  expect(pid).toMatch(/^\d+$/);
  return Number(pid);
}

/** The pids of `image_cache_server_process` in a /metrics answer: the processes whose metrics it holds. */
function processesIn(body: string): number[] {
  return [...body.matchAll(/^image_cache_server_process\{pid="(\d+)"\} 1$/gm)].map((match) => Number(match[1])).sort();
}

/** The sum of a metric's samples in a /metrics answer, over the label sets that contain `labels` (e.g. `route="/images/:id"`). */
function sample(body: string, name: string, ...labels: string[]): number {
  let sum = 0;
  for (const match of body.matchAll(new RegExp(`^${name}(?:\\{([^}]*)\\})? (\\S+)$`, 'gm'))) {
    const set = (match[1] ?? '').split(',');
    if (labels.every((label) => set.includes(label))) sum += Number(match[2]);
  }
  return sum;
}

/** The lines of a metric in a /metrics answer (every label set). */
function lines(body: string, name: string): string[] {
  return body.split('\n').filter((line) => line.startsWith(`${name} `) || line.startsWith(`${name}{`));
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
      seen.add(scrapedPid(scrape));
      // Whichever answers, the scrape holds both processes' metrics.
      expect(processesIn(scrape.body)).toEqual([...pids].sort());
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
  it('--workers 2: every scrape on either worker reports the whole server: request totals summed, the cache size once', async () => {
    const a = randomImage(2 * MiB + 17);
    const b = randomImage(MiB + 5);
    origin.images.set('agg-a', { data: a });
    origin.images.set('agg-b', { data: b });
    const server = await startServe({ cacheDir, origin: origin.template, args: ['--workers', '2'] });
    const pids = workerPids(server).sort();

    // Requests on connections of their own (spread over both workers), one after the other: the server's x-cache says which were hits.
    const plan = ['agg-a', 'agg-b', 'agg-a', 'agg-b', 'agg-a', 'agg-a', 'agg-b', 'agg-a', 'missing', 'agg-b'];
    let hits = 0;
    let misses = 0;
    let bytes = 0;
    for (const id of plan) {
      const result = await startDownload(`${server.url}/images/${id}`).done;
      if (id === 'missing') {
        expect(result.status).toBe(404);
        misses += 1;
        continue;
      }
      expect(result.status).toBe(200);
      expect(result.sha256).toBe(sha256(id === 'agg-a' ? a : b));
      if (result.headers['x-cache'] === 'HIT') hits += 1;
      else misses += 1;
      bytes += result.bytes;
    }
    expect(hits).toBeGreaterThan(0);
    expect(origin.count('agg-a') + origin.count('agg-b')).toBe(2);
    const cache = await ImageCache.open({ driver: new SqliteDriver({ cacheDir }), maxSize: 1024 ** 3 });
    // Both fills commit (on the server's side) by the time their later requests were hits; the directory says so.
    let size: number;
    try {
      while (!((await cache.isCached('agg-a')) && (await cache.isCached('agg-b')))) await new Promise((resolve) => setImmediate(resolve));
      size = await cache.getCacheSize();
    } finally {
      await cache.close();
    }
    expect(size).toBe(a.length + b.length);

    // A response's duration is observed once it has ended on the server's side: wait until every worker has (a condition, no clock).
    const imageRequests = (body: string) => sample(body, 'image_cache_http_request_duration_seconds_count', 'route="/images/:id"');
    for (;;) {
      const scrape = await getOnNewConnection(`${server.url}/metrics`);
      expect(scrape.status).toBe(200);
      if (imageRequests(scrape.body) === plan.length) break;
      expect(imageRequests(scrape.body)).toBeLessThan(plan.length);
    }

    // New connections go to the workers in turn: scrape until each has answered at least three times (bounded).
    const answered = new Map<number, number>();
    for (let i = 0; i < 60 && !(pids.every((pid) => (answered.get(pid) ?? 0) >= 3)); i++) {
      const scrape = await getOnNewConnection(`${server.url}/metrics`);
      expect(scrape.status).toBe(200);
      const pid = scrapedPid(scrape);
      answered.set(pid, (answered.get(pid) ?? 0) + 1);
      const body = scrape.body;
      expect(processesIn(body)).toEqual(pids);
      expect(lines(body, 'image_cache_hits_total')).toEqual([`image_cache_hits_total ${hits}`]);
      expect(lines(body, 'image_cache_misses_total')).toEqual([`image_cache_misses_total ${misses}`]);
      expect(sample(body, 'image_cache_served_bytes_total')).toBe(bytes);
      expect(lines(body, 'image_cache_origin_fetches_total')).toEqual(['image_cache_origin_fetches_total 3']);
      expect(imageRequests(body)).toBe(plan.length);
      expect(sample(body, 'image_cache_http_request_duration_seconds_bucket', 'route="/images/:id"', 'le="+Inf"')).toBe(plan.length);
      // Directory-wide gauges: the directory's value, not one per worker added up.
      expect(lines(body, 'image_cache_size_bytes')).toEqual([`image_cache_size_bytes ${size}`]);
      expect(lines(body, 'image_cache_max_size_bytes')).toHaveLength(1);
      expect(sample(body, 'image_cache_used_bytes', 'part="active"')).toBe(size);
      expect(lines(body, 'image_cache_queue_length')).toEqual(['image_cache_queue_length 0']);
      expect(lines(body, 'image_cache_fills_in_progress').sort()).toEqual(
        ['cached', 'follower', 'owner', 'pending'].map((role) => `image_cache_fills_in_progress{role="${role}"} 0`),
      );
      // Per process: one reserved series per worker.
      expect(lines(body, 'image_cache_used_bytes').filter((line) => line.includes('part="reserved"'))).toHaveLength(2);
    }
    expect([...answered.keys()].sort()).toEqual(pids);
    for (const pid of pids) expect(answered.get(pid)).toBeGreaterThanOrEqual(3);

    // The status page's request figures are the whole server's too, whichever worker answers.
    const statusPids = new Set<number>();
    for (let i = 0; i < 20 && statusPids.size < 2; i++) {
      const status = await getOnNewConnection(`${server.url}/v2/status`);
      expect(status.status).toBe(200);
      const report = JSON.parse(status.body) as { node: { pid: number }; requests: { scope: string; processes: number; hits: number; misses: number } };
      statusPids.add(report.node.pid);
      expect(report.requests).toMatchObject({ scope: 'server', processes: 2, hits, misses });
    }
    expect([...statusPids].sort()).toEqual(pids);
  }, 120_000);

  it('--workers 2: a worker or a primary that does not answer makes the scrape a 503 METRICS_UNAVAILABLE, never a hang or one worker\'s counters', async () => {
    const server = await startServe({ cacheDir, origin: origin.template, args: ['--workers', '2'] });
    const pids = workerPids(server);
    // One kept-alive connection: every request below reaches the worker that took it, whatever the others do.
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const first = await getOnNewConnection(`${server.url}/metrics`, agent);
      expect(first.status).toBe(200);
      const answering = scrapedPid(first);
      const other = pids.find((pid) => pid !== answering) as number;
      expect(pids).toContain(answering);

      // The other worker stopped: the primary's AggregatorRegistry gives up on it (prom-client's 5 s), the scrape says so.
      process.kill(other, 'SIGSTOP');
      try {
        const stalled = await getOnNewConnection(`${server.url}/metrics`, agent);
        expect(stalled.status).toBe(503);
        expect(stalled.headers['retry-after']).toBe('1');
        expect(scrapedPid(stalled)).toBe(answering);
        expect(JSON.parse(stalled.body)).toMatchObject({ code: 'METRICS_UNAVAILABLE' });
        expect(stalled.body).not.toMatch(/image_cache_hits_total/);
        // The status page still answers, with this worker's own figures, saying so.
        const status = await getOnNewConnection(`${server.url}/v2/status`, agent);
        expect(status.status).toBe(200);
        expect(JSON.parse(status.body)).toMatchObject({ node: { pid: answering }, requests: { scope: 'process', processes: 1 } });
      } finally {
        process.kill(other, 'SIGCONT');
      }
      const again = await getOnNewConnection(`${server.url}/metrics`, agent);
      expect(again.status).toBe(200);
      expect(processesIn(again.body)).toEqual([...pids].sort());

      // The primary stopped: the worker stops waiting for it after its own timeout.
      process.kill(server.pid, 'SIGSTOP');
      try {
        const orphaned = await getOnNewConnection(`${server.url}/metrics`, agent);
        expect(orphaned.status).toBe(503);
        expect(JSON.parse(orphaned.body)).toMatchObject({ code: 'METRICS_UNAVAILABLE', message: expect.stringMatching(/no answer from the primary process/) });
      } finally {
        process.kill(server.pid, 'SIGCONT');
      }
      const after = await getOnNewConnection(`${server.url}/metrics`, agent);
      expect(after.status).toBe(200);
      expect(processesIn(after.body)).toEqual([...pids].sort());
      // The refused scrapes are counted (HTTP_5XX), in the whole server's metrics.
      expect(sample(after.body, 'image_cache_errors_total', 'code="HTTP_5XX"')).toBeGreaterThanOrEqual(2);
    } finally {
      agent.destroy();
    }
    server.child.kill('SIGTERM');
    expect(await server.exited).toEqual({ code: 0, signal: null });
  }, 120_000);
});
