import type { FastifyInstance } from 'fastify';
import type { ServerContext } from '../context.js';
import { readStatusPageFile } from '../status-assets.js';
import { buildStatus } from '../status.js';

const ASSETS = [
  { file: 'index.html', url: '/status', type: 'text/html; charset=utf-8' },
  { file: 'status.js', url: '/status-assets/status.js', type: 'text/javascript; charset=utf-8' },
  { file: 'status.css', url: '/status-assets/status.css', type: 'text/css; charset=utf-8' },
  { file: 'favicon.svg', url: '/status-assets/favicon.svg', type: 'image/svg+xml' },
] as const;

/**
 * The page may load its own script and style, and fetch from this server
 * only; nothing inline, no frames (it never shows data without the API's
 * token, but a page that cannot be framed cannot be clickjacked either).
 */
const PAGE_HEADERS = {
  'cache-control': 'no-cache',
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
} as const;

/**
 * The status page: `GET /status` (plain HTML), its script and style under
 * `/status-assets/`, and `GET /` redirecting to it. The files hold no data
 * and are not guarded: the page fetches `v2/status` ({@link statusRoutes}),
 * which the management token guards like the rest of `/v2`, and asks for the
 * token when it answers 401. Read once, when the server is created.
 */
export async function statusPageRoutes(app: FastifyInstance): Promise<void> {
  for (const asset of ASSETS) {
    const body = await readStatusPageFile(asset.file);
    app.get(asset.url, async (_request, reply) => reply.headers(PAGE_HEADERS).type(asset.type).send(body));
  }
  app.get('/', async (_request, reply) => reply.redirect('status', 302));
}

/**
 * `GET /status` under the management API's `/v2` prefix (so behind its
 * token): the {@link StatusReport} the status page polls.
 */
export async function statusRoutes(scope: FastifyInstance, context: ServerContext): Promise<void> {
  scope.get('/status', async (_request, reply) => {
    reply.header('cache-control', 'no-store');
    return buildStatus(context);
  });
}
