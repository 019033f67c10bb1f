import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { lstat, open, readdir, readlink, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, type Stream, type Writable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import type { CacheDriver, ImageId } from '@cache/core';

/** Deterministic pseudo-random bytes: the same `(size, seed)` always gives the same buffer. */
export function makeBytes(size: number, seed = 1): Buffer {
  const out = Buffer.alloc(size);
  let block = Buffer.alloc(0);
  let counter = 0;
  for (let offset = 0; offset < size; offset += block.length) {
    block = createHash('sha256').update(`${seed}:${counter++}`).digest();
    block.copy(out, offset, 0, Math.min(block.length, size - offset));
  }
  return out;
}

/** Hex sha256 of `data`. */
export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Splits `data` into chunks of at most `size` bytes (at least one chunk, possibly empty). */
export function chunked(data: Buffer, size: number): Buffer[] {
  if (data.length === 0) return [data];
  const chunks: Buffer[] = [];
  for (let offset = 0; offset < data.length; offset += size) chunks.push(data.subarray(offset, offset + size));
  return chunks;
}

/**
 * Writes `data` as a cache entry the way the contract says:
 * `await pipeline(Readable.from(chunks), await driver.openForWrite(id))`.
 */
export async function writeImage(driver: CacheDriver, id: ImageId, data: Buffer, chunkSize = 64 * 1024): Promise<void> {
  await pipeline(Readable.from(chunked(data, chunkSize)), await driver.openForWrite(id));
}

/** Reads an entry completely with `openForRead` and returns its bytes. */
export async function readImage(driver: CacheDriver, id: ImageId): Promise<Buffer> {
  const stream = await driver.openForRead(id);
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Resolves once `stream` has emitted `close` (at once if it already has). Never rejects. */
export function whenClosed(stream: Stream & { closed?: boolean }): Promise<void> {
  if (stream.closed === true) return Promise.resolve();
  return new Promise((resolve) => stream.once('close', () => resolve()));
}

/**
 * Aborts a write: destroys the writer (with `error`, if given) and waits until
 * it is closed, i.e. until the driver's rollback has finished. The writer's
 * `error` event is consumed.
 */
export async function abortWrite(writer: Writable, error?: Error): Promise<void> {
  writer.on('error', () => undefined);
  writer.destroy(error);
  await whenClosed(writer);
}

/** Writes one chunk and waits for its callback. */
export function writeChunk(writer: Writable, chunk: Buffer): Promise<void> {
  return new Promise((resolve, reject) => writer.write(chunk, (error) => (error ? reject(error) : resolve())));
}

/** Ends a writer and waits until it finished (committed) or failed. */
export async function endWrite(writer: Writable, chunk?: Buffer): Promise<void> {
  if (chunk !== undefined) writer.end(chunk);
  else writer.end();
  await finished(writer);
}

/**
 * Reads at least `bytes` bytes of an entry, then destroys the stream and waits
 * until it is closed: an abandoned read. Returns how many bytes were seen.
 */
export async function readPartially(driver: CacheDriver, id: ImageId, bytes: number): Promise<number> {
  const stream = await driver.openForRead(id);
  let seen = 0;
  await new Promise<void>((resolve, reject) => {
    stream.on('data', (chunk: Buffer) => {
      seen += chunk.length;
      if (seen >= bytes) {
        stream.pause();
        resolve();
      }
    });
    stream.once('error', reject);
    stream.once('end', () => resolve());
  });
  stream.destroy();
  await whenClosed(stream);
  return seen;
}

/** What a stream delivered before it ended or failed. */
export interface Drained {
  data: Buffer;
  /** The stream's error, or `undefined` when it ended cleanly. */
  error: Error | undefined;
  /** True when `end` was emitted. */
  ended: boolean;
}

/** Consumes a readable to the end or to its error, collecting every byte. Never rejects. */
export function drain(stream: Readable): Promise<Drained> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let ended = false;
    stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    stream.once('end', () => {
      ended = true;
      resolve({ data: Buffer.concat(chunks), error: undefined, ended });
    });
    stream.once('error', (error: Error) => resolve({ data: Buffer.concat(chunks), error, ended }));
  });
}

/** An async iterable that yields `chunks`, then throws `error`: a source that fails midway. */
export async function* failingSource(chunks: readonly Buffer[], error: Error): AsyncGenerator<Buffer> {
  for (const chunk of chunks) {
    yield chunk;
    await new Promise((resolve) => setImmediate(resolve));
  }
  throw error;
}

/** Awaits `promise` and returns what it rejected with; fails when it resolves. */
export async function rejectionOf(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error('expected the call to reject, but it resolved');
}

/** Calls `fn` and returns what it threw or rejected with; fails when it returns normally. */
export async function failureOf(fn: () => unknown): Promise<unknown> {
  let result: unknown;
  try {
    result = fn();
  } catch (error) {
    return error;
  }
  if (result instanceof Promise) return rejectionOf(result);
  throw new Error(`expected the call to throw or reject, but it returned ${describeValue(result)}`);
}

function describeValue(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'object' && value !== null) return value.constructor?.name ?? 'an object';
  return String(value);
}

/** The `code` of an error-like value, if any. */
export function codeOf(error: unknown): unknown {
  return typeof error === 'object' && error !== null ? (error as { code?: unknown }).code : undefined;
}

/** One node of a {@link snapshotTree} listing. */
export interface TreeNode {
  /** Path relative to the listed root, `/`-separated (`.` is the root itself). */
  path: string;
  type: 'file' | 'directory' | 'symlink' | 'other';
  /** Bytes (files), link target (symlinks). */
  size?: number;
  target?: string;
  /** Modification time in nanoseconds, as a decimal string. */
  mtimeNs: string;
}

/**
 * A recursive listing of `root` (not following symlinks), sorted by path:
 * type, size, link target and mtime of every node, the root included. Two
 * equal snapshots mean nothing was created, deleted, renamed or written.
 */
export async function snapshotTree(root: string): Promise<TreeNode[]> {
  const nodes: TreeNode[] = [];
  const visit = async (abs: string, rel: string): Promise<void> => {
    let info;
    try {
      info = await lstat(abs, { bigint: true });
    } catch {
      return;
    }
    const node: TreeNode = {
      path: rel,
      type: info.isFile() ? 'file' : info.isDirectory() ? 'directory' : info.isSymbolicLink() ? 'symlink' : 'other',
      mtimeNs: info.mtimeNs.toString(),
    };
    if (info.isFile()) node.size = Number(info.size);
    if (info.isSymbolicLink()) node.target = await readlink(abs).catch(() => '?');
    nodes.push(node);
    if (info.isDirectory()) {
      const names = await readdir(abs).catch(() => [] as string[]);
      for (const name of names.sort()) await visit(join(abs, name), rel === '.' ? name : `${rel}/${name}`);
    }
  };
  await visit(root, '.');
  return nodes.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/** A readable dump of a directory tree (for failure reports): one line per node with type, size and times. */
export async function dumpTree(root: string): Promise<string> {
  const lines: string[] = [`tree of ${root}:`];
  const visit = async (abs: string, rel: string, depth: number): Promise<void> => {
    let info;
    try {
      info = await lstat(abs, { bigint: true });
    } catch (error) {
      lines.push(`${'  '.repeat(depth)}${rel} (cannot stat: ${(error as Error).message})`);
      return;
    }
    const indent = '  '.repeat(depth);
    const times = `mtime ${isoNs(info.mtimeNs)} atime ${isoNs(info.atimeNs)}`;
    if (info.isDirectory()) {
      lines.push(`${indent}${rel}/`);
      const names = await readdir(abs).catch(() => [] as string[]);
      for (const name of names.sort()) await visit(join(abs, name), name, depth + 1);
    } else if (info.isSymbolicLink()) {
      lines.push(`${indent}${rel} -> ${await readlink(abs).catch(() => '?')}`);
    } else if (info.isFile()) {
      lines.push(`${indent}${rel}  ${info.size} B  ${times}`);
    } else {
      lines.push(`${indent}${rel}  (special file)`);
    }
  };
  await visit(root, '.', 0);
  return lines.join('\n');
}

/** An ISO date with nanoseconds, e.g. `2026-01-02T03:04:05.123456789Z`. */
function isoNs(ns: bigint): string {
  const ms = ns / 1_000_000n;
  const iso = new Date(Number(ms)).toISOString();
  return `${iso.slice(0, -1)}${(ns % 1_000_000n).toString().padStart(6, '0')}Z`;
}

/** True when `path` exists and is a regular file (not following symlinks). */
export async function isRegularFile(path: string): Promise<boolean> {
  try {
    return (await lstat(path)).isFile();
  } catch {
    return false;
  }
}

/** Names in a directory (empty when it does not exist), sorted. */
export async function listNames(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).sort();
  } catch {
    return [];
  }
}

/** Size of a file in bytes (following symlinks). */
export async function fileSize(path: string): Promise<number> {
  return (await stat(path)).size;
}

/**
 * Reads a cache file the way the kit inspects one: without moving its atime
 * (`O_NOATIME`, which Linux allows the file's owner and root; elsewhere, or
 * when refused, a plain read). A driver that takes reads by others into its
 * recency from atime (as Glance's xattr driver does) must not see the kit's
 * own checks as accesses.
 */
export async function inspectFile(path: string): Promise<Buffer> {
  const noAtime = (constants as { O_NOATIME?: number }).O_NOATIME;
  if (noAtime === undefined) return readFile(path);
  let handle;
  try {
    handle = await open(path, constants.O_RDONLY | noAtime);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EPERM') return readFile(path);
    throw error;
  }
  try {
    return await handle.readFile();
  } finally {
    await handle.close();
  }
}
