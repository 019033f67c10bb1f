import type { CacheDriver } from './driver.js';
import { DriverNotOpenError, InvalidArgumentError } from './errors.js';
import { assertImageId } from './image-id.js';
import { normalizeQuarantineOptions, normalizeReadOptions } from './options.js';

/** Methods whose first argument is an image id. */
const ID_METHODS = new Set<PropertyKey>([
  'isCached',
  'isBeingCached',
  'isCacheable',
  'isQueued',
  'queueImage',
  'getImageSize',
  'getHitCount',
  'openForWrite',
  'writeSmallImage',
  'openForRead',
  'deleteCachedImage',
  'deleteQueuedImage',
  'getStoredChecksum',
  'statImage',
  'quarantineImage',
]);

/** Validators of the argument after the id, for methods that take one (run before the driver sees the call). */
const OPTION_CHECKS = new Map<PropertyKey, (options: unknown) => unknown>([
  ['openForRead', normalizeReadOptions],
  ['quarantineImage', normalizeQuarantineOptions],
]);

/** Methods that need an open driver but take no id. */
const OPEN_METHODS = new Set<PropertyKey>([
  'getQueuedImages',
  'getCachedImages',
  'getCacheSize',
  'getLeastRecentlyAccessed',
  'deleteAllCachedImages',
  'deleteAllQueuedImages',
  'clean',
]);

const GUARDED = Symbol.for('@cache/core.guarded-driver');

/** A driver method's result as a promise (a driver written from scratch may return a plain value). */
function asPromise(value: unknown): Promise<unknown> {
  return value instanceof Promise ? value : Promise.resolve(value);
}

type State = 'new' | 'open' | 'closed';

/**
 * Wraps any {@link CacheDriver} in the guards every driver must have, as
 * Kysely's runtime driver wraps a dialect's driver, so a driver written from
 * scratch (not on `DirectoryCacheDriver`) gets them too:
 * - `configure()` runs once (concurrent calls share one run; a failed run may
 *   be retried); after `close()` it rejects with `DriverNotOpenError`;
 * - `close()` is idempotent;
 * - every other call rejects with `DriverNotOpenError` unless the driver is
 *   configured and not closed;
 * - every id is validated first (`InvalidImageIdError`, against the driver's
 *   `reservedNames` too), so a bad id never reaches the driver;
 * - the options of `openForRead` (range, `countHit`, `identity`) and
 *   `quarantineImage` are validated too (`InvalidArgumentError`): a driver
 *   never sees a negative, inverted or fractional range.
 *
 * Anything else on the driver (its own methods and fields) passes through.
 * `ImageCache.open` applies it to the driver it is given; wrapping twice
 * returns the same wrapper.
 */
export function guardDriver<D extends CacheDriver>(driver: D): D {
  if ((driver as { [GUARDED]?: boolean })[GUARDED] === true) return driver;
  let state: State = 'new';
  let configuring: Promise<void> | undefined;
  const reserved = (): readonly string[] => (Array.isArray(driver.reservedNames) ? driver.reservedNames : []);
  const notOpen = () => new DriverNotOpenError(driver.name, state === 'closed' ? 'closed' : 'new');

  const configure = async (): Promise<void> => {
    if (state === 'open') return;
    if (state === 'closed') throw notOpen();
    configuring ??= (async () => {
      try {
        await driver.configure();
        if (state === 'new') state = 'open';
      } finally {
        configuring = undefined;
      }
    })();
    return configuring;
  };
  const close = async (): Promise<void> => {
    if (state === 'closed') return;
    state = 'closed';
    await driver.close();
  };

  const wrappers = new Map<PropertyKey, unknown>();
  return new Proxy(driver, {
    get(target, property) {
      if (property === GUARDED) return true;
      if (property === 'configure') return configure;
      if (property === 'close') return close;
      const value: unknown = Reflect.get(target, property, target);
      if (typeof value !== 'function') return value;
      let wrapper = wrappers.get(property);
      if (wrapper !== undefined) return wrapper;
      const fn = value as (...args: unknown[]) => unknown;
      if (ID_METHODS.has(property)) {
        const check = OPTION_CHECKS.get(property);
        // Not `async`: the driver's own promise is handed back as it is (an async wrapper returning it
        // costs two more turns of the microtask queue per call); every throw still becomes a rejection.
        wrapper = (id: unknown, ...rest: unknown[]) => {
          try {
            assertImageId(id, reserved());
            check?.(rest[0]);
            if (state !== 'open') throw notOpen();
            return asPromise(fn.call(target, id, ...rest));
          } catch (error) {
            return Promise.reject(error);
          }
        };
      } else if (OPEN_METHODS.has(property)) {
        wrapper = (...args: unknown[]) => {
          try {
            if (state !== 'open') throw notOpen();
            return asPromise(fn.call(target, ...args));
          } catch (error) {
            return Promise.reject(error);
          }
        };
      } else if (property === 'getImageFilepath') {
        wrapper = (id: unknown, ...rest: unknown[]) => {
          assertImageId(id, reserved());
          return fn.call(target, id, ...rest);
        };
      } else {
        wrapper = fn.bind(target);
      }
      wrappers.set(property, wrapper);
      return wrapper;
    },
  });
}

/** Throws `InvalidArgumentError` unless `driver` looks like a {@link CacheDriver}. */
export function assertDriverShape(driver: unknown, who: string): asserts driver is CacheDriver {
  const required = ['configure', 'close', 'isCached', 'openForRead', 'openForWrite', 'getCachedImages', 'clean'];
  const missing =
    typeof driver !== 'object' || driver === null
      ? required
      : required.filter((name) => typeof (driver as Record<string, unknown>)[name] !== 'function');
  if (missing.length > 0) {
    throw new InvalidArgumentError(`${who}: options.driver must be a CacheDriver (missing ${missing.join(', ')})`);
  }
}
