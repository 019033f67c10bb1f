import { createHash, randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImageCache, InvalidArgumentError } from '@cache/core';
import { PostgresDriver } from '@cache/driver-postgres';
import { createOrigin } from '@cache/origin';
import { tryStartTestPostgres } from '@cache/postgres-testing';
import { createCacheServer, defaultAdvertiseUrl, PEER_HEADER, type CacheServer } from '../src/index.js';
import { imageBytes, startHarness, TestOrigin } from './helpers.js';

describe('cluster options and the peer header (no database needed)', () => {
  it('GET /v2/cache/cluster on a server that is not a cluster node: 409 NOT_A_CLUSTER, behind the management token', async () => {
    const h = await startHarness({ token: 'tok' });
    try {
      expect((await fetch(`${h.url}/v2/cache/cluster`)).status).toBe(401);
      const response = await fetch(`${h.url}/v2/cache/cluster`, { headers: { authorization: 'Bearer tok' } });
      expect(response.status).toBe(409);
      expect(await response.json()).toMatchObject({ code: 'NOT_A_CLUSTER' });
      // A literal path: other methods are 405, not "queue an image called cluster".
      expect((await fetch(`${h.url}/v2/cache/cluster`, { method: 'PUT', headers: { authorization: 'Bearer tok' } })).status).toBe(405);
    } finally {
      await h.close();
    }
  });

  it('a request with the peer header is answered from the files only: a miss is 404 NOT_CACHED_HERE and the origin is not asked; a hit is served', async () => {
    const h = await startHarness();
    try {
      h.origin.images.set('img', { kind: 'ok', data: imageBytes('img', 5000) });
      const miss = await fetch(`${h.url}/images/img`, { headers: { [PEER_HEADER]: 'node-x' } });
      expect(miss.status).toBe(404);
      expect(await miss.json()).toMatchObject({ code: 'NOT_CACHED_HERE' });
      expect(h.origin.count('img')).toBe(0);
      expect(await h.cache.isCached('img')).toBe(false);
      const filled = await fetch(`${h.url}/images/img`);
      expect(filled.status).toBe(200);
      await filled.arrayBuffer(); // ends once the entry is committed
      const hit = await fetch(`${h.url}/images/img`, { headers: { [PEER_HEADER]: 'node-x' } });
      expect(hit.status).toBe(200);
      expect(Buffer.from(await hit.arrayBuffer()).equals(imageBytes('img', 5000))).toBe(true);
      expect(h.origin.count('img')).toBe(1);
    } finally {
      await h.close();
    }
  });

  it('bad cluster options are InvalidArgumentErrors naming the option; the default advertised URL replaces a wildcard address by the host name', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cluster-options-'));
    const { MemoryDriver } = await import('@cache/core');
    const cache = await ImageCache.open({ driver: new MemoryDriver({ cacheDir: dir }) });
    try {
      const directory = { nodeId: 'n', heartbeat: async () => undefined, leave: async () => undefined, getPeerCopies: async () => [], getClusterStatus: async () => ({ nodes: [], images: [] }) };
      await expect(createCacheServer({ cache, cluster: { directory: {} as never } })).rejects.toThrow(/options\.cluster\.directory/);
      await expect(createCacheServer({ cache, cluster: { directory, advertiseUrl: 'ftp://x' } })).rejects.toThrow(/options\.cluster\.advertiseUrl/);
      await expect(createCacheServer({ cache, cluster: { directory, heartbeatInterval: 0 } })).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(createCacheServer({ cache, cluster: { directory, peerTimeout: 1.5 } })).rejects.toThrow(/options\.cluster\.peerTimeout/);
      expect(defaultAdvertiseUrl('http://0.0.0.0:8080')).toBe(`http://${hostname()}:8080`);
      expect(defaultAdvertiseUrl('https://127.0.0.1:8443/')).toBe('https://127.0.0.1:8443');
    } finally {
      await cache.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

// Two in-process nodes on a real PostgreSQL: a peer's copy that fails its digest is not cached, and is not asked again.
const { pg, skipReason } = await tryStartTestPostgres();
afterAll(() => pg?.stop());

interface Node {
  cache: ImageCache;
  dir: string;
  server: CacheServer;
  url: string;
}

describe(`peer copies are verified by their digest${skipReason === undefined ? '' : ` [skipped: ${skipReason}]`}`, () => {
  if (skipReason !== undefined) {
    it.skip(`a tampered peer copy [skipped: ${skipReason}]`, () => undefined);
    return;
  }
  let origin: TestOrigin;
  let connectionString: string;
  const nodes: Node[] = [];
  beforeAll(async () => {
    origin = await TestOrigin.start();
    connectionString = await pg!.createDatabase(`peers_${randomBytes(3).toString('hex')}`);
  }, 120_000);
  afterAll(async () => {
    for (const node of nodes) {
      await node.server.close();
      await rm(node.dir, { recursive: true, force: true });
    }
    await origin?.close();
  });

  async function startNode(nodeId: string, allowUnverified = false): Promise<Node> {
    const dir = await mkdtemp(join(tmpdir(), `peer-${nodeId}-`));
    const driver = new PostgresDriver({ cacheDir: dir, connectionString, nodeId });
    const cache = await ImageCache.open({ driver });
    const server = await createCacheServer({
      cache,
      origin: createOrigin(origin.template),
      pruneInterval: 0,
      cleanInterval: 0,
      prefetchInterval: 0,
      closeCache: true,
      cluster: { directory: driver, heartbeatInterval: 60_000, allowUnverified },
    });
    const node = { cache, dir, server, url: await server.listen() };
    nodes.push(node);
    return node;
  }

  it('a copy whose bytes do not match the digest its node recorded: the fill fails and caches nothing; the next miss skips that copy and reads the origin', async () => {
    const data = imageBytes('tampered', 100_000);
    origin.images.set('tampered', { kind: 'ok', data, headers: { 'repr-digest': `sha-256=:${createHash('sha256').update(data).digest('base64')}:` } });
    // allowUnverified on B: even once A's row has lost its digest, only the distrust keeps B from A's copy.
    const a = await startNode('node-a');
    const b = await startNode('node-b', true);
    const onA = await fetch(`${a.url}/images/tampered`);
    expect(onA.status).toBe(200);
    expect(Buffer.from(await onA.arrayBuffer()).equals(data)).toBe(true); // the body ends once the entry is committed
    expect(origin.count('tampered')).toBe(1);
    // The file on A changes behind its back (same size): its recorded digest no longer matches.
    const bad = Buffer.from(data);
    bad[50_000] = (bad[50_000] ?? 0) ^ 0xff;
    await writeFile(join(a.dir, 'tampered'), bad);

    const first = await fetch(`${b.url}/images/tampered`);
    expect(first.status).toBe(200); // the status line went out before the last byte
    await expect(first.arrayBuffer()).rejects.toThrow(); // cut before the last byte: never a whole-looking wrong body
    expect(await b.cache.isCached('tampered')).toBe(false);
    expect(origin.count('tampered')).toBe(1);

    const second = await fetch(`${b.url}/images/tampered`);
    expect(second.status).toBe(200);
    expect(Buffer.from(await second.arrayBuffer()).equals(data)).toBe(true);
    expect(origin.count('tampered')).toBe(2);
    expect(await b.cache.isCached('tampered')).toBe(true);
    const metrics = await (await fetch(`${b.url}/metrics`)).text();
    expect(metrics).toMatch(/^image_cache_peer_fetches_total\{result="ok"\} 1$/m);
  }, 60_000);

  it('HEAD of a miss on a node whose peer holds the image: the size and digest ETag its peer recorded, without asking the origin or the peer', async () => {
    const data = imageBytes('described', 50_000);
    const hex = createHash('sha256').update(data).digest('hex');
    origin.images.set('described', { kind: 'ok', data, headers: { 'repr-digest': `sha-256=:${createHash('sha256').update(data).digest('base64')}:` } });
    const c = await startNode('node-c');
    const d = await startNode('node-d');
    // Not held by any peer yet: the origin answers the HEAD.
    const before = await fetch(`${d.url}/images/described`, { method: 'HEAD' });
    expect(before.status).toBe(200);
    expect(origin.count('described')).toBe(1);
    const onC = await fetch(`${c.url}/images/described`);
    expect(Buffer.from(await onC.arrayBuffer()).equals(data)).toBe(true);
    expect(origin.count('described')).toBe(2);

    const head = await fetch(`${d.url}/images/described`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers.get('x-cache')).toBe('MISS');
    expect(head.headers.get('content-length')).toBe(String(data.length));
    expect(head.headers.get('etag')).toBe(`"sha256:${hex}"`);
    expect(origin.count('described')).toBe(2);
    expect(await d.cache.isCached('described')).toBe(false);
    const metrics = await (await fetch(`${d.url}/metrics`)).text();
    expect(metrics).not.toMatch(/^image_cache_peer_fetches_total\{result="ok"\} [1-9]/m);
  }, 60_000);
});
