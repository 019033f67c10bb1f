// Origin options (issue 11): --origin-header, --origin-token, --manifest, --allow-unverified and
// serve --readiness-window, through the configuration and through the real binary against real origins.
import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { createServer, request as httpRequest, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { resolveConfig, type ConfigFlags } from '../src/index.js';
import { originOptions } from '../src/origin-options.js';
import { bin, cli, startServe, tempDir, tree, type ServeProcess } from './helpers.js';

/** The secret every test origin wants; no output of the CLI may contain it. */
const SECRET = 'hunter2-s3cret';
const sha256 = (data: Buffer | string) => createHash('sha256').update(data).digest('hex');
/** Deterministic, distinct bytes per id (about 200 KiB). */
const body = (id: string) => Buffer.alloc(200 * 1024 + id.length, `${id}:`);

/**
 * A real HTTP origin on 127.0.0.1 that, when {@link token} is set, answers 401 to any request
 * without `X-Auth-Token: <token>`. `/images/close-*` are close-delimited (no Content-Length, not
 * chunked, no digest: nothing can verify them), other `/images/<id>` have a Content-Length;
 * `/SHA256SUMS` serves {@link manifest}. Counts requests per path and keeps their headers.
 */
class AuthOrigin {
  token: string | undefined = SECRET;
  manifest = '';
  readonly requests = new Map<string, number>();
  readonly headers: IncomingHttpHeaders[] = [];
  readonly #server: Server = createServer((req, res) => {
    const path = req.url ?? '';
    this.requests.set(path, this.count(path) + 1);
    this.headers.push(req.headers);
    if (this.token !== undefined && req.headers['x-auth-token'] !== this.token) {
      res.writeHead(401, { 'content-type': 'text/plain' }).end('no valid X-Auth-Token');
      return;
    }
    if (path === '/SHA256SUMS') {
      res.writeHead(200, { 'content-length': Buffer.byteLength(this.manifest) }).end(this.manifest);
      return;
    }
    const id = /^\/images\/([^/]+)$/.exec(path)?.[1];
    if (id === undefined) {
      res.writeHead(404).end();
      return;
    }
    if (id.startsWith('close-')) {
      res.socket?.end(Buffer.concat([Buffer.from('HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n'), body(id)]));
      return;
    }
    res.writeHead(200, { 'content-length': body(id).length }).end(body(id));
  });
  url = '';

  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
  }

  get template(): string {
    return `${this.url}/images/{id}`;
  }

  count(path: string): number {
    return this.requests.get(path) ?? 0;
  }

  reset(): void {
    this.token = SECRET;
    this.manifest = '';
    this.requests.clear();
    this.headers.length = 0;
  }

  async stop(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise((resolve) => this.#server.close(resolve));
  }
}

/** A GET with node:http, which tells a cut body (`complete: false`) from a whole one. */
function get(url: string): Promise<{ status: number; headers: IncomingHttpHeaders; body: Buffer; complete: boolean }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { headers: { connection: 'close' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      const done = () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), complete: res.complete });
      res.on('end', done);
      res.on('error', done);
      res.on('aborted', done);
    });
    req.on('error', reject);
    req.end();
  });
}

const origin = new AuthOrigin();
beforeAll(() => origin.start());
afterAll(() => origin.stop());

let root: string;
let cleanup: () => Promise<void>;
const servers: ServeProcess[] = [];

beforeEach(async () => {
  ({ dir: root, cleanup } = await tempDir('origin-options'));
  origin.reset();
});
afterEach(async () => {
  for (const server of servers.splice(0)) {
    server.kill();
    await server.exited;
  }
  await cleanup();
});

/** `image-cache --cache-dir <root>/cache serve --port 0 <args>`, killed after the test. */
function serve(args: string[], env: Record<string, string> = {}): ServeProcess {
  const server = startServe(['--cache-dir', join(root, 'cache'), 'serve', '--port', '0', '--prefetch-interval', '0', ...args], { cwd: root, env });
  servers.push(server);
  return server;
}

describe('origin options in the configuration', () => {
  const resolve = (flags: ConfigFlags, env: Record<string, string> = {}) => resolveConfig({ flags: { cacheDir: 'c', ...flags }, env, cwd: root });

  it('takes the headers from --origin-header, IMAGE_CACHE_ORIGIN_HEADERS (lines or a JSON object) or the config file (object or list); the first source gives all of them', async () => {
    const fromFlags = await resolve({ originHeader: ['X-Auth-Token: abc', 'Authorization:  Bearer x y  '] }, { IMAGE_CACHE_ORIGIN_HEADERS: 'X-Env: 1' });
    expect(fromFlags.originHeaders).toEqual({ 'X-Auth-Token': 'abc', Authorization: 'Bearer x y' });
    expect(fromFlags.sources.originHeaders).toBe('flag');

    expect((await resolve({}, { IMAGE_CACHE_ORIGIN_HEADERS: 'X-Auth-Token: abc\r\n\nX-Other: a:b:c\n' })).originHeaders).toEqual({ 'X-Auth-Token': 'abc', 'X-Other': 'a:b:c' });
    expect((await resolve({}, { IMAGE_CACHE_ORIGIN_HEADERS: ' {"X-Auth-Token": "abc", "X-Other": "d"}' })).originHeaders).toEqual({ 'X-Auth-Token': 'abc', 'X-Other': 'd' });

    await writeFile(join(root, 'image-cache.config.json'), JSON.stringify({ originHeaders: { 'X-Auth-Token': 'file' }, originToken: 'tok', manifest: 'sums/SHA256SUMS' }));
    const fromFile = await resolve({});
    expect(fromFile).toMatchObject({ originHeaders: { 'X-Auth-Token': 'file' }, originToken: 'tok', manifest: join(root, 'sums', 'SHA256SUMS'), allowUnverified: false });
    expect((await resolve({}, { IMAGE_CACHE_ORIGIN_HEADERS: 'X-Env: 1' })).originHeaders).toEqual({ 'X-Env': '1' }); // not merged with the file's
    await writeFile(join(root, 'image-cache.config.json'), JSON.stringify({ originHeaders: ['X-A: 1', 'X-B: 2'], manifest: 'https://origin.example/SHA256SUMS' }));
    expect(await resolve({})).toMatchObject({ originHeaders: { 'X-A': '1', 'X-B': '2' }, manifest: 'https://origin.example/SHA256SUMS' });

    const defaults = await resolveConfig({ flags: { cacheDir: 'c' }, env: {}, cwd: join(root, '..') });
    expect(defaults).toMatchObject({ originHeaders: {}, originToken: undefined, manifest: undefined, allowUnverified: false, readinessWindow: 30 });
  });

  it('sends the origin token as X-Auth-Token, over an X-Auth-Token among the headers', () => {
    const settings = { originHeaders: { 'x-auth-token': 'old', Accept: '*/*' }, manifest: undefined, allowUnverified: false };
    expect(originOptions({ ...settings, originToken: 'new' })).toEqual({ headers: { Accept: '*/*', 'X-Auth-Token': 'new' } });
    expect(originOptions({ ...settings, originToken: undefined })).toEqual({ headers: { 'x-auth-token': 'old', Accept: '*/*' } });
    expect(originOptions({ originHeaders: {}, originToken: undefined, manifest: '/m', allowUnverified: true })).toEqual({ manifest: '/m', allowUnverified: true });
  });

  it('refuses malformed headers and tokens with CLI_INVALID_HEADER (exit code 2), naming where, never quoting the value', async () => {
    const cases: [ConfigFlags, Record<string, string>, RegExp][] = [
      [{ originHeader: [`X-Auth-Token ${SECRET}`] }, {}, /^invalid --origin-header: expected "Name: value".* but there is no colon/],
      [{ originHeader: ['X-A: 1', `X-Auth-Token=${SECRET}:x`] }, {}, /^invalid --origin-header \(the 2nd\): the header name must be/],
      [{ originHeader: ['X-Auth-Token:   '] }, {}, /^invalid --origin-header: header X-Auth-Token has an empty value/],
      [{ originHeader: ['X-Auth-Token: a', `x-auth-token: ${SECRET}`] }, {}, /header x-auth-token is given twice/],
      [{ originHeader: [`Host: ${SECRET}`] }, {}, /Host is set by the HTTP client itself/],
      [{}, { IMAGE_CACHE_ORIGIN_HEADERS: `X-A: 1\nX-Auth-Token: ${SECRET}\u0000` }, /^invalid IMAGE_CACHE_ORIGIN_HEADERS line 2: the value of header X-Auth-Token has a control character/],
      [{}, { IMAGE_CACHE_ORIGIN_HEADERS: `{"X-Auth-Token": ${SECRET}}` }, /^invalid IMAGE_CACHE_ORIGIN_HEADERS: it starts with "\{" but is not valid JSON/],
      [{}, { IMAGE_CACHE_ORIGIN_HEADERS: `["X-Auth-Token: ${SECRET}"]` }, /^invalid IMAGE_CACHE_ORIGIN_HEADERS: the header name must be/],
      [{ originToken: `${SECRET} with spaces` }, {}, /^invalid --origin-token: a token is visible ASCII characters without spaces/],
      [{ originToken: `${SECRET}\u00e9` }, {}, /^invalid --origin-token:/],
    ];
    for (const [flags, env, message] of cases) {
      const error = await resolve(flags, env).then(
        () => undefined,
        (e: unknown) => e as { code: string; exitCode: number; message: string },
      );
      expect(error, JSON.stringify([flags, env])).toMatchObject({ code: 'CLI_INVALID_HEADER', exitCode: 2 });
      expect(error?.message).toMatch(message);
      expect(error?.message).not.toContain(SECRET);
    }
    await writeFile(join(root, 'bad.json'), JSON.stringify({ originHeaders: { 'X-Auth-Token': 42 } }));
    await expect(resolve({ config: 'bad.json' })).rejects.toThrow(/^invalid originHeaders in .*bad\.json: the value of header X-Auth-Token must be a string, got number/);
    await writeFile(join(root, 'bad.json'), JSON.stringify({ originHeaders: true }));
    await expect(resolve({ config: 'bad.json' })).rejects.toMatchObject({ code: 'CLI_CONFIG' });
    // A config file that is not JSON: V8's message would quote the text around the mistake.
    await writeFile(join(root, 'bad.json'), `{ "originToken": ${SECRET} }`);
    const broken = await resolve({ config: 'bad.json' }).then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(broken).toMatchObject({ code: 'CLI_CONFIG' });
    expect(broken?.message).not.toContain(SECRET);
  });

  it('reads --allow-unverified as a switch, IMAGE_CACHE_ALLOW_UNVERIFIED and the file as true/false words, --readiness-window as a duration', async () => {
    expect((await resolve({ allowUnverified: true })).allowUnverified).toBe(true);
    for (const [word, value] of [['1', true], ['Yes', true], ['on', true], ['false', false], ['0', false], ['off', false]] as const) {
      expect((await resolve({}, { IMAGE_CACHE_ALLOW_UNVERIFIED: word })).allowUnverified, word).toBe(value);
    }
    await writeFile(join(root, 'image-cache.config.json'), JSON.stringify({ allowUnverified: true, readinessWindow: '2m' }));
    expect(await resolve({})).toMatchObject({ allowUnverified: true, readinessWindow: 120 });
    expect((await resolve({ readinessWindow: '500ms' })).readinessWindow).toBe(0.5);
    await expect(resolve({}, { IMAGE_CACHE_ALLOW_UNVERIFIED: 'maybe' })).rejects.toMatchObject({
      code: 'CLI_INVALID_BOOLEAN',
      message: expect.stringMatching(/^invalid IMAGE_CACHE_ALLOW_UNVERIFIED "maybe": use true or false/),
    });
    await expect(resolve({ readinessWindow: 'a while' })).rejects.toMatchObject({ code: 'CLI_INVALID_DURATION' });
  });
});

describe('image-cache serve with origin options (the built binary, a real origin)', () => {
  it('sends every --origin-header to an origin that wants X-Auth-Token, and names the headers in its startup lines without their values', async () => {
    const server = serve(['--origin', origin.template, '--origin-header', `X-Auth-Token: ${SECRET}`, '--origin-header', 'X-Request-Source: image-cache']);
    const url = await server.url;
    const miss = await get(`${url}/images/plain-1`);
    expect(miss).toMatchObject({ status: 200, complete: true });
    expect(miss.headers['x-cache']).toBe('MISS');
    expect(sha256(miss.body)).toBe(sha256(body('plain-1')));
    expect(origin.count('/images/plain-1')).toBe(1);
    expect(origin.headers[0]).toMatchObject({ 'x-auth-token': SECRET, 'x-request-source': 'image-cache' });
    expect((await get(`${url}/images/plain-1`)).headers['x-cache']).toBe('HIT');

    const { stdout, stderr } = server.output();
    expect(stderr).toContain(`image-cache: origin ${origin.template} (headers X-Auth-Token, X-Request-Source (values not shown))`);
    expect(stdout + stderr).not.toContain(SECRET);
  });

  it('with IMAGE_CACHE_ORIGIN_TOKEN the token goes as X-Auth-Token; without any, the origin\'s 401 is a 502, and --readiness-window 0 lets /readyz recover at once', async () => {
    const withToken = serve(['--origin', origin.template], { IMAGE_CACHE_ORIGIN_TOKEN: SECRET });
    const missWithToken = await get(`${await withToken.url}/images/plain-2`);
    expect(missWithToken).toMatchObject({ status: 200, complete: true });
    expect(sha256(missWithToken.body)).toBe(sha256(body('plain-2')));
    expect(withToken.output().stderr).toContain('(headers X-Auth-Token (values not shown))');

    const without = serve(['--origin', origin.template, '--readiness-window', '0', '--cache-dir', join(root, 'other-cache')]);
    const url = await without.url;
    const refused = await get(`${url}/images/plain-3`);
    expect(refused.status).toBe(502);
    expect(JSON.parse(refused.body.toString())).toMatchObject({ code: 'CACHE_ORIGIN_ERROR', message: expect.stringContaining('answered 401') });
    expect(origin.count('/images/plain-3')).toBe(1);
    // With the default window (30 s) /readyz would stay 503 after that origin failure; with 0 it is ready again.
    // The time limit only guards against a condition that never comes (it is below the default window).
    const deadline = Date.now() + 20_000;
    let ready = await get(`${url}/readyz`);
    while (ready.status !== 200 && Date.now() < deadline) ready = await get(`${url}/readyz`);
    expect(ready.status).toBe(200);
    expect(without.output().stdout + without.output().stderr).not.toContain(SECRET);
  });

  it('a malformed --origin-header is a usage error: exit 2, one line, the value not shown, nothing created, nothing listening', async () => {
    const result = await bin(['--cache-dir', join(root, 'cache'), 'serve', '--port', '0', '--origin', origin.template, '--origin-header', `X-Auth-Token ${SECRET}`], { cwd: root });
    expect(result.code).toBe(2);
    expect(result.stdout).toBe('');
    expect(result.stderr).toMatch(/^image-cache: invalid --origin-header: expected "Name: value", .* \[CLI_INVALID_HEADER\]\n$/);
    expect(result.stderr).not.toContain(SECRET);
    expect(await tree(root)).toEqual([]);
    expect(origin.requests.size).toBe(0);

    const fromEnv = await bin(['--cache-dir', join(root, 'cache'), 'prefetch', 'plain-4', '--origin', origin.template], {
      cwd: root,
      env: { IMAGE_CACHE_ORIGIN_HEADERS: `X-Auth-Token: ${SECRET}\nbroken line ${SECRET}` },
    });
    expect(fromEnv.code).toBe(2);
    expect(fromEnv.stderr).toMatch(/^image-cache: invalid IMAGE_CACHE_ORIGIN_HEADERS line 2: expected "Name: value".* \[CLI_INVALID_HEADER\]\n$/);
    expect(fromEnv.stderr).not.toContain(SECRET);
    expect(await tree(root)).toEqual([]);
    expect(origin.requests.size).toBe(0);
  });

  it('--manifest (an http URL, fetched with the headers): a close-delimited miss whose manifest digest matches is cached; one whose digest does not is cut and not cached', async () => {
    origin.manifest = `${sha256(body('close-good'))}  close-good\n${sha256('other bytes')}  close-bad\n`;
    const server = serve(['--origin', origin.template, '--origin-token', SECRET, '--manifest', `${origin.url}/SHA256SUMS`]);
    const url = await server.url;
    expect(server.output().stderr).toContain(`(headers X-Auth-Token (values not shown); manifest ${origin.url}/SHA256SUMS)`);

    const good = await get(`${url}/images/close-good`);
    expect(good).toMatchObject({ status: 200, complete: true });
    expect(sha256(good.body)).toBe(sha256(body('close-good')));
    const hit = await get(`${url}/images/close-good`);
    expect(hit.headers['x-cache']).toBe('HIT');
    expect(hit.headers['etag']).toBe(`"sha256:${sha256(body('close-good'))}"`);
    expect(origin.count('/images/close-good')).toBe(1);

    const bad = await get(`${url}/images/close-bad`);
    expect(bad.complete).toBe(false); // never a whole-looking body that failed verification
    const again = await get(`${url}/images/close-bad`);
    expect(again.headers['x-cache']).toBe('MISS');
    expect(again.complete).toBe(false);
    expect(origin.count('/images/close-bad')).toBe(2);
    expect(origin.count('/SHA256SUMS')).toBe(3); // read at every origin request, with the token
    expect(origin.headers.every((headers) => headers['x-auth-token'] === SECRET)).toBe(true);
    expect(server.output().stdout + server.output().stderr).not.toContain(SECRET);
  });

  it('--allow-unverified: a close-delimited miss without a digest is served either way, and cached only with it', async () => {
    origin.token = undefined;
    const off = serve(['--origin', origin.template]);
    const offUrl = await off.url;
    for (let i = 0; i < 2; i++) {
      const response = await get(`${offUrl}/images/close-1`);
      expect(response).toMatchObject({ status: 200, complete: true });
      expect(response.headers['x-cache']).toBe('MISS'); // not cached: the second request goes to the origin again
      expect(sha256(response.body)).toBe(sha256(body('close-1')));
    }
    expect(origin.count('/images/close-1')).toBe(2);

    const on = serve(['--origin', origin.template, '--allow-unverified', '--cache-dir', join(root, 'cache-on')]);
    const onUrl = await on.url;
    expect(on.output().stderr).toContain('(unverified fills allowed)');
    const miss = await get(`${onUrl}/images/close-2`);
    expect(miss).toMatchObject({ status: 200, complete: true });
    expect(miss.headers['x-cache']).toBe('MISS');
    const hit = await get(`${onUrl}/images/close-2`);
    expect(hit.headers['x-cache']).toBe('HIT');
    expect(sha256(hit.body)).toBe(sha256(body('close-2')));
    expect(origin.count('/images/close-2')).toBe(1);
  });
});

describe('image-cache prefetch with origin options', () => {
  it('the built binary with IMAGE_CACHE_ORIGIN_TOKEN fetches from an origin that wants it; without it the 401 is not retried and the token is never printed', async () => {
    const env = { IMAGE_CACHE_DIR: join(root, 'cache') };
    const ok = await bin(['prefetch', 'plain-5', '--origin', origin.template], { cwd: root, env: { ...env, IMAGE_CACHE_ORIGIN_TOKEN: SECRET } });
    expect(ok).toMatchObject({ code: 0, stdout: expect.stringMatching(/^prefetch: 1 fetched \(200 KiB\), 0 failed of 1/) });
    expect(origin.headers[0]?.['x-auth-token']).toBe(SECRET);

    const refused = await bin(['prefetch', 'plain-6', '--origin', origin.template, '--retry-delay', '10ms', '--json'], { cwd: root, env });
    expect(refused.code).toBe(1);
    expect(JSON.parse(refused.stdout).results[0]).toMatchObject({ imageId: 'plain-6', status: 'failed', attempts: 1, error: { status: 401 } });
    for (const result of [ok, refused]) expect(result.stdout + result.stderr).not.toContain(SECRET);
  });

  it('takes the headers from the config file, verifies against a --manifest file, and caches an unverifiable body only with --allow-unverified', async () => {
    await writeFile(join(root, 'image-cache.config.json'), JSON.stringify({ cacheDir: 'cache', originHeaders: { 'X-Auth-Token': SECRET } }));
    await writeFile(join(root, 'SHA256SUMS'), `${sha256(body('close-m'))}  close-m\n`);
    const run = (...argv: string[]) => cli(['prefetch', '--origin', origin.template, '--retry-delay', '10ms', '--json', ...argv], { cwd: root });
    const statusOf = (result: { stdout: string }) => (JSON.parse(result.stdout).results as { status: string }[]).map((r) => r.status);

    expect(statusOf(await run('close-m', 'close-u'))).toEqual(['failed', 'failed']); // neither can be verified
    expect(statusOf(await run('close-m', '--manifest', 'SHA256SUMS'))).toEqual(['fetched']);
    const info = JSON.parse((await cli(['info', 'close-m', '--json'], { cwd: root })).stdout) as { checksum: string };
    expect(info.checksum).toBe(`sha256:${sha256(body('close-m'))}`);
    expect(statusOf(await run('close-u', '--allow-unverified'))).toEqual(['fetched']);
    expect((await cli(['list', '--json'], { cwd: root })).stdout).toContain('"close-u"');
    expect(origin.headers.every((headers) => headers['x-auth-token'] === SECRET)).toBe(true);
  });

  it('warns that headers and --allow-unverified mean nothing to a directory origin', async () => {
    await writeFile(join(root, 'img'), 'bytes');
    const result = await cli(['--cache-dir', join(root, 'cache'), 'prefetch', 'img', '--origin', root, '--origin-token', SECRET, '--allow-unverified'], { cwd: root });
    expect(result.code).toBe(0);
    expect(result.stderr).toMatch(/^image-cache: warning: origin headers \(--origin-header, --origin-token\) and --allow-unverified have no effect on a directory origin/m);
    expect(result.stderr).not.toContain(SECRET);
  });
});
