import http from 'node:http';
// The hit path without a metadata round trip (issue 12): entries remembered by file identity are
// checked against the opened file, so a deleted or replaced file is never described or served from
// memory; hits are counted in memory and written to the driver in batches, and on close().
import { createHash } from 'node:crypto';
import { readdir, readlink, rename, truncate, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createCacheServer } from '../src/index.js';
import { imageBytes, openCache, scrape, startHarness, waitFor, type Harness } from './helpers.js';

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/** A GET whose response is paused as soon as its headers are in: the body stays unread (in the socket buffers, then the server's) until the caller reads it. */
function pausedGet(url: string, options: http.RequestOptions): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    http
      .get(url, options, (response) => {
        response.pause();
        resolve(response);
      })
      .once('error', reject);
  });
}

async function get(url: string, headers: Record<string, string> = {}) {
  const response = await fetch(url, { headers });
  return { status: response.status, headers: response.headers, body: Buffer.from(await response.arrayBuffer()) };
}

describe('hits from remembered entries', () => {
  let h: Harness;
  beforeEach(async () => {
    h = await startHarness();
  });
  afterEach(() => h.close());

  it('a file replaced behind the server (another process re-cached the id) is served with its own bytes and ETag, never the remembered ones', async () => {
    const first = imageBytes('first', 70_000);
    await h.cache.cacheImage('img', Readable.from([first]), { checksum: { algorithm: 'sha256', digest: sha256(first) } });
    for (let i = 0; i < 2; i++) {
      const hit = await get(`${h.url}/images/img`);
      expect(hit.status).toBe(200);
      expect(hit.headers.get('etag')).toBe(`"sha256:${sha256(first)}"`);
      expect(hit.body.equals(first)).toBe(true);
    }
    // Same size, other bytes, a new file renamed over the old one (what a commit in another process does).
    const second = imageBytes('second', 70_000);
    await h.cache.deleteCachedImage('img');
    await h.cache.cacheImage('img', Readable.from([second]), { checksum: { algorithm: 'sha256', digest: sha256(second) } });
    const after = await get(`${h.url}/images/img`);
    expect(after.status).toBe(200);
    expect(after.headers.get('etag')).toBe(`"sha256:${sha256(second)}"`);
    expect(after.body.equals(second)).toBe(true);
    // A range and a conditional request on the new file.
    const range = await get(`${h.url}/images/img`, { range: 'bytes=10-19' });
    expect(range.status).toBe(206);
    expect(range.body.equals(second.subarray(10, 20))).toBe(true);
    expect((await get(`${h.url}/images/img`, { 'if-none-match': `"sha256:${sha256(first)}"` })).status).toBe(200);
    expect((await get(`${h.url}/images/img`, { 'if-none-match': `"sha256:${sha256(second)}"` })).status).toBe(304);
  });

  it('a file rewritten in place, or deleted, behind the server: new bytes under a new validator, or a miss', async () => {
    const data = imageBytes('plain', 5000);
    await h.cache.cacheImage('plain', Readable.from([data]));
    const before = await get(`${h.url}/images/plain`);
    expect(before.body.equals(data)).toBe(true);
    const weak = before.headers.get('etag');
    expect(weak).toMatch(/^W\//);
    // Another file under the name, written and renamed without the driver (no digest): a new identity, a new weak ETag.
    const other = imageBytes('other', 6000);
    await writeFile(join(h.cacheDir, 'tmp-other'), other);
    await rename(join(h.cacheDir, 'tmp-other'), join(h.cacheDir, 'plain'));
    const replaced = await get(`${h.url}/images/plain`);
    expect(replaced.status).toBe(200);
    expect(replaced.body.equals(other)).toBe(true);
    expect(replaced.headers.get('content-length')).toBe('6000');
    expect(replaced.headers.get('etag')).not.toBe(weak);

    await unlink(join(h.cacheDir, 'plain'));
    h.origin.images.set('plain', { kind: 'ok', data });
    const miss = await get(`${h.url}/images/plain`);
    expect(miss.status).toBe(200);
    expect(miss.headers.get('x-cache')).toBe('MISS');
    expect(miss.body.equals(data)).toBe(true);
  });

  it('hits are written to the driver in batches: every whole read counts once, a range short of the end none', async () => {
    const data = imageBytes('counted', 100_000);
    await h.cache.cacheImage('counted', Readable.from([data]));
    for (let i = 0; i < 5; i++) expect((await get(`${h.url}/images/counted`)).body.equals(data)).toBe(true);
    expect((await get(`${h.url}/images/counted`, { range: 'bytes=0-99' })).status).toBe(206);
    expect((await get(`${h.url}/images/counted`, { range: 'bytes=99000-' })).status).toBe(206);
    await waitFor(async () => (await h.cache.getHitCount('counted')) === 6, 30_000, '6 hits recorded');
  });

  it('concurrent hits of different entries of up to one read chunk each get their own bytes (pooled read buffers are reused only after a response is done)', async () => {
    const ids = ['pool-a', 'pool-b', 'pool-c'];
    const data = ids.map((id, i) => imageBytes(id, 1024 * 1024 - i * 100_000));
    for (const [i, id] of ids.entries()) await h.cache.cacheImage(id, Readable.from([data[i] as Buffer]));
    // Every client holds its body unread until all have their headers: the server's writes of the first ones are still
    // pending (the socket buffers are full) while it serves the later ones, so a buffer reused too early shows.
    for (let round = 0; round < 3; round++) {
      const agent = new http.Agent({ keepAlive: false, maxSockets: 64 });
      try {
        const responses = await Promise.all(
          Array.from({ length: 24 }, (_, n) => pausedGet(`${h.url}/images/${ids[n % ids.length]}`, { agent })),
        );
        for (const [n, response] of responses.entries()) {
          expect(response.statusCode).toBe(200);
          const chunks: Buffer[] = [];
          for await (const chunk of response) chunks.push(chunk as Buffer);
          expect(Buffer.concat(chunks).equals(data[n % ids.length] as Buffer), `round ${round}, request ${n}`).toBe(true);
        }
      } finally {
        agent.destroy();
      }
    }
  });

  it('concurrent streamed hits (bodies of several read chunks) get their own bytes: a chunk goes back to the pool only once the socket has written it', async () => {
    const ids = ['stream-a', 'stream-b', 'stream-c'];
    const data = ids.map((id, i) => imageBytes(id, 8 * 1024 * 1024 + 12_345 * (i + 1)));
    for (const [i, id] of ids.entries()) await h.cache.cacheImage(id, Readable.from([data[i] as Buffer]));
    // As above: every client holds its body unread until all have their headers, so each response has a chunk the
    // socket has not finished writing while the other responses read theirs; a chunk released early is overwritten.
    for (let round = 0; round < 2; round++) {
      const agent = new http.Agent({ keepAlive: round === 1, maxSockets: 64 });
      try {
        const responses = await Promise.all(
          Array.from({ length: 18 }, (_, n) =>
            pausedGet(`${h.url}/images/${ids[n % ids.length]}`, { agent, headers: n % 4 === 3 ? { range: `bytes=${1000 + n}-` } : undefined }),
          ),
        );
        for (const [n, response] of responses.entries()) {
          const whole = data[n % ids.length] as Buffer;
          const expected = n % 4 === 3 ? whole.subarray(1000 + n) : whole;
          expect(response.statusCode).toBe(n % 4 === 3 ? 206 : 200);
          expect(response.headers['content-length']).toBe(String(expected.length));
          const chunks: Buffer[] = [];
          for await (const chunk of response) chunks.push(chunk as Buffer);
          expect(Buffer.concat(chunks).equals(expected), `round ${round}, request ${n}`).toBe(true);
        }
      } finally {
        agent.destroy();
      }
    }
    // Each whole read and each range to the end is one hit.
    for (const id of ids) await waitFor(async () => (await h.cache.getHitCount(id)) === 12, 30_000, `12 hits of ${id} recorded`);
  });

  it('a streamed hit whose file is cut short under the server ends with a body visibly short of its Content-Length, counted as an error', async () => {
    // Larger than what the socket buffers of a paused client hold, so the server is still reading when the file is cut.
    const size = 32 * 1024 * 1024;
    const data = imageBytes('cut', size);
    await h.cache.cacheImage('cut', Readable.from([data]));
    const errorsBefore = [...(await scrape(h.url)).entries()].filter(([name]) => name.startsWith('image_cache_errors_total')).reduce((sum, [, v]) => sum + v, 0);
    const response = await pausedGet(`${h.url}/images/cut`, { agent: false });
    expect(response.statusCode).toBe(200);
    expect(response.headers['content-length']).toBe(String(size));
    // The same file (same inode) cut to 20 MiB while the server is still sending it: the read ends early.
    await truncate(join(h.cacheDir, 'cut'), 20 * 1024 * 1024);
    let received = 0;
    const outcome = await new Promise<string>((resolve) => {
      response.on('data', (chunk: Buffer) => {
        received += chunk.length;
      });
      response.once('end', () => resolve('end'));
      response.once('error', (error) => resolve(`error: ${error.message}`));
      response.once('aborted', () => resolve('aborted'));
      response.resume();
    });
    expect(outcome).not.toBe('end');
    expect(received).toBeLessThan(size);
    await waitFor(
      async () =>
        [...(await scrape(h.url)).entries()].filter(([name]) => name.startsWith('image_cache_errors_total')).reduce((sum, [, v]) => sum + v, 0) > errorsBefore,
      10_000,
      'the cut response counted as an error',
    );
  });

  it('a client that leaves in the middle of a streamed hit closes the read: no descriptor of the file stays open', async () => {
    const data = imageBytes('left', 32 * 1024 * 1024);
    await h.cache.cacheImage('left', Readable.from([data]));
    const path = join(h.cacheDir, 'left');
    const openOnFile = async () => {
      let count = 0;
      for (const fd of await readdir('/proc/self/fd')) {
        const target = await readlink(`/proc/self/fd/${fd}`).catch(() => '');
        if (target === path) count++;
      }
      return count;
    };
    for (let i = 0; i < 4; i++) {
      await new Promise<void>((resolve, reject) => {
        const request = http.get(`${h.url}/images/left`, { agent: false }, (response) => {
          response.once('data', () => {
            // One chunk in: the server has the file open and more to send.
            request.destroy();
            resolve();
          });
        });
        request.once('error', (error) => {
          if (!request.destroyed) reject(error);
        });
      });
    }
    await waitFor(async () => (await openOnFile()) === 0, 10_000, 'every read of the file closed');
    // The server still serves it whole, and the abandoned reads counted no hit.
    expect((await get(`${h.url}/images/left`)).body.equals(data)).toBe(true);
    await waitFor(async () => (await h.cache.getHitCount('left')) === 1, 30_000, '1 hit recorded');
  });

  it('entries of up to one read chunk go out whole: bytes, lengths, ranges, HEAD, 304, hits and served bytes as for a streamed one', async () => {
    // 64 KiB is the largest entry core reads at open; above it, a body of up to one read chunk (1 MiB) is taken
    // whole from its one read (a pooled buffer, reused by the next such read), and one byte more streams.
    const sizes = { tiny: 1, small: 4096, edge: 64 * 1024, above: 64 * 1024 + 1, chunk: 1024 * 1024, streamed: 1024 * 1024 + 1 };
    const data = Object.fromEntries(Object.entries(sizes).map(([id, size]) => [id, imageBytes(id, size)])) as Record<keyof typeof sizes, Buffer>;
    for (const [id, bytes] of Object.entries(data)) await h.cache.cacheImage(id, Readable.from([bytes]));
    const before = (await scrape(h.url)).get('image_cache_served_bytes_total{source="cache"}') ?? 0;
    let served = 0;
    for (const [id, bytes] of Object.entries(data)) {
      for (let i = 0; i < 3; i++) {
        const hit = await get(`${h.url}/images/${id}`);
        expect(hit.status).toBe(200);
        expect(hit.headers.get('x-cache')).toBe('HIT');
        expect(hit.headers.get('content-length')).toBe(String(bytes.length));
        expect(hit.headers.get('accept-ranges')).toBe('bytes');
        expect(hit.headers.get('content-type')).toBe('application/octet-stream');
        expect(hit.headers.get('last-modified')).not.toBeNull();
        expect(hit.body.equals(bytes)).toBe(true);
        served += bytes.length;
      }
      const etag = (await fetch(`${h.url}/images/${id}`, { method: 'HEAD' })).headers.get('etag') as string;
      expect((await get(`${h.url}/images/${id}`, { 'if-none-match': etag })).status).toBe(304);
      // A tail range reaches the last byte (one hit); a head range stops short of it (none); a range past the end is 416.
      const tail = await get(`${h.url}/images/${id}`, { range: `bytes=-1` });
      expect(tail.status).toBe(206);
      expect(tail.headers.get('content-range')).toBe(`bytes ${bytes.length - 1}-${bytes.length - 1}/${bytes.length}`);
      expect(tail.body.equals(bytes.subarray(bytes.length - 1))).toBe(true);
      served += 1;
      if (bytes.length > 1) {
        const head = await get(`${h.url}/images/${id}`, { range: 'bytes=0-0' });
        expect(head.status).toBe(206);
        expect(head.body.equals(bytes.subarray(0, 1))).toBe(true);
        served += 1;
      }
      expect((await get(`${h.url}/images/${id}`, { range: `bytes=${bytes.length}-` })).status).toBe(416);
    }
    for (const id of Object.keys(data)) {
      await waitFor(async () => (await h.cache.getHitCount(id)) === 4, 30_000, `4 hits of ${id} recorded`);
    }
    expect(((await scrape(h.url)).get('image_cache_served_bytes_total{source="cache"}') ?? 0) - before).toBe(served);
  });
});

it('close() writes the hits still counted in memory', async () => {
  const { cache, cleanup } = await openCache();
  try {
    const data = imageBytes('on-close', 4096);
    await cache.cacheImage('on-close', Readable.from([data]));
    const server = await createCacheServer({ cache, pruneInterval: 0, cleanInterval: 0, prefetchInterval: 0 });
    const url = await server.listen();
    for (let i = 0; i < 3; i++) expect((await get(`${url}/images/on-close`)).status).toBe(200);
    await server.close(); // the cache stays open (closeCache is false)
    expect(await cache.getHitCount('on-close')).toBe(3);
  } finally {
    await cleanup();
  }
});
