import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { isValidImageId, normalizeChecksum, type ChecksumAlgorithm, type ImageId, type NormalizedChecksum } from '@cache/core';
import { CliErrorCodes, usageError } from '../errors.js';

const ALGORITHM_BY_LENGTH: Record<number, ChecksumAlgorithm> = { 32: 'md5', 64: 'sha256', 128: 'sha512' };

/**
 * Parses a checksum manifest: one `<digest> <id>` per line, as written by
 * `md5sum`, `sha256sum` or `sha512sum` (a `*` before the id is allowed), or
 * `<algorithm>:<hex> <id>`. The algorithm of a bare hex digest follows from
 * its length. Blank lines and lines starting with `#` are skipped.
 *
 * @throws CliError `CLI_CHECKSUM_MANIFEST` (exit code 2) naming the first bad line.
 */
export function parseChecksumManifest(text: string, source = 'checksum manifest'): Map<ImageId, NormalizedChecksum> {
  const checksums = new Map<ImageId, NormalizedChecksum>();
  const lines = text.split(/\r?\n/);
  lines.forEach((raw, index) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const bad = (reason: string) =>
      usageError(CliErrorCodes.CHECKSUM_MANIFEST, `${source} line ${index + 1}: ${reason}; expected "<hex digest>  <image id>"`);
    const match = /^(?:([a-z0-9]+):)?([0-9a-fA-F]+)\s+\*?(.+)$/.exec(line);
    if (match === null) throw bad('cannot parse');
    const [, named, hex = '', id = ''] = match;
    const algorithm = named ?? ALGORITHM_BY_LENGTH[hex.length];
    if (algorithm === undefined) throw bad(`a ${hex.length}-character digest is not md5, sha256 or sha512`);
    if (!isValidImageId(id)) throw bad(`${JSON.stringify(id)} is not a valid image id`);
    let checksum: NormalizedChecksum | undefined;
    try {
      checksum = normalizeChecksum({ algorithm: algorithm as ChecksumAlgorithm, digest: hex });
    } catch (error) {
      throw bad((error as Error).message);
    }
    if (checksum !== undefined) checksums.set(id, checksum);
  });
  return checksums;
}

/** Reads and parses a checksum manifest file (see {@link parseChecksumManifest}). */
export async function readChecksumManifest(path: string, cwd: string): Promise<Map<ImageId, NormalizedChecksum>> {
  const file = resolve(cwd, path);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw usageError(CliErrorCodes.CHECKSUM_MANIFEST, `cannot read checksum manifest ${file}: ${(error as Error).message}`);
  }
  return parseChecksumManifest(text, file);
}
