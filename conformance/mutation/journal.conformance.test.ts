// The conformance kit (from source, as it is now) against the journal
// driver, with the bug named by KIT_MUTANT (none when unset). Run by
// mutation/run.mjs, one vitest process per mutant; not part of `pnpm test`.
import { tmpdir } from 'node:os';
import { allCaseGroups, checksumCases, describeDriverConformance, imageIdCases } from '../src/index.js';
// @ts-expect-error -- plain JS module with JSDoc types, outside the TS project.
import { createDriver } from './journal-driver.mjs';

// Every case group of the kit, with the two slowest that catch few metadata bugs (facade streams
// with digests, ~3 s; hostile ids, ~1 s) moved last: a mutant run stops at its first failing case
// (--bail=1), so most mutants are killed before them.
const LAST = new Set([checksumCases, imageIdCases]);
const groups = [...allCaseGroups.filter((group) => !LAST.has(group)), ...allCaseGroups.filter((group) => LAST.has(group))];

describeDriverConformance({
  name: 'journal',
  create: (cacheDir: string) => createDriver(cacheDir),
  driverModule: new URL('./journal-driver.mjs', import.meta.url),
  groups,
  // The OS temp dir only (run.mjs points KIT_MUTATION_ROOT at a fresh directory per run), whatever CACHE_TEST_FILESYSTEMS says.
  filesystems: [{ name: 'os-tmp', root: process.env.KIT_MUTATION_ROOT ?? tmpdir(), fromEnv: false }],
});
