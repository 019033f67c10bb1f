// The status page in a real browser: Debian's chromium (installed by the global setup through
// scripts/install-chromium.sh), driven by playwright-core, loads /status from a real
// `image-cache serve` process (the CLI's binary) while one of its fills is held mid-body by the
// origin, and checks what it shows against /v2/status and /metrics. Its screenshot is saved as
// <repo>/test-results/status-page.png (or $TEST_RESULTS_DIR/status-page.png); the path is printed.
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, describe, expect, inject, it } from 'vitest';
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
const browserIt = missing === '' ? it : it.skip;
const suffix = missing === '' ? '' : ` [skipped: chromium is not available: ${missing}]`;

const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  await stopAll();
  for (const cleanup of cleanups.reverse()) await cleanup();
});

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
      const serve = await startServe({ cacheDir, origin: origin.template, args: ['--token', TOKEN, '--max-size', '64MiB'] });

      // cirros: a miss and 2 hits; debian-12: a miss and a hit. Then ubuntu's fill, held by the origin after 2 MiB.
      for (const id of ['cirros', 'cirros', 'cirros', 'debian-12', 'debian-12']) {
        const response = await fetch(`${serve.url}/images/${id}`);
        expect(response.status).toBe(200);
        await response.arrayBuffer();
      }
      const download = startDownload(`${serve.url}/images/ubuntu-24.04`);
      await waitFor(async () => (await statusJson(serve.url)).fills[0]?.written === 2 * MiB, 60_000, "ubuntu's fill has its first 2 MiB");

      const userDataDir = await mkdtemp(join(tmpdir(), 'server-status-chromium-'));
      cleanups.push(() => rm(userDataDir, { recursive: true, force: true }));
      const browser: BrowserContext = await chromium.launchPersistentContext(userDataDir, {
        executablePath: CHROMIUM,
        headless: true,
        args: CHROMIUM_FLAGS,
        viewport: { width: 1200, height: 900 },
      });
      cleanups.push(() => browser.close());
      const page = await browser.newPage();
      const problems: string[] = [];
      page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
      page.on('console', (message) => {
        // Chromium logs every failed fetch: the 401s the page asks for a token on are expected (checked below).
        if (message.type() === 'error' && !message.text().includes('status of 401')) problems.push(`console: ${message.text()}`);
      });
      page.on('response', (response) => {
        const expected = response.status() === 401 && new URL(response.url()).pathname === '/v2/status';
        if (response.status() >= 400 && !expected) problems.push(`${response.status()} for ${response.url()}`);
      });

      // `/` redirects to the page; the server has a token, so the page asks for it.
      await page.goto(`${serve.url}/`);
      expect(page.url()).toBe(`${serve.url}/status`);
      await page.locator('body[data-state="login"]').waitFor();
      expect(await page.locator('#content').isHidden()).toBe(true);
      await page.locator('#token').fill('not-the-token');
      await page.locator('#login button[type="submit"]').click();
      await page.locator('#login-error', { hasText: 'That token was refused.' }).waitFor();
      expect(await page.locator('#content').isHidden()).toBe(true);
      await page.locator('#token').fill(TOKEN);
      await page.locator('#login button[type="submit"]').click();
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
    },
    180_000,
  );
});
