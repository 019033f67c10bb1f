import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { InvalidArgumentError, OriginError, type ImageId } from '@cache/core';
import { digestAlgorithm, hexDigest, type DigestAlgorithm, type ExpectedDigest } from './expected.js';
import { describeCause, getText, type RequestSettings } from './request.js';

const ALGORITHM_BY_LENGTH: Record<number, DigestAlgorithm> = { 32: 'md5', 64: 'sha256', 128: 'sha512' };

/**
 * A checksum manifest in the format of `sha256sum` (also `md5sum`,
 * `sha512sum`): one `<hex>  <name>` per line (`<hex> *<name>` in binary
 * mode; `<algorithm>:<hex> <name>` also works). Read from a file or an
 * `http(s)` URL at every `open()`, so it can be updated with the images.
 */
export class ChecksumManifest {
  /** The file path (absolute) or URL it is read from. */
  readonly location: string;
  readonly #url: boolean;

  /** @throws InvalidArgumentError for an empty location or an unusable `file:` URL. */
  constructor(location: string) {
    if (typeof location !== 'string' || location.trim() === '') {
      throw new InvalidArgumentError('a checksum manifest needs a file path or an http(s) URL');
    }
    this.#url = /^https?:\/\//i.test(location);
    if (this.#url) this.location = location;
    else if (/^file:\/\//i.test(location)) {
      try {
        this.location = fileURLToPath(location);
      } catch (cause) {
        throw new InvalidArgumentError(`manifest ${JSON.stringify(location)} is not a usable file: URL: ${(cause as Error).message}`);
      }
    } else this.location = resolve(location);
  }

  /**
   * The digest the manifest gives for `id`, or `undefined` when no line names
   * it. A line names `id` when its name is `id` or ends with `/<id>` (so
   * `sha256sum images/*` output works). Rejects with an {@link OriginError}
   * when the manifest cannot be read or parsed, when the line for `id` has a
   * digest of another algorithm, or when two lines for `id` disagree.
   */
  async digestFor(id: ImageId, settings: RequestSettings): Promise<ExpectedDigest | undefined> {
    const text = await this.#read(id, settings);
    let found: ExpectedDigest | undefined;
    const lines = text.split(/\r?\n/);
    for (let index = 0; index < lines.length; index++) {
      const line = (lines[index] as string).trim();
      // Blank lines, comments, and coreutils' escaped names (a name with `\` or a newline is never an image id).
      if (line === '' || line.startsWith('#') || line.startsWith('\\')) continue;
      const where = `checksum manifest ${this.location} line ${index + 1}`;
      const match = /^(?:([A-Za-z0-9-]+):)?([0-9a-fA-F]+)[ \t]+\*?(.+)$/.exec(line);
      if (match === null) throw new OriginError(id, `${where} is not "<hex digest>  <name>"`);
      const [, named, hex = '', rawName = ''] = match;
      const name = rawName.trim().replace(/^(?:\.\/)+/, '');
      if (name !== id && !name.endsWith(`/${id}`)) continue;
      const algorithm = named === undefined ? ALGORITHM_BY_LENGTH[hex.length] : digestAlgorithm(named);
      const digest = algorithm === undefined ? undefined : hexDigest(algorithm, hex);
      if (algorithm === undefined || digest === undefined) {
        throw new OriginError(id, `${where}: a ${named ?? `${hex.length}-character`} digest is not md5, sha256 or sha512`);
      }
      if (found !== undefined && (found.algorithm !== algorithm || found.hex !== digest)) {
        throw new OriginError(id, `${where} contradicts an earlier line for the same image`);
      }
      found = { algorithm, hex: digest, source: 'manifest' };
    }
    return found;
  }

  async #read(id: ImageId, settings: RequestSettings): Promise<string> {
    if (this.#url) {
      try {
        return await getText(this.location, id, settings);
      } catch (error) {
        // Not the image's status: a manifest's 404 must not read as "the origin does not have the image".
        if (!OriginError.isInstance(error)) throw error;
        throw new OriginError(id, `cannot read checksum manifest: ${error.message.replace(/^origin failed for image '[^']*': /, '')}`, { cause: error });
      }
    }
    try {
      return await readFile(this.location, { encoding: 'utf8', ...(settings.signal === undefined ? {} : { signal: settings.signal }) });
    } catch (cause) {
      if (settings.signal?.aborted === true) throw settings.signal.reason;
      throw new OriginError(id, `cannot read checksum manifest ${this.location}: ${describeCause(cause)}`, { cause });
    }
  }
}
