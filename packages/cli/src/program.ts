import { createRequire } from 'node:module';
import { Command } from 'commander';
import { COMMANDS, type RegisterCommand } from './commands/index.js';
import type { CliContext } from './context.js';

const { version } = createRequire(import.meta.url)('../package.json') as { version: string };

/** The CLI's version (from its package.json). */
export const VERSION: string = version;

/**
 * Builds the commander program for one run: global options, every command of
 * {@link COMMANDS} (plus `extra`), output into the context's streams, and
 * errors thrown instead of exiting the process.
 */
export function createProgram(ctx: CliContext, extra: readonly RegisterCommand[] = []): Command {
  const program = new Command('image-cache')
    .description('Manage an @cache image cache directory (Glance layout): list, queue, prune, clean, prefetch, verify.')
    .version(VERSION, '-V, --version')
    .option('--driver <name>', 'metadata driver: sqlite, xattr or postgres (env IMAGE_CACHE_DRIVER; default sqlite)')
    .option('--database-url <url>', 'postgres driver: connection string (env IMAGE_CACHE_DATABASE_URL, else DATABASE_URL)')
    .option('--node-id <id>', 'postgres driver: this node\'s identity (env IMAGE_CACHE_NODE_ID; default <hostname>:<cache dir>)')
    .option('--heartbeat-expiry <duration>', 'postgres driver: a node whose last heartbeat is older is dead: skipped by its peers, listed as dead (env IMAGE_CACHE_HEARTBEAT_EXPIRY; default 30s)')
    .option('--cache-dir <dir>', 'the cache directory (env IMAGE_CACHE_DIR; required)')
    .option('--config <file>', 'config file (env IMAGE_CACHE_CONFIG; default: image-cache.config.json or .image-cacherc.json, searched upwards)')
    .option('--max-size <size>', 'cache budget for prune, e.g. 20GiB, 500MB (powers of 1024; env IMAGE_CACHE_MAX_SIZE; default 10GiB)')
    .option('--debug', 'print stack traces with errors (also: DEBUG=1)')
    .configureHelp({ showGlobalOptions: true, sortSubcommands: false })
    .configureOutput({
      writeOut: (text) => void ctx.io.stdout.write(text),
      writeErr: (text) => void ctx.io.stderr.write(text),
      // Usage errors are printed by runCli as one line with a code.
      outputError: () => undefined,
    })
    .exitOverride()
    .showSuggestionAfterError(true)
    .allowExcessArguments(false);
  for (const register of [...COMMANDS, ...extra]) register(program, ctx);
  return program;
}
