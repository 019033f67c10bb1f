import { describe, expect, it } from 'vitest';
import { assertImageId, ErrorCodes, imageIdProblem, InvalidImageIdError, isValidImageId, RESERVED_NAMES } from '../src/index.js';
import { CacheDirectory } from '../src/cache-dir.js';

describe('image ids', () => {
  it.each([
    'a',
    '8a3f1e8e-6c3a-4a1f-9d1e-2f0d3c5b7a91',
    'image.qcow2',
    'x'.repeat(255),
    'é'.repeat(127), // 254 bytes
    'with space',
    'ends-with-dot.',
  ])('accepts %j', (id) => {
    expect(imageIdProblem(id)).toBeUndefined();
    expect(isValidImageId(id)).toBe(true);
  });

  it.each([
    ['', /empty/],
    ['.', /relative/],
    ['..', /relative/],
    ['.hidden', /starts with '\.'/],
    ['a/b', /separator/],
    ['a\\b', /separator/],
    ['a\0b', /NUL/],
    ['x'.repeat(256), /255 bytes/],
    ['é'.repeat(128), /255 bytes/],
    ['\ud800', /surrogate/],
    ['incomplete', /reserved/],
    ['QUEUE', /reserved/],
    ['cache.db-journal', /reserved/],
    ['image_cache_db_init', /reserved/],
  ])('rejects %j', (id, reason) => {
    expect(imageIdProblem(id)).toMatch(reason);
    expect(() => assertImageId(id)).toThrow(InvalidImageIdError);
  });

  it.each([42, null, undefined, {}, ['a']])('rejects the non-string %j', (id) => {
    expect(() => assertImageId(id)).toThrowError(expect.objectContaining({ code: ErrorCodes.INVALID_IMAGE_ID }));
  });

  it('rejects a driver-specific reserved name, case-insensitively', () => {
    expect(isValidImageId('Meta.DB', ['meta.db'])).toBe(false);
    expect(isValidImageId('meta.db')).toBe(true);
  });

  it('reserves the three sub-directories and the default database files', () => {
    for (const name of ['incomplete', 'invalid', 'queue', 'cache.db', 'cache.db-wal', 'cache.db-shm']) {
      expect(RESERVED_NAMES).toContain(name);
    }
  });

  it('says what to do in the message', () => {
    expect(() => assertImageId('../etc')).toThrow(/one path segment of at most 255 bytes/);
  });
});

describe('CacheDirectory.checkedActivePath: the id check, remembered for valid ids', () => {
  const dir = new CacheDirectory('/var/cache/images', { driverName: 'test', reservedNames: ['my.db'] });

  it('gives the active path of a valid id, the same on every call', () => {
    expect(dir.checkedActivePath('img-1')).toBe('/var/cache/images/img-1');
    expect(dir.checkedActivePath('img-1')).toBe(dir.path('img-1'));
  });

  it.each(['', '.hidden', 'a/b', 'incomplete', 'MY.DB', '\ud800'])('refuses %j with InvalidImageIdError, every time (nothing remembered)', (id) => {
    for (let i = 0; i < 2; i++) expect(() => dir.checkedActivePath(id)).toThrow(InvalidImageIdError);
  });

  it('stays right past its bound (it starts over, it never answers for another id)', () => {
    for (let i = 0; i < 10_000; i++) expect(dir.checkedActivePath(`id-${i}`)).toBe(`/var/cache/images/id-${i}`);
    expect(() => dir.checkedActivePath('queue')).toThrow(InvalidImageIdError);
    expect(dir.checkedActivePath('id-3')).toBe('/var/cache/images/id-3');
  });
});
