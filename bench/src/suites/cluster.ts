/**
 * Figure 8: the cluster-wide listing, `PostgresDriver#getClusterImages()`,
 * on a database that many node identities share, beside the raw
 * `GROUP BY image_id` it is built on (through one `pg` connection), at a
 * small and a large number of images per node; and how both scale.
 *
 * The rows are inserted directly (one multi-row INSERT per node, in one
 * transaction): each node holds a random half of a catalogue of twice its
 * number of images, so an image is on about half the nodes. No files are
 * involved (the cluster queries never look at them), so this runs once per
 * bench run, on the first filesystem's turn.
 */
import { randomInt, randomUUID } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { PostgresDriver } from '@cache/driver-postgres';
import type { TestPostgresClient } from '@cache/postgres-testing';
import { createBenchDatabase, insertPostgresRows, type BenchDatabase, type PostgresRow } from '../drivers.js';
import { collectGarbage, median, timedRun } from '../measure.js';
import { countLabel, figure } from '../report.js';
import type { SuiteContext } from '../run.js';

/** The raw baseline: what getClusterImages() aggregates, without the node names, the conversions or the sort. */
export const RAW_CLUSTER_QUERY = 'SELECT image_id, count(*), sum(hits), max(last_accessed) FROM cached_images GROUP BY image_id';

/** Timed runs of each side per size (medians reported): the runs are short, so more than the other figures' 3. */
const REPEATS = 5;

/** `count` distinct elements of `items`, in random order. */
function sample<T>(items: readonly T[], count: number): T[] {
  const copy = [...items];
  for (let i = 0; i < count; i++) {
    const j = i + randomInt(copy.length - i);
    [copy[i], copy[j]] = [copy[j] as T, copy[i] as T];
  }
  return copy.slice(0, count);
}

/** Rows of `nodes` node identities, each holding `perNode` images of a catalogue of `2 × perNode`. */
function clusterRows(nodes: number, perNode: number): { nodeId: string; rows: PostgresRow[] }[] {
  const catalogue = Array.from({ length: 2 * perNode }, () => randomUUID());
  const now = Date.now() / 1000;
  const month = 30 * 86_400;
  return Array.from({ length: nodes }, (_, n) => ({
    nodeId: `http://bench-node-${String(n + 1).padStart(2, '0')}:9292`,
    rows: sample(catalogue, perNode).map((id) => {
      const lastModified = now - month + Math.random() * (month / 2);
      return { id, lastModified, lastAccessed: lastModified + Math.random() * (month / 2), size: randomInt(2 ** 20, 2 ** 34), hits: randomInt(50) };
    }),
  }));
}

export async function clusterFigures(ctx: SuiteContext): Promise<void> {
  const { postgres, sizes, fs } = ctx;
  if (!ctx.wanted(8) || !postgres.available) return;
  const nodes = sizes.clusterNodes;
  const [small, large] = sizes.clusterImagesPerNode;
  const times = new Map<number, { ours: number; raw: number }>();
  for (const perNode of [small, large]) {
    const cacheDir = join(fs.path, `cluster-${perNode}`);
    const layout = clusterRows(nodes, perNode);
    const distinct = new Set(layout.flatMap((node) => node.rows.map((row) => row.id))).size;
    let db: BenchDatabase | undefined;
    let driver: PostgresDriver | undefined;
    let client: TestPostgresClient | undefined;
    try {
      db = await createBenchDatabase(postgres.server, `bench_cluster_${perNode}`);
      // The driver makes the schema and registers itself as the first node; the rows go in directly.
      driver = new PostgresDriver({ cacheDir, connectionString: db.url, nodeId: layout[0]?.nodeId, onWarning: () => undefined });
      await driver.configure();
      await insertPostgresRows(db, layout);
      client = await db.connect();
      const ours = driver;
      const raw = client;
      const samples = { ours: [] as number[], raw: [] as number[] };
      const steps = [
        async () => {
          let listed = 0;
          samples.ours.push(await timedRun(async () => (listed = (await ours.getClusterImages()).length)));
          if (listed !== distinct) throw new Error(`getClusterImages() listed ${listed} images, expected ${distinct}`);
        },
        async () => {
          let listed = 0;
          samples.raw.push(await timedRun(async () => (listed = (await raw.query(RAW_CLUSTER_QUERY)).rows.length)));
          if (listed !== distinct) throw new Error(`the raw GROUP BY returned ${listed} rows, expected ${distinct}`);
        },
      ];
      // One untimed run of each first: both connections are open and the table is in the server's cache.
      await ours.getClusterImages();
      await raw.query(RAW_CLUSTER_QUERY);
      for (let rep = 0; rep < REPEATS; rep++) {
        for (let i = 0; i < steps.length; i++) {
          collectGarbage();
          await steps[(i + rep) % steps.length]!();
        }
      }
      times.set(perNode, { ours: median(samples.ours), raw: median(samples.raw) });
      ctx.add(
        figure({
          figure: 8,
          title: `getClusterImages() across ${nodes} nodes × ${countLabel(perNode)} images`,
          fs: fs.name,
          driver: 'postgres',
          ours: { label: 'getClusterImages', value: median(samples.ours), unit: 'ms', samples: samples.ours },
          baseline: { label: 'pg GROUP BY image_id', value: median(samples.raw), unit: 'ms', samples: samples.raw },
          goal: null,
          note: `${nodes * perNode} rows, ${distinct} distinct images (each node holds ${countLabel(perNode)} of ${countLabel(2 * perNode)}); database only, no files`,
        }),
      );
    } finally {
      await client?.end().catch(() => undefined);
      await driver?.close();
      await rm(cacheDir, { recursive: true, force: true });
      await db?.drop();
    }
  }
  const a = times.get(small);
  const b = times.get(large);
  if (a !== undefined && b !== undefined) {
    ctx.add(
      figure({
        figure: 8,
        title: `getClusterImages() time ${nodes} × ${countLabel(large)} / ${nodes} × ${countLabel(small)}`,
        fs: fs.name,
        driver: 'postgres',
        ours: { label: 'getClusterImages scaling', value: b.ours / a.ours, unit: 'x' },
        baseline: { label: 'raw GROUP BY scaling', value: b.raw / a.raw, unit: 'x' },
        ratio: b.ours / a.ours,
        goal: null,
      }),
    );
  }
}
