import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { CacheDriver, DriverSupports } from '@cache/core';
import { afterEach, beforeEach, it } from 'vitest';
import { dumpTree } from './helpers.js';
import type { CapabilityProbe, FilesystemProbe } from './probes.js';
import type { TestFilesystem } from './targets.js';

/** Creates a driver for a cache directory; the kit configures and closes it. */
export type DriverFactory = (cacheDir: string) => CacheDriver | Promise<CacheDriver>;

/** What a case gets: a fresh cache directory and a driver configured on it. */
export interface CaseEnv {
  /** The driver under test, configured on {@link CaseEnv.dir} (closed by the kit after the case). */
  readonly driver: CacheDriver;
  /** The case's own, fresh cache directory. */
  readonly dir: string;
  /** The filesystem the case runs on. */
  readonly fs: TestFilesystem;
  /** What the probes found on that filesystem. */
  readonly probe: FilesystemProbe;
  /**
   * Another driver from the same factory, not configured (the kit closes it
   * after the case). Defaults to the case's directory.
   */
  create(cacheDir?: string): Promise<CacheDriver>;
}

/**
 * Optional methods of `CacheDriver` whose case groups run only when the driver
 * has them (and are registered as skipped, with the reason, when it does not).
 */
export type OptionalDriverMethod = 'writeSmallImage';

/** Every {@link OptionalDriverMethod}. */
export const OPTIONAL_DRIVER_METHODS: readonly OptionalDriverMethod[] = Object.freeze(['writeSmallImage']);

/** A case body. */
export type CaseFn = (env: CaseEnv) => Promise<void> | void;

/**
 * What a case group registers its cases with: `kit.it(title, fn)` runs `fn`
 * with a fresh {@link CaseEnv} (or registers a skipped case with the reason in
 * its title when the filesystem lacks a capability the driver needs).
 */
export interface ConformanceKit {
  /** The `name` given to `describeDriverConformance`. */
  readonly name: string;
  /** The filesystem the cases run on. */
  readonly fs: TestFilesystem;
  /** What the probes found on it. */
  readonly probe: FilesystemProbe;
  /** The driver's manifest, as it declares it (`driver.supports`). */
  readonly supports: DriverSupports;
  /** Shorthand for `supports.persistent`. */
  readonly persistent: boolean;
  /**
   * The module other processes load the driver from (see
   * `DriverConformanceOptions.driverModule`), as a URL string, or undefined.
   */
  readonly driverModule: string | undefined;
  /**
   * The optional methods the driver has ({@link OptionalDriverMethod}), read
   * from a throwaway instance like the manifest: a group for an optional
   * method registers its cases as skipped when the method is missing.
   */
  readonly optionalMethods: ReadonlySet<OptionalDriverMethod>;
  /**
   * Whether the kit can run a driver on a filesystem it fills up itself, to
   * provoke ENOSPC: a small tmpfs it mounts per case (Linux, root, and the
   * driver's capabilities available there). `reason` says why not.
   */
  readonly noSpace: CapabilityProbe;
  /** Registers one case; title it with the call, e.g. `"openForWrite(id) rejects a second writer ..."`. */
  it(title: string, fn: CaseFn): void;
  /** Registers a case that cannot apply to this driver as skipped, with the reason in its title. */
  skip(title: string, reason: string): void;
}

/** A named set of cases, one per method group; pass a subset as `groups` to run only those. */
export interface CaseGroup {
  /** Title of the group's `describe` block. */
  readonly name: string;
  /** What the group checks, in a sentence or a few (the kit's README table is generated from these). */
  readonly description?: string;
  /** Registers the group's cases. */
  readonly register: (kit: ConformanceKit) => void;
}

/** Makes a name safe for a temp-dir prefix. */
export function safeName(name: string): string {
  return name.replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 40) || 'driver';
}

interface CaseState {
  dir: string;
  drivers: CacheDriver[];
  env: CaseEnv | undefined;
}

/**
 * Registers, in the current `describe` block, the hooks that give every case a
 * fresh `mkdtemp(<fs root>/<name>-<fs>-)` directory and a driver on it
 * (configured unless `configure` is false); after the case the drivers are
 * closed and the directory is removed, or, when the case failed, kept and
 * printed as a tree dump. Returns the kit whose `it` registers cases that get
 * that environment.
 */
export function createRunKit(options: {
  name: string;
  create: DriverFactory;
  fs: TestFilesystem;
  probe: FilesystemProbe;
  configure: boolean;
  supports: DriverSupports;
  driverModule?: string | undefined;
  optionalMethods?: ReadonlySet<OptionalDriverMethod>;
  noSpace?: CapabilityProbe;
}): ConformanceKit {
  const states = new WeakMap<object, CaseState>();
  const prefix = join(options.fs.root, `${safeName(options.name)}-${options.fs.name}-`);

  beforeEach(async (context) => {
    const dir = await mkdtemp(prefix);
    const state: CaseState = { dir, drivers: [], env: undefined };
    states.set(context.task, state);
    const create = async (cacheDir: string = dir): Promise<CacheDriver> => {
      const driver = await options.create(cacheDir);
      state.drivers.push(driver);
      return driver;
    };
    const driver = await create();
    if (options.configure) await driver.configure();
    state.env = { driver, dir, fs: options.fs, probe: options.probe, create };
  });

  afterEach(async (context) => {
    const state = states.get(context.task);
    if (state === undefined) return;
    const closeErrors: unknown[] = [];
    for (const driver of state.drivers) {
      try {
        await driver.close();
      } catch (error) {
        closeErrors.push(error);
      }
    }
    if (context.task.result?.state === 'fail' || closeErrors.length > 0) {
      const dump = await dumpTree(state.dir).catch((error: Error) => `(tree dump failed: ${error.message})`);
      console.error(`[conformance] case failed: "${context.task.name}" — cache directory kept at ${state.dir}\n${dump}`);
    } else {
      await rm(state.dir, { recursive: true, force: true });
    }
    if (closeErrors.length > 0) {
      throw new AggregateError(closeErrors, `close() failed after "${context.task.name}" (close must be idempotent and not throw)`);
    }
  });

  return {
    name: options.name,
    fs: options.fs,
    probe: options.probe,
    supports: options.supports,
    persistent: options.supports.persistent,
    driverModule: options.driverModule,
    optionalMethods: options.optionalMethods ?? new Set(),
    noSpace: options.noSpace ?? NO_SPACE_UNPROBED,
    skip: skipCase,
    it(title, fn) {
      it(title, async (context) => {
        const env = states.get(context.task)?.env;
        if (env === undefined) throw new Error('conformance kit: the case environment was not set up');
        await fn(env);
      });
    },
  };
}

const NO_SPACE_UNPROBED: CapabilityProbe = Object.freeze({ supported: false, reason: 'was not probed for a scratch mount' });

function skipCase(title: string, reason: string): void {
  it.skip(`${title} [skipped: ${reason}]`, () => undefined);
}

/** A kit whose cases are all registered as skipped, with `reason` at the end of each title. */
export function createSkipKit(options: {
  name: string;
  fs: TestFilesystem;
  probe: FilesystemProbe;
  reason: string;
  supports: DriverSupports;
  driverModule?: string | undefined;
  optionalMethods?: ReadonlySet<OptionalDriverMethod>;
}): ConformanceKit {
  return {
    name: options.name,
    fs: options.fs,
    probe: options.probe,
    supports: options.supports,
    persistent: options.supports.persistent,
    driverModule: options.driverModule,
    optionalMethods: options.optionalMethods ?? new Set(),
    noSpace: { supported: false, reason: options.reason },
    skip(title) {
      skipCase(title, options.reason);
    },
    it(title) {
      skipCase(title, options.reason);
    },
  };
}
