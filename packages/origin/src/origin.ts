import type { ImageId } from '@cache/core';
import type { OriginImage } from './image.js';

/** Options of {@link Origin.open}. */
export interface OriginOpenOptions {
  /**
   * Aborts the request and destroys the stream. An abort is the caller's
   * doing, not an origin failure: `open()` rejects, and the stream errors,
   * with the signal's `reason` (an `AbortError` by default), not an `OriginError`.
   */
  signal?: AbortSignal;
}

/**
 * A source of images by id. An implementation outside this package must
 * fill in every field of {@link OriginImage}: `expected` may be `{}`, and
 * `verification` `'none'`, when it knows nothing about the bytes.
 */
export interface Origin {
  /** Human-readable description (the URL template or the directory), for logs and CLI output. */
  readonly description: string;
  /**
   * Opens one image. Rejects with `InvalidImageIdError` for an invalid id, with
   * an `OriginError` whose `status` is 404 when the origin does not have
   * it, and with another status or none for other failures (including an
   * origin that contradicts itself: two different lengths or digests).
   */
  open(id: ImageId, options?: OriginOpenOptions): Promise<OriginImage>;
}
