import { createReadStream } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { InvalidArgumentError, OriginError, assertImageId, type ImageId } from '@cache/core';
import { isErrnoError } from '@cache/core/driver';
import type { ExpectedDigest } from './expected.js';
import { CHUNK_SIZE, originImage, type OriginImage } from './image.js';
import { ChecksumManifest } from './manifest.js';
import type { Origin, OriginOpenOptions } from './origin.js';
import { describeCause } from './request.js';

/** Options of {@link DirectoryOrigin}. */
export interface DirectoryOriginOptions {
  /**
   * A checksum manifest (`sha256sum` format) as a file path or an `http(s)`
   * URL, read at every `open()`; the digest it gives an image is announced
   * as `expected.digest` (source `manifest`).
   */
  manifest?: string;
}

/**
 * Reads `<directory>/<id>`. Ids are validated first, so no id can name a path
 * outside the directory. A file that is missing, or is not a regular file,
 * is a 404 `OriginError`. The file's size is the expected length (source
 * `file`), so a file's image is always at least length-verified.
 */
export class DirectoryOrigin implements Origin {
  readonly description: string;
  /** Absolute path of the directory. */
  readonly directory: string;
  readonly #manifest: ChecksumManifest | undefined;

  /** @throws InvalidArgumentError for an empty path or manifest location. */
  constructor(directory: string, options: DirectoryOriginOptions = {}) {
    if (typeof directory !== 'string' || directory.length === 0) {
      throw new InvalidArgumentError('a directory origin needs a non-empty path');
    }
    this.directory = resolve(directory);
    this.description = this.directory;
    this.#manifest = options.manifest === undefined ? undefined : new ChecksumManifest(options.manifest);
  }

  async open(id: ImageId, options: OriginOpenOptions = {}): Promise<OriginImage> {
    assertImageId(id);
    const { signal } = options;
    signal?.throwIfAborted();
    const path = join(this.directory, id);
    let digest: ExpectedDigest | undefined;
    if (this.#manifest !== undefined) {
      digest = await this.#manifest.digestFor(id, { headers: {}, timeout: 30_000, signal });
    }
    let handle: FileHandle;
    try {
      handle = await open(path, 'r');
    } catch (cause) {
      const missing = isErrnoError(cause, 'ENOENT', 'ENOTDIR');
      throw new OriginError(id, missing ? `no file ${path}` : `cannot open ${path}: ${describeCause(cause)}`, {
        cause,
        ...(missing ? { status: 404 } : {}),
      });
    }
    let size: number;
    try {
      const stat = await handle.stat();
      if (!stat.isFile()) throw new OriginError(id, `${path} is not a regular file`, { status: 404 });
      size = stat.size;
      signal?.throwIfAborted();
    } catch (error) {
      await handle.close().catch(() => undefined);
      throw OriginError.isInstance(error) || signal?.aborted === true
        ? error
        : new OriginError(id, `cannot stat ${path}: ${describeCause(error)}`, { cause: error });
    }
    const file = createReadStream(path, { fd: handle, highWaterMark: CHUNK_SIZE });
    // The size is the file's when opened; a file that shrinks or grows while being read is an origin failure.
    return originImage(file, {
      id,
      what: `read ${path}`,
      expected: { length: size, lengthSource: 'file', ...(digest === undefined ? {} : { digest }) },
      verification: digest === undefined ? 'length' : 'digest',
      allowUnverified: false,
      signal,
    });
  }
}
