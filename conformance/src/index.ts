/**
 * `@cache/conformance`: the shared test kit every `@cache/*` driver (and any
 * third-party driver) runs to prove it behaves like the Glance image cache:
 * every behavioural case, in a fresh cache directory, on each test filesystem,
 * with capability probes deciding whether the driver must work there or must
 * refuse to configure.
 *
 * @example
 * ```ts
 * // test/conformance.test.ts
 * import { describeDriverConformance } from '@cache/conformance';
 * import { MyDriver } from '../src/index.js';
 *
 * describeDriverConformance({ name: 'my-driver', create: (cacheDir) => new MyDriver({ cacheDir }) });
 * ```
 *
 * @packageDocumentation
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { RESERVED_NAMES, SUBDIRECTORIES, type DriverCapabilities } from '@cache/core';
import { describe, expect } from 'vitest';
import { checksumCases } from './cases/checksum.js';
import { cleanCases } from './cases/clean.js';
import { ErrorCodes, expectRejects } from './cases/common.js';
import { imageIdCases } from './cases/image-ids.js';
import { interopCases } from './cases/interop.js';
import { lifecycleCases } from './cases/lifecycle.js';
import { listingCases } from './cases/listing.js';
import { lruCases } from './cases/lru.js';
import { pruneCases } from './cases/prune.js';
import { queueCases } from './cases/queue.js';
import { readCases } from './cases/read.js';
import { unknownIdCases } from './cases/unknown-ids.js';
import { writeCases } from './cases/write.js';
import { createRunKit, createSkipKit, safeName, type CaseGroup, type DriverFactory } from './kit.js';
import { describeProbe, missingCapabilities, probeFilesystem, type CapabilityName, type FilesystemProbe } from './probes.js';
import { FILESYSTEMS_ENV, getTestFilesystems, type TestFilesystem } from './targets.js';

export { checksumCases } from './cases/checksum.js';
export { cleanCases } from './cases/clean.js';
export { HOSTILE_IDS, imageIdCases } from './cases/image-ids.js';
export { interopCases } from './cases/interop.js';
export { lifecycleCases } from './cases/lifecycle.js';
export { listingCases } from './cases/listing.js';
export { lruCases } from './cases/lru.js';
export { pruneCases } from './cases/prune.js';
export { queueCases } from './cases/queue.js';
export { readCases } from './cases/read.js';
export { unknownIdCases } from './cases/unknown-ids.js';
export { writeCases } from './cases/write.js';
export type { CaseEnv, CaseFn, CaseGroup, ConformanceKit, DriverFactory } from './kit.js';
export {
  ATIME_PROBE_DELAY_MS,
  XATTR_PROBE_ATTRIBUTE,
  describeProbe,
  missingCapabilities,
  probeAtime,
  probeFilesystem,
  probeXattr,
  type CapabilityName,
  type CapabilityProbe,
  type FilesystemProbe,
} from './probes.js';
export { FILESYSTEMS_ENV, OS_TMP_NAME, getTestFilesystems, parseTestFilesystems, type TestFilesystem } from './targets.js';
export { verifyCacheDir, type CacheDirProblem, type CacheDirProblemKind, type VerifyCacheDirOptions } from './verify.js';
export {
  abortWrite,
  drain,
  dumpTree,
  endWrite,
  failingSource,
  makeBytes,
  readImage,
  readPartially,
  sha256,
  snapshotTree,
  writeChunk,
  writeImage,
  type Drained,
  type TreeNode,
} from './helpers.js';

/**
 * Every case group, in the order they run. Pass a subset as
 * {@link DriverConformanceOptions.groups} to run only some.
 */
export const allCaseGroups: readonly CaseGroup[] = Object.freeze([
  lifecycleCases,
  listingCases,
  unknownIdCases,
  writeCases,
  readCases,
  lruCases,
  pruneCases,
  cleanCases,
  queueCases,
  imageIdCases,
  checksumCases,
  interopCases,
]);

/** Options of {@link describeDriverConformance}. */
export interface DriverConformanceOptions {
  /** Driver name, used in suite titles and temp-dir prefixes. */
  name: string;
  /** Creates a driver on a cache directory. The kit calls `configure()` and `close()` itself. */
  create: DriverFactory;
  /**
   * Filesystem capabilities the driver needs. Merged with the driver's own
   * `capabilities` field (either may declare a need). On a filesystem that
   * lacks one, the kit checks that `configure()` refuses with
   * `BadDriverConfigurationError` and registers every other case as skipped,
   * with the reason in its title.
   * - `xattr`: `user.*` extended attributes are kept (ext4, xfs, tmpfs: yes; vfat, ramfs: no).
   * - `atime`: every read updates atime (`strictatime`; `relatime` and `noatime` do not).
   */
  requires?: Partial<DriverCapabilities>;
  /**
   * Whether the driver's metadata is shared by every instance on one directory
   * and survives `close()`; cases that need it are skipped (with the reason)
   * when false, as for core's `MemoryDriver`.
   * @default true
   */
  persistent?: boolean;
  /** Run only these case groups (default {@link allCaseGroups}). */
  groups?: readonly CaseGroup[];
  /** Filesystems to run on instead of `CACHE_TEST_FILESYSTEMS` / the OS temp dir. */
  filesystems?: readonly TestFilesystem[];
}

let announcedOsTmp = false;
const probes = new Map<string, Promise<FilesystemProbe>>();
const announcedRoots = new Set<string>();

/** Probes a root once per process and prints what was found, once. */
async function probeOnce(fs: TestFilesystem): Promise<FilesystemProbe> {
  let probe = probes.get(fs.root);
  if (probe === undefined) {
    probe = probeFilesystem(fs.root);
    probes.set(fs.root, probe);
  }
  const result = await probe;
  if (!announcedRoots.has(fs.root)) {
    announcedRoots.add(fs.root);
    console.log(describeProbe(fs.name, result));
  }
  return result;
}

/** Reads `capabilities` from a throwaway driver instance (never configured). */
async function declaredCapabilities(options: DriverConformanceOptions, root: string): Promise<Partial<DriverCapabilities>> {
  const dir = await mkdtemp(join(root, `${safeName(options.name)}-capabilities-`));
  try {
    const driver = await options.create(dir);
    const capabilities = (driver as { capabilities?: Partial<DriverCapabilities> }).capabilities ?? {};
    await Promise.resolve(driver.close()).catch(() => undefined);
    return { ...capabilities };
  } catch {
    // A factory that fails here fails again, visibly, in every case.
    return {};
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * The capabilities a driver needs: `requires` merged with the driver's own
 * `capabilities` declaration (a need declared by either counts).
 */
export function requiredCapabilities(
  requires: Partial<DriverCapabilities> | undefined,
  declared: Partial<DriverCapabilities> | undefined,
): Record<CapabilityName, boolean> {
  return {
    xattr: requires?.xattr === true || declared?.xattr === true,
    atime: requires?.atime === true || declared?.atime === true,
  };
}

function registerRefusal(
  options: DriverConformanceOptions,
  fs: TestFilesystem,
  probe: FilesystemProbe,
  missing: { capability: CapabilityName; reason: string }[],
): void {
  const needs = missing.map((m) => m.capability).join(' and ');
  const why = missing.map((m) => `${fs.name} ${m.reason}`).join('; ');
  describe('capabilities', () => {
    const kit = createRunKit({ name: options.name, create: options.create, fs, probe, configure: false });
    kit.it(`configure() rejects with BadDriverConfigurationError: the driver needs ${needs}, but ${why}`, async ({ driver, dir }) => {
      await expectRejects(driver.configure(), ErrorCodes.BAD_DRIVER_CONFIGURATION, `configure() on ${fs.name} without ${needs}`);
      await expectRejects(driver.isCached('a'), ErrorCodes.DRIVER_NOT_OPEN, 'a driver that refused to configure is not open');
      const allowed = new Set<string>([...SUBDIRECTORIES, ...RESERVED_NAMES]);
      const leftovers = (await readdir(dir)).filter((name) => !allowed.has(name));
      expect(leftovers, 'a refusing configure() leaves no probe files behind').toEqual([]);
    });
  });
  const skip = createSkipKit({
    name: options.name,
    fs,
    probe,
    reason: `needs ${needs}, but ${why}`,
  });
  for (const group of options.groups ?? allCaseGroups) describe(group.name, () => group.register(skip));
}

/**
 * Registers the conformance suite for one driver: a `describe` block per test
 * filesystem (from `CACHE_TEST_FILESYSTEMS`, else the OS temp dir), each
 * running every case group against a driver from `create`, every case in a
 * fresh `mkdtemp(<root>/<name>-<fs>-)` cache directory with a freshly
 * configured driver (closed after the case; the directory is removed, or kept
 * and printed as a tree when the case failed).
 *
 * Capability probes run once per filesystem at registration and print one
 * line. When the filesystem lacks a capability the driver needs
 * (`requires` or `driver.capabilities`), a single case checks that
 * `configure()` rejects with `BadDriverConfigurationError` and every other
 * case is registered as skipped with the reason in its title.
 *
 * Call it at the top level of a vitest test file.
 *
 * @throws TypeError for a missing name or factory; Error for a malformed `CACHE_TEST_FILESYSTEMS`.
 */
export function describeDriverConformance(options: DriverConformanceOptions): void {
  if (typeof options?.name !== 'string' || options.name.trim() === '') {
    throw new TypeError('describeDriverConformance: options.name must be a non-empty string');
  }
  if (typeof options.create !== 'function') {
    throw new TypeError('describeDriverConformance: options.create must be a function (cacheDir) => CacheDriver');
  }
  const targets = options.filesystems ?? getTestFilesystems();
  if (targets.length === 0) throw new Error('describeDriverConformance: no filesystems to run on');
  if (!announcedOsTmp && targets.some((fs) => !fs.fromEnv)) {
    announcedOsTmp = true;
    console.log(
      `[conformance] ${FILESYSTEMS_ENV} is not set: the kit runs on the OS temp dir only (${targets[0]?.root}). ` +
        `To test other filesystems, set ${FILESYSTEMS_ENV}=name=/path[,name=/path...] ` +
        `(e.g. ext4=/mnt/ext4,xfs=/mnt/xfs,tmpfs-strictatime=/mnt/tmpfs).`,
    );
  }

  describe(`${options.name} driver conformance`, async () => {
    const declared = await declaredCapabilities(options, (targets[0] as TestFilesystem).root);
    const required = requiredCapabilities(options.requires, declared);
    for (const fs of targets) {
      const probe = await probeOnce(fs);
      const missing = missingCapabilities(required, probe);
      describe(`on ${fs.name} (${fs.root})`, () => {
        if (missing.length > 0) {
          registerRefusal(options, fs, probe, missing);
          return;
        }
        const kit = createRunKit({
          name: options.name,
          create: options.create,
          fs,
          probe,
          configure: true,
          persistent: options.persistent ?? true,
        });
        for (const group of options.groups ?? allCaseGroups) describe(group.name, () => group.register(kit));
      });
    }
  });
}
