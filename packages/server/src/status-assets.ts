// The one server module that reads files: the status page's own files, shipped in this package's
// status-page/ directory (never a file of the cache directory: those are reached through @cache/core only;
// test/one-door.test.ts allows this module and checks it reads nothing else).
import { readFile } from 'node:fs/promises';

/** The package's `status-page/` directory (beside `src/` and `dist/`; in the package's `files`). */
const PAGE_DIR = new URL('../status-page/', import.meta.url);

/** The files of the status page: name in `status-page/` → its bytes. */
export type StatusPageFile = 'index.html' | 'status.js' | 'status.css' | 'favicon.svg';

/** Reads one file of the status page from the package. */
export function readStatusPageFile(name: StatusPageFile): Promise<Buffer> {
  return readFile(new URL(name, PAGE_DIR));
}
