#!/usr/bin/env node
// The conformance kit's mutation suite: the kit measuring itself.
//
// Runs the kit (conformance/src, as it is now) against the journal driver of
// journal-driver.mjs, once correct and once per seeded bug (KIT_MUTANT=<name>),
// each run a separate `vitest run` over mutation/journal.conformance.test.ts,
// two at a time. A mutant is killed when at least one kit case fails. The
// correct driver must pass every case, or the run is invalid.
//
//   node mutation/run.mjs                 every mutant
//   node mutation/run.mjs --sample        the fixed SAMPLE below (every kind; about a minute on 2 cores)
//   node mutation/run.mjs --only a,b      these mutants
//   node mutation/run.mjs --list          the mutant table, nothing run
//   options: --json (one JSON report on stdout, progress on stderr), --no-bail (run every
//   case of each mutant and list all that fail; slower), --jobs N (default 2), --keep (keep temp dirs)
//
// Exit status: 0 when the correct driver passed everything and the score is
// >= 90%; 1 when the score is lower; 2 when the run is invalid (the correct
// driver failed a case, or a run could not be read); 64 for bad arguments.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { KINDS, MUTANTS } from './journal-driver.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const packageDir = dirname(here);
const MIN_SCORE = 0.9;
/** A run that takes longer than this is stopped (and a mutant counts as killed by the timeout). */
const RUN_TIMEOUT_MS = 5 * 60_000;

/**
 * The --sample subset: at least one mutant of every kind, deterministic
 * kills only (no timing luck), and the behaviours of the five hand-written
 * broken drivers the kit's first self-test had (never records hits, counts
 * abandoned reads, unsorted listing -> positional join, no id validation,
 * reversed recency). Runs in about a minute on 2 cores.
 */
const SAMPLE = Object.freeze([
  'hits-buffered', // persistence: hits only in memory until close(); SIGKILL / other processes lose them
  'compact-on-open', // persistence: reopen resets hits
  'forget-noop', // deletion: delete leaves the record
  'rollback-keeps-stale', // deletion: rollback leaves a stale record
  'ignore-identity', // identity: a replaced file inherits hits and digest
  'reconcile-no-adopt', // reconcile: clean() adopts nothing
  'checksum-survives-delete', // digest: a re-cached id inherits the deleted one's digest
  'hit-count-in-line', // concurrency: read-modify-write of hit counts
  'hit-no-access-time', // lru: reads do not refresh recency
  'access-age-not-time', // lru: reversed recency (old self-test)
  'positional-metadata-join', // lru: metadata by position, not id (old self-test: unsorted listing)
  'hit-op-typo', // protocol: never records hits (old self-test)
  'hit-on-open', // protocol: counts abandoned reads (old self-test)
  'fast-path-skips-guard', // protocol: no id validation (old self-test)
  'close-deletes-journal', // lifecycle: close() deletes the metadata
  'small-commits-over-writer', // small-write: writeSmallImage() commits over an openForWrite writer
]);

function usage(message) {
  process.stderr.write(`${message}\nusage: node mutation/run.mjs [--sample | --only a,b] [--json] [--no-bail] [--jobs N] [--keep] [--list]\n`);
  process.exit(64);
}

function parseArgs(argv) {
  const options = { sample: false, only: undefined, json: false, bail: true, jobs: 2, keep: false, list: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      const eq = arg.indexOf('=');
      if (eq >= 0) return arg.slice(eq + 1);
      const next = argv[++i];
      if (next === undefined) usage(`${arg} needs a value`);
      return next;
    };
    if (arg === '--sample') options.sample = true;
    else if (arg === '--only' || arg.startsWith('--only=')) options.only = value().split(',').map((s) => s.trim()).filter(Boolean);
    else if (arg === '--json') options.json = true;
    else if (arg === '--no-bail') options.bail = false;
    else if (arg === '--jobs' || arg.startsWith('--jobs=')) options.jobs = Number(value());
    else if (arg === '--keep') options.keep = true;
    else if (arg === '--list') options.list = true;
    else if (arg === '--help' || arg === '-h') usage('The conformance kit\'s mutation suite.');
    else usage(`unknown argument ${arg}`);
  }
  if (options.sample && options.only) usage('--sample and --only exclude each other');
  if (!Number.isInteger(options.jobs) || options.jobs < 1) usage('--jobs must be a whole number >= 1');
  const unknown = (options.only ?? []).filter((name) => !Object.hasOwn(MUTANTS, name));
  if (unknown.length > 0) usage(`unknown mutant(s): ${unknown.join(', ')} (see --list)`);
  return options;
}

/** The environment of a child vitest: no results dir, no filesystem matrix, no outer vitest's variables. */
function childEnv(mutant, root) {
  const env = { ...process.env };
  for (const key of Object.keys(env)) {
    if (key.startsWith('VITEST') || key.startsWith('__VITEST') || key.startsWith('TINYPOOL')) delete env[key];
  }
  delete env.TEST_RESULTS_DIR;
  delete env.CACHE_TEST_FILESYSTEMS;
  delete env.KIT_MUTANT;
  if (mutant !== undefined) env.KIT_MUTANT = mutant;
  env.KIT_MUTATION_ROOT = root;
  env.FORCE_COLOR = '0';
  return env;
}

/** The vitest runs in flight: each leads its own process group (vitest, its worker, the kit's child processes). */
const running = new Set();

function killGroup(child) {
  try {
    process.kill(-child.pid, 'SIGKILL');
  } catch {
    child.kill('SIGKILL');
  }
}

// Ctrl-C / SIGTERM: the runs are in their own process groups, so end them here.
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(signal, () => {
    for (const child of running) killGroup(child);
    process.exit(130);
  });
}

function vitestBin() {
  const bin = join(packageDir, 'node_modules', 'vitest', 'vitest.mjs');
  if (!existsSync(bin)) throw new Error(`vitest is not installed at ${bin}: run pnpm install`);
  return bin;
}

/**
 * One vitest run of the kit against the driver with `mutant` (undefined: the
 * correct driver). Resolves with what the JSON report says.
 */
async function runKit(mutant, options) {
  const label = mutant ?? 'correct';
  const work = await mkdtemp(join(tmpdir(), `cache-mutation-${label}-`));
  const root = join(work, 'fs');
  await mkdir(root);
  const report = join(work, 'report.json');
  const args = [vitestBin(), 'run', '--config', join(here, 'vitest.config.mjs'), '--reporter=json', `--outputFile=${report}`];
  if (options.bail && mutant !== undefined) args.push('--bail=1');
  const started = Date.now();
  const child = spawn(process.execPath, args, { cwd: packageDir, env: childEnv(mutant, root), stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let output = '';
  const keepTail = (chunk) => {
    output = (output + chunk).slice(-20_000);
  };
  child.stdout.setEncoding('utf8').on('data', keepTail);
  child.stderr.setEncoding('utf8').on('data', keepTail);
  let timedOut = false;
  running.add(child);
  const timer = setTimeout(() => {
    timedOut = true;
    killGroup(child);
  }, RUN_TIMEOUT_MS);
  const exit = await new Promise((resolve) => child.once('close', (code, signal) => resolve({ code, signal })));
  clearTimeout(timer);
  running.delete(child);
  const durationMs = Date.now() - started;
  let result;
  try {
    result = summarize(JSON.parse(await readFile(report, 'utf8')));
  } catch (error) {
    result = { passed: 0, failed: 0, skipped: 0, failures: [], fileErrors: [`no readable JSON report (${error.message}); vitest exited with ${exit.code ?? exit.signal}`] };
  }
  if (options.keep) process.stderr.write(`[mutation] kept ${work}\n`);
  else await rm(work, { recursive: true, force: true });
  return { ...result, durationMs, timedOut, exit, output };
}

/** Counts and failing cases from a vitest JSON report. */
function summarize(report) {
  let passed = 0;
  let failed = 0;
  let skipped = 0;
  const failures = [];
  const fileErrors = [];
  for (const file of report.testResults ?? []) {
    for (const test of file.assertionResults ?? []) {
      if (test.status === 'passed') passed++;
      else if (test.status === 'failed') {
        failed++;
        // Drop the "journal driver conformance > on os-tmp (...)" prefix: the group and the case say what failed.
        const title = [...(test.ancestorTitles ?? []).slice(2), test.title].join(' > ');
        const message = String(test.failureMessages?.[0] ?? '').split('\n')[0].slice(0, 300);
        failures.push({ title, message });
      } else skipped++;
    }
    if (file.status === 'failed' && (file.assertionResults ?? []).every((t) => t.status !== 'failed')) {
      fileErrors.push(String(file.message ?? 'the test file failed to run').slice(0, 2000));
    }
  }
  return { passed, failed, skipped, failures, fileErrors };
}

/** Runs `jobs` with at most `limit` at once, calling `onDone` as each finishes. */
async function pool(jobs, limit, onDone, shouldStop) {
  const results = new Array(jobs.length);
  let next = 0;
  const worker = async () => {
    while (next < jobs.length && !shouldStop()) {
      const i = next++;
      results[i] = await jobs[i]();
      onDone(results[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, jobs.length) }, worker));
  return results;
}

function seconds(ms) {
  return `${(ms / 1000).toFixed(1)}s`;
}

function listMutants() {
  const names = Object.keys(MUTANTS);
  const width = Math.max(...names.map((n) => n.length));
  for (const kind of Object.keys(KINDS)) {
    console.log(`${kind}: ${KINDS[kind]}`);
    for (const name of names.filter((n) => MUTANTS[n].kind === kind)) {
      console.log(`  ${name.padEnd(width)}  ${SAMPLE.includes(name) ? '[sample] ' : ''}${MUTANTS[name].description}`);
    }
  }
  console.log(`${names.length} mutants, ${SAMPLE.length} in --sample`);
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  if (options.list) {
    listMutants();
    return 0;
  }
  const names = options.only ?? (options.sample ? [...SAMPLE] : Object.keys(MUTANTS));
  const log = (line) => process.stderr.write(`${line}\n`);
  const started = Date.now();
  log(`[mutation] the kit against the journal driver: correct + ${names.length} mutant(s), ${options.jobs} at a time${options.bail ? '' : ' (no bail)'}`);

  let reference;
  let invalid = false;
  let done = 0;
  const jobs = [undefined, ...names].map((mutant) => () => runKit(mutant, options).then((run) => ({ mutant, run })));
  const finished = await pool(
    jobs,
    options.jobs,
    ({ mutant, run }) => {
      if (mutant === undefined) {
        reference = run;
        invalid = run.failed > 0 || run.passed === 0 || run.fileErrors.length > 0 || run.timedOut;
        log(`[mutation] correct driver: ${run.passed} passed, ${run.failed} failed, ${run.skipped} skipped (${seconds(run.durationMs)})${invalid ? ' -- INVALID RUN' : ''}`);
        return;
      }
      done++;
      const status = statusOf(run);
      const detail = status === 'killed' ? `by ${run.timedOut ? 'a timeout' : `"${run.failures[0]?.title}"`}` : status === 'error' ? run.fileErrors[0]?.split('\n')[0] : MUTANTS[mutant].description;
      log(`[mutation] [${String(done).padStart(2)}/${names.length}] ${status.padEnd(8)} ${mutant} (${MUTANTS[mutant].kind}, ${seconds(run.durationMs)}) ${detail}`);
    },
    () => invalid,
  );

  const results = finished
    .filter((entry) => entry !== undefined && entry.mutant !== undefined)
    .map(({ mutant, run }) => ({
      name: mutant,
      kind: MUTANTS[mutant].kind,
      description: MUTANTS[mutant].description,
      status: statusOf(run),
      killedBy: run.timedOut ? ['(timeout)'] : run.failures.map((f) => f.title),
      firstFailure: run.failures[0]?.message,
      errors: run.fileErrors,
      passed: run.passed,
      failed: run.failed,
      durationMs: run.durationMs,
    }));
  const killed = results.filter((r) => r.status === 'killed').length;
  const total = names.length;
  const score = total === 0 ? 1 : killed / total;
  const summary = {
    valid: !invalid,
    reference: reference && {
      passed: reference.passed,
      failed: reference.failed,
      skipped: reference.skipped,
      failures: reference.failures,
      errors: reference.fileErrors,
      durationMs: reference.durationMs,
    },
    mode: options.only ? 'only' : options.sample ? 'sample' : 'all',
    requested: names,
    results,
    killed,
    total,
    score,
    minScore: MIN_SCORE,
    durationMs: Date.now() - started,
  };

  const out = options.json ? log : (line) => console.log(line);
  out('');
  if (invalid) {
    out(`INVALID RUN: the correct journal driver must pass every kit case, but it did not (${reference?.failed ?? '?'} failed).`);
    for (const f of reference?.failures ?? []) out(`  - ${f.title}\n      ${f.message}`);
    for (const e of reference?.fileErrors ?? []) out(`  - ${e}`);
    if (reference && reference.failures.length === 0 && reference.fileErrors.length === 0) out(reference.output.slice(-4000));
    out('No mutant result means anything until it does.');
  } else {
    const width = Math.max(0, ...results.map((r) => r.name.length));
    for (const kind of Object.keys(KINDS)) {
      const ofKind = results.filter((r) => r.kind === kind);
      if (ofKind.length === 0) continue;
      out(`${kind} (${ofKind.filter((r) => r.status === 'killed').length}/${ofKind.length} killed)`);
      for (const r of ofKind) {
        const by = r.status === 'killed' ? `${r.killedBy[0]}${r.killedBy.length > 1 ? ` (+${r.killedBy.length - 1} more)` : ''}` : r.status === 'error' ? r.errors[0]?.split('\n')[0] : '';
        out(`  ${r.status.padEnd(8)} ${r.name.padEnd(width)}  ${by}`);
      }
    }
    const survivors = results.filter((r) => r.status !== 'killed');
    if (survivors.length > 0) {
      out('');
      out('Survivors (the kit has no case that catches these bugs):');
      for (const r of survivors) out(`  - ${r.name} [${r.kind}]${r.status === 'error' ? ' (run error)' : ''}: ${r.description}`);
    }
    out('');
    out(
      `mutation score: ${killed}/${total} killed (${(score * 100).toFixed(1)}%), minimum ${MIN_SCORE * 100}%; ` +
        `correct driver: ${reference.passed} cases passed; ${seconds(summary.durationMs)}`,
    );
  }
  if (options.json) process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
  if (invalid) return 2;
  return score >= MIN_SCORE ? 0 : 1;
}

/** killed: a kit case failed (or the run hung); survived: every case passed; error: the run produced no case result. */
function statusOf(run) {
  if (run.failed > 0 || run.timedOut) return 'killed';
  if (run.fileErrors.length > 0 || run.passed === 0) return 'error';
  return 'survived';
}

process.exitCode = await main();
