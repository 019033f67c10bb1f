// The Grafana dashboard shipped in the package (grafana/image-cache.json) is valid: it parses, has the fields
// Grafana needs to import it, and every PromQL expression (and variable query) names only metrics that a
// running server's /metrics exports; every exported metric is on it.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { METRIC_NAMES } from '../src/index.js';
import { imageBytes, startHarness, type Harness } from './helpers.js';

const DASHBOARD = join(import.meta.dirname, '..', 'grafana', 'image-cache.json');

interface Target {
  refId?: unknown;
  expr?: unknown;
  datasource?: { type?: unknown; uid?: unknown };
}
interface Panel {
  id?: unknown;
  type?: unknown;
  title?: unknown;
  gridPos?: { x?: unknown; y?: unknown; w?: unknown; h?: unknown };
  datasource?: { type?: unknown; uid?: unknown };
  targets?: Target[];
  panels?: Panel[];
}
interface Dashboard {
  title?: unknown;
  uid?: unknown;
  schemaVersion?: unknown;
  panels?: Panel[];
  templating?: { list?: { name?: unknown; type?: unknown; query?: unknown; definition?: unknown; datasource?: { uid?: unknown } }[] };
}

const PROMQL_KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'and', 'or', 'unless', 'offset', 'inf', 'nan']);

/**
 * The metric names a PromQL expression selects: identifiers that are not
 * functions (followed by `(`), keywords, label names (inside `{}` or a
 * `by (...)` list), strings, ranges or Grafana variables.
 */
export function metricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""') // strings (label values, label_values regexes)
    .replace(/\{[^}]*\}/g, ' ') // label matchers
    .replace(/\[[^\]]*\]/g, ' ') // ranges [5m], [$__rate_interval]
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ') // grouping label lists
    .replace(/\$\{?\w+\}?/g, ' ') // Grafana variables
    .replace(/(?<![A-Za-z0-9_:])\d[\d.]*(?:e[+-]?\d+)?(?:ms|[smhdwy])*/gi, ' '); // numbers and durations (0.95, 1e-9, 1h30m)
  const names = new Set<string>();
  for (const match of stripped.matchAll(/[A-Za-z_:][A-Za-z0-9_:]*/g)) {
    const name = match[0];
    const after = stripped.slice((match.index ?? 0) + name.length).trimStart();
    if (after.startsWith('(') || PROMQL_KEYWORDS.has(name.toLowerCase())) continue;
    names.add(name);
  }
  return [...names];
}

/** `label_values(metric{...}, label)` (a variable query): the metric. */
function variableMetrics(query: string): string[] {
  const match = /^label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)/.exec(query.trim());
  return match?.[1] === undefined ? [] : [match[1]];
}

function allPanels(panels: Panel[]): Panel[] {
  return panels.flatMap((panel) => [panel, ...allPanels(panel.panels ?? [])]);
}

let harness: Harness;
let exported: Set<string>;
let dashboard: Dashboard;

beforeAll(async () => {
  dashboard = JSON.parse(await readFile(DASHBOARD, 'utf8')) as Dashboard;
  // A running server that has answered a miss, a hit and an error, so that every labelled series exists too.
  harness = await startHarness();
  harness.origin.images.set('x', { kind: 'ok', data: imageBytes('x', 1000) });
  for (const path of ['/images/x', '/images/x', '/images/missing']) await (await fetch(`${harness.url}${path}`)).arrayBuffer();
  const text = await (await fetch(`${harness.url}/metrics`)).text();
  exported = new Set<string>();
  for (const [, name, type] of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    exported.add(name as string);
    // A histogram's series: <name>_bucket, _sum, _count (a summary's: _sum, _count).
    if (type === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) exported.add(`${name}${suffix}`);
    if (type === 'summary') for (const suffix of ['_sum', '_count']) exported.add(`${name}${suffix}`);
  }
});

afterAll(async () => {
  await harness?.close();
});

describe('grafana/image-cache.json', () => {
  it('the expression reader finds metric names, and only them', () => {
    expect(
      metricNames('histogram_quantile(0.95, sum by (le, route) (rate(image_cache_http_request_duration_seconds_bucket{job=~"$job", route="/images/:id"}[$__rate_interval])))'),
    ).toEqual(['image_cache_http_request_duration_seconds_bucket']);
    expect(metricNames('sum(rate(a_total[5m])) / (sum(rate(a_total[5m])) + sum without (x) (b_total offset 1h))')).toEqual(['a_total', 'b_total']);
    expect(metricNames('rate(image_cache_nope_total{code="x"}[$__range])').filter((name) => !exported.has(name))).toEqual(['image_cache_nope_total']);
  });

  it('has what Grafana needs to import it: title, uid, schemaVersion, a Prometheus data source variable, panels with targets and grid positions', () => {
    expect(typeof dashboard.title).toBe('string');
    expect(dashboard.uid).toMatch(/^[A-Za-z0-9_-]{1,40}$/);
    expect(typeof dashboard.schemaVersion).toBe('number');
    expect(dashboard.schemaVersion as number).toBeGreaterThanOrEqual(36);

    const variables = dashboard.templating?.list ?? [];
    const datasource = variables.find((variable) => variable.type === 'datasource');
    expect(datasource).toMatchObject({ name: 'datasource', query: 'prometheus' });
    for (const variable of variables.filter((v) => v.type === 'query')) expect(variable.datasource?.uid).toBe('${datasource}');

    const panels = allPanels(dashboard.panels ?? []);
    const ids = panels.map((panel) => panel.id);
    expect(new Set(ids).size).toBe(ids.length);
    expect(ids.every((id) => Number.isInteger(id))).toBe(true);
    const queried = panels.filter((panel) => panel.type !== 'row');
    expect(queried.length).toBeGreaterThanOrEqual(10);
    for (const panel of panels) {
      const { x, y, w, h } = panel.gridPos ?? {};
      expect([x, y, w, h].every((n) => Number.isInteger(n) && (n as number) >= 0), `gridPos of ${String(panel.title)}`).toBe(true);
      expect((x as number) + (w as number), `${String(panel.title)} fits in 24 columns`).toBeLessThanOrEqual(24);
    }
    for (const panel of queried) {
      expect(typeof panel.title).toBe('string');
      expect(typeof panel.type).toBe('string');
      expect(panel.datasource, String(panel.title)).toEqual({ type: 'prometheus', uid: '${datasource}' });
      const targets = panel.targets ?? [];
      expect(targets.length, `${String(panel.title)} has targets`).toBeGreaterThan(0);
      const refIds = targets.map((target) => target.refId);
      expect(new Set(refIds).size, `refIds of ${String(panel.title)}`).toBe(refIds.length);
      for (const target of targets) {
        expect(typeof target.expr === 'string' && target.expr.trim() !== '', `expr in ${String(panel.title)}`).toBe(true);
        expect(target.datasource?.uid).toBe('${datasource}');
        // Balanced brackets: a typo there is a query Grafana shows as an error.
        const expr = target.expr as string;
        for (const [open, close] of [['(', ')'], ['{', '}'], ['[', ']']] as const) {
          expect(expr.split(open).length, `${open}${close} in ${expr}`).toBe(expr.split(close).length);
        }
      }
    }
  });

  it('every expression and variable query names only metrics a running server exports, and every exported metric is on it', () => {
    expect(exported.size).toBeGreaterThan(Object.keys(METRIC_NAMES).length); // the histogram's series are there
    const used = new Set<string>();
    for (const panel of allPanels(dashboard.panels ?? [])) {
      for (const target of panel.targets ?? []) {
        const names = metricNames(target.expr as string);
        expect(names.length, `a metric in ${String(target.expr)}`).toBeGreaterThan(0);
        for (const name of names) {
          expect(exported.has(name), `${name} (in "${String(panel.title)}") is exported by /metrics`).toBe(true);
          used.add(name);
        }
      }
    }
    for (const variable of dashboard.templating?.list ?? []) {
      if (variable.type !== 'query') continue;
      const query = typeof variable.query === 'string' ? variable.query : String((variable.query as { query?: unknown })?.query);
      const names = variableMetrics(query);
      expect(names.length, `a metric in ${query}`).toBe(1);
      for (const name of names) expect(exported.has(name), `${name} (variable ${String(variable.name)}) is exported`).toBe(true);
    }
    const base = (name: string) => name.replace(/_(bucket|sum|count)$/, '');
    const missing = Object.values(METRIC_NAMES).filter((name) => ![...used].some((u) => u === name || base(u) === name));
    expect(missing, 'exported metrics the dashboard does not show').toEqual([]);
  });
});
