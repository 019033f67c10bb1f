// Writes the case-group table and the case count of README.md from the built
// kit (dist/), so the numbers are never hand-written.
//   node scripts/readme.mjs          rewrite README.md
//   node scripts/readme.mjs --check  exit 1 when README.md is out of date
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const kit = await import('../dist/index.js');
const readmePath = join(import.meta.dirname, '..', 'README.md');
const START = '<!-- generated:case-groups:start (scripts/readme.mjs) -->';
const END = '<!-- generated:case-groups:end -->';

const exportNames = new Map();
for (const [name, value] of Object.entries(kit)) if (kit.allCaseGroups.includes(value)) exportNames.set(value, name);

const groups = kit.inventory(kit.allCaseGroups);
const total = groups.reduce((sum, group) => sum + group.titles.length, 0);
const cell = (text) => String(text ?? '').replace(/\|/g, '\\|').replace(/\n/g, ' ');
const lines = [
  START,
  `${total} cases per filesystem, plus one case that checks the driver's \`supports\` manifest (on a filesystem that lacks a capability the driver needs: one case that checks the refusal, the rest skipped with the reason). Cases that do not apply to a driver's manifest are registered as skipped with the reason in their title, so they show in the counts. Every group is exported, so you can run a subset with \`groups\`.`,
  '',
  '| export | `describe` title | cases | what it checks |',
  '| --- | --- | --- | --- |',
  ...kit.allCaseGroups.map((group, i) => {
    const inv = groups[i];
    return `| \`${exportNames.get(group) ?? '?'}\` | ${cell(inv.name)} | ${inv.titles.length} | ${cell(inv.description)} |`;
  }),
  END,
];
const generated = lines.join('\n');

const readme = readFileSync(readmePath, 'utf8');
const from = readme.indexOf(START);
const to = readme.indexOf(END);
if (from < 0 || to < from) {
  console.error(`README.md lacks the markers ${START} ... ${END}`);
  process.exit(1);
}
const next = readme.slice(0, from) + generated + readme.slice(to + END.length);
if (process.argv.includes('--check')) {
  if (next !== readme) {
    console.error('conformance/README.md is out of date with the kit: run `pnpm --filter @cache/conformance readme` (node scripts/readme.mjs)');
    process.exit(1);
  }
  console.log(`README.md is up to date: ${total} cases in ${groups.length} groups`);
} else {
  writeFileSync(readmePath, next);
  console.log(`README.md: ${total} cases in ${groups.length} groups`);
}
