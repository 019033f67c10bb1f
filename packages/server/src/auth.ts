import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { HttpError } from './http-errors.js';

const REALM = 'image-cache';

function digest(value: string): Buffer {
  return createHash('sha256').update(value, 'utf8').digest();
}

/**
 * An `onRequest` hook that requires `Authorization: Bearer <token>`. Both
 * sides are hashed to equal-length digests and compared with
 * `timingSafeEqual`, so the time taken says nothing about the token.
 * Failures are 401 with `WWW-Authenticate` (RFC 6750).
 */
export function bearerGuard(token: string): (request: FastifyRequest) => Promise<void> {
  const expected = digest(token);
  return async (request) => {
    const header = request.headers.authorization;
    const match = typeof header === 'string' ? /^Bearer +(\S+) *$/i.exec(header) : null;
    if (match === null) {
      throw new HttpError(401, 'UNAUTHORIZED', 'this endpoint needs Authorization: Bearer <token>', {
        'www-authenticate': `Bearer realm="${REALM}"`,
      });
    }
    if (!timingSafeEqual(digest(match[1] as string), expected)) {
      throw new HttpError(401, 'UNAUTHORIZED', 'the bearer token is not valid', {
        'www-authenticate': `Bearer realm="${REALM}", error="invalid_token"`,
      });
    }
  };
}
