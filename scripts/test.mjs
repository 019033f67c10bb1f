// `pnpm test`: builds every package and runs every package's tests through
// turbo, inside scripts/test-filesystems.sh, which (as root, with working loop
// devices) mounts a matrix of test filesystems and points the conformance kit
// at them with CACHE_TEST_FILESYSTEMS; otherwise it says why and the kit runs
// on the OS temp dir. Then it adds up the JSON reports each vitest run writes
// into test-results/ and prints:
//   - one line per package,
//   - a table per package x driver x filesystem (tests outside the conformance
//     kit go into a row with driver "-" and filesystem "-"),
//   - the distinct reasons tests were skipped for,
//   - and, as the very last line: `N passed, N failed, N skipped`.
// Before turbo it runs scripts/test-tools.sh, which installs the HTTP clients
// the server's real-client tests drive (curl, wget, aria2c) when they are
// missing and it can (root with apt-get); tests whose tool is still missing
// are skipped with the reason in their title.
// Exits non-zero when anything failed or when no test ran at all.
// Extra arguments go to turbo, after `--` so that pnpm does not take them
// (e.g. `pnpm test -- --filter=@cache/core`).
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';

const root = join(import.meta.dirname, '..');
const resultsDir = join(root, 'test-results');
rmSync(resultsDir, { recursive: true, force: true });
mkdirSync(resultsDir, { recursive: true });

const env = { ...process.env, TURBO_TELEMETRY_DISABLED: '1', TEST_RESULTS_DIR: resultsDir };
const extra = process.argv.slice(2);
if (extra[0] === '--') extra.shift(); // `pnpm test -- --filter=...` passes the separator on
// curl, wget and aria2c for the server's real-client tests; it says what it does, and the run goes on either way.
spawnSync('bash', [join(root, 'scripts', 'test-tools.sh')], { cwd: root, env, stdio: 'inherit' });

const turbo = ['pnpm', 'exec', 'turbo', 'run', 'lint', 'test', '--continue', '--output-logs=full', ...extra];
const child = spawn('bash', [join(root, 'scripts', 'test-filesystems.sh'), '--', ...turbo], {
  cwd: root,
  env,
  stdio: 'inherit',
});
// Ctrl-C or SIGTERM: pass it on and wait, so that test-filesystems.sh can unmount
// its filesystems (and this script still prints its summary).
const forward = (signal) => () => {
  if (child.exitCode === null && child.signalCode === null) child.kill(signal);
};
process.on('SIGINT', forward('SIGINT'));
process.on('SIGTERM', forward('SIGTERM'));
process.on('SIGHUP', forward('SIGHUP'));
const run = await new Promise((resolve) => {
  child.on('error', (error) => {
    console.error(`test: could not run scripts/test-filesystems.sh: ${error.message}`);
    resolve({ status: 1 });
  });
  child.on('close', (status) => resolve({ status }));
});

// Suite titles of the conformance kit (conformance/src/index.ts):
//   `<name> driver conformance` > `on <fs> (<root>)` > [capabilities |] <group> > case
// and a skipped case's title ends with ` [skipped: <reason>]` (conformance/src/kit.ts).
const DRIVER_SUITE = /^(.+) driver conformance$/;
const FS_SUITE = /^on (\S+) \((.*)\)$/;
const SKIP_REASON = /\[skipped: (.*)\]$/s;

/** Where one test belongs: its driver and filesystem, or "-" for both outside the kit. */
function placeOf(ancestors) {
  const driver = DRIVER_SUITE.exec(ancestors[0] ?? '')?.[1];
  const fs = FS_SUITE.exec(ancestors[1] ?? '')?.[1];
  return driver !== undefined && fs !== undefined ? { driver, fs } : { driver: '-', fs: '-' };
}

function outcomeOf(status) {
  if (status === 'passed') return 'passed';
  if (status === 'failed') return 'failed';
  return 'skipped'; // pending, skipped, todo
}

let passed = 0;
let failed = 0;
let skipped = 0;
const perPackage = [];
/** `package\0driver\0fs` -> { package, driver, fs, passed, failed, skipped }, in order of first appearance. */
const rows = new Map();
/** skip reason -> { count, drivers: Set } */
const reasons = new Map();
const problems = [];
/** Every failed test: its file, full title and the first line of its first failure message. */
const failures = [];

function row(pkg, driver, fs) {
  const key = `${pkg}\0${driver}\0${fs}`;
  let r = rows.get(key);
  if (r === undefined) {
    r = { pkg, driver, fs, passed: 0, failed: 0, skipped: 0 };
    rows.set(key, r);
  }
  return r;
}

for (const file of existsSync(resultsDir) ? readdirSync(resultsDir).filter((f) => f.endsWith('.json')).sort() : []) {
  const pkg = file.replace(/\.json$/, '');
  let report;
  try {
    report = JSON.parse(readFileSync(join(resultsDir, file), 'utf8'));
  } catch (error) {
    problems.push(`${file}: unreadable report (${error.message})`);
    perPackage.push(`${pkg.padEnd(16)} report unreadable`);
    failed += 1;
    continue;
  }
  // Counted from the tests themselves: vitest's numFailedTestSuites also counts
  // every `describe` block above a failing test, so it cannot be added up.
  const counts = { passed: 0, failed: 0, skipped: 0 };
  for (const suite of report.testResults ?? []) {
    const tests = suite.assertionResults ?? [];
    if (suite.status === 'failed' && !tests.some((t) => t.status === 'failed')) {
      // A file that failed without a failing test (e.g. it threw at registration, or a hook failed).
      row(pkg, '-', '-').failed += 1;
      counts.failed += 1;
      const where = suite.name?.startsWith(root) ? suite.name.slice(root.length + 1) : suite.name;
      problems.push(`${where}: ${firstLine(suite.message) || 'the file failed to run'}`);
    }
    for (const test of tests) {
      const { driver, fs } = placeOf(test.ancestorTitles ?? []);
      const outcome = outcomeOf(test.status);
      row(pkg, driver, fs)[outcome] += 1;
      counts[outcome] += 1;
      if (outcome === 'failed') {
        const where = suite.name?.startsWith(root) ? suite.name.slice(root.length + 1) : suite.name;
        failures.push({ where, title: [...(test.ancestorTitles ?? []), test.title].join(' > '), message: firstLine(test.failureMessages?.[0]) });
      }
      if (outcome !== 'skipped') continue;
      const reason = SKIP_REASON.exec(test.title ?? '')?.[1] ?? '(no reason in the title)';
      let entry = reasons.get(reason);
      if (entry === undefined) {
        entry = { count: 0, drivers: new Set() };
        reasons.set(reason, entry);
      }
      entry.count += 1;
      entry.drivers.add(driver);
    }
  }
  const reported = {
    passed: report.numPassedTests ?? 0,
    failed: report.numFailedTests ?? 0,
    skipped: (report.numPendingTests ?? 0) + (report.numTodoTests ?? 0),
  };
  for (const key of ['passed', 'skipped']) {
    if (reported[key] !== counts[key]) problems.push(`${file}: vitest reports ${reported[key]} ${key}, its tests add up to ${counts[key]}`);
  }
  // Never report fewer failures than vitest does.
  counts.failed = Math.max(counts.failed, reported.failed);
  perPackage.push(`${pkg.padEnd(16)} ${counts.passed} passed, ${counts.failed} failed, ${counts.skipped} skipped`);
  passed += counts.passed;
  failed += counts.failed;
  skipped += counts.skipped;
}

function firstLine(text) {
  return String(text ?? '').trim().split('\n')[0] ?? '';
}

function table(header, body) {
  const numeric = header.map((_, i) => body.length > 0 && body.every((cells) => typeof cells[i] === 'number'));
  const all = [header, ...body].map((cells) => cells.map(String));
  const widths = header.map((_, i) => Math.max(...all.map((cells) => cells[i].length)));
  return all.map((cells) => cells.map((c, i) => (numeric[i] ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join('  ').trimEnd());
}

console.log('\nTest summary by package:');
for (const line of perPackage) console.log(`  ${line}`);

if (rows.size > 0) {
  console.log('\nBy package, driver and filesystem ("-": tests outside the conformance kit):');
  const body = [...rows.values()].map((r) => [r.pkg, r.driver, r.fs, r.passed, r.failed, r.skipped]);
  for (const line of table(['package', 'driver', 'filesystem', 'passed', 'failed', 'skipped'], body)) console.log(`  ${line}`);
}

if (reasons.size > 0) {
  console.log('\nSkip reasons:');
  for (const [reason, entry] of reasons) {
    const drivers = [...entry.drivers].join(', ');
    console.log(`  ${String(entry.count).padStart(5)} x ${reason}  (driver${entry.drivers.size > 1 ? 's' : ''} ${drivers})`);
  }
}

if (problems.length > 0) {
  console.log('\nProblems with the test reports:');
  for (const problem of problems) console.log(`  ${problem}`);
}

// Last before the totals, so that a log cut to its tail still names what failed.
if (failures.length > 0) {
  console.log(`\nFailed tests (${failures.length}):`);
  for (const f of failures) {
    console.log(`  ${f.where}: ${f.title.length > 300 ? `${f.title.slice(0, 300)}…` : f.title}`);
    if (f.message) console.log(`      ${f.message.length > 400 ? `${f.message.slice(0, 400)}…` : f.message}`);
  }
}

const exitCode = run.status ?? 1;
if (exitCode !== 0 && failed === 0) failed = 1; // a build, lint or runner failure with no test counted
console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
if (passed === 0) {
  console.error('no test ran');
  process.exit(1);
}
process.exit(exitCode !== 0 || failed > 0 ? 1 : 0);
