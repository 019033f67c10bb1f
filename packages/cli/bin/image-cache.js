#!/usr/bin/env node
// The `image-cache` binary: runs the CLI on this process and exits with its code.
import { runCli } from '../dist/index.js';

// Ctrl-C once: stop cleanly (prefetch rolls back its partial files); twice: exit at once.
const controller = new AbortController();
const interrupt = () => {
  if (controller.signal.aborted) process.exit(130);
  controller.abort(new Error('interrupted'));
};
process.on('SIGINT', interrupt);
process.on('SIGTERM', interrupt);
// `image-cache list | head`: a closed pipe is not an error.
process.stdout.on('error', (error) => {
  if (error.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw error;
});

const code = await runCli(process.argv.slice(2), { signal: controller.signal });
process.stdout.write('', () => process.stderr.write('', () => process.exit(code)));
