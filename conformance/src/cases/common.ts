import { join } from 'node:path';
import { ErrorCodes, type CacheDriver, type ErrorCode } from '@cache/core';
import { expect } from 'vitest';
import { codeOf, failureOf, isRegularFile, listNames, rejectionOf } from '../helpers.js';

export { ErrorCodes };

/** Asserts that `error` carries the stable `code` (never compares messages). */
export function expectCode(error: unknown, code: ErrorCode, context = ''): void {
  const got = codeOf(error);
  const shown = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  expect(got, `${context ? `${context}: ` : ''}expected an error with code ${code}, got ${String(got)} (${shown})`).toBe(code);
}

/** Awaits `promise`, asserts it rejects with `code`, returns the error. */
export async function expectRejects(promise: Promise<unknown>, code: ErrorCode, context = ''): Promise<unknown> {
  let error: unknown;
  try {
    error = await rejectionOf(promise);
  } catch {
    throw new Error(`${context ? `${context}: ` : ''}expected a rejection with code ${code}, but the call resolved`);
  }
  expectCode(error, code, context);
  return error;
}

/** Calls `fn` (sync or async), asserts it throws or rejects with `code`. */
export async function expectFails(fn: () => unknown, code: ErrorCode, context = ''): Promise<unknown> {
  let error: unknown;
  try {
    error = await failureOf(fn);
  } catch (notThrown) {
    throw new Error(`${context ? `${context}: ` : ''}expected code ${code}: ${(notThrown as Error).message}`);
  }
  expectCode(error, code, context);
  return error;
}

/** The on-disk places of one cache directory. */
export function layout(dir: string) {
  return {
    active: (id: string) => join(dir, id),
    incomplete: (id: string) => join(dir, 'incomplete', id),
    invalid: (id: string) => join(dir, 'invalid', id),
    queue: (id: string) => join(dir, 'queue', id),
    dir: (status: 'incomplete' | 'invalid' | 'queue') => join(dir, status),
  };
}

/** Where a file for `id` exists on disk, as a set of statuses. */
export async function whereOnDisk(dir: string, id: string): Promise<string[]> {
  const at = layout(dir);
  const found: string[] = [];
  if (await isRegularFile(at.active(id))) found.push('active');
  for (const status of ['incomplete', 'invalid', 'queue'] as const) {
    if (await isRegularFile(join(dir, status, id))) found.push(status);
  }
  return found;
}

/** Names in one sub-directory. */
export function namesIn(dir: string, status: 'incomplete' | 'invalid' | 'queue'): Promise<string[]> {
  return listNames(join(dir, status));
}

/** Ids listed by `getCachedImages()`. */
export async function listedIds(driver: CacheDriver): Promise<string[]> {
  return (await driver.getCachedImages()).map((image) => image.imageId);
}

/** Epoch seconds now. */
export function nowSeconds(): number {
  return Date.now() / 1000;
}

/**
 * Asserts `value` is an epoch-seconds number taken between the clock reads
 * `from` and `to` (made before and after the thing happened), give or take
 * one second for drivers that keep whole seconds or take times from the
 * filesystem's coarser clock. No tolerance on elapsed time: a loaded machine
 * only widens the bracket.
 */
export function expectEpochSecondsBetween(value: unknown, what: string, from: number, to: number): void {
  expect(typeof value, `${what} must be a number (epoch seconds)`).toBe('number');
  const n = value as number;
  expect(Number.isFinite(n), `${what} must be finite`).toBe(true);
  expect(n, `${what} = ${n} must be epoch seconds, not before the clock read ${from} made before it happened`).toBeGreaterThanOrEqual(from - 1);
  expect(n, `${what} = ${n} must be epoch seconds, not after the clock read ${to} made after it happened`).toBeLessThanOrEqual(to + 1);
}
