/**
 * The kit measuring itself: `node mutation/run.mjs --sample --json` runs the
 * kit against a correct third-party-style driver (mutation/journal-driver.mjs)
 * and against a fixed sample of its seeded bugs, one covering every kind
 * (see mutation/README.md). The correct driver must pass every case; the kit
 * must kill at least 90% of the sampled bugs, including the behaviours of the
 * five broken drivers of the kit's first self-test.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

interface MutantResult {
  name: string;
  kind: string;
  description: string;
  status: 'killed' | 'survived' | 'error';
  killedBy: string[];
  errors: string[];
}

interface MutationReport {
  valid: boolean;
  reference: { passed: number; failed: number; skipped: number; failures: { title: string; message: string }[]; errors: string[] } | undefined;
  mode: string;
  requested: string[];
  results: MutantResult[];
  killed: number;
  total: number;
  score: number;
  minScore: number;
  durationMs: number;
}

const packageDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const TIMEOUT = 5 * 60_000;

/** The seeded bugs that stand for the five hand-written broken drivers of the old mutants.test.ts. */
const FIRST_SELF_TEST: Record<string, string> = {
  'hit-op-typo': 'a driver that never records hits',
  'hit-on-open': 'a driver that counts abandoned reads as hits',
  'positional-metadata-join': 'a driver whose metadata does not follow the id order of the listing',
  'fast-path-skips-guard': 'a driver that does not validate ids',
  'access-age-not-time': 'a driver with a reversed recency order',
};

/** The runner while it runs: stopped (SIGTERM, which ends its vitest runs too) if the hook times out. */
let runner: ChildProcess | undefined;

function runSample(): Promise<{ report: MutationReport | undefined; code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['mutation/run.mjs', '--sample', '--json'], { cwd: packageDir, stdio: ['ignore', 'pipe', 'pipe'] });
    runner = child;
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (text: string) => (stdout += text));
    child.stderr.setEncoding('utf8').on('data', (text: string) => (stderr += text));
    child.once('error', reject);
    child.once('close', (code) => {
      runner = undefined;
      let report: MutationReport | undefined;
      try {
        report = JSON.parse(stdout) as MutationReport;
      } catch {
        report = undefined;
      }
      resolve({ report, code, stdout, stderr });
    });
  });
}

describe('mutation suite (node mutation/run.mjs --sample)', () => {
  let run: Awaited<ReturnType<typeof runSample>>;
  let report: MutationReport;

  beforeAll(async () => {
    run = await runSample();
    if (run.report === undefined) throw new Error(`mutation/run.mjs printed no JSON report (exit ${run.code}):\n${run.stderr.slice(-6000)}`);
    report = run.report;
    const score = `mutation score: ${report.killed}/${report.total} sampled seeded bugs killed (${(report.score * 100).toFixed(1)}%, minimum ${report.minScore * 100}%) in ${(report.durationMs / 1000).toFixed(0)}s`;
    console.log(score);
    for (const r of report.results.filter((x) => x.status !== 'killed')) console.log(`  survivor ${r.name} [${r.kind}]: ${r.description}`);
  }, TIMEOUT);

  afterAll(() => {
    if (runner !== undefined && runner.exitCode === null) runner.kill('SIGTERM');
  });

  it('the correct journal driver passes every case of the kit (otherwise no mutant result means anything)', () => {
    const failures = (report.reference?.failures ?? []).map((f) => `${f.title}: ${f.message}`);
    expect([...failures, ...(report.reference?.errors ?? [])], 'cases the correct driver failed').toEqual([]);
    expect(report.valid).toBe(true);
    expect(report.reference?.passed ?? 0).toBeGreaterThan(0);
  });

  it('lists a result for every sampled seeded bug, and the sample covers every kind', () => {
    expect(report.mode).toBe('sample');
    expect(report.results.map((r) => r.name)).toEqual(report.requested);
    expect(report.total).toBe(report.requested.length);
    const errors = report.results.filter((r) => r.status === 'error').map((r) => `${r.name}: ${r.errors.join('; ')}`);
    expect(errors, 'runs that produced no case result').toEqual([]);
    const kinds = new Set(report.results.map((r) => r.kind));
    expect([...kinds].sort()).toEqual(['concurrency', 'deletion', 'digest', 'identity', 'lifecycle', 'lru', 'persistence', 'protocol', 'reconcile', 'small-write']);
  });

  it('kills the seeded bugs that stand for the five broken drivers of the kit\'s first self-test', () => {
    const status = new Map(report.results.map((r) => [r.name, r.status]));
    for (const [name, what] of Object.entries(FIRST_SELF_TEST)) expect(status.get(name), `${name} (${what})`).toBe('killed');
  });

  it('kills at least 90% of the sampled seeded bugs (score = killed / sampled)', () => {
    const survivors = report.results.filter((r) => r.status !== 'killed').map((r) => `${r.name} [${r.kind}]: ${r.description}`);
    expect(report.score, `survivors:\n${survivors.join('\n')}`).toBeGreaterThanOrEqual(report.minScore);
    expect(report.minScore).toBe(0.9);
    expect(run.code, 'run.mjs exit status').toBe(0);
  });
});
