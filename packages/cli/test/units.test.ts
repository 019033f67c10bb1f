import { describe, expect, it } from 'vitest';
import { formatSize, parseDuration, parseSize } from '../src/index.js';

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
