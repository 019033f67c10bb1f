import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { expect, it } from 'vitest';

const run = promisify(execFile);

it('README.md: the case-group table and case count are the ones the built kit registers (node scripts/readme.mjs --check)', async () => {
  const script = join(import.meta.dirname, '..', 'scripts', 'readme.mjs');
  const result = await run(process.execPath, [script, '--check']).catch((error: { stdout?: string; stderr?: string }) => error);
  expect(result.stderr ?? '', 'scripts/readme.mjs --check').toBe('');
  expect(result.stdout).toMatch(/^README\.md is up to date: \d+ cases in \d+ groups/);
});
