import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { CacheDriver } from '@cache/core';

/** A fresh directory on the OS temp filesystem; removed by the returned cleanup. */
export async function tempDir(prefix: string): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), `${prefix}-`));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

export async function write(driver: CacheDriver, id: string, data: Buffer | string): Promise<void> {
  await pipeline(Readable.from([Buffer.from(data)]), await driver.openForWrite(id));
}

export async function read(driver: CacheDriver, id: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of await driver.openForRead(id)) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Runs Python's own sqlite3 module, as Glance does, and returns its JSON output. */
export function python<T = unknown>(script: string, ...args: string[]): T {
  const out = execFileSync('python3', ['-c', script, ...args], { encoding: 'utf8' });
  return JSON.parse(out) as T;
}
