import { execFile, execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

// Every public package as npm users get it: publint, attw (esm-only profile) and
// the tarball checks of scripts/check-packages.mjs, one test per package, so a
// packaging mistake counts in `pnpm test`'s closing `N passed, N failed` line.
// Packing is local (pnpm pack / npm pack): no network.

const root = join(import.meta.dirname, '..', '..');
const script = join(root, 'scripts', 'check-packages.mjs');
const dirs = JSON.parse(execFileSync(process.execPath, [script, '--list'], { encoding: 'utf8' })) as string[];

function check(dir: string): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [script, dir], { cwd: root, maxBuffer: 1 << 24 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1, output: `${stdout}${stderr}` });
    });
  });
}

describe('published packages (scripts/check-packages.mjs)', () => {
  it('finds the public packages', () => {
    expect(dirs).toEqual(expect.arrayContaining(['packages/core', 'packages/cli', 'conformance']));
  });

  it.each(dirs)('%s passes publint, attw and the tarball checks', { timeout: 180_000 }, async (dir) => {
    const { code, output } = await check(dir);
    expect(code, output).toBe(0);
  });
});
