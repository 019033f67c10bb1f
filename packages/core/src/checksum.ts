import { createHash, type Hash } from 'node:crypto';
import { InvalidArgumentError } from './errors.js';

/** Digest algorithms the cache verifies. `md5` is what Glance stores as an image's `checksum`. */
export type ChecksumAlgorithm = 'md5' | 'sha256' | 'sha512';

/**
 * An expected digest: a bare md5 hex string (Glance's `checksum`), or an
 * algorithm with its hex digest (Glance's `os_hash_algo` / `os_hash_value`).
 */
export type Checksum = string | { algorithm: ChecksumAlgorithm; digest: string };

/** A validated checksum: known algorithm, lower-case hex of the right length. */
export interface NormalizedChecksum {
  algorithm: ChecksumAlgorithm;
  digest: string;
}

const HEX_LENGTH: Record<ChecksumAlgorithm, number> = { md5: 32, sha256: 64, sha512: 128 };

/** Validates and normalizes a {@link Checksum}; `InvalidArgumentError` for anything malformed. */
export function normalizeChecksum(checksum: Checksum | undefined | null): NormalizedChecksum | undefined {
  if (checksum === undefined || checksum === null) return undefined;
  const { algorithm, digest } =
    typeof checksum === 'string' ? { algorithm: 'md5' as const, digest: checksum } : (checksum as NormalizedChecksum);
  if (!Object.hasOwn(HEX_LENGTH, algorithm)) {
    throw new InvalidArgumentError(
      `unsupported checksum algorithm ${JSON.stringify(algorithm)}: use one of ${Object.keys(HEX_LENGTH).join(', ')}`,
    );
  }
  const length = HEX_LENGTH[algorithm];
  if (typeof digest !== 'string' || digest.length !== length || !/^[0-9a-fA-F]+$/.test(digest)) {
    throw new InvalidArgumentError(
      `malformed ${algorithm} checksum ${JSON.stringify(digest)}: expected ${length} hexadecimal characters`,
    );
  }
  return { algorithm, digest: digest.toLowerCase() };
}

/**
 * The text stored with an entry for a verified digest: a bare hex string for
 * md5 (what Glance stores), `<algorithm>:<hex>` otherwise.
 */
export function formatChecksum(checksum: NormalizedChecksum): string {
  return checksum.algorithm === 'md5' ? checksum.digest : `${checksum.algorithm}:${checksum.digest}`;
}

/** Parses what {@link formatChecksum} wrote; `undefined` for anything else. */
export function parseStoredChecksum(text: string | null | undefined): NormalizedChecksum | undefined {
  if (!text) return undefined;
  const colon = text.indexOf(':');
  try {
    return colon < 0
      ? normalizeChecksum(text)
      : normalizeChecksum({ algorithm: text.slice(0, colon) as ChecksumAlgorithm, digest: text.slice(colon + 1) });
  } catch {
    return undefined;
  }
}

/** A running hash for an expected checksum. */
export function createChecksumHash(checksum: NormalizedChecksum): Hash {
  return createHash(checksum.algorithm);
}
