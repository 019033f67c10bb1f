#!/usr/bin/env node
// The `image-cache` binary: runs the CLI on this process and exits with its code.
// libuv's threadpool (4 threads by default) runs every file operation; concurrent commits each hold
// one for their fsync, so with 4 the other operations wait behind them. Raised before anything uses it,
// unless the environment says otherwise.
process.env.UV_THREADPOOL_SIZE ??= '16';
let runCli;
try {
  ({ runCli } = await import('../dist/index.js'));
} catch (error) {
  // From a clone before the first build: say what to run instead of a module-resolution stack.
  // (Its own dist/ or that of a workspace package it imports; a published install always has them.)
  if (error?.code === 'ERR_MODULE_NOT_FOUND' && /[\\/]dist[\\/]/.test(String(error.message))) {
    process.stderr.write('image-cache: the CLI (or a package it uses) is not built yet: run `pnpm build` at the root of the repository first [CLI_NOT_BUILT]\n');
    process.exit(2);
  }
  throw error;
}

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
