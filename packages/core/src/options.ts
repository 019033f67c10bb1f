import type { QuarantineOptions, ReadOptions } from './driver.js';
import { InvalidArgumentError, RangeNotSatisfiableError } from './errors.js';
import type { ImageId } from './image-id.js';

/** {@link ReadOptions} after {@link normalizeReadOptions}: every field decided. */
export interface NormalizedReadOptions {
  /** First byte, 0-based. */
  readonly start: number;
  /** Last byte, inclusive; `undefined` reads to the end. */
  readonly end: number | undefined;
  /** Whether delivering the last byte of the image counts a hit. */
  readonly countHit: boolean;
  /** The identity the file must have, if the caller named one. */
  readonly identity: string | undefined;
}

const KNOWN = new Set(['start', 'end', 'countHit', 'identity']);

/**
 * Validates {@link ReadOptions} before any I/O: `start`/`end` integers >= 0
 * (safe integers), `end >= start`, `countHit` a boolean, `identity` a
 * non-empty string, no unknown keys. Anything else is an
 * `InvalidArgumentError` that names the value. `undefined` means a full read.
 */
export function normalizeReadOptions(options: unknown): NormalizedReadOptions {
  if (options === undefined || options === null) return { start: 0, end: undefined, countHit: true, identity: undefined };
  if (typeof options !== 'object' || Array.isArray(options)) {
    throw new InvalidArgumentError(`read options must be an object like { start, end, countHit, identity }, got ${describe(options)}`);
  }
  const given = options as Record<string, unknown>;
  for (const key of Object.keys(given)) {
    if (!KNOWN.has(key)) throw new InvalidArgumentError(`unknown read option '${key}': use start, end, countHit or identity`);
  }
  const start = position(given.start, 'start') ?? 0;
  const end = position(given.end, 'end');
  if (end !== undefined && end < start) {
    throw new InvalidArgumentError(`read range end ${end} is before its start ${start}: end is the last byte to read (inclusive), so end >= start`);
  }
  if (given.countHit !== undefined && typeof given.countHit !== 'boolean') {
    throw new InvalidArgumentError(`read option countHit must be a boolean, got ${describe(given.countHit)}`);
  }
  if (given.identity !== undefined && (typeof given.identity !== 'string' || given.identity === '')) {
    throw new InvalidArgumentError(`read option identity must be the non-empty identity from stat(id), got ${describe(given.identity)}`);
  }
  return { start, end, countHit: given.countHit !== false, identity: given.identity as string | undefined };
}

/**
 * Throws `RangeNotSatisfiableError` when `start` is at or past `size`
 * (`start: 0` always passes: an empty image reads as an empty stream).
 */
export function assertSatisfiable(id: ImageId, path: string, options: NormalizedReadOptions, size: number): void {
  if (options.start > 0 && options.start >= size) throw new RangeNotSatisfiableError(id, path, options.start, size);
}

function position(value: unknown, name: string): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new InvalidArgumentError(`read range ${name} must be an integer byte offset >= 0, got ${describe(value)}`);
  }
  return value;
}

function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value);
  if (value === null) return 'null';
  return Array.isArray(value) ? 'an array' : typeof value;
}

/** Validates {@link QuarantineOptions}: a non-empty `reason`, an optional non-empty `identity`. */
export function normalizeQuarantineOptions(options: unknown): QuarantineOptions {
  const given = (typeof options === 'object' && options !== null ? options : {}) as Partial<Record<keyof QuarantineOptions, unknown>>;
  if (typeof given.reason !== 'string' || given.reason.trim() === '') {
    throw new InvalidArgumentError('quarantine needs { reason: string }: say why the entry is taken out (e.g. "sha256 mismatch")');
  }
  if (given.identity !== undefined && (typeof given.identity !== 'string' || given.identity === '')) {
    throw new InvalidArgumentError('quarantine option identity must be the non-empty identity from stat(id)');
  }
  return given.identity === undefined ? { reason: given.reason } : { reason: given.reason, identity: given.identity };
}
