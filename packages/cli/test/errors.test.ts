import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cli, tempDir, tree } from './helpers.js';

let root: string;
let cleanup: () => Promise<void>;

beforeEach(async () => {
  ({ dir: root, cleanup } = await tempDir('errors'));
});
afterEach(() => cleanup());

/** One line on stderr, nothing on stdout, no stack trace. */
function expectOneLine(result: { stdout: string; stderr: string }, pattern: RegExp): void {
  expect(result.stdout).toBe('');
  expect(result.stderr).toMatch(/^image-cache: [^\n]+\n$/);
  expect(result.stderr).toMatch(pattern);
  expect(result.stderr).not.toMatch(/\n\s+at /);
}

describe('bad input: one line, exit code 2, nothing created on disk', () => {
  it.each([
    ['a bad size string', ['--cache-dir', 'cache', '--max-size', '20XB', 'queue', 'a'], /invalid --max-size "20XB".* \[CLI_INVALID_SIZE\]$/m],
    ['a bad size in the environment', ['--cache-dir', 'cache', 'queue', 'a'], /invalid IMAGE_CACHE_MAX_SIZE "lots".* \[CLI_INVALID_SIZE\]$/m, { IMAGE_CACHE_MAX_SIZE: 'lots' }],
    ['a bad duration', ['--cache-dir', 'cache', 'clean', '--stall-time', 'soon'], /invalid --stall-time "soon".* \[CLI_INVALID_DURATION\]$/m],
    ['a missing cache dir', ['queue', 'a'], /no cache directory: pass --cache-dir <dir>, set IMAGE_CACHE_DIR.* \[CLI_MISSING_CACHE_DIR\]$/m],
    ['an invalid id', ['--cache-dir', 'cache', 'queue', 'ok', '../etc'], /invalid image id "\.\.\/etc": .* \[CACHE_INVALID_IMAGE_ID\]$/m],
    ['a reserved id', ['--cache-dir', 'cache', 'queue', 'incomplete'], /invalid image id "incomplete": 'incomplete' is a reserved name.* \[CACHE_INVALID_IMAGE_ID\]$/m],
    ['an unknown driver', ['--cache-dir', 'cache', '--driver', 'redis', 'queue', 'a'], /invalid --driver "redis": use sqlite, xattr or postgres \[CLI_INVALID_DRIVER\]$/m],
    ['an unknown durability', ['--cache-dir', 'cache', 'prefetch', '--origin', 'images', '--durability', 'fast', 'a'], /invalid --durability "fast": use strict or relaxed \[CLI_INVALID_DURABILITY\]$/m],
    ['an unknown command', ['--cache-dir', 'cache', 'frobnicate'], /unknown command 'frobnicate' \[CLI_USAGE\]$/m],
    ['an unknown option', ['--cache-dir', 'cache', 'list', '--colour'], /unknown option '--colour' \[CLI_USAGE\]$/m],
    ['a missing argument', ['--cache-dir', 'cache', 'info'], /missing required argument 'id' \[CLI_USAGE\]$/m],
    ['a missing config file', ['--config', 'nope.json', 'queue', 'a'], /cannot read config file .*nope\.json: no such file \[CLI_CONFIG\]$/m],
  ] as [string, string[], RegExp, Record<string, string>?][])('%s', async (_name, argv, pattern, env = {}) => {
    const result = await cli(argv, { cwd: root, env });
    expect(result.code).toBe(2);
    expectOneLine(result, pattern);
    expect(await tree(root)).toEqual([]);
  });

  it('an operational failure exits 1 with one line', async () => {
    const result = await cli(['--cache-dir', join(root, 'absent'), 'list'], { cwd: root });
    expect(result.code).toBe(1);
    expectOneLine(result, /absent does not exist, so it is not an image cache directory.* \[CLI_NOT_A_CACHE_DIR\]$/m);
    expect(await tree(root)).toEqual([]);
  });

  it('--debug or DEBUG adds the stack trace', async () => {
    for (const [argv, env] of [
      [['--debug', 'list'], {}],
      [['list'], { DEBUG: '1' }],
    ] as [string[], Record<string, string>][]) {
      const result = await cli(['--cache-dir', join(root, 'absent'), ...argv], { cwd: root, env });
      expect(result.code).toBe(1);
      expect(result.stderr.split('\n')[0]).toMatch(/^image-cache: .* \[CLI_NOT_A_CACHE_DIR\]$/);
      expect(result.stderr).toMatch(/\n\s+at .*open-cache/);
    }
  });
});

describe('help and version', () => {
  it('--help goes to stdout with exit 0, and lists every command', async () => {
    const result = await cli(['--help']);
    expect(result.code).toBe(0);
    for (const name of ['list', 'info', 'stats', 'queue', 'dequeue', 'delete', 'prune', 'clean', 'prefetch', 'verify', 'serve']) {
      expect(result.stdout).toMatch(new RegExp(`^  ${name} `, 'm'));
    }
    const sub = await cli(['prune', '--help']);
    expect(sub.stdout).toMatch(/--max-size <size>/); // global options are shown with each command
  });

  it('no command prints help to stderr with exit 2; --version prints the version', async () => {
    const none = await cli([]);
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/^Usage: image-cache/);
    const version = await cli(['--version']);
    expect(version).toMatchObject({ code: 0, stdout: expect.stringMatching(/^\d+\.\d+\.\d+\n$/) });
  });
});
