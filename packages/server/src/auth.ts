import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { HttpError } from './http-errors.js';

const REALM = 'image-cache';

function digest(value: string): Buffer {
  return createHash('sha256').update(value, 'utf8').digest();
}

/**
 * An `onRequest` hook that requires `Authorization: Bearer <token>` with one
 * of `tokens`. Both sides are hashed to equal-length digests and compared
 * with `timingSafeEqual` (against every token, always), so the time taken
 * says nothing about a token. Failures are 401 with `WWW-Authenticate` (RFC 6750).
 */
export function bearerGuard(tokens: string | readonly string[]): (request: FastifyRequest) => Promise<void> {
  const expected = (typeof tokens === 'string' ? [tokens] : tokens).map(digest);
  return async (request) => {
    const header = request.headers.authorization;
    const match = typeof header === 'string' ? /^Bearer +(\S+) *$/i.exec(header) : null;
    if (match === null) {
      throw new HttpError(401, 'UNAUTHORIZED', 'this endpoint needs Authorization: Bearer <token>', {
        'www-authenticate': `Bearer realm="${REALM}"`,
      });
    }
    const given = digest(match[1] as string);
    let valid = false;
    for (const candidate of expected) valid = timingSafeEqual(given, candidate) || valid;
    if (!valid) {
      throw new HttpError(401, 'UNAUTHORIZED', 'the bearer token is not valid', {
        'www-authenticate': `Bearer realm="${REALM}", error="invalid_token"`,
      });
    }
  };
}

/**
 * The guard of `/metrics`: with a metrics token, that token or the
 * management token; else, with `protectMetrics`, the management token;
 * else none (open).
 */
export function metricsGuard(options: { token: string | undefined; metricsToken: string | undefined; protectMetrics: boolean }):
  | ((request: FastifyRequest) => Promise<void>)
  | undefined {
  const { token, metricsToken, protectMetrics } = options;
  if (metricsToken !== undefined) return bearerGuard(token === undefined ? [metricsToken] : [metricsToken, token]);
  if (protectMetrics && token !== undefined) return bearerGuard(token);
  return undefined;
}

/** True for an address of this host only: 127.0.0.0/8, ::1 (also IPv4-mapped), or `localhost`. */
export function isLoopbackAddress(host: string): boolean {
  const address = host.trim().toLowerCase().replace(/^\[(.*)\]$/, '$1');
  if (address === 'localhost' || address.endsWith('.localhost')) return true;
  if (address === '::1' || /^(?:0{1,4}:){7}0{0,3}1$/.test(address)) return true;
  const v4 = address.replace(/^::ffff:/, '');
  return /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(v4);
}
