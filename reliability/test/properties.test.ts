/**
 * Property-based tests (fast-check) of each driver on a real filesystem:
 *
 * 1. Random command sequences against a simple in-memory model: after every
 *    command the listing, sizes, hit counts, LRU head, queue (FIFO),
 *    isCached, getHitCount and the `invalid/` directory agree with the model;
 *    prune() and clean() return what the model predicts.
 * 2. Thousands of generated hostile ids passed to every id-taking method:
 *    the invalid ones (as `imageIdProblem` classifies them) are rejected with
 *    CACHE_INVALID_IMAGE_ID by every method, the valid ones are accepted, and
 *    nothing on disk changes.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ImageCache, imageIdProblem, RESERVED_NAMES, type CacheDriver } from '@cache/core';
import { READ_CHUNK_SIZE } from '@cache/core/driver';
import { abortWrite, failingSource, readImage, readPartially, snapshotTree, writeChunk, writeImage } from '@cache/conformance';
import { chunksOf, makeContent, sha256Hex } from './fixtures/content.mjs';
import { createDriver, DRIVER_NAMES, freshDir, namesIn, reliabilityTarget, removeDir, type DriverName } from './helpers.js';

const target = await reliabilityTarget();

/** Runs per driver (RELIABILITY_PROPERTY_RUNS changes it for a local run). */
const MODEL_RUNS = Number(process.env.RELIABILITY_PROPERTY_RUNS ?? 100);
const HOSTILE_IDS_PER_DRIVER = Number(process.env.RELIABILITY_HOSTILE_IDS ?? 2500);
/** fast-check seed: random unless RELIABILITY_SEED is set; always printed, so a failure can be replayed. */
const SEED = process.env.RELIABILITY_SEED === undefined ? Date.now() % 2 ** 31 : Number(process.env.RELIABILITY_SEED);

// ---- 1. the model -------------------------------------------------------------------

const IDS = ['a', 'b', 'c', 'd'] as const;
/** 300 000 > READ_CHUNK_SIZE: such an entry can be abandoned after its first chunk. */
const SIZES = [0, 1, 777, 4096, 65_537, 300_000] as const;

type Command =
  | { kind: 'write'; id: string; size: number }
  | { kind: 'cacheImage'; id: string; size: number }
  | { kind: 'failedWrite'; id: string; size: number; how: 'destroy' | 'source' | 'checksum' }
  | { kind: 'read'; id: string }
  | { kind: 'abortedRead'; id: string }
  | { kind: 'delete'; id: string }
  | { kind: 'deleteAll' }
  | { kind: 'queue'; id: string }
  | { kind: 'dequeue'; id: string }
  | { kind: 'dequeueAll' }
  | { kind: 'prune'; maxSize: number }
  | { kind: 'clean' };

const id = fc.constantFrom(...IDS);
const size = fc.constantFrom(...SIZES);
const commandArb: fc.Arbitrary<Command> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('write' as const), id, size }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('cacheImage' as const), id, size }) },
  {
    weight: 2,
    arbitrary: fc.record({ kind: fc.constant('failedWrite' as const), id, size, how: fc.constantFrom('destroy' as const, 'source' as const, 'checksum' as const) }),
  },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('read' as const), id }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('abortedRead' as const), id }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('delete' as const), id }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'deleteAll' as const }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('queue' as const), id }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('dequeue' as const), id }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'dequeueAll' as const }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('prune' as const), maxSize: fc.constantFrom(0, 1, 5000, 70_000, 370_000, 700_000, 10 ** 9) }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'clean' as const }) },
);

interface ModelEntry {
  size: number;
  /** Seed text of the committed bytes (each commit writes new bytes). */
  seed: string;
  hits: number;
  /** Logical times: the model's clock ticks once per commit and per completed read. */
  accessed: number;
  committed: number;
}

class Model {
  readonly entries = new Map<string, ModelEntry>();
  queue: string[] = [];
  /** Ids with a file in invalid/ (a newer failure replaces an older file). */
  readonly invalid = new Set<string>();
  #clock = 0;
  #generation = 0;

  newSeed(id: string): string {
    return `${id}:${++this.#generation}`;
  }
  commit(id: string, size: number, seed: string): void {
    const now = ++this.#clock;
    this.entries.set(id, { size, seed, hits: 0, accessed: now, committed: now });
    this.queue = this.queue.filter((queued) => queued !== id);
  }
  read(id: string): void {
    const entry = this.entries.get(id) as ModelEntry;
    entry.hits++;
    entry.accessed = ++this.#clock;
  }
  ids(): string[] {
    return [...this.entries.keys()].sort();
  }
  totalSize(): number {
    let total = 0;
    for (const entry of this.entries.values()) total += entry.size;
    return total;
  }
  /** Least recently accessed first; ties (never in the model) by older commit, then id. */
  byRecency(): string[] {
    return [...this.entries.entries()]
      .sort(([a, x], [b, y]) => x.accessed - y.accessed || x.committed - y.committed || (a < b ? -1 : a > b ? 1 : 0))
      .map(([entryId]) => entryId);
  }
}

const sha256 = (data: Buffer) => ({ algorithm: 'sha256' as const, digest: sha256Hex(data) });
const codeOf = (error: unknown) => (error as { code?: unknown } | undefined)?.code;

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    (value) => new Error(`expected a rejection, got ${String(value)}`),
    (error: unknown) => error,
  );
}

/** Runs one command on the driver and on the model, checking what the call itself returns. */
async function step(driver: CacheDriver, cacheDir: string, model: Model, command: Command): Promise<void> {
  switch (command.kind) {
    case 'write': {
      const seed = model.newSeed(command.id);
      await writeImage(driver, command.id, makeContent(seed, command.size), 16 * 1024);
      model.commit(command.id, command.size, seed);
      return;
    }
    case 'cacheImage': {
      const seed = model.newSeed(command.id);
      const data = makeContent(seed, command.size);
      const cache = await ImageCache.open({ driver });
      const result = await cache.cacheImage(command.id, Readable.from(chunksOf(data, 16 * 1024)), { checksum: sha256(data) });
      const cached = model.entries.has(command.id);
      expect(result, 'cacheImage() is true unless the id is already cached').toBe(!cached);
      if (!cached) model.commit(command.id, command.size, seed);
      return;
    }
    case 'failedWrite': {
      const data = makeContent(model.newSeed(command.id), command.size);
      const cached = model.entries.has(command.id);
      if (command.how === 'destroy') {
        const writer = await driver.openForWrite(command.id);
        if (data.length > 0) await writeChunk(writer, data.subarray(0, Math.ceil(data.length / 2)));
        await abortWrite(writer, new Error('the source went away'));
        model.invalid.add(command.id);
        return;
      }
      const cache = await ImageCache.open({ driver });
      const source =
        command.how === 'source'
          ? failingSource(chunksOf(data.subarray(0, Math.ceil(data.length / 2)), 16 * 1024), new Error('origin failed'))
          : Readable.from(chunksOf(data, 16 * 1024));
      const checksum = command.how === 'checksum' ? { algorithm: 'sha256' as const, digest: 'f'.repeat(64) } : sha256(data);
      const outcome = await cache.cacheImage(command.id, source, { checksum }).then(
        (result) => result,
        (error: unknown) => error,
      );
      if (cached) {
        expect(outcome, 'cacheImage() of a cached id is false and reads nothing').toBe(false);
      } else {
        if (command.how === 'source') expect((outcome as Error).message).toBe('origin failed');
        else expect(codeOf(outcome)).toBe('CACHE_CHECKSUM_MISMATCH');
        model.invalid.add(command.id);
      }
      return;
    }
    case 'read': {
      const entry = model.entries.get(command.id);
      if (entry === undefined) {
        expect(codeOf(await rejection(driver.openForRead(command.id)))).toBe('CACHE_IMAGE_NOT_CACHED');
        return;
      }
      const bytes = await readImage(driver, command.id);
      expect(bytes.length, `bytes read from ${command.id}`).toBe(entry.size);
      expect(sha256Hex(bytes), `content of ${command.id} is its last commit's`).toBe(sha256Hex(makeContent(entry.seed, entry.size)));
      model.read(command.id);
      return;
    }
    case 'abortedRead': {
      const entry = model.entries.get(command.id);
      if (entry === undefined) {
        expect(codeOf(await rejection(driver.openForRead(command.id)))).toBe('CACHE_IMAGE_NOT_CACHED');
        return;
      }
      if (entry.size > READ_CHUNK_SIZE) {
        expect(await readPartially(driver, command.id, 1)).toBeLessThan(entry.size);
      } else {
        const stream = await driver.openForRead(command.id);
        stream.destroy();
        await new Promise((resolve) => (stream.closed ? resolve(undefined) : stream.once('close', resolve)));
      }
      return;
    }
    case 'delete':
      await driver.deleteCachedImage(command.id);
      model.entries.delete(command.id);
      return;
    case 'deleteAll':
      expect(await driver.deleteAllCachedImages(), 'deleteAllCachedImages() count').toBe(model.entries.size);
      model.entries.clear();
      return;
    case 'queue': {
      const expected = !model.entries.has(command.id) && !model.queue.includes(command.id);
      expect(await driver.queueImage(command.id), `queueImage(${command.id})`).toBe(expected);
      if (expected) model.queue.push(command.id);
      return;
    }
    case 'dequeue':
      await driver.deleteQueuedImage(command.id);
      model.queue = model.queue.filter((queued) => queued !== command.id);
      return;
    case 'dequeueAll':
      expect(await driver.deleteAllQueuedImages(), 'deleteAllQueuedImages() count').toBe(model.queue.length);
      model.queue = [];
      return;
    case 'prune': {
      let total = model.totalSize();
      const evicted: string[] = [];
      let bytes = 0;
      for (const victim of model.byRecency()) {
        if (total <= command.maxSize) break;
        const victimSize = (model.entries.get(victim) as ModelEntry).size;
        evicted.push(victim);
        bytes += victimSize;
        total -= victimSize;
      }
      const cache = await ImageCache.open({ driver, maxSize: command.maxSize });
      expect(await cache.prune(), `prune() to ${command.maxSize} evicts ${evicted.join(', ') || 'nothing'}`).toEqual({
        files: evicted.length,
        bytes,
      });
      for (const victim of evicted) model.entries.delete(victim);
      return;
    }
    case 'clean': {
      const report = await driver.clean();
      expect(report, 'clean()').toEqual({ invalid: model.invalid.size, stalled: 0, orphanRecords: 0, adoptedFiles: 0, staleQueueMarkers: 0, errors: [] });
      model.invalid.clear();
      return;
    }
  }
}

/** Everything observable agrees with the model. */
async function check(driver: CacheDriver, cacheDir: string, model: Model): Promise<void> {
  const listed = await driver.getCachedImages();
  expect(listed.map((image) => image.imageId), 'getCachedImages() ids').toEqual(model.ids());
  expect(
    listed.map((image) => [image.imageId, image.size, image.hits]),
    'getCachedImages() sizes and hits (completed reads since the last commit)',
  ).toEqual(model.ids().map((each) => [each, model.entries.get(each)?.size, model.entries.get(each)?.hits]));
  const total = model.totalSize();
  expect(await driver.getCacheSize(), 'getCacheSize()').toBe(total);
  expect(listed.reduce((sum, image) => sum + image.size, 0), 'sum of listed sizes').toBe(total);
  for (const each of IDS) {
    const entry = model.entries.get(each);
    expect(await driver.isCached(each), `isCached(${each})`).toBe(entry !== undefined);
    expect(await driver.getHitCount(each), `getHitCount(${each})`).toBe(entry?.hits ?? 0);
  }
  expect(await driver.getQueuedImages(), 'getQueuedImages() (FIFO)').toEqual(model.queue);
  const head = model.byRecency()[0];
  expect(await driver.getLeastRecentlyAccessed(), 'getLeastRecentlyAccessed()').toEqual(
    head === undefined ? null : { imageId: head, size: (model.entries.get(head) as ModelEntry).size },
  );
  expect(await namesIn(join(cacheDir, 'incomplete')), 'incomplete/ (no writer is live between commands)').toEqual([]);
  expect(await namesIn(join(cacheDir, 'invalid')), 'invalid/').toEqual([...model.invalid].sort());
}

function describeCommand(command: Command): string {
  return Object.values(command).join(' ');
}

// ---- 2. hostile ids -----------------------------------------------------------------

const mixedCase = (name: string) =>
  fc.array(fc.boolean(), { minLength: name.length, maxLength: name.length }).map((upper) =>
    [...name].map((c, i) => (upper[i] === true ? c.toUpperCase() : c)).join(''),
  );
const loneSurrogate = fc.integer({ min: 0xd800, max: 0xdfff }).map((code) => String.fromCharCode(code));
const hostileIdArb: fc.Arbitrary<unknown> = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 300 }),
  fc.string({ unit: 'binary-ascii', maxLength: 40 }),
  fc.string({ unit: 'grapheme', maxLength: 80 }),
  fc
    .tuple(fc.string({ unit: 'binary', maxLength: 12 }), fc.constantFrom('/', '\\', '\0'), fc.string({ unit: 'binary', maxLength: 12 }))
    .map(([a, separator, b]) => a + separator + b),
  fc.string({ unit: 'binary', maxLength: 40 }).map((rest) => `.${rest}`),
  fc.constantFrom('', '.', '..', '...', '../', '..\\', '../x', '../../escape', '../../../../etc/passwd', './x', '/abs/path', 'a/../b', 'x/..'),
  fc.constantFrom(...RESERVED_NAMES).chain(mixedCase),
  fc
    .tuple(fc.constantFrom('a', 'é', '€', '😀'), fc.nat({ max: 40 }), fc.string({ unit: 'grapheme', maxLength: 10 }))
    .map(([c, extra, tail]) => c.repeat(Math.floor(255 / Buffer.byteLength(c)) + 1 + extra) + tail),
  // At the 255-byte boundary: valid at 255, invalid at 256.
  fc.constantFrom('a'.repeat(255), 'a'.repeat(256), `${'é'.repeat(127)}a`, 'é'.repeat(128), `${'😀'.repeat(63)}abc`, '😀'.repeat(64)),
  fc.tuple(fc.string({ maxLength: 5 }), loneSurrogate, fc.string({ maxLength: 5 })).map(([a, s, b]) => a + s + b),
  fc.oneof(fc.integer(), fc.constant(null), fc.constant(undefined), fc.boolean(), fc.array(fc.constantFrom('a', 'b'), { maxLength: 2 })),
  fc.constant({ toString: () => 'looks-valid' }),
);

type Call = readonly [string, (id: unknown) => unknown];

function idTakingCalls(driver: CacheDriver, cache: ImageCache): Call[] {
  const d = driver as unknown as Record<string, (...args: unknown[]) => unknown>;
  const methods = [
    'isCached',
    'isBeingCached',
    'isCacheable',
    'isQueued',
    'queueImage',
    'getImageSize',
    'getHitCount',
    'openForRead',
    'openForWrite',
    'deleteCachedImage',
    'deleteQueuedImage',
    'getImageFilepath',
    'getStoredChecksum',
  ];
  const calls: Call[] = methods.map((method) => [method, (id: unknown) => (d[method] as (...args: unknown[]) => unknown).call(driver, id)] as const);
  calls.push(['getImageFilepath(id, "incomplete")', (id) => driver.getImageFilepath(id as string, 'incomplete')]);
  calls.push(['ImageCache.cacheImage', (id) => cache.cacheImage(id as string, Readable.from([Buffer.from('x')]))]);
  calls.push(['ImageCache.getCachingStream', (id) => cache.getCachingStream(id as string, Readable.from([Buffer.from('x')]))]);
  const readThrough = (cache as unknown as { readThrough?: (id: unknown, options: object) => Promise<unknown> }).readThrough;
  if (typeof readThrough === 'function') {
    calls.push([
      'ImageCache.readThrough',
      (id) =>
        readThrough.call(cache, id, {
          fetch: () => {
            throw new Error('fetch must not be called for an invalid id');
          },
        }),
    ]);
  }
  return calls;
}

/** What a call threw or rejected with; `undefined` when it succeeded. */
async function failureOf(call: () => unknown): Promise<unknown> {
  try {
    const result = call();
    if (result instanceof Promise) await result;
    return undefined;
  } catch (error) {
    return error;
  }
}

// ---- the tests ----------------------------------------------------------------------

console.log(`[reliability] fast-check seed ${SEED} (replay with RELIABILITY_SEED=${SEED})`);

describe(`property-based tests on ${target.fs.name} (${target.fs.root})`, () => {
  for (const name of DRIVER_NAMES) {
    const skip = name === 'xattr' ? target.xattrSkipReason : undefined;
    const suffix = skip === undefined ? '' : ` [skipped: ${skip}]`;

    it.skipIf(skip !== undefined)(
      `${name}: ${MODEL_RUNS} random command sequences agree with an in-memory model after every command${suffix}`,
      { timeout: 300_000 },
      async () => {
        let runs = 0;
        let commands = 0;
        const kinds = new Map<string, number>();
        await fc.assert(
          fc.asyncProperty(fc.array(commandArb, { minLength: 1, maxLength: 40, size: 'medium' }), async (sequence) => {
            runs++;
            const work = await freshDir(target.fs.root, `model-${name}`);
            const cacheDir = join(work, 'cache');
            const driver = createDriver(name as DriverName, cacheDir);
            await driver.configure();
            const model = new Model();
            try {
              for (const [index, command] of sequence.entries()) {
                try {
                  await step(driver, cacheDir, model, command);
                  await check(driver, cacheDir, model);
                } catch (error) {
                  (error as Error).message = `step ${index} (${describeCommand(command)}): ${(error as Error).message}`;
                  throw error;
                }
                commands++;
                kinds.set(command.kind, (kinds.get(command.kind) ?? 0) + 1);
              }
            } finally {
              await driver.close();
              await removeDir(work);
            }
          }),
          { numRuns: MODEL_RUNS, seed: SEED },
        );
        console.log(
          `[reliability] model ${name}: ${runs} runs (seed ${SEED}), ${commands} commands checked: ` +
            [...kinds.entries()].map(([kind, count]) => `${kind} ${count}`).join(', '),
        );
      },
    );

    it.skipIf(skip !== undefined)(
      `${name}: ${HOSTILE_IDS_PER_DRIVER} generated hostile ids: every id-taking method rejects the invalid ones with CACHE_INVALID_IMAGE_ID, the valid ones are accepted, and the directory tree is unchanged${suffix}`,
      { timeout: 300_000 },
      async () => {
        const work = await freshDir(target.fs.root, `ids-${name}`);
        // Deep enough that ../../.. from the cache directory stays inside `work`.
        const cacheDir = join(work, 'one', 'two', 'three', 'cache');
        await mkdir(cacheDir, { recursive: true });
        const driver = createDriver(name as DriverName, cacheDir);
        const cache = await ImageCache.open({ driver });
        const calls = idTakingCalls(driver, cache);
        const before = await snapshotTree(work);
        let valid = 0;
        let invalid = 0;
        try {
          await fc.assert(
            fc.asyncProperty(hostileIdArb, async (hostile) => {
              const problem = imageIdProblem(hostile);
              if (problem === undefined) {
                valid++;
                const text = hostile as string;
                expect(await driver.isCached(text), `isCached(${JSON.stringify(text)}) accepts a valid id`).toBe(false);
                expect(await driver.isQueued(text)).toBe(false);
                expect(driver.getImageFilepath(text), 'a valid id is one segment under the cache directory').toBe(`${cacheDir}/${text}`);
                return;
              }
              invalid++;
              for (const [method, call] of calls) {
                const error = await failureOf(() => call(hostile));
                expect(codeOf(error), `${method}(${JSON.stringify(String(hostile)).slice(0, 80)}) (${problem})`).toBe('CACHE_INVALID_IMAGE_ID');
              }
            }),
            { numRuns: HOSTILE_IDS_PER_DRIVER, seed: SEED },
          );
          expect(await snapshotTree(work), 'the directory tree is unchanged').toEqual(before);
        } finally {
          await cache.close();
        }
        console.log(
          `[reliability] hostile ids ${name}: ${valid + invalid} generated (seed ${SEED}): ${invalid} invalid, each rejected by ` +
            `${calls.length} id-taking calls; ${valid} valid, each accepted`,
        );
        expect(invalid, 'enough invalid ids were generated').toBeGreaterThan(HOSTILE_IDS_PER_DRIVER / 2);
        expect(valid, 'enough valid ids were generated').toBeGreaterThan(HOSTILE_IDS_PER_DRIVER / 20);
        await removeDir(work);
      },
    );
  }
});
