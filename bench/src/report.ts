import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** How a figure's number reads: throughput (higher is better) or time / count (lower is better). */
export type Unit = 'MiB/s' | 'ops/s' | 'ms' | 'x' | 'calls';

export interface Measured {
  /** What was measured, e.g. `cacheImage` or `raw pipeline + fsync`. */
  label: string;
  value: number;
  unit: Unit;
  /** The wall-clock samples (ms) the value is the median of. */
  samples?: number[];
  /** Other statistics (e.g. tinybench's latency percentiles). */
  stats?: Record<string, number>;
}

/** A goal on a figure's ratio (or, for counts, on the value itself). */
export interface Goal {
  on: 'ratio' | 'value';
  op: '>=' | '<=' | '==';
  target: number;
}

/** One line of the results: our figure beside its baseline, measured in the same run on the same filesystem. */
export interface FigureResult {
  /** 1..FIGURES, as numbered in bench/README.md. */
  figure: number;
  title: string;
  fs: string;
  driver: string | null;
  ours: Measured;
  baseline: Measured | null;
  /**
   * Our speed relative to the baseline's: ours/baseline for throughputs,
   * baseline/ours for times (so > 1 always means faster than the baseline).
   * For scaling figures (unit `x`) it is the value itself. With
   * `ratioKind: 'time'` it is our time over the baseline's instead (< 1 is
   * faster): the HTTP figures' goals are slowdowns ("≤ 1.1 × the baseline's time").
   */
  ratio: number | null;
  /** `speed` (the default): ratio > 1 is faster than the baseline; `time`: ratio = our time / the baseline's, < 1 is faster. */
  ratioKind?: 'speed' | 'time';
  goal: Goal | null;
  /** Whether the goal is met; null without a goal. */
  met: boolean | null;
  note?: string;
}

const higherIsBetter = (unit: Unit) => unit === 'MiB/s' || unit === 'ops/s';

/**
 * Builds a result: computes the ratio (unless given; `null` for none) and
 * checks the goal.
 */
export function figure(
  fields: Omit<FigureResult, 'ratio' | 'met'> & { ratio?: number | null },
): FigureResult {
  let ratio = fields.ratio ?? null;
  if (fields.ratio === undefined && fields.baseline !== null && fields.ours.unit === fields.baseline.unit) {
    const speedup = higherIsBetter(fields.ours.unit)
      ? fields.ours.value / fields.baseline.value
      : fields.baseline.value / fields.ours.value;
    ratio = fields.ratioKind === 'time' ? 1 / speedup : speedup;
  }
  let met: boolean | null = null;
  if (fields.goal !== null) {
    const x = fields.goal.on === 'ratio' ? ratio : fields.ours.value;
    met =
      x === null || !Number.isFinite(x)
        ? false
        : fields.goal.op === '>='
          ? x >= fields.goal.target
          : fields.goal.op === '<='
            ? x <= fields.goal.target
            : x === fields.goal.target;
  }
  return { ...fields, ratio, met };
}

export function formatValue(m: Measured): string {
  switch (m.unit) {
    case 'MiB/s':
      return `${m.value.toFixed(0)} MiB/s`;
    case 'ops/s':
      return `${Math.round(m.value).toLocaleString('en-US')} ops/s`;
    case 'ms':
      return m.value >= 1000 ? `${(m.value / 1000).toFixed(2)} s` : `${m.value.toFixed(1)} ms`;
    case 'x':
      return `${m.value.toFixed(2)}×`;
    case 'calls':
      return `${m.value} call${m.value === 1 ? '' : 's'}`;
  }
}

export function formatGoal(goal: Goal | null, ratioKind: FigureResult['ratioKind'] = 'speed'): string {
  if (goal === null) return '—';
  const op = goal.op === '>=' ? '≥' : goal.op === '<=' ? '≤' : '=';
  if (goal.on === 'value') return `${op} ${goal.target}`;
  return ratioKind === 'time' ? `time ÷ baseline ${op} ${goal.target}` : `ratio ${op} ${goal.target}`;
}

function formatRatio(r: FigureResult): string {
  return r.ratio === null ? '—' : r.ratio.toFixed(2);
}

function verdict(r: FigureResult): string {
  return r.met === null ? '' : r.met ? 'met' : 'NOT MET';
}

/** One console line per figure, printed as soon as it is measured. */
export function printFigure(r: FigureResult): void {
  const who = r.driver === null ? '' : ` (${r.driver})`;
  const base = r.baseline === null ? '' : ` | ${r.baseline.label}: ${formatValue(r.baseline)}`;
  const ratio = r.ratio === null ? '' : r.ratioKind === 'time' ? ` | time ÷ baseline ${formatRatio(r)}` : ` | ratio ${formatRatio(r)}`;
  const goal = r.goal === null ? '' : ` | goal ${formatGoal(r.goal, r.ratioKind)}: ${verdict(r)}`;
  const note = r.note === undefined ? '' : `  [${r.note}]`;
  const label = r.title.includes(r.ours.label) ? '' : `${r.ours.label}: `;
  process.stdout.write(`  [${r.fs}] ${r.figure}. ${r.title}${who}: ${label}${formatValue(r.ours)}${base}${ratio}${goal}${note}\n`);
}

/** The bench's PostgreSQL server (figures 4, 5 and 8), or why there was none. */
export type PostgresEnvironment =
  | {
      version: string;
      /** The `-c` settings it ran with. */
      settings: Record<string, string>;
      /** Where its data directory was (the OS temp dir, whatever the filesystems measured). */
      dataDirectory: { path: string; fstype: string; options: string };
    }
  | { skipped: string };

/** `1000` → `1k`, `10000` → `10k`, `500` → `500`. */
export const countLabel = (n: number) => (n >= 1000 && n % 1000 === 0 ? `${n / 1000}k` : String(n));

export interface Environment {
  date: string;
  quick: boolean;
  node: string;
  kernel: string;
  cpu: string;
  cores: number;
  memoryGiB: number;
  loadAverageAtStart: number[];
  loadAverageAtEnd: number[];
  filesystems: { name: string; fstype: string; options: string }[];
  warnings: string[];
  /** Seconds from the start of `pnpm bench`'s node process until the results were written (teardown is not included). */
  wallSeconds: number;
  sizes: Record<string, unknown>;
  /** How much other processes disturbed the run (see measure.ts). */
  machineNoise: { waitedMs: number; gaveUp: number; repeated: number; keptDisturbed: number };
  /** Present when a postgres figure was asked for. */
  postgres?: PostgresEnvironment;
}

export interface Results {
  environment: Environment;
  figures: FigureResult[];
}


function cell(r: FigureResult): string {
  const mark = r.met === null ? '' : r.met ? ' ✅' : ' ❌';
  if (r.baseline === null) return `${formatValue(r.ours)}${mark}`;
  if (r.ours.unit === 'x') return `${formatValue(r.ours)} (raw ${formatValue(r.baseline)})${mark}`;
  if (r.ratio === null) return `${formatValue(r.ours)} (${r.baseline.label}: ${formatValue(r.baseline)})${mark}`;
  return `${formatValue(r.ours)} vs ${formatValue(r.baseline)} → **${formatRatio(r)}**${mark}`;
}

/**
 * latest.md: the environment, then a summary with one row per figure and
 * driver and one column per filesystem (what bench/README.md shows), then
 * every figure with its baseline's name and the notes.
 */
export function toMarkdown(results: Results): string {
  const env = results.environment;
  const lines: string[] = [];
  const noise = env.machineNoise;
  lines.push(
    `Measured ${env.date.slice(0, 16).replace('T', ' ')} UTC${env.quick ? ' (**--quick**: reduced sizes)' : ''} on ${env.cores} × ${env.cpu}, ` +
      `${env.memoryGiB} GiB, Linux ${env.kernel}, Node ${env.node}; whole run ${env.wallSeconds.toFixed(0)} s. ` +
      `Load average at start ${env.loadAverageAtStart.map((x) => x.toFixed(2)).join(' ')}; ` +
      `waited ${(noise.waitedMs / 1000).toFixed(0)} s for other processes to go quiet, repeated ${noise.repeated} disturbed run(s), kept ${noise.keptDisturbed} disturbed.`,
  );
  lines.push('');
  lines.push('| filesystem | type | mount options |');
  lines.push('| --- | --- | --- |');
  for (const fs of env.filesystems) lines.push(`| ${fs.name} | ${fs.fstype} | \`${fs.options}\` |`);
  lines.push('');
  if (env.postgres !== undefined) {
    if ('skipped' in env.postgres) {
      lines.push(`PostgreSQL: none, the postgres figures were skipped (${env.postgres.skipped}).`);
    } else {
      const pg = env.postgres;
      lines.push(
        `PostgreSQL ${pg.version} (\`@cache/postgres-testing\`: one throwaway server on 127.0.0.1 for the run, data directory on ` +
          `${pg.dataDirectory.fstype} whatever the filesystem measured), ${Object.entries(pg.settings).map(([k, v]) => `\`${k}=${v}\``).join(', ')}.`,
      );
    }
    lines.push('');
  }
  lines.push('Each cell: ours vs the baseline measured in the same run on the same filesystem → **ratio** (our speed / the baseline\'s: > 1 is faster). ' +
    'Prune scaling: time at the large size / time at the small size (raw unlinks in brackets); ' +
    'cluster listing scaling (8): the same for getClusterImages() (the raw GROUP BY in brackets). ' +
    'HTTP figures (9-11): the ratio is our time ÷ the baseline\'s time instead (< 1 is faster; goal ≤ 1.1).');
  lines.push('');
  const fsNames = env.filesystems.map((fs) => fs.name);
  const rows = new Map<string, { r: FigureResult; cells: Map<string, FigureResult> }>();
  for (const r of results.figures) {
    const key = `${r.figure}\0${r.title}\0${r.driver ?? ''}`;
    let row = rows.get(key);
    if (row === undefined) {
      row = { r, cells: new Map() };
      rows.set(key, row);
    }
    row.cells.set(r.fs, r);
  }
  lines.push(`| # | figure | driver | ${fsNames.join(' | ')} | goal |`);
  lines.push(`| --- | --- | --- | ${fsNames.map(() => '---').join(' | ')} | --- |`);
  for (const { r, cells } of rows.values()) {
    const columns = fsNames.map((name) => {
      const c = cells.get(name);
      return c === undefined ? '—' : cell(c);
    });
    lines.push(`| ${r.figure} | ${r.title} | ${r.driver ?? '—'} | ${columns.join(' | ')} | ${formatGoal(r.goal, r.ratioKind)} |`);
  }
  lines.push('');
  lines.push('<details><summary>Every figure, with its baseline</summary>');
  lines.push('');
  lines.push('| # | figure | fs | driver | ours | baseline | ratio | goal | |');
  lines.push('| --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const r of results.figures) {
    const base = r.baseline === null ? '—' : `${formatValue(r.baseline)} (${r.baseline.label})`;
    const mark = r.met === null ? '' : r.met ? '✅' : '❌';
    lines.push(
      `| ${r.figure} | ${r.title} | ${r.fs} | ${r.driver ?? '—'} | ${formatValue(r.ours)} (${r.ours.label}) | ${base} | ${formatRatio(r)} | ${formatGoal(r.goal, r.ratioKind)} | ${mark} |`,
    );
  }
  lines.push('');
  lines.push('</details>');
  const notes = results.figures.filter((r) => r.note !== undefined);
  if (notes.length > 0 || env.warnings.length > 0) {
    lines.push('');
    for (const warning of env.warnings) lines.push(`- ${warning}`);
    for (const r of notes) lines.push(`- ${r.figure}. ${r.title} (${r.fs}${r.driver === null ? '' : `, ${r.driver}`}): ${r.note}`);
  }
  return `${lines.join('\n')}\n`;
}

/** Writes latest.json and latest.md into `dir`. */
export function writeResults(dir: string, results: Results): { json: string; markdown: string } {
  mkdirSync(dir, { recursive: true });
  const json = join(dir, 'latest.json');
  const markdown = join(dir, 'latest.md');
  writeFileSync(json, `${JSON.stringify(results, null, 2)}\n`);
  writeFileSync(markdown, toMarkdown(results));
  return { json, markdown };
}
