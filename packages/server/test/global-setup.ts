// vitest globalSetup of @cache/server: once per run, before any test file, makes sure the HTTP
// clients that real-clients.test.ts drives (curl, wget, aria2c) are installed, through
// scripts/test-tools.sh (idempotent: silent when they are all there; installs them as root with
// apt-get; otherwise says which are missing, and the tests that need one are skipped with the reason).
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';

export default function setup(): void {
  const script = join(import.meta.dirname, '..', '..', '..', 'scripts', 'test-tools.sh');
  spawnSync('bash', [script], { stdio: ['ignore', 'inherit', 'inherit'] });
}
