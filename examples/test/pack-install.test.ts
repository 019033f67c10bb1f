// The packages as a third party installs them: scripts/pack-install-test.sh
// packs every public package, installs @cache/core and @cache/conformance from
// the tarballs into a copy of examples/driver-template outside the repo, builds
// it and runs the whole conformance kit there, then installs every tarball
// together and resolves every export. This test runs the script and holds it
// to its word: exit 0, and a kit run with cases that passed and none that failed.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = join(import.meta.dirname, '..', '..');
const script = join(root, 'scripts', 'pack-install-test.sh');

/** Runs the script; resolves with its exit status and its stdout and stderr, interleaved. */
function runScript(): Promise<{ status: number | null; signal: NodeJS.Signals | null; output: string }> {
  // The kit in the scratch project is not one of the repo's test runs: its
  // results must not land in the repo's report directory.
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env['TEST_RESULTS_DIR'];
  delete env['VITEST'];
  delete env['VITEST_POOL_ID'];
  delete env['VITEST_WORKER_ID'];
  delete env['NODE_OPTIONS'];
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [script], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
    child.on('error', reject);
    child.on('close', (status, signal) => resolve({ status, signal, output }));
  });
}

describe('the packed packages, installed with npm in a project outside the repo', () => {
  it(
    'pnpm pack + npm install + build of examples/driver-template: the conformance kit runs cases and none fails',
    async () => {
      const { status, signal, output } = await runScript();
      const tail = output.split('\n').filter((line) => !/^\s+✓ /.test(line)).slice(-120).join('\n');
      const context = `scripts/pack-install-test.sh exited ${status ?? signal}; its output (passing cases left out):\n${tail}`;
      const kit = /^kit: (\d+) passed, (\d+) failed, (\d+) skipped$/m.exec(output);
      expect(kit, `no "kit: N passed, N failed, N skipped" line. ${context}`).not.toBeNull();
      const [passed, failed] = [Number(kit?.[1]), Number(kit?.[2])];
      expect(failed, `the kit failed ${failed} case(s) against the template driver. ${context}`).toBe(0);
      expect(passed, `the kit ran no case. ${context}`).toBeGreaterThan(0);
      expect(status, context).toBe(0);
      expect(output, context).toMatch(/^pack-install-test: OK/m);
      console.log(output.split('\n').filter((line) => /^(\[ *\d+s\]|kit:|template's own tests:|pack-install-test:|  (warning|error):)/.test(line)).join('\n'));
    },
    10 * 60_000,
  );
});
