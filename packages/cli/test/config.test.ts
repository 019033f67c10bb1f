import { mkdir, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { resolveConfig } from '../src/index.js';
import { cli, tempDir, tree } from './helpers.js';

let root: string;
let cleanup: () => Promise<void>;

beforeEach(async () => {
  ({ dir: root, cleanup } = await tempDir('config'));
});
afterEach(() => cleanup());

describe('resolveConfig', () => {
  it('workers (serve): one per core by default, else --workers, then IMAGE_CACHE_WORKERS; 1 to 1024', async () => {
    const defaults = await resolveConfig({ flags: { cacheDir: 'c' }, env: {}, cwd: root });
    expect(defaults.workers).toBe(availableParallelism());
    expect(defaults.sources.workers).toBe('default');
    expect((await resolveConfig({ flags: { cacheDir: 'c' }, env: { IMAGE_CACHE_WORKERS: '5' }, cwd: root })).workers).toBe(5);
    expect((await resolveConfig({ flags: { cacheDir: 'c', workers: '3' }, env: { IMAGE_CACHE_WORKERS: '5' }, cwd: root })).workers).toBe(3);
    for (const bad of ['0', '1025', 'two', '1.5']) {
      await expect(resolveConfig({ flags: { cacheDir: 'c', workers: bad }, env: {}, cwd: root })).rejects.toMatchObject({
        code: 'CLI_INVALID_NUMBER',
      });
    }
  });

  it('takes each setting from flag, then environment, then config file, then default', async () => {
    await writeFile(
      join(root, 'image-cache.config.json'),
      JSON.stringify({ cacheDir: 'from-file', maxSize: '1GiB', stallTime: 600, driver: 'xattr', concurrency: 7, origin: 'images' }),
    );
    const env = { IMAGE_CACHE_DIR: '/env/cache', IMAGE_CACHE_MAX_SIZE: '500MB' };
    const config = await resolveConfig({ flags: { maxSize: '20GiB' }, env, cwd: root });
    expect(config).toMatchObject({
      maxSize: 20 * 1024 ** 3, // flag beats env and file
      cacheDir: '/env/cache', // env beats file
      driver: 'xattr', // file beats default
      stallTime: 600,
      concurrency: 7,
      origin: join(root, 'images'), // relative to the config file
      retries: 3, // default
      configFile: join(root, 'image-cache.config.json'),
      warnings: [],
    });
    expect(config.sources).toMatchObject({ maxSize: 'flag', cacheDir: 'env', driver: 'file', retries: 'default' });

    const fileOnly = await resolveConfig({ env: {}, cwd: root });
    expect(fileOnly).toMatchObject({ cacheDir: join(root, 'from-file'), maxSize: 1024 ** 3 });
    const defaults = await resolveConfig({ flags: { cacheDir: 'c' }, env: {}, cwd: join(root, '..') });
    expect(defaults).toMatchObject({ driver: 'sqlite', maxSize: 10 * 1024 ** 3, stallTime: 86400, origin: undefined, configFile: undefined });
  });

  it('finds .image-cacherc.json in a parent directory, and --config / IMAGE_CACHE_CONFIG name a file explicitly', async () => {
    await writeFile(join(root, '.image-cacherc.json'), JSON.stringify({ cacheDir: 'rc-cache' }));
    await mkdir(join(root, 'a', 'b'), { recursive: true });
    expect((await resolveConfig({ env: {}, cwd: join(root, 'a', 'b') })).cacheDir).toBe(join(root, 'rc-cache'));

    await writeFile(join(root, 'other.json'), JSON.stringify({ cacheDir: '/explicit', maxSize: 1000 }));
    expect((await resolveConfig({ flags: { config: 'other.json' }, env: {}, cwd: root })).cacheDir).toBe('/explicit');
    expect((await resolveConfig({ env: { IMAGE_CACHE_CONFIG: join(root, 'other.json') }, cwd: join(root, 'a') })).maxSize).toBe(1000);
  });

  it('warns about unknown keys and refuses malformed files', async () => {
    await writeFile(join(root, 'typo.json'), JSON.stringify({ cachedir: '/x', cacheDir: '/y' }));
    const config = await resolveConfig({ flags: { config: 'typo.json' }, env: {}, cwd: root });
    expect(config.warnings).toEqual([expect.stringContaining('unknown key "cachedir" ignored')]);
    await writeFile(join(root, 'broken.json'), '{ "cacheDir": ');
    await expect(resolveConfig({ flags: { config: 'broken.json' }, env: {}, cwd: root })).rejects.toMatchObject({ code: 'CLI_CONFIG', exitCode: 2 });
    await writeFile(join(root, 'array.json'), '[]');
    await expect(resolveConfig({ flags: { config: 'array.json' }, env: {}, cwd: root })).rejects.toMatchObject({ code: 'CLI_CONFIG' });
    await expect(resolveConfig({ flags: { config: 'absent.json' }, env: {}, cwd: root })).rejects.toThrow(/cannot read config file .*absent\.json: no such file/);
  });

  it('names the source of a bad value', async () => {
    await expect(resolveConfig({ flags: { cacheDir: '/c', maxSize: 'huge' }, env: {} })).rejects.toThrow(/^invalid --max-size "huge"/);
    await expect(resolveConfig({ flags: { cacheDir: '/c' }, env: { IMAGE_CACHE_DRIVER: 'mysql' } })).rejects.toMatchObject({
      code: 'CLI_INVALID_DRIVER',
      message: 'invalid IMAGE_CACHE_DRIVER "mysql": use sqlite, xattr or postgres',
    });
    await writeFile(join(root, 'image-cache.config.json'), JSON.stringify({ cacheDir: '/c', stallTime: 'forever' }));
    await expect(resolveConfig({ env: {}, cwd: root })).rejects.toThrow(/^invalid stallTime in .*image-cache\.config\.json "forever"/);
    await expect(resolveConfig({ env: {}, cwd: '/' })).rejects.toMatchObject({ code: 'CLI_MISSING_CACHE_DIR' });
  });
});

describe('--durability', () => {
  it('resolves from flag, environment or file (default strict) and refuses anything but strict or relaxed', async () => {
    expect((await resolveConfig({ flags: { cacheDir: '/c' }, env: {} })).durability).toBe('strict');
    expect((await resolveConfig({ flags: { cacheDir: '/c' }, env: { IMAGE_CACHE_DURABILITY: 'relaxed' } })).durability).toBe('relaxed');
    await writeFile(join(root, 'image-cache.config.json'), JSON.stringify({ cacheDir: '/c', durability: 'relaxed' }));
    expect((await resolveConfig({ flags: { durability: 'strict' }, env: {}, cwd: root })).durability).toBe('strict');
    expect((await resolveConfig({ env: {}, cwd: root })).durability).toBe('relaxed');
    await expect(resolveConfig({ flags: { cacheDir: '/c', durability: 'fast' }, env: {} })).rejects.toMatchObject({
      code: 'CLI_INVALID_DURABILITY',
      message: 'invalid --durability "fast": use strict or relaxed',
    });
  });

  it('prefetch --durability relaxed commits through a relaxed driver and leaves its journal cleared', async () => {
    const origin = join(root, 'origin');
    await mkdir(origin);
    await writeFile(join(origin, 'img'), Buffer.alloc(10_000, 7));
    for (const mode of ['relaxed', 'strict']) {
      const cacheDir = join(root, `cache-${mode}`);
      const result = await cli(['--cache-dir', cacheDir, 'prefetch', '--origin', origin, '--durability', mode, '--json', 'img'], { cwd: root });
      expect(result.code, result.stderr).toBe(0);
      const files = await tree(cacheDir);
      expect(files).toContain('img');
      // A relaxed driver keeps its journal of unsynced commits in .image-cache/ (ADR 0007); close() synced and removed it.
      if (mode === 'relaxed') expect(files.filter((path) => path.startsWith('.image-cache'))).toEqual(['.image-cache/']);
      else expect(files.filter((path) => path.startsWith('.image-cache'))).toEqual([]);
    }
  });
});

describe('precedence through the CLI', () => {
  it('stats shows the budget and directory chosen by flag over env over config file', async () => {
    await writeFile(join(root, 'image-cache.config.json'), JSON.stringify({ cacheDir: 'file-cache', maxSize: '1KB' }));
    const env = { IMAGE_CACHE_MAX_SIZE: '2KB' };
    await cli(['queue', 'x'], { cwd: root }); // creates ./file-cache
    const stats = async (argv: string[], e: Record<string, string>) =>
      JSON.parse((await cli([...argv, 'stats', '--json'], { cwd: root, env: e })).stdout) as { cacheDir: string; maxSize: number };

    expect(await stats([], {})).toMatchObject({ cacheDir: join(root, 'file-cache'), maxSize: 1024 });
    expect(await stats([], env)).toMatchObject({ maxSize: 2048 });
    expect(await stats(['--max-size', '3KB'], env)).toMatchObject({ maxSize: 3072 });
    expect(await tree(join(root, 'file-cache', 'queue'))).toEqual(['x']); // the file's relative cacheDir, under its directory
    await writeFile(join(root, 'image-cache.config.json'), JSON.stringify({ cacheDir: 'file-cache', origin: root, retires: 5 }));
    const warned = await cli(['prefetch', '--json'], { cwd: root });
    expect(warned.code).toBe(1); // x is not in the origin directory
    expect(warned.stderr.match(/warning/g)).toHaveLength(1); // resolved once, warned once
    expect(warned.stderr).toMatch(/^image-cache: warning: .*image-cache\.config\.json: unknown key "retires" ignored/m);
  });
});
