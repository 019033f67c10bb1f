import type { Writable } from 'node:stream';
import cliProgress from 'cli-progress';
import type { ImageId } from '@cache/core';
import { formatDuration, formatSize } from '../units.js';
import type { PrefetchResult } from './run.js';

/** Receives prefetch progress. */
export interface ProgressReporter {
  /** Called once before any image starts. */
  begin(total: number): void;
  /** An attempt to fetch `id` started; `size` is the origin's size when known. */
  started(id: ImageId, attempt: number, size: number | undefined): void;
  /** `bytes` more arrived for `id`. */
  advanced(id: ImageId, bytes: number): void;
  /** Attempt number `attempt` failed with `error` and will be retried after a back-off. */
  retrying(id: ImageId, attempt: number, error: Error): void;
  /** `id` is done, whatever the outcome. */
  finished(result: PrefetchResult): void;
  /** Called once after every image is done; removes bars. */
  end(): void;
}

/** One plain line describing a finished image. */
export function describeResult(result: PrefetchResult): string {
  const tries = `${result.attempts} attempt${result.attempts === 1 ? '' : 's'}`;
  switch (result.status) {
    case 'fetched': {
      const rate = result.seconds > 0 ? `, ${formatSize(result.bytes / result.seconds)}/s` : '';
      return `fetched ${result.imageId}: ${formatSize(result.bytes)} in ${formatDuration(result.seconds)}${rate}, ${tries}`;
    }
    case 'already-cached':
      return `already cached ${result.imageId}`;
    case 'skipped':
      return `skipped ${result.imageId}: another writer is caching it`;
    case 'cancelled':
      return `cancelled ${result.imageId}`;
    case 'failed':
      return `failed ${result.imageId} after ${tries}: ${result.error?.message ?? 'unknown error'}${
        result.error?.code === undefined ? '' : ` [${result.error.code}]`
      }`;
  }
}

/** Without a terminal: one line per finished image and per retry, nothing else. */
export class LineReporter implements ProgressReporter {
  constructor(private readonly stream: Writable) {}
  begin(): void {}
  started(): void {}
  advanced(): void {}
  retrying(id: ImageId, attempt: number, error: Error): void {
    this.stream.write(`retrying ${id} after attempt ${attempt}: ${error.message.replace(/\s*\n\s*/g, ' ')}\n`);
  }
  finished(result: PrefetchResult): void {
    this.stream.write(`${describeResult(result)}\n`);
  }
  end(): void {}
}

/** Payload of one image's bar. */
interface ImagePayload {
  id: string;
  sizeKnown: boolean;
  attempt: number;
}

/** Payload of the overall bar. */
interface OverallPayload {
  bytes: number;
  failed: number;
}

/**
 * On a terminal: a cli-progress MultiBar with one bar per image being fetched
 * (bytes, bytes/s, ETA) and an overall bar (images done, bytes, bytes/s, ETA).
 * Finished images are logged above the bars.
 */
export class BarReporter implements ProgressReporter {
  readonly #multibar: cliProgress.MultiBar;
  readonly #bars = new Map<ImageId, cliProgress.SingleBar>();
  #overall: cliProgress.SingleBar | undefined;
  #bytes = 0;
  #failed = 0;
  readonly #startedAt = Date.now();

  constructor(stream: Writable) {
    this.#multibar = new cliProgress.MultiBar(
      {
        stream: stream as unknown as NodeJS.WritableStream,
        hideCursor: true,
        clearOnComplete: true,
        stopOnComplete: false,
        barsize: 24,
        etaBuffer: 20,
        fps: 10,
        format: (options, params, payload: ImagePayload | (OverallPayload & { overall: true })) =>
          'overall' in payload ? this.#formatOverall(options, params, payload) : formatImage(options, params, payload),
      },
      cliProgress.Presets.shades_classic,
    );
  }

  begin(total: number): void {
    this.#overall = this.#multibar.create(total, 0, { overall: true, bytes: 0, failed: 0 });
  }

  started(id: ImageId, attempt: number, size: number | undefined): void {
    const payload: ImagePayload = { id, sizeKnown: size !== undefined, attempt };
    const existing = this.#bars.get(id);
    if (existing !== undefined) {
      existing.setTotal(size ?? 0);
      existing.update(0, payload);
      return;
    }
    this.#bars.set(id, this.#multibar.create(size ?? 0, 0, payload));
  }

  advanced(id: ImageId, bytes: number): void {
    this.#bytes += bytes;
    this.#bars.get(id)?.increment(bytes);
    this.#overall?.update({ bytes: this.#bytes, failed: this.#failed });
  }

  retrying(id: ImageId, attempt: number, error: Error): void {
    this.#multibar.log(`retrying ${id} after attempt ${attempt}: ${error.message.replace(/\s*\n\s*/g, ' ')}\n`);
  }

  finished(result: PrefetchResult): void {
    if (result.status === 'failed') this.#failed++;
    // Log before removing the bar: removing redraws, which flushes the log above the bars.
    this.#multibar.log(`${describeResult(result)}\n`);
    this.#overall?.increment(1, { bytes: this.#bytes, failed: this.#failed });
    const bar = this.#bars.get(result.imageId);
    if (bar !== undefined) {
      this.#multibar.remove(bar);
      this.#bars.delete(result.imageId);
    }
  }

  end(): void {
    this.#multibar.update(); // flush logged lines that no redraw has written yet
    this.#multibar.stop();
  }

  #formatOverall(options: cliProgress.Options, params: cliProgress.Params, payload: OverallPayload): string {
    const elapsed = (Date.now() - this.#startedAt) / 1000;
    const rate = elapsed > 0 ? this.#bytes / elapsed : 0;
    const eta = params.value > 0 && params.value < params.total ? formatDuration(params.eta) : '-';
    const failed = payload.failed > 0 ? `, ${payload.failed} failed` : '';
    return `${'overall'.padEnd(20)} ${cliProgress.Format.BarFormat(params.progress, options)} ${params.value}/${params.total} images${failed} ${formatSize(payload.bytes)} ${formatSize(rate)}/s ETA ${eta}`;
  }
}

function formatImage(options: cliProgress.Options, params: cliProgress.Params, payload: ImagePayload): string {
  const elapsed = (Date.now() - params.startTime) / 1000;
  const rate = elapsed > 0 ? params.value / elapsed : 0;
  const name = payload.id.length > 20 ? `${payload.id.slice(0, 19)}…` : payload.id.padEnd(20);
  const retry = payload.attempt > 1 ? ` (attempt ${payload.attempt})` : '';
  if (!payload.sizeKnown) return `${name} ${formatSize(params.value)} ${formatSize(rate)}/s${retry}`;
  const eta = rate > 0 ? formatDuration((params.total - params.value) / rate) : '-';
  return `${name} ${cliProgress.Format.BarFormat(params.progress, options)} ${Math.floor(params.progress * 100)}% ${formatSize(params.value)}/${formatSize(params.total)} ${formatSize(rate)}/s ETA ${eta}${retry}`;
}
