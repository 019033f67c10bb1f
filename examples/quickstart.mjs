// End-to-end example: `pnpm example` from the repository root.
//
// Caches a generated 256 MiB image while streaming it to a client with a
// sha256 check, reads it back from the cache, adds two more images, prunes to
// the budget, shows a checksum mismatch being refused, cleans up, and prints
// what happened at each step. Runs on the SQLite driver in a temp directory
// (pass --keep to keep it, or --dir PATH to choose it).
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ImageCache } from '@cache/core';
import { SqliteDriver } from '@cache/driver-sqlite';

const MiB = 1024 * 1024;
const args = process.argv.slice(2);
const keep = args.includes('--keep');
const dirArg = args.indexOf('--dir');
const cacheDir = dirArg >= 0 ? args[dirArg + 1] : await mkdtemp(join(tmpdir(), 'image-cache-example-'));

/** A deterministic image of `sizeMiB` MiB: one random 1 MiB block, each copy stamped with its index. */
function imageSource(sizeMiB, seed) {
  const block = createHash('sha512').update(String(seed)).digest();
  const base = Buffer.alloc(MiB);
  for (let i = 0; i < MiB; i += block.length) block.copy(base, i);
  return async function* generate() {
    for (let i = 0; i < sizeMiB; i++) {
      const chunk = Buffer.from(base);
      chunk.writeUInt32BE(i, 0);
      yield chunk;
    }
  };
}

async function digestOf(generate) {
  const hash = createHash('sha256');
  for await (const chunk of generate()) hash.update(chunk);
  return hash.digest('hex');
}

/** A client that hashes and counts what it receives, like an HTTP response would consume it. */
function client() {
  const hash = createHash('sha256');
  let bytes = 0;
  const sink = new Writable({
    write(chunk, _enc, cb) {
      hash.update(chunk);
      bytes += chunk.length;
      cb();
    },
  });
  return { sink, result: () => ({ bytes, sha256: hash.digest('hex') }) };
}

const fmt = (n) => `${(n / MiB).toFixed(1)} MiB`;
const step = (title) => console.log(`\n== ${title}`);

step(`open: SQLite driver, cache directory ${cacheDir}, budget 300 MiB`);
const cache = await ImageCache.open({ driver: new SqliteDriver({ cacheDir }), maxSize: 300 * MiB });

step('stream a 256 MiB image to a client while caching it (sha256 verified)');
const big = imageSource(256, 'big');
const bigDigest = await digestOf(big);
const c1 = client();
let started = performance.now();
const stream = cache.getCachingStream('big-image', big(), { checksum: { algorithm: 'sha256', digest: bigDigest } });
await pipeline(stream, c1.sink);
let seconds = (performance.now() - started) / 1000;
const outcome = await stream.cacheOutcome;
const got = c1.result();
console.log(`client received ${fmt(got.bytes)} in ${seconds.toFixed(2)} s (${fmt(got.bytes / seconds)}/s), sha256 ok: ${got.sha256 === bigDigest}`);
console.log(`cache write: ${outcome.status}; isCached: ${await cache.isCached('big-image')}; size ${fmt(await cache.getImageSize('big-image'))}`);

step('read it back from the cache');
const c2 = client();
started = performance.now();
await pipeline(await cache.openForRead('big-image'), c2.sink);
seconds = (performance.now() - started) / 1000;
const back = c2.result();
console.log(`read ${fmt(back.bytes)} in ${seconds.toFixed(2)} s (${fmt(back.bytes / seconds)}/s), sha256 ok: ${back.sha256 === bigDigest}, hits: ${await cache.getHitCount('big-image')}`);

step('cache two 32 MiB images, then read the big one again (it becomes the most recent)');
for (const id of ['small-a', 'small-b']) {
  const gen = imageSource(32, id);
  console.log(`cacheImage('${id}') -> ${await cache.cacheImage(id, gen(), { checksum: { algorithm: 'sha256', digest: await digestOf(gen) } })}`);
}
await pipeline(await cache.openForRead('big-image'), client().sink);
console.log(`cache size ${fmt(await cache.getCacheSize())} > budget ${fmt(cache.maxSize)}`);
for (const img of await cache.getCachedImages()) {
  console.log(`  ${img.imageId.padEnd(10)} ${fmt(img.size).padStart(10)}  hits ${img.hits}  last accessed ${new Date(img.lastAccessed * 1000).toISOString()}`);
}

step('prune to the budget (least recently accessed first)');
const pruned = await cache.prune();
console.log(`pruned ${pruned.files} file(s), ${fmt(pruned.bytes)}; left: ${(await cache.getCachedImages()).map((i) => i.imageId).join(', ')}; size ${fmt(await cache.getCacheSize())}`);

step('a source whose bytes do not match the expected checksum');
const bad = imageSource(8, 'tampered');
const c3 = client();
try {
  await pipeline(cache.getCachingStream('tampered', bad(), { checksum: { algorithm: 'sha256', digest: '0'.repeat(64) } }), c3.sink);
  console.log('unexpected: no error');
} catch (error) {
  console.log(`client got ${fmt(c3.result().bytes)} then ${error.code}; isCached('tampered'): ${await cache.isCached('tampered')}; invalid/: ${(await readdir(join(cacheDir, 'invalid'))).join(', ')}`);
}

step('clean (removes invalid and stalled files)');
const report = await cache.clean();
console.log(`clean: ${report.invalid} invalid, ${report.stalled} stalled removed; invalid/ now: [${(await readdir(join(cacheDir, 'invalid'))).join(', ')}]`);

await cache.close();
if (keep || dirArg >= 0) console.log(`\ncache directory kept at ${cacheDir}`);
else {
  await rm(cacheDir, { recursive: true, force: true });
  console.log(`\nremoved ${cacheDir} (pass --keep to keep it)`);
}
