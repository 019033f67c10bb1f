import { describe, expect, it } from 'vitest';
import { ErrorCodes, formatChecksum, normalizeChecksum, parseStoredChecksum } from '../src/index.js';

describe('checksums', () => {
  it('a bare string is an md5 hex digest (Glance), lower-cased', () => {
    expect(normalizeChecksum('5D41402ABC4B2A76B9719D911017C592')).toEqual({ algorithm: 'md5', digest: '5d41402abc4b2a76b9719d911017c592' });
  });

  it.each([
    ['abc', /32 hexadecimal/],
    [{ algorithm: 'sha256', digest: 'a'.repeat(63) }, /64 hexadecimal/],
    [{ algorithm: 'sha512', digest: 'z'.repeat(128) }, /128 hexadecimal/],
    [{ algorithm: 'sha1', digest: 'a'.repeat(40) }, /unsupported checksum algorithm/],
  ])('rejects %j with InvalidArgumentError', (checksum, message) => {
    expect(() => normalizeChecksum(checksum as never)).toThrowError(message);
    expect(() => normalizeChecksum(checksum as never)).toThrowError(expect.objectContaining({ code: ErrorCodes.INVALID_ARGUMENT }));
  });

  it('stores md5 bare (as Glance does) and others with their algorithm, and parses both back', () => {
    const md5 = { algorithm: 'md5', digest: 'a'.repeat(32) } as const;
    const sha = { algorithm: 'sha256', digest: 'b'.repeat(64) } as const;
    expect(formatChecksum(md5)).toBe('a'.repeat(32));
    expect(formatChecksum(sha)).toBe(`sha256:${'b'.repeat(64)}`);
    expect(parseStoredChecksum(formatChecksum(md5))).toEqual(md5);
    expect(parseStoredChecksum(formatChecksum(sha))).toEqual(sha);
    expect(parseStoredChecksum('garbage')).toBeUndefined();
    expect(parseStoredChecksum(null)).toBeUndefined();
  });
});
