// Real HTTP clients (curl, wget -c, aria2c) against a real `image-cache serve` process (the CLI's
// binary) in front of a real origin on 127.0.0.1 that counts its requests per id. Each test uses ids
// of its own on one server; the bytes each client wrote are compared with the origin's.
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect } from 'vitest';
import {
  ClientOrigin,
  establishedConnections,
  Gate,
  itWithTools,
  randomImage,
  runTool,
  sha256,
  startDownload,
  startServe,
  stopAll,
  type OriginImageSpec,
  type ServeProcess,
  type ToolResult,
} from './process-helpers.js';
import { waitFor } from './helpers.js';

const MiB = 1024 * 1024;

let root: string;
let origin: ClientOrigin;
let server: ServeProcess;
/** A fresh directory for each test's downloads. */
let work: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'server-real-clients-'));
  origin = await ClientOrigin.start();
  server = await startServe({ cacheDir: join(root, 'cache'), origin: origin.template });
});
afterAll(async () => {
  await stopAll();
  await origin?.close();
  await rm(root, { recursive: true, force: true });
});
let workCount = 0;
beforeEach(async () => {
  work = join(root, `work-${++workCount}`);
  await mkdir(work);
});

/** Serves `size` random bytes as `id` at the origin; returns them. */
function image(id: string, size: number, spec: Omit<OriginImageSpec, 'data'> = {}): Buffer {
  const data = randomImage(size);
  origin.images.set(id, { data, ...spec });
  return data;
}

/** Caches `id` through the server (a miss read to its end); checks it was one. */
async function cacheThroughServer(id: string, data: Buffer): Promise<void> {
  const miss = await startDownload(`${server.url}/images/${id}`).done;
  expect(miss).toMatchObject({ status: 200, complete: true, bytes: data.length, sha256: sha256(data) });
  expect(miss.headers['x-cache']).toBe('MISS');
}

/** The output of a tool, for assertion messages. */
function said(result: ToolResult): string {
  return `exit ${result.code}\n${result.stdout}\n${result.stderr}`.slice(0, 4000);
}

/** Header `name` (lower case) of the last response in a `curl -D` dump. */
function dumpedHeader(dump: string, name: string): string | undefined {
  const blocks = dump.split(/\r?\n\r?\n/).filter((block) => block.trim() !== '');
  const last = blocks.at(-1) ?? '';
  const line = last.split(/\r?\n/).find((l) => l.toLowerCase().startsWith(`${name}:`));
  return line?.slice(name.length + 1).trim();
}

describe('real HTTP clients against image-cache serve', () => {
  itWithTools(['curl'], 'curl: a miss then a hit of a multi-MiB image get the origin\'s bytes (X-Cache MISS, HIT); curl -r 1000-1999 on the hit is a 206 with those bytes', async () => {
    const id = 'curl-image';
    const data = image(id, 6 * MiB + 123);
    const curl = async (name: string, ...args: string[]) => {
      const out = join(work, name);
      const result = await runTool('curl', ['-q', '-sS', '-o', out, '-D', `${out}.headers`, '-w', '%{http_code}', ...args, `${server.url}/images/${id}`], work);
      expect(result.code, said(result)).toBe(0);
      return { status: result.stdout, body: await readFile(out), headers: await readFile(`${out}.headers`, 'utf8') };
    };

    const miss = await curl('miss');
    expect(miss.status).toBe('200');
    expect(dumpedHeader(miss.headers, 'x-cache')).toBe('MISS');
    expect(sha256(miss.body)).toBe(sha256(data));

    const hit = await curl('hit');
    expect(hit.status).toBe('200');
    expect(dumpedHeader(hit.headers, 'x-cache')).toBe('HIT');
    expect(dumpedHeader(hit.headers, 'content-length')).toBe(String(data.length));
    expect(sha256(hit.body)).toBe(sha256(data));

    const range = await curl('range', '-r', '1000-1999');
    expect(range.status).toBe('206');
    expect(dumpedHeader(range.headers, 'content-range')).toBe(`bytes 1000-1999/${data.length}`);
    expect(range.body.equals(data.subarray(1000, 2000))).toBe(true);
    expect(origin.count(id)).toBe(1);
  });

  itWithTools(['wget'], 'wget -c completes a partly downloaded file of a cached image', async () => {
    const id = 'wget-hit';
    const data = image(id, 5 * MiB + 77);
    await cacheThroughServer(id, data);
    // The first download was cut after 2 MiB + 5 bytes: the file holds them.
    await writeFile(join(work, id), data.subarray(0, 2 * MiB + 5));
    const result = await runTool('wget', ['--no-config', '-nv', '-c', '-P', work, `${server.url}/images/${id}`], work);
    expect(result.code, said(result)).toBe(0);
    expect(sha256(await readFile(join(work, id)))).toBe(sha256(data));
    expect(origin.count(id)).toBe(1);
  });

  itWithTools(['wget'], 'wget -c completes a partly downloaded file of an image that is not cached yet (a Range on a miss)', async () => {
    const id = 'wget-miss';
    const data = image(id, 5 * MiB + 91);
    await writeFile(join(work, id), data.subarray(0, 3 * MiB + 1));
    const result = await runTool('wget', ['--no-config', '-nv', '-c', '-P', work, `${server.url}/images/${id}`], work);
    expect(result.code, said(result)).toBe(0);
    expect(sha256(await readFile(join(work, id)))).toBe(sha256(data));
    expect(origin.count(id)).toBe(1);
  });

  const aria2c = (id: string) =>
    runTool(
      'aria2c',
      [
        '--no-conf',
        '-x8',
        '-s8',
        '-k1M',
        '--allow-overwrite=true',
        '--auto-file-renaming=false',
        '--file-allocation=none',
        '--console-log-level=warn',
        '--summary-interval=0',
        '-d',
        work,
        '-o',
        id,
        `${server.url}/images/${id}`,
      ],
      work,
    );

  itWithTools(['aria2c'], 'aria2c -x8 -s8 -k1M downloads a cached image in parallel ranges: the origin\'s bytes', async () => {
    const id = 'aria2c-hit';
    const data = image(id, 8 * MiB + 4321);
    await cacheThroughServer(id, data);
    const result = await aria2c(id);
    expect(result.code, said(result)).toBe(0);
    expect(sha256(await readFile(join(work, id)))).toBe(sha256(data));
    expect(origin.count(id)).toBe(1);
  });

  itWithTools(['aria2c'], 'aria2c -x8 -s8 -k1M on a miss: the origin\'s bytes, and the cache fetches the image from the origin once', async () => {
    const id = 'aria2c-miss';
    // The origin holds the body after 1 MiB until aria2c has opened its parallel connections (or ended).
    const gate = new Gate();
    const data = image(id, 8 * MiB + 999, { head: MiB, gate });
    const running = aria2c(id);
    let ended = false;
    void running.then(() => (ended = true));
    await origin.whenRequested(id);
    // Only paces the test: aria2c splits once it knows the length; the assertions hold either way.
    await waitFor(async () => ended || (await establishedConnections(server.port)) >= 3, 20_000, 'aria2c opened parallel connections').catch(() => undefined);
    gate.open();
    const result = await running;
    expect(result.code, said(result)).toBe(0);
    expect(sha256(await readFile(join(work, id)))).toBe(sha256(data));
    expect(origin.count(id)).toBeLessThanOrEqual(1);
  });
});
