import type { Command } from 'commander';
import type { ClusterStatus, PostgresDriver } from '@cache/driver-postgres';
import type { ResolvedConfig } from '../config.js';
import type { CliContext } from '../context.js';
import { CliErrorCodes, operationalError, usageError } from '../errors.js';
import { renderTable } from '../table.js';
import { formatSize, formatTime } from '../units.js';
import type { RegisterCommand } from './types.js';

interface NodesOptions {
  json?: boolean;
}

interface ForgetOptions {
  force?: boolean;
  json?: boolean;
}

/** Refuses a command about the cluster unless the configured driver is postgres (the only one with a cluster). */
export function assertClusterDriver(config: ResolvedConfig, what: string): void {
  if (config.driver !== 'postgres') {
    throw usageError(
      CliErrorCodes.USAGE,
      `${what} needs the postgres driver (nodes share a PostgreSQL database): pass --driver postgres and --database-url (the configured driver is ${config.driver})`,
    );
  }
}

/** The cluster as the shared database sees it: nodes and images with their copies. */
export async function readClusterStatus(ctx: CliContext, command: Command, what: string): Promise<ClusterStatus> {
  const config = await ctx.config(command);
  assertClusterDriver(config, what);
  return ctx.withCache(command, { mustExist: true, config }, async (cache) => (cache.driver as unknown as PostgresDriver).getClusterStatus());
}

/** The nodes table of `image-cache nodes` (and of `list --cluster`). */
export function renderNodes(status: ClusterStatus): string {
  return renderTable(
    ['Node', 'Health', 'URL', 'Last heartbeat (UTC)', 'Images', 'Size', 'Hits'],
    status.nodes.map((node) => [
      node.self ? `${node.nodeId} (this)` : node.nodeId,
      node.health,
      node.url ?? '-',
      node.lastHeartbeat === undefined ? '-' : formatTime(node.lastHeartbeat),
      node.images,
      formatSize(node.bytes),
      node.hits,
    ]),
    ['left', 'left', 'left', 'left', 'right', 'right', 'right'],
  );
}

/**
 * `image-cache nodes [--json]`: the nodes of the cluster (postgres driver)
 * with their health (alive, dead, stopped, unknown), advertised URL, last
 * heartbeat and what they hold; `image-cache nodes forget <id>` removes a
 * dead node and its rows from the shared database.
 */
export const registerNodes: RegisterCommand = (program, ctx) => {
  const nodes = program
    .command('nodes')
    .description('postgres driver: the nodes of the cluster: health (alive/dead/stopped/unknown), URL, last heartbeat, images held')
    .option('--json', 'print JSON: {nodes: [{nodeId, url, health, lastHeartbeat, startedAt, images, bytes, hits, self}], images: [...]}')
    .action(async (options: NodesOptions, command: Command) => {
      const status = await readClusterStatus(ctx, command, 'nodes');
      if (options.json === true) ctx.json(status);
      else if (status.nodes.length === 0) ctx.out('No nodes.');
      else ctx.out(renderNodes(status));
    });
  nodes
    .command('forget <node-id>')
    .description('remove a node that is gone (dead or stopped) and its rows from the shared database; its files are not touched')
    .option('--force', 'also forget a node that is alive (it registers again with its next heartbeat)')
    .option('--json', 'print JSON: {nodeId, rows}')
    .action(async (nodeId: string, options: ForgetOptions, command: Command) => {
      const config = await ctx.config(command);
      assertClusterDriver(config, 'nodes forget');
      await ctx.withCache(command, { mustExist: true, config }, async (cache) => {
        const driver = cache.driver as unknown as PostgresDriver;
        const node = (await driver.getClusterStatus()).nodes.find((n) => n.nodeId === nodeId);
        if (node === undefined) {
          throw operationalError(CliErrorCodes.NOT_FOUND, `no node ${JSON.stringify(nodeId.slice(0, 200))} in the cluster: \`image-cache nodes\` lists them`);
        }
        if (node.health === 'alive' && options.force !== true) {
          throw usageError(
            CliErrorCodes.USAGE,
            `node ${nodeId} is alive (last heartbeat ${formatTime(node.lastHeartbeat ?? 0)}): stop it first, or pass --force (it registers again with its next heartbeat)`,
          );
        }
        const rows = await driver.forgetNode(nodeId);
        if (options.json === true) ctx.json({ nodeId, rows });
        else ctx.out(`forgot node ${nodeId} and its ${rows} image row(s); files on that node are untouched`);
      });
    });
};
