import type { Command } from 'commander';
import type { CliContext } from '../context.js';

/**
 * One command of the CLI: adds itself (name, arguments, options, action) to
 * the program. Adding a command is one file exporting one of these, plus one
 * line in `commands/index.ts`.
 */
export type RegisterCommand = (program: Command, ctx: CliContext) => void;
