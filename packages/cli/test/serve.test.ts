// `image-cache serve`: the real binary, a real demo origin and real HTTP clients.
import { createHash } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { createServer, request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DEMO_IMAGES, demoImageDigest } from '../src/demo/origin.js';
import { bin, startServe, tempDir, withCache, type ServeProcess } from './helpers.js';

let root: string;
let cleanup: () => Promise<void>;
/** The serve processes a test started. */
const servers: ServeProcess[] = [];

beforeEach(async () => {
  ({ dir: root, cleanup } = await tempDir('serve'));
});
afterEach(async () => {
  for (const server of servers.splice(0)) server.kill();
  await cleanup();
});

/** Starts `image-cache serve --port 0 ...` in the test's directory (killed after the test). */
function serve(args: string[], env: Record<string, string> = {}): ServeProcess {
  const server = startServe(['serve', '--port', '0', ...args], { cwd: root, env });
  servers.push(server);
  return server;
}

async function sha256Of(response: Response): Promise<{ digest: string; bytes: number }> {
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
    hash.update(chunk);
    bytes += chunk.length;
  }
  return { digest: hash.digest('hex'), bytes };
}

describe('image-cache serve', () => {
  it('--demo: starts a demo origin, serves a miss then a hit with the same bytes, prints URLs, stops on SIGTERM with exit 0', async () => {
    const server = serve(['--demo']);
    const url = await server.url;
    const id = 'cirros-0.6.2';
    const size = DEMO_IMAGES[id] as number;
    const expected = await demoImageDigest(id, size);

    const miss = await fetch(`${url}/images/${id}`);
    expect(miss.status).toBe(200);
    expect(miss.headers.get('x-cache')).toBe('MISS');
    expect(await sha256Of(miss)).toEqual({ digest: expected, bytes: size });

    const hit = await fetch(`${url}/images/${id}`);
    expect(hit.headers.get('x-cache')).toBe('HIT');
    expect(hit.headers.get('content-length')).toBe(String(size));
    expect(await sha256Of(hit)).toEqual({ digest: expected, bytes: size });

    const listing = (await (await fetch(`${url}/v2/cache`)).json()) as { cached_images: { image_id: string; size: number }[] };
    expect(listing.cached_images.map((image) => [image.image_id, image.size])).toEqual([[id, size]]);
    const metrics = await (await fetch(`${url}/metrics`)).text();
    expect(metrics).toMatch(/^image_cache_misses_total 1$/m);
    expect(metrics).toMatch(/^image_cache_hits_total 1$/m);

    const { stdout } = server.output();
    expect(stdout).toContain(`${url}/images/${id}`);
    expect(stdout).toContain(`${url}/metrics`);
    // The status page is named, and it is there.
    expect(stdout).toContain(`Status page: ${url}/status (in a browser)`);
    expect(server.output().stderr).toContain(`image-cache: status page ${url}/status, metrics ${url}/metrics`);
    const page = await fetch(`${url}/status`);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toMatch(/^text\/html/);
    await page.arrayBuffer();

    server.signal('SIGTERM');
    expect(await server.exited).toBe(0);
    expect(server.output().stderr).toMatch(/stopped\n$/);
    // The settings it ran with stay recorded beside the cache (a dot-file: no driver takes it for an image).
    expect((await readdir(join(root, '.image-cache-demo'))).sort()).toEqual(['.image-cache-settings.json', 'cache.db', id, 'incomplete', 'invalid', 'queue'].sort());
  }, 60_000);

  it('with --token, the management API answers 401 without it and 200 with it', async () => {
    const server = serve(['--demo', '--token', 's3cret', '--cache-dir', join(root, 'cache')]);
    const url = await server.url;
    expect((await fetch(`${url}/v2/cache`)).status).toBe(401);
    const ok = await fetch(`${url}/v2/cache`, { headers: { authorization: 'Bearer s3cret' } });
    expect(ok.status).toBe(200);
    expect(await ok.json()).toEqual({ cached_images: [], queued_images: [] });
    server.signal('SIGINT');
    expect(await server.exited).toBe(0);
  }, 60_000);

  it('without a cache directory and without --demo: one-line usage error, exit 2, nothing created', async () => {
    const result = await bin(['serve', '--port', '0'], { cwd: root });
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/^image-cache: no cache directory: .* \[CLI_MISSING_CACHE_DIR\]\n$/);
    expect(await readdir(root)).toEqual([]);
  });

  it('a bad --port is a usage error before anything is opened', async () => {
    const result = await bin(['--cache-dir', join(root, 'c'), 'serve', '--port', '70000'], { cwd: root });
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/invalid --port "70000"/);
    expect(await readdir(root)).toEqual([]);
  });
});

describe('image-cache serve --shutdown-timeout', () => {
  it('on SIGTERM, cuts a response still streaming after the timeout and exits 0', async () => {
    // An origin that sends part of an image, then nothing: the response can only end by the timeout.
    const size = 4_000_000;
    const origin = createServer((_req, res) => {
      res.writeHead(200, { 'content-length': size });
      res.write(Buffer.alloc(500_000, 7));
    });
    origin.listen(0, '127.0.0.1');
    await new Promise((resolve) => origin.once('listening', resolve));
    const template = `http://127.0.0.1:${(origin.address() as AddressInfo).port}/images/{id}`;
    try {
      const cacheDir = join(root, 'cache');
      const server = serve(['--cache-dir', cacheDir, '--origin', template, '--shutdown-timeout', '300ms']);
      const url = await server.url;
      const download = await new Promise<{ ended: Promise<{ complete: boolean; received: number }> }>((resolve, reject) => {
        const req = httpRequest(`${url}/images/stuck`, (res) => {
          let received = 0;
          const ended = new Promise<{ complete: boolean; received: number }>((done) => res.on('close', () => done({ complete: res.complete, received })));
          res.on('data', (chunk: Buffer) => {
            received += chunk.length;
            if (received >= 100_000) resolve({ ended });
          });
        });
        req.on('error', reject);
        req.end();
      });
      server.signal('SIGTERM');
      // The process ends only because the 300ms timeout cut the stalled response (the default would be 10s).
      expect(await server.exited).toBe(0);
      expect(server.output().stderr).toContain('responses already streaming get up to 300ms to finish');
      const ended = await download.ended;
      expect(ended.complete).toBe(false);
      expect(ended.received).toBeLessThan(size);
    } finally {
      origin.closeAllConnections();
      origin.close();
    }
  }, 60_000);

  it('on SIGTERM mid-download with a stalling origin: the fill cut at the timeout is rolled back before the process exits', async () => {
    const size = 4_000_000;
    const origin = createServer((_req, res) => {
      res.writeHead(200, { 'content-length': size });
      res.write(Buffer.alloc(500_000, 7)); // then nothing: only the shutdown timeout ends it
    });
    origin.listen(0, '127.0.0.1');
    await new Promise((resolve) => origin.once('listening', resolve));
    const template = `http://127.0.0.1:${(origin.address() as AddressInfo).port}/images/{id}`;
    try {
      const cacheDir = join(root, 'cache');
      const server = serve(['--cache-dir', cacheDir, '--origin', template, '--shutdown-timeout', '1s']);
      const url = await server.url;
      const { closed } = await new Promise<{ closed: Promise<boolean> }>((resolve, reject) => {
        const req = httpRequest(`${url}/images/stuck`, (res) => {
          let received = 0;
          const whenClosed = new Promise<boolean>((done) => res.on('close', () => done(res.complete)));
          res.on('data', (chunk: Buffer) => {
            received += chunk.length;
            if (received >= 100_000) resolve({ closed: whenClosed });
          });
        });
        req.on('error', reject);
        req.end();
      });
      expect(await readdir(join(cacheDir, 'incomplete'))).toEqual(['stuck']); // being filled right now
      server.signal('SIGTERM');
      expect(await server.exited).toBe(0);
      expect(await closed).toBe(false); // cut: the download never completed
      // Once the process has exited, the partial file is in invalid/: never left in incomplete/, never active.
      expect(await readdir(join(cacheDir, 'incomplete'))).toEqual([]);
      expect(await readdir(join(cacheDir, 'invalid'))).toEqual(['stuck']);
      expect(await withCache('sqlite', cacheDir, (cache) => cache.isCached('stuck'))).toBe(false);
    } finally {
      origin.closeAllConnections();
      origin.close();
    }
  }, 60_000);

  it('--fill-abandon-after: a download whose only client left is stopped and rolled back, and the origin request ends', async () => {
    const size = 4_000_000;
    let originClosed!: () => void;
    const originRequestClosed = new Promise<void>((resolve) => (originClosed = resolve));
    const origin = createServer((req, res) => {
      res.writeHead(200, { 'content-length': size });
      res.write(Buffer.alloc(500_000, 7)); // then nothing: only the abandon rule ends it
      req.socket.on('close', () => originClosed());
    });
    origin.listen(0, '127.0.0.1');
    await new Promise((resolve) => origin.once('listening', resolve));
    const template = `http://127.0.0.1:${(origin.address() as AddressInfo).port}/images/{id}`;
    try {
      const cacheDir = join(root, 'cache');
      const server = serve(['--cache-dir', cacheDir, '--origin', template, '--fill-abandon-after', '200ms']);
      const url = await server.url;
      await new Promise<void>((resolve, reject) => {
        const req = httpRequest(`${url}/images/left`, (res) => {
          res.once('data', () => {
            req.destroy(); // the only client leaves mid-body
            resolve();
          });
        });
        req.on('error', () => undefined);
        req.once('socket', (socket) => socket.once('error', reject));
        req.end();
      });
      await originRequestClosed; // the server stopped fetching: no reader for 200 ms
      // The fill was rolled back: its partial file is in invalid/, nothing is active or left in incomplete/.
      await waitUntil(async () => (await readdir(join(cacheDir, 'invalid'))).includes('left'));
      expect(await readdir(join(cacheDir, 'incomplete'))).toEqual([]);
      server.signal('SIGTERM');
      expect(await server.exited).toBe(0);
      expect(await withCache('sqlite', cacheDir, (cache) => cache.isCached('left'))).toBe(false);
    } finally {
      origin.closeAllConnections();
      origin.close();
    }
  }, 60_000);

  it('--fill-abandon-after that is not a duration is a usage error', async () => {
    const result = await bin(['--cache-dir', join(root, 'c'), 'serve', '--fill-abandon-after', 'later'], { cwd: root });
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('CLI_INVALID_DURATION');
  });

  it('a shutdown timeout that is not a duration is a usage error', async () => {
    const result = await bin(['--cache-dir', join(root, 'c'), 'serve', '--shutdown-timeout', 'soon'], { cwd: root });
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/CLI_INVALID_DURATION/);
  });
});

describe('image-cache serve --workers', () => {
  it('IMAGE_CACHE_WORKERS=2: two worker processes share the port, both answer; SIGTERM stops them all, exit 0', async () => {
    const server = serve(['--cache-dir', join(root, 'cache')], { IMAGE_CACHE_WORKERS: '2' });
    const url = await server.url;
    const match = /image-cache: 2 worker processes \(pids (\d+) (\d+)\) share the port\n/.exec(server.output().stderr);
    expect(match, server.output().stderr).not.toBeNull();
    const pids = [Number(match?.[1]), Number(match?.[2])];
    // New connections go to the workers in turn: both answer (a bounded number of tries, no clock).
    const seen = new Set<number>();
    for (let i = 0; i < 20 && seen.size < 2; i++) {
      const { body, pid } = await new Promise<{ body: string; pid: number }>((resolve, reject) => {
        const req = httpRequest(`${url}/metrics`, { agent: false }, (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => (text += chunk));
          res.on('end', () => resolve({ body: text, pid: Number(res.headers['x-image-cache-pid']) }));
        });
        req.on('error', reject);
        req.end();
      });
      seen.add(pid);
      // Whichever worker answers, the scrape holds both workers' metrics.
      expect([...body.matchAll(/^image_cache_server_process\{pid="(\d+)"\} 1$/gm)].map((m) => Number(m[1])).sort()).toEqual([...pids].sort());
    }
    expect([...seen].sort()).toEqual([...pids].sort());
    server.signal('SIGTERM');
    expect(await server.exited).toBe(0);
    expect(server.output().stdout).toBe(`listening on ${url}\n`);
    expect(server.output().stderr).toMatch(/image-cache: shutting down 2 worker processes: .*\nimage-cache: stopped\n$/);
    for (const pid of pids) expect(() => process.kill(pid, 0)).toThrow();
  });
});

describe('image-cache serve, port taken', () => {
  it('says which port is taken and how to pick another, exit 1', async () => {
    const { createServer } = await import('node:net');
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', () => resolve()));
    const port = (blocker.address() as { port: number }).port;
    try {
      const result = await bin(['--cache-dir', join(root, 'c'), 'serve', '--port', String(port)], { cwd: root });
      expect(result.code).toBe(1);
      expect(result.stderr).toBe(
        `image-cache: cannot listen on 127.0.0.1:${port} (EADDRINUSE): pick another with --port or IMAGE_CACHE_PORT (0 takes any free port) [CLI_LISTEN]\n`,
      );
    } finally {
      blocker.close();
    }
  });
});

/** Polls `check` every 10 ms until it holds (the test's own timeout bounds it). */
async function waitUntil(check: () => Promise<boolean>): Promise<void> {
  while (!(await check())) await new Promise((resolve) => setTimeout(resolve, 10));
}
