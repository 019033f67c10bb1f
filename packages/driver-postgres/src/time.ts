/**
 * Exact conversion between the cache's epoch-second floats (whole
 * microseconds, see core's `nowSeconds()`) and PostgreSQL `timestamptz`
 * (microsecond resolution). Values travel as ISO-8601 text on the way in and
 * as integer microseconds on the way out, never through a float division on
 * the server, so a time read back is the very number that was written and
 * the LRU order of accesses within one millisecond survives.
 */

/** Epoch seconds -> whole microseconds (rounded to the nearest). */
export function toMicros(seconds: number): number {
  return Math.round(seconds * 1e6);
}

/** Epoch seconds -> a `timestamptz` literal with all six fractional digits, in UTC. */
export function toTimestamp(seconds: number): string {
  const micros = toMicros(seconds);
  const ms = Math.floor(micros / 1000);
  const rest = micros - ms * 1000;
  const iso = new Date(ms).toISOString(); // YYYY-MM-DDTHH:MM:SS.mmmZ
  return `${iso.slice(0, -1)}${String(rest).padStart(3, '0')}Z`;
}

/** Integer microseconds (as `pg` returns a `bigint`: a string) -> epoch seconds. */
export function fromMicros(micros: string | number | null | undefined): number {
  if (micros === null || micros === undefined) return 0;
  return Number(micros) / 1e6;
}
