import { createHash } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { expect } from 'vitest';
import type { Fill, FillRole, ImageCache } from '../src/index.js';

/**
 * A source the test drives: `push(chunk)` makes one chunk available,
 * `end()` ends it, `fail(error)` makes the next read throw. `pulls` counts
 * how many chunks the fill has asked for so far.
 */
export function controlledSource() {
  const queue: (Buffer | Error | null)[] = [];
  let wake: (() => void) | undefined;
  let pulls = 0;
  let waitingForPull: { n: number; resolve: () => void }[] = [];
  const notify = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  async function* generate(): AsyncGenerator<Buffer> {
    for (;;) {
      pulls++;
      waitingForPull = waitingForPull.filter((w) => (pulls >= w.n ? (w.resolve(), false) : true));
      while (queue.length === 0) await new Promise<void>((resolve) => (wake = resolve));
      const item = queue.shift() as Buffer | Error | null;
      if (item === null) return;
      if (item instanceof Error) throw item;
      yield item;
    }
  }
  return {
    iterable: generate(),
    push(chunk: Buffer) {
      queue.push(chunk);
      notify();
    },
    end() {
      queue.push(null);
      notify();
    },
    fail(error: Error) {
      queue.push(error);
      notify();
    },
    get pulls() {
      return pulls;
    },
    /** Resolves once the fill has asked for the n-th chunk (it consumed the ones before). */
    pulled(n: number): Promise<void> {
      if (pulls >= n) return Promise.resolve();
      return new Promise((resolve) => waitingForPull.push({ n, resolve }));
    },
  };
}

/** Resolves once `fill.written >= bytes`. */
export function whenWritten(fill: Fill, bytes: number): Promise<void> {
  if (fill.written >= bytes) return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => {
      if (fill.written < bytes) return;
      fill.off('progress', check);
      fill.off('done', check);
      resolve();
    };
    fill.on('progress', check);
    fill.on('done', check);
  });
}

/**
 * Consumes a reader in flowing mode and records what arrived: `bytes()`,
 * `until(n)` (resolves once n bytes arrived), `ended` (resolves with all
 * bytes, or rejects with the stream's error).
 */
export function collector(stream: Readable) {
  const chunks: Buffer[] = [];
  let length = 0;
  let waiters: { n: number; resolve: () => void; reject: (error: Error) => void }[] = [];
  let failure: Error | undefined;
  let finished = false;
  const ended = new Promise<Buffer>((resolve, reject) => {
    stream.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      length += chunk.length;
      waiters = waiters.filter((w) => (length >= w.n ? (w.resolve(), false) : true));
    });
    stream.on('end', () => {
      finished = true;
      for (const w of waiters) w.reject(new Error(`stream ended after ${length} bytes`));
      waiters = [];
      resolve(Buffer.concat(chunks));
    });
    stream.on('error', (error: Error) => {
      failure = error;
      for (const w of waiters) w.reject(error);
      waiters = [];
      reject(error);
    });
  });
  ended.catch(() => undefined);
  return {
    ended,
    get length() {
      return length;
    },
    get error() {
      return failure;
    },
    get finished() {
      return finished;
    },
    bytes: () => Buffer.concat(chunks),
    until(n: number): Promise<void> {
      if (length >= n) return Promise.resolve();
      if (failure !== undefined) return Promise.reject(failure);
      return new Promise((resolve, reject) => waiters.push({ n, resolve, reject }));
    },
  };
}

/** Resolves with the stream's error once it fails (rejects if it ends instead). */
export function failureOf(stream: Readable): Promise<Error> {
  return new Promise((resolve, reject) => {
    stream.on('error', resolve);
    stream.on('end', () => reject(new Error('the stream ended instead of failing')));
    stream.resume();
  });
}

/** `bytes` bytes that never repeat at any period a reader could slip by (sha256 of a counter, block by block). */
export function imageBytes(seed: string, bytes: number): Buffer {
  const out = Buffer.alloc(bytes);
  for (let offset = 0, block = 0; offset < bytes; offset += 32, block++) {
    createHash('sha256').update(`${seed}:${block}`).digest().copy(out, offset);
  }
  return out;
}

/** `data` cut into chunks of `size` bytes (the last may be shorter). */
export function split(data: Buffer, size: number): Buffer[] {
  const chunks: Buffer[] = [];
  for (let offset = 0; offset < data.length; offset += size) chunks.push(data.subarray(offset, offset + size));
  return chunks;
}

/** Resolves once `fill` has `role` (at once when it has it already). */
export function whenRole(fill: Fill, role: FillRole): Promise<void> {
  if (fill.role === role) return Promise.resolve();
  return new Promise((resolve) => {
    const check = (now: FillRole) => {
      if (now !== role) return;
      fill.off('role', check);
      resolve();
    };
    fill.on('role', check);
  });
}

/** Asserts that `id` of `cache` (in `dir`) was rolled back: not cached, nothing in incomplete/, its partial file alone in invalid/. */
export async function expectRolledBack(cache: ImageCache, dir: string, id: string): Promise<void> {
  expect(await cache.isCached(id)).toBe(false);
  expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
  expect(await readdir(join(dir, 'invalid'))).toEqual([id]);
}
