/**
 * The space policy from the command line (issue 14, ADR 0006): free-space
 * thresholds as percentages or sizes, all three or none; serve passes them
 * (and the write budget) to the cache and records them in
 * .image-cache-settings.json; stats shows the filesystem's free space and
 * the thresholds.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SETTINGS_FILE, type RecordedSettings } from '../src/settings-file.js';
import { parseThreshold } from '../src/units.js';
import { bin, startServe, tempDir, type ServeProcess } from './helpers.js';

let root: string;
let cleanup: () => Promise<void>;
const servers: ServeProcess[] = [];

beforeEach(async () => {
  ({ dir: root, cleanup } = await tempDir('cli-space'));
});

afterEach(async () => {
  for (const server of servers.splice(0)) {
    server.kill();
    await server.exited;
  }
  await cleanup();
});

describe('free-space thresholds as percentages or sizes', () => {
  it.each([
    ['7%', { percent: 7 }],
    [' 2.5 % ', { percent: 2.5 }],
    ['0%', { percent: 0 }],
    ['20GiB', { bytes: 20 * 1024 ** 3 }],
    ['512MB', { bytes: 512 * 1024 ** 2 }],
    [1048576, { bytes: 1048576 }],
  ] as const)('%j -> %j', (text, expected) => {
    expect(parseThreshold(text, '--free-run')).toEqual(expected);
  });

  it.each(['100%', '-1%', 'ten%', '5 potatoes', ''])('refuses %j with CLI_INVALID_SIZE', (text) => {
    expect(() => parseThreshold(text, '--free-cull')).toThrow(expect.objectContaining({ code: 'CLI_INVALID_SIZE' }));
  });
});

describe('serve and stats', () => {
  it('thresholds come as three: one alone is a usage error (exit 2) and nothing is created', async () => {
    const cacheDir = join(root, 'cache');
    const result = await bin(['--cache-dir', cacheDir, 'serve', '--port', '0', '--free-run', '10%'], { cwd: root });
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/--free-cull and --free-stop missing.*\[CLI_INVALID_SIZE\]/);
    await expect(readdir(cacheDir), 'nothing was created').rejects.toThrow(/ENOENT/);
  });

  it('thresholds out of order are refused with a usage error', async () => {
    const result = await bin(['--cache-dir', join(root, 'cache'), 'serve', '--port', '0', '--free-run', '1%', '--free-cull', '5%', '--free-stop', '3%'], {
      cwd: root,
    });
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/stop < cull < run.*\[CLI_INVALID_SIZE\]/);
    await expect(readFile(join(root, 'cache', SETTINGS_FILE)), 'nothing was created').rejects.toThrow(/ENOENT/);
    await expect(readdir(join(root, 'cache')), 'not even the cache directory').rejects.toThrow(/ENOENT/);
  });

  it('serve records the thresholds; stats shows free space, the thresholds and where they came from', async () => {
    const cacheDir = join(root, 'cache');
    const server = startServe(['--cache-dir', cacheDir, 'serve', '--port', '0', '--free-run', '3%', '--free-cull', '2%', '--free-stop', '1MiB'], { cwd: root });
    servers.push(server);
    const url = await server.url;
    expect(server.output().stderr).toContain(`(sqlite, budget 10 GiB, free space run 3% cull 2% stop 1 MiB) on ${url}`);
    const record = JSON.parse(await readFile(join(cacheDir, SETTINGS_FILE), 'utf8')) as RecordedSettings;
    expect(record.settings.freeSpace).toEqual({ value: { run: { percent: 3 }, cull: { percent: 2 }, stop: { bytes: 1024 ** 2 } }, source: 'flag' });
    expect(record.settings.writeBudget).toEqual({ value: true, source: 'default' });

    const stats = await bin(['--cache-dir', cacheDir, 'stats'], { cwd: root });
    expect(stats.code).toBe(0);
    expect(stats.stdout).toMatch(/^filesystem\s+\S+ \S+ free of \S+ \S+ \([\d.]+%\), \d+ of \d+ inodes free$/m);
    expect(stats.stdout).toMatch(/^free space\s+run 3% \(.+\), cull 2% \(.+\), stop 1 MiB \(1 MiB\): .+ \(from the server\)$/m);
    const json = JSON.parse((await bin(['--cache-dir', cacheDir, 'stats', '--json'], { cwd: root })).stdout) as {
      filesystem: { totalBytes: number; freeBytes: number; thresholds: { stop: { bytes: number }; source: string; below: string[] } };
    };
    expect(json.filesystem.totalBytes).toBeGreaterThan(json.filesystem.freeBytes);
    expect(json.filesystem.thresholds).toMatchObject({ stop: { bytes: 1024 ** 2 }, source: 'recorded' });
    expect(Array.isArray(json.filesystem.thresholds.below)).toBe(true);

    // /metrics shows them too.
    const metrics = await (await fetch(`${url}/metrics`)).text();
    expect(metrics).toMatch(/^image_cache_fs_free_threshold_bytes\{threshold="stop"\} 1048576$/m);
    expect(metrics).toMatch(/^image_cache_fs_free_bytes \d+$/m);
  });

  it('stats without a server: the filesystem, and no thresholds', async () => {
    const cacheDir = join(root, 'cache');
    expect((await bin(['--cache-dir', cacheDir, 'queue', 'x'], { cwd: root })).code).toBe(0);
    const json = JSON.parse((await bin(['--cache-dir', cacheDir, 'stats', '--json'], { cwd: root })).stdout) as { filesystem: { thresholds: unknown; freeFiles: number } };
    expect(json.filesystem.thresholds).toBeNull();
    expect(json.filesystem.freeFiles).toBeGreaterThanOrEqual(0);
  });
});
