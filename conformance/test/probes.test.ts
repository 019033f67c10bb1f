import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  describeDriverConformance,
  getTestFilesystems,
  missingCapabilities,
  parseTestFilesystems,
  probeAtime,
  probeFilesystem,
  probeXattr,
  requiredCapabilities,
  type FilesystemProbe,
} from '../src/index.js';

/** Mount options of the mount that holds `path`, from /proc/self/mountinfo (Linux), or undefined. */
function mountOptions(path: string): string[] | undefined {
  let text: string;
  try {
    text = readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return undefined;
  }
  let best: { point: string; options: string[] } | undefined;
  const target = resolve(path);
  for (const line of text.split('\n')) {
    const fields = line.split(' ');
    const point = fields[4]?.replace(/\\040/g, ' ');
    const options = fields[5]?.split(',');
    if (point === undefined || options === undefined) continue;
    const inside = target === point || target.startsWith(point.endsWith('/') ? point : `${point}/`);
    // Later lines win at equal length: they are mounted on top.
    if (inside && (best === undefined || point.length >= best.point.length)) best = { point, options };
  }
  return best?.options;
}

async function probeLeftovers(root: string): Promise<string[]> {
  return (await readdir(root)).filter((name) => name.startsWith(`.cache-probe-`) && name.includes(`-${process.pid}-`));
}

describe('probes', () => {
  const root = tmpdir();

  it('probeXattr(root) says whether user xattrs work, and leaves no file behind', async () => {
    const result = await probeXattr(root);
    expect(typeof result.supported).toBe('boolean');
    expect(result.reason.length).toBeGreaterThan(0);
    if (result.supported) expect(result.reason).toMatch(/keeps user xattrs/);
    expect(await probeLeftovers(root)).toEqual([]);
  });

  it('probeAtime(root) agrees with the mount options of the OS temp dir (relatime/noatime: no; strictatime: yes)', async () => {
    const result = await probeAtime(root);
    expect(await probeLeftovers(root)).toEqual([]);
    const options = mountOptions(root);
    if (options === undefined) return; // not Linux: nothing to compare with
    const lazy = options.includes('relatime') || options.includes('noatime');
    expect(result.supported, `mount options ${options.join(',')}; probe: ${result.reason}`).toBe(!lazy);
    if (options.includes('relatime')) expect(result.reason).toMatch(/relatime/);
    if (options.includes('noatime')) expect(result.reason).toMatch(/noatime/);
  });

  it('probeFilesystem(root) on a missing directory reports both capabilities missing, with a reason', async () => {
    const missing = join(root, `no-such-dir-${process.pid}-${Date.now()}`);
    const result = await probeFilesystem(missing);
    expect(result.root).toBe(missing);
    expect(result.xattr.supported).toBe(false);
    expect(result.atime.supported).toBe(false);
    expect(result.xattr.reason).toMatch(/cannot be probed/);
    expect(result.atime.reason).toMatch(/cannot be probed/);
  });

  it('missingCapabilities() lists the required capabilities the probe lacks, with the probe reason', () => {
    const probe: FilesystemProbe = {
      root: '/x',
      xattr: { supported: true, reason: 'keeps user xattrs' },
      atime: { supported: false, reason: 'updates atime only on the first read (relatime)' },
    };
    expect(missingCapabilities({}, probe)).toEqual([]);
    expect(missingCapabilities({ xattr: true }, probe)).toEqual([]);
    expect(missingCapabilities({ xattr: true, atime: true }, probe)).toEqual([
      { capability: 'atime', reason: 'updates atime only on the first read (relatime)' },
    ]);
    expect(missingCapabilities({ atime: false }, probe)).toEqual([]);
  });

  it('requiredCapabilities() merges requires with the driver declaration: a need from either counts', () => {
    expect(requiredCapabilities(undefined, undefined)).toEqual({ xattr: false, atime: false });
    expect(requiredCapabilities({ atime: true }, { xattr: false, atime: false })).toEqual({ xattr: false, atime: true });
    expect(requiredCapabilities({ xattr: false }, { xattr: true, atime: false })).toEqual({ xattr: true, atime: false });
  });
});

describe('CACHE_TEST_FILESYSTEMS', () => {
  let dirA: string;
  let dirB: string;
  let file: string;
  beforeAll(async () => {
    dirA = await mkdtemp(join(tmpdir(), 'conformance-env-a-'));
    dirB = await mkdtemp(join(tmpdir(), 'conformance-env-b-'));
    file = join(dirA, 'a-file');
    await writeFile(file, 'x');
  });
  afterAll(async () => {
    await rm(dirA, { recursive: true, force: true });
    await rm(dirB, { recursive: true, force: true });
  });

  it('getTestFilesystems() without the variable (or blank) is the OS temp dir named os-tmp', () => {
    expect(getTestFilesystems({})).toEqual([{ name: 'os-tmp', root: tmpdir(), fromEnv: false }]);
    expect(getTestFilesystems({ CACHE_TEST_FILESYSTEMS: '  ' })).toEqual([{ name: 'os-tmp', root: tmpdir(), fromEnv: false }]);
  });

  it('getTestFilesystems() parses name=/path,name=/path', () => {
    expect(getTestFilesystems({ CACHE_TEST_FILESYSTEMS: `ext4=${dirA}, tmpfs.strict=${dirB}` })).toEqual([
      { name: 'ext4', root: dirA, fromEnv: true },
      { name: 'tmpfs.strict', root: dirB, fromEnv: true },
    ]);
  });

  const bad: [string, (a: string, b: string, f: string) => string, RegExp][] = [
    ['an entry without "="', (a) => `ext4${a}`, /has no "="/],
    ['an empty name', (a) => `=${a}`, /invalid name/],
    ['a name with a space', (a) => `my fs=${a}`, /invalid name/],
    ['a repeated name', (a, b) => `x=${a},x=${b}`, /repeats the name/],
    ['a relative path', () => 'x=relative/dir', /not absolute/],
    ['a path that does not exist', (a) => `x=${a}/missing`, /cannot be used/],
    ['a path that is a file', (_a, _b, f) => `x=${f}`, /not a directory/],
    ['only commas', () => ',,', /no entries/],
  ];
  for (const [what, value, message] of bad) {
    it(`parseTestFilesystems() throws for ${what}`, () => {
      const text = value(dirA, dirB, file);
      expect(() => parseTestFilesystems(text)).toThrow(message);
      expect(() => getTestFilesystems({ CACHE_TEST_FILESYSTEMS: text })).toThrow(/CACHE_TEST_FILESYSTEMS/);
    });
  }
});

describe('describeDriverConformance() options', () => {
  it('throws a TypeError for a missing name or factory', () => {
    expect(() => describeDriverConformance({ name: '', create: () => undefined as never })).toThrow(TypeError);
    expect(() => describeDriverConformance({ name: 'x', create: undefined as never })).toThrow(TypeError);
  });
});
