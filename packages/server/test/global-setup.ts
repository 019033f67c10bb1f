// vitest globalSetup of @cache/server: once per run, before any test file,
// - makes sure the HTTP clients that real-clients.test.ts drives (curl, wget, aria2c) are installed, through
//   scripts/test-tools.sh (idempotent: silent when they are all there; installs them as root with
//   apt-get; otherwise says which are missing, and the tests that need one are skipped with the reason);
// - makes sure Debian's chromium is installed for status-page.test.ts, through scripts/install-chromium.sh
//   (idempotent; as root with apt-get; CACHE_TEST_BROWSER=0 skips it). Why it is missing, if it is, is
//   handed to the test (inject('chromiumMissing')), which is then skipped with that reason.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';

declare module 'vitest' {
  export interface ProvidedContext {
    /** Why the status page's browser test cannot run (chromium missing), or '' when it can. */
    chromiumMissing: string;
  }
}

const SCRIPTS = join(import.meta.dirname, '..', '..', '..', 'scripts');

export default function setup(project: TestProject): void {
  spawnSync('bash', [join(SCRIPTS, 'test-tools.sh')], { stdio: ['ignore', 'inherit', 'inherit'] });
  project.provide('chromiumMissing', installChromium());
}

function installChromium(): string {
  if (process.env['CACHE_TEST_BROWSER'] === '0') return 'CACHE_TEST_BROWSER=0';
  const run = spawnSync('bash', [join(SCRIPTS, 'install-chromium.sh')], { stdio: ['ignore', 'inherit', 'pipe'], encoding: 'utf8' });
  process.stderr.write(run.stderr ?? '');
  if (run.status === 0) return '';
  const last = (run.stderr ?? '').trim().split('\n').at(-1) ?? '';
  return last.replace(/^install-chromium: /, '') || `scripts/install-chromium.sh failed (${run.status ?? run.signal})`;
}
