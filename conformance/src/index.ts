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
 * describeDriverConformance({
 *   name: 'my-driver',
 *   create: (cacheDir) => new MyDriver({ cacheDir }),
 *   // A JS module exporting createDriver(cacheDir): the kit runs the driver in other processes too.
 *   driverModule: new URL('../dist/driver-module.js', import.meta.url),
 * });
 * ```
 *
 * @packageDocumentation
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { RESERVED_NAMES, SUBDIRECTORIES, type CacheDriver, type DriverCapabilities, type DriverSupports } from '@cache/core';
import { describe, expect } from 'vitest';
import { checksumCases } from './cases/checksum.js';
import { cleanCases } from './cases/clean.js';
import { ErrorCodes, expectRejects } from './cases/common.js';
import { concurrencyCases } from './cases/concurrency.js';
import { deletionCases } from './cases/deletion.js';
import { identityCases } from './cases/identity.js';
import { persistenceCases } from './cases/persistence.js';
import { reconcileCases } from './cases/reconcile.js';
import { statQuarantineCases } from './cases/stat-quarantine.js';
import { storedDigestCases } from './cases/stored-digest.js';
import { imageIdCases } from './cases/image-ids.js';
import { interopCases } from './cases/interop.js';
import { lifecycleCases } from './cases/lifecycle.js';
import { listingCases } from './cases/listing.js';
import { lruCases } from './cases/lru.js';
import { pruneCases } from './cases/prune.js';
import { queueCases } from './cases/queue.js';
import { rangedReadCases } from './cases/ranged-read.js';
import { readCases } from './cases/read.js';
import { unknownIdCases } from './cases/unknown-ids.js';
import { writeCases } from './cases/write.js';
import { createRunKit, createSkipKit, OPTIONAL_DRIVER_METHODS, safeName, type CaseGroup, type ConformanceKit, type DriverFactory, type OptionalDriverMethod } from './kit.js';
import { probeNoSpace } from './scratch-mount.js';
import { smallWriteCases } from './cases/small-write.js';
import { describeProbe, missingCapabilities, probeFilesystem, type CapabilityName, type FilesystemProbe } from './probes.js';
import { FILESYSTEMS_ENV, getTestFilesystems, type TestFilesystem } from './targets.js';

export { checksumCases } from './cases/checksum.js';
export { cleanCases } from './cases/clean.js';
export { concurrencyCases } from './cases/concurrency.js';
export { deletionCases } from './cases/deletion.js';
export { identityCases } from './cases/identity.js';
export { persistenceCases } from './cases/persistence.js';
export { reconcileCases } from './cases/reconcile.js';
export { storedDigestCases } from './cases/stored-digest.js';
export { FULL_SUPPORTS, inventory, type GroupInventory } from './inventory.js';
export { runChild, runChildThenKill, startChild, type ChildOp, type ChildOutcome, type ChildProgram, type RunningChild } from './child.js';
export { HOSTILE_IDS, imageIdCases } from './cases/image-ids.js';
export { interopCases } from './cases/interop.js';
export { lifecycleCases } from './cases/lifecycle.js';
export { listingCases } from './cases/listing.js';
export { lruCases } from './cases/lru.js';
export { pruneCases } from './cases/prune.js';
export { queueCases } from './cases/queue.js';
export { rangedReadCases } from './cases/ranged-read.js';
export { readCases } from './cases/read.js';
export { statQuarantineCases } from './cases/stat-quarantine.js';
export { unknownIdCases } from './cases/unknown-ids.js';
export { writeCases } from './cases/write.js';
export { smallWriteCases } from './cases/small-write.js';
export { OPTIONAL_DRIVER_METHODS, type CaseEnv, type CaseFn, type CaseGroup, type ConformanceKit, type DriverFactory, type OptionalDriverMethod } from './kit.js';
export { SCRATCH_MOUNT_BYTES, fillUp, mountScratch, probeNoSpace, type ScratchMount } from './scratch-mount.js';
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
  inspectFile,
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
  smallWriteCases,
  readCases,
  rangedReadCases,
  statQuarantineCases,
  lruCases,
  pruneCases,
  cleanCases,
  queueCases,
  imageIdCases,
  checksumCases,
  interopCases,
  persistenceCases,
  deletionCases,
  identityCases,
  reconcileCases,
  storedDigestCases,
  concurrencyCases,
]);

/** Options of {@link describeDriverConformance}. */
export interface DriverConformanceOptions {
  /** Driver name, used in suite titles and temp-dir prefixes. */
  name: string;
  /**
   * Creates a driver on a cache directory. The kit calls `configure()` and
   * `close()` itself. Optional when {@link driverModule} is given: the kit
   * then uses that module's `createDriver` in this process too.
   */
  create?: DriverFactory;
  /**
   * A JavaScript ES module that plain `node` can import (your built output,
   * not TypeScript source), exporting `createDriver(cacheDir)` (or a default
   * export of that function), as a `file:` URL or an absolute path. The kit
   * loads it in child processes for the cases that need other processes:
   * several processes on one directory, a process SIGKILLed after writing.
   * Required for drivers that declare `supports.persistent` (a persistent
   * store is shared by processes, so the kit proves it); without it those
   * cases fail and say so.
   */
  driverModule?: string | URL;
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

/** What a driver declares about itself, read from a throwaway instance (never configured). */
interface Declaration {
  capabilities: Partial<DriverCapabilities>;
  supports: unknown;
  optionalMethods: ReadonlySet<OptionalDriverMethod>;
}

async function declarationOf(create: DriverFactory, name: string, root: string): Promise<Declaration> {
  const dir = await mkdtemp(join(root, `${safeName(name)}-capabilities-`));
  try {
    const driver = await create(dir);
    const capabilities = (driver as { capabilities?: Partial<DriverCapabilities> }).capabilities ?? {};
    const supports = (driver as { supports?: unknown }).supports;
    const optionalMethods = new Set(OPTIONAL_DRIVER_METHODS.filter((method) => typeof (driver as unknown as Record<string, unknown>)[method] === 'function'));
    await Promise.resolve(driver.close()).catch(() => undefined);
    return {
      capabilities: { ...capabilities },
      supports: typeof supports === 'object' && supports !== null ? { ...supports } : supports,
      optionalMethods,
    };
  } catch {
    // A factory that fails here fails again, visibly, in every case.
    return { capabilities: {}, supports: undefined, optionalMethods: new Set() };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Why a `supports` manifest is malformed, or undefined when it is well-formed. */
export function supportsProblem(supports: unknown): string | undefined {
  if (typeof supports !== 'object' || supports === null) {
    return "driver.supports is missing: declare { persistent, storedChecksum, crossProcessHits, metadataStore } on the driver (DirectoryCacheDriver has a default; override it)";
  }
  const s = supports as Record<string, unknown>;
  const problems: string[] = [];
  if (typeof s.persistent !== 'boolean') problems.push('persistent must be a boolean');
  if (typeof s.storedChecksum !== 'boolean') problems.push('storedChecksum must be a boolean');
  if (s.crossProcessHits !== 'exact' && s.crossProcessHits !== 'best-effort') problems.push("crossProcessHits must be 'exact' or 'best-effort'");
  if (s.metadataStore !== 'separate' && s.metadataStore !== 'files') problems.push("metadataStore must be 'separate' or 'files'");
  return problems.length === 0 ? undefined : `driver.supports is malformed: ${problems.join('; ')}`;
}

/** A manifest to gate cases with, even when the declared one is malformed (the manifest case then fails). */
function usableSupports(supports: unknown): DriverSupports {
  const s = (typeof supports === 'object' && supports !== null ? supports : {}) as Partial<DriverSupports>;
  return {
    persistent: s.persistent === true,
    storedChecksum: s.storedChecksum === true,
    crossProcessHits: s.crossProcessHits === 'exact' ? 'exact' : 'best-effort',
    metadataStore: s.metadataStore === 'files' ? 'files' : 'separate',
  };
}

/** `driverModule` as a URL string `import()` takes, or undefined. */
function moduleUrl(driverModule: string | URL | undefined): string | undefined {
  if (driverModule === undefined) return undefined;
  if (driverModule instanceof URL) return driverModule.href;
  if (typeof driverModule !== 'string' || driverModule === '') {
    throw new TypeError('describeDriverConformance: options.driverModule must be a file: URL or an absolute path');
  }
  if (isAbsolute(driverModule)) return pathToFileURL(driverModule).href;
  if (/^(file|data):/.test(driverModule)) return driverModule;
  throw new TypeError(`describeDriverConformance: options.driverModule must be a file: URL or an absolute path, got '${driverModule}'`);
}

/** A factory that imports `createDriver` from the driver module (once). */
function factoryFromModule(url: string): DriverFactory {
  let loaded: Promise<DriverFactory> | undefined;
  return async (cacheDir) => {
    loaded ??= import(url).then((mod: { createDriver?: unknown; default?: unknown }) => {
      const fn = mod.createDriver ?? (mod.default as { createDriver?: unknown } | undefined)?.createDriver ?? mod.default;
      if (typeof fn !== 'function') throw new TypeError(`${url} exports no createDriver(cacheDir) function`);
      return fn as DriverFactory;
    });
    return (await loaded)(cacheDir) as CacheDriver;
  };
}

/** The manifest case: well-formed, unchanged by configure() and close(), consistent with what the driver offers. */
function registerManifestCase(kit: ConformanceKit): void {
  kit.it('driver.supports declares persistent, storedChecksum, crossProcessHits and metadataStore, unchanged by configure() and close()', async ({ driver, create }) => {
    const problem = supportsProblem(driver.supports);
    expect(problem, problem).toBeUndefined();
    const declared = { ...driver.supports };
    expect(declared, 'the manifest the kit gated its cases on is the one the driver has').toEqual(kit.supports);
    const fresh = await create();
    expect({ ...fresh.supports }, 'a new instance declares the same').toEqual(declared);
    await fresh.configure();
    expect({ ...fresh.supports }, 'configure() changes nothing').toEqual(declared);
    await fresh.close();
    expect({ ...fresh.supports }, 'close() changes nothing').toEqual(declared);
    if (declared.storedChecksum) {
      expect(typeof driver.getStoredChecksum, 'supports.storedChecksum needs getStoredChecksum(id)').toBe('function');
    }
    if (declared.persistent) {
      expect(
        kit.driverModule,
        'supports.persistent: pass driverModule to describeDriverConformance so the kit can run the driver in other processes',
      ).toBeDefined();
    }
  });
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
  options: DriverConformanceOptions & { create: DriverFactory },
  fs: TestFilesystem,
  probe: FilesystemProbe,
  missing: { capability: CapabilityName; reason: string }[],
  supports: DriverSupports,
  driverModule: string | undefined,
): void {
  const needs = missing.map((m) => m.capability).join(' and ');
  const why = missing.map((m) => `${fs.name} ${m.reason}`).join('; ');
  describe('capabilities', () => {
    const kit = createRunKit({ name: options.name, create: options.create, fs, probe, configure: false, supports, driverModule });
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
    supports,
    driverModule,
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
  const legacy = options as { requires?: unknown; persistent?: unknown };
  if (legacy.requires !== undefined) {
    throw new TypeError(
      'describeDriverConformance: the option `requires` has moved to the driver: declare `capabilities: { xattr, atime }` on it, so users see it too',
    );
  }
  if (legacy.persistent !== undefined) {
    throw new TypeError(
      'describeDriverConformance: the option `persistent` has moved to the driver: declare `supports: { persistent, storedChecksum, crossProcessHits, metadataStore }` on it',
    );
  }
  const driverModule = moduleUrl(options.driverModule);
  const create = options.create ?? (driverModule === undefined ? undefined : factoryFromModule(driverModule));
  if (typeof create !== 'function') {
    throw new TypeError('describeDriverConformance: pass options.create, a function (cacheDir) => CacheDriver, or options.driverModule');
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
    const declared = await declarationOf(create, options.name, (targets[0] as TestFilesystem).root);
    const required = requiredCapabilities(undefined, declared.capabilities);
    const supports = usableSupports(declared.supports);
    const { optionalMethods } = declared;
    // Only drivers with writeSmallImage have a case that fills a filesystem up.
    const noSpace = optionalMethods.has('writeSmallImage') ? await probeNoSpace(required) : undefined;
    for (const fs of targets) {
      const probe = await probeOnce(fs);
      const missing = missingCapabilities(required, probe);
      describe(`on ${fs.name} (${fs.root})`, () => {
        if (missing.length > 0) {
          registerRefusal({ ...options, create }, fs, probe, missing, supports, driverModule);
          return;
        }
        const kit = createRunKit({ name: options.name, create, fs, probe, configure: true, supports, driverModule, optionalMethods, noSpace });
        describe('manifest', () => registerManifestCase(kit));
        for (const group of options.groups ?? allCaseGroups) describe(group.name, () => group.register(kit));
      });
    }
  });
}
