import { BadDriverConfigurationError, MemoryDriver } from '@cache/core';
import { type DirectoryDriverOptions } from '@cache/core/driver';
import { describe, expect, it } from 'vitest';
import {
  describeDriverConformance,
  getTestFilesystems,
  listingCases,
  probeAtime,
  smallWriteCases,
  probeXattr,
  readCases,
  type CapabilityProbe,
} from '../src/index.js';

/** A reference driver that needs strictatime, declares it, and refuses to configure without it. */
class AtimeReferenceDriver extends MemoryDriver {
  override readonly name: string = 'atime-reference';
  override readonly capabilities = { xattr: false, atime: true };
  constructor(options: DirectoryDriverOptions) {
    super(options);
  }
  protected override async openMetadata(): Promise<void> {
    const probe = await probeAtime(this.cacheDir);
    if (!probe.supported) {
      throw new BadDriverConfigurationError(this.name, `${this.cacheDir} ${probe.reason}`, { path: this.cacheDir });
    }
  }
}

/** A reference driver that needs user xattrs and refuses without them. */
class XattrReferenceDriver extends MemoryDriver {
  override readonly name: string = 'xattr-reference';
  override readonly capabilities = { xattr: true, atime: false };
  constructor(options: DirectoryDriverOptions) {
    super(options);
  }
  protected override async openMetadata(): Promise<void> {
    const probe = await probeXattr(this.cacheDir);
    if (!probe.supported) throw new BadDriverConfigurationError(this.name, `${this.cacheDir} ${probe.reason}`);
  }
}

// Both build on MemoryDriver, whose metadata is per instance (supports.persistent: false).
describeDriverConformance({
  name: 'needs-atime',
  create: (dir) => new AtimeReferenceDriver({ cacheDir: dir }),
});

describeDriverConformance({
  name: 'needs-xattr',
  create: (dir) => new XattrReferenceDriver({ cacheDir: dir }),
  groups: [listingCases, readCases],
});

/** A MemoryDriver without the optional writeSmallImage: its cases must all be skipped, with the reason. */
describeDriverConformance({
  name: 'no-small-write',
  create: (dir) => {
    const driver = new MemoryDriver({ cacheDir: dir });
    Object.defineProperty(driver, 'writeSmallImage', { value: undefined });
    return driver;
  },
  groups: [smallWriteCases],
});

interface TaskLike {
  type: string;
  name: string;
  mode: string;
  tasks?: TaskLike[];
  result?: { state?: string };
}

function tests(task: TaskLike): TaskLike[] {
  return task.type === 'test' ? [task] : (task.tasks ?? []).flatMap(tests);
}

/** Checks the cases a suite registered for each filesystem against what the probe says. */
async function checkPlan(
  file: TaskLike,
  suiteName: string,
  capability: 'atime' | 'xattr',
  probe: (root: string) => Promise<CapabilityProbe>,
): Promise<void> {
  const suite = file.tasks?.find((task) => task.name === suiteName);
  expect(suite, `suite ${suiteName}`).toBeDefined();
  for (const fs of getTestFilesystems()) {
    const perFs = suite?.tasks?.find((task) => task.name === `on ${fs.name} (${fs.root})`);
    expect(perFs, `${suiteName} on ${fs.name}`).toBeDefined();
    const all = tests(perFs as TaskLike);
    const found = await probe(fs.root);
    if (found.supported) {
      expect(all.length).toBeGreaterThan(0);
      // Every case runs, except those that do not apply to a per-instance store (supports.persistent: false).
      const ran = (t: TaskLike) => t.mode === 'run' && t.result?.state !== undefined && t.result.state !== 'skip';
      // ...and the onNoSpace case where the kit cannot mount the small tmpfs it fills up (not root).
      const notApplicable = (t: TaskLike) =>
        t.mode === 'skip' &&
        (t.name.endsWith('[skipped: the driver keeps metadata per instance (supports.persistent: false)]') ||
          /\[skipped: the (kit cannot mount a small tmpfs|small tmpfs the kit fills up lacks)/.test(t.name));
      expect(all.every((t) => ran(t) || notApplicable(t)), `${suiteName} runs every case`).toBe(true);
      expect(all.filter(notApplicable).length).toBeLessThanOrEqual(11);
      expect(all.some((t) => t.name.startsWith('configure() rejects with BadDriverConfigurationError: the driver needs'))).toBe(false);
      continue;
    }
    const refusal = all.filter((t) => t.mode === 'run');
    expect(refusal.map((t) => t.name)).toEqual([expect.stringMatching(/^configure\(\) rejects with BadDriverConfigurationError: the driver needs /)]);
    expect(refusal[0]?.name).toContain(`needs ${capability}, but ${fs.name} ${found.reason}`);
    expect(refusal[0]?.result?.state, 'the refusal case ran and passed').toBe('pass');
    const skipped = all.filter((t) => t.mode === 'skip');
    expect(skipped.length).toBe(all.length - 1);
    expect(skipped.length).toBeGreaterThan(10);
    for (const t of skipped) expect(t.name).toContain(`[skipped: needs ${capability}, but ${fs.name} `);
  }
}

describe('capability gating', () => {
  it('a driver that declares capabilities.atime refuses on a filesystem without strictatime; every other case is skipped with the reason', async (context) => {
    await checkPlan(context.task.file as unknown as TaskLike, 'needs-atime driver conformance', 'atime', probeAtime);
  });

  it('describeDriverConformance() rejects the old `requires` and `persistent` options, naming where they moved', () => {
    expect(() => describeDriverConformance({ name: 'old', create: (dir: string) => new MemoryDriver({ cacheDir: dir }), requires: { xattr: true } } as never)).toThrow(
      /requires.*moved to the driver.*capabilities/,
    );
    expect(() => describeDriverConformance({ name: 'old', create: (dir: string) => new MemoryDriver({ cacheDir: dir }), persistent: true } as never)).toThrow(
      /persistent.*moved to the driver.*supports/,
    );
  });

  it('a driver without writeSmallImage gets every writeSmallImage case registered as skipped, with the reason in its title', (context) => {
    const suite = (context.task.file as unknown as TaskLike).tasks?.find((task) => task.name === 'no-small-write driver conformance');
    expect(suite, 'suite no-small-write driver conformance').toBeDefined();
    const all = tests(suite as TaskLike).filter((t) => t.name.startsWith('writeSmallImage('));
    // Once per target filesystem (the root test run mounts several): the group's 12 cases on each.
    expect(new Set(all.map((t) => t.name)).size, 'every case of the group is registered').toBe(12);
    expect(all.length % 12, 'the whole group on every target').toBe(0);
    for (const t of all) {
      expect(t.mode, t.name).toBe('skip');
      expect(t.name).toContain('[skipped: the driver has no writeSmallImage');
    }
  });

  it('a driver that declares capabilities.xattr runs every case where user xattrs work, and refuses where they do not', async (context) => {
    await checkPlan(context.task.file as unknown as TaskLike, 'needs-xattr driver conformance', 'xattr', probeXattr);
  });
});
