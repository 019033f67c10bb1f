// The status page in a real browser: Debian's chromium (installed by the global setup through
// scripts/install-chromium.sh), driven by playwright-core, loads /status from a real
// `image-cache serve` process (the CLI's binary) while one of its fills is held mid-body by the
// origin, and checks what it shows against /v2/status and /metrics. Its screenshot is saved as
// <repo>/test-results/status-page.png (or $TEST_RESULTS_DIR/status-page.png); the path is printed.
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { tryStartTestPostgres, type TestPostgres } from '@cache/postgres-testing';
import type { StatusReport } from '../src/index.js';
import { parseMetrics, waitFor } from './helpers.js';
import { ClientOrigin, Gate, randomImage, sha256, startDownload, startServe, stopAll } from './process-helpers.js';

const CHROMIUM = process.env['CHROMIUM_PATH'] ?? '/usr/bin/chromium';
/** The flags this project's machines need (docs: /work/.library/env/machines/node.md): no sandbox as root, no network chatter. */
const CHROMIUM_FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const RESULTS_DIR = process.env['TEST_RESULTS_DIR'] ?? resolve(import.meta.dirname, '..', '..', '..', 'test-results');
const SCREENSHOT = join(RESULTS_DIR, 'status-page.png');
const TOKEN = 'page-token';
const MiB = 1024 * 1024;

const missing = inject('chromiumMissing');

// A real PostgreSQL of this file's own (@cache/postgres-testing), for the cluster case.
const { pg, skipReason: pgSkip } = missing === '' ? await tryStartTestPostgres() : { pg: undefined, skipReason: undefined };
afterAll(async () => void (await pg?.stop()));
const pgSuffix = pgSkip === undefined ? '' : ` [skipped: ${pgSkip}]`;
const browserIt = missing === '' ? it : it.skip;
const suffix = missing === '' ? '' : ` [skipped: chromium is not available: ${missing}]`;
const pgIt = missing === '' && pgSkip === undefined ? it : it.skip;

const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  await stopAll();
  for (const cleanup of cleanups.reverse()) await cleanup();
});

/** One browser (a fresh profile in a temp dir) for the file's tests. */
let browser: BrowserContext;
beforeAll(async () => {
  if (missing !== '') return;
  const userDataDir = await mkdtemp(join(tmpdir(), 'server-status-chromium-'));
  cleanups.push(() => rm(userDataDir, { recursive: true, force: true }));
  browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_FLAGS,
    viewport: { width: 1200, height: 900 },
  });
  cleanups.push(() => browser.close());
}, 120_000);

/** A new page that records what goes wrong in it: page errors, console errors, failed requests (but the expected 401s). */
async function openPage(): Promise<{ page: Page; problems: string[] }> {
  const page = await browser.newPage();
  // Generous, for a loaded machine: the page polls every 2 s; this only guards against a page that never gets there.
  page.setDefaultTimeout(60_000);
  const problems: string[] = [];
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    // Chromium logs every failed fetch: the 401s the page asks for a token on are expected.
    if (message.type() === 'error' && !message.text().includes('status of 401')) problems.push(`console: ${message.text()}`);
  });
  page.on('response', (response) => {
    const expected = response.status() === 401 && new URL(response.url()).pathname === '/v2/status';
    if (response.status() >= 400 && !expected) problems.push(`${response.status()} for ${response.url()}`);
  });
  return { page, problems };
}

/** Logs in on the page's token form. */
async function logIn(page: Page, token: string): Promise<void> {
  await page.locator('body[data-state="login"]').waitFor();
  await page.locator('#token').fill(token);
  await page.locator('#login button[type="submit"]').click();
}

async function statusJson(url: string): Promise<StatusReport> {
  const response = await fetch(`${url}/v2/status`, { headers: { authorization: `Bearer ${TOKEN}` } });
  expect(response.status).toBe(200);
  return (await response.json()) as StatusReport;
}

async function metrics(url: string): Promise<Map<string, number>> {
  const response = await fetch(`${url}/metrics`);
  expect(response.status).toBe(200);
  return parseMetrics(await response.text());
}

/** A `<progress>` element's value and max (run in the page; this package's types have no DOM lib). */
function progressOf(element: unknown): [number, number] {
  const bar = element as { value: number; max: number };
  return [bar.value, bar.max];
}

/** Text of the element `selector` (waits for it to be attached). */
async function text(page: Page, selector: string): Promise<string> {
  return (await page.locator(selector).textContent()) ?? '';
}

describe('the status page in headless Chromium', () => {
  browserIt(
    `shows size against budget, hit ratio, top images and a running fill's progress bar from a real image-cache serve${suffix}`,
    async () => {
      const origin = await ClientOrigin.start();
      cleanups.push(() => origin.close());
      const big = randomImage(6 * MiB);
      const gate = new Gate();
      origin.images.set('ubuntu-24.04', { data: big, head: 2 * MiB, gate });
      origin.images.set('cirros', { data: randomImage(300 * 1024) });
      origin.images.set('debian-12', { data: randomImage(MiB) });
      const cacheDir = await mkdtemp(join(tmpdir(), 'server-status-page-'));
      cleanups.push(() => rm(cacheDir, { recursive: true, force: true }));
      const serve = await startServe({ cacheDir, origin: origin.template, args: ['--token', TOKEN, '--max-size', '64MiB', '--free-run', '3MiB', '--free-cull', '2MiB', '--free-stop', '1MiB'] });

      // cirros: a miss and 2 hits; debian-12: a miss and a hit. Then ubuntu's fill, held by the origin after 2 MiB.
      for (const id of ['cirros', 'cirros', 'cirros', 'debian-12', 'debian-12']) {
        const response = await fetch(`${serve.url}/images/${id}`);
        expect(response.status).toBe(200);
        await response.arrayBuffer();
      }
      const download = startDownload(`${serve.url}/images/ubuntu-24.04`);
      // Settled before the page loads: the fill holds at 2 MiB, and the driver has recorded the 3 hits (it may do so
      // just after a response's last byte).
      await waitFor(
        async () => {
          const report = await statusJson(serve.url);
          return report.fills[0]?.written === 2 * MiB && report.topImages.map((image) => image.hits).join() === '2,1';
        },
        60_000,
        "ubuntu's fill has its first 2 MiB, and the hits are recorded",
      );

      const { page, problems } = await openPage();

      // `/` redirects to the page; the server has a token, so the page asks for it.
      await page.goto(`${serve.url}/`);
      expect(page.url()).toBe(`${serve.url}/status`);
      await page.locator('body[data-state="login"]').waitFor();
      expect(await page.locator('#content').isHidden()).toBe(true);
      await logIn(page, 'not-the-token');
      await page.locator('#login-error', { hasText: 'That token was refused.' }).waitFor();
      expect(await page.locator('#content').isHidden()).toBe(true);
      await logIn(page, TOKEN);
      await page.locator('body[data-state="ok"]').waitFor();
      const fill = page.locator('#fills li[data-id="ubuntu-24.04"]');
      await fill.waitFor();

      // What the page shows, against the JSON it polls and against /metrics (nothing changes while the fill is held).
      const report = await statusJson(serve.url);
      const scraped = await metrics(serve.url);
      expect(report.cache.maxBytes).toBe(64 * MiB);
      expect(report.cache.bytes).toBe(300 * 1024 + MiB);
      expect(scraped.get('image_cache_size_bytes')).toBe(report.cache.bytes);
      expect(scraped.get('image_cache_max_size_bytes')).toBe(report.cache.maxBytes);
      expect(await page.locator('#size').getAttribute('data-bytes')).toBe(String(report.cache.bytes));
      expect(await text(page, '#size')).toBe('1.3 MiB of 64 MiB');
      expect(await page.locator('#size-bar').evaluate(progressOf)).toEqual([report.cache.bytes, 64 * MiB]);

      expect(report.requests).toMatchObject({ hits: 3, misses: 3 });
      expect(scraped.get('image_cache_hits_total')).toBe(3);
      expect(scraped.get('image_cache_misses_total')).toBe(3);
      expect(await text(page, '#hit-ratio')).toBe('50.0%');
      expect(await text(page, '#hit-detail')).toContain('3 hits, 3 misses since start');

      const rows = await page.locator('#top-images tbody tr').evaluateAll((trs) => trs.map((tr) => [tr.getAttribute('data-id'), tr.getAttribute('data-hits')]));
      expect(rows).toEqual(report.topImages.map((image) => [image.id, String(image.hits)]));
      expect(rows).toEqual([
        ['cirros', '2'],
        ['debian-12', '1'],
      ]);

      expect(report.fills).toEqual([{ id: 'ubuntu-24.04', written: 2 * MiB, expectedSize: 6 * MiB, role: 'owner', readers: 1 }]);
      expect(await fill.locator('progress').evaluate(progressOf)).toEqual([2 * MiB, 6 * MiB]);
      expect(await fill.textContent()).toContain('2 MiB of 6 MiB (33.3%)');
      expect(await page.locator('#no-fills').isHidden()).toBe(true);

      // The space policy (serve holds the budget on the write path): the fill reserved its whole announced size.
      expect(report.space).toMatchObject({
        maxBytes: 64 * MiB,
        writeBudget: true,
        parts: { active: 300 * 1024 + MiB, incomplete: 2 * MiB, invalid: 0, reserved: 4 * MiB },
        usedBytes: 300 * 1024 + 7 * MiB,
        thresholds: { run: { bytes: 3 * MiB, files: null }, cull: { bytes: 2 * MiB, files: null }, stop: { bytes: MiB, files: null } },
        state: 'ok',
      });
      for (const part of ['active', 'incomplete', 'invalid', 'reserved'] as const) {
        // `reserved` is per process: its series carries the pid of the process whose writes hold it.
        const series = part === 'reserved' ? `image_cache_used_bytes{part="reserved",pid="${serve.pid}"}` : `image_cache_used_bytes{part="${part}"}`;
        expect(scraped.get(series)).toBe(report.space?.parts[part]);
      }
      expect(await page.locator('#space-used').getAttribute('data-used-bytes')).toBe(String(report.space?.usedBytes));
      expect(await text(page, '#space-used')).toBe('7.3 MiB of 64 MiB');
      expect(await page.locator('#space-bar').evaluate(progressOf)).toEqual([300 * 1024 + 7 * MiB, 64 * MiB]);
      const parts = await page.locator('#space-parts tr').evaluateAll((trs) => trs.map((tr) => [tr.getAttribute('data-part'), tr.getAttribute('data-bytes'), tr.textContent]));
      expect(parts.map(([part, bytes]) => [part, bytes])).toEqual([
        ['active', String(300 * 1024 + MiB)],
        ['incomplete', String(2 * MiB)],
        ['invalid', '0'],
        ['reserved', String(4 * MiB)],
      ]);
      expect(parts.map(([, , shown]) => shown)).toEqual([
        'active entries1.3 MiB',
        'incomplete/ (being written)2 MiB',
        'invalid/ (failed writes)0 B',
        'reserved ahead of writes4 MiB',
      ]);
      // Free space moves with everything else on this disk: the page shows what it polled, of the filesystem's size.
      const free = page.locator('#space-free');
      expect(await free.getAttribute('data-total-bytes')).toBe(String(report.space?.disk.totalBytes));
      const freeBytes = Number(await free.getAttribute('data-free-bytes'));
      expect(freeBytes).toBeGreaterThan(3 * MiB);
      expect(freeBytes).toBeLessThanOrEqual(report.space?.disk.totalBytes as number);
      expect(await free.textContent()).toMatch(/ free of /);
      expect(await page.locator('#space-state').getAttribute('data-state')).toBe('ok');
      expect(await page.locator('#space-no-thresholds').isHidden()).toBe(true);
      const thresholds = await page.locator('#space-thresholds tr').evaluateAll((trs) => trs.map((tr) => [tr.getAttribute('data-threshold'), tr.getAttribute('data-bytes'), tr.querySelector('td')?.textContent]));
      expect(thresholds).toEqual([
        ['run', String(3 * MiB), '3 MiB'],
        ['cull', String(2 * MiB), '2 MiB'],
        ['stop', String(MiB), '1 MiB'],
      ]);

      // A node on its own (sqlite): the cluster section says so, and lists no nodes.
      expect(report.cluster).toBeNull();
      expect(await page.locator('#cluster-none').isVisible()).toBe(true);
      expect(await page.locator('#nodes').isHidden()).toBe(true);

      await mkdir(RESULTS_DIR, { recursive: true });
      await page.screenshot({ path: SCREENSHOT, fullPage: true });
      const png = await readFile(SCREENSHOT);
      expect(png.subarray(1, 4).toString('latin1')).toBe('PNG');
      console.info(`status page screenshot (a fill at 2 of 6 MiB): ${SCREENSHOT}`);

      // The origin lets the rest through: the page, polling, drops the fill and lists the image.
      gate.open();
      const done = await download.done;
      expect(done.sha256).toBe(sha256(big));
      await page.locator('#no-fills').waitFor({ state: 'visible' });
      await page.locator('#top-images tbody tr[data-id="ubuntu-24.04"]').waitFor();
      expect(await page.locator('#fills li').count()).toBe(0);
      expect(problems).toEqual([]);

      // The server goes away: the page keeps the last figures, says it cannot read the status, and keeps trying.
      serve.child.kill('SIGKILL');
      await serve.exited;
      await page.locator('body[data-state="stale"]').waitFor();
      expect(await text(page, '#error')).toMatch(/^Could not read the status \(.+\); retrying\.$/);
      expect(await page.locator('#content').isVisible()).toBe(true);
    },
    180_000,
  );

  pgIt(
    `lists the cluster's nodes: two image-cache serve processes on one PostgreSQL, each page marks itself${suffix}${pgSuffix}`,
    async () => {
      const server = await (pg as TestPostgres).startServer('status-page');
      const databaseUrl = await server.createDatabase('status_page');
      const origin = await ClientOrigin.start();
      cleanups.push(() => origin.close());
      origin.images.set('shared', { data: randomImage(2 * MiB) });
      origin.images.set('only-a', { data: randomImage(512 * 1024) });
      const nodes = [];
      for (const name of ['node-a', 'node-b']) {
        const cacheDir = await mkdtemp(join(tmpdir(), `server-status-${name}-`));
        cleanups.push(() => rm(cacheDir, { recursive: true, force: true }));
        const args = ['--token', TOKEN, '--driver', 'postgres', '--database-url', databaseUrl, '--node-id', name];
        nodes.push(await startServe({ cacheDir, origin: origin.template, args }));
      }
      const [a, b] = nodes as [Awaited<ReturnType<typeof startServe>>, Awaited<ReturnType<typeof startServe>>];
      for (const [node, id] of [[a, 'shared'], [a, 'only-a'], [b, 'shared']] as const) {
        const response = await fetch(`${node.url}/images/${id}`);
        expect(response.status).toBe(200);
        await response.arrayBuffer();
      }

      // Every node's rows are in the database before the page loads.
      await waitFor(
        async () => (await statusJson(a.url)).cluster?.nodes.map((node) => `${node.id}:${node.images}`).sort().join() === 'node-a:2,node-b:1',
        60_000,
        'both nodes have their images recorded',
      );
      const { page, problems } = await openPage();
      await page.goto(`${a.url}/status`);
      await logIn(page, TOKEN);
      await page.locator('#nodes tbody tr[data-id="node-b"]').waitFor();
      const report = await statusJson(a.url);
      expect(report.node).toMatchObject({ driver: 'postgres', nodeId: 'node-a' });
      const rows = await page
        .locator('#nodes tbody tr')
        .evaluateAll((trs) => trs.map((tr) => [tr.getAttribute('data-id'), tr.getAttribute('data-health'), ...[...tr.querySelectorAll('td')].map((td) => td.textContent)]));
      // Both are cluster nodes (serve on the postgres driver): alive by their heartbeats, at the URLs they advertise.
      expect(rows.sort().map((row) => row.slice(0, 7))).toEqual([
        ['node-a', 'alive', 'node-a (this node)', 'alive', a.url, '2', '2.5 MiB'],
        ['node-b', 'alive', 'node-b', 'alive', b.url, '1', '2 MiB'],
      ]);
      for (const row of rows) expect(row[7], `${row[0]}: its last heartbeat is shown`).toMatch(/\d\d:\d\d:\d\d/);
      expect(report.cluster?.nodes.map((node) => [node.id, node.health, node.url, node.images, node.bytes]).sort()).toEqual([
        ['node-a', 'alive', a.url, 2, 2.5 * MiB],
        ['node-b', 'alive', b.url, 1, 2 * MiB],
      ]);
      expect(await page.locator('#cluster-none').isHidden()).toBe(true);
      expect(await text(page, '#node')).toContain('node-a · driver postgres');
      await page.screenshot({ path: join(RESULTS_DIR, 'status-page-cluster.png'), fullPage: true });
      console.info(`status page screenshot (two nodes on PostgreSQL): ${join(RESULTS_DIR, 'status-page-cluster.png')}`);

      // node-b's own page (another origin: the token is asked for again) marks node-b as this node.
      await page.goto(`${b.url}/status`);
      await logIn(page, TOKEN);
      await page.locator('#nodes tbody tr[data-id="node-b"] td', { hasText: 'node-b (this node)' }).waitFor();
      expect(problems).toEqual([]);
    },
    180_000,
  );
});
