/**
 * The filesystems a default run measures, set up the way
 * scripts/test-filesystems.sh sets up the test matrix: everything in one
 * `mktemp -d /tmp/cache-bench.XXXXXX` directory that records its owner's pid;
 * as root, a tmpfs and an ext4 on a loop device (sparse image) mounted in it.
 * `teardown()` unmounts (falling back to a lazy unmount), detaches the loop
 * device and removes the directory; a run killed with SIGKILL leaves them
 * behind and the next run sweeps them (only when their owner is gone).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { removeTestPostgresSync } from '@cache/postgres-testing';
import type { FsTarget } from './options.js';

const PREFIX = 'cache-bench.';
/** The bench's PostgreSQL server lives in a `cache-bench.pg-XXXXXX` directory (main.ts), swept like the workspace. */
export const PG_PREFIX = `${PREFIX}pg-`;
/** tmpfs only takes memory for what is stored; the largest moment is two 1 GiB files plus 100k small entries. */
const TMPFS_SIZE = '4g';
/** Sparse: only the blocks written take space in the OS temp dir. */
const EXT4_IMAGE_BYTES = 8 * 1024 ** 3;

function say(message: string): void {
  process.stderr.write(`bench: ${message}\n`);
}

function run(command: string, args: readonly string[]): string {
  return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
}

function errorText(error: unknown): string {
  const stderr = (error as { stderr?: string | Buffer }).stderr?.toString().trim();
  return stderr || (error as Error).message;
}

function isMountPoint(dir: string): boolean {
  try {
    execFileSync('mountpoint', ['-q', dir], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function unmount(dir: string): void {
  if (!isMountPoint(dir)) return;
  try {
    run('umount', [dir]);
    return;
  } catch {
    // busy: try once more, then lazily
  }
  try {
    execFileSync('sleep', ['0.2']);
    run('umount', [dir]);
  } catch {
    say(`umount ${dir} failed (busy?); detaching it lazily (umount -l)`);
    try {
      run('umount', ['-l', dir]);
    } catch (error) {
      say(`WARNING: umount -l ${dir} failed too (${errorText(error)}): it stays mounted`);
    }
  }
}

function detach(device: string): void {
  try {
    run('losetup', ['-d', device]);
  } catch (error) {
    say(`WARNING: losetup -d ${device} failed (${errorText(error)})`);
  }
}

function removeTree(dir: string): void {
  if (!existsSync(dir)) return;
  try {
    // --one-file-system: never reach into a mount that refused to go away.
    run('rm', ['-rf', '--one-file-system', '--', dir]);
  } catch (error) {
    say(`WARNING: could not remove ${dir} entirely (${errorText(error)})`);
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Mount points under `dir`, deepest first (from /proc/self/mountinfo). */
function mountsUnder(dir: string): string[] {
  const lines = readFileSync('/proc/self/mountinfo', 'utf8').split('\n');
  const targets = lines
    .map((line) => line.split(' ')[4])
    .filter((target): target is string => target !== undefined && target.startsWith(`${dir}/`))
    .map((target) => target.replace(/\\040/g, ' '));
  return targets.sort().reverse();
}

/** Loop devices whose backing file is under `dir`. */
function loopsUnder(dir: string): string[] {
  try {
    return run('losetup', ['-a', '-n', '-O', 'NAME,BACK-FILE'])
      .split('\n')
      .map((line) => line.trim().split(/\s+/))
      .filter(([, file]) => file !== undefined && file.startsWith(`${dir}/`))
      .map(([name]) => name as string);
  } catch {
    return [];
  }
}

/**
 * Kills processes a killed run left running on `dir` (the HTTP figures'
 * `image-cache serve` and downloads name a path under it on their command line).
 */
function killProcessesUsing(dir: string): void {
  let names: string[];
  try {
    names = readdirSync('/proc');
  } catch {
    return;
  }
  for (const name of names) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    let args: string[];
    try {
      args = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0');
    } catch {
      continue; // exited
    }
    if (!args.some((arg) => arg === dir || arg.startsWith(`${dir}/`))) continue;
    say(`killing process ${name} left running on ${dir}: ${args.join(' ').trim().slice(0, 200)}`);
    try {
      process.kill(Number(name), 'SIGKILL');
    } catch {
      // gone meanwhile, or not ours to kill
    }
  }
}

/** Removes what runs killed with SIGKILL left behind: only our directories, only when their owner is gone. */
function sweepStale(): void {
  const base = tmpdir();
  for (const name of readdirSync(base)) {
    if (!name.startsWith(PREFIX)) continue;
    const dir = join(base, name);
    let owner = NaN;
    try {
      owner = Number(readFileSync(join(dir, '.owner'), 'utf8').trim());
    } catch {
      continue; // not ours, or not set up yet
    }
    if (Number.isInteger(owner) && owner > 0 && pidAlive(owner)) continue;
    say(`removing the leftovers of an earlier run in ${dir}`);
    if (name.startsWith(PG_PREFIX)) {
      // Stops the PostgreSQL server the killed run left running, then removes its directory.
      removeTestPostgresSync(dir);
      continue;
    }
    killProcessesUsing(dir);
    if (process.getuid?.() === 0) {
      for (const target of mountsUnder(dir)) unmount(target);
      for (const device of loopsUnder(dir)) detach(device);
    }
    removeTree(dir);
  }
}

/** What the bench set up; `teardown()` undoes it (idempotent, synchronous so it can run from any exit path). */
export interface Workspace {
  /** The mktemp directory holding everything. */
  readonly root: string;
  /** Filesystems to measure, each with a fresh work directory on it. */
  readonly targets: readonly FsTarget[];
  /** Messages about filesystems that could not be set up. */
  readonly warnings: readonly string[];
  teardown(): void;
}

/**
 * Creates the workspace. With `given` filesystems it mounts nothing and makes
 * a work directory in each; otherwise the OS temp dir, plus (as root, when
 * `mount` works, and unless `options.mount` is false: only figures that run on
 * the first filesystem are wanted) a tmpfs and a loop ext4.
 */
export function setUpWorkspace(given: readonly FsTarget[], options: { mount?: boolean } = {}): Workspace {
  sweepStale();
  const root = mkdtempSync(join(tmpdir(), PREFIX));
  writeFileSync(join(root, '.owner'), `${process.pid}\n`);
  const mounts: string[] = [];
  const loops: string[] = [];
  const givenDirs: string[] = [];
  const warnings: string[] = [];
  let tornDown = false;
  const teardown = () => {
    if (tornDown) return;
    tornDown = true;
    for (const dir of givenDirs) removeTree(dir);
    for (const dir of [...mounts].reverse()) unmount(dir);
    for (const device of [...loops].reverse()) detach(device);
    removeTree(root);
  };

  const targets: FsTarget[] = [];
  try {
    if (given.length > 0) {
      for (const target of given) {
        const dir = mkdtempSync(join(target.path, PREFIX));
        givenDirs.push(dir);
        writeFileSync(join(dir, '.owner'), `${process.pid}\n`);
        targets.push({ name: target.name, path: dir });
      }
      return { root, targets, warnings, teardown };
    }

    const osTmp = join(root, 'os-tmp');
    mkdirSync(osTmp);
    targets.push({ name: 'os-tmp', path: osTmp });

    if (options.mount === false) return { root, targets, warnings, teardown };
    if (process.getuid?.() !== 0) {
      warnings.push('not root: measuring on the OS temp dir only (no tmpfs / loop ext4)');
      return { root, targets, warnings, teardown };
    }

    const tmpfs = join(root, 'tmpfs');
    mkdirSync(tmpfs);
    try {
      run('mount', ['-t', 'tmpfs', '-o', `size=${TMPFS_SIZE}`, 'tmpfs', tmpfs]);
      mounts.push(tmpfs);
      targets.push({ name: 'tmpfs', path: tmpfs });
    } catch (error) {
      warnings.push(`tmpfs: mount -t tmpfs failed (${errorText(error)}): left out`);
    }

    const image = join(root, 'ext4.img');
    const ext4 = join(root, 'ext4');
    mkdirSync(ext4);
    try {
      writeFileSync(image, '');
      truncateSync(image, EXT4_IMAGE_BYTES);
      const device = run('losetup', ['--find', '--show', '--', image]);
      loops.push(device);
      run('mkfs.ext4', ['-q', '-F', device]);
      run('mount', ['-t', 'ext4', device, ext4]);
      mounts.push(ext4);
      targets.push({ name: 'ext4', path: ext4 });
    } catch (error) {
      warnings.push(`ext4: loop device / mkfs.ext4 / mount failed (${errorText(error)}): left out`);
    }
    return { root, targets, warnings, teardown };
  } catch (error) {
    teardown();
    throw error;
  }
}

/** `fstype options` of the filesystem holding `path`, as findmnt reports them (best effort). */
export function describeFs(path: string): { fstype: string; options: string } {
  try {
    const [fstype = '?', options = '?'] = run('findmnt', ['-n', '-o', 'FSTYPE,OPTIONS', '--target', path]).split(/\s+/);
    return { fstype, options };
  } catch {
    return { fstype: '?', options: '?' };
  }
}
