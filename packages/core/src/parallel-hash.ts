/**
 * Digests computed on a worker thread, so hashing a multi-GiB image overlaps
 * the writes instead of adding to them: the main thread only copies each
 * chunk into a staging buffer (a memcpy) and hands full buffers over by
 * transfer; the worker hashes them and hands them back for reuse.
 *
 * Small inputs never start a thread: the first {@link INLINE_HASH_BYTES}
 * are hashed on the calling thread, and only a stream that grows past that
 * moves to a worker (it starts there from byte 0 again, fed from the staging
 * buffers it is given; what was hashed inline is re-hashed, a few MiB at most).
 *
 * @internal
 */
import { createHash, type Hash } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import type { ChecksumAlgorithm } from './checksum.js';
import { CacheStorageError } from './errors.js';

/** Bytes hashed on the calling thread before a stream moves to a worker. */
export const INLINE_HASH_BYTES = 8 * 1024 * 1024;
/** Size of one buffer handed to the worker. */
const STAGING_BYTES = 1024 * 1024;
/** Buffers the worker may be behind by before `update()` asks the caller to wait. */
const MAX_BUFFERS_IN_FLIGHT = 8;
/** Idle workers kept for the next large stream (unreferenced: they never keep a process alive). */
const MAX_IDLE_WORKERS = 2;

// Works whether the worker's eval code runs as CommonJS or as an ES module
// (a process started with --input-type=module runs eval workers as modules).
const WORKER_SOURCE = `
const { parentPort } = process.getBuiltinModule('node:worker_threads');
const { createHash } = process.getBuiltinModule('node:crypto');
let hash;
parentPort.on('message', (message) => {
  switch (message.type) {
    case 'start':
      hash = createHash(message.algorithm);
      break;
    case 'data': {
      const view = new Uint8Array(message.buffer, 0, message.length);
      hash.update(view);
      parentPort.postMessage({ type: 'done', buffer: message.buffer }, [message.buffer]);
      break;
    }
    case 'digest':
      parentPort.postMessage({ type: 'digest', hex: hash.digest('hex') });
      hash = undefined;
      break;
  }
});
`;

type WorkerMessage = { type: 'done'; buffer: ArrayBuffer } | { type: 'digest'; hex: string };

const idle: Worker[] = [];

/**
 * Workers are never referenced while merely working: only while someone
 * awaits them (a digest, room for more bytes). A stream abandoned without
 * `dispose()` thus never keeps the process alive.
 */
function takeWorker(): Worker {
  const worker = idle.pop() ?? new Worker(WORKER_SOURCE, { eval: true, name: '@cache/core hash' });
  worker.unref();
  return worker;
}

function giveBack(worker: Worker): void {
  worker.removeAllListeners('message');
  worker.removeAllListeners('error');
  worker.removeAllListeners('exit');
  if (idle.length < MAX_IDLE_WORKERS) {
    worker.once('exit', () => {
      const at = idle.indexOf(worker);
      if (at >= 0) idle.splice(at, 1);
    });
    idle.push(worker);
  } else {
    void worker.terminate();
  }
}

/**
 * A running digest whose `update` may ask the caller to wait (when the worker
 * is behind), and whose `digest` is asynchronous. Chunks are copied before
 * `update` returns: the caller may reuse them at once.
 */
export class ParallelHash {
  readonly algorithm: ChecksumAlgorithm;
  /** The inline hash, until the stream moves to a worker. */
  #inline: Hash | undefined;
  /** Everything hashed inline so far, kept to replay it to a worker. */
  #replay: Buffer[] = [];
  #inlineBytes = 0;
  #worker: Worker | undefined;
  #staging: Buffer | undefined;
  #stagingUsed = 0;
  #spare: ArrayBuffer[] = [];
  #inFlight = 0;
  #waiter: (() => void) | undefined;
  #digestResolve: ((hex: string) => void) | undefined;
  #error: Error | undefined;
  #finished = false;

  constructor(algorithm: ChecksumAlgorithm) {
    this.algorithm = algorithm;
    this.#inline = createHash(algorithm);
  }

  /**
   * Adds bytes. Returns a promise when the worker is more than a few MiB
   * behind: await it before the next `update` to bound memory.
   */
  update(chunk: Uint8Array): Promise<void> | undefined {
    if (this.#finished) throw new Error('ParallelHash: update after digest');
    if (this.#error !== undefined) throw this.#error;
    if (this.#worker === undefined) {
      if (this.#inlineBytes + chunk.length <= INLINE_HASH_BYTES) {
        (this.#inline as Hash).update(chunk);
        this.#replay.push(Buffer.from(chunk)); // a copy: the caller may reuse its chunk
        this.#inlineBytes += chunk.length;
        return undefined;
      }
      this.#moveToWorker();
    }
    this.#stage(chunk);
    return this.#inFlight >= MAX_BUFFERS_IN_FLIGHT ? this.#waitForRoom() : undefined;
  }

  /** The hex digest of everything given to `update`. */
  async digest(): Promise<string> {
    if (this.#finished) throw new Error('ParallelHash: digest called twice');
    this.#finished = true;
    if (this.#error !== undefined) throw this.#error;
    if (this.#worker === undefined) return (this.#inline as Hash).digest('hex');
    this.#flush();
    const worker = this.#worker;
    worker.ref();
    try {
      const hex = await new Promise<string>((resolve, reject) => {
        this.#digestResolve = resolve;
        this.#onFailure = reject;
        worker.postMessage({ type: 'digest' });
      });
      this.#release();
      return hex;
    } finally {
      worker.unref();
    }
  }

  /** Stops using the worker without a digest (the stream was aborted). Safe to call more than once. */
  dispose(): void {
    this.#finished = true;
    this.#replay = [];
    if (this.#worker === undefined) return;
    if (this.#inFlight === 0 && this.#digestResolve === undefined) {
      this.#release();
    } else {
      // Buffers are still with the worker: its state is unknown; do not reuse it.
      const worker = this.#worker;
      this.#worker = undefined;
      worker.removeAllListeners();
      void worker.terminate();
      const reject = this.#onFailure;
      this.#onFailure = undefined;
      this.#waiter = undefined;
      this.#digestResolve = undefined;
      reject?.(new Error('ParallelHash: disposed while in use'));
    }
  }

  #onFailure: ((error: Error) => void) | undefined;

  #moveToWorker(): void {
    const worker = takeWorker();
    this.#worker = worker;
    worker.on('message', (message: WorkerMessage) => this.#onMessage(message));
    worker.on('error', (error) => this.#fail(error));
    worker.on('exit', (code) => this.#fail(new Error(`hash worker exited with code ${code}`)));
    worker.postMessage({ type: 'start', algorithm: this.algorithm });
    this.#inline = undefined;
    const replay = this.#replay;
    this.#replay = [];
    for (const piece of replay) this.#stage(piece);
  }

  #stage(chunk: Uint8Array): void {
    let offset = 0;
    while (offset < chunk.length) {
      if (this.#staging === undefined) {
        const spare = this.#spare.pop();
        this.#staging = spare === undefined ? Buffer.allocUnsafeSlow(STAGING_BYTES) : Buffer.from(spare);
        this.#stagingUsed = 0;
      }
      const n = Math.min(chunk.length - offset, STAGING_BYTES - this.#stagingUsed);
      this.#staging.set(chunk.subarray(offset, offset + n), this.#stagingUsed);
      this.#stagingUsed += n;
      offset += n;
      if (this.#stagingUsed === STAGING_BYTES) this.#flush();
    }
  }

  /** Hands the staging buffer (if it holds anything) to the worker. */
  #flush(): void {
    const staging = this.#staging;
    if (staging === undefined || this.#stagingUsed === 0) return;
    this.#staging = undefined;
    const buffer = staging.buffer as ArrayBuffer;
    this.#inFlight++;
    (this.#worker as Worker).postMessage({ type: 'data', buffer, length: this.#stagingUsed }, [buffer]);
  }

  #onMessage(message: WorkerMessage): void {
    if (message.type === 'done') {
      this.#inFlight--;
      if (this.#spare.length < MAX_BUFFERS_IN_FLIGHT) this.#spare.push(message.buffer);
      if (this.#inFlight < MAX_BUFFERS_IN_FLIGHT / 2) {
        const waiter = this.#waiter;
        this.#waiter = undefined;
        waiter?.();
      }
    } else {
      const resolve = this.#digestResolve;
      this.#digestResolve = undefined;
      this.#onFailure = undefined;
      resolve?.(message.hex);
    }
  }

  async #waitForRoom(): Promise<void> {
    const worker = this.#worker as Worker;
    worker.ref();
    try {
      await new Promise<void>((resolve, reject) => {
        this.#waiter = resolve;
        this.#onFailure = reject;
      });
    } finally {
      worker.unref();
    }
  }

  #fail(cause: unknown): void {
    if (this.#error !== undefined) return;
    this.#error = new CacheStorageError(`the ${this.algorithm} hash worker failed: ${(cause as Error)?.message ?? String(cause)}`, {
      cause,
    });
    const worker = this.#worker;
    this.#worker = undefined;
    worker?.removeAllListeners();
    void worker?.terminate();
    const reject = this.#onFailure;
    this.#onFailure = undefined;
    this.#waiter = undefined;
    this.#digestResolve = undefined;
    reject?.(this.#error);
  }

  #release(): void {
    const worker = this.#worker;
    this.#worker = undefined;
    if (worker !== undefined) giveBack(worker);
  }
}
