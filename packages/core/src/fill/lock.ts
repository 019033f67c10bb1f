/**
 * The per-host fill lock of ADR 0003: a Linux abstract Unix socket. Exactly
 * one process can `listen()` on a name; the kernel frees the name the moment
 * that process dies (SIGKILL included), so there is no file to clean up, no
 * heartbeat and no clock. The socket is also the notification channel: the
 * owner writes JSON lines to every follower connected to it.
 *
 * Protocol (one JSON object per line, owner to follower):
 * - `{"hello":1,"pid":P,"file":"dev:ino"|null,"written":N}` on connect, with
 *   `"announced":1,"expectedSize":S?,"checksum":C?,"cache":false?` once the
 *   origin has answered (what it announced: see {@link Announcement});
 * - `{"announced":1,"expectedSize":S?,"checksum":C?,"cache":false?}` when the
 *   origin answers after the follower connected;
 * - `{"file":"dev:ino"}` once the owner's `incomplete/<id>` exists;
 * - `{"written":N}` as bytes reach the file (coalesced: a follower that does
 *   not read its socket gets only the latest count once it drains);
 * - `{"committed":N,"checksum":C?}`, the entry is active;
 * - `{"uncached":N,"checksum":C?}`: all N bytes were written and verified but
 *   not committed (the origin's response was not to be cached); the file is
 *   in `invalid/`, where followers read it to its end;
 * - `{"failed":code,"message":M,"source":bool,"written":N,...}`: rolled back.
 *   `source: true` is final (an origin error or a failed verification, which
 *   a new fetch would likely repeat); `source: false` (the cache failed, the
 *   owner's client left, the fill was abandoned or aborted) tells followers to take over.
 *
 * A connection that ends without `committed` or `failed` means the owner died
 * or gave up without an outcome: followers try to take over (one wins `listen()`).
 */
import { hash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { ChecksumMismatchError, ErrorCodes, OriginError } from '../errors.js';

/** Abstract sockets exist on Linux only; elsewhere the lock is per process (see {@link OwnerLock.acquire}). */
export const HOST_LOCKS = process.platform === 'linux';

/**
 * The abstract socket name of one id's fill in one cache directory:
 * `\0image-cache/fill/<sha256(realpath(cacheDir) + "\0" + id)>`.
 *
 * @param realCacheDir - the cache directory after `realpath()`, so every spelling of it maps to one lock.
 */
export function fillLockName(realCacheDir: string, id: string): string {
  // One-shot `hash` (Node >= 20.12): a third of `createHash().update().digest()` on every write's lock.
  const digest = hash('sha256', `${realCacheDir}\0${id}`, 'hex');
  return `\0image-cache/fill/${digest}`;
}

/**
 * What the owner learnt when the origin answered: the expected size and the
 * digest the fill verifies (as stored: `sha256:<hex>`, bare md5 hex), and
 * `cache: false` when the bytes will not be committed.
 */
export interface Announcement {
  expectedSize?: number;
  checksum?: string;
  cache?: false;
}

/** The first line a follower gets; `announced` (with the {@link Announcement}) once the origin has answered. */
export interface HelloMessage extends Announcement {
  hello: 1;
  pid: number;
  file: string | null;
  written: number;
  announced?: 1;
}

/** Sent to connected followers when the origin answers. */
export interface AnnouncedMessage extends Announcement {
  announced: 1;
}

/** A fill's final failure, as sent to followers. */
export interface FailedMessage {
  /** The error's `code` (`CACHE_ORIGIN_ERROR`, `CACHE_CHECKSUM_MISMATCH`...) or `ERROR`. */
  failed: string;
  message: string;
  /** True: the origin or the verification failed (final). False: followers should take over. */
  source: boolean;
  /** Bytes that were in the file. */
  written: number;
  status?: number;
  algorithm?: string;
  expected?: string;
  actual?: string;
}

/** Every message of the protocol. */
export type FillMessage =
  | HelloMessage
  | AnnouncedMessage
  | { file: string }
  | { written: number }
  | { committed: number; checksum?: string }
  | { uncached: number; checksum?: string }
  | FailedMessage;

/** The announcement fields of `announcement` (those that are set), for a message. */
function announcementFields(announcement: Announcement): Announcement {
  const fields: Announcement = {};
  if (announcement.expectedSize !== undefined) fields.expectedSize = announcement.expectedSize;
  if (announcement.checksum !== undefined) fields.checksum = announcement.checksum;
  if (announcement.cache === false) fields.cache = false;
  return fields;
}

/** The message that describes `error` to followers. */
export function failureMessage(error: Error, source: boolean, written: number): FailedMessage {
  const code = (error as { code?: unknown }).code;
  const message: FailedMessage = {
    failed: typeof code === 'string' ? code : 'ERROR',
    message: error.message,
    source,
    written,
  };
  if (ChecksumMismatchError.isInstance(error)) {
    message.algorithm = error.algorithm;
    message.expected = error.expected;
    message.actual = error.actual;
  }
  if (OriginError.isInstance(error) && error.status !== undefined) message.status = error.status;
  return message;
}

/**
 * The typed error a follower's readers get for an owner's source failure: a
 * `ChecksumMismatchError` for a failed verification, otherwise an
 * `OriginError` with the owner's message (and HTTP status, when it had one).
 */
export function failureFromMessage(imageId: string, message: FailedMessage): Error {
  if (message.failed === ErrorCodes.CHECKSUM_MISMATCH) {
    return new ChecksumMismatchError(imageId, message.algorithm ?? '', message.expected ?? '', message.actual ?? '');
  }
  const error = new OriginError(imageId, message.message, message.status === undefined ? {} : { status: message.status });
  // An OriginError's message already names the image: keep the owner's text as it was.
  if (message.failed === ErrorCodes.ORIGIN) error.message = message.message;
  return error;
}

interface FollowerSocket {
  socket: Socket;
  /** Last `written` count sent. */
  sent: number;
}

/**
 * The owner's side of the lock: holds the name while it is listening and
 * notifies followers. Call exactly one of {@link commit} / {@link fail}
 * (or neither) and then {@link release}.
 */
export class OwnerLock {
  readonly #server: Server | undefined;
  readonly #followers = new Set<FollowerSocket>();
  #file: string | null = null;
  #written = 0;
  #announcement: Announcement | undefined;
  #final: FillMessage | undefined;
  #released = false;
  /** Called when a follower connects or leaves. */
  onFollowersChange: (() => void) | undefined;

  private constructor(server: Server | undefined) {
    this.#server = server;
    server?.on('connection', (socket) => this.#accept(socket));
  }

  /**
   * Tries to become the owner of `name`. Resolves the lock, or `undefined`
   * when another live process (or another fill of this process) holds it.
   * Off Linux there are no abstract sockets: it always succeeds, and only
   * the exclusive create of `incomplete/<id>` keeps two processes apart.
   */
  static async acquire(name: string): Promise<OwnerLock | undefined> {
    if (!HOST_LOCKS) return new OwnerLock(undefined);
    const server = createServer({ pauseOnConnect: false });
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        // exclusive: in a node:cluster worker (`image-cache serve --workers N`) a listen is otherwise handed to the
        // primary, which shares one handle among the workers: every worker would "own" the name at once.
        server.listen({ path: name, exclusive: true }, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EADDRINUSE') return undefined;
      throw error;
    }
    server.on('error', () => undefined);
    // The fill itself keeps the process alive; a lock must not.
    server.unref();
    return new OwnerLock(server);
  }

  /** Followers connected now. */
  get followers(): number {
    return this.#followers.size;
  }

  /** Announces the `incomplete/<id>` file (`dev:ino`) the followers should read. */
  setFile(file: string): void {
    this.#file = file;
    this.#broadcast({ file });
  }

  /** Whether {@link announce} was called. */
  get announced(): boolean {
    return this.#announcement !== undefined;
  }

  /** Announces what the origin announced, to the followers connected now and (in the hello) to those that connect later. */
  announce(announcement: Announcement): void {
    this.#announcement = announcementFields(announcement);
    this.#broadcast({ announced: 1, ...this.#announcement });
  }

  /** Announces that the first `written` bytes are in the file. */
  progress(written: number): void {
    if (written <= this.#written || this.#final !== undefined) return;
    this.#written = written;
    for (const follower of this.#followers) this.#sendWritten(follower);
  }

  /** Announces the commit (the entry is active) and ends every follower's connection. */
  commit(size: number, checksum?: string): void {
    this.#finish(checksum === undefined ? { committed: size } : { committed: size, checksum });
  }

  /** Announces that all `size` bytes are in the file, which is not committed (it is in `invalid/`), and ends every follower's connection. */
  uncached(size: number, checksum?: string): void {
    this.#finish(checksum === undefined ? { uncached: size } : { uncached: size, checksum });
  }

  /** Announces a rollback; `source` says whether followers should give up (true) or take over (false). */
  fail(error: Error, source: boolean): void {
    this.#finish(failureMessage(error, source, this.#written));
  }

  /**
   * Gives the name back. Followers still connected without a final message
   * see their connection end, and take over.
   */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.#server?.close();
    for (const follower of this.#followers) {
      if (this.#final === undefined) follower.socket.destroy();
      else follower.socket.end();
    }
  }

  #finish(message: FillMessage): void {
    if (this.#final !== undefined) return;
    this.#final = message;
    for (const follower of this.#followers) {
      follower.socket.write(`${JSON.stringify(message)}\n`);
      follower.socket.end();
    }
  }

  #accept(socket: Socket): void {
    socket.unref();
    socket.on('error', () => undefined); // a follower that goes away is no error of the fill
    socket.resume(); // followers send nothing; never let their input buffer up
    if (this.#final !== undefined) {
      socket.end(`${JSON.stringify(this.#final)}\n`);
      return;
    }
    if (this.#released) {
      socket.destroy();
      return;
    }
    const follower: FollowerSocket = { socket, sent: this.#written };
    this.#followers.add(follower);
    socket.on('close', () => {
      this.#followers.delete(follower);
      this.onFollowersChange?.();
    });
    socket.on('drain', () => this.#sendWritten(follower));
    const hello: HelloMessage = { hello: 1, pid: process.pid, file: this.#file, written: this.#written };
    if (this.#announcement !== undefined) Object.assign(hello, { announced: 1 }, this.#announcement);
    socket.write(`${JSON.stringify(hello)}\n`);
    this.onFollowersChange?.();
  }

  #broadcast(message: FillMessage): void {
    if (this.#final !== undefined) return;
    for (const follower of this.#followers) follower.socket.write(`${JSON.stringify(message)}\n`);
  }

  #sendWritten(follower: FollowerSocket): void {
    if (this.#final !== undefined || follower.sent >= this.#written) return;
    // A follower that has not read what it was sent gets the latest count once it drains.
    if (follower.socket.writableNeedDrain) return;
    follower.sent = this.#written;
    follower.socket.write(`${JSON.stringify({ written: this.#written })}\n`);
  }
}

/**
 * A follower's connection to the owner of a fill. Emits `message` for each
 * line, then `end` with `true` when a final message (`committed`/`uncached`/`failed`)
 * was received, `false` when the connection ended without one (the owner
 * died or gave up: take over).
 */
export class FollowerLink extends EventEmitter {
  readonly #socket: Socket;
  #final = false;
  #ended = false;

  private constructor(socket: Socket) {
    super();
    this.#socket = socket;
    let pending = '';
    socket.setEncoding('utf8');
    socket.on('data', (text: string) => {
      pending += text;
      let newline = pending.indexOf('\n');
      while (newline !== -1) {
        const line = pending.slice(0, newline);
        pending = pending.slice(newline + 1);
        newline = pending.indexOf('\n');
        if (line.length === 0) continue;
        let message: FillMessage;
        try {
          message = JSON.parse(line) as FillMessage;
        } catch {
          socket.destroy();
          return;
        }
        if ('committed' in message || 'failed' in message || 'uncached' in message) this.#final = true;
        this.emit('message', message);
      }
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      if (this.#ended) return;
      this.#ended = true;
      this.emit('end', this.#final);
    });
  }

  /**
   * Connects to the owner of `name`. Resolves `undefined` when nobody
   * listens any more (the owner just finished or died): try to acquire again.
   */
  static async connect(name: string): Promise<FollowerLink | undefined> {
    const socket = createConnection({ path: name });
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once('error', reject);
        socket.once('connect', () => {
          socket.off('error', reject);
          resolve();
        });
      });
    } catch (error) {
      socket.destroy();
      if (['ECONNREFUSED', 'ENOENT', 'EAGAIN', 'ECONNRESET'].includes((error as NodeJS.ErrnoException).code ?? '')) return undefined;
      throw error;
    }
    return new FollowerLink(socket);
  }

  /** Leaves the owner (it goes on without this follower). */
  close(): void {
    this.#socket.destroy();
  }
}
