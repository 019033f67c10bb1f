// Tests of what is particular to this driver, next to the kit: where its
// records live and how it treats a damaged one. Write yours the same way.
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { META_DIR_NAME, TemplateDriver } from '../src/index.js';

let dir: string;
let driver: TemplateDriver;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'template-driver-'));
  driver = new TemplateDriver({ cacheDir: dir });
  await driver.configure();
});

afterEach(async () => {
  await driver.close();
  await rm(dir, { recursive: true, force: true });
});

async function cache(id: string, bytes: Buffer, checksum?: string): Promise<void> {
  const writer = await driver.openForWrite(id);
  if (checksum !== undefined) writer.setChecksum(checksum);
  await pipeline(Readable.from([bytes]), writer);
}

async function read(id: string): Promise<void> {
  for await (const _ of await driver.openForRead(id)) {
    // drain: the hit is recorded when the read completes
  }
}

describe('TemplateDriver records', () => {
  it('keeps one JSON record per entry at <cacheDir>/.template-meta/<id>, named exactly by the id (255-byte ids too)', async () => {
    const long = 'x'.repeat(255);
    await cache('a', Buffer.from('hello'), 'sha256:abc');
    await cache(long, Buffer.from('world'));
    await read('a');
    const record = JSON.parse(await readFile(join(dir, META_DIR_NAME, 'a'), 'utf8'));
    expect(record).toMatchObject({ hits: 1, checksum: 'sha256:abc' });
    expect(typeof record.identity).toBe('string');
    expect((await readdir(join(dir, META_DIR_NAME))).sort()).toEqual(['a', long]);
    expect((await driver.getCachedImages()).map((i) => i.imageId)).toEqual(['a', long]);
  });

  it('treats a damaged record as none (0 hits, no digest), and clean() rebuilds it', async () => {
    await cache('a', Buffer.from('hello'), 'sha256:abc');
    await read('a');
    await writeFile(join(dir, META_DIR_NAME, 'a'), '{"hits": 1, "lastAcc');
    expect(await driver.getHitCount('a')).toBe(0);
    expect(await driver.getStoredChecksum('a')).toBeUndefined();
    expect(await driver.clean()).toMatchObject({ orphanRecords: 0, adoptedFiles: 1 });
    await read('a');
    expect(await driver.getHitCount('a')).toBe(1);
  });

  it('configure() refuses with BadDriverConfigurationError when .template-meta is not a directory', async () => {
    const other = await mkdtemp(join(tmpdir(), 'template-driver-'));
    try {
      await writeFile(join(other, META_DIR_NAME), 'not a directory');
      await expect(new TemplateDriver({ cacheDir: other }).configure()).rejects.toMatchObject({ code: 'CACHE_BAD_DRIVER_CONFIGURATION' });
    } finally {
      await rm(other, { recursive: true, force: true });
    }
  });
});
