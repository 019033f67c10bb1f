import { execFile } from 'node:child_process';
import { cp, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

// fs-xattr (a native addon) is an optional dependency of the kit, imported only
// by the xattr probe. This copies the built kit into the layout an install
// without it leaves (`npm install --omit=optional`, or an addon that did not
// build): <root>/node_modules/@cache/conformance with no fs-xattr anywhere
// Node's resolution looks, and runs the probe there in a child process.

const packageDir = join(import.meta.dirname, '..');
let root: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'conformance-no-fs-xattr-'));
  const installed = join(root, 'node_modules', '@cache', 'conformance');
  await mkdir(installed, { recursive: true });
  for (const entry of ['package.json', 'dist']) await cp(join(packageDir, entry), join(installed, entry), { recursive: true });
});
afterAll(() => rm(root, { recursive: true, force: true }));

describe('the kit installed without fs-xattr', () => {
  it('declares fs-xattr as an optional dependency only', async () => {
    const manifest = JSON.parse(await readFile(join(packageDir, 'package.json'), 'utf8')) as Record<string, Record<string, string> | undefined>;
    expect(manifest['optionalDependencies']).toHaveProperty('fs-xattr');
    expect(manifest['dependencies'] ?? {}).not.toHaveProperty('fs-xattr');
  });

  it('reports the xattr capability missing, saying fs-xattr could not be loaded and to install it', async () => {
    const probes = pathToFileURL(join(root, 'node_modules', '@cache', 'conformance', 'dist', 'probes.js')).href;
    const script = `const { probeXattr } = await import(${JSON.stringify(probes)}); console.log(JSON.stringify(await probeXattr(${JSON.stringify(root)})));`;
    const { stdout, stderr } = await new Promise<{ stdout: string; stderr: string }>((resolve, reject) => {
      execFile(process.execPath, ['--input-type=module', '-e', script], { cwd: root, env: { PATH: process.env['PATH'] ?? '' } }, (error, stdout, stderr) =>
        error === null ? resolve({ stdout, stderr }) : reject(new Error(`${error.message}\n${stderr}`)),
      );
    });
    expect(stderr).toBe('');
    const probe = JSON.parse(stdout) as { supported: boolean; reason: string };
    expect(probe.supported).toBe(false);
    expect(probe.reason).toMatch(
      /^cannot be probed for user xattrs: fs-xattr could not be loaded: ERR_MODULE_NOT_FOUND: Cannot find package 'fs-xattr' .*; install it to probe user xattrs/,
    );
  });
});
