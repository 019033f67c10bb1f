import type { Readable } from 'node:stream';
import { CacheStorageError } from '@cache/core';
import { releaseReadChunk } from '@cache/core/driver';
import type { FastifyReply } from 'fastify';

/** Options of {@link sendCacheRead}. */
export interface CacheReadBodyOptions {
  /** The `Content-Length` set on the reply: a read that ends short of it or runs past it cuts the response. */
  expected: number;
  /** Called with each chunk's length as it is written (the served-bytes counter). */
  onBytes: (bytes: number) => void;
  /** Called once if the body fails after the headers are out (a read error or a wrong length; not a client that went away). */
  onError: (error: Error) => void;
}

/**
 * Sends the body of a cache read (a hit of more than one read chunk) on
 * `reply.raw` itself, handing each chunk back to core's read pool
 * (`releaseReadChunk`) once the socket has written it: a streamed 256 MiB
 * hit then reuses a few 1 MiB buffers instead of allocating 256 of them (a
 * fresh 1 MiB buffer costs more CPU than its read: ADR 0008). `pipe` cannot
 * do this, as it never says when a chunk has been written.
 *
 * The headers wait for the first chunk: a read that fails before it rejects,
 * and the caller's error handling answers with an error status as for any
 * other failure before the headers. From the first chunk on, the reply is
 * hijacked (fastify's `onResponse` hooks, the access log among them, still
 * run), its status and headers are copied to the response, and:
 * - backpressure pauses the read until the response drains;
 * - a read error, or a read that runs past or ends short of `expected`,
 *   destroys the response (the client sees a body cut short of its
 *   `Content-Length`, never wrong bytes passed as whole);
 * - a client that goes away destroys the read, unless it already had every
 *   byte (then the read is left to end, as `responseBody` does); one gone
 *   before the first chunk ends the reply there (hijacked, nothing sent).
 */
export function sendCacheRead(reply: FastifyReply, source: Readable, options: CacheReadBodyOptions): Promise<void> {
  const { expected, onBytes } = options;
  const res = reply.raw;
  return new Promise<void>((resolve, reject) => {
    let started = false;
    let sent = 0;
    let failed = false;
    const fail = (error: Error) => {
      if (failed) return;
      failed = true;
      source.off('data', onData);
      if (!source.destroyed) source.destroy();
      if (!started) {
        reject(error);
        return;
      }
      options.onError(error);
      res.destroy(error);
    };
    const start = () => {
      started = true;
      reply.hijack();
      res.statusCode = reply.statusCode;
      for (const [name, value] of Object.entries(reply.getHeaders())) if (value !== undefined) res.setHeader(name, value);
      res.on('drain', () => source.resume());
      resolve();
    };
    res.once('close', () => {
      if (!started && !failed) start(); // the client left before the first chunk: nothing is left to answer
      if (source.destroyed || source.readableEnded) return;
      // A client with every byte may close at once: the read then ends by itself (its hit is counted at delivery).
      if (!failed && sent === expected) source.resume();
      else source.destroy();
    });
    const onData = (chunk: Buffer) => {
      if (!started) start();
      sent += chunk.length;
      if (sent > expected) {
        fail(new CacheStorageError(`image body ran past its Content-Length of ${expected} bytes (was the entry replaced?)`));
        return;
      }
      onBytes(chunk.length);
      // The callback runs once the socket is done with the chunk (written, or the write dropped with the connection).
      if (!res.write(chunk, () => releaseReadChunk(chunk))) source.pause();
    };
    source.on('data', onData);
    source.on('error', fail);
    source.once('end', () => {
      if (failed) return;
      if (sent !== expected) {
        fail(new CacheStorageError(`image body ended after ${sent} of ${expected} bytes (was the entry replaced?)`));
        return;
      }
      if (!started) start();
      res.end();
    });
  });
}
