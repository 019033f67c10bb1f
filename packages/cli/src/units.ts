import bytes from 'bytes';
import ms from 'ms';
import { CliErrorCodes, usageError } from './errors.js';

const SIZE = /^(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)(b?)$/i;

/**
 * Parses a byte size: a plain number of bytes (`1048576`) or a number with a
 * unit (`500MB`, `20GiB`, `1.5 TB`, `10g`). Parsing is done by `bytes`, which
 * counts every unit in powers of 1024: `MB` and `MiB` are both 1024² bytes.
 *
 * @param text - the size as the operator wrote it.
 * @param what - what the size is for, used in the error message (e.g. `--max-size`).
 * @throws CliError `CLI_INVALID_SIZE` (exit code 2) for anything else, including negative sizes.
 */
export function parseSize(text: string | number, what = 'size'): number {
  if (typeof text === 'number') {
    if (Number.isSafeInteger(text) && text >= 0) return text;
    throw invalidSize(String(text), what);
  }
  const trimmed = text.trim();
  const match = SIZE.exec(trimmed);
  // `bytes.parse('20GiB')` would silently give 20 (it falls back to parseInt), so the syntax is checked here first.
  if (match === null || (match[3] !== '' && match[2] === '')) throw invalidSize(text, what);
  const [, amount = '', prefix = '', , b = ''] = match;
  if (prefix === '' && !/^\d+$/.test(amount)) throw invalidSize(text, what);
  const value = bytes.parse(prefix === '' ? amount : `${amount}${prefix}b`);
  if (value === null || !Number.isSafeInteger(value) || value < 0) throw invalidSize(text, what);
  return value;
}

/**
 * Parses a free-space threshold (`--free-run`, `--free-cull`, `--free-stop`):
 * a percentage of the cache filesystem (`10%`, `2.5%`: of its blocks and its
 * inodes) or a size of free space (`20GiB`, as {@link parseSize}: blocks only).
 *
 * @throws CliError `CLI_INVALID_SIZE` (exit code 2) for anything else, or a percentage outside 0 to 100 (exclusive).
 */
export function parseThreshold(text: string | number, what = 'threshold'): { percent: number } | { bytes: number } {
  const match = typeof text === 'string' ? /^\s*(\d+(?:\.\d+)?)\s*%\s*$/.exec(text) : null;
  if (match !== null) {
    const percent = Number(match[1]);
    if (percent >= 100) {
      throw usageError(CliErrorCodes.INVALID_SIZE, `invalid ${what} ${JSON.stringify(text)}: a percentage of the filesystem must be below 100%`);
    }
    return { percent };
  }
  try {
    return { bytes: parseSize(text, what) };
  } catch {
    throw usageError(
      CliErrorCodes.INVALID_SIZE,
      `invalid ${what} ${JSON.stringify(String(text))}: use a percentage of the filesystem (e.g. 7%) or a size of free space (e.g. 20GiB)`,
    );
  }
}

/** A threshold as the operator writes it: `7%`, `20 GiB`. */
export function formatThreshold(threshold: { percent: number } | { bytes: number }): string {
  return 'percent' in threshold ? `${threshold.percent}%` : formatSizeExact(threshold.bytes);
}

function invalidSize(text: string, what: string) {
  return usageError(
    CliErrorCodes.INVALID_SIZE,
    `invalid ${what} ${JSON.stringify(text)}: use bytes or a number with a unit, e.g. 500MB, 20GiB (units are powers of 1024)`,
  );
}

/**
 * Parses a duration into seconds: plain seconds (`3600`, `0`) or an `ms`
 * duration (`1h`, `30m`, `90s`, `2 days`, `500ms`).
 *
 * @throws CliError `CLI_INVALID_DURATION` (exit code 2) for anything else, including negative durations.
 */
export function parseDuration(text: string | number, what = 'duration'): number {
  if (typeof text === 'number') {
    if (Number.isFinite(text) && text >= 0) return text;
    throw invalidDuration(String(text), what);
  }
  const trimmed = text.trim();
  if (/^\d+(?:\.\d+)?$/.test(trimmed)) return Number(trimmed);
  const millis = trimmed.length > 0 && trimmed.length <= 100 ? (ms(trimmed as ms.StringValue) as number | undefined) : undefined;
  if (typeof millis !== 'number' || !Number.isFinite(millis) || millis < 0) throw invalidDuration(text, what);
  return millis / 1000;
}

function invalidDuration(text: string, what: string) {
  return usageError(
    CliErrorCodes.INVALID_DURATION,
    `invalid ${what} ${JSON.stringify(text)}: use seconds or a duration such as 90s, 30m, 1h, 2d`,
  );
}

/**
 * Parses a whole number within `[min, max]` (concurrency, retries).
 *
 * @throws CliError `CLI_INVALID_NUMBER` (exit code 2).
 */
export function parseInteger(text: string | number, what: string, min: number, max: number): number {
  const value = typeof text === 'number' ? text : /^\s*\d+\s*$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw usageError(CliErrorCodes.INVALID_NUMBER, `invalid ${what} ${JSON.stringify(String(text))}: use a whole number from ${min} to ${max}`);
  }
  return value;
}

const TRUE_WORDS: ReadonlySet<string> = new Set(['true', '1', 'yes', 'on']);
const FALSE_WORDS: ReadonlySet<string> = new Set(['false', '0', 'no', 'off']);

/**
 * Parses a switch: `true`/`false` (a flag given, a config file's boolean), or
 * `true`, `false`, `1`, `0`, `yes`, `no`, `on`, `off` in any case (an
 * environment variable, a config file's string or number).
 *
 * @throws CliError `CLI_INVALID_BOOLEAN` (exit code 2).
 */
export function parseBoolean(value: unknown, what = 'switch'): boolean {
  if (typeof value === 'boolean') return value;
  const word = typeof value === 'string' || typeof value === 'number' ? String(value).trim().toLowerCase() : undefined;
  if (word !== undefined && TRUE_WORDS.has(word)) return true;
  if (word !== undefined && FALSE_WORDS.has(word)) return false;
  throw usageError(CliErrorCodes.INVALID_BOOLEAN, `invalid ${what} ${JSON.stringify(typeof value === 'string' ? value : String(value))}: use true or false (also 1/0, yes/no, on/off)`);
}

const IEC = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'] as const;

/**
 * Formats bytes for people with binary units and three significant digits:
 * `1.5 MiB`, `293 KiB`, `512 B`. For measured sizes (totals, files, rates);
 * the text can be off by up to 0.5%. A size someone configured is printed
 * with {@link formatSizeExact}, which never rounds.
 */
export function formatSize(value: number): string {
  let unit = 0;
  let scaled = value;
  while (Math.abs(scaled) >= 1024 && unit < IEC.length - 1) {
    scaled /= 1024;
    unit++;
  }
  // Trailing zeros go only after a decimal point: 200 KiB stays "200", 1.50 becomes "1.5".
  const text = unit === 0 ? String(Math.round(scaled)) : scaled.toFixed(scaled >= 100 ? 0 : scaled >= 10 ? 1 : 2).replace(/(\.\d*?)0+$/, '$1').replace(/\.$/, '');
  return `${text} ${IEC[unit]}`;
}

/**
 * Formats a byte size so that {@link parseSize} gives back exactly `value`:
 * the largest unit in which it is a number with at most two decimals that
 * parses back to the same bytes (`450 MiB`, `1.5 GiB`, `1500 MiB`), else
 * plain bytes (`123456789 B`). For configured sizes (a budget): they print
 * as they were given, not rounded.
 */
export function formatSizeExact(value: number): string {
  if (!Number.isSafeInteger(value) || value < 0) return `${value} B`;
  for (let unit = IEC.length - 1; unit > 0; unit--) {
    const scaled = value / 1024 ** unit;
    if (scaled < 1) continue;
    for (let decimals = 0; decimals <= 2; decimals++) {
      const number = scaled.toFixed(decimals);
      if (parseSizeOrUndefined(`${number}${IEC[unit]}`) === value) return `${number.includes('.') ? number.replace(/0+$/, '').replace(/\.$/, '') : number} ${IEC[unit]}`;
    }
  }
  return `${value} B`;
}

function parseSizeOrUndefined(text: string): number | undefined {
  try {
    return parseSize(text);
  } catch {
    return undefined; // rounded up past the largest size (8 PiB)
  }
}

/** Formats a duration in seconds for people: `1h`, `30m`, `1.5s`. */
export function formatDuration(seconds: number): string {
  return ms(Math.round(seconds * 1000));
}

/** An epoch-seconds time as ISO-8601 UTC to the second (`2026-01-02T03:04:05Z`), or `N/A` for 0. */
export function formatTime(epochSeconds: number): string {
  if (!(epochSeconds > 0)) return 'N/A';
  return new Date(Math.floor(epochSeconds * 1000)).toISOString().replace(/\.\d{3}Z$/, 'Z');
}
