import { execFile } from 'node:child_process';
import { cp, mkdir, readFile, realpath, rm, symlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir, type RunResult } from './helpers.js';

// The three drivers are optional dependencies of @cache/cli. This builds the
// layout `npm install --omit=optional @cache/cli` leaves behind: the package
// (bin, dist, package.json) in <root>/node_modules/@cache/cli, each of its
// regular dependencies next to it (symlinks to the workspace's copies), and no
// driver package anywhere Node's resolution looks. Then it runs the binary.

const cliDir = join(import.meta.dirname, '..');
const DRIVER_PACKAGES = { sqlite: '@cache/driver-sqlite', xattr: '@cache/driver-xattr', postgres: '@cache/driver-postgres' } as const;

let root: string;
let cleanup: () => Promise<void>;
let installedBin: string;

beforeAll(async () => {
  ({ dir: root, cleanup } = await tempDir('optional-drivers'));
  const manifest = JSON.parse(await readFile(join(cliDir, 'package.json'), 'utf8')) as {
    dependencies: Record<string, string>;
    optionalDependencies?: Record<string, string>;
  };
  // The drivers must be optional, and nothing else may pull them in.
  expect(Object.keys(manifest.optionalDependencies ?? {}).sort()).toEqual(Object.values(DRIVER_PACKAGES).sort());
  for (const name of Object.values(DRIVER_PACKAGES)) expect(manifest.dependencies).not.toHaveProperty(name);

  const installed = join(root, 'node_modules', '@cache', 'cli');
  await mkdir(installed, { recursive: true });
  for (const entry of ['package.json', 'bin', 'dist']) await cp(join(cliDir, entry), join(installed, entry), { recursive: true });
  for (const name of Object.keys(manifest.dependencies)) {
    const link = join(root, 'node_modules', name);
    await mkdir(dirname(link), { recursive: true });
    await symlink(await realpath(join(cliDir, 'node_modules', name)), link, 'dir');
  }
  installedBin = join(installed, 'bin', 'image-cache.js');
  // A cache directory, so that the command gets as far as opening the driver.
  for (const sub of ['incomplete', 'invalid', 'queue']) await mkdir(join(root, 'cache', sub), { recursive: true });
});
afterAll(() => cleanup());

function run(argv: string[]): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [installedBin, ...argv],
      { cwd: root, env: { PATH: process.env['PATH'] ?? '' } },
      (error, stdout, stderr) => resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1, stdout, stderr }),
    );
  });
}

describe('a CLI installed without its optional drivers', () => {
  it.each(Object.entries(DRIVER_PACKAGES))('names the package to install when the %s driver is missing, in one line, exit 2', async (driver, pkg) => {
    const result = await run(['--cache-dir', join(root, 'cache'), '--driver', driver, '--database-url', 'postgresql://127.0.0.1:1/none', 'list']);
    expect(result, JSON.stringify(result)).toEqual({
      code: 2,
      stdout: '',
      stderr: `image-cache: the ${driver} driver is not installed: npm install ${pkg} [CLI_DRIVER_MISSING]\n`,
    });
  });

  it('says a driver that is installed but does not load is broken, and how to reinstall it', async () => {
    // @cache/driver-xattr present, but without its own dependency fs-xattr (the native addon).
    const xattrDriver = join(root, 'node_modules', '@cache', 'driver-xattr');
    await mkdir(xattrDriver, { recursive: true });
    for (const entry of ['package.json', 'dist']) await cp(join(cliDir, '..', 'driver-xattr', entry), join(xattrDriver, entry), { recursive: true });
    try {
      const result = await run(['--cache-dir', join(root, 'cache'), '--driver', 'xattr', 'list']);
      expect(result.code, JSON.stringify(result)).toBe(2);
      expect(result.stdout).toBe('');
      expect(result.stderr).toMatch(
        /^image-cache: the xattr driver is installed but could not be loaded \(Cannot find package 'fs-xattr' [^\n]*\): reinstall it with npm install @cache\/driver-xattr \[CLI_DRIVER_LOAD_FAILED\]\n$/,
      );
    } finally {
      await rm(xattrDriver, { recursive: true, force: true });
    }
  });

  it('still runs every command that opens no driver', async () => {
    const result = await run(['--version']);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/^\d+\.\d+\.\d+/);
  });
});
