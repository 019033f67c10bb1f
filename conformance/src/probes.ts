import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';

/** What one capability probe found. */
export interface CapabilityProbe {
  /** True when the filesystem offers the capability. */
  readonly supported: boolean;
  /**
   * Why, as a phrase that reads after the filesystem's name, e.g.
   * `"has no user xattrs (ENOTSUP): mount with user_xattr ..."` or
   * `"updates atime on every read (strictatime)"`.
   */
  readonly reason: string;
}

/** Everything the kit probes on one filesystem root. */
export interface FilesystemProbe {
  /** The directory that was probed. */
  readonly root: string;
  /** `user.*` extended attributes can be set and read back. */
  readonly xattr: CapabilityProbe;
  /** Every read updates atime (strictatime), not only the first after a change. */
  readonly atime: CapabilityProbe;
}

/** The capabilities a driver can need; see `DriverCapabilities` in `@cache/core`. */
export type CapabilityName = 'xattr' | 'atime';

/** Name of the extended attribute the xattr probe sets. */
export const XATTR_PROBE_ATTRIBUTE = 'user.cache-probe';

/** How long the atime probe waits between its two reads (ms). */
export const ATIME_PROBE_DELAY_MS = 50;

function probePath(root: string, what: string): string {
  return join(root, `.cache-probe-${what}-${process.pid}-${randomBytes(6).toString('hex')}`);
}

function errorText(error: unknown): string {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  const message = error instanceof Error ? error.message : String(error);
  return code !== undefined && !message.includes(code) ? `${code}: ${message}` : message;
}

interface XattrModule {
  setAttributeSync(path: string, attr: string, value: Buffer | string): void;
  getAttributeSync(path: string, attr: string): Buffer;
}

/**
 * Probes whether `root` keeps `user.*` extended attributes: creates a uniquely
 * named file under it, sets {@link XATTR_PROBE_ATTRIBUTE} with `fs-xattr`,
 * reads it back, and always deletes the file. `fs-xattr` is an optional
 * dependency of the kit, loaded here on first use: when it is not installed
 * (or its native addon did not build) the capability is reported missing with
 * that reason, and the cases that need user xattrs are skipped.
 */
export async function probeXattr(root: string): Promise<CapabilityProbe> {
  let xattr: XattrModule;
  try {
    xattr = (await import('fs-xattr')) as XattrModule;
  } catch (error) {
    return {
      supported: false,
      reason: `cannot be probed for user xattrs: fs-xattr could not be loaded: ${errorText(error)}; install it to probe user xattrs (npm install fs-xattr)`,
    };
  }
  const path = probePath(root, 'xattr');
  try {
    try {
      writeFileSync(path, 'probe', { flag: 'wx' });
    } catch (error) {
      return { supported: false, reason: `cannot be probed for user xattrs: creating ${path} failed (${errorText(error)})` };
    }
    const value = `probe-${randomBytes(4).toString('hex')}`;
    try {
      xattr.setAttributeSync(path, XATTR_PROBE_ATTRIBUTE, value);
      const back = xattr.getAttributeSync(path, XATTR_PROBE_ATTRIBUTE).toString('utf8');
      if (back !== value) {
        return { supported: false, reason: `has broken user xattrs: wrote ${JSON.stringify(value)}, read ${JSON.stringify(back)}` };
      }
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOTSUP' || code === 'EOPNOTSUPP') {
        return {
          supported: false,
          reason: `has no user xattrs (${code}): mount with user_xattr, or use a filesystem that keeps them (ext4, xfs, tmpfs)`,
        };
      }
      return { supported: false, reason: `refused user xattrs: setting ${XATTR_PROBE_ATTRIBUTE} failed (${errorText(error)})` };
    }
    return { supported: true, reason: `keeps user xattrs (${XATTR_PROBE_ATTRIBUTE} set and read back)` };
  } finally {
    rmSync(path, { force: true });
  }
}

/**
 * Probes whether every read of a file on `root` updates its atime (mount
 * option `strictatime`). Writes a file whose atime is older than its mtime,
 * reads it, waits {@link ATIME_PROBE_DELAY_MS} ms and reads it again: under
 * `relatime` (the Linux default) only the first read moves atime, under
 * `noatime` neither does, under `strictatime` both do. The decisive read
 * happens only once atime is past ctime too (relatime also updates while
 * atime <= ctime). Takes about 100 ms. The file is always deleted.
 */
export async function probeAtime(root: string): Promise<CapabilityProbe> {
  const path = probePath(root, 'atime');
  try {
    try {
      writeFileSync(path, 'probe', { flag: 'wx' });
      const now = Date.now() / 1000;
      // atime older than mtime: relatime then updates on the first read, so it can be told from noatime.
      utimesSync(path, now - 10, now - 5);
    } catch (error) {
      return { supported: false, reason: `cannot be probed for atime: preparing ${path} failed (${errorText(error)})` };
    }
    const times = () => statSync(path, { bigint: true });
    const before = times().atimeNs;
    // Reads land on a later clock tick than the utimes() above: relatime also updates atime while
    // atime <= ctime, and utimes() just set ctime to now.
    await sleep(ATIME_PROBE_DELAY_MS);
    readFileSync(path);
    let afterRead = times();
    for (let tries = 0; afterRead.atimeNs > before && afterRead.atimeNs <= afterRead.ctimeNs && tries < 3; tries++) {
      await sleep(ATIME_PROBE_DELAY_MS);
      readFileSync(path);
      afterRead = times();
    }
    const afterFirst = afterRead.atimeNs;
    await sleep(ATIME_PROBE_DELAY_MS);
    readFileSync(path);
    const afterSecond = times().atimeNs;
    const first = afterFirst > before;
    const second = afterSecond > afterFirst;
    if (second) return { supported: true, reason: 'updates atime on every read (strictatime)' };
    if (first) {
      return {
        supported: false,
        reason: 'updates atime only on the first read after a change (relatime, the Linux default): mount with strictatime',
      };
    }
    return { supported: false, reason: 'never updates atime on read (noatime, or a read-only mount): mount with strictatime' };
  } catch (error) {
    return { supported: false, reason: `cannot be probed for atime: ${errorText(error)}` };
  } finally {
    rmSync(path, { force: true });
  }
}

/** Runs every probe on one filesystem root. */
export async function probeFilesystem(root: string): Promise<FilesystemProbe> {
  const [xattr, atime] = [await probeXattr(root), await probeAtime(root)];
  return { root, xattr, atime };
}

/** One line that says what the probes found, e.g. for a test log. */
export function describeProbe(name: string, probe: FilesystemProbe): string {
  const one = (cap: CapabilityName) => `${cap} ${probe[cap].supported ? 'yes' : 'no'} (${probe[cap].reason})`;
  return `[conformance] filesystem ${name} at ${probe.root}: ${one('xattr')}; ${one('atime')}`;
}

/**
 * The capabilities in `required` that `probe` says are missing, with the
 * probe's reason for each; empty when the driver can run there.
 */
export function missingCapabilities(
  required: Partial<Record<CapabilityName, boolean>>,
  probe: FilesystemProbe,
): { capability: CapabilityName; reason: string }[] {
  const missing: { capability: CapabilityName; reason: string }[] = [];
  for (const capability of ['xattr', 'atime'] as const) {
    if (required[capability] === true && !probe[capability].supported) {
      missing.push({ capability, reason: probe[capability].reason });
    }
  }
  return missing;
}
