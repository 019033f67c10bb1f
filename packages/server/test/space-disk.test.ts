/**
 * ENOSPC behind the server (issue 14, ADR 0006), on a 64 MiB tmpfs mounted
 * for the test (root only; otherwise skipped with the reason): an ENOSPC the
 * space policy absorbs (evicts, and the write goes on) leaves /readyz ready;
 * one it cannot absorb (the write rolls back) makes it `disk_full`.
 */
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { mkdir, statfs } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { ImageCache, MemoryDriver } from '@cache/core';
import { createOrigin } from '@cache/origin';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { createCacheServer, METRIC_NAMES, type CacheServer } from '../src/index.js';
import { imageBytes, rawRequest, scrape, TestOrigin } from './helpers.js';

const MiB = 1024 * 1024;

function mountTmpfs(): { root: string; mount: string } | string {
  if (process.getuid?.() !== 0) return 'not root: mounting a small tmpfs needs root';
  const root = mkdtempSync(join(tmpdir(), 'server-space-disk-'));
  const mount = join(root, 'tmpfs');
  try {
    execFileSync('mkdir', [mount]);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', mount], { stdio: ['ignore', 'pipe', 'pipe'] });
    return { root, mount };
  } catch (error) {
    rmSync(root, { recursive: true, force: true });
    return `mount -t tmpfs failed: ${(error as { stderr?: Buffer }).stderr?.toString().trim() || (error as Error).message}`;
  }
}

const mounted = mountTmpfs();
const skip = typeof mounted === 'string' ? mounted : undefined;
const suffix = skip === undefined ? '' : ` [skipped: ${skip}]`;

afterAll(() => {
  if (typeof mounted === 'string') return;
  try {
    execFileSync('umount', [mounted.mount]);
  } catch {
    execFileSync('umount', ['-l', mounted.mount]);
  }
  rmSync(mounted.root, { recursive: true, force: true });
});

async function freeBytes(dir: string): Promise<number> {
  const info = await statfs(dir);
  return info.bavail * info.bsize;
}

function content(id: string, size: number): Buffer {
  return imageBytes(id, size);
}

async function* chunked(data: Buffer): AsyncGenerator<Buffer> {
  for (let i = 0; i < data.length; i += 256 * 1024) yield data.subarray(i, i + 256 * 1024);
}

describe('ENOSPC and readiness', () => {
  let origin: TestOrigin | undefined;
  let server: CacheServer | undefined;
  let cache: ImageCache | undefined;
  afterEach(async () => {
    await server?.close();
    await origin?.close();
    await cache?.close();
  });

  it.skipIf(skip !== undefined)(`an ENOSPC the policy absorbs keeps /readyz ready; one that fails the write makes it disk_full${suffix}`, async () => {
    const base = (mounted as { mount: string }).mount;
    const cacheDir = join(base, 'cache');
    await mkdir(cacheDir);
    cache = await ImageCache.open({ driver: new MemoryDriver({ cacheDir }), maxSize: 1024 * MiB, writeBudget: true });
    origin = await TestOrigin.start();
    server = await createCacheServer({ cache, origin: createOrigin(origin.template), pruneInterval: 0, cleanInterval: 0, prefetchInterval: 0 });
    const url = await server.listen();
    for (const id of ['old-1', 'old-2', 'old-3']) expect(await cache.cacheImage(id, Readable.from(chunked(content(id, 8 * MiB))))).toBe(true);
    // Another process leaves 6 MiB free; the miss needs 16 MiB: two entries must go, and the write goes on.
    await promisify(execFile)('fallocate', ['-l', String((await freeBytes(base)) - 6 * MiB), join(base, 'filler-1')]);
    const fits = content('fits', 16 * MiB);
    origin.images.set('fits', { kind: 'ok', data: fits });
    const response = await rawRequest(`${url}/images/fits`);
    expect(response.status).toBe(200);
    expect(response.body.equals(fits)).toBe(true);
    expect(await cache.isCached('fits')).toBe(true);
    let m = await scrape(url);
    expect(m.get(`${METRIC_NAMES.noSpace}{retried="true"}`), 'the disk was full, and the policy made room').toBeGreaterThan(0);
    expect(m.get(`${METRIC_NAMES.noSpace}{retried="false"}`) ?? 0).toBe(0);
    const ready = await rawRequest(`${url}/readyz`);
    expect(ready.status, ready.body.toString()).toBe(200);

    // Now nearly nothing is free and a miss larger than all that can be evicted: the write fails with ENOSPC.
    await promisify(execFile)('fallocate', ['-l', String((await freeBytes(base)) - MiB), join(base, 'filler-2')]);
    const huge = content('huge', 40 * MiB);
    origin.images.set('huge', { kind: 'ok', data: huge });
    const cut = await rawRequest(`${url}/images/huge`);
    expect(cut.complete && cut.body.equals(huge), 'the response cannot be whole').toBe(false);
    expect(await cache.isCached('huge')).toBe(false);
    m = await scrape(url);
    expect(m.get(`${METRIC_NAMES.noSpace}{retried="false"}`)).toBeGreaterThan(0);
    const degraded = await rawRequest(`${url}/readyz`);
    expect(degraded.status).toBe(503);
    expect(JSON.parse(degraded.body.toString())).toMatchObject({ status: 'degraded', reasons: [expect.objectContaining({ reason: 'disk_full' })] });
  });
});
