// The CLI on the postgres driver, against a real PostgreSQL server started for this file:
// two nodes on one database, the sqlite import, and `serve` answering /v2/cache/nodes/{id}.
import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { finished } from 'node:stream/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { tryStartTestPostgres } from '@cache/postgres-testing';
import { BIN, cli, tempDir, withCache } from './helpers.js';

const { pg, skipReason: unavailable } = await tryStartTestPostgres();
afterAll(() => pg?.stop());

let root: string;
let cleanup: () => Promise<void>;
let databaseUrl: string;
let databases = 0;
beforeEach(async () => {
  ({ dir: root, cleanup } = await tempDir('pg'));
  if (pg !== undefined) databaseUrl = await pg.createDatabase(`cli_${process.pid}_${++databases}`);
});
afterEach(() => cleanup());


describe('image-cache on the postgres driver', () => {
  if (unavailable !== undefined) return;
  it('two nodes on one database: each lists its own images; prefetch, list and delete work per node', async () => {
    await writeFile(join(root, 'img-a'), Buffer.alloc(3000, 'a'));
    await writeFile(join(root, 'img-b'), Buffer.alloc(5000, 'b'));
    const node = (name: string) => ({
      env: { IMAGE_CACHE_DRIVER: 'postgres', IMAGE_CACHE_DATABASE_URL: databaseUrl, IMAGE_CACHE_DIR: join(root, name), IMAGE_CACHE_NODE_ID: name },
    });
    expect((await cli(['prefetch', '--origin', root, 'img-a', 'img-b'], node('node-1'))).code).toBe(0);
    expect((await cli(['prefetch', '--origin', root, 'img-b'], node('node-2'))).code).toBe(0);
    const list = async (name: string) =>
      (JSON.parse((await cli(['list', '--json'], node(name))).stdout) as { imageId: string; size: number }[]).map((r) => [r.imageId, r.size]);
    expect(await list('node-1')).toEqual([['img-a', 3000], ['img-b', 5000]]);
    expect(await list('node-2')).toEqual([['img-b', 5000]]);
    expect((await cli(['delete', 'img-b'], node('node-1'))).code).toBe(0);
    expect(await list('node-1')).toEqual([['img-a', 3000]]);
    expect(await list('node-2')).toEqual([['img-b', 5000]]);
    const rows = await pg!.query<{ image_id: string; node: string }>(
      'SELECT c.image_id, n.node_reference_url AS node FROM cached_images c JOIN node_reference n USING (node_reference_id) ORDER BY 1, 2',
      [],
      databaseUrl.slice(databaseUrl.lastIndexOf('/') + 1),
    );
    expect(rows.map((r) => [r.image_id, r.node])).toEqual([['img-a', 'node-1'], ['img-b', 'node-2']]);
  });

  it('import-sqlite moves a sqlite cache to postgres with its hits, idempotently; refused without --driver postgres', async () => {
    const cacheDir = join(root, 'cache');
    await withCache('sqlite', cacheDir, async (cache) => {
      const { Readable } = await import('node:stream');
      await cache.cacheImage('cirros', Readable.from([Buffer.alloc(2048, 1)]));
      // A read's hit is recorded before its stream ends.
      for (let i = 0; i < 3; i++) await finished((await cache.openForRead('cirros')).resume());
    });
    const refused = await cli(['import-sqlite'], { env: { IMAGE_CACHE_DIR: cacheDir } });
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/pass --driver postgres/);
    const env = { IMAGE_CACHE_DRIVER: 'postgres', IMAGE_CACHE_DATABASE_URL: databaseUrl, IMAGE_CACHE_DIR: cacheDir };
    for (let run = 0; run < 2; run++) {
      const result = await cli(['import-sqlite', '--json'], { env });
      expect(result.code, result.stderr).toBe(0);
      expect(JSON.parse(result.stdout)).toMatchObject({ rows: 1, imported: 1, missingFile: [], invalidId: [] });
    }
    const listed = JSON.parse((await cli(['list', '--json'], { env })).stdout) as { imageId: string; hits: number }[];
    expect(listed.map((r) => [r.imageId, r.hits])).toEqual([['cirros', 3]]);
  });

  it('serve on postgres: GET /v2/cache/nodes/{id} lists the nodes that hold the image', async () => {
    await writeFile(join(root, 'img'), Buffer.alloc(1000, 'x'));
    const base = { IMAGE_CACHE_DRIVER: 'postgres', IMAGE_CACHE_DATABASE_URL: databaseUrl };
    for (const name of ['node-1', 'node-2']) {
      const result = await cli(['prefetch', '--origin', root, 'img'], { env: { ...base, IMAGE_CACHE_DIR: join(root, name), IMAGE_CACHE_NODE_ID: name } });
      expect(result.code, result.stderr).toBe(0);
    }
    const proc = spawn(process.execPath, [BIN, 'serve', '--port', '0'], {
      cwd: root,
      env: { PATH: process.env['PATH'] ?? '', ...base, IMAGE_CACHE_DIR: join(root, 'node-1'), IMAGE_CACHE_NODE_ID: 'node-1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    proc.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    try {
      const url = await new Promise<string>((resolve, reject) => {
        const timer = setInterval(() => {
          const match = /on (http:\/\/127\.0\.0\.1:\d+)/.exec(stderr);
          if (match?.[1] !== undefined) {
            clearInterval(timer);
            resolve(match[1]);
          } else if (proc.exitCode !== null) {
            clearInterval(timer);
            reject(new Error(stderr));
          }
        }, 25);
      });
      const nodes = await fetch(`${url}/v2/cache/nodes/img`);
      expect(nodes.status).toBe(200);
      expect(((await nodes.json()) as string[]).sort()).toEqual(['node-1', 'node-2']);
      expect(await (await fetch(`${url}/v2/cache/nodes/other`)).json()).toEqual([]);
      const hit = await fetch(`${url}/images/img`);
      expect(hit.headers.get('x-cache')).toBe('HIT');
      expect((await hit.arrayBuffer()).byteLength).toBe(1000);
    } finally {
      proc.kill('SIGTERM');
      await new Promise((resolve) => proc.once('exit', resolve));
    }
  });
});

if (unavailable !== undefined) {
  describe('image-cache on the postgres driver', () => {
    it.skip(`runs against a real PostgreSQL server [skipped: ${unavailable}]`, () => undefined);
  });
}
