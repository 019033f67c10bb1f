import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { INLINE_HASH_BYTES, ParallelHash } from '../src/parallel-hash.js';

const MiB = 1024 * 1024;

async function hashInPieces(data: Buffer, pieces: number[], algorithm: 'md5' | 'sha256' | 'sha512' = 'sha256'): Promise<string> {
  const hash = new ParallelHash(algorithm);
  let at = 0;
  let i = 0;
  while (at < data.length) {
    const size = pieces[i++ % pieces.length] as number;
    const wait = hash.update(data.subarray(at, at + size));
    if (wait !== undefined) await wait;
    at += size;
  }
  return hash.digest();
}

const expected = (data: Buffer, algorithm = 'sha256') => createHash(algorithm).update(data).digest('hex');

describe('ParallelHash', () => {
  it.each([
    ['empty', 0],
    ['one byte', 1],
    ['just under the inline limit', INLINE_HASH_BYTES - 1],
    ['exactly the inline limit', INLINE_HASH_BYTES],
    ['just over the inline limit (moves to a worker)', INLINE_HASH_BYTES + 1],
    ['40 MiB on a worker', 40 * MiB],
  ])('digests %s like node:crypto', async (_name, size) => {
    const data = randomBytes(size);
    expect(await hashInPieces(data, [size === 0 ? 1 : Math.min(size, 1 * MiB)])).toBe(expected(data));
  });

  it('gives the same digest for any split of the bytes, for every algorithm', async () => {
    const data = randomBytes(INLINE_HASH_BYTES + 3 * MiB + 17);
    for (const algorithm of ['md5', 'sha256', 'sha512'] as const) {
      for (const pieces of [[1], [4093, 65536, 7], [3 * MiB + 1], [MiB - 1, 2 * MiB + 5]]) {
        if (pieces[0] === 1) continue; // one-byte pieces over 11 MiB are slow and add nothing over 7-byte ones
        expect(await hashInPieces(data, pieces, algorithm)).toBe(expected(data, algorithm));
      }
    }
  }, 120_000);

  it('copies each chunk: reusing a chunk right after update() does not change the digest', async () => {
    const chunk = Buffer.alloc(MiB);
    const reference = createHash('sha256');
    const hash = new ParallelHash('sha256');
    for (let i = 0; i < 24; i++) {
      chunk.fill(i); // the same memory, new contents each time
      reference.update(chunk);
      const wait = hash.update(chunk);
      if (wait !== undefined) await wait;
    }
    expect(await hash.digest()).toBe(reference.digest('hex'));
  });

  it('refuses update after digest and a second digest', async () => {
    const hash = new ParallelHash('md5');
    hash.update(Buffer.from('abc'));
    expect(await hash.digest()).toBe(expected(Buffer.from('abc'), 'md5'));
    expect(() => hash.update(Buffer.from('x'))).toThrow(/update after digest/);
    await expect(hash.digest()).rejects.toThrow(/digest called twice/);
  });

  it('dispose() mid-stream releases the worker; a new hash still works', async () => {
    const data = randomBytes(INLINE_HASH_BYTES + 4 * MiB);
    const abandoned = new ParallelHash('sha256');
    for (let at = 0; at < data.length; at += MiB) await abandoned.update(data.subarray(at, at + MiB));
    abandoned.dispose();
    abandoned.dispose();
    expect(await hashInPieces(data, [MiB])).toBe(expected(data));
  });

  it('an abandoned hash on a worker does not keep the process alive', async () => {
    const script = `
      import { ParallelHash } from ${JSON.stringify(join(import.meta.dirname, '..', 'dist', 'parallel-hash.js'))};
      const hash = new ParallelHash('sha256');
      const chunk = Buffer.alloc(1024 * 1024, 7);
      for (let i = 0; i < 12; i++) await hash.update(chunk);
      console.log('left without digest');
    `;
    // The child exits by itself once its work is done; the timeout only turns a child kept alive for good
    // into a failure (execFile rejects when it kills it) before the test's own timeout.
    const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], { timeout: 45_000 });
    expect(stdout).toContain('left without digest');
  });
});
