/**
 * Figure 16: hits over HTTP beside nginx (issue 12, item 3). One cache
 * directory (sqlite driver) holds three cached images (`hitSmallBytes`,
 * `hitMediumBytes`, `hitLargeBytes`, each cached with its sha256); `image-cache
 * serve --workers N` and nginx (Debian's, `worker_processes N`, `sendfile
 * on`, keep-alive, logs off; http/nginx.ts) serve that same directory's
 * active files under the same URL path (`/images/<id>`), N being the number
 * of cores (the default of `serve --workers`).
 *
 * - the small and the medium image: `wrk` with `hitConnections` keep-alive
 *   connections for `hitSeconds`: requests/s, ours ÷ nginx (goal ≥ 0.8);
 * - the large image: one `curl` download to /dev/null at a time: MiB/s,
 *   ours ÷ nginx (goal ≥ 0.9).
 *
 * A third server runs beside them, the Node floor (http/node-floor.ts): the
 * same cluster shape (N `node:http` workers on one port) serving the same
 * files under the same URLs with no cache logic (synchronous open, fstat,
 * read, close and one `res.end(buffer)` up to 1 MiB; a 1 MiB
 * `createReadStream` pipe above). Each measurement is printed three ways:
 * ours ÷ nginx (the goal), ours ÷ the Node floor (what our cache logic
 * costs), and the Node floor ÷ nginx (the most a Node server gets here).
 *
 * Every response is a whole 200 (wrk's error lines, curl's status and size
 * are checked). The three sides take turns, the order rotating from one
 * repetition to the next, each run after the machine is quiet (measure.ts);
 * medians of `httpRepeats` runs.
 */
import { createHash } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { openCache } from '../drivers.js';
import { makeChunk, median, processTreeCpuSeconds, waitForQuiet } from '../measure.js';
import { MiB } from '../options.js';
import { figure } from '../report.js';
import type { SuiteContext } from '../run.js';
import { startNginx, type BenchNginx } from '../http/nginx.js';
import { curl, ensureTool, startNodeFloor, startServer, stopAll, wrk, type BenchServer } from '../http/processes.js';

export const HIT_FIGURES: readonly number[] = [16];

const sizeLabel = (bytes: number) => (bytes < MiB ? `${bytes / 1024} KiB` : `${bytes / MiB} MiB`);

/** `bytes` of `chunk` repeated, as chunks. */
function* imageChunks(chunk: Buffer, bytes: number): Generator<Buffer> {
  for (let left = bytes; left > 0; left -= chunk.length) yield left >= chunk.length ? chunk : chunk.subarray(0, left);
}

function sha256Of(chunk: Buffer, bytes: number): string {
  const hash = createHash('sha256');
  for (const part of imageChunks(chunk, bytes)) hash.update(part);
  return hash.digest('hex');
}

type SideName = 'ours' | 'floor' | 'nginx';

/** One measurement of figure 16 as three rows: ours ÷ nginx (with the goal), ours ÷ the Node floor, the Node floor ÷ nginx. */
function addTriple(
  ctx: SuiteContext,
  m: { title: string; fs: string; workers: number; samples: Record<SideName, number[]>; unit: 'ops/s' | 'MiB/s' | 'ms'; target: number | null; what: string },
): void {
  const label = {
    ours: `image-cache serve --workers ${m.workers}`,
    floor: `Node floor (bare node:http, ${m.workers} cluster workers)`,
    nginx: `nginx, worker_processes ${m.workers}, sendfile`,
  };
  const value = (side: SideName) => ({ label: label[side], value: median(m.samples[side]), unit: m.unit });
  const note = `${m.what} of each run, ours: ${m.samples.ours.map((x) => x.toFixed(0)).join(', ')}; Node floor: ${m.samples.floor
    .map((x) => x.toFixed(0))
    .join(', ')}; nginx: ${m.samples.nginx.map((x) => x.toFixed(0)).join(', ')}`;
  const base = { figure: 16, fs: m.fs, driver: 'sqlite' };
  const goal = m.target === null ? null : ({ on: 'ratio', op: '>=', target: m.target } as const);
  ctx.add(figure({ ...base, title: m.title, ours: value('ours'), baseline: value('nginx'), goal, note }));
  ctx.add(figure({ ...base, title: `${m.title}: ours vs the Node floor`, ours: value('ours'), baseline: value('floor'), goal: null }));
  ctx.add(figure({ ...base, title: `${m.title}: the Node floor vs nginx`, ours: value('floor'), baseline: value('nginx'), goal: null }));
}

export async function hitFigures(ctx: SuiteContext): Promise<void> {
  if (!ctx.wanted(16)) return;
  const { fs, sizes } = ctx;
  const tools = { nginx: await ensureTool('nginx'), wrk: await ensureTool('wrk'), curl: await ensureTool('curl') };
  for (const [name, found] of Object.entries(tools)) {
    if ('reason' in found) {
      ctx.skip([16], `${name}: ${found.reason}`);
      return;
    }
  }
  const paths = tools as { [K in keyof typeof tools]: { path: string } };
  const workers = availableParallelism();
  const root = join(fs.path, 'hits');
  const cacheDir = join(root, 'cache');
  await mkdir(root, { recursive: true });
  try {
    const images = { small: sizes.hitSmallBytes, medium: sizes.hitMediumBytes, large: sizes.hitLargeBytes };
    const ids = { small: 'hit-small', medium: 'hit-medium', large: 'hit-large' };
    const cache = await openCache('sqlite', cacheDir);
    if (typeof cache === 'string') {
      ctx.skip([16], cache);
      return;
    }
    try {
      for (const kind of ['small', 'medium', 'large'] as const) {
        const chunk = makeChunk(Math.min(MiB, images[kind]));
        const digest = sha256Of(chunk, images[kind]);
        await cache.cacheImage(ids[kind], Readable.from(imageChunks(chunk, images[kind])), { checksum: { algorithm: 'sha256', digest } });
      }
    } finally {
      await cache.close();
    }

    const ours = await startServer({ cacheDir, cwd: root, workers });
    const nginx = await startNginx(paths.nginx.path, { workers, cacheDir, prefix: join(root, 'nginx') });
    const floor = await startNodeFloor({ dir: cacheDir, workers });
    const sides: readonly { name: SideName; server: BenchServer | BenchNginx }[] = [
      { name: 'ours', server: ours },
      { name: 'floor', server: floor },
      { name: 'nginx', server: nginx },
    ];
    // Both serve every image whole, with a 200 (and the first requests pay for JIT, page cache and database).
    for (const side of sides) {
      for (const kind of ['small', 'medium', 'large'] as const) {
        const run = await curl(paths.curl.path, side.server.image(ids[kind]), { timeoutMs: 120_000 });
        if (run.status !== 200 || run.bytes !== images[kind]) {
          throw new Error(`${side.name} answered ${ids[kind]} with ${run.status} and ${run.bytes} bytes, expected 200 and ${images[kind]}: ${run.stderr}`);
        }
      }
      for (const kind of ['small', 'medium'] as const) {
        await wrk(paths.wrk.path, side.server.image(ids[kind]), { connections: sizes.hitConnections, threads: workers, seconds: 1 });
      }
    }

    const errors: string[] = [];
    /** Runs each side's measurement in turn, the order alternating from one repetition to the next. */
    const interleaved = async (measure: (side: (typeof sides)[number]) => Promise<number>) => {
      const samples: Record<SideName, number[]> = { ours: [], floor: [], nginx: [] };
      for (let rep = 0; rep < sizes.httpRepeats; rep++) {
        for (let i = 0; i < sides.length; i++) {
          const side = sides[(i + rep) % sides.length] as (typeof sides)[number];
          await waitForQuiet();
          samples[side.name].push(await measure(side));
        }
      }
      return samples;
    };

    for (const kind of ['small', 'medium'] as const) {
      /** CPU µs per request of each run, each side: all of its processes, user + system (the kernel's socket and file work included). */
      const cpu: Record<SideName, number[]> = { ours: [], floor: [], nginx: [] };
      const samples = await interleaved(async (side) => {
        const pid = side.server.child.pid as number;
        const before = processTreeCpuSeconds(pid);
        const run = await wrk(paths.wrk.path, side.server.image(ids[kind]), {
          connections: sizes.hitConnections,
          threads: workers,
          seconds: sizes.hitSeconds,
        });
        const after = processTreeCpuSeconds(pid);
        if (before !== undefined && after !== undefined && run.requests > 0) cpu[side.name].push(((after - before) * 1e6) / run.requests);
        if (run.errors !== undefined) errors.push(`${side.name}, ${sizeLabel(images[kind])}: ${run.errors}`);
        return run.requestsPerSecond;
      });
      addTriple(ctx, {
        title: `hits of a ${sizeLabel(images[kind])} image, ${sizes.hitConnections} keep-alive connections (wrk), ${workers} worker processes each`,
        fs: fs.name,
        workers,
        samples,
        unit: 'ops/s',
        target: 0.8,
        what: 'requests/s',
      });
      if (cpu.ours.length > 0 && cpu.floor.length > 0 && cpu.nginx.length > 0) {
        // Load from other processes moves requests/s a lot on a shared machine; the CPU each request costs moves much less.
        addTriple(ctx, {
          title: `CPU time per 1,000 hits of a ${sizeLabel(images[kind])} image (all of the server's processes, user + system; same wrk runs)`,
          fs: fs.name,
          workers,
          samples: cpu,
          unit: 'ms',
          target: null,
          what: 'CPU ms per 1,000 requests',
        });
      }
    }

    const large = await interleaved(async (side) => {
      const run = await curl(paths.curl.path, side.server.image(ids.large), { timeoutMs: 300_000 });
      if (run.status !== 200 || run.bytes !== images.large) errors.push(`${side.name}, ${sizeLabel(images.large)}: ${run.status} with ${run.bytes} bytes`);
      return images.large / MiB / (run.totalMs / 1000);
    });
    addTriple(ctx, {
      title: `a hit of a ${sizeLabel(images.large)} image, one curl to /dev/null, ${workers} worker processes each`,
      fs: fs.name,
      workers,
      samples: large,
      unit: 'MiB/s',
      target: 0.9,
      what: 'MiB/s',
    });
    if (errors.length > 0) throw new Error(`figure 16: some responses were not whole 200s: ${errors.join('; ')}`);
  } finally {
    await stopAll();
    await rm(root, { recursive: true, force: true });
  }
}
