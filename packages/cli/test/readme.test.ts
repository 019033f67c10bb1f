import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { expect, it } from 'vitest';

const run = promisify(execFile);
const packageDir = join(import.meta.dirname, '..');

it('the README example runs as written, as an ES module', async () => {
  const readme = readFileSync(join(packageDir, 'README.md'), 'utf8');
  const code = /```js\n([\s\S]*?)```/.exec(readme)?.[1];
  expect(code).toBeDefined();
  // Inside the package, so `@cache/cli` resolves (self-reference through "exports") as in an app.
  const file = join(packageDir, '.readme-cli.mjs');
  await writeFile(file, code!);
  try {
    const { stdout } = await run(process.execPath, [file], { env: { PATH: process.env['PATH'] ?? '' } });
    expect(stdout).toMatch(/^queued cirros$/m);
    expect(stdout).toMatch(/^prefetch: 1 fetched \(21 B\), 0 failed of 1 in \S+$/m);
    expect(stdout).toMatch(/^prefetch exit 0: 1 entry, 21 bytes$/m);
  } finally {
    await rm(file, { force: true });
  }
});
