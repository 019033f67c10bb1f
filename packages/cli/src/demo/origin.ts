import { createCipheriv, createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

/** The images the demo origin serves: id → size in bytes. */
export const DEMO_IMAGES: Readonly<Record<string, number>> = {
  'cirros-0.6.2': 21 * 1024 * 1024,
  'debian-12-genericcloud': 96 * 1024 * 1024,
  'ubuntu-24.04-server': 384 * 1024 * 1024,
};

const BLOCK = 1024 * 1024;

/**
 * The bytes of a demo image: an AES-256-CTR keystream keyed by the id, so
 * every image is incompressible, different, and the same on every run,
 * produced at memory speed.
 */
export function demoImageStream(id: string, size: number): Readable {
  const key = createHash('sha256').update(`demo-image:${id}`).digest();
  const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  const zeros = Buffer.alloc(BLOCK);
  let left = size;
  return new Readable({
    highWaterMark: BLOCK,
    read() {
      if (left <= 0) {
        this.push(null);
        return;
      }
      const n = Math.min(BLOCK, left);
      left -= n;
      this.push(cipher.update(n === BLOCK ? zeros : zeros.subarray(0, n)));
    },
  });
}

/** The sha256 of a demo image, computed by generating it. */
export async function demoImageDigest(id: string, size: number): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(demoImageStream(id, size), hash);
  return hash.digest('hex');
}

/** A running demo origin. */
export interface DemoOrigin {
  /** `http://127.0.0.1:<port>/images/{id}`: the template to give the cache server. */
  template: string;
  /** Requests for image bytes served so far, by id. */
  requests: Map<string, number>;
  close(): Promise<void>;
}

/**
 * A small, slow-ish image origin on 127.0.0.1 for `image-cache serve --demo`:
 * `GET /images/<id>` streams one of {@link DEMO_IMAGES} with its
 * `Content-Length`, throttled to `bytesPerSecond` so the difference between a
 * miss (from the origin) and a hit (from the cache) shows; anything else is 404.
 */
export async function startDemoOrigin(options: { bytesPerSecond?: number } = {}): Promise<DemoOrigin> {
  const bytesPerSecond = options.bytesPerSecond ?? 200 * 1024 * 1024;
  const requests = new Map<string, number>();
  const server: Server = createServer((request, response) => {
    const match = /^\/images\/([^/?]+)$/.exec(request.url ?? '');
    const id = match?.[1] === undefined ? undefined : decodeURIComponent(match[1]);
    const size = id === undefined ? undefined : DEMO_IMAGES[id];
    if (id === undefined || size === undefined || (request.method !== 'GET' && request.method !== 'HEAD')) {
      response.writeHead(404, { 'content-type': 'text/plain' }).end('no such image\n');
      return;
    }
    response.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(size) });
    if (request.method === 'HEAD') {
      response.end();
      return;
    }
    requests.set(id, (requests.get(id) ?? 0) + 1);
    const started = Date.now();
    let sent = 0;
    const throttled = demoImageStream(id, size).map(async (chunk: Buffer) => {
      sent += chunk.length;
      const due = started + (sent / bytesPerSecond) * 1000;
      const wait = due - Date.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      return chunk;
    });
    pipeline(throttled, response).catch(() => response.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  return {
    template: `http://127.0.0.1:${port}/images/{id}`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
