import { registerClean } from './clean.js';
import { registerDelete } from './delete.js';
import { registerDequeue } from './dequeue.js';
import { registerImportSqlite } from './import-sqlite.js';
import { registerInfo } from './info.js';
import { registerList } from './list.js';
import { registerNodes } from './nodes.js';
import { registerPrefetch } from './prefetch.js';
import { registerPrune } from './prune.js';
import { registerQueue } from './queue.js';
import { registerServe } from './serve.js';
import { registerStats } from './stats.js';
import type { RegisterCommand } from './types.js';
import { registerVerify } from './verify.js';

export type { RegisterCommand } from './types.js';

/**
 * Every command, in the order `--help` lists them. To add one, write
 * `commands/<name>.ts` exporting a {@link RegisterCommand} and add it here.
 */
export const COMMANDS: readonly RegisterCommand[] = [
  registerList,
  registerInfo,
  registerStats,
  registerQueue,
  registerDequeue,
  registerDelete,
  registerPrune,
  registerClean,
  registerPrefetch,
  registerVerify,
  registerServe,
  registerImportSqlite,
  registerNodes,
];
