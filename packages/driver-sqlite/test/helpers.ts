import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A fresh directory on the OS temp filesystem; removed by the returned cleanup. */
export async function tempDir(prefix: string): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), `${prefix}-`));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** Runs Python's own sqlite3 module, as Glance does, and returns its JSON output. */
export function python<T = unknown>(script: string, ...args: string[]): T {
  const out = execFileSync('python3', ['-c', script, ...args], { encoding: 'utf8' });
  return JSON.parse(out) as T;
}
