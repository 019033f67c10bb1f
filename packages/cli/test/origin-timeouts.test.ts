// `image-cache serve` and `prefetch` with the origin's timeouts and retries: the real binary in front of a real HTTP origin.
import { readdir } from 'node:fs/promises';
import { createServer, request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { originOptions } from '../src/origin-options.js';
import { resolveConfig } from '../src/config.js';
import { bin, cli, startServe, tempDir, withCache, type ServeProcess } from './helpers.js';

let root: string;
let cleanup: () => Promise<void>;
/** The serve processes a test started. */
const servers: ServeProcess[] = [];

beforeEach(async () => {
  ({ dir: root, cleanup } = await tempDir('origin-timeouts'));
});
afterEach(async () => {
  for (const server of servers.splice(0)) server.kill();
  await cleanup();
});

/** Starts `image-cache serve --port 0 ...` in the test's directory (killed after the test). */
function serve(args: string[]): ServeProcess {
  const server = startServe(['serve', '--port', '0', ...args], { cwd: root });
  servers.push(server);
  return server;
}

/** A real origin on 127.0.0.1; `handle` gets each request's number (0 for the first). */
async function startOrigin(handle: (request: IncomingMessage, response: ServerResponse, index: number) => void) {
  let count = 0;
  const server = createServer((request, response) => handle(request, response, count++));
  server.listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  return {
    template: `http://127.0.0.1:${(server.address() as AddressInfo).port}/images/{id}`,
    requests: () => count,
    close: () => {
      server.closeAllConnections();
      server.close();
    },
  };
}

const image = Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 31) % 256));

describe('image-cache serve with origin retries and timeouts', () => {
  it('an origin answering 503 twice, then the image: the client gets the image, the origin saw 3 requests, the image is cached', async () => {
    const origin = await startOrigin((_request, response, index) => {
      if (index < 2) {
        response.writeHead(503);
        response.end('busy');
      } else {
        response.writeHead(200, { 'content-length': image.length });
        response.end(image);
      }
    });
    try {
      const cacheDir = join(root, 'cache');
      const server = serve(['--cache-dir', cacheDir, '--origin', origin.template, '--origin-retries', '2', '--origin-retry-delay', '10ms']);
      const url = await server.url;
      const response = await fetch(`${url}/images/flaky`);
      expect(response.status).toBe(200);
      expect(Buffer.from(await response.arrayBuffer()).equals(image)).toBe(true);
      expect(origin.requests()).toBe(3);
      // The startup line says how the origin is opened (the delay is not the default).
      expect(server.output().stderr).toMatch(/origin http:\/\/127\.0\.0\.1:\d+\/images\/\{id\} \(timeouts: headers 30s, idle 30s, total none; 2 retries after 10ms\)/);
      server.signal('SIGTERM');
      expect(await server.exited).toBe(0);
      expect(await withCache('sqlite', cacheDir, (cache) => cache.isCached('flaky'))).toBe(true);
    } finally {
      origin.close();
    }
  }, 60_000);

  it('an origin that goes silent mid-body: the idle timeout cuts the client response and nothing is cached or left in incomplete/', async () => {
    const size = 4_000_000;
    const origin = await startOrigin((_request, response) => {
      response.writeHead(200, { 'content-length': size });
      response.write(Buffer.alloc(200_000, 7)); // then nothing, ever
    });
    try {
      const cacheDir = join(root, 'cache');
      const server = serve(['--cache-dir', cacheDir, '--origin', origin.template, '--origin-idle-timeout', '300ms', '--origin-retries', '3']);
      const url = await server.url;
      const outcome = await new Promise<{ complete: boolean; received: number }>((resolve, reject) => {
        const req = httpRequest(`${url}/images/silent`, (res) => {
          let received = 0;
          res.on('data', (chunk: Buffer) => (received += chunk.length));
          res.on('close', () => resolve({ complete: res.complete, received }));
          res.on('error', () => undefined);
        });
        req.on('error', reject);
        req.end();
      });
      expect(outcome.complete).toBe(false); // cut, not a short success
      expect(outcome.received).toBeLessThan(size);
      expect(origin.requests()).toBe(1); // bytes had flowed: not retried
      server.signal('SIGTERM');
      expect(await server.exited).toBe(0);
      expect(await readdir(join(cacheDir, 'incomplete'))).toEqual([]);
      expect(await withCache('sqlite', cacheDir, (cache) => cache.isCached('silent'))).toBe(false);
    } finally {
      origin.close();
    }
  }, 60_000);

  it('a bad origin duration or retry count is a usage error (exit 2) before anything starts', async () => {
    const cacheDir = join(root, 'c');
    const cases: [string[], RegExp][] = [
      [['--origin-idle-timeout', 'soon'], /invalid --origin-idle-timeout "soon"/],
      [['--origin-headers-timeout', '0'], /invalid --origin-headers-timeout "0": use a duration from 1ms to 24 days/],
      [['--origin-total-timeout', '30d'], /invalid --origin-total-timeout "30d"/],
      [['--origin-retries', '-1'], /invalid --origin-retries "-1": use a whole number from 0 to 100/],
      [['--origin-retry-delay', 'x'], /invalid --origin-retry-delay "x"/],
    ];
    for (const [flags, message] of cases) {
      const result = await bin(['--cache-dir', cacheDir, 'serve', '--origin', 'http://127.0.0.1:9/{id}', ...flags], { cwd: root });
      expect(result.code, flags.join(' ')).toBe(2);
      expect(result.stderr).toMatch(message);
    }
    await expect(readdir(cacheDir)).rejects.toThrow(/ENOENT/);
  });
});

describe('origin timeout and retry settings', () => {
  it('come from flags, IMAGE_CACHE_ORIGIN_* variables or the config file, and become createOrigin options in ms', async () => {
    const defaults = await resolveConfig({ flags: { cacheDir: root }, env: {}, cwd: root });
    expect(defaults).toMatchObject({ originHeadersTimeout: 30, originIdleTimeout: 30, originTotalTimeout: undefined, originRetries: 2, originRetryDelay: 0.25 });
    expect(originOptions(defaults)).toEqual({ headersTimeout: 30_000, bodyIdleTimeout: 30_000, retries: 2, retryDelay: 250, maxRetryDelay: 10_000 });

    const fromEnv = await resolveConfig({
      flags: { cacheDir: root, originRetries: '5' },
      env: {
        IMAGE_CACHE_ORIGIN_HEADERS_TIMEOUT: '10s',
        IMAGE_CACHE_ORIGIN_IDLE_TIMEOUT: '0',
        IMAGE_CACHE_ORIGIN_TOTAL_TIMEOUT: '2h',
        IMAGE_CACHE_ORIGIN_RETRIES: '1',
        IMAGE_CACHE_ORIGIN_RETRY_DELAY: '20s',
      },
      cwd: root,
    });
    expect(fromEnv.sources).toMatchObject({ originRetries: 'flag', originHeadersTimeout: 'env', originTotalTimeout: 'env' });
    expect(originOptions(fromEnv)).toEqual({
      headersTimeout: 10_000,
      bodyIdleTimeout: 0, // off
      totalTimeout: 7_200_000,
      retries: 5,
      retryDelay: 20_000,
      maxRetryDelay: 20_000, // a first delay above the 10 s cap raises it
    });

    const { writeFile } = await import('node:fs/promises');
    await writeFile(join(root, 'image-cache.config.json'), JSON.stringify({ originIdleTimeout: '1m', originRetries: 0, originRetryDelay: 0.5 }));
    const fromFile = await resolveConfig({ flags: { cacheDir: root }, env: {}, cwd: root });
    expect(fromFile).toMatchObject({ originIdleTimeout: 60, originRetries: 0, originRetryDelay: 0.5 });
    expect(fromFile.warnings).toEqual([]);
  });

  it('prefetch: --retries (whole-image attempts) and --origin-retries (requests before the first byte) are told apart in --help', async () => {
    const help = (await cli(['prefetch', '--help'])).stdout.replace(/\s+/g, ' '); // unwrapped
    expect(help).toMatch(/--retries <n> whole-image attempts: .* --origin-retries retries the origin request itself before its first byte/);
    expect(help).toMatch(/--origin-retries <n> retries of one origin request that failed before the first byte/);
  });

  it('prefetch: a 503 then the image is fetched in one whole-image attempt; the origin saw 2 requests', async () => {
    const origin = await startOrigin((_request, response, index) => {
      if (index === 0) {
        response.writeHead(503);
        response.end();
      } else {
        response.writeHead(200, { 'content-length': image.length });
        response.end(image);
      }
    });
    try {
      const cacheDir = join(root, 'cache');
      const result = await bin(['--cache-dir', cacheDir, 'prefetch', 'one', '--origin', origin.template, '--origin-retry-delay', '1ms', '--json'], { cwd: root });
      expect(result.code).toBe(0);
      expect(JSON.parse(result.stdout).results).toMatchObject([{ imageId: 'one', status: 'fetched', attempts: 1 }]);
      expect(origin.requests()).toBe(2);
    } finally {
      origin.close();
    }
  }, 60_000);
});
