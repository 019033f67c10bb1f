// The README's example, run as a user would (an ES module next to this package),
// with DATABASE_URL pointing at a fresh database on the test server.
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { expect } from 'vitest';
import { createDatabase, pgIt } from './helpers.js';

pgIt('the README example runs as written against a real database', async () => {
  const readme = readFileSync(join(import.meta.dirname, '..', 'README.md'), 'utf8');
  const code = /```js\n([\s\S]*?)```/.exec(readme)?.[1];
  expect(code).toBeDefined();
  const file = join(import.meta.dirname, '..', '.readme-example.mjs');
  await writeFile(file, code as string);
  try {
    const { stdout } = await promisify(execFile)(process.execPath, [file], {
      env: { PATH: process.env['PATH'] ?? '', DATABASE_URL: await createDatabase('readme') },
    });
    expect(stdout).toContain("[ 'http://node-a:9292', 'http://node-b:9292' ]");
    expect(stdout).toContain('{ files: 1, bytes: 7 }');
    expect(stdout).toMatch(/imageId: 'x',\s+nodes: \[ 'http:\/\/node-a:9292', 'http:\/\/node-b:9292' \],\s+hits: 1/);
  } finally {
    await rm(file, { force: true });
  }
});
