import { spawnSync } from 'node:child_process';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  BOOT_ID,
  claimAbandonedJournals,
  CommitGroup,
  normalizeDurability,
  normalizeSyncInterval,
  RelaxedWindow,
} from '../src/durability.js';
import { tempDir } from './helpers.js';

/** A promise with its resolve function outside. */
function deferred<T>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

describe('CommitGroup (group commit)', () => {
  it('runs the first item at once and gathers the ones that arrive meanwhile into the next batch', async () => {
    const batches: string[][] = [];
    const gates: { resolve: (errors: (Error | undefined)[]) => void }[] = [];
    const group = new CommitGroup<string>((items) => {
      batches.push([...items]);
      const gate = deferred<(Error | undefined)[]>();
      gates.push(gate);
      return gate.promise;
    });
    const settled: string[] = [];
    const a = group.add('a').then(() => settled.push('a'));
    expect(batches).toEqual([['a']]);
    const b = group.add('b').then(() => settled.push('b'));
    const c = group.add('c').then(
      () => settled.push('c'),
      (error: Error) => settled.push(`c failed: ${error.message}`),
    );
    expect(batches, 'b and c wait for the batch that runs').toEqual([['a']]);
    gates[0]?.resolve([undefined]);
    await a;
    expect(settled).toEqual(['a']);
    await Promise.resolve();
    expect(batches).toEqual([['a'], ['b', 'c']]);
    gates[1]?.resolve([undefined, new Error('no row')]);
    await Promise.all([b, c]);
    expect(settled).toEqual(['a', 'b', 'c failed: no row']);
  });

  it('fails every item of a batch whose flush throws, and goes on with the next', async () => {
    let calls = 0;
    const group = new CommitGroup<number>(async (items) => {
      calls++;
      if (calls === 1) throw new Error('fsync failed');
      return items.map(() => undefined);
    });
    await expect(group.add(1)).rejects.toThrow('fsync failed');
    await expect(group.add(2)).resolves.toBeUndefined();
    expect(calls).toBe(2);
  });
});

describe('durability options', () => {
  it('accepts strict and relaxed (default strict), and intervals >= 0 (default 5000)', () => {
    expect(normalizeDurability(undefined)).toBe('strict');
    expect(normalizeDurability('relaxed')).toBe('relaxed');
    expect(normalizeSyncInterval(undefined)).toBe(5000);
    expect(normalizeSyncInterval(0)).toBe(0);
  });
  it.each([['fast'], [''], [1], [null]])('refuses durability %j with CACHE_INVALID_ARGUMENT', (value) => {
    expect(() => normalizeDurability(value)).toThrow(expect.objectContaining({ code: 'CACHE_INVALID_ARGUMENT' }));
  });
  it.each([[-1], [Number.NaN], [Number.POSITIVE_INFINITY], ['5s']])('refuses sync interval %j with CACHE_INVALID_ARGUMENT', (value) => {
    expect(() => normalizeSyncInterval(value)).toThrow(expect.objectContaining({ code: 'CACHE_INVALID_ARGUMENT' }));
  });
});

describe('journals of relaxed windows', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => {
    ({ dir, cleanup } = await tempDir('durability'));
  });
  afterEach(() => cleanup());

  const header = (fields: { bootId: string; pid: number; since?: string }) =>
    `${JSON.stringify({ journal: 'image-cache relaxed commits', since: '1000', ...fields })}\n`;

  it('claims the journals of dead owners, other boots and unreadable ones; leaves live owners alone', async () => {
    const state = join(dir, '.image-cache');
    await mkdir(state);
    // A pid that existed and is gone: a child that has exited.
    const dead = spawnSync(process.execPath, ['-e', '0']).pid;
    await writeFile(join(state, 'unsynced-dead'), `${header({ bootId: BOOT_ID, pid: dead })}a\nb\n`);
    await writeFile(join(state, 'unsynced-reboot'), `${header({ bootId: 'another-boot', pid: process.ppid, since: '42' })}c\n`);
    await writeFile(join(state, 'unsynced-garbage'), 'not a header\nd\n');
    await writeFile(join(state, 'unsynced-live'), `${header({ bootId: BOOT_ID, pid: process.ppid })}e\n`);
    const live = await RelaxedWindow.open(state);
    try {
      const claimed = await claimAbandonedJournals(state);
      const byIds = claimed.map((j) => ({ ids: [...j.ids].sort(), rebooted: j.rebooted, since: j.since })).sort((x, y) => (x.ids[0] ?? '').localeCompare(y.ids[0] ?? ''));
      expect(byIds).toEqual([
        { ids: ['a', 'b'], rebooted: false, since: 1000n },
        { ids: ['c'], rebooted: true, since: 42n },
        { ids: ['d'], rebooted: true, since: 0n },
      ]);
      const names = (await readdir(state)).sort();
      expect(names.filter((name) => name.startsWith('recovering-'))).toHaveLength(3);
      expect(names).toContain('unsynced-live');
      expect(names, "this process's own open window is not claimed").toContain(live.path.slice(state.length + 1));
      expect(await claimAbandonedJournals(state), 'claimed ones are not claimed twice by a live claimant').toEqual([]);
    } finally {
      await live.close(state);
    }
    expect((await readdir(state)).some((name) => name === live.path.slice(state.length + 1)), 'close() deletes the journal').toBe(false);
  });
});
