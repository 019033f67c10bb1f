import { assertImageId, type CachedImage, type CacheDriver, type ImageId } from '@cache/core';
import type { FastifyInstance, FastifyReply, FastifyRequest, HTTPMethods } from 'fastify';
import type { ServerContext } from '../context.js';
import { HttpError } from '../http-errors.js';
import { runClean, runPrune } from '../workers.js';

/** One cached image as Glance's API lists it (epoch-second times). */
export interface GlanceCachedImage {
  image_id: string;
  hits: number;
  last_accessed: number;
  last_modified: number;
  size: number;
}

type IdRequest = FastifyRequest<{ Params: { id: string } }>;

/** A driver that knows which nodes of a cluster hold an image (`@cache/driver-postgres`). */
interface NodeLister {
  getCachedNodes(id: ImageId): Promise<string[]>;
}

const METHODS: readonly HTTPMethods[] = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'];

/** Glance's record shape for one cached image. */
export function toGlanceRecord(image: CachedImage): GlanceCachedImage {
  return {
    image_id: image.imageId,
    hits: image.hits,
    last_accessed: image.lastAccessed,
    last_modified: image.lastModified,
    size: image.size,
  };
}

/**
 * Answers every method not in `allowed` with 405 and `Allow`, as Glance's
 * router does. Registering them also makes literal paths win over `{id}` for
 * every method (`PUT /v2/cache/clean` is 405, not "queue image clean").
 */
function methodNotAllowed(scope: FastifyInstance, url: string, allowed: readonly HTTPMethods[]): void {
  const allow = allowed.includes('GET') && !allowed.includes('HEAD') ? [...allowed, 'HEAD' as const] : allowed;
  const others = METHODS.filter((method) => !allow.includes(method));
  scope.route({
    method: others,
    url,
    handler: async (request) => {
      throw new HttpError(405, 'METHOD_NOT_ALLOWED', `${request.method} is not allowed on ${url}`, { allow: allow.join(', ') });
    },
  });
}

function idParam(request: IdRequest): string {
  const { id } = request.params;
  assertImageId(id);
  return id;
}

async function noContent(reply: FastifyReply, status: number): Promise<FastifyReply> {
  return reply.code(status).send();
}

function jsonNull(reply: FastifyReply): FastifyReply {
  return reply.code(200).type('application/json; charset=utf-8').send('null');
}

/**
 * Glance's cache management API (spec section 12), relative to the scope's
 * `/v2` prefix: `/cache` (list, delete all/cached/queued), `/cache/{id}`
 * (queue, delete), `/cache/nodes/{id}` (409: not a centralized driver),
 * `/cache/clean`, `/cache/prune`, and the legacy `/cached_images` and
 * `/queued_images` endpoints of `glance-cache-manage`.
 */
export async function managementRoutes(scope: FastifyInstance, context: ServerContext): Promise<void> {
  const { cache } = context;

  scope.get('/cache', async () => {
    const [cached, queued] = await Promise.all([cache.getCachedImages(), cache.getQueuedImages()]);
    return { cached_images: cached.map(toGlanceRecord), queued_images: queued };
  });

  scope.delete('/cache', async (request, reply) => {
    const raw = request.headers['x-image-cache-clear-target'];
    const target = typeof raw === 'string' ? raw.trim().toLowerCase() : '';
    if (target !== '' && target !== 'cache' && target !== 'queue') {
      throw new HttpError(
        400,
        'INVALID_CLEAR_TARGET',
        `x-image-cache-clear-target must be 'cache', 'queue' or absent (both), got ${JSON.stringify(raw)}`,
      );
    }
    if (target !== 'queue') await cache.deleteAllCachedImages();
    if (target !== 'cache') await cache.deleteAllQueuedImages();
    return noContent(reply, 204);
  });
  methodNotAllowed(scope, '/cache', ['GET', 'DELETE']);

  scope.post('/cache/clean', async (_request, reply) => {
    await runClean(cache, context.cleanSerial, context.metrics);
    return reply.code(200).send();
  });
  methodNotAllowed(scope, '/cache/clean', ['POST']);

  scope.post('/cache/prune', async () => {
    const { files, bytes, invalid } = await runPrune(cache, context.pruneSerial, context.metrics);
    // Files deleted from invalid/ (they count against the budget) are part of what was pruned.
    return { total_files_pruned: files + (invalid?.files ?? 0), total_bytes_pruned: bytes + (invalid?.bytes ?? 0) };
  });
  methodNotAllowed(scope, '/cache/prune', ['POST']);

  // Glance: 200 with the node URLs holding the image (empty when none), or 409 when the driver is not central.
  scope.get('/cache/nodes/:id', async (request: IdRequest) => {
    const id = idParam(request);
    const driver = cache.driver as CacheDriver & Partial<NodeLister>;
    if (typeof driver.getCachedNodes !== 'function') {
      throw new HttpError(409, 'NOT_CENTRALIZED', `listing cache nodes needs a central driver (e.g. postgres); this cache uses '${cache.driver.name}'`);
    }
    return driver.getCachedNodes(id);
  });
  methodNotAllowed(scope, '/cache/nodes/:id', ['GET']);

  // The whole cluster (a node of one: options.cluster): every node with its health, and which nodes hold which images.
  scope.get('/cache/cluster', async () => {
    const member = context.cluster;
    if (member === undefined) {
      throw new HttpError(409, 'NOT_A_CLUSTER', 'this server is not a cluster node: serve with the postgres driver (options.cluster) to share images between nodes');
    }
    const status = await member.directory.getClusterStatus();
    return {
      node_id: member.directory.nodeId,
      nodes: status.nodes.map((node) => ({
        node_id: node.nodeId,
        url: node.url ?? null,
        health: node.health,
        last_heartbeat: node.lastHeartbeat ?? null,
        started_at: node.startedAt ?? null,
        images: node.images,
        size: node.bytes,
        hits: node.hits,
        self: node.self,
      })),
      images: status.images.map((image) => ({
        image_id: image.imageId,
        size: image.size,
        hits: image.hits,
        nodes: image.copies.map((copy) => ({
          node_id: copy.nodeId,
          health: copy.health,
          size: copy.size,
          hits: copy.hits,
          last_accessed: copy.lastAccessed,
          checksum: copy.checksum ?? null,
        })),
      })),
    };
  });
  methodNotAllowed(scope, '/cache/cluster', ['GET']);

  scope.put('/cache/:id', async (request: IdRequest, reply) => {
    const id = idParam(request);
    await cache.queueImage(id); // false when cached, being cached or queued: still 202, as in Glance
    if (context.prefetchOnQueue && context.prefetcher !== undefined) void context.prefetcher.trigger();
    return noContent(reply, 202);
  });

  scope.delete('/cache/:id', async (request: IdRequest, reply) => {
    const id = idParam(request);
    const [cached, queued] = await Promise.all([cache.isCached(id), cache.isQueued(id)]);
    if (!cached && !queued) throw new HttpError(404, 'NOT_FOUND', `image '${id}' is neither cached nor queued`);
    await cache.deleteCachedImage(id);
    await cache.deleteQueuedImage(id);
    return noContent(reply, 204);
  });
  methodNotAllowed(scope, '/cache/:id', ['PUT', 'DELETE']);

  // Legacy endpoints (glance-cache-manage): 200 with a JSON body, no worker submit.
  scope.get('/cached_images', async () => ({ cached_images: (await cache.getCachedImages()).map(toGlanceRecord) }));
  scope.delete('/cached_images', async () => ({ num_deleted: await cache.deleteAllCachedImages() }));
  methodNotAllowed(scope, '/cached_images', ['GET', 'DELETE']);
  scope.delete('/cached_images/:id', async (request: IdRequest, reply) => {
    await cache.deleteCachedImage(idParam(request));
    return jsonNull(reply);
  });
  methodNotAllowed(scope, '/cached_images/:id', ['DELETE']);

  scope.get('/queued_images', async () => ({ queued_images: await cache.getQueuedImages() }));
  scope.delete('/queued_images', async () => ({ num_deleted: await cache.deleteAllQueuedImages() }));
  methodNotAllowed(scope, '/queued_images', ['GET', 'DELETE']);
  scope.put('/queued_images/:id', async (request: IdRequest, reply) => {
    await cache.queueImage(idParam(request));
    return jsonNull(reply);
  });
  scope.delete('/queued_images/:id', async (request: IdRequest, reply) => {
    await cache.deleteQueuedImage(idParam(request));
    return jsonNull(reply);
  });
  methodNotAllowed(scope, '/queued_images/:id', ['PUT', 'DELETE']);
}
