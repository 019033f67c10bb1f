import { createHash } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { runCli } from '../src/index.js';
import { Capture, cli, driverMatrix, read, suiteTitle, tempDir, tree, withCache } from './helpers.js';

const sha256 = (data: string | Buffer) => createHash('sha256').update(data).digest('hex');
const body = (id: string) => Buffer.alloc(64 * 1024 + id.length, id);

/**
 * A real HTTP origin on 127.0.0.1 that counts requests per id:
 * `missing*` -> 404, `broken*` -> 500 always, `flaky*` -> 503 twice then 200,
 * `held*` -> 200 once the test calls {@link TestOrigin.release} (nothing if the client goes away first),
 * `trickle*` -> 200 sent in 8 chunks 40 ms apart (the last one once {@link TestOrigin.beforeLastChunk}
 * resolves), `wrong-digest*` -> 200 with a `Repr-Digest` of other bytes, `close-delimited*` -> 200
 * without `Content-Length` or chunking (the end is the connection's close), anything else -> 200 at once.
 */
class TestOrigin {
  readonly requests = new Map<string, number>();
  /** Requests not answered yet (nor given up by their client), and the most there were at once. */
  inFlight = 0;
  maxInFlight = 0;
  /** Runs before a `trickle*` response's last chunk, which waits for it. */
  beforeLastChunk: (id: string) => Promise<void> = async () => undefined;
  /** Answers of the `held*` requests waiting for release(). */
  readonly #held = new Set<() => void>();
  #heldWaiters: { count: number; resolve: () => void }[] = [];
  #server: Server | undefined;
  url = '';

  /** Resolves once `count` `held*` requests are waiting for release(). */
  whenHeld(count: number): Promise<void> {
    if (this.#held.size >= count) return Promise.resolve();
    return new Promise((resolve) => this.#heldWaiters.push({ count, resolve }));
  }

  /** Answers every `held*` request waiting; returns how many. */
  release(): number {
    const answers = [...this.#held];
    this.#held.clear();
    for (const answer of answers) answer();
    return answers.length;
  }

  async start(): Promise<void> {
    this.#server = createServer((req, res) => {
      const id = decodeURIComponent(/^\/images\/([^/]+)$/.exec(req.url ?? '')?.[1] ?? '');
      const count = (this.requests.get(id) ?? 0) + 1;
      this.requests.set(id, count);
      this.inFlight++;
      this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
      let answered = false;
      const done = () => {
        if (answered) return;
        answered = true;
        this.inFlight--;
      };
      res.on('close', done);
      const send = (status: number, data?: Buffer) => {
        done();
        res.writeHead(status, data === undefined ? {} : { 'content-length': data.length });
        res.end(data);
      };
      if (id.startsWith('missing')) send(404);
      else if (id.startsWith('broken')) send(500);
      else if (id.startsWith('flaky') && count <= 2) send(503);
      else if (id.startsWith('held')) {
        const answer = () => send(200, body(id));
        this.#held.add(answer);
        res.on('close', () => this.#held.delete(answer));
        const ready = this.#heldWaiters.filter((waiter) => waiter.count <= this.#held.size);
        this.#heldWaiters = this.#heldWaiters.filter((waiter) => !ready.includes(waiter));
        for (const waiter of ready) waiter.resolve();
      } else if (id.startsWith('trickle')) {
        const data = body(id);
        res.writeHead(200, { 'content-length': data.length });
        let sent = 0;
        const step = Math.ceil(data.length / 8);
        const timer = setInterval(() => {
          if (sent + step < data.length) {
            res.write(data.subarray(sent, sent + step));
            sent += step;
            return;
          }
          clearInterval(timer);
          void this.beforeLastChunk(id).then(() => {
            done();
            res.end(data.subarray(sent));
          });
        }, 40);
        res.on('close', () => clearInterval(timer));
      }
      else if (id.startsWith('wrong-digest')) {
        done();
        const data = body(id);
        res.writeHead(200, { 'content-length': data.length, 'repr-digest': `sha-256=:${createHash('sha256').update('other').digest('base64')}:` });
        res.end(data);
      } else if (id.startsWith('close-delimited')) {
        done();
        res.socket?.end(Buffer.concat([Buffer.from('HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n'), body(id)]));
      }
      else send(200, body(id));
    });
    await new Promise<void>((resolve) => this.#server!.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.#server!.address() as AddressInfo).port}/images/{id}`;
  }

  reset(): void {
    this.requests.clear();
    this.maxInFlight = 0;
  }

  async stop(): Promise<void> {
    this.#server?.closeAllConnections();
    await new Promise((resolve) => this.#server?.close(resolve));
  }
}

/**
 * Polls `condition` every 10 ms until it holds. Gives up (resolving) after 30 s, a guard for a loaded
 * machine only: the assertion that follows then fails with what was seen.
 */
async function until(condition: () => boolean): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!condition() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
}

const origin = new TestOrigin();
beforeAll(() => origin.start());
afterAll(() => origin.stop());

for (const { name: driver, skip } of await driverMatrix()) {
  describe.skipIf(skip !== undefined)(suiteTitle(driver, skip), () => {
    let root: string;
    let cacheDir: string;
    let cleanup: () => Promise<void>;
    const run = (...argv: string[]) => cli(['--driver', driver, '--cache-dir', cacheDir, ...argv], { cwd: root });
    const cached = () => withCache(driver, cacheDir, async (cache) => (await cache.getCachedImages()).map((i) => i.imageId));

    beforeEach(async () => {
      ({ dir: root, cleanup } = await tempDir(`prefetch-${driver}`));
      cacheDir = join(root, 'cache');
      origin.reset();
    });
    afterEach(() => cleanup());

    it('caches every queued image from a directory origin and empties the queue', async () => {
      const images = join(root, 'images');
      await mkdir(images);
      await writeFile(join(images, 'one'), 'first image');
      await writeFile(join(images, 'two'), Buffer.alloc(300_000, 2));
      expect((await run('queue', 'one', 'two')).code).toBe(0);

      const result = await run('prefetch', '--origin', 'images'); // relative to the working directory
      expect(result.code).toBe(0);
      expect(result.stdout).toMatch(/^prefetch: 2 fetched \(293 KiB\), 0 failed of 2 in \S+\n$/);
      // Not a terminal: no bars, one plain line per finished image.
      expect(result.stderr.split('\n').filter(Boolean).sort()).toEqual([
        expect.stringMatching(/^fetched one: 11 B in \S+, \S+ \S+\/s, 1 attempt$/),
        expect.stringMatching(/^fetched two: 293 KiB in \S+, \S+ \S+\/s, 1 attempt$/),
      ]);
      expect(result.stderr).not.toContain('\u001b[');
      expect(await cached()).toEqual(['one', 'two']);
      expect(await tree(join(cacheDir, 'queue'))).toEqual([]);
      await withCache(driver, cacheDir, async (cache) => expect((await read(cache, 'one')).toString()).toBe('first image'));

      const again = await run('prefetch', '--origin', join(root, 'images'));
      expect(again).toMatchObject({ code: 0, stdout: 'prefetch: nothing queued\n' });
    });

    it('from HTTP: retries 5xx with backoff, never retries a 404, and one failure does not stop the rest', async () => {
      await run('queue', 'good-1', 'flaky-1', 'broken-1', 'missing-1', 'good-2');
      // --origin-retries 0: only the whole-image attempts retry, so the origin's counts are theirs.
      const result = await run('prefetch', '--origin', origin.url, '--retries', '3', '--retry-delay', '10ms', '--origin-retries', '0', '--json');
      expect(result.code).toBe(1);
      const report = JSON.parse(result.stdout) as {
        results: { imageId: string; status: string; attempts: number; error?: { code: string; status: number } }[];
        summary: Record<string, number>;
      };
      const byId = Object.fromEntries(report.results.map((r) => [r.imageId, r]));
      expect(byId['good-1']).toMatchObject({ status: 'fetched', attempts: 1 });
      expect(byId['good-2']).toMatchObject({ status: 'fetched', attempts: 1 });
      expect(byId['flaky-1']).toMatchObject({ status: 'fetched', attempts: 3 });
      expect(byId['broken-1']).toMatchObject({ status: 'failed', attempts: 4, error: { code: 'CACHE_ORIGIN_ERROR', status: 500 } });
      expect(byId['missing-1']).toMatchObject({ status: 'failed', attempts: 1, error: { code: 'CACHE_ORIGIN_ERROR', status: 404 } });
      expect(report.summary).toMatchObject({ total: 5, fetched: 3, failed: 2 });
      // Counted on the origin's side.
      expect(Object.fromEntries(origin.requests)).toEqual({ 'good-1': 1, 'good-2': 1, 'flaky-1': 3, 'broken-1': 4, 'missing-1': 1 });
      expect(result.stderr).toMatch(/^retrying broken-1 after attempt 3: .*answered 500/m);
      expect(await cached()).toEqual(['flaky-1', 'good-1', 'good-2']);
      // Failed ids stay queued for a later run.
      expect(await tree(join(cacheDir, 'queue'))).toEqual(['broken-1', 'missing-1']);
      await withCache(driver, cacheDir, async (cache) => expect(await read(cache, 'flaky-1')).toEqual(body('flaky-1')));
    });

    it('prints a summary line and exits non-zero when an image failed', async () => {
      const result = await run('prefetch', 'good-a', 'missing-a', '--origin', origin.url, '--retry-delay', '10ms');
      expect(result.code).toBe(1);
      expect(result.stdout).toMatch(/^prefetch: 1 fetched \(64 KiB\), 1 failed of 2 in \S+\n$/);
      expect(result.stderr).toMatch(/^failed missing-a after 1 attempt: origin failed for image 'missing-a': GET .* answered 404 Not Found \[CACHE_ORIGIN_ERROR\]$/m);
    });

    it('verifies against a checksum manifest: a mismatch is not retried, not cached, and the digest is stored on success', async () => {
      await writeFile(
        join(root, 'SHA256SUMS'),
        `${sha256(body('good-x'))}  good-x\n${sha256('something else')}  good-y\n`,
      );
      const result = await run('prefetch', 'good-x', 'good-y', '--origin', origin.url, '--checksums', 'SHA256SUMS', '--json');
      expect(result.code).toBe(1);
      const byId = Object.fromEntries((JSON.parse(result.stdout).results as { imageId: string }[]).map((r) => [r.imageId, r]));
      expect(byId['good-x']).toMatchObject({ status: 'fetched' });
      expect(byId['good-y']).toMatchObject({ status: 'failed', attempts: 1, error: { code: 'CACHE_CHECKSUM_MISMATCH' } });
      expect(origin.requests.get('good-y')).toBe(1);
      expect(await cached()).toEqual(['good-x']);
      expect(await tree(join(cacheDir, 'invalid'))).toEqual(['good-y']);
      const info = JSON.parse((await run('info', 'good-x', '--json')).stdout) as { checksum: string };
      expect(info.checksum).toBe(`sha256:${sha256(body('good-x'))}`);
      expect((await run('verify', 'good-x')).stdout).toMatch(/^ok {11}good-x$/m);
    });

    it("verifies what the origin announces: a wrong Repr-Digest and an unverifiable close-delimited body are not cached, nor retried", async () => {
      const result = await run('prefetch', 'wrong-digest-1', 'close-delimited-1', 'good-z', '--origin', origin.url, '--retry-delay', '10ms', '--json');
      expect(result.code).toBe(1);
      const byId = Object.fromEntries((JSON.parse(result.stdout).results as { imageId: string; error?: { message: string } }[]).map((r) => [r.imageId, r]));
      expect(byId['wrong-digest-1']).toMatchObject({ status: 'failed', attempts: 1, error: { code: 'CACHE_CHECKSUM_MISMATCH' } });
      expect(byId['close-delimited-1']).toMatchObject({ status: 'failed', attempts: 1, error: { code: 'CACHE_ORIGIN_ERROR' } });
      expect(byId['close-delimited-1']?.error?.message).toMatch(/close-delimited/);
      expect(byId['good-z']).toMatchObject({ status: 'fetched' });
      expect(origin.requests.get('wrong-digest-1')).toBe(1);
      expect(origin.requests.get('close-delimited-1')).toBe(1);
      expect(await cached()).toEqual(['good-z']);
    });

    it('keeps at most --concurrency fetches in flight', async () => {
      const ids = ['held-1', 'held-2', 'held-3', 'held-4', 'held-5', 'held-6'];
      const running = run('prefetch', ...ids, '--origin', origin.url, '--concurrency', '2');
      // The origin answers only once two requests wait: the fetches surely overlap, two at a time.
      for (let pair = 0; pair < 3; pair++) {
        await origin.whenHeld(2);
        expect(origin.inFlight).toBe(2);
        expect(origin.release()).toBe(2);
      }
      const result = await running;
      expect(result.code).toBe(0);
      expect(origin.maxInFlight).toBe(2);
      expect(await cached()).toEqual(ids);
    });

    it('skips images that are already cached and removes their stale queue markers', async () => {
      await run('prefetch', 'good-z', '--origin', origin.url);
      await writeFile(join(cacheDir, 'queue', 'good-z'), ''); // a marker left by a crash
      const result = await run('prefetch', '--origin', origin.url);
      expect(result).toMatchObject({ code: 0, stdout: expect.stringMatching(/^prefetch: 0 fetched \(0 B\), 1 already cached, 0 failed of 1/) });
      expect(origin.requests.get('good-z')).toBe(1);
      expect(await tree(join(cacheDir, 'queue'))).toEqual([]);
    });

    it('stops when interrupted: exit code 130, nothing half-written left active', async () => {
      const controller = new AbortController();
      // Interrupted while the first image is being fetched (the origin holds its answer).
      void origin.whenHeld(1).then(() => controller.abort(new Error('interrupted')));
      const result = await cli(['--cache-dir', cacheDir, '--driver', driver, 'prefetch', 'held-a', 'held-b', 'held-c', '--origin', origin.url, '--concurrency', '1'], {
        signal: controller.signal,
      });
      expect(origin.requests.get('held-a')).toBe(1);
      expect(origin.requests.has('held-b')).toBe(false);
      expect(result.code).toBe(130);
      expect(result.stdout).toMatch(/cancelled/);
      expect(await cached()).toEqual([]);
      expect(await tree(join(cacheDir, 'incomplete'))).toEqual([]);
    });
  });
}

describe('prefetch input errors', () => {
  it('refuses a missing origin, a bad origin URL, a missing origin directory and a bad manifest with exit code 2, creating nothing', async () => {
    const { dir, cleanup } = await tempDir('prefetch-errors');
    try {
      const cacheDir = join(dir, 'cache');
      const cases: [string[], RegExp][] = [
        [[], /no origin: pass --origin .* \[CLI_MISSING_ORIGIN\]/],
        [['--origin', 'ftp://host/{id}'], /unsupported origin scheme .* \[CACHE_INVALID_ARGUMENT\]/],
        [['--origin', 'http://host/images'], /needs a URL template containing \{id\}, got .* \[CACHE_INVALID_ARGUMENT\]/],
        [['--origin', join(dir, 'nowhere')], /origin directory .*nowhere does not exist .* \[CLI_MISSING_ORIGIN\]/],
        [['--origin', dir, '--checksums', join(dir, 'nope.txt')], /cannot read checksum manifest .* \[CLI_CHECKSUM_MANIFEST\]/],
        [['--origin', dir, '--concurrency', '0'], /invalid --concurrency "0": use a whole number from 1 to 256 \[CLI_INVALID_NUMBER\]/],
      ];
      for (const [argv, message] of cases) {
        const result = await cli(['--cache-dir', cacheDir, 'prefetch', 'x', ...argv], { cwd: dir });
        expect(result.code, argv.join(' ')).toBe(2);
        expect(result.stderr.split('\n')).toHaveLength(2);
        expect(result.stderr).toMatch(message);
      }
      expect(await tree(dir)).toEqual([]);
    } finally {
      await cleanup();
    }
  });
});

describe('prefetch progress on a terminal', () => {
  it('draws a bar per image and an overall bar on a TTY stderr, and none with --no-progress', async () => {
    const { dir, cleanup } = await tempDir('prefetch-tty');
    try {
      const trickleBar = /trickle-1\s+\S+ \d+% [\d.]+ \S+\/64 KiB [\d.]+ \S+\/s ETA/;
      const run = async (...extra: string[]) => {
        const stdout = new Capture();
        const stderr = Object.assign(new Capture(), { isTTY: true, columns: 200 });
        // With bars, trickle-1's last chunk waits until its bar has been drawn (bars redraw on a timer):
        // the bar is on the terminal while the image is fetched, however slow the machine.
        if (extra.length === 0) origin.beforeLastChunk = async (id) => (id === 'trickle-1' ? until(() => trickleBar.test(stderr.text)) : undefined);
        try {
          const code = await runCli(['--cache-dir', join(dir, `cache${extra.length}`), 'prefetch', 'trickle-1', 'trickle-2', '--origin', origin.url, ...extra], {
            stdout,
            stderr,
            env: {},
            cwd: dir,
          });
          return { code, stdout: stdout.text, stderr: stderr.text };
        } finally {
          origin.beforeLastChunk = async () => undefined;
        }
      };
      const bars = await run();
      expect(bars.code).toBe(0);
      expect(bars.stdout).toMatch(/^prefetch: 2 fetched \(128 KiB\), 0 failed of 2 in \S+\n$/);
      expect(bars.stderr).toContain('\u001b['); // cursor movement of the MultiBar
      expect(bars.stderr).toMatch(/overall\s+\S+ [0-2]\/2 images/);
      expect(bars.stderr).toMatch(trickleBar);
      expect(bars.stderr).toMatch(/fetched trickle-1: 64 KiB in /);
      expect(bars.stderr).toMatch(/fetched trickle-2: 64 KiB in /);

      const plain = await run('--no-progress');
      expect(plain.code).toBe(0);
      expect(plain.stderr).not.toContain('\u001b[');
      expect(plain.stderr.split('\n').filter(Boolean)).toHaveLength(2);
    } finally {
      await cleanup();
    }
  });
});
