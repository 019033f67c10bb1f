import { createOrigin, DirectoryOrigin, HTTP_ORIGIN_DEFAULTS, type CreateOriginOptions, type Origin } from '@cache/origin';
import type { Command } from 'commander';
import type { RawValue, ResolvedConfig } from './config.js';
import { CliErrorCodes, usageError } from './errors.js';
import { formatDuration } from './units.js';

/** RFC 9110 `token`: what a header name is made of. */
const HEADER_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** Field value characters: visible ASCII, space, tab and obs-text (RFC 9110 5.5); no control characters, no line breaks. */
const HEADER_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
/** Headers the HTTP client sets itself (framing, connection management, the target). */
const CLIENT_HEADERS: ReadonlySet<string> = new Set([
  'host',
  'content-length',
  'transfer-encoding',
  'connection',
  'keep-alive',
  'proxy-connection',
  'upgrade',
  'te',
  'trailer',
  'expect',
]);
/** The header `--origin-token` sets: Keystone's, as a Glance origin expects it. */
export const ORIGIN_TOKEN_HEADER = 'X-Auth-Token';

/** Values are secrets (tokens, credentials): a message says what is wrong and where, never what the value is. */
const NOT_SHOWN = '(the value is not shown: it may hold a secret)';

function invalid(where: string, problem: string) {
  return usageError(CliErrorCodes.INVALID_HEADER, `invalid ${where}: ${problem}`);
}

/** Checks one header's name and value; returns them trimmed. */
function checkHeader(name: string, value: string, where: string): [string, string] {
  const trimmedName = name.trim();
  if (!HEADER_NAME.test(trimmedName)) {
    throw invalid(where, `the header name must be letters, digits and !#$%&'*+-.^_\`|~ (no spaces), as in "X-Auth-Token: <token>" ${NOT_SHOWN}`);
  }
  if (CLIENT_HEADERS.has(trimmedName.toLowerCase())) {
    throw invalid(where, `${trimmedName} is set by the HTTP client itself and cannot be sent as an origin header`);
  }
  const trimmedValue = value.replace(/^[\t ]+|[\t ]+$/g, '');
  if (trimmedValue === '') throw invalid(where, `header ${trimmedName} has an empty value (an unset variable?)`);
  if (!HEADER_VALUE.test(trimmedValue)) {
    throw invalid(where, `the value of header ${trimmedName} has a control character, a line break or a character beyond U+00FF ${NOT_SHOWN}`);
  }
  return [trimmedName, trimmedValue];
}

/** Parses one `Name: value` line. */
function parseHeaderLine(line: string, where: string): [string, string] {
  const colon = line.indexOf(':');
  if (colon < 0) throw invalid(where, `expected "Name: value", as in "X-Auth-Token: <token>", but there is no colon ${NOT_SHOWN}`);
  return checkHeader(line.slice(0, colon), line.slice(colon + 1), where);
}

function ordinal(index: number): string {
  const n = index + 1;
  const last = n % 10;
  const suffix = n % 100 >= 11 && n % 100 <= 13 ? 'th' : last === 1 ? 'st' : last === 2 ? 'nd' : last === 3 ? 'rd' : 'th';
  return `${n}${suffix}`;
}

/**
 * Parses the origin headers from wherever they were given:
 *
 * - `--origin-header`s (a list) or a config file's array: one `Name: value` each;
 * - a config file's object: `{ "Name": "value" }`;
 * - `IMAGE_CACHE_ORIGIN_HEADERS` or a config file's string: a JSON object
 *   when it starts with `{`, else one `Name: value` per line (blank lines skipped).
 *
 * Names are HTTP tokens, compared without case (a name given twice is an
 * error); values are trimmed, must not be empty, and hold no control
 * characters. Headers the HTTP client manages (`Host`, `Content-Length`,
 * `Connection`, ...) are refused.
 *
 * @param what - where the value came from (`--origin-header`, the variable, the file's key), for messages.
 * @throws CliError `CLI_INVALID_HEADER` (exit code 2); the message never quotes a value.
 */
export function parseOriginHeaders(value: RawValue, what = 'origin headers'): Record<string, string> {
  const entries: [string, string][] = [];
  if (Array.isArray(value)) {
    const list = value as readonly unknown[];
    list.forEach((item, index) => {
      const where = list.length === 1 ? what : `${what} (the ${ordinal(index)})`;
      if (typeof item !== 'string') throw invalid(where, 'expected a "Name: value" string');
      entries.push(parseHeaderLine(item, where));
    });
  } else if (typeof value === 'object' && value !== null) {
    entries.push(...objectHeaders(value as Readonly<Record<string, unknown>>, what));
  } else if (typeof value === 'string') {
    const text = value.trim();
    if (text.startsWith('{')) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch (error) {
        // V8's message may quote the text: only the position is kept.
        const position = /at position \d+/.exec((error as Error).message)?.[0];
        throw invalid(what, `it starts with "{" but is not valid JSON${position === undefined ? '' : ` (${position})`} ${NOT_SHOWN}`);
      }
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw invalid(what, 'expected a JSON object of header names and values');
      entries.push(...objectHeaders(parsed as Record<string, unknown>, what));
    } else {
      value.split(/\r?\n/).forEach((line, index, lines) => {
        if (line.trim() === '') return;
        entries.push(parseHeaderLine(line, lines.length === 1 ? what : `${what} line ${index + 1}`));
      });
    }
  } else {
    throw invalid(what, 'expected "Name: value" lines, a JSON object or a list');
  }
  const headers: Record<string, string> = {};
  const seen = new Set<string>();
  for (const [name, headerValue] of entries) {
    const key = name.toLowerCase();
    if (seen.has(key)) throw invalid(what, `header ${name} is given twice`);
    seen.add(key);
    headers[name] = headerValue;
  }
  return headers;
}

function objectHeaders(object: Readonly<Record<string, unknown>>, what: string): [string, string][] {
  return Object.entries(object).map(([name, value]) => {
    if (typeof value !== 'string') {
      const shown = HEADER_NAME.test(name.trim()) ? `header ${name.trim()}` : 'a header';
      throw invalid(what, `the value of ${shown} must be a string, got ${value === null ? 'null' : typeof value}`);
    }
    return checkHeader(name, value, what);
  });
}

/**
 * Checks the origin token (`--origin-token`, sent as `X-Auth-Token`): visible ASCII without spaces.
 *
 * @throws CliError `CLI_INVALID_HEADER` (exit code 2); the message never quotes the token.
 */
export function parseOriginToken(value: string | number, what = 'origin token'): string {
  const token = String(value).trim();
  if (!/^[\x21-\x7e]+$/.test(token)) {
    throw invalid(what, `a token is visible ASCII characters without spaces ${NOT_SHOWN}`);
  }
  return token;
}

/**
 * Adds the options of every command that opens an origin (`serve`,
 * `prefetch`): `--origin-header` (repeatable), `--origin-token`, `--manifest`,
 * `--allow-unverified`, and the HTTP origin's timeouts and retries
 * (`--origin-headers-timeout`, `--origin-idle-timeout`,
 * `--origin-total-timeout`, `--origin-retries`, `--origin-retry-delay`).
 */
export function addOriginOptions(command: Command): Command {
  return command
    .option(
      '--origin-header <header>',
      'header sent with every origin request, "Name: value"; repeat for more (env IMAGE_CACHE_ORIGIN_HEADERS: one per line, or a JSON object)',
      (header: string, previous: string[] | undefined) => [...(previous ?? []), header],
    )
    .option('--origin-token <token>', `sent to the origin as ${ORIGIN_TOKEN_HEADER} (a Keystone token for glance+https:// origins; env IMAGE_CACHE_ORIGIN_TOKEN)`)
    .option('--manifest <path-or-url>', "the origin's checksum manifest (sha256sum format), read at every origin request; digests are verified (env IMAGE_CACHE_MANIFEST)")
    .option('--allow-unverified', 'cache close-delimited origin bodies that announce no length or digest (default: served, not cached; env IMAGE_CACHE_ALLOW_UNVERIFIED)')
    .option('--origin-headers-timeout <duration>', 'how long an HTTP origin may take to send the response headers, per request (env IMAGE_CACHE_ORIGIN_HEADERS_TIMEOUT; default 30s)')
    .option(
      '--origin-idle-timeout <duration>',
      'fail a download when the origin sends no byte for this long; 0 turns it off (env IMAGE_CACHE_ORIGIN_IDLE_TIMEOUT; default 30s)',
    )
    .option(
      '--origin-total-timeout <duration>',
      'limit on a whole origin download, retries included; mind the largest image on the slowest link (env IMAGE_CACHE_ORIGIN_TOTAL_TIMEOUT; default: none)',
    )
    .option(
      '--origin-retries <n>',
      'retries of one origin request that failed before the first byte (no connection, headers timeout, 5xx, 429; never a 404, never once bytes flowed), ' +
        'honouring Retry-After up to 10s (env IMAGE_CACHE_ORIGIN_RETRIES; default 2)',
    )
    .option('--origin-retry-delay <duration>', 'wait before the first origin retry, doubled for each further one, with jitter, capped at 10s (env IMAGE_CACHE_ORIGIN_RETRY_DELAY; default 250ms)');
}

/** The settings an origin is opened with. */
export type OriginSettings = Pick<ResolvedConfig, 'originHeaders' | 'originToken' | 'manifest' | 'allowUnverified'> &
  Partial<Pick<ResolvedConfig, 'originHeadersTimeout' | 'originIdleTimeout' | 'originTotalTimeout' | 'originRetries' | 'originRetryDelay'>>;

/** The configured timeouts and retries as `createOrigin` options (ms); those not given are left to its defaults. */
function timingOptions(settings: OriginSettings): CreateOriginOptions {
  const ms = (seconds: number) => Math.round(seconds * 1000);
  const options: CreateOriginOptions = {};
  if (settings.originHeadersTimeout !== undefined) options.headersTimeout = ms(settings.originHeadersTimeout);
  if (settings.originIdleTimeout !== undefined) options.bodyIdleTimeout = ms(settings.originIdleTimeout);
  if (settings.originTotalTimeout !== undefined) options.totalTimeout = ms(settings.originTotalTimeout);
  if (settings.originRetries !== undefined) options.retries = settings.originRetries;
  if (settings.originRetryDelay !== undefined) {
    options.retryDelay = ms(settings.originRetryDelay);
    // A first delay above the default cap raises the cap with it.
    options.maxRetryDelay = Math.max(HTTP_ORIGIN_DEFAULTS.maxRetryDelay, options.retryDelay);
  }
  return options;
}

/** The request headers for the origin: the configured ones, and the token as `X-Auth-Token` (over one among them). */
export function originRequestHeaders(settings: Pick<OriginSettings, 'originHeaders' | 'originToken'>): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(settings.originHeaders)) {
    if (settings.originToken === undefined || name.toLowerCase() !== ORIGIN_TOKEN_HEADER.toLowerCase()) headers[name] = value;
  }
  if (settings.originToken !== undefined) headers[ORIGIN_TOKEN_HEADER] = settings.originToken;
  return headers;
}

/** `createOrigin`'s options from the configuration. */
export function originOptions(settings: OriginSettings): CreateOriginOptions {
  const headers = originRequestHeaders(settings);
  return {
    ...(Object.keys(headers).length === 0 ? {} : { headers }),
    ...(settings.manifest === undefined ? {} : { manifest: settings.manifest }),
    ...(settings.allowUnverified ? { allowUnverified: true } : {}),
    ...timingOptions(settings),
  };
}

/**
 * Opens the origin `spec` with the configured headers, manifest and
 * `allowUnverified`. Headers and `allowUnverified` mean nothing to a
 * directory origin (a file's end is its size): `warn` is told so.
 */
export function openOrigin(spec: string, settings: OriginSettings, warn: (message: string) => void): Origin {
  const origin = createOrigin(spec, originOptions(settings));
  if (origin instanceof DirectoryOrigin) {
    const ignored = [
      ...(Object.keys(originRequestHeaders(settings)).length > 0 ? ['origin headers (--origin-header, --origin-token)'] : []),
      ...(settings.allowUnverified ? ['--allow-unverified'] : []),
      ...(timingChanged(settings) ? ['origin timeouts and retries'] : []),
    ];
    if (ignored.length > 0) warn(`${ignored.join(' and ')} have no effect on a directory origin (${origin.directory})`);
  }
  return origin;
}

/** Whether a timeout or retry setting differs from `@cache/origin`'s default. */
function timingChanged(settings: OriginSettings): boolean {
  const d = HTTP_ORIGIN_DEFAULTS;
  const differs = (value: number | undefined, fallback: number | undefined) => value !== undefined && Math.round(value * 1000) !== fallback;
  return (
    differs(settings.originHeadersTimeout, d.headersTimeout) ||
    differs(settings.originIdleTimeout, d.bodyIdleTimeout) ||
    differs(settings.originTotalTimeout, d.totalTimeout) ||
    (settings.originRetries !== undefined && settings.originRetries !== d.retries) ||
    differs(settings.originRetryDelay, d.retryDelay)
  );
}

/**
 * What the origin is opened with, for a startup line: header names (never
 * their values), the manifest, unverified fills, timeouts and retries when
 * not the defaults; '' when nothing is set.
 */
export function describeOriginOptions(settings: OriginSettings): string {
  const names = Object.keys(originRequestHeaders(settings));
  const parts = [
    ...(names.length === 0 ? [] : [`headers ${names.join(', ')} (values not shown)`]),
    ...(settings.manifest === undefined ? [] : [`manifest ${settings.manifest}`]),
    ...(settings.allowUnverified ? ['unverified fills allowed'] : []),
    ...(timingChanged(settings) ? [describeTiming(settings)] : []),
  ];
  return parts.length === 0 ? '' : ` (${parts.join('; ')})`;
}

/** `timeouts: headers 30s, idle off, total none; 2 retries after 250ms`. */
function describeTiming(settings: OriginSettings): string {
  const d = HTTP_ORIGIN_DEFAULTS;
  const show = (seconds: number | undefined, fallback: number | undefined, none: string) => {
    const value = seconds ?? (fallback === undefined ? undefined : fallback / 1000);
    return value === undefined || value === 0 ? none : formatDuration(value);
  };
  const retries = settings.originRetries ?? d.retries;
  return (
    `timeouts: headers ${show(settings.originHeadersTimeout, d.headersTimeout, 'none')}, idle ${show(settings.originIdleTimeout, d.bodyIdleTimeout, 'off')}, ` +
    `total ${show(settings.originTotalTimeout, d.totalTimeout, 'none')}; ` +
    (retries === 0 ? 'no retries' : `${retries} ${retries === 1 ? 'retry' : 'retries'} after ${show(settings.originRetryDelay, d.retryDelay, '0ms')}`)
  );
}
