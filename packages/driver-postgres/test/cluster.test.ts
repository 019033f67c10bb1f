import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect } from 'vitest';
import { Readable } from 'node:stream';
import { CacheError, ErrorCodes, ImageCache, InvalidArgumentError } from '@cache/core';
import { readImage, writeImage } from '@cache/conformance';
import type { TestPostgresServer } from '@cache/postgres-testing';
import { PostgresDriver, type PostgresConnectionEvent } from '../src/index.js';
import { createDatabase, pgIt, sql, tempDir, testPostgres } from './helpers.js';

// Node registry and heartbeats (cache_nodes), peers holding an image, the cluster view; and a node that starts
// while its database is down. The outage case stops this file's own server (a copy of the template cluster).

let url: string;
let dir: string;
let cleanup: () => Promise<void>;
const opened: PostgresDriver[] = [];

beforeAll(async () => {
  if (testPostgres === undefined) return;
  url = await createDatabase('cluster');
  ({ dir, cleanup } = await tempDir('pg-cluster'));
}, 120_000);

afterEach(async () => {
  for (const d of opened.splice(0)) await d.close().catch(() => undefined);
});

afterAll(async () => {
  await cleanup?.();
  await testPostgres?.stop();
});

async function node(name: string, options: { heartbeatExpiryMillis?: number; connectionString?: string } = {}): Promise<PostgresDriver> {
  const cacheDir = join(dir, `${name}-${randomBytes(3).toString('hex')}`);
  await mkdir(cacheDir, { recursive: true });
  const d = new PostgresDriver({ cacheDir, connectionString: options.connectionString ?? url, nodeId: name, ...options });
  opened.push(d);
  caches.set(d, await ImageCache.open({ driver: d }));
  return d;
}

const caches = new WeakMap<PostgresDriver, ImageCache>();

/** Caches `data` as `id` on the node, verified against `sha256` when given (the digest is then stored). */
async function put(d: PostgresDriver, id: string, data: string, sha256?: string): Promise<void> {
  await caches.get(d)!.cacheImage(id, Readable.from([Buffer.from(data)]), sha256 === undefined ? {} : { checksum: { algorithm: 'sha256', digest: sha256 } });
}

describe('the node registry: heartbeats, peers, the cluster view', () => {
  pgIt('a node that sends heartbeats is alive with its URL; peers holding an image are the live ones other than the asker, with their digest', async () => {
    const a = await node('a-1');
    const b = await node('b-1');
    const c = await node('c-1');
    await put(a, 'img', 'hello', '2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824');
    await put(c, 'img', 'hello');
    await put(b, 'other', 'x');
    // No heartbeat yet: nobody is a peer (a node without an advertised URL cannot be fetched from).
    expect(await b.getPeerCopies('img')).toEqual([]);
    await a.heartbeat('http://127.0.0.1:1111/');
    await b.heartbeat('http://127.0.0.1:2222');
    await c.heartbeat('http://127.0.0.1:3333');
    const peers = await b.getPeerCopies('img');
    expect(peers.map((p) => p.nodeId).sort()).toEqual(['a-1', 'c-1']);
    expect(peers.find((p) => p.nodeId === 'a-1')).toEqual({ nodeId: 'a-1', url: 'http://127.0.0.1:1111', checksum: 'sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824', size: 5 });
    expect(peers.find((p) => p.nodeId === 'c-1')?.checksum).toBeUndefined();
    // The asker itself is never its own peer.
    expect((await a.getPeerCopies('img')).map((p) => p.nodeId)).toEqual(['c-1']);

    // A graceful stop: skipped at once.
    await c.leave();
    expect((await b.getPeerCopies('img')).map((p) => p.nodeId)).toEqual(['a-1']);

    const status = await b.getClusterStatus();
    const byId = Object.fromEntries(status.nodes.map((n) => [n.nodeId, n]));
    expect(byId['a-1']).toMatchObject({ url: 'http://127.0.0.1:1111', health: 'alive', images: 1, bytes: 5, self: false });
    expect(byId['b-1']).toMatchObject({ health: 'alive', images: 1, bytes: 1, self: true });
    expect(byId['c-1']).toMatchObject({ health: 'stopped', images: 1 });
    expect(status.images.map((i) => [i.imageId, i.size, i.copies.map((c) => `${c.nodeId}:${c.health}`)])).toEqual([
      ['img', 5, ['a-1:alive', 'c-1:stopped']],
      ['other', 1, ['b-1:alive']],
    ]);
    // A heartbeat after a stop brings the node back.
    await c.heartbeat('http://127.0.0.1:3333');
    expect((await b.getPeerCopies('img')).map((p) => p.nodeId).sort()).toEqual(['a-1', 'c-1']);
  });

  pgIt('a node whose heartbeat is older than the expiry is dead: skipped as a peer; forgetNode removes it and its rows', async () => {
    const a = await node('a-2');
    const b = await node('b-2', { heartbeatExpiryMillis: 60_000 });
    await put(a, 'img2', 'abc');
    await a.heartbeat('http://127.0.0.1:1112');
    expect((await b.getPeerCopies('img2')).map((p) => p.nodeId)).toEqual(['a-2']);
    // The last heartbeat an hour ago (what a crashed node leaves behind), written straight into the table.
    await sql(url, `UPDATE cache_nodes SET heartbeat_at = now() - interval '1 hour' WHERE node_reference_id = (SELECT node_reference_id FROM node_reference WHERE node_reference_url = 'a-2')`);
    expect(await b.getPeerCopies('img2')).toEqual([]);
    expect((await b.getClusterStatus()).nodes.find((n) => n.nodeId === 'a-2')?.health).toBe('dead');
    expect(await b.forgetNode('a-2')).toBe(1);
    const status = await b.getClusterStatus();
    expect(status.nodes.map((n) => n.nodeId)).not.toContain('a-2');
    expect(status.images.map((i) => i.imageId)).not.toContain('img2');
  });

  pgIt('bad input: a URL that is not http(s), an invalid id; typed errors, nothing written', async () => {
    const a = await node('a-3');
    await expect(a.heartbeat('ftp://x')).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(a.heartbeat('')).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(a.getPeerCopies('../x')).rejects.toMatchObject({ code: ErrorCodes.INVALID_IMAGE_ID });
    expect((await a.getClusterStatus()).nodes.find((n) => n.nodeId === 'a-3')?.health).toBe('unknown');
    expect(() => new PostgresDriver({ cacheDir: dir, connectionString: url, heartbeatExpiryMillis: 0 })).toThrow(InvalidArgumentError);
  });
});

describe('startWhileUnavailable: a node started while PostgreSQL is down', () => {
  let server: TestPostgresServer | undefined;
  let ownUrl: string;
  beforeAll(async () => {
    if (testPostgres === undefined) return;
    server = await testPostgres.startServer(`clusterdown-${randomBytes(3).toString('hex')}`);
    ownUrl = await createDatabase('clusterdown', server);
  }, 120_000);
  afterAll(async () => {
    await server?.stop({ mode: 'immediate' }).catch(() => undefined);
  });

  pgIt('configure() resolves, files are read, commits and cluster calls fail typed; it reconnects with backoff and then works', async () => {
    // A file cached while the database was up, by the same node.
    const { dir: cacheDir, cleanup: done } = await tempDir('pg-start-down');
    try {
      const first = new PostgresDriver({ cacheDir, connectionString: ownUrl, nodeId: 'n-down' });
      await first.configure();
      await writeImage(first, 'kept', Buffer.from('kept bytes'));
      await first.close();
      await server!.stop({ mode: 'immediate' });

      // Without the option: configure() rejects (as before).
      const strict = new PostgresDriver({ cacheDir, connectionString: ownUrl, nodeId: 'n-down', connectionTimeoutMillis: 1000 });
      await expect(strict.configure()).rejects.toMatchObject({ code: ErrorCodes.STORAGE });

      const events: PostgresConnectionEvent[] = [];
      let connected!: () => void;
      const whenConnected = new Promise<void>((resolve) => (connected = resolve));
      let failures = 0;
      let failedTwice!: () => void;
      const whenFailedTwice = new Promise<void>((resolve) => (failedTwice = resolve));
      const d = new PostgresDriver({
        cacheDir,
        connectionString: ownUrl,
        nodeId: 'n-down',
        connectionTimeoutMillis: 1000,
        startWhileUnavailable: true,
        reconnectDelayMillis: 50,
        reconnectMaxDelayMillis: 200,
        onWarning: () => undefined,
        onConnection: (event) => {
          events.push(event);
          if (event.state === 'connected') connected();
          else if (++failures === 2) failedTwice();
        },
      });
      opened.push(d);
      await d.configure();
      expect(d.connected).toBe(false);
      expect((await readImage(d, 'kept')).toString()).toBe('kept bytes');
      const commit = writeImage(d, 'new', Buffer.from('new'));
      await expect(commit).rejects.toSatisfy((e: unknown) => CacheError.isCacheError(e) && (e as CacheError).code === ErrorCodes.STORAGE);
      expect(await d.isCached('new')).toBe(false);
      await expect(d.getPeerCopies('kept')).rejects.toMatchObject({ code: ErrorCodes.STORAGE });
      await expect(d.heartbeat('http://127.0.0.1:9')).rejects.toMatchObject({ code: ErrorCodes.STORAGE });

      await whenFailedTwice;
      const delays = events.filter((e) => e.state === 'unavailable').map((e) => (e as { retryInMillis: number }).retryInMillis);
      expect(delays.slice(0, 2)).toEqual([50, 100]); // doubled per attempt
      expect(delays.every((ms) => ms <= 200)).toBe(true);

      await server!.start();
      await whenConnected;
      expect(d.connected).toBe(true);
      await writeImage(d, 'after', Buffer.from('after'));
      await d.heartbeat('http://127.0.0.1:9');
      const status = await d.getClusterStatus();
      expect(status.nodes.find((n) => n.nodeId === 'n-down')?.health).toBe('alive');
      expect(status.images.map((i) => i.imageId)).toEqual(['after', 'kept']);
    } finally {
      await done();
    }
  }, 60_000);
});
