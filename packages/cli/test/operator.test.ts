// Issue 13, as an operator meets it: the built binary (and pnpm from the repository root) in child
// processes, real ports on 127.0.0.1. Safe defaults of `serve`, the settings it records for `stats`,
// honest permission messages, and the CLI from a clone.
import { execFile } from 'node:child_process';
import { chmod, copyFile, mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SETTINGS_FILE, type RecordedSettings } from '../src/settings-file.js';
import { BIN, bin, put, startServe, tempDir, tree, withCache, type RunResult, type ServeProcess } from './helpers.js';

const REPO = join(import.meta.dirname, '..', '..', '..');

let root: string;
let cleanup: () => Promise<void>;
const servers: ServeProcess[] = [];

beforeEach(async () => {
  ({ dir: root, cleanup } = await tempDir('operator'));
});
afterEach(async () => {
  for (const server of servers.splice(0)) {
    server.kill();
    await server.exited;
  }
  await cleanup();
});

function serve(args: string[], env: Record<string, string> = {}): ServeProcess {
  const server = startServe(['serve', '--port', '0', '--prune-interval', '0', '--clean-interval', '0', '--prefetch-interval', '0', ...args], { cwd: root, env });
  servers.push(server);
  return server;
}

/** Polls `check` until it holds (the test's timeout bounds the wait). */
async function until(check: () => boolean): Promise<void> {
  while (!check()) await new Promise((resolve) => setTimeout(resolve, 20));
}

/** The `image-cache: warning: ...` lines a process printed. */
function warnings(stderr: string): string[] {
  return stderr.split('\n').filter((line) => line.startsWith('image-cache: warning: '));
}

describe('serve: safe by default', () => {
  it.each([
    ['--host 0.0.0.0', ['--host', '0.0.0.0'], {}],
    ['--host :: (IPv6 any)', ['--host', '::'], {}],
    ['IMAGE_CACHE_HOST=0.0.0.0', [], { IMAGE_CACHE_HOST: '0.0.0.0' }],
  ] as [string, string[], Record<string, string>][])('without a token on %s: refused before anything is opened (exit 2)', async (_name, args, env) => {
    const result = await bin(['--cache-dir', join(root, 'cache'), 'serve', '--port', '0', ...args], { cwd: root, env });
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(
      /^image-cache: refusing to serve on \S+ without a token: the management API \(\/v2: delete, prune, queue\) would be open to every host .*--token .*--insecure-open-management-api \[CLI_OPEN_MANAGEMENT_API\]\n$/,
    );
    expect(await tree(root)).toEqual([]);
  });

  it.each([
    ["--token ''", ['--token', ''], {}, /--token is empty/],
    ["--token '   '", ['--token', '   '], {}, /--token is empty/],
    ['IMAGE_CACHE_TOKEN set but empty', [], { IMAGE_CACHE_TOKEN: '' }, /IMAGE_CACHE_TOKEN is empty/],
    ['a token with a space', ['--token', 'a b'], {}, /--token must be visible ASCII characters without spaces/],
    ["--metrics-token ''", ['--metrics-token', ''], {}, /--metrics-token is empty/],
  ] as [string, string[], Record<string, string>, RegExp][])('%s is refused (exit 2), the token never printed', async (_name, args, env, pattern) => {
    const result = await bin(['--cache-dir', join(root, 'cache'), 'serve', '--port', '0', ...args], { cwd: root, env });
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(pattern);
    expect(result.stderr).toMatch(/\[CLI_INVALID_TOKEN\]\n$/);
    expect(result.stderr).not.toContain('a b');
    expect(await tree(root)).toEqual([]);
  });

  it('on loopback without a token: it serves, and says the management API is open to this host', async () => {
    const server = serve(['--cache-dir', join(root, 'cache')]);
    const url = await server.url;
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(warnings(server.output().stderr)).toEqual([
      'image-cache: warning: the management API (/v2: delete, prune, queue) has no token: any user or process on this host can use it; set --token (IMAGE_CACHE_TOKEN) to guard it',
    ]);
    expect((await fetch(`${url}/v2/cache`)).status).toBe(200);
  });

  it('--host 0.0.0.0 with a token: the printed address is the bound one (not 127.0.0.1), and /v2 needs the token', async () => {
    const server = serve(['--cache-dir', join(root, 'cache'), '--host', '0.0.0.0', '--token', 't0ken']);
    const url = await server.url;
    expect(url).toMatch(/^http:\/\/0\.0\.0\.0:\d+$/);
    await until(() => server.output().stdout !== '');
    expect(server.output().stdout).toBe(`listening on ${url}\n`);
    expect(warnings(server.output().stderr)).toEqual([]);
    const local = `http://127.0.0.1:${new URL(url).port}`;
    expect((await fetch(`${local}/v2/cache`, { method: 'DELETE' })).status).toBe(401);
    expect((await fetch(`${local}/v2/cache`, { headers: { authorization: 'Bearer t0ken' } })).status).toBe(200);
  });

  it('--insecure-open-management-api on 0.0.0.0: starts, with a warning naming the flag', async () => {
    const server = serve(['--cache-dir', join(root, 'cache'), '--host', '0.0.0.0', '--insecure-open-management-api']);
    const url = await server.url;
    expect(warnings(server.output().stderr)).toEqual([
      `image-cache: warning: the management API (/v2: delete, prune, queue) has no token and is open to every host that can reach ${url} (--insecure-open-management-api)`,
    ]);
    expect((await fetch(`http://127.0.0.1:${new URL(url).port}/v2/cache`, { method: 'DELETE' })).status).toBe(204);
  });

  it('--metrics-token: /metrics takes it (or --token), /v2 does not', async () => {
    const server = serve(['--cache-dir', join(root, 'cache'), '--token', 'admin', '--metrics-token', 'scraper']);
    const url = await server.url;
    const get = (path: string, token?: string) => fetch(`${url}${path}`, token === undefined ? {} : { headers: { authorization: `Bearer ${token}` } });
    expect((await get('/metrics')).status).toBe(401);
    expect((await get('/metrics', 'scraper')).status).toBe(200);
    expect((await get('/metrics', 'admin')).status).toBe(200);
    expect((await get('/v2/cache', 'scraper')).status).toBe(401);
    expect(server.output().stderr).not.toMatch(/scraper|admin/);
  });

  it('an anonymous client never sees the origin URL or the cache path in an error body', async () => {
    const origin = join(root, 'origin');
    await mkdir(origin);
    const server = serve(['--cache-dir', join(root, 'cache'), '--origin', origin]);
    const url = await server.url;
    const response = await fetch(`${url}/images/not-there`);
    const text = await response.text();
    expect(response.status).toBe(404);
    expect(JSON.parse(text)).toEqual({ statusCode: 404, error: 'Not Found', code: 'CACHE_ORIGIN_ERROR', message: 'the origin does not have image "not-there"' });
    expect(text).not.toContain(root);
  });
});

describe('serve records its settings; stats shows them', () => {
  it('--max-size 450MiB prints as 450 MiB, is recorded beside the cache, and stats uses and names it', async () => {
    const cacheDir = join(root, 'cache');
    // An origin that is never asked (no request is made): its credentials and query must not reach the file.
    const origin = 'http://user:s3cret@127.0.0.1:9/images/{id}?sig=abc';
    const server = serve(['--cache-dir', cacheDir, '--max-size', '450MiB', '--token', 'never-written', '--stall-time', '2h', '--origin', origin]);
    const url = await server.url;
    expect(server.output().stderr).toContain(`serving ${cacheDir} (sqlite, budget 450 MiB) on ${url}`);
    // The startup lines show the origin without its credentials or its query's values.
    expect(server.output().stderr).toContain('origin http://127.0.0.1:9/images/{id}?sig=…');
    expect(server.output().stderr).not.toMatch(/s3cret|sig=abc/);

    const text = await readFile(join(cacheDir, SETTINGS_FILE), 'utf8');
    expect(text).not.toMatch(/never-written|s3cret|sig=abc/);
    const record = JSON.parse(text) as RecordedSettings;
    expect(record).toMatchObject({ writtenBy: 'image-cache serve', url, settings: { maxSize: { value: 450 * 1024 ** 2, source: 'flag' }, token: { value: true }, origin: { value: 'http://127.0.0.1:9/images/{id}?sig=…', source: 'flag' } } });
    // A dot-file: no driver takes it for an image.
    expect((await bin(['--cache-dir', cacheDir, 'list', '--json'], { cwd: root })).stdout.trim()).toBe('[]');

    const stats = await bin(['--cache-dir', cacheDir, 'stats'], { cwd: root });
    expect(stats.code).toBe(0);
    expect(stats.stdout).toMatch(new RegExp(`^budget\\s+450 MiB \\(0% used, invalid/ included; from image-cache serve, as recorded in ${cacheDir}/\\.image-cache-settings\\.json\\)$`, 'm'));
    expect(stats.stdout).toMatch(new RegExp(`^server\\s+image-cache serve pid \\d+ on ${url.replace(/\./g, '\\.')}, started \\S+Z \\(running\\)$`, 'm'));
    expect(stats.stdout).toMatch(/^server runs\s+sqlite driver, stall time 2h, prune off, clean off, management API with a token, origin http:\/\/127\.0\.0\.1:9\/images\/\{id\}\?sig=…$/m);
    // What else the server runs with: its processes and durability, its origin's timeouts and header names (never values).
    expect(record.settings).toMatchObject({
      durability: { value: 'strict', source: 'default' },
      workers: { value: 1 },
      originTimeouts: { value: { headers: 30, idle: 30, total: null, retries: 2 }, source: 'default' },
      originHeaderNames: { value: [], source: 'default' },
      cluster: { value: null },
    });
    expect(stats.stdout).toMatch(/^server with\s+1 worker process, strict durability$/m);
    expect(stats.stdout).toMatch(/^server origin\s+headers within 30s, idle at most 30s, no total limit, 2 retries before the first byte$/m);
    const json = JSON.parse((await bin(['--cache-dir', cacheDir, 'stats', '--json'], { cwd: root })).stdout) as Record<string, unknown>;
    expect(json).toMatchObject({ maxSize: 450 * 1024 ** 2, maxSizeSource: 'serve', server: { running: true, url } });

    // A budget given to stats itself wins, and the server's is still shown.
    const own = await bin(['--cache-dir', cacheDir, '--max-size', '1GiB', 'stats'], { cwd: root });
    expect(own.stdout).toMatch(/^budget\s+1 GiB \(0% used, invalid\/ included; from --max-size\)$/m);
    expect(own.stdout).toMatch(/^server budget\s+450 MiB \(flag\)$/m);

    server.kill();
    await server.exited;
    const after = await bin(['--cache-dir', cacheDir, 'stats'], { cwd: root });
    expect(after.stdout).toMatch(/^server\s+image-cache serve pid \d+ .*\(not running\)$/m);
    expect(after.stdout).toMatch(/^budget\s+450 MiB /m);
  });

  it('serve --demo: stats on the demo directory shows the 512 MiB budget the server enforces (not 10 GiB)', async () => {
    const server = serve(['--demo']);
    await server.url;
    const stats = await bin(['--cache-dir', join(root, '.image-cache-demo'), 'stats', '--json'], { cwd: root });
    const json = JSON.parse(stats.stdout) as { maxSize: number; maxSizeSource: string; server: { settings: RecordedSettings['settings'] } };
    expect([json.maxSize, json.maxSizeSource]).toEqual([512 * 1024 ** 2, 'serve']);
    expect(json.server.settings.maxSize).toEqual({ value: 512 * 1024 ** 2, source: 'demo' });
  });

  it("prune without --max-size uses the server's recorded budget", async () => {
    const cacheDir = join(root, 'cache');
    const server = serve(['--cache-dir', cacheDir, '--max-size', '1500']);
    await server.url;
    server.kill();
    await server.exited;
    await withCache('sqlite', cacheDir, async (cache) => {
      for (const id of ['a', 'b']) await put(cache, id, Buffer.alloc(1000));
    });
    const prune = await bin(['--cache-dir', cacheDir, 'prune'], { cwd: root });
    expect(prune.stdout).toBe('pruned 1 image (1000 B): a; cache 1000 B of 1500 B budget\n');
  });
});

/** Runs the binary as another user (root: uid 65534 via spawn; otherwise as ourselves). */
function binAs(uid: number | undefined, argv: string[]): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [BIN, ...argv],
      { cwd: root, env: { PATH: process.env['PATH'] ?? '' }, ...(uid === undefined ? {} : { uid, gid: uid }) },
      (error, stdout, stderr) => resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1, stdout, stderr }),
    );
  });
}

describe('permission problems are named as such, with the fix', () => {
  // As root every file is writable: the binary then runs as `nobody` (uid 65534) on root's directory.
  const asRoot = process.getuid?.() === 0;
  const other = asRoot ? 65534 : undefined;

  function expectPermissionAdvice(message: string, directory: string): void {
    expect(message).toMatch(/This is a permissions problem, not damage \(nothing needs to be moved or rebuilt\)/);
    expect(message).toContain(`\`chown -R ${other ?? process.getuid?.()} ${directory}\``);
    expect(message).toContain(`\`chmod -R u+rwX ${directory}\``);
    expect(message).toMatch(/run image-cache as the directory's owner/);
    expect(message).not.toMatch(/aside|clean\(\)|Check the database file/);
  }

  it('a cache directory the user cannot write', async () => {
    const cacheDir = join(root, 'cache');
    expect((await bin(['--cache-dir', cacheDir, 'queue', 'a'], { cwd: root })).code).toBe(0);
    await chmod(root, 0o755);
    if (!asRoot) await chmod(cacheDir, 0o555);
    try {
      const result = await binAs(other, ['--cache-dir', cacheDir, 'stats']);
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/^image-cache: .*cannot use cache directory .* \[CACHE_BAD_DRIVER_CONFIGURATION\]\n$/);
      expectPermissionAdvice(result.stderr, cacheDir);
    } finally {
      await chmod(cacheDir, 0o755);
    }
  });

  it('a cache.db the user cannot write ("attempt to write a readonly database")', async () => {
    const cacheDir = join(root, 'cache');
    const origin = join(root, 'origin');
    await mkdir(origin);
    await writeFile(join(origin, 'img'), 'image bytes');
    expect((await bin(['--cache-dir', cacheDir, 'queue', 'other'], { cwd: root })).code).toBe(0);
    await chmod(root, 0o755);
    await chmod(origin, 0o755);
    await chmod(join(origin, 'img'), 0o644);
    for (const dir of [cacheDir, ...['incomplete', 'invalid', 'queue'].map((sub) => join(cacheDir, sub))]) await chmod(dir, 0o777);
    for (const name of await readdir(cacheDir)) if (name.startsWith('cache.db')) await chmod(join(cacheDir, name), 0o444);
    const result = await binAs(other, ['--cache-dir', cacheDir, 'prefetch', '--origin', origin, 'img']);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/record commit failed on .*cache\.db: attempt to write a readonly database\. This is a permissions problem/);
    expectPermissionAdvice(result.stderr, cacheDir);
  });
});

describe('usable from a clone', () => {
  function pnpm(args: string[], env: Record<string, string> = {}): Promise<RunResult> {
    return new Promise((resolve) => {
      execFile('pnpm', args, { cwd: REPO, env: { PATH: process.env['PATH'] ?? '', HOME: process.env['HOME'] ?? root, ...env } }, (error, stdout, stderr) =>
        resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1, stdout, stderr }),
      );
    });
  }

  it('`pnpm image-cache …` and `pnpm exec image-cache …` work from the repository root, stdout clean for --json', async () => {
    const cacheDir = join(root, 'cache');
    const queued = await pnpm(['image-cache', '--cache-dir', cacheDir, 'queue', 'from-root']);
    expect(queued).toMatchObject({ code: 0, stdout: 'queued from-root\n' });
    const stats = await pnpm(['image-cache', '--cache-dir', cacheDir, 'stats', '--json']);
    expect(stats.code).toBe(0);
    expect(JSON.parse(stats.stdout)).toMatchObject({ cacheDir, queued: 1 });
    const exec = await pnpm(['exec', 'image-cache', '--cache-dir', cacheDir, 'stats', '--json']);
    expect(JSON.parse(exec.stdout)).toMatchObject({ queued: 1 });
    // Exit codes come through.
    expect((await pnpm(['image-cache', '--cache-dir', join(root, 'absent'), 'list'])).code).toBe(1);
  }, 60_000);

  it('before the first build, the binary says to run `pnpm build` (not a module-resolution stack)', async () => {
    const unbuilt = join(root, 'unbuilt', 'bin');
    await mkdir(unbuilt, { recursive: true });
    await copyFile(BIN, join(unbuilt, 'image-cache.js'));
    const result = await new Promise<RunResult>((resolve) => {
      execFile(process.execPath, [join(unbuilt, 'image-cache.js'), '--version'], (error, stdout, stderr) =>
        resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1, stdout, stderr }),
      );
    });
    expect(result).toEqual({
      code: 2,
      stdout: '',
      stderr: 'image-cache: the CLI (or a package it uses) is not built yet: run `pnpm build` at the root of the repository first [CLI_NOT_BUILT]\n',
    });
  });
});
