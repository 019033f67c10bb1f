/**
 * Figures 9-12: the HTTP read-through path (issue 11), measured with real
 * HTTP against real `image-cache serve` processes (the workspace's CLI,
 * sqlite driver, cache directory on the filesystem being measured) in front
 * of a throttled origin that runs in a child process of its own and counts
 * the bytes it sends per id (http/origin.ts).
 *
 *  9. `httpClients` concurrent clients (node:http, in a child process of
 *     their own: http/clients.ts) of one uncached image: each client's time
 *     to last byte ÷ one client alone on a miss of an image of the same size
 *     (worst and median client), and the spread of their first bytes (the
 *     last client's first byte − the first client's).
 * 10. a slow client (`curl --limit-rate 1M`) and a fast one (`curl`) on one
 *     miss, the slow one first: the fast one's time ÷ the origin's own send
 *     time for an image of that size (fetched directly from the origin).
 * 11. `aria2c -x8 -s8 -k1M` on a miss ÷ one `curl` on a miss of an image of
 *     the same size (wall clock of each process; both write a file on the
 *     filesystem being measured).
 * 12. `httpServers` servers on one cache directory, `httpClients` clients
 *     spread over them, one uncached image: bytes the origin sent ÷ the
 *     image's size.
 *
 * Every run uses a fresh image id (a real miss). The two sides of 9, 10 and
 * 11 alternate, the order rotating from one repetition to the next; each
 * timed run waits for a quiet machine first and is repeated when other
 * processes took CPU during it (measure.ts); medians of `httpRepeats` runs.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { median, settle, sleep, timedRun } from '../measure.js';
import { MiB } from '../options.js';
import { figure, type FigureResult } from '../report.js';
import type { SuiteContext } from '../run.js';
import type { ClientTiming } from '../http/clients.js';
import type { OriginIdStats } from '../http/origin.js';
import {
  curl,
  ensureTool,
  runClients,
  runTool,
  startOrigin,
  startServer,
  stopAll,
  type BenchOrigin,
  type BenchServer,
} from '../http/processes.js';

export const HTTP_FIGURES: readonly number[] = [9, 10, 11, 12];

const sizeLabel = (bytes: number) => `${bytes / MiB} MiB`;

/** Waits until the origin has finished (or abandoned) every request for `id`; its stats then. */
async function originDone(origin: BenchOrigin, id: string, timeoutMs: number): Promise<OriginIdStats> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const stats = await origin.stats(id);
    if (stats.requests.every((r) => r.sendMs !== null || r.aborted)) return stats;
    if (performance.now() > deadline) throw new Error(`the origin was still sending ${id} after ${timeoutMs} ms`);
    await sleep(20);
  }
}

/** Waits until the origin has started sending `id` (the fill of the first request has begun). */
async function originStarted(origin: BenchOrigin, id: string, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while ((await origin.stats(id)).requests.length === 0) {
    if (performance.now() > deadline) throw new Error(`the origin got no request for ${id} within ${timeoutMs} ms`);
    await sleep(5);
  }
}

/** Removes `id` from a server's cache (Glance's legacy DELETE: 200 whether or not it is cached). */
async function forget(server: BenchServer, id: string): Promise<void> {
  await fetch(`${server.url}/v2/cached_images/${encodeURIComponent(id)}`, { method: 'DELETE' }).then((r) => r.arrayBuffer());
}

/** Clients that did not get the whole image with a 200. */
function failures(clients: readonly ClientTiming[], size: number): ClientTiming[] {
  return clients.filter((c) => c.error !== undefined || c.status !== 200 || c.bytes !== size || c.lastByteMs === null);
}

function describeFailures(failed: readonly ClientTiming[], total: number): string {
  if (failed.length === 0) return '';
  const first = failed[0] as ClientTiming;
  return `${failed.length} of ${total} client(s) did not get the whole image with a 200 (first: status ${first.status ?? '-'}, ${first.bytes} bytes${first.error === undefined ? '' : `, ${first.error}`})`;
}

/** A generous per-run limit: the time the origin needs for `bytes`, many times over, and at least a minute. */
function limitMs(bytes: number, rate: number, factor = 20): number {
  return Math.max(60_000, (bytes / rate) * 1000 * factor);
}

/** Runs the steps of one repetition in turn, starting at `rep` (the order rotates). */
async function interleaved(repeats: number, steps: readonly (() => Promise<void>)[]): Promise<void> {
  for (let rep = 0; rep < repeats; rep++) {
    for (let i = 0; i < steps.length; i++) await (steps[(i + rep) % steps.length] as () => Promise<void>)();
  }
}

export async function serverFillFigures(ctx: SuiteContext): Promise<void> {
  if (!HTTP_FIGURES.some((n) => ctx.wanted(n))) return;
  const root = join(ctx.fs.path, 'server-fill');
  await mkdir(root, { recursive: true });
  try {
    const origin = await startOrigin();
    if (ctx.wanted(9)) await concurrentClients(ctx, origin, root);
    if (ctx.wanted(10)) await slowAndFast(ctx, origin, root);
    if (ctx.wanted(11)) await segmentedDownload(ctx, origin, root);
    if (ctx.wanted(12)) await manyServers(ctx, origin, root);
  } finally {
    await stopAll();
    await rm(root, { recursive: true, force: true });
  }
}

/** Figure 9. */
async function concurrentClients(ctx: SuiteContext, origin: BenchOrigin, root: string): Promise<void> {
  const { fs, sizes } = ctx;
  const size = sizes.httpBurstImageBytes;
  const rate = sizes.httpBurstOriginRate;
  const n = sizes.httpClients;
  const cacheDir = join(root, 'f9-cache');
  const server = await startServer({ cacheDir, origin: origin.template(size, rate), cwd: root });
  const timeout = limitMs(size, rate);
  try {
    // One untimed miss first: the server's first request pays for its JIT and its database.
    const warm = randomUUID();
    await runClients([server.image(warm)], timeout);
    await originDone(origin, warm, timeout);
    await forget(server, warm);

    const alone = { lastByte: [] as number[], firstByte: [] as number[] };
    const burst = { worst: [] as number[], median: [] as number[], spread: [] as number[], originBytes: [] as number[], mibps: [] as number[] };
    const hit = { worst: [] as number[], mibps: [] as number[] };
    const failed: ClientTiming[] = [];
    let clientCount = 0;
    /** `count` clients of a fresh id, all at once; `cached`: the id is fetched once (untimed) first, so the burst is all hits. */
    const run = async (count: number, cached = false) => {
      let id = '';
      let clients: ClientTiming[] = [];
      await timedRun(
        async () => {
          clients = (await runClients(Array.from({ length: count }, () => server.image(id)), timeout)).clients;
        },
        {
          prepare: async () => {
            id = randomUUID();
            if (!cached) return;
            const primed = (await runClients([server.image(id)], timeout)).clients;
            failed.push(...failures(primed, size));
            await originDone(origin, id, timeout);
          },
          cleanup: async () => {
            await originDone(origin, id, timeout);
            await forget(server, id);
            await settle(fs.path);
          },
        },
      );
      clientCount += clients.length;
      failed.push(...failures(clients, size));
      const last = clients.flatMap((c) => (c.lastByteMs === null ? [] : [c.lastByteMs]));
      const first = clients.flatMap((c) => (c.firstByteMs === null ? [] : [c.firstByteMs]));
      const bytes = clients.reduce((sum, c) => sum + c.bytes, 0);
      const worst = last.length === 0 ? NaN : Math.max(...last);
      return { id, clients, last, first, worst, mibps: bytes / MiB / (worst / 1000) };
    };
    await interleaved(sizes.httpRepeats, [
      async () => {
        const { last, first } = await run(1);
        alone.lastByte.push(...last);
        alone.firstByte.push(...first);
      },
      async () => {
        const { id, last, first, worst, mibps } = await run(n);
        if (last.length > 0) {
          burst.worst.push(worst);
          burst.median.push(median(last));
          burst.mibps.push(mibps);
        }
        if (first.length > 0) burst.spread.push(Math.max(...first) - Math.min(...first));
        burst.originBytes.push((await origin.stats(id)).bytes);
      },
      // The same burst on a hit: what this machine can deliver to the clients at all (no design of the miss path does better).
      async () => {
        const { last, worst, mibps } = await run(n, true);
        if (last.length > 0) {
          hit.worst.push(worst);
          hit.mibps.push(mibps);
        }
      },
    ]);

    const title = `${n} concurrent clients of one uncached ${sizeLabel(size)} image`;
    const baseline = { label: 'one client alone on a miss', value: median(alone.lastByte), unit: 'ms' as const, samples: alone.lastByte };
    const problems = describeFailures(failed, clientCount);
    const context =
      `origin paced at ${rate / MiB} MiB/s; the clients of a burst received ${burst.mibps.map((x) => x.toFixed(0)).join(', ')} MiB/s in all ` +
      `(on a hit: ${hit.mibps.map((x) => x.toFixed(0)).join(', ')} MiB/s); ` +
      `origin bytes per burst ÷ size: ${burst.originBytes.map((b) => (b / size).toFixed(2)).join(', ')}`;
    const results: FigureResult[] = [
      figure({
        figure: 9,
        title: `${title}: worst client's time to last byte`,
        fs: fs.name,
        driver: 'sqlite',
        ours: { label: 'worst client', value: median(burst.worst), unit: 'ms', samples: burst.worst },
        baseline,
        ratioKind: 'time',
        goal: { on: 'ratio', op: '<=', target: 1.1 },
        note: [problems, context].filter((x) => x !== '').join('; '),
      }),
      figure({
        figure: 9,
        title: `${title}: median client's time to last byte`,
        fs: fs.name,
        driver: 'sqlite',
        ours: { label: 'median client', value: median(burst.median), unit: 'ms', samples: burst.median },
        baseline,
        ratioKind: 'time',
        goal: { on: 'ratio', op: '<=', target: 1.1 },
      }),
      figure({
        figure: 9,
        title: `${title}: the same on a hit (cached image), worst client's time to last byte`,
        fs: fs.name,
        driver: 'sqlite',
        ours: { label: 'worst client on a hit', value: median(hit.worst), unit: 'ms', samples: hit.worst },
        baseline,
        ratioKind: 'time',
        goal: null,
        note: `what this machine delivers to ${n} clients at all: the bound of any miss path; ${n} × ${sizeLabel(size)} at the origin's pace would be ${((n * rate) / MiB).toFixed(0)} MiB/s`,
      }),
      figure({
        figure: 9,
        title: `${title}: last client's first byte − first client's`,
        fs: fs.name,
        driver: 'sqlite',
        ours: { label: 'first-byte spread', value: median(burst.spread), unit: 'ms', samples: burst.spread },
        baseline: { label: "one client alone's first byte", value: median(alone.firstByte), unit: 'ms', samples: alone.firstByte },
        ratio: null,
        goal: { on: 'value', op: '<=', target: 50 },
      }),
    ];
    for (const result of results) {
      if (failed.length > 0 && result.goal !== null) result.met = false;
      ctx.add(result);
    }
  } finally {
    await server.stop();
    await rm(cacheDir, { recursive: true, force: true });
  }
}

/** Figure 10. */
async function slowAndFast(ctx: SuiteContext, origin: BenchOrigin, root: string): Promise<void> {
  const { fs, sizes } = ctx;
  const tool = await ensureTool('curl');
  if (!('path' in tool)) {
    ctx.skip([10], tool.reason);
    return;
  }
  const size = sizes.httpSlowImageBytes;
  const rate = sizes.httpOriginRate;
  const cacheDir = join(root, 'f10-cache');
  const server = await startServer({ cacheDir, origin: origin.template(size, rate), cwd: root });
  // The slow client alone needs size / 1 MiB/s; the fast one may have to wait for all of it.
  const timeout = limitMs(size, MiB, 3);
  try {
    const warm = randomUUID();
    await curl(tool.path, server.image(warm), { timeoutMs: timeout });
    await originDone(origin, warm, timeout);
    await forget(server, warm);

    const direct: number[] = [];
    const fast: number[] = [];
    const fillSend: string[] = [];
    const problems: string[] = [];
    await interleaved(sizes.httpRepeats, [
      // The baseline: the origin's own send time, to a client that reads as fast as it can.
      async () => {
        let id = '';
        await timedRun(
          async () => {
            id = randomUUID();
            const got = await curl(tool.path, origin.url(id, size, rate), { timeoutMs: timeout });
            if (got.status !== 200 || got.bytes !== size) problems.push(`direct fetch: status ${got.status}, ${got.bytes} bytes ${got.stderr}`);
          },
          { cleanup: () => settle(fs.path) },
        );
        const sent = (await originDone(origin, id, timeout)).requests[0]?.sendMs;
        if (sent !== null && sent !== undefined) direct.push(sent);
      },
      async () => {
        let id = '';
        let fastMs = NaN;
        let fill = '-';
        await timedRun(
          async () => {
            id = randomUUID();
            const url = server.image(id);
            // The slow client first: its request starts the fill; the fast one comes once the origin is sending.
            const stopSlow = new AbortController();
            const slow = curl(tool.path, url, { limitRate: sizes.httpSlowRate, timeoutMs: timeout, signal: stopSlow.signal });
            try {
              await originStarted(origin, id, 30_000);
              const got = await curl(tool.path, url, { timeoutMs: timeout });
              if (got.status !== 200 || got.bytes !== size) problems.push(`fast client: status ${got.status}, ${got.bytes} bytes ${got.stderr}`);
              fastMs = got.totalMs;
            } finally {
              // The slow client's part is done: it is stopped (it may have finished long ago).
              stopSlow.abort();
              await slow.catch(() => undefined);
            }
          },
          {
            cleanup: async () => {
              const stats = await originDone(origin, id, timeout);
              const request = stats.requests[0];
              fill = request === undefined ? '-' : request.sendMs === null ? 'cut' : `${(request.sendMs / 1000).toFixed(2)} s`;
              await forget(server, id);
              await settle(fs.path);
            },
            // Its length is the slow client's while the fast one waits for it: repeating a disturbed run would only double that.
            repeatable: false,
          },
        );
        fillSend.push(fill);
        if (Number.isFinite(fastMs)) fast.push(fastMs);
      },
    ]);
    const result = figure({
      figure: 10,
      title: `a slow (${sizes.httpSlowRate}/s) and a fast client on one ${sizeLabel(size)} miss: the fast client's time`,
      fs: fs.name,
      driver: 'sqlite',
      ours: { label: 'fast client (curl time_total)', value: median(fast), unit: 'ms', samples: fast },
      baseline: { label: "the origin's own send time", value: median(direct), unit: 'ms', samples: direct },
      ratioKind: 'time',
      goal: { on: 'ratio', op: '<=', target: 1.1 },
      note: [
        ...problems.slice(0, 1),
        `the slow client (curl --limit-rate ${sizes.httpSlowRate}) asks first, the fast one once the origin is sending; ` +
          `the fill's own origin send time: ${fillSend.join(', ')}; origin paced at ${rate / MiB} MiB/s`,
      ].join('; '),
    });
    if (problems.length > 0) result.met = false;
    ctx.add(result);
  } finally {
    await server.stop();
    await rm(cacheDir, { recursive: true, force: true });
  }
}

/** Figure 11. */
async function segmentedDownload(ctx: SuiteContext, origin: BenchOrigin, root: string): Promise<void> {
  const { fs, sizes } = ctx;
  const [curlTool, ariaTool] = await Promise.all([ensureTool('curl'), ensureTool('aria2c')]);
  if (!('path' in curlTool) || !('path' in ariaTool)) {
    ctx.skip([11], [curlTool, ariaTool].flatMap((t) => ('reason' in t ? [t.reason] : [])).join('; '));
    return;
  }
  const size = sizes.httpImageBytes;
  const rate = sizes.httpOriginRate;
  const cacheDir = join(root, 'f11-cache');
  const downloads = join(root, 'f11-downloads');
  await mkdir(downloads, { recursive: true });
  const server = await startServer({ cacheDir, origin: origin.template(size, rate), cwd: root });
  const timeout = limitMs(size, rate);
  try {
    const warm = randomUUID();
    await curl(curlTool.path, server.image(warm), { timeoutMs: timeout });
    await originDone(origin, warm, timeout);
    await forget(server, warm);

    const samples = { curl: [] as number[], aria: [] as number[] };
    const problems: string[] = [];
    const originBytes: number[] = [];
    const ariaRuns: string[] = [];
    const side = (which: 'curl' | 'aria') => async () => {
      let id = '';
      let ms = NaN;
      let sent = NaN;
      let how = '';
      await timedRun(
        async () => {
          id = randomUUID();
          const file = join(downloads, id);
          if (which === 'curl') {
            const got = await curl(curlTool.path, server.image(id), { output: file, timeoutMs: timeout });
            if (got.code !== 0 || got.status !== 200 || got.bytes !== size) problems.push(`curl: exit ${got.code}, status ${got.status}, ${got.bytes} bytes ${got.stderr}`);
            ms = got.ms;
          } else {
            const got = await runTool(
              ariaTool.path,
              [
                '-x8', '-s8', '-k1M',
                '--no-conf=true', '--file-allocation=none', '--allow-overwrite=true', '--auto-file-renaming=false',
                // Its info log says which connection got which answer and downloaded which segments (see ariaSummary).
                '--console-log-level=info', '--enable-color=false', '--summary-interval=0', '--download-result=hide',
                '-d', downloads, '-o', id, server.image(id),
              ],
              timeout,
            );
            if (got.code !== 0) problems.push(`aria2c: exit ${got.signal ?? got.code}: ${(got.stderr || got.stdout).split('\n').slice(-2).join(' / ')}`);
            ms = got.ms;
            how = ariaSummary(got.stdout);
          }
        },
        {
          cleanup: async () => {
            sent = (await originDone(origin, id, timeout)).bytes;
            const got = await stat(join(downloads, id)).then((info) => info.size, () => 0);
            if (got !== size) problems.push(`${which === 'aria' ? 'aria2c' : 'curl'} wrote ${got} bytes, expected ${size}`);
            await rm(join(downloads, id), { force: true });
            await rm(join(downloads, `${id}.aria2`), { force: true });
            await forget(server, id);
            await settle(fs.path);
          },
        },
      );
      samples[which].push(ms);
      originBytes.push(sent);
      if (which === 'aria') ariaRuns.push(how);
    };
    await interleaved(sizes.httpRepeats, [side('curl'), side('aria')]);
    const result = figure({
      figure: 11,
      title: `aria2c -x8 -s8 -k1M on a ${sizeLabel(size)} miss`,
      fs: fs.name,
      driver: 'sqlite',
      ours: { label: 'aria2c', value: median(samples.aria), unit: 'ms', samples: samples.aria },
      baseline: { label: 'one curl on a miss', value: median(samples.curl), unit: 'ms', samples: samples.curl },
      ratioKind: 'time',
      goal: { on: 'ratio', op: '<=', target: 1.1 },
      note: [
        ...problems.slice(0, 2),
        `wall clock of each process, downloads written to this filesystem; origin bytes per run ÷ size: ${originBytes.map((b) => (b / size).toFixed(2)).join(', ')}`,
        `aria2c's connections per run: ${ariaRuns.join(' | ')}`,
      ].join('; '),
    });
    if (problems.length > 0) result.met = false;
    ctx.add(result);
  } finally {
    await server.stop();
    await rm(cacheDir, { recursive: true, force: true });
    await rm(downloads, { recursive: true, force: true });
  }
}

/**
 * What aria2c's info log says about one download: how many connections it
 * opened, the statuses they were answered with, and how many segments each
 * answering connection downloaded, e.g. `8 connections; answers 200×1;
 * segments per connection 16` (the other 7 never got an answer before the end).
 */
export function ariaSummary(log: string): string {
  const connections = new Set([...log.matchAll(/CUID#(\d+) - Connecting to/g)].map((m) => m[1]));
  const statuses = new Map<string, number>();
  for (const m of log.matchAll(/CUID#\d+ - Response received:\s*\n\s*HTTP\/[\d.]+ (\d{3})/g)) {
    statuses.set(m[1] as string, (statuses.get(m[1] as string) ?? 0) + 1);
  }
  const segments = new Map<string, number>();
  for (const m of log.matchAll(/CUID#(\d+) - The download for one segment completed/g)) segments.set(m[1] as string, (segments.get(m[1] as string) ?? 0) + 1);
  const answers = [...statuses].sort().map(([status, count]) => `${status}×${count}`).join(' ');
  const perConnection = [...segments.values()].sort((a, b) => b - a).join('+');
  return `${connections.size} connection(s); answers ${answers || 'none'}; segments per connection ${perConnection || 'none'}`;
}

/** Figure 12. */
async function manyServers(ctx: SuiteContext, origin: BenchOrigin, root: string): Promise<void> {
  const { fs, sizes } = ctx;
  const size = sizes.httpImageBytes;
  const rate = sizes.httpOriginRate;
  const n = sizes.httpClients;
  const count = sizes.httpServers;
  const cacheDir = join(root, 'f12-cache');
  const timeout = limitMs(size, rate);
  const template = origin.template(size, rate);
  // The first one makes the cache directory and its database; the others open them.
  const servers: BenchServer[] = [await startServer({ cacheDir, origin: template, cwd: root })];
  try {
    servers.push(...(await Promise.all(Array.from({ length: count - 1 }, () => startServer({ cacheDir, origin: template, cwd: root })))));
    const ratios: number[] = [];
    const requests: number[] = [];
    const failed: ClientTiming[] = [];
    const worst: number[] = [];
    for (let rep = 0; rep < sizes.httpRepeats; rep++) {
      const id = randomUUID();
      // Client i asks server i mod count: every server gets its clients at the same moment.
      const urls = Array.from({ length: n }, (_, i) => (servers[i % count] as BenchServer).image(id));
      const { clients } = await runClients(urls, timeout);
      failed.push(...failures(clients, size));
      const last = clients.flatMap((c) => (c.lastByteMs === null ? [] : [c.lastByteMs]));
      if (last.length > 0) worst.push(Math.max(...last));
      const stats = await originDone(origin, id, timeout);
      ratios.push(stats.bytes / size);
      requests.push(stats.requests.length);
      await forget(servers[0] as BenchServer, id);
      await settle(fs.path);
    }
    const result = figure({
      figure: 12,
      title: `${count} servers on one cache directory × ${n / count} clients each, one uncached ${sizeLabel(size)} image: origin bytes ÷ image size`,
      fs: fs.name,
      driver: 'sqlite',
      ours: { label: 'origin bytes ÷ image size (worst run)', value: Math.max(...ratios), unit: 'x', samples: ratios },
      baseline: null,
      goal: { on: 'value', op: '==', target: 1 },
      note: [
        describeFailures(failed, n * sizes.httpRepeats),
        `per run: ${ratios.map((r, i) => `${r.toFixed(2)} (${requests[i]} origin request(s))`).join(', ')}; ` +
          `worst client's time to last byte ${worst.map((ms) => `${(ms / 1000).toFixed(2)} s`).join(', ')} (origin alone: ${(size / rate).toFixed(2)} s)`,
      ]
        .filter((x) => x !== '')
        .join('; '),
    });
    if (failed.length > 0) result.met = false;
    ctx.add(result);
  } finally {
    await Promise.all(servers.map((server) => server.stop()));
    await rm(cacheDir, { recursive: true, force: true });
  }
}
