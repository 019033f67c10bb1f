/**
 * Every case title names the call it checks (moved here from the old
 * mutants.test.ts, whose broken drivers are now seeded bugs of the mutation
 * suite in ../mutation, scored by mutation-score.test.ts).
 */
import { describe, expect, it } from 'vitest';
import { allCaseGroups, inventory } from '../src/index.js';

describe('case titles', () => {
  it('every case title names the call it checks', () => {
    // FULL_SUPPORTS (the default): every case is registered to run, none skipped.
    for (const group of inventory(allCaseGroups)) {
      expect(group.titles.length, `group "${group.name}" registers cases`).toBeGreaterThan(0);
      for (const title of group.titles) expect(title, 'titles name the method call they check').toMatch(/\w+\(.*\)/);
    }
  });
});
