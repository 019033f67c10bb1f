// Several `image-cache serve` processes (the CLI's binary) on ONE cache directory (sqlite driver),
// in front of one real origin: one origin request per id for all of them (the host's fill lock,
// ADR 0003), and what a SIGKILL of the process that owns a fill leaves behind. The tests
// synchronise with the origin (its requests, a body held at a gate) and the clients' bytes, never
// with sleeps.
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  ClientOrigin,
  Gate,
  isPrefixOf,
  randomImage,
  sha256,
  startDownload,
  startServe,
  stopAll,
  type Download,
  type DownloadResult,
  type ServeProcess,
} from './process-helpers.js';

const MiB = 1024 * 1024;

let root: string;
let cacheDir: string;
let origin: ClientOrigin;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'server-multi-process-'));
  cacheDir = join(root, 'cache');
  origin = await ClientOrigin.start();
});
afterEach(async () => {
  await stopAll();
  await origin.close();
  await rm(root, { recursive: true, force: true });
});

/** The ids `GET /v2/cache` lists as cached, with their sizes. */
async function cachedImages(server: ServeProcess): Promise<[string, number][]> {
  const response = await fetch(`${server.url}/v2/cache`);
  expect(response.status).toBe(200);
  const body = (await response.json()) as { cached_images: { image_id: string; size: number }[] };
  return body.cached_images.map((image) => [image.image_id, image.size]);
}

/** sha256 of a file, or undefined when it does not exist. */
async function fileSha256(path: string): Promise<string | undefined> {
  const data = await readFile(path).catch(() => undefined);
  return data === undefined ? undefined : createHash('sha256').update(data).digest('hex');
}

describe('several image-cache serve processes on one cache directory', () => {
  it('25 clients spread over 3 processes on one uncached image: every client gets the origin\'s bytes, the origin is asked once, the entry is committed', async () => {
    const id = 'shared-image';
    const data = randomImage(6 * MiB + 4097);
    // The origin sends 1 MiB, holds the rest until every client is in, then drip-feeds it (throttled).
    const gate = new Gate();
    origin.images.set(id, { data, head: MiB, gate, bytesPerSecond: 32 * MiB, chunk: 512 * 1024 });
    const servers = await Promise.all([0, 1, 2].map(() => startServe({ cacheDir, origin: origin.template })));
    const url = (i: number) => `${servers[i % servers.length]?.url}/images/${id}`;

    // Client 0 goes to process 0 first: process 0 owns the fill (it asks the origin).
    const clients: Download[] = [startDownload(url(0))];
    await origin.whenRequested(id);
    await clients[0]?.firstBytes;
    for (let i = 1; i < 25; i++) clients.push(startDownload(url(i)));
    // Every client's request is out; the clients of processes 1 and 2 already read the fill's first
    // bytes from the shared file (those of process 0 may be waiting for its fetch: the server ties it to
    // its first client). Only then does the origin send the rest.
    await Promise.all(clients.map((client) => client.sent));
    await Promise.all(clients.filter((_, i) => i % servers.length !== 0).map((client) => client.firstBytes));
    expect(origin.count(id)).toBe(1);
    gate.open();

    const results = await Promise.all(clients.map((client) => client.done));
    results.forEach((result, i) => {
      expect(result, `client ${i} (process ${i % servers.length})`).toMatchObject({ status: 200, complete: true, bytes: data.length, sha256: sha256(data) });
    });
    expect(origin.count(id)).toBe(1);
    expect(origin.requests[0]?.finished).toBe(true);
    for (const server of servers) expect(await cachedImages(server)).toEqual([[id, data.length]]);
    expect(await fileSha256(join(cacheDir, id))).toBe(sha256(data));
    expect(await readdir(join(cacheDir, 'incomplete'))).toEqual([]);
    // And a hit from any of them.
    const hit = await startDownload(url(2)).done;
    expect(hit).toMatchObject({ status: 200, complete: true, sha256: sha256(data) });
    expect(hit.headers['x-cache']).toBe('HIT');
  }, 60_000);

  it('SIGKILL of the process that owns a fill: the survivor\'s clients get the origin\'s bytes or a cut response, never other bytes; the entry is committed right or absent; nothing stays in incomplete/', async () => {
    const id = 'killed-fill';
    const data = randomImage(6 * MiB + 1234);
    // The first origin request (the owner's) sends 2 MiB and then holds; a later one (a takeover) goes through.
    const gate = new Gate();
    origin.images.set(id, { data, head: 2 * MiB, gate, gatedRequests: 1 });

    // A starts first and owns the fill: its client's request is the origin's first for the id.
    const a = await startServe({ cacheDir, origin: origin.template });
    const ownerClient = startDownload(`${a.url}/images/${id}`);
    await origin.whenRequested(id);
    await ownerClient.firstBytes;
    // B starts on the same directory; its clients follow A's fill (no origin request of their own).
    const b = await startServe({ cacheDir, origin: origin.template });
    const followers = [0, 1, 2, 3].map(() => startDownload(`${b.url}/images/${id}`));
    await Promise.all(followers.map((client) => client.firstBytes));
    expect(origin.count(id)).toBe(1);

    a.child.kill('SIGKILL');
    expect(await a.exited).toEqual({ code: null, signal: 'SIGKILL' });
    await origin.requests[0]?.closed; // the owner's origin connection died with it

    const owner: DownloadResult = await ownerClient.done;
    expect(owner.complete).toBe(false);
    expect(isPrefixOf(owner, data)).toBe(true);
    const results = await Promise.all(followers.map((client) => client.done));
    results.forEach((result, i) => {
      if (result.complete) expect(result, `follower ${i}`).toMatchObject({ status: 200, bytes: data.length, sha256: sha256(data) });
      else expect(isPrefixOf(result, data), `follower ${i}: ${result.bytes} bytes, ${result.error ?? ''}`).toBe(true);
    });

    // The survivor has finished: the entry is committed with the origin's bytes, or absent.
    const listed = await cachedImages(b);
    const onDisk = await fileSha256(join(cacheDir, id));
    if (listed.length > 0) {
      expect(listed).toEqual([[id, data.length]]);
      expect(onDisk).toBe(sha256(data));
    } else expect(onDisk).toBeUndefined();
    expect(await readdir(join(cacheDir, 'incomplete'))).toEqual([]);

    // A new request is served right (a hit, or a miss fetched again).
    gate.open();
    const again = await startDownload(`${b.url}/images/${id}`).done;
    expect(again).toMatchObject({ status: 200, complete: true, bytes: data.length, sha256: sha256(data) });
    expect(await readdir(join(cacheDir, 'incomplete'))).toEqual([]);
    expect(b.output().stderr).not.toMatch(/Unhandled|uncaught/i);
  }, 60_000);
});
