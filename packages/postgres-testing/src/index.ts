/**
 * `@cache/postgres-testing`: throwaway PostgreSQL servers for tests and
 * benchmarks: those of `@cache/driver-postgres` and `@cache/cli`, and of
 * applications (and third parties) that use the postgres driver. It needs
 * nothing of the cache: only `pg`.
 *
 * {@link startTestPostgres} finds the server binaries (`/usr/lib/postgresql/<version>/bin`,
 * `$PG_BIN_DIR` or `pg_config --bindir`), runs `initdb` once into a template
 * data directory in a fresh temporary directory and starts a server from a
 * copy of it on a free loopback port (trust authentication, user `postgres`).
 * More servers can be started from the same template
 * ({@link TestPostgres.startServer}), e.g. to stop and restart one in an
 * outage test without touching the others.
 *
 * - **Root.** `initdb` and `postgres` refuse to run as root, so as root every
 *   server command runs as the unprivileged `postgres` user (`nobody` when
 *   there is none) through `runuser`, and the temporary directory is handed
 *   to that user. When the binaries are missing and the process is root, the
 *   Debian/Ubuntu `postgresql` package is installed with `apt-get` first.
 * - **Not root and no binaries**: it refuses with a
 *   {@link TestPostgresUnavailableError} that says why, so a test suite can
 *   skip with the reason instead of failing.
 * - **Clean-up.** {@link TestPostgres.stop} stops every server and removes the
 *   directory; an `exit` handler does the same (synchronously) for a process
 *   that ends without calling it. A process killed by a signal runs no exit
 *   handlers: install signal handlers that call `stop()` or `process.exit()`.
 *   {@link removeTestPostgresSync} removes what a killed process left behind.
 *
 * Not for production: every server listens on 127.0.0.1 with trust
 * authentication, and by default with `fsync=off` (see {@link DEFAULT_TEST_SETTINGS}).
 *
 * @example
 * ```ts
 * import { startTestPostgres } from '@cache/postgres-testing';
 * import { PostgresDriver } from '@cache/driver-postgres';
 *
 * const postgres = await startTestPostgres();
 * try {
 *   const connectionString = await postgres.createDatabase('my_app_test');
 *   const driver = new PostgresDriver({ cacheDir: '/tmp/my-cache', connectionString });
 *   // ...
 * } finally {
 *   await postgres.stop();
 * }
 * ```
 *
 * @packageDocumentation
 */
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { chown, mkdir, mkdtemp, readdir } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';

const run = promisify(execFile);

/** Thrown by {@link startTestPostgres} when no server can be found, installed or started; `reason` says why. */
export class TestPostgresUnavailableError extends Error {
  /** Why there is no server, in one line (for a skipped test's title or a benchmark's report). */
  readonly reason: string;

  /** @param reason - why there is no server. */
  constructor(reason: string, options?: { cause?: unknown }) {
    super(`no throwaway PostgreSQL server: ${reason}`, options);
    this.name = 'TestPostgresUnavailableError';
    this.reason = reason;
  }
}

/** Server settings (`postgres -c name=value`); values must not contain spaces or quotes. */
export type TestPostgresSettings = Readonly<Record<string, string | number | boolean>>;

/**
 * Settings every server gets unless overridden. `fsync` and
 * `full_page_writes` are off: only an OS crash could lose data, which a test
 * never causes; `synchronous_commit` stays on, so a commit a client saw
 * survives `stop({ mode: 'immediate' })` as on a real server. Pass
 * `{ fsync: 'on', full_page_writes: 'on' }` to measure with PostgreSQL's
 * default durability.
 */
export const DEFAULT_TEST_SETTINGS: TestPostgresSettings = Object.freeze({
  fsync: 'off',
  full_page_writes: 'off',
  max_connections: 300,
  shared_buffers: '32MB',
});

/** Options of {@link startTestPostgres}. */
export interface StartTestPostgresOptions {
  /**
   * Directory for the template, the data directories, logs and unix sockets.
   * Created when missing; an existing one must be empty (apart from dot
   * files). As root it is handed to the server user, who must be able to
   * reach it (every parent directory searchable). Removed by `stop()`.
   * @default a fresh `mkdtemp` directory `pg-test-XXXXXX` in `os.tmpdir()`
   */
  root?: string;
  /**
   * Install the `postgresql` package with `apt-get` when the binaries are missing and the process is root.
   * @default true
   */
  install?: boolean;
  /** Server settings, merged over {@link DEFAULT_TEST_SETTINGS}. */
  settings?: TestPostgresSettings;
  /**
   * Stop the servers and remove `root` synchronously when the process exits without `stop()`.
   * @default true
   */
  cleanupOnExit?: boolean;
}

/**
 * Everything needed to use a running {@link TestPostgres} from another
 * process (e.g. a vitest worker, given it by a global setup): plain JSON.
 * See {@link attachTestPostgres}.
 */
export interface TestPostgresHandle {
  /** The directory holding everything. */
  root: string;
  /** Directory of `initdb`, `pg_ctl`, `postgres`. */
  binDir: string;
  /** Unprivileged user the server commands run as (when root), else `null`. */
  runAs: string | null;
  /** The data directory made by `initdb`, copied for each server. */
  template: string;
  /** `PostgreSQL` version, e.g. `15.14`. */
  version: string;
  /** The settings every server of this cluster starts with. */
  settings: Record<string, string>;
  /** The first server's name (its data directory is `<root>/<name>`). */
  name: string;
  /** The first server's port on 127.0.0.1. */
  port: number;
}

/** A row as `pg` returns it (bigints and numerics arrive as strings). */
export type TestPostgresRow = Record<string, unknown>;

/**
 * A connected client ({@link TestPostgresServer.connect}): a `pg.Client`,
 * typed structurally so that callers need neither `pg` nor its types.
 */
export interface TestPostgresClient {
  /** Runs one statement (`$1`... placeholders); resolves with its rows and row count. */
  query<R extends TestPostgresRow = TestPostgresRow>(text: string, values?: readonly unknown[]): Promise<{ rows: R[]; rowCount: number | null }>;
  /** Closes the connection. */
  end(): Promise<void>;
}

/** One server started from the template. Its data stays until the cluster is removed, so it can be stopped and started again. */
export interface TestPostgresServer {
  /** Name; the data directory is `<root>/<name>`, the log `<root>/<name>.log`. */
  readonly name: string;
  /** TCP port on 127.0.0.1 (kept across `stop()` / `start()`). */
  readonly port: number;
  /** The data directory. */
  readonly dataDir: string;
  /** The server log. */
  readonly logFile: string;
  /** Connection string of `database` as the superuser `postgres` (trust authentication over loopback). */
  connectionString(database?: string): string;
  /**
   * Creates database `name` (an empty copy of `template1`) and returns its
   * connection string. Fails when it exists already.
   */
  createDatabase(name: string): Promise<string>;
  /** Drops database `name` if it exists, closing its connections first. */
  dropDatabase(name: string): Promise<void>;
  /** Runs one SQL statement on `database` (default `postgres`) with a short-lived connection; returns the rows. */
  query<R extends TestPostgresRow = TestPostgresRow>(text: string, values?: readonly unknown[], database?: string): Promise<R[]>;
  /** A connected client of `database` (default `postgres`) for many statements; `end()` it when done. */
  connect(database?: string): Promise<TestPostgresClient>;
  /** Pid of the server's postmaster (parent of every backend), or `undefined` when it is not running. */
  postmasterPid(): number | undefined;
  /**
   * Stops the server, keeping its data: `fast` (the default) ends sessions
   * and shuts down cleanly; `immediate` is crash-like, as after a power cut
   * or `kill -9` of the postmaster (recovery runs at the next start).
   */
  stop(options?: { mode?: 'fast' | 'immediate' }): Promise<void>;
  /** Starts the stopped server again, on the same port. */
  start(): Promise<void>;
}

/** A throwaway cluster: the first server plus the means to start more. From {@link startTestPostgres} or {@link attachTestPostgres}. */
export interface TestPostgres {
  /** The directory holding everything. */
  readonly root: string;
  /** Directory of the server binaries. */
  readonly binDir: string;
  /** PostgreSQL version, e.g. `15.14`. */
  readonly version: string;
  /** The first server (started by {@link startTestPostgres}). */
  readonly server: TestPostgresServer;
  /** The first server's port. */
  readonly port: number;
  /** JSON-serialisable description, for {@link attachTestPostgres} in another process. */
  readonly handle: TestPostgresHandle;
  /** Whether `stop()` removes the whole cluster (true for {@link startTestPostgres}, false for {@link attachTestPostgres}). */
  readonly owner: boolean;
  /** The first server's {@link TestPostgresServer.connectionString}. */
  connectionString(database?: string): string;
  /** The first server's {@link TestPostgresServer.createDatabase}. */
  createDatabase(name: string): Promise<string>;
  /** The first server's {@link TestPostgresServer.dropDatabase}. */
  dropDatabase(name: string): Promise<void>;
  /** The first server's {@link TestPostgresServer.query}. */
  query<R extends TestPostgresRow = TestPostgresRow>(text: string, values?: readonly unknown[], database?: string): Promise<R[]>;
  /** The first server's {@link TestPostgresServer.connect}. */
  connect(database?: string): Promise<TestPostgresClient>;
  /**
   * Starts another server from a copy of the template (an empty cluster) on
   * a free port, e.g. one to stop and restart in an outage test.
   * @param name - its data directory's name under `root`; unique. Default: `server-<n>`.
   * @param settings - merged over the cluster's settings.
   */
  startServer(name?: string, settings?: TestPostgresSettings): Promise<TestPostgresServer>;
  /**
   * The owner (from {@link startTestPostgres}): stops every server and
   * removes `root`. Attached (from {@link attachTestPostgres}): stops only
   * the servers started through this object. Idempotent.
   */
  stop(): Promise<void>;
}

// ---- binaries -------------------------------------------------------------------------

function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

function versionOf(dir: string): number {
  return Number.parseFloat(dir) || 0;
}

/** The newest directory holding `initdb` and `pg_ctl`: `$PG_BIN_DIR`, then `/usr/lib/postgresql/<version>/bin`, then `pg_config --bindir`. */
export function findPostgresBinDir(): string | undefined {
  const candidates: string[] = [];
  if (process.env.PG_BIN_DIR) candidates.push(process.env.PG_BIN_DIR);
  try {
    const versions = readdirSync('/usr/lib/postgresql').sort((a, b) => versionOf(b) - versionOf(a));
    for (const version of versions) candidates.push(join('/usr/lib/postgresql', version, 'bin'));
  } catch {
    // not a Debian-style install
  }
  try {
    const bin = execFileSync('pg_config', ['--bindir'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    if (bin) candidates.push(bin);
  } catch {
    // no pg_config on PATH
  }
  return candidates.find((dir) => existsSync(join(dir, 'initdb')) && existsSync(join(dir, 'pg_ctl')));
}

function firstLines(error: unknown, lines = 3): string {
  const stderr = (error as { stderr?: string | Buffer }).stderr?.toString().trim();
  const text = stderr || (error instanceof Error ? error.message : String(error));
  return text.split('\n').map((line) => line.trim()).filter(Boolean).slice(0, lines).join(' / ');
}

/**
 * Finds the server binaries; as root (and with `install`), installs the
 * `postgresql` package with apt-get when they are missing.
 * @throws TestPostgresUnavailableError when there are none.
 */
export async function ensurePostgresBinDir(install = true): Promise<string> {
  const found = findPostgresBinDir();
  if (found !== undefined) return found;
  if (!isRoot() || !install) {
    throw new TestPostgresUnavailableError(
      'PostgreSQL server binaries (initdb, pg_ctl) not found in $PG_BIN_DIR, /usr/lib/postgresql/*/bin or pg_config --bindir' +
        (isRoot() ? ' (installing is disabled)' : ', and not root, so cannot apt-get install postgresql: install it (e.g. sudo apt-get install postgresql) or set PG_BIN_DIR'),
    );
  }
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  try {
    await run('apt-get', ['install', '-y', '-q', 'postgresql'], { env, timeout: 300_000 }).catch(async () => {
      await run('apt-get', ['update', '-q'], { env, timeout: 300_000 });
      await run('apt-get', ['install', '-y', '-q', 'postgresql'], { env, timeout: 300_000 });
    });
  } catch (error) {
    throw new TestPostgresUnavailableError(`PostgreSQL is not installed and apt-get install postgresql failed: ${firstLines(error, 1)}`, { cause: error });
  }
  const installed = findPostgresBinDir();
  if (installed === undefined) throw new TestPostgresUnavailableError('apt-get installed postgresql but no initdb/pg_ctl was found');
  return installed;
}

// ---- the cluster ------------------------------------------------------------------------

interface ClusterInfo {
  root: string;
  binDir: string;
  runAs: string | null;
  template: string;
  settings: Record<string, string>;
}

const SETTING_NAME = /^[a-z_][a-z0-9_.]*$/;
const SETTING_VALUE = /^[A-Za-z0-9_.:/+,-]+$/;

function normalizeSettings(base: Record<string, string>, extra: TestPostgresSettings | undefined): Record<string, string> {
  const out = { ...base };
  for (const [name, value] of Object.entries(extra ?? {})) {
    const text = typeof value === 'boolean' ? (value ? 'on' : 'off') : String(value);
    if (!SETTING_NAME.test(name) || !SETTING_VALUE.test(text)) {
      throw new TypeError(`server setting ${name}=${text}: names are lower-case identifiers, values letters, digits and _ . : / + , -`);
    }
    out[name] = text;
  }
  return out;
}

/** Runs a server command, as the unprivileged user when we are root. */
async function pgCommand(cluster: Pick<ClusterInfo, 'runAs'>, command: string, args: string[], timeout = 120_000): Promise<string> {
  const [file, argv] = cluster.runAs === null ? [command, args] : ['runuser', ['-u', cluster.runAs, '--', command, ...args]];
  const { stdout } = await run(file, argv, { timeout, cwd: '/' });
  return stdout;
}

function serverUser(): string | null {
  if (!isRoot()) return null;
  try {
    execFileSync('id', ['-u', 'postgres'], { stdio: 'ignore' });
    return 'postgres';
  } catch {
    return 'nobody';
  }
}

async function prepareRoot(root: string | undefined): Promise<string> {
  if (root === undefined) return mkdtemp(join(tmpdir(), 'pg-test-'));
  const dir = resolve(root);
  await mkdir(dir, { recursive: true });
  const entries = (await readdir(dir)).filter((name) => !name.startsWith('.'));
  if (entries.length > 0) throw new Error(`root ${dir} is not empty (${entries.slice(0, 3).join(', ')}...)`);
  return dir;
}

/** A free TCP port on the loopback interface. */
function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address !== null ? resolvePort(address.port) : reject(new Error('no port'))));
    });
  });
}

function connectionStringOf(port: number, database: string): string {
  return `postgresql://postgres@127.0.0.1:${port}/${encodeURIComponent(database)}`;
}

const quoteIdent = (name: string) => `"${name.replace(/"/g, '""')}"`;

async function connectTo(url: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 10_000 });
  // A server stopped while a client is connected reports it here; never crash the process for it.
  client.on('error', () => undefined);
  await client.connect();
  return client;
}

async function withClient<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = await connectTo(url);
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}

function readPostmasterPid(dataDir: string): number | undefined {
  let text: string;
  try {
    text = readFileSync(join(dataDir, 'postmaster.pid'), 'utf8');
  } catch {
    return undefined;
  }
  const pid = Number(text.split('\n')[0]);
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  // A stale pid file (a server killed with SIGKILL) may name a reused pid: it must be a postgres process.
  try {
    const comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    if (!/^postgres|^postmaster/.test(comm)) return undefined;
  } catch {
    try {
      process.kill(pid, 0);
    } catch {
      return undefined;
    }
  }
  return pid;
}

class Server implements TestPostgresServer {
  readonly dataDir: string;
  readonly logFile: string;

  constructor(
    private readonly cluster: ClusterInfo,
    readonly name: string,
    readonly port: number,
    private readonly settings: Record<string, string>,
  ) {
    this.dataDir = join(cluster.root, name);
    this.logFile = join(cluster.root, `${name}.log`);
  }

  connectionString(database = 'postgres'): string {
    return connectionStringOf(this.port, database);
  }

  async createDatabase(name: string): Promise<string> {
    await this.query(`CREATE DATABASE ${quoteIdent(name)}`);
    return this.connectionString(name);
  }

  async dropDatabase(name: string): Promise<void> {
    // (DROP DATABASE ... WITH (FORCE) would need PostgreSQL 13.)
    await withClient(this.connectionString('postgres'), async (client) => {
      await client.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()', [name]);
      await client.query(`DROP DATABASE IF EXISTS ${quoteIdent(name)}`);
    });
  }

  query<R extends TestPostgresRow = TestPostgresRow>(text: string, values: readonly unknown[] = [], database = 'postgres'): Promise<R[]> {
    return withClient(this.connectionString(database), async (client) => (await client.query<R>(text, [...values])).rows);
  }

  async connect(database = 'postgres'): Promise<TestPostgresClient> {
    const client = await connectTo(this.connectionString(database));
    return {
      query: async <R extends TestPostgresRow = TestPostgresRow>(text: string, values: readonly unknown[] = []) => {
        const result = await client.query<R>(text, [...values]);
        return { rows: result.rows, rowCount: result.rowCount };
      },
      end: () => client.end(),
    };
  }

  postmasterPid(): number | undefined {
    return readPostmasterPid(this.dataDir);
  }

  async start(): Promise<void> {
    const options = [
      '-c listen_addresses=127.0.0.1',
      `-p ${this.port}`,
      `-k ${this.cluster.root}`,
      ...Object.entries(this.settings).map(([name, value]) => `-c ${name}=${value}`),
    ].join(' ');
    try {
      await pgCommand(this.cluster, join(this.cluster.binDir, 'pg_ctl'), ['-D', this.dataDir, '-l', this.logFile, '-o', options, '-w', '-t', '60', 'start']);
    } catch (error) {
      let log = '';
      try {
        log = readFileSync(this.logFile, 'utf8').trim().split('\n').slice(-3).join(' / ');
      } catch {
        // no log yet
      }
      throw new Error(`pg_ctl start of ${this.dataDir} on port ${this.port} failed: ${firstLines(error)}${log ? ` (log: ${log})` : ''}`, { cause: error });
    }
  }

  async stop(options: { mode?: 'fast' | 'immediate' } = {}): Promise<void> {
    await pgCommand(this.cluster, join(this.cluster.binDir, 'pg_ctl'), ['-D', this.dataDir, '-m', options.mode ?? 'fast', '-w', '-t', '60', 'stop']);
  }
}

async function copyTemplate(cluster: ClusterInfo, name: string): Promise<void> {
  if (!/^[A-Za-z0-9_.-]+$/.test(name) || name === 'template' || name.startsWith('.')) {
    throw new TypeError(`server name ${JSON.stringify(name)}: letters, digits, _ . - (not "template")`);
  }
  if (existsSync(join(cluster.root, name))) throw new Error(`a server named ${name} exists already in ${cluster.root}`);
  await pgCommand(cluster, 'cp', ['-a', cluster.template, join(cluster.root, name)]);
}

class ThrowawayCluster implements TestPostgres {
  readonly #cluster: ClusterInfo;
  readonly #started: Server[] = [];
  readonly #onExit: (() => void) | undefined;
  #stopped = false;
  #next = 0;

  constructor(
    cluster: ClusterInfo,
    readonly server: Server,
    readonly version: string,
    readonly owner: boolean,
    cleanupOnExit: boolean,
  ) {
    this.#cluster = cluster;
    if (owner && cleanupOnExit) {
      this.#onExit = () => removeTestPostgresSync(cluster.root);
      process.once('exit', this.#onExit);
    }
  }

  get root(): string {
    return this.#cluster.root;
  }

  get binDir(): string {
    return this.#cluster.binDir;
  }

  get port(): number {
    return this.server.port;
  }

  get handle(): TestPostgresHandle {
    const { root, binDir, runAs, template, settings } = this.#cluster;
    return { root, binDir, runAs, template, version: this.version, settings: { ...settings }, name: this.server.name, port: this.server.port };
  }

  connectionString(database?: string): string {
    return this.server.connectionString(database);
  }

  createDatabase(name: string): Promise<string> {
    return this.server.createDatabase(name);
  }

  dropDatabase(name: string): Promise<void> {
    return this.server.dropDatabase(name);
  }

  query<R extends TestPostgresRow = TestPostgresRow>(text: string, values?: readonly unknown[], database?: string): Promise<R[]> {
    return this.server.query<R>(text, values, database);
  }

  connect(database?: string): Promise<TestPostgresClient> {
    return this.server.connect(database);
  }

  async startServer(name?: string, settings?: TestPostgresSettings): Promise<TestPostgresServer> {
    if (this.#stopped) throw new Error('this TestPostgres was stopped');
    const serverName = name ?? `server-${process.pid}-${++this.#next}`;
    await copyTemplate(this.#cluster, serverName);
    const server = new Server(this.#cluster, serverName, await freePort(), normalizeSettings(this.#cluster.settings, settings));
    this.#started.push(server);
    await server.start();
    return server;
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    const servers = this.owner ? [this.server, ...this.#started] : this.#started;
    await Promise.all(servers.map((server) => (server.postmasterPid() === undefined ? undefined : server.stop().catch(() => undefined))));
    if (!this.owner) return;
    removeTestPostgresSync(this.#cluster.root);
    if (this.#onExit !== undefined) process.removeListener('exit', this.#onExit);
  }
}

/**
 * Starts a throwaway PostgreSQL server: finds (as root, when missing,
 * installs with apt-get) the binaries, `initdb`s a template into `root` and
 * starts a server from a copy of it on a free port of 127.0.0.1. Call
 * `stop()` when done (an exit handler does it otherwise).
 *
 * @throws TestPostgresUnavailableError when no server can be found,
 *   installed or started (not root and not installed, apt-get failed, initdb
 *   or the start failed); its `reason` says which.
 */
export async function startTestPostgres(options: StartTestPostgresOptions = {}): Promise<TestPostgres> {
  const binDir = await ensurePostgresBinDir(options.install ?? true);
  const settings = normalizeSettings(normalizeSettings({}, DEFAULT_TEST_SETTINGS), options.settings);
  const runAs = serverUser();
  let root: string;
  try {
    root = await prepareRoot(options.root);
  } catch (error) {
    throw new TestPostgresUnavailableError(`cannot use ${options.root ?? tmpdir()}: ${firstLines(error, 1)}`, { cause: error });
  }
  const cluster: ClusterInfo = { root, binDir, runAs, template: join(root, 'template'), settings };
  try {
    if (runAs !== null) {
      const uid = Number(execFileSync('id', ['-u', runAs], { encoding: 'utf8' }).trim());
      const gid = Number(execFileSync('id', ['-g', runAs], { encoding: 'utf8' }).trim());
      await chown(root, uid, gid);
    }
    await pgCommand(cluster, join(binDir, 'initdb'), ['-D', cluster.template, '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--locale=C', '--no-sync']);
    const versionText = await pgCommand(cluster, join(binDir, 'pg_ctl'), ['--version']);
    const version = /(\d+(?:\.\d+)*)/.exec(versionText)?.[1] ?? 'unknown';
    await copyTemplate(cluster, 'main');
    const server = new Server(cluster, 'main', await freePort(), settings);
    const result = new ThrowawayCluster(cluster, server, version, true, options.cleanupOnExit ?? true);
    try {
      await server.start();
    } catch (error) {
      await result.stop();
      throw error;
    }
    return result;
  } catch (error) {
    removeTestPostgresSync(root);
    if (error instanceof TestPostgresUnavailableError) throw error;
    throw new TestPostgresUnavailableError(`could not start PostgreSQL from ${binDir}${runAs === null ? '' : ` as ${runAs}`}: ${firstLines(error)}`, {
      cause: error,
    });
  }
}

/**
 * {@link startTestPostgres} for a test file that skips its PostgreSQL cases
 * when no server can be had: `{ pg }` when one started, else `{ skipReason }`
 * (the {@link TestPostgresUnavailableError}'s reason, for the skipped tests'
 * titles). Any other failure is thrown.
 *
 * @example
 * ```ts
 * const { pg, skipReason } = await tryStartTestPostgres();
 * afterAll(() => pg?.stop());
 * it.skipIf(pg === undefined)(`lists the nodes${skipReason ? ` [skipped: ${skipReason}]` : ''}`, async () => { ... });
 * ```
 */
export async function tryStartTestPostgres(
  options: StartTestPostgresOptions = {},
): Promise<{ pg: TestPostgres; skipReason: undefined } | { pg: undefined; skipReason: string }> {
  try {
    return { pg: await startTestPostgres(options), skipReason: undefined };
  } catch (error) {
    if (!(error instanceof TestPostgresUnavailableError)) throw error;
    return { pg: undefined, skipReason: error.reason };
  }
}

/**
 * A {@link TestPostgres} started by another process (e.g. a vitest global
 * setup that passed `handle` to its test files): creates databases on its
 * first server and starts servers of its own from the same template. Its
 * `stop()` stops only the servers it started; the owner removes the rest.
 */
export function attachTestPostgres(handle: TestPostgresHandle): TestPostgres {
  const cluster: ClusterInfo = { root: handle.root, binDir: handle.binDir, runAs: handle.runAs, template: handle.template, settings: { ...handle.settings } };
  return new ThrowawayCluster(cluster, new Server(cluster, handle.name, handle.port, cluster.settings), handle.version, false, false);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Synchronously stops every server whose data directory is directly under
 * `root` (SIGQUIT to its postmaster: an immediate shutdown, as `pg_ctl stop
 * -m immediate`; SIGKILL after 10 s) and removes `root`. For exit handlers,
 * and for what a process killed by a signal left behind. Missing `root` is fine.
 */
export function removeTestPostgresSync(root: string): void {
  let entries: string[];
  try {
    entries = readdirSync(root);
  } catch {
    return;
  }
  const pids = entries.map((entry) => readPostmasterPid(join(root, entry))).filter((pid): pid is number => pid !== undefined);
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGQUIT');
    } catch {
      // gone already
    }
  }
  const deadline = Date.now() + 10_000;
  const pause = new Int32Array(new SharedArrayBuffer(4));
  while (pids.some(alive) && Date.now() < deadline) Atomics.wait(pause, 0, 0, 20);
  for (const pid of pids.filter(alive)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  try {
    if (statSync(root).isDirectory()) rmSync(root, { recursive: true, force: true, maxRetries: 3 });
  } catch {
    // already gone
  }
}
