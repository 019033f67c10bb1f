import { execFile } from 'node:child_process';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { missingCapabilities, probeFilesystem, type CapabilityName, type CapabilityProbe } from './probes.js';

const run = promisify(execFile);

/** Size of the tmpfs the kit mounts to provoke ENOSPC: room for a driver's metadata store, small enough to fill at once. */
export const SCRATCH_MOUNT_BYTES = 4 * 1024 * 1024;

/** A small tmpfs the kit mounted for one case; {@link ScratchMount.unmount} removes it. */
export interface ScratchMount {
  /** The mount point. */
  readonly path: string;
  /** Unmounts (lazily if busy) and removes the mount point. Never throws. */
  unmount(): Promise<void>;
}

function errorText(error: unknown): string {
  return (error as { stderr?: string }).stderr?.toString().trim() || (error as Error).message;
}

/**
 * Mounts a fresh {@link SCRATCH_MOUNT_BYTES} tmpfs (`strictatime`, so drivers
 * that need atime run on it) on a new directory under the OS temp dir. Linux
 * and root only; rejects with the reason otherwise.
 */
export async function mountScratch(): Promise<ScratchMount> {
  if (process.platform !== 'linux') throw new Error(`mounting a tmpfs needs Linux (this is ${process.platform})`);
  if (process.getuid?.() !== 0) throw new Error('mounting a tmpfs needs root');
  const path = await mkdtemp(join(tmpdir(), 'conformance-nospace-'));
  try {
    await run('mount', ['-t', 'tmpfs', '-o', `size=${SCRATCH_MOUNT_BYTES},strictatime,mode=0755`, 'tmpfs', path]);
  } catch (error) {
    await rm(path, { recursive: true, force: true });
    throw new Error(`mount -t tmpfs failed: ${errorText(error)}`);
  }
  return {
    path,
    async unmount() {
      try {
        await run('umount', [path]);
      } catch {
        await run('umount', ['-l', path]).catch(() => undefined);
      }
      await rm(path, { recursive: true, force: true }).catch(() => undefined);
    },
  };
}

/**
 * Whether the kit can provoke ENOSPC for a driver that needs `required`:
 * mounts a scratch tmpfs once, probes it, unmounts it. Memoized per process
 * and capability set.
 */
export function probeNoSpace(required: Partial<Record<CapabilityName, boolean>>): Promise<CapabilityProbe> {
  const key = JSON.stringify([required.xattr === true, required.atime === true]);
  let probe = noSpaceProbes.get(key);
  if (probe === undefined) {
    probe = (async (): Promise<CapabilityProbe> => {
      let mount: ScratchMount;
      try {
        mount = await mountScratch();
      } catch (error) {
        return { supported: false, reason: `the kit cannot mount a small tmpfs to fill up (${(error as Error).message})` };
      }
      try {
        const found = await probeFilesystem(mount.path);
        const missing = missingCapabilities(required, found);
        if (missing.length > 0) {
          return { supported: false, reason: `the small tmpfs the kit fills up lacks what the driver needs: ${missing.map((m) => `${m.capability} (${m.reason})`).join('; ')}` };
        }
        return { supported: true, reason: `a ${SCRATCH_MOUNT_BYTES / 1024 / 1024} MiB tmpfs mounted per case and filled up` };
      } finally {
        await mount.unmount();
      }
    })();
    noSpaceProbes.set(key, probe);
  }
  return probe;
}

const noSpaceProbes = new Map<string, Promise<CapabilityProbe>>();

/**
 * Fills the filesystem of `path` with one file at `path` (written in 64 KiB
 * blocks until ENOSPC, then a byte at a time until not one more fits).
 * Returns its size. Deleting the file gives the space back.
 */
export async function fillUp(path: string): Promise<number> {
  const handle = await open(path, 'wx');
  let size = 0;
  try {
    for (const block of [Buffer.alloc(64 * 1024, 0x5a), Buffer.alloc(1, 0x5a)]) {
      for (;;) {
        try {
          const { bytesWritten } = await handle.write(block, 0, block.length, size);
          size += bytesWritten;
          if (bytesWritten === 0) break;
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code === 'ENOSPC' || (error as NodeJS.ErrnoException).code === 'EDQUOT') break;
          throw error;
        }
      }
    }
  } finally {
    await handle.close();
  }
  return size;
}
