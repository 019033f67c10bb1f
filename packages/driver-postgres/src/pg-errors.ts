import { BadDriverConfigurationError, CacheError, CacheStorageError } from '@cache/core';

/** How a PostgreSQL failure is classified, which decides the advice and the error class. */
export type PgFailureKind = 'unavailable' | 'timeout' | 'configuration' | 'schema' | 'other';

const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EPIPE',
  'ENOENT', // a unix-socket path that does not exist (server not running)
]);

const UNAVAILABLE_MESSAGE =
  /Connection terminated|timeout exceeded when trying to connect|connection timeout|Client has encountered a connection error|Client was closed|Cannot use a pool after calling end|not queryable|the database system is (starting up|shutting down|in recovery mode)/i;

/**
 * Classifies an error from `pg`: a network/connection failure or a server
 * that is shutting down is `unavailable`; a statement or client read timeout
 * is `timeout`; bad credentials, a missing database or missing privileges are
 * `configuration`; a missing table/column is `schema`.
 */
export function classifyPgError(error: unknown): PgFailureKind {
  if (CacheError.isCacheError(error) && error.cause !== undefined) return classifyPgError(error.cause);
  const code = typeof error === 'object' && error !== null ? String((error as { code?: unknown }).code ?? '') : '';
  const message = error instanceof Error ? error.message : String(error);
  if (NETWORK_CODES.has(code)) return 'unavailable';
  // SQLSTATE class 08 (connection exception), 57P01-57P03 (admin/crash shutdown, cannot connect now), 53300 (too many connections).
  if (code.startsWith('08') || code === '57P01' || code === '57P02' || code === '57P03' || code === '53300') {
    return 'unavailable';
  }
  // The client gave up waiting for any answer: the server or the network is gone (a server-side timeout is 57014).
  if (/Query read timeout/i.test(message)) return 'unavailable';
  if (code === '57014' || code === '55P03') return 'timeout';
  if (code.startsWith('28') || code === '3D000' || code === '42501' || code === '3F000') return 'configuration';
  if (code === '42P01' || code === '42703' || code === '42883') return 'schema';
  if (UNAVAILABLE_MESSAGE.test(message)) return 'unavailable';
  return 'other';
}

/** The advice that ends a message, per failure kind. */
function advice(kind: PgFailureKind, target: string, statementTimeoutMillis: number): string {
  switch (kind) {
    case 'unavailable':
      return (
        `PostgreSQL at ${target} is unreachable: start it or fix the connection string, then retry ` +
        '(if the server is up and this was a timeout, all poolSize connections may have stayed busy: raise poolSize). ' +
        'Cached files are still served from this node meanwhile (hits are not counted); ' +
        'run `image-cache clean` once the database is back to reconcile its rows with the files.'
      );
    case 'timeout':
      return (
        `The statement ran longer than the statement timeout (${statementTimeoutMillis} ms) on ${target}: ` +
        'the server is overloaded or another session holds a lock on cached_images; retry, ' +
        'look for long transactions in pg_stat_activity, or raise statementTimeoutMillis.'
      );
    case 'configuration':
      return (
        `Check the connection string for ${target}: user, password, database name ` +
        '(create it with CREATE DATABASE) and the privileges of the role (it needs CREATE on the schema ' +
        'for the migrations and SELECT/INSERT/UPDATE/DELETE on node_reference and cached_images).'
      );
    case 'schema':
      return (
        `The cache tables on ${target} are missing or not at the version this driver needs: ` +
        'run any image-cache command on this node with a role allowed to migrate (opening the cache runs the migrations), e.g. `image-cache stats`, ' +
        'and make sure every node uses the same database and search_path.'
      );
    default:
      return `See the PostgreSQL server log of ${target} for details.`;
  }
}

/** Context for {@link toCacheError}. */
export interface PgErrorContext {
  /** Driver name, for the message prefix. */
  driver: string;
  /** What was being done, e.g. `record commit of 'img'`. */
  operation: string;
  /** Where the database is, without credentials. */
  target: string;
  /** The configured statement timeout, for the advice. */
  statementTimeoutMillis: number;
  /** During `configure()`: permanent problems become `BadDriverConfigurationError`. */
  configuring?: boolean;
}

/**
 * Turns a `pg` error into a typed cache error whose message says what failed
 * and what to do: `CacheStorageError` for failures at run time (and for an
 * unreachable database at `configure()`, which a retry can fix),
 * `BadDriverConfigurationError` for permanent problems found by `configure()`.
 * Cache errors pass through unchanged.
 */
export function toCacheError(error: unknown, context: PgErrorContext): CacheError {
  if (CacheError.isCacheError(error)) return error;
  const kind = classifyPgError(error);
  const reason = error instanceof Error ? error.message : String(error);
  const code = (error as { code?: unknown } | null)?.code;
  const detail = typeof code === 'string' && code.length > 0 ? `${reason} [${code}]` : reason;
  const text = `${context.operation} failed: ${detail}. ${advice(kind, context.target, context.statementTimeoutMillis)}`;
  if (context.configuring === true && kind !== 'unavailable' && kind !== 'timeout') {
    return new BadDriverConfigurationError(context.driver, text, { cause: error });
  }
  return new CacheStorageError(`[${context.driver}] ${text}`, { cause: error });
}

/**
 * A connection string for messages: host, port and database, never the
 * user's password.
 */
export function describeTarget(connectionString: string): string {
  try {
    const url = new URL(connectionString);
    const host = url.searchParams.get('host') ?? (url.hostname || 'localhost');
    const port = url.port || '5432';
    const database = decodeURIComponent(url.pathname.replace(/^\//, '')) || '(default database)';
    return host.startsWith('/') ? `${host} (unix socket), database ${database}` : `${host}:${port}/${database}`;
  } catch {
    // A keyword/value string ("host=... dbname=..."): show it without any password.
    return connectionString.replace(/password\s*=\s*('[^']*'|\S+)/gi, 'password=***');
  }
}
