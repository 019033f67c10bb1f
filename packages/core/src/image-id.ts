import { InvalidImageIdError } from './errors.js';

/** An image id: one file name in the cache directory. Validate with {@link assertImageId}. */
export type ImageId = string;

/** Longest id accepted, in UTF-8 bytes (the usual file-name limit). */
export const MAX_IMAGE_ID_BYTES = 255;

/**
 * Names the cache directory uses for itself; never accepted as ids (compared
 * case-insensitively). Besides our own, the lock and probe files that Glance
 * leaves in a cache directory, so they are never listed as images.
 */
export const RESERVED_NAMES: readonly string[] = Object.freeze([
  'incomplete',
  'invalid',
  'queue',
  'cache.db',
  'cache.db-wal',
  'cache.db-shm',
  'cache.db-journal',
  // Glance's inter-process lock files and xattr probe (spec section 2).
  'image_cache_db_init',
  'glance-cache',
  'glance-cache-clean',
  'glance-cache-prune',
  'sqlite_centralized_migrate',
  'checkme',
]);

const NO_NAMES: readonly string[] = Object.freeze([]);
const SIMPLE_ID = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}$/;
const RESERVED_SET: ReadonlySet<string> = new Set(RESERVED_NAMES);
/** Lower-cased sets of the drivers' extra reserved names, made once per array. */
const extraSets = new WeakMap<readonly string[], { length: number; set: Set<string> }>();

function reservedSet(names: readonly string[]): ReadonlySet<string> {
  let known = extraSets.get(names);
  if (known === undefined || known.length !== names.length) {
    known = { length: names.length, set: new Set(names.map((name) => name.toLowerCase())) };
    extraSets.set(names, known);
  }
  return known.set;
}

/**
 * Why `id` is not a valid image id, or `undefined` when it is.
 *
 * @param extraReserved - further names a driver keeps for itself (e.g. a custom database file name).
 */
export function imageIdProblem(id: unknown, extraReserved: readonly string[] = NO_NAMES): string | undefined {
  // The common case first, without allocating: ASCII letters, digits, '.', '_', '-', not starting with '.',
  // at most 255 characters (= bytes), and not reserved. Every such id passes every check below.
  if (typeof id === 'string' && SIMPLE_ID.test(id)) {
    const lower = id.toLowerCase();
    if (!RESERVED_SET.has(lower) && !reservedSet(extraReserved).has(lower)) return undefined;
  }
  if (typeof id !== 'string') return 'it must be a string';
  if (id.length === 0) return 'it is empty';
  if (id === '.' || id === '..') return 'it is a relative directory name';
  if (id.startsWith('.')) return "it starts with '.' (such names are kept for the cache's own files)";
  if (id.includes('/') || id.includes('\\')) return 'it contains a path separator';
  if (id.includes('\0')) return 'it contains a NUL character';
  if (Buffer.byteLength(id, 'utf8') > MAX_IMAGE_ID_BYTES) return `it is longer than ${MAX_IMAGE_ID_BYTES} bytes`;
  if (!id.isWellFormed()) return 'it is not well-formed Unicode (a lone surrogate)';
  const lower = id.toLowerCase();
  if (RESERVED_NAMES.includes(lower) || extraReserved.some((name) => name.toLowerCase() === lower)) {
    return `'${id}' is a reserved name of the cache directory`;
  }
  return undefined;
}

/** True when `id` is a valid image id. */
export function isValidImageId(id: unknown, extraReserved: readonly string[] = NO_NAMES): id is ImageId {
  return imageIdProblem(id, extraReserved) === undefined;
}

/** Throws {@link InvalidImageIdError} unless `id` is a valid image id. */
export function assertImageId(id: unknown, extraReserved: readonly string[] = NO_NAMES): asserts id is ImageId {
  const problem = imageIdProblem(id, extraReserved);
  if (problem !== undefined) throw new InvalidImageIdError(id, problem);
}
