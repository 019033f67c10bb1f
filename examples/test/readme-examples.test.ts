// Every package README's runnable example, and the quickstart behind
// `pnpm example`, run as a user would run them: as ES modules with node.
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const here = join(import.meta.dirname, '..');
const root = join(here, '..');

function jsBlock(readme: string): string {
  const match = /```js\n([\s\S]*?)```/.exec(readFileSync(join(root, readme), 'utf8'));
  if (match?.[1] === undefined) throw new Error(`${readme} has no \`\`\`js example`);
  return match[1];
}

describe('README examples run as written', () => {
  it.each([
    ['packages/core/README.md', /4194304 committed true/],
    ['packages/driver-sqlite/README.md', /\{ files: 2, bytes: 14 \}/],
    ['packages/driver-xattr/README.md', /\{ files: 2, bytes: 14 \}/],
  ])('%s', async (readme, expected) => {
    // Written inside this package so that `@cache/*` imports resolve as in an app.
    const file = join(here, `.readme-${readme.split('/')[1]}.mjs`);
    await writeFile(file, jsBlock(readme));
    try {
      const { stdout } = await run(process.execPath, [file]);
      expect(stdout).toMatch(expected);
    } finally {
      await rm(file, { force: true });
    }
  });
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
