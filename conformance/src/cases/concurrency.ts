import { expect } from 'vitest';
import { runChild, type ChildOp } from '../child.js';
import { codeOf, makeBytes, readImage, writeImage } from '../helpers.js';
import type { CaseGroup } from '../kit.js';
import { ErrorCodes } from './common.js';
import { childCase, expectConsistent } from './shared.js';

/** `ok`, or the error's code. */
async function outcome(fn: () => Promise<unknown>): Promise<string> {
  try {
    await fn();
    return 'ok';
  } catch (error) {
    return String(codeOf(error) ?? (error as Error).message);
  }
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/**
 * Concurrency: hooks called concurrently within one process, and several
 * processes on one directory. No entry lost, no metadata left for absent
 * files after clean(), hit counts exact within a process and, for drivers
 * that declare `crossProcessHits: 'exact'`, across processes too.
 */
export const concurrencyCases: CaseGroup = {
  name: 'concurrency',
  description:
    '110 reads, commits (two writers of some ids) and deletes at once in one process: every committed entry is there with its bytes, every hit counted, nothing left of the deleted after `clean()`. Four processes on one directory (the driver loaded from `driverModule`) commit, read shared entries and delete at once: no entry lost, hits exact for `crossProcessHits: \'exact\'`, never more than the true count and never negative for `\'best-effort\'`.',
  register(kit) {
    kit.it('openForRead(id), openForWrite(id) and deleteCachedImage(id), 110 at once in one process: no entry lost, every hit counted, nothing left of the deleted', async ({ driver }) => {
      const shared = range(10).map((i) => `s${i}`);
      const doomed = range(10).map((i) => `d${i}`);
      const fresh = range(30).map((i) => `n${i}`);
      for (const id of [...shared, ...doomed]) await writeImage(driver, id, makeBytes(1000, id.length + Number(id.slice(1))));
      const ops: Promise<[string, string]>[] = [];
      for (const id of shared) for (let r = 0; r < 4; r++) ops.push(outcome(() => readImage(driver, id)).then((o) => [`read ${id}`, o]));
      for (const id of fresh) ops.push(outcome(() => writeImage(driver, id, makeBytes(2000, 100 + Number(id.slice(1))))).then((o) => [`write ${id}`, o]));
      // A second writer of ten of the new ids, with the same bytes: one of the two is refused while the other writes, or both commit one after the other.
      for (const id of fresh.slice(0, 10)) ops.push(outcome(() => writeImage(driver, id, makeBytes(2000, 100 + Number(id.slice(1))))).then((o) => [`write again ${id}`, o]));
      for (const id of doomed) ops.push(outcome(() => driver.deleteCachedImage(id)).then((o) => [`delete ${id}`, o]));
      for (const id of doomed) for (let r = 0; r < 2; r++) ops.push(outcome(() => readImage(driver, id)).then((o) => [`read ${id}`, o]));
      const outcomes = await Promise.all(ops);
      expect(outcomes).toHaveLength(110);
      // Two writers of one id race: the I/O behind them finishes in any order,
      // so either may be the one refused, but never both.
      const twoWriters = new Set(fresh.slice(0, 10));
      for (const [what, result] of outcomes) {
        const id = what.split(' ').at(-1) as string;
        const allowed = what.startsWith('write') && twoWriters.has(id)
          ? ['ok', ErrorCodes.IMAGE_BEING_CACHED]
          : what.startsWith('read d')
            ? ['ok', ErrorCodes.IMAGE_NOT_CACHED]
            : ['ok'];
        expect(allowed, `${what} -> ${result}`).toContain(result);
      }
      for (const id of twoWriters) {
        const writes = outcomes.filter(([what]) => what === `write ${id}` || what === `write again ${id}`).map(([, result]) => result);
        expect(writes, `two writers of ${id} at once: at least one commits`).toContain('ok');
      }
      for (const id of shared) expect(await driver.getHitCount(id), `hits of ${id}: 4 concurrent reads in one process`).toBe(4);
      for (const id of fresh) {
        expect((await readImage(driver, id)).equals(makeBytes(2000, 100 + Number(id.slice(1)))), `bytes of ${id}`).toBe(true);
      }
      for (const id of doomed) expect(await driver.isCached(id), `${id} was deleted`).toBe(false);
      await driver.clean();
      expect(await driver.clean(), 'after clean(): no record left for an absent file, none to adopt').toMatchObject({ orphanRecords: 0, adoptedFiles: 0 });
      for (const id of doomed.slice(0, 3)) {
        await writeImage(driver, id, makeBytes(10, 1));
        expect(await driver.getHitCount(id), `a re-cached ${id} starts at 0 hits`).toBe(0);
      }
      expect((await driver.getCachedImages()).map((i) => i.imageId)).toEqual([...doomed.slice(0, 3), ...fresh, ...shared].sort());
      await expectConsistent(driver, 'after the concurrent burst');
    });

    const exact = kit.supports.crossProcessHits === 'exact';
    const processes = 4;
    const readsEach = 5;
    childCase(
      kit,
      `openForWrite(id), openForRead(id) and deleteCachedImage(id) from ${processes} processes on one directory at once: no entry lost, nothing left of the deleted, hits of shared entries ${exact ? 'exact' : 'never more than the true count, never negative'} (crossProcessHits: ${kit.supports.crossProcessHits})`,
      async ({ driver, dir }, driverModule) => {
        const shared = range(5).map((i) => `shared-${i}`);
        for (const id of shared) await writeImage(driver, id, makeBytes(1000, 500 + Number(id.slice(-1))));
        for (const k of range(processes)) for (const j of range(2)) await writeImage(driver, `del-${k}-${j}`, makeBytes(300, k * 10 + j));
        const program = (k: number): ChildOp[] => [
          ...range(5).map((j): ChildOp => ({ op: 'write', id: `c${k}-${j}`, size: 1500 + j, seed: k * 100 + j })),
          ...shared.flatMap((id) => range(readsEach).map((): ChildOp => ({ op: 'read', id }))),
          ...range(2).map((j): ChildOp => ({ op: 'delete', id: `del-${k}-${j}` })),
          { op: 'write', id: 'race', size: 5000, seed: 777 },
        ];
        const results = await Promise.all(range(processes).map((k) => runChild(driverModule, dir, { mode: 'parallel', ops: program(k) })));
        for (const [k, outcomes] of results.entries()) {
          const ops = program(k);
          for (const [i, result] of outcomes.entries()) {
            const op = ops[i] as ChildOp;
            const allowed = op.id === 'race' ? ['ok', ErrorCodes.IMAGE_BEING_CACHED] : ['ok'];
            expect(allowed, `process ${k}: ${op.op} ${op.id} -> ${result}`).toContain(result);
          }
        }
        for (const k of range(processes)) {
          for (const j of range(5)) {
            const id = `c${k}-${j}`;
            expect(await driver.isCached(id), `${id}, committed by process ${k}, is there`).toBe(true);
            expect((await readImage(driver, id)).equals(makeBytes(1500 + j, k * 100 + j)), `bytes of ${id}`).toBe(true);
          }
          for (const j of range(2)) expect(await driver.isCached(`del-${k}-${j}`)).toBe(false);
        }
        expect((await readImage(driver, 'race')).equals(makeBytes(5000, 777)), 'the raced id holds a whole copy').toBe(true);
        const truth = processes * readsEach;
        for (const id of shared) {
          const hits = await driver.getHitCount(id);
          if (exact) expect(hits, `hits of ${id}: ${processes} processes x ${readsEach} reads (crossProcessHits: exact)`).toBe(truth);
          else {
            expect(hits, `hits of ${id}: never negative`).toBeGreaterThanOrEqual(0);
            expect(hits, `hits of ${id}: never more than the ${truth} reads made`).toBeLessThanOrEqual(truth);
          }
        }
        await driver.clean();
        expect(await driver.clean(), 'after clean(): no record left for an absent file, none to adopt').toMatchObject({ orphanRecords: 0, adoptedFiles: 0 });
        await writeImage(driver, 'del-0-0', makeBytes(10, 3));
        expect(await driver.getHitCount('del-0-0'), 'a deleted id cached again starts at 0 hits').toBe(0);
        await expectConsistent(driver, `after ${processes} processes`);
      },
    );
  },
};
