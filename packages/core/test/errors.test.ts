import { describe, expect, it } from 'vitest';
import {
  BadDriverConfigurationError,
  CacheError,
  CacheStorageError,
  ChecksumMismatchError,
  DriverNotOpenError,
  ErrorCodes,
  FillAbortedError,
  ImageBeingCachedError,
  ImageChangedError,
  ImageNotCachedError,
  InvalidArgumentError,
  InvalidImageIdError,
  RangeNotSatisfiableError,
} from '../src/index.js';

describe('typed errors', () => {
  const cases = [
    [new BadDriverConfigurationError('x', 'why'), ErrorCodes.BAD_DRIVER_CONFIGURATION, BadDriverConfigurationError],
    [new InvalidImageIdError('..', 'why'), ErrorCodes.INVALID_IMAGE_ID, InvalidImageIdError],
    [new InvalidArgumentError('why'), ErrorCodes.INVALID_ARGUMENT, InvalidArgumentError],
    [new ImageNotCachedError('a', '/c/a'), ErrorCodes.IMAGE_NOT_CACHED, ImageNotCachedError],
    [new ImageBeingCachedError('a', '/c/incomplete/a'), ErrorCodes.IMAGE_BEING_CACHED, ImageBeingCachedError],
    [new ChecksumMismatchError('a', 'md5', 'x', 'y'), ErrorCodes.CHECKSUM_MISMATCH, ChecksumMismatchError],
    [new CacheStorageError('why'), ErrorCodes.STORAGE, CacheStorageError],
    [new DriverNotOpenError('x', 'closed'), ErrorCodes.DRIVER_NOT_OPEN, DriverNotOpenError],
    [new RangeNotSatisfiableError('a', '/c/a', 10, 10), ErrorCodes.RANGE_NOT_SATISFIABLE, RangeNotSatisfiableError],
    [new ImageChangedError('a', '/c/a', '1:2:3', '4:2:3'), ErrorCodes.IMAGE_CHANGED, ImageChangedError],
    [new FillAbortedError('a', 'shutdown'), ErrorCodes.FILL_ABORTED, FillAbortedError],
  ] as const;

  it.each(cases)('%s has a stable code, a name and a working isInstance', (error, code, Class) => {
    expect(error.code).toBe(code);
    expect(error.name).toBe(Class.name);
    expect(error).toBeInstanceOf(CacheError);
    expect(Class.isInstance(error)).toBe(true);
    expect(CacheError.isCacheError(error, code)).toBe(true);
    for (const [other, otherCode] of cases) if (otherCode !== code) expect(Class.isInstance(other)).toBe(false);
  });

  it('every code is distinct', () => {
    expect(new Set(Object.values(ErrorCodes)).size).toBe(Object.values(ErrorCodes).length);
  });

  it('isCacheError recognizes an error from another copy of the package by its marker', () => {
    const foreign = Object.assign(new Error('x'), { code: ErrorCodes.STORAGE, [Symbol.for('@cache/core.error')]: true });
    expect(CacheStorageError.isInstance(foreign)).toBe(true);
    expect(CacheError.isCacheError(new Error('plain'))).toBe(false);
    expect(CacheError.isCacheError(null)).toBe(false);
  });

  it('messages name the path and keep the cause', () => {
    const cause = new Error('ENOENT');
    const error = new ImageNotCachedError('img', '/cache/img', cause);
    expect(error.message).toContain('/cache/img');
    expect(error.path).toBe('/cache/img');
    expect(error.cause).toBe(cause);
  });
});
