import { mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect } from 'vitest';
import type { CachedImage } from '@cache/core';
import { PostgresDriver, defaultNodeId, type ClusterImage } from '../src/index.js';
import { createDatabase, runWorker, pgIt, skipReason, sql, tempDir } from './helpers.js';

// Nodes are separate Node.js processes (test/fixtures/node-worker.mjs, on the
// built dist) with separate cache directories, sharing one database.

let root: string;
let cleanup: () => Promise<void>;

beforeAll(async () => {
  ({ dir: root, cleanup } = await tempDir('pg-multi-node'));
});

afterAll(async () => {
  await cleanup();
});

async function nodeDir(name: string): Promise<string> {
  const dir = join(root, name);
  await mkdir(dir, { recursive: true });
  return dir;
}

const ids = (images: unknown) => (images as CachedImage[]).map((image) => image.imageId);
const files = async (dir: string) => (await readdir(dir, { withFileTypes: true })).filter((d) => d.isFile()).map((d) => d.name).sort();

describe('several nodes on one database, each in its own process', () => {
  pgIt('cache, list, prune and delete independently per node; getCachedNodes and getClusterImages see them all', async () => {
    const connectionString = await createDatabase('nodes');
    const [dirA, dirB, dirC] = await Promise.all([nodeDir('a'), nodeDir('b'), nodeDir('c')]);
    const A = { cacheDir: dirA, connectionString, nodeId: 'http://node-a:9292' };
    const B = { cacheDir: dirB, connectionString, nodeId: 'http://node-b:9292' };
    const C = { cacheDir: dirC, connectionString, nodeId: 'http://node-c:9292' };

    await Promise.all([
      runWorker({ ...A, steps: [{ op: 'cache', ids: ['x', 'y', 'shared'], size: 100 }] }),
      runWorker({ ...B, steps: [{ op: 'cache', ids: ['shared', 'z'], size: 100 }] }),
      runWorker({ ...C, steps: [{ op: 'cache', ids: ['shared'], size: 100 }] }),
    ]);

    const [listA, readX, nodesShared, cluster] = await runWorker({
      ...A,
      steps: [{ op: 'list' }, { op: 'read', id: 'x', times: 3 }, { op: 'nodes', id: 'shared' }, { op: 'cluster' }],
    });
    expect(ids(listA)).toEqual(['shared', 'x', 'y']);
    expect(readX).toBe(300);
    expect(nodesShared).toEqual(['http://node-a:9292', 'http://node-b:9292', 'http://node-c:9292']);
    expect((cluster as ClusterImage[]).map(({ imageId, nodes, hits }) => [imageId, nodes.length, hits])).toEqual([
      ['shared', 3, 0],
      ['x', 1, 3],
      ['y', 1, 0],
      ['z', 1, 0],
    ]);

    // A prunes to 100 bytes: y and shared (least recently accessed) go, x (just read) stays. B and C are untouched.
    const [pruned, afterPrune, nodesAfterPrune] = await runWorker({
      ...A,
      steps: [{ op: 'prune', maxSize: 100 }, { op: 'list' }, { op: 'nodes', id: 'shared' }],
    });
    expect(pruned).toEqual({ files: 2, bytes: 200 });
    expect(ids(afterPrune)).toEqual(['x']);
    expect(nodesAfterPrune).toEqual(['http://node-b:9292', 'http://node-c:9292']);
    expect(await files(dirA)).toEqual(['x']);

    const [listB, deleted, nodesAfterDelete, clusterAfter] = await runWorker({
      ...B,
      steps: [{ op: 'list' }, { op: 'deleteAll' }, { op: 'nodes', id: 'shared' }, { op: 'cluster' }],
    });
    expect(ids(listB)).toEqual(['shared', 'z']);
    expect(deleted).toBe(2);
    expect(nodesAfterDelete).toEqual(['http://node-c:9292']);
    expect((clusterAfter as ClusterImage[]).map(({ imageId, nodes }) => [imageId, nodes])).toEqual([
      ['shared', ['http://node-c:9292']],
      ['x', ['http://node-a:9292']],
    ]);
    expect(await files(dirB)).toEqual([]);

    // C deletes one image; A's listing and hits are unaffected.
    const [, listC] = await runWorker({ ...C, steps: [{ op: 'delete', id: 'shared' }, { op: 'list' }] });
    expect(listC).toEqual([]);
    const [finalA] = await runWorker({ ...A, steps: [{ op: 'list' }] });
    expect((finalA as CachedImage[]).map(({ imageId, hits, size }) => ({ imageId, hits, size }))).toEqual([{ imageId: 'x', hits: 3, size: 100 }]);
  });

  pgIt('16 processes x 10 images commit at once (4 nodes x 4 workers sharing the default node identity): nothing is lost, hits add up', async () => {
    const connectionString = await createDatabase('concurrent');
    const nodes = await Promise.all([0, 1, 2, 3].map((n) => nodeDir(`host-${n}`)));
    // Each node first caches one image that all its workers then read.
    await Promise.all(nodes.map((cacheDir) => runWorker({ cacheDir, connectionString, steps: [{ op: 'cache', ids: ['hot'], size: 64 }] })));
    const workers = nodes.flatMap((cacheDir, n) =>
      [0, 1, 2, 3].map((w) =>
        runWorker({
          cacheDir,
          connectionString,
          steps: [
            { op: 'cache', ids: Array.from({ length: 10 }, (_, i) => `n${n}-w${w}-${i}`), size: 256 },
            { op: 'read', id: 'hot', times: 5 },
          ],
        }),
      ),
    );
    const results = await Promise.all(workers);
    expect(results.map((r) => r[0])).toEqual(Array(16).fill(10));

    const perNode = await sql<{ node: string; n: string; hot_hits: string }>(
      connectionString,
      `SELECT n.node_reference_url AS node, count(*) AS n, max(c.hits) FILTER (WHERE c.image_id = 'hot') AS hot_hits
       FROM cached_images c JOIN node_reference n USING (node_reference_id) GROUP BY 1 ORDER BY 1`,
    );
    expect(perNode.map((r) => r.node)).toEqual(nodes.map((dir) => defaultNodeId(dir)).sort());
    expect(perNode.map((r) => [Number(r.n), Number(r.hot_hits)])).toEqual(Array(4).fill([41, 20]));

    for (const cacheDir of nodes) {
      const driver = new PostgresDriver({ cacheDir, connectionString });
      await driver.configure();
      try {
        const listed = await driver.getCachedImages();
        expect(listed.map((image) => image.imageId)).toEqual(await files(cacheDir));
        expect(listed).toHaveLength(41);
        expect(await driver.clean()).toMatchObject({ orphanRecords: 0, adoptedFiles: 0 });
        const hot = (await driver.getClusterImages()).find((image) => image.imageId === 'hot');
        expect(hot).toMatchObject({ hits: 80, nodes: nodes.map((dir) => defaultNodeId(dir)).sort() });
      } finally {
        await driver.close();
      }
    }
  });
});
