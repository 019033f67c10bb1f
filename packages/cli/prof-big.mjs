import { ImageCache } from '@cache/core';
import { SqliteDriver } from '@cache/driver-sqlite';
import { createCacheServer } from '@cache/server';
import { Readable } from 'node:stream';
import { rmSync } from 'node:fs';
const dir = process.env.DIR; rmSync(dir, { recursive: true, force: true });
const cache = await ImageCache.open({ driver: new SqliteDriver({ cacheDir: dir }) });
const chunk = Buffer.alloc(1 << 20, 3);
async function* gen() { for (let i = 0; i < 256; i++) yield chunk; }
if (!(await cache.isCached('mid'))) await cache.cacheImage('mid', Readable.from([Buffer.alloc(1 << 20, 5)]));
if (!(await cache.isCached('big'))) await cache.cacheImage('big', Readable.from(gen()));
const server = await createCacheServer({ cache });
await server.listen({ port: Number(process.env.PORT), host: '127.0.0.1' });
console.log('ready');
process.on('SIGTERM', async () => { await server.close(); await cache.close(); process.exit(0); });
