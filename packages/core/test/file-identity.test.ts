import { describe, expect, it } from 'vitest';
import { fileIdentity, sameFile } from '../src/driver-api.js';

/** A file as the listing sees it: inode, size, mtime in ns. */
const file = (ino: bigint, size: number, mtimeNs: bigint) => ({ ino, size, mtimeNs });
const MTIME = 1_765_000_000_123_456_789n;

describe('sameFile (the identity rule of ADR 0002, as listings check it for every file)', () => {
  it('matches the identity recorded for the file itself, and an mtime rounded to the microsecond by utimes', () => {
    const entry = file(1_234_567n, 4096, MTIME);
    expect(sameFile(fileIdentity(entry), entry)).toBe(true);
    expect(sameFile(fileIdentity(entry), file(1_234_567n, 4096, (MTIME / 1000n) * 1000n))).toBe(true);
    expect(sameFile(fileIdentity(entry), file(1_234_567n, 4096, MTIME + 4_000n))).toBe(true);
    expect(sameFile(fileIdentity(entry), file(1_234_567n, 4096, MTIME - 4_000n))).toBe(true);
  });

  it('does not match another inode, another size, or an mtime moved by more than a few microseconds', () => {
    const recorded = fileIdentity(file(1_234_567n, 4096, MTIME));
    expect(sameFile(recorded, file(1_234_568n, 4096, MTIME))).toBe(false);
    expect(sameFile(recorded, file(1_234_567n, 4097, MTIME))).toBe(false);
    expect(sameFile(recorded, file(1_234_567n, 4096, MTIME + 6_000n))).toBe(false);
    expect(sameFile(recorded, file(1_234_567n, 4096, MTIME - 6_000n))).toBe(false);
    expect(sameFile(recorded, file(1_234_567n, 4096, MTIME + 1_000_000n))).toBe(false);
  });

  it('decides inodes too large for the shortcut exactly (XFS and btrfs inodes are 64-bit)', () => {
    const big = 18_446_744_073_709_551_000n;
    const recorded = fileIdentity(file(big, 10, MTIME));
    expect(sameFile(recorded, file(big, 10, MTIME))).toBe(true);
    // Differs from `big` only beyond a double's precision.
    expect(sameFile(recorded, file(big + 1n, 10, MTIME))).toBe(false);
    expect(sameFile(fileIdentity(file(9_007_199_254_740_993n, 10, MTIME)), file(9_007_199_254_740_992n, 10, MTIME))).toBe(false);
  });

  it('leaves an identity in another format alone (not ours to judge): it matches', () => {
    expect(sameFile('glance-wrote-this', file(1n, 1, MTIME))).toBe(true);
    expect(sameFile(' 12:4096:1', file(12n, 4096, 1n))).toBe(true);
  });
});
