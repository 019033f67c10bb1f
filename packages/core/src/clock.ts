/**
 * Epoch time in seconds (float) that never goes backwards and never repeats
 * within one process, so two accesses in the same millisecond still order.
 * Kept in whole microseconds: a float step of 1e-6 s is not representable
 * exactly at today's epoch, and drivers that store microseconds (or
 * nanoseconds) must see every step.
 */
let lastMicros = 0;

/** Current time as epoch seconds in whole microseconds; strictly increasing per process. */
export function nowSeconds(): number {
  const now = Date.now() * 1000;
  lastMicros = now > lastMicros ? now : lastMicros + 1;
  return lastMicros / 1e6;
}
