// The README's example, run as a user would: an ES module next to this package.
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { expect, it } from 'vitest';

it('the README example runs as written', async () => {
  const readme = readFileSync(join(import.meta.dirname, '..', 'README.md'), 'utf8');
  const code = /```js\n([\s\S]*?)```/.exec(readme)?.[1];
  expect(code).toBeDefined();
  const file = join(import.meta.dirname, '..', '.readme-example.mjs');
  await writeFile(file, code as string);
  try {
    const { stdout } = await promisify(execFile)(process.execPath, [file]);
    expect(stdout).toBe('29 pretend this is a qcow2 image\ntrue 404\n');
  } finally {
    await rm(file, { force: true });
  }
});
