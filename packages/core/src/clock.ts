/**
 * Epoch time in seconds (float) that never goes backwards and never repeats
 * within one process, so two accesses in the same millisecond still order.
 */
let last = 0;

/** Current time as epoch seconds with sub-millisecond steps; strictly increasing per process. */
export function nowSeconds(): number {
  const now = Date.now() / 1000;
  last = now > last ? now : last + 1e-6;
  return last;
}
