// A cluster that shares its images, driven as an operator would: three `image-cache serve` processes (the built
// binary) on one real PostgreSQL server of this file's own, a real HTTP origin that counts its requests, real
// ports on 127.0.0.1. One node killed, one stopped, the database stopped and started again.
import { createHash, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tryStartTestPostgres, type TestPostgresServer } from '@cache/postgres-testing';
import { cli, startServe, tempDir, type ServeProcess } from './helpers.js';

const { pg, skipReason: unavailable } = await tryStartTestPostgres();

const images: Record<string, Buffer> = {
  shared: Buffer.from(Array.from({ length: 700_000 }, (_, i) => (i * 7 + 3) % 251)),
  lonely: Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 13 + 1) % 241)),
  outage: Buffer.from(Array.from({ length: 200_000 }, (_, i) => (i * 5 + 2) % 239)),
  undigested: Buffer.alloc(50_000, 'u'),
};
/** Origin requests per image id. */
const originRequests = new Map<string, number>();
const origin = createServer((request, response) => {
  const id = decodeURIComponent((request.url ?? '').replace(/^\/images\//, ''));
  originRequests.set(id, (originRequests.get(id) ?? 0) + 1);
  const data = images[id];
  if (data === undefined) {
    response.writeHead(404).end();
    return;
  }
  const headers: Record<string, string | number> = { 'content-length': data.length };
  // Every image but `undigested` announces its digest, so nodes record it and peers can verify their copies.
  if (id !== 'undigested') headers['repr-digest'] = `sha-256=:${createHash('sha256').update(data).digest('base64')}:`;
  response.writeHead(200, headers);
  response.end(data);
});

let pgServer: TestPostgresServer;
let databaseUrl: string;
let root: string;
let cleanup: () => Promise<void>;
let template: string;
const processes: ServeProcess[] = [];

beforeAll(async () => {
  if (pg === undefined) return;
  pgServer = await pg.startServer(`cluster-${randomBytes(3).toString('hex')}`);
  databaseUrl = await pgServer.createDatabase('cluster');
  ({ dir: root, cleanup } = await tempDir('cluster'));
  origin.listen(0, '127.0.0.1');
  await new Promise((resolve) => origin.once('listening', resolve));
  template = `http://127.0.0.1:${(origin.address() as AddressInfo).port}/images/{id}`;
}, 120_000);

afterAll(async () => {
  for (const p of processes) p.kill();
  await Promise.all(processes.map((p) => p.exited));
  origin.closeAllConnections();
  origin.close();
  await pgServer?.stop({ mode: 'immediate' }).catch(() => undefined);
  await pg?.stop();
  await cleanup?.();
});

const env = () => ({ IMAGE_CACHE_DRIVER: 'postgres', IMAGE_CACHE_DATABASE_URL: databaseUrl });

/** Starts node `name` (its own cache directory, its access log beside it). */
function node(name: string, extra: string[] = []): ServeProcess {
  const p = startServe(
    [
      'serve',
      '--port', '0',
      '--cache-dir', join(root, name),
      '--node-id', name,
      '--origin', template,
      '--heartbeat-interval', '200ms',
      '--heartbeat-expiry', '5s',
      '--access-log', join(root, `${name}.access.log`),
      '--prune-interval', '0',
      '--clean-interval', '0',
      '--prefetch-interval', '0',
      ...extra,
    ],
    { cwd: root, env: env() },
  );
  processes.push(p);
  return p;
}

async function get(url: string): Promise<{ status: number; body: Buffer; xCache: string | null }> {
  const response = await fetch(url);
  return { status: response.status, body: Buffer.from(await response.arrayBuffer()), xCache: response.headers.get('x-cache') };
}

interface ClusterBody {
  node_id: string;
  nodes: { node_id: string; health: string; url: string | null; images: number }[];
  images: { image_id: string; size: number; hits: number; nodes: { node_id: string; health: string; hits: number }[] }[];
}

async function cluster(url: string): Promise<ClusterBody> {
  const response = await fetch(`${url}/v2/cache/cluster`);
  expect(response.status).toBe(200);
  return (await response.json()) as ClusterBody;
}

/** Polls `check` until it returns true (a condition, not a delay: each round is a real request). */
async function until(what: string, check: () => Promise<boolean>, rounds = 600): Promise<void> {
  for (let i = 0; i < rounds; i++) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`gave up waiting until ${what}`);
}

async function accessLog(name: string): Promise<{ id: string | null; cache: string | null; status: number }[]> {
  const text = await readFile(join(root, `${name}.access.log`), 'utf8').catch(() => '');
  return text.split('\n').filter(Boolean).map((line) => JSON.parse(line) as { id: string | null; cache: string | null; status: number });
}

async function metric(url: string, line: RegExp): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return Number(line.exec(text)?.[1] ?? 0);
}

describe('cluster flags: bad input is a usage error before anything is opened', () => {
  const base = (dir: string) => ['--driver', 'postgres', '--database-url', 'postgresql://127.0.0.1:1/nowhere', '--cache-dir', dir];
  it('an expiry not longer than the heartbeat interval, an advertised URL that is not http(s); list --cluster and nodes on another driver', async () => {
    const { dir, cleanup: done } = await tempDir('cluster-flags');
    try {
      const expiry = await cli([...base(dir), '--heartbeat-expiry', '10s', 'serve', '--port', '0', '--heartbeat-interval', '10s'], { env: {} });
      expect(expiry.code).toBe(2);
      expect(expiry.stderr).toContain('--heartbeat-expiry (10s) must be longer than --heartbeat-interval (10s)');
      expect(expiry.stderr).toContain('CLI_INVALID_DURATION');
      const url = await cli([...base(dir), 'serve', '--port', '0', '--advertise-url', 'ftp://node-a'], { env: {} });
      expect(url.code).toBe(2);
      expect(url.stderr).toContain('use an http(s) URL other nodes can reach');
      const zero = await cli([...base(dir), 'serve', '--port', '0', '--peer-timeout', '0'], { env: {} });
      expect(zero.code).toBe(2);
      for (const argv of [['list', '--cluster'], ['nodes'], ['nodes', 'forget', 'x']]) {
        const other = await cli(['--cache-dir', dir, ...argv], { env: {} });
        expect(other.code, argv.join(' ')).toBe(2);
        expect(other.stderr).toContain('needs the postgres driver');
      }
    } finally {
      await done();
    }
  });
});

describe(`image-cache serve as a cluster on one PostgreSQL${unavailable === undefined ? '' : ` [skipped: ${unavailable}]`}`, () => {
  if (unavailable !== undefined) {
    it.skip(`three nodes share their images [skipped: ${unavailable}]`, () => undefined);
    return;
  }

  it('three nodes: B and C get the image A fetched from A, not the origin; listing over HTTP and the CLI; a killed node is skipped, a stopped one says so; nodes forget', async () => {
    const a = node('node-a');
    const b = node('node-b');
    const c = node('node-c');
    const [urlA, urlB, urlC] = await Promise.all([a.url, b.url, c.url]);
    expect(a.output().stderr).toContain(`cluster node node-a, advertised as ${urlA}`);

    // A miss on A reads the origin; misses on B and C are served from a peer's copy, verified by its digest.
    const first = await get(`${urlA}/images/shared`);
    expect(first.status).toBe(200);
    expect(first.body.equals(images.shared!)).toBe(true);
    expect(originRequests.get('shared')).toBe(1);
    const fromPeer = await get(`${urlB}/images/shared`);
    expect(fromPeer.status).toBe(200);
    expect(fromPeer.body.equals(images.shared!)).toBe(true);
    const fromPeerAgain = await get(`${urlC}/images/shared`);
    expect(fromPeerAgain.body.equals(images.shared!)).toBe(true);
    expect(originRequests.get('shared')).toBe(1); // read once per cluster
    // Cached on B now: a hit.
    expect((await get(`${urlB}/images/shared`)).xCache).toBe('HIT');
    // B's own requests: PEER, then HIT (C's peer request may have been a HIT on B too: C picks a peer at random).
    // Access log lines and byte counters are written as each response ends, after the client has its last byte: wait for them.
    const linesOf = async (name: string) => (await accessLog(name)).filter((l) => l.id === 'shared').map((l) => l.cache);
    await until("node-b's and node-c's access logs have their requests of shared", async () => (await linesOf('node-b')).length >= 2 && (await linesOf('node-c')).length >= 1);
    await until("node-b counted the peer's bytes", async () => (await metric(urlB, /^image_cache_served_bytes_total\{source="peer"\} (\d+)$/m)) === images.shared!.length);
    const onB = await linesOf('node-b');
    expect(onB[0]).toBe('PEER');
    expect(onB.slice(1).every((cache) => cache === 'HIT') && onB.length >= 2).toBe(true);
    expect((await accessLog('node-c')).filter((l) => l.id === 'shared').map((l) => l.cache)).toEqual(['PEER']);
    expect(await metric(urlB, /^image_cache_peer_fetches_total\{result="ok"\} (\d+)$/m)).toBe(1);
    expect(await metric(urlB, /^image_cache_served_bytes_total\{source="peer"\} (\d+)$/m)).toBe(images.shared!.length);
    expect(await metric(urlB, /^image_cache_origin_fetches_total (\d+)$/m)).toBe(0);

    // A peer request never makes the peer go to its origin (no loops): a miss there is a 404.
    const peerMiss = await fetch(`${urlA}/images/lonely`, { headers: { 'x-image-cache-peer': 'test' } });
    expect(peerMiss.status).toBe(404);
    expect(((await peerMiss.json()) as { code: string }).code).toBe('NOT_CACHED_HERE');
    expect(originRequests.get('lonely')).toBeUndefined();

    // A copy without a recorded digest is not fetched from a peer (nothing could verify it): the origin is read.
    expect((await get(`${urlA}/images/undigested`)).status).toBe(200);
    expect((await get(`${urlB}/images/undigested`)).status).toBe(200);
    expect(originRequests.get('undigested')).toBe(2);

    // The cluster over HTTP: which nodes hold what, sizes, hits, health.
    const view = await cluster(urlC);
    expect(view.node_id).toBe('node-c');
    expect(view.nodes.map((n) => [n.node_id, n.health, n.url])).toEqual([
      ['node-a', 'alive', urlA],
      ['node-b', 'alive', urlB],
      ['node-c', 'alive', urlC],
    ]);
    // Hits reach the database in batches (each server writes them every second): wait until B's and C's reads are in.
    const sharedHits = async () => (await cluster(urlC)).images.find((i) => i.image_id === 'shared')?.hits;
    await until('the 3 completed reads of shared are recorded', async () => (await sharedHits()) === 3);
    const shared = (await cluster(urlC)).images.find((i) => i.image_id === 'shared');
    expect(shared?.size).toBe(images.shared!.length);
    expect(shared?.nodes.map((n) => n.node_id)).toEqual(['node-a', 'node-b', 'node-c']);
    // B read A's copy, then its own; C read A's or B's: 3 hits on A and B together, none on C's fresh copy.
    expect(shared?.hits).toBe(3);
    expect(shared?.nodes.find((n) => n.node_id === 'node-c')?.hits).toBe(0);

    // ... and with the CLI.
    const listed = await cli(['--cache-dir', join(root, 'node-c'), '--node-id', 'node-c', '--heartbeat-expiry', '5s', 'list', '--cluster', '--json'], { env: env() });
    expect(listed.code, listed.stderr).toBe(0);
    const status = JSON.parse(listed.stdout) as { nodes: { nodeId: string; health: string }[]; images: { imageId: string; copies: { nodeId: string }[] }[] };
    expect(status.nodes.map((n) => `${n.nodeId}:${n.health}`)).toEqual(['node-a:alive', 'node-b:alive', 'node-c:alive']);
    expect(status.images.find((i) => i.imageId === 'shared')?.copies.map((c) => c.nodeId)).toEqual(['node-a', 'node-b', 'node-c']);
    const table = await cli(['--cache-dir', join(root, 'node-c'), '--node-id', 'node-c', '--heartbeat-expiry', '5s', 'list', '--cluster'], { env: env() });
    expect(table.stdout).toMatch(/│ shared +│ +684 KiB │ +3 │ node-a \(alive, \d hits\), node-b \(alive, \d hits\), node-c \(alive, 0 hits\) +│/);
    expect(table.stdout).toMatch(/│ node-c \(this\) +│ alive +│ http:\/\/127\.0\.0\.1:\d+ +│/);

    // `lonely` only on A. A is killed (no goodbye): its heartbeat is still fresh, so C tries it, fails, and reads the origin.
    expect((await get(`${urlA}/images/lonely`)).status).toBe(200);
    expect(originRequests.get('lonely')).toBe(1);
    a.kill();
    await a.exited;
    const afterKill = await get(`${urlC}/images/lonely`);
    expect(afterKill.status).toBe(200);
    expect(afterKill.body.equals(images.lonely!)).toBe(true);
    expect(originRequests.get('lonely')).toBe(2);
    // C tried A's copy and failed over to the origin, unless A's heartbeat had already expired (then it was skipped unasked).
    const failed = await metric(urlC, /^image_cache_peer_fetches_total\{result="failed"\} (\d+)$/m);
    if (failed === 0) expect((await cluster(urlC)).nodes.find((n) => n.node_id === 'node-a')?.health).toBe('dead');
    else expect(failed).toBe(1);

    // B stops gracefully: listed as stopped at once; A is dead once its heartbeat expires.
    b.signal('SIGTERM');
    expect(await b.exited).toBe(0);
    await until('node-a is dead and node-b stopped', async () => {
      const nodes = (await cluster(urlC)).nodes.map((n) => `${n.node_id}:${n.health}`);
      return nodes.join() === 'node-a:dead,node-b:stopped,node-c:alive';
    });

    // Forgetting: refused for a live node, done for the dead one (its rows go, the files stay).
    const refused = await cli(['--cache-dir', join(root, 'node-c'), '--node-id', 'node-c', '--heartbeat-expiry', '5s', 'nodes', 'forget', 'node-c'], { env: env() });
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain('is alive');
    const forgot = await cli(['--cache-dir', join(root, 'node-c'), '--node-id', 'node-c', '--heartbeat-expiry', '5s', 'nodes', 'forget', 'node-a'], { env: env() });
    expect(forgot.code, forgot.stderr).toBe(0);
    expect(forgot.stdout).toContain('forgot node node-a and its 3 image row(s)');
    expect((await cluster(urlC)).nodes.map((n) => n.node_id)).toEqual(['node-b', 'node-c']);
    const unknown = await cli(['--cache-dir', join(root, 'node-c'), '--node-id', 'node-c', '--heartbeat-expiry', '5s', 'nodes', 'forget', 'node-a'], { env: env() });
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('CLI_NOT_FOUND');
  }, 180_000);

  it('the database stops: nodes keep serving their hits; a node started meanwhile serves (misses uncached) and joins once it is back', async () => {
    const c = node('node-e');
    const urlC = await c.url;
    expect((await get(`${urlC}/images/outage`)).status).toBe(200);
    const fetched = originRequests.get('outage') ?? 0;

    await pgServer.stop({ mode: 'immediate' });
    const hit = await get(`${urlC}/images/outage`);
    expect(hit.status).toBe(200);
    expect(hit.xCache).toBe('HIT');
    expect(hit.body.equals(images.outage!)).toBe(true);

    // A node started while the database is down: it listens, says so, serves misses from the origin without caching them.
    const d = node('node-f');
    const urlD = await d.url;
    expect(d.output().stderr).toMatch(/PostgreSQL unreachable \(attempt 1\).*serving the local cache/);
    const miss = await get(`${urlD}/images/outage`);
    expect(miss.status).toBe(200);
    expect(miss.body.equals(images.outage!)).toBe(true);
    expect(originRequests.get('outage')).toBe(fetched + 1);
    expect((await get(`${urlD}/images/outage`)).xCache).toBe('MISS'); // not cached: nothing could be committed

    await pgServer.start();
    await until('node-f reached the database', async () => /PostgreSQL answers again: node registered/.test(d.output().stderr), 1200);
    // Both nodes work normally again: node-f's miss comes from node-e's copy, not from the origin.
    await until('node-e and node-f are alive', async () => {
      const nodes = (await cluster(urlD)).nodes.filter((n) => n.health === 'alive').map((n) => n.node_id);
      return nodes.includes('node-e') && nodes.includes('node-f');
    });
    const before = originRequests.get('outage');
    const shared = await get(`${urlD}/images/outage`);
    expect(shared.status).toBe(200);
    expect(shared.body.equals(images.outage!)).toBe(true);
    expect(originRequests.get('outage')).toBe(before);
    // The access log line is written after the response ends (asynchronously): wait for the third one.
    const outageLines = async () => (await accessLog('node-f')).filter((l) => l.id === 'outage').map((l) => l.cache);
    await until("node-f's access log has the third request of outage", async () => (await outageLines()).length >= 3);
    expect(await outageLines()).toEqual(['MISS', 'MISS', 'PEER']);
    expect((await get(`${urlD}/images/outage`)).xCache).toBe('HIT');
  }, 180_000);
});
