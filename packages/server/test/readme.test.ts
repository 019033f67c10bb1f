// The README's runnable example, run as a user would: an ES module with node.
import { execFile } from 'node:child_process';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { expect, it } from 'vitest';

const run = promisify(execFile);
const packageDir = join(import.meta.dirname, '..');

it('README example prints a miss then a hit of the same 1 MiB image', async () => {
  const readme = await readFile(join(packageDir, 'README.md'), 'utf8');
  const code = /```js\n([\s\S]*?)```/.exec(readme)?.[1];
  expect(code).toBeDefined();
  // Inside the package, so that the @cache/* imports resolve (to the built dist) as in an app.
  const file = join(packageDir, '.readme-example.mjs');
  await writeFile(file, code as string);
  try {
    const { stdout } = await run(process.execPath, [file], { timeout: 60_000 });
    expect(stdout).toBe('miss 1048576 hit 1048576\ncirros 1048576\n');
  } finally {
    await rm(file, { force: true });
  }
});
