// `pnpm test`: builds every package and runs every package's tests through
// turbo, then adds up the JSON reports each vitest run writes into
// test-results/ and prints one closing line: `N passed, N failed, N skipped`.
// Exits non-zero when anything failed or when no test ran at all.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';

const root = join(import.meta.dirname, '..');
const resultsDir = join(root, 'test-results');
rmSync(resultsDir, { recursive: true, force: true });
mkdirSync(resultsDir, { recursive: true });

const env = { ...process.env, TURBO_TELEMETRY_DISABLED: '1', TEST_RESULTS_DIR: resultsDir };
const run = spawnSync('pnpm', ['exec', 'turbo', 'run', 'lint', 'test', '--output-logs=full', ...process.argv.slice(2)], {
  cwd: root,
  env,
  stdio: 'inherit',
});

let passed = 0;
let failed = 0;
let skipped = 0;
const perPackage = [];
for (const file of existsSync(resultsDir) ? readdirSync(resultsDir).filter((f) => f.endsWith('.json')).sort() : []) {
  const report = JSON.parse(readFileSync(join(resultsDir, file), 'utf8'));
  const p = report.numPassedTests ?? 0;
  const f = (report.numFailedTests ?? 0) + (report.numFailedTestSuites ?? 0) - countFailedSuitesWithFailedTests(report);
  const s = (report.numPendingTests ?? 0) + (report.numTodoTests ?? 0);
  perPackage.push(`${file.replace(/\.json$/, '').padEnd(16)} ${p} passed, ${f} failed, ${s} skipped`);
  passed += p;
  failed += f;
  skipped += s;
}

function countFailedSuitesWithFailedTests(report) {
  // A suite that failed because its tests failed is already counted by numFailedTests.
  return (report.testResults ?? []).filter(
    (suite) => suite.status === 'failed' && (suite.assertionResults ?? []).some((t) => t.status === 'failed'),
  ).length;
}

console.log('\nTest summary by package:');
for (const line of perPackage) console.log(`  ${line}`);
const exitCode = run.status ?? 1;
if (exitCode !== 0 && failed === 0) failed = 1; // a build, lint or runner failure with no test counted
console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
if (passed === 0) {
  console.error('no test ran');
  process.exit(1);
}
process.exit(exitCode !== 0 || failed > 0 ? 1 : 0);
