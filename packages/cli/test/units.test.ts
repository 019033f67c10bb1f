import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { formatSize, formatSizeExact, parseDuration, parseSize } from '../src/index.js';

describe('parseSize', () => {
  it.each([
    ['1048576', 1048576],
    ['0', 0],
    ['500MB', 500 * 1024 ** 2], // bytes: MB is 1024²
    ['500MiB', 500 * 1024 ** 2],
    ['20GiB', 20 * 1024 ** 3],
    ['20 GB', 20 * 1024 ** 3],
    ['1.5KB', 1536],
    ['10g', 10 * 1024 ** 3],
    ['2TiB', 2 * 1024 ** 4],
    ['7b', 7],
  ])('%s -> %d', (text, bytes) => {
    expect(parseSize(text)).toBe(bytes);
  });

  it.each(['', 'huge', '20XB', '-5MB', '1.5', '20iB', '5 MB extra', 'GiB'])('refuses %j with CLI_INVALID_SIZE', (text) => {
    expect(() => parseSize(text, '--max-size')).toThrow(expect.objectContaining({ code: 'CLI_INVALID_SIZE', exitCode: 2 }));
  });
});

describe('parseDuration', () => {
  it.each([
    ['3600', 3600],
    ['0', 0],
    ['1h', 3600],
    ['30m', 1800],
    ['90s', 90],
    ['2 days', 172800],
    ['500ms', 0.5],
  ])('%s -> %d s', (text, seconds) => {
    expect(parseDuration(text)).toBe(seconds);
  });

  it.each(['', 'soon', '-1h', '1 fortnight'])('refuses %j with CLI_INVALID_DURATION', (text) => {
    expect(() => parseDuration(text)).toThrow(expect.objectContaining({ code: 'CLI_INVALID_DURATION', exitCode: 2 }));
  });
});

describe('formatSize', () => {
  it('uses binary units', () => {
    expect([0, 1023, 1024, 1536, 10 * 1024 ** 3, 300_000].map(formatSize)).toEqual(['0 B', '1023 B', '1 KiB', '1.5 KiB', '10 GiB', '293 KiB']);
  });

  it('keeps the zeros of a whole number (200 KiB is not 2 KiB)', () => {
    expect([200 * 1024, 100 * 1024 ** 2, 10 * 1024, 20.5 * 1024, 1.05 * 1024 ** 3].map(formatSize)).toEqual(['200 KiB', '100 MiB', '10 KiB', '20.5 KiB', '1.05 GiB']);
  });
});

// Property-based: sizes print as they were given (issue 13: --max-size 450MiB was printed as "45 MiB").
describe('sizes round-trip (fast-check)', () => {
  const UNITS = ['', 'B', 'K', 'KB', 'KiB', 'M', 'MB', 'MiB', 'G', 'GB', 'GiB', 'T', 'TB', 'TiB', 'P', 'PiB'];
  const POWER: Record<string, number> = { '': 0, B: 0, K: 1, M: 2, G: 3, T: 4, P: 5 };
  const powerOf = (unit: string) => POWER[unit.charAt(0)] ?? 0;
  /** What an operator types: a whole number, or a number with up to two decimals, and a unit; at most 8 PiB. */
  const sizeText = fc
    .tuple(fc.integer({ min: 0, max: 1_000_000 }), fc.integer({ min: 0, max: 99 }), fc.constantFrom(0, 1, 2), fc.constantFrom(...UNITS), fc.constantFrom('', ' '))
    .filter(([whole, , , unit]) => whole * 1024 ** powerOf(unit) < 8 * 1024 ** 5)
    .map(([whole, fraction, decimals, unit, space]) => {
      // Plain bytes take no decimals (parseSize refuses "1.5").
      const amount = decimals === 0 || powerOf(unit) === 0 ? String(whole) : `${whole}.${String(fraction).padStart(2, '0').slice(0, decimals)}`;
      return `${amount}${space}${unit}`;
    });

  it('parse -> formatSizeExact -> parse gives the same bytes, for sizes as operators write them', () => {
    fc.assert(
      fc.property(sizeText, (text) => {
        const bytes = parseSize(text);
        expect(parseSize(formatSizeExact(bytes))).toBe(bytes);
      }),
      { numRuns: 5000 },
    );
  });

  it('formatSizeExact is exact for any byte count, and prints a whole number of a unit as that number', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), (bytes) => {
        expect(parseSize(formatSizeExact(bytes))).toBe(bytes);
      }),
      { numRuns: 5000 },
    );
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 1023 }), fc.constantFrom('KiB', 'MiB', 'GiB', 'TiB'), (amount, unit) => {
        expect(formatSizeExact(parseSize(`${amount}${unit}`))).toBe(`${amount} ${unit}`);
        // The rounding printer agrees for these (what `serve` printed as "45 MiB" for 450MiB).
        expect(formatSize(parseSize(`${amount}${unit}`))).toBe(`${amount} ${unit}`);
      }),
      { numRuns: 2000 },
    );
  });

  it('formatSize (measured sizes) is within 0.5% (and a byte) of the value', () => {
    fc.assert(
      // Up to 7 PiB: near 8 PiB (2^53) the rounded text is past what parseSize takes.
      fc.property(fc.integer({ min: 0, max: 7 * 1024 ** 5 }), (bytes) => {
        const back = parseSize(formatSize(bytes));
        expect(Math.abs(back - bytes)).toBeLessThanOrEqual(bytes * 0.005 + 1);
      }),
      { numRuns: 5000 },
    );
  });

  it.each([
    [450 * 1024 ** 2, '450 MiB'],
    [1500 * 1024 ** 2, '1500 MiB'],
    [1.5 * 1024 ** 3, '1.5 GiB'],
    [10 * 1024 ** 3, '10 GiB'],
    [123456789, '123456789 B'],
    [0, '0 B'],
  ])('formatSizeExact(%d) is %j', (bytes, text) => {
    expect(formatSizeExact(bytes)).toBe(text);
  });
});
