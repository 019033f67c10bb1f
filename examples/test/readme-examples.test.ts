// Every package README's runnable example, and the quickstart behind
// `pnpm example`, run as a user would run them: as ES modules with node.
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { tryStartTestPostgres } from '@cache/postgres-testing';

const run = promisify(execFile);
const here = join(import.meta.dirname, '..');
const root = join(here, '..');

function jsBlock(readme: string): string {
  const match = /```js\n([\s\S]*?)```/.exec(readFileSync(join(root, readme), 'utf8'));
  if (match?.[1] === undefined) throw new Error(`${readme} has no \`\`\`js example`);
  return match[1];
}

/**
 * Runs a README's example as a user would: an ES module written inside this
 * package (so that `@cache/*` imports resolve as in an app), with only PATH
 * from the environment (no IMAGE_CACHE_* or DATABASE_URL of the caller) plus `env`.
 */
async function runExample(readme: string, env: Record<string, string> = {}): Promise<string> {
  const file = join(here, `.readme-${readme.split('/')[1]}.mjs`);
  await writeFile(file, jsBlock(readme));
  try {
    const { stdout } = await run(process.execPath, [file], { env: { PATH: process.env['PATH'] ?? '', ...env }, timeout: 60_000 });
    return stdout;
  } finally {
    await rm(file, { force: true });
  }
}

// One throwaway PostgreSQL server for the postgres driver's example, when one can be started.
const { pg: postgres, skipReason: postgresUnavailable } = await tryStartTestPostgres();
afterAll(() => postgres?.stop());

describe('README examples run as written', () => {
  it.each([
    ['packages/core/README.md', [/4194304 committed true/, /^100 1 4194304 sha256:[0-9a-f]{64}$/m]],
    ['packages/driver-sqlite/README.md', [/\{ files: 2, bytes: 14 \}/]],
    ['packages/driver-xattr/README.md', [/\{ files: 2, bytes: 14 \}/]],
    ['packages/origin/README.md', [/^29 pretend this is a qcow2 image\ntrue 404\n$/]],
    ['packages/server/README.md', [/^miss 1048576 hit 1048576\ncirros 1048576\n$/]],
    [
      'packages/cli/README.md',
      [/^queued cirros$/m, /^prefetch: 1 fetched \(21 B\), 0 failed of 1 in \S+$/m, /^prefetch exit 0: 1 entry, 21 bytes$/m],
    ],
  ])('%s', async (readme, expected) => {
    const stdout = await runExample(readme);
    for (const pattern of expected) expect(stdout).toMatch(pattern);
  });

  // It starts a throwaway server of its own: run it only where this file could start one.
  const testingTitle = 'packages/postgres-testing/README.md';
  if (postgres === undefined) {
    it.skip(`${testingTitle} [skipped: ${postgresUnavailable}]`, () => undefined);
  } else {
    it(testingTitle, async () => {
      expect(await runExample(testingTitle)).toBe('[ { one: 1 } ]\ntrue\n[ { sum: 42 } ]\n1\n');
    });
  }

  const postgresTitle = 'packages/driver-postgres/README.md, against a fresh database (DATABASE_URL)';
  if (postgres === undefined) {
    it.skip(`${postgresTitle} [skipped: ${postgresUnavailable}]`, () => undefined);
  } else {
    const server = postgres;
    it(postgresTitle, async () => {
      const stdout = await runExample('packages/driver-postgres/README.md', {
        DATABASE_URL: await server.createDatabase(`readme_${process.pid}`),
      });
      expect(stdout).toContain("[ 'http://node-a:9292', 'http://node-b:9292' ]");
      expect(stdout).toContain('{ files: 1, bytes: 7 }');
      expect(stdout).toMatch(/imageId: 'x',\s+nodes: \[ 'http:\/\/node-a:9292', 'http:\/\/node-b:9292' \],\s+hits: 1/);
    });
  }
});

describe('pnpm example', () => {
  it('quickstart.mjs streams, verifies, reads back, prunes, refuses a tampered image and cleans', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'quickstart-'));
    try {
      const { stdout } = await run(process.execPath, [join(here, 'quickstart.mjs'), '--dir', dir], { maxBuffer: 1 << 20 });
      expect(stdout).toMatch(/client received 256\.0 MiB .* sha256 ok: true/);
      expect(stdout).toMatch(/cache write: committed; isCached: true; size 256\.0 MiB/);
      expect(stdout).toMatch(/read 256\.0 MiB .* sha256 ok: true, hits: 1/);
      expect(stdout).toMatch(/pruned 1 file\(s\), 32\.0 MiB; left: big-image, small-b; size 288\.0 MiB/);
      expect(stdout).toMatch(/then CACHE_CHECKSUM_MISMATCH; isCached\('tampered'\): false; invalid\/: tampered/);
      expect(stdout).toMatch(/clean: 1 invalid, 0 stalled removed; invalid\/ now: \[\]/);
      expect((await readdir(dir)).sort()).toEqual(['big-image', 'cache.db', 'incomplete', 'invalid', 'queue', 'small-b'].sort());
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 120_000);
});
