import { hostname } from 'node:os';
import { resolve } from 'node:path';
import pg from 'pg';
import { CacheStorageError, InvalidArgumentError, type CacheError, type ImageId } from '@cache/core';
import {
  DirectoryCacheDriver,
  compareIds,
  fileIdentity,
  metadataMatches,
  type CommitInfo,
  type DirectoryDriverOptions,
  type DriverSupports,
  type EntryStat,
  type ImageMetadata,
} from '@cache/core/driver';
import { classifyPgError, describeTarget, toCacheError } from './pg-errors.js';
import { runMigrations } from './migrate.js';
import { SQL, type CachedImageRow, type MigrationResult } from './schema.js';
import { fromMicros, toTimestamp } from './time.js';
import { readSqliteCache, type SqliteImportReport } from './sqlite-import.js';

/** Options of {@link PostgresDriver}. */
export interface PostgresDriverOptions extends DirectoryDriverOptions {
  /**
   * Where the central database is, e.g. `postgresql://cache:secret@db.example:5432/image_cache`.
   * Every node of a cluster points at the same database. Anything `pg` accepts
   * (`?sslmode=require`, `?host=/run/postgresql` for a unix socket,
   * `?options=-csearch_path%3Dimage_cache` to keep the tables in their own schema).
   * @default process.env.DATABASE_URL
   */
  connectionString?: string;
  /**
   * This node's identity: its `node_reference_url` row. Rows are per node,
   * files are per cache directory, so every worker process that shares one
   * cache directory must use the same identity (that is the default); two
   * cache directories must never share one.
   * @default `${os.hostname()}:${path.resolve(cacheDir)}` (see {@link defaultNodeId})
   */
  nodeId?: string;
  /**
   * Connections this driver instance keeps open at most.
   * @default 4
   */
  poolSize?: number;
  /**
   * How long (ms) to wait for a connection (connect + pool wait) before
   * failing with `CacheStorageError`.
   * @default 5000
   */
  connectionTimeoutMillis?: number;
  /**
   * Server-side `statement_timeout` (ms) of every session; a statement that
   * runs longer (e.g. stuck behind a lock) fails with `CacheStorageError`.
   * The client also gives up waiting for an answer this long plus 2 s, which
   * covers a server that vanished without closing the connection.
   * @default 10000
   */
  statementTimeoutMillis?: number;
  /**
   * After a connection failure, hits are dropped (with a warning) without
   * trying the database again for this long (ms); after that they are written
   * in the background until a statement succeeds again, so reads of cached
   * files do not wait on a dead database. Other calls always try.
   * @default 2000
   */
  unavailableBackoffMillis?: number;
  /**
   * Let `configure()` succeed while the database is unreachable (refused,
   * timed out): the node then serves its local files (reads work, hits are
   * dropped with a warning, commits fail and roll back, cluster queries fail)
   * and connects in the background, with exponential backoff from
   * {@link reconnectDelayMillis} to {@link reconnectMaxDelayMillis}, until it
   * has migrated the schema and registered the node; every attempt is
   * reported to {@link onConnection}. Permanent problems (authentication, a
   * missing database) still reject `configure()` when the server answers.
   * @default false: `configure()` rejects with `CacheStorageError`
   */
  startWhileUnavailable?: boolean;
  /** First delay (ms) between background connection attempts ({@link startWhileUnavailable}); doubled per attempt. @default 500 */
  reconnectDelayMillis?: number;
  /** Longest delay (ms) between background connection attempts. @default 30000 */
  reconnectMaxDelayMillis?: number;
  /**
   * Receives the background connection attempts of {@link startWhileUnavailable}:
   * each failure (with the delay before the next attempt) and the success.
   * @default failures go to `process.emitWarning`
   */
  onConnection?: (event: PostgresConnectionEvent) => void;
  /**
   * How long (ms) after its last heartbeat ({@link PostgresDriver.heartbeat})
   * a node still counts as alive: peers skip it afterwards, and listings
   * report it `dead`. Give it about three heartbeat intervals.
   * @default 30000
   */
  heartbeatExpiryMillis?: number;
}

/** A background connection attempt of {@link PostgresDriverOptions.startWhileUnavailable}. */
export type PostgresConnectionEvent =
  | {
      /** The attempt failed; the next one follows in `retryInMillis`. */
      state: 'unavailable';
      /** 1 for the attempt of `configure()`. */
      attempt: number;
      retryInMillis: number;
      error: CacheError;
    }
  | {
      /** Connected, schema migrated, node registered: the driver works normally from now on. */
      state: 'connected';
      attempt: number;
    };

/**
 * A node's health in the cluster: `alive` (heartbeat within the expiry),
 * `dead` (heartbeat expired: crashed, or cut off), `stopped` (it said goodbye
 * on shutdown), `unknown` (never sent a heartbeat: a node used by the CLI
 * only, or a server of an older version).
 */
export type NodeHealth = 'alive' | 'dead' | 'stopped' | 'unknown';

/** One node of the cluster, from {@link PostgresDriver.getClusterStatus}. */
export interface ClusterNode {
  /** Its identity (`nodeId`). */
  nodeId: string;
  /** The URL it advertised (where peers fetch from), when it ever sent a heartbeat. */
  url: string | undefined;
  health: NodeHealth;
  /** Its last heartbeat, epoch seconds. */
  lastHeartbeat: number | undefined;
  /** When it started serving (its first heartbeat after a start), epoch seconds. */
  startedAt: number | undefined;
  /** Images it holds, their bytes and hits. */
  images: number;
  bytes: number;
  hits: number;
  /** Whether it is the node of this driver. */
  self: boolean;
}

/** A copy of an image a live peer holds, from {@link PostgresDriver.getPeerCopies}. */
export interface PeerCopy {
  /** The peer's identity. */
  nodeId: string;
  /** The URL it advertised; its copy is `GET <url>/images/<id>`. */
  url: string;
  /** The digest the peer verified when it cached the copy (`sha256:<hex>` or md5 hex), if any. */
  checksum: string | undefined;
  /** Size in bytes, as the peer recorded it. */
  size: number;
}

/** One image across the cluster and its copies, from {@link PostgresDriver.getClusterStatus}. */
export interface ClusterImageCopies {
  imageId: ImageId;
  /** Largest recorded size of a copy, in bytes. */
  size: number;
  /** Completed reads, summed over the copies. */
  hits: number;
  /** One per node holding it, sorted by node id. */
  copies: { nodeId: string; health: NodeHealth; size: number; hits: number; lastAccessed: number; checksum: string | undefined }[];
}

/** The cluster seen from the shared database: every node, and every image with its copies. */
export interface ClusterStatus {
  /** Sorted by node id. */
  nodes: ClusterNode[];
  /** Sorted by image id. */
  images: ClusterImageCopies[];
}

/** One image across the cluster, from {@link PostgresDriver.getClusterImages}. */
export interface ClusterImage {
  /** The image id. */
  imageId: ImageId;
  /** Identities (`nodeId`) of the nodes holding the image, sorted. */
  nodes: string[];
  /** Completed reads summed over all nodes. */
  hits: number;
  /** Latest access on any node, epoch seconds (float, microsecond precision). */
  lastAccessed: number;
  /** Latest commit on any node, epoch seconds. */
  lastModified: number;
  /** Largest size recorded by any node, in bytes (equal on every node for an immutable image). */
  size: number;
}

const DRIVER_NAME = 'postgres';

/**
 * The node identity used when none is given: the host name and the absolute
 * cache directory, e.g. `web-3:/var/cache/images`. All worker processes of one
 * host that share a cache directory get the same identity, so they see one
 * set of rows, as they see one set of files.
 */
export function defaultNodeId(cacheDir: string): string {
  return `${hostname()}:${resolve(cacheDir)}`;
}

type Queryable = Pick<pg.PoolClient, 'query'>;

/**
 * Metadata in PostgreSQL, shared by many nodes, in the shape of Glance's
 * `centralized_db` tables (`node_reference` + `cached_images`); the bytes stay
 * in each node's local cache directory, handled by core's
 * {@link DirectoryCacheDriver}. Every `CacheDriver` method works on this
 * node's rows only; {@link PostgresDriver.getCachedNodes} and
 * {@link PostgresDriver.getClusterImages} look across the cluster.
 *
 * Fixes over Glance's driver: text ids of any length, `timestamptz` times
 * with microsecond precision read back exactly, hits incremented in one SQL
 * statement, upsert on commit, a commit whose row cannot be written is rolled
 * back (no active file without a row), versioned migrations under an advisory
 * lock, one identity per cache directory (not per worker), typed errors that
 * say what to do, and reads of cached files that keep working (hits dropped
 * with a warning) while the database is down.
 *
 * @example
 * ```ts
 * const driver = new PostgresDriver({ cacheDir: '/var/cache/images', connectionString: process.env.DATABASE_URL });
 * const cache = await ImageCache.open({ driver, maxSize: 50 * 2 ** 30 });
 * console.log(await driver.getCachedNodes('ubuntu-24.04'));
 * ```
 */
export class PostgresDriver extends DirectoryCacheDriver {
  /** `postgres`, used in messages. */
  readonly name = DRIVER_NAME;
  /** Shared by every worker of a node through the database; digests kept; hits are atomic `UPDATE`s. */
  override readonly supports: DriverSupports = { persistent: true, storedChecksum: true, crossProcessHits: 'exact', metadataStore: 'separate' };
  /** This node's identity (`node_reference_url`). */
  readonly nodeId: string;
  /** The database, for messages: host, port and database name, never the password. */
  readonly target: string;
  readonly #connectionString: string;
  readonly #poolSize: number;
  readonly #connectionTimeout: number;
  readonly #statementTimeout: number;
  readonly #backoff: number;
  #pool: pg.Pool | undefined;
  #nodeRef: string | undefined;
  #unavailableUntil = 0;
  /** When the last connection-class failure happened (0: none since the last success). */
  #failedAt = 0;
  #lastFailure: unknown;
  #migration: MigrationResult | undefined;
  readonly #startWhileUnavailable: boolean;
  readonly #reconnectDelay: number;
  readonly #reconnectMaxDelay: number;
  readonly #onConnection: ((event: PostgresConnectionEvent) => void) | undefined;
  readonly #heartbeatExpiry: number;
  #reconnectTimer: NodeJS.Timeout | undefined;
  #reconnectAttempt = 0;

  /**
   * @param options - cache directory, database and node identity.
   * @throws InvalidArgumentError when `cacheDir` is missing, or no connection string is given and `DATABASE_URL` is unset.
   */
  constructor(options: PostgresDriverOptions) {
    super(options);
    const connectionString = options.connectionString ?? process.env.DATABASE_URL;
    if (typeof connectionString !== 'string' || connectionString.trim() === '') {
      throw new InvalidArgumentError(
        'connectionString is required: pass { connectionString: "postgresql://user:password@host:5432/database" } ' +
          'or set DATABASE_URL',
      );
    }
    const nodeId = options.nodeId ?? defaultNodeId(options.cacheDir);
    if (typeof nodeId !== 'string' || nodeId.length === 0) {
      throw new InvalidArgumentError('nodeId must be a non-empty string (one identity per cache directory)');
    }
    this.#connectionString = connectionString;
    this.nodeId = nodeId;
    this.target = describeTarget(connectionString);
    this.#poolSize = positive('poolSize', options.poolSize, 4);
    this.#connectionTimeout = positive('connectionTimeoutMillis', options.connectionTimeoutMillis, 5000);
    this.#statementTimeout = positive('statementTimeoutMillis', options.statementTimeoutMillis, 10_000);
    this.#backoff = positive('unavailableBackoffMillis', options.unavailableBackoffMillis, 2000, true);
    this.#startWhileUnavailable = options.startWhileUnavailable === true;
    this.#reconnectDelay = positive('reconnectDelayMillis', options.reconnectDelayMillis, 500);
    this.#reconnectMaxDelay = positive('reconnectMaxDelayMillis', options.reconnectMaxDelayMillis, 30_000);
    this.#heartbeatExpiry = positive('heartbeatExpiryMillis', options.heartbeatExpiryMillis, 30_000);
    if (options.onConnection !== undefined && typeof options.onConnection !== 'function') {
      throw new InvalidArgumentError('onConnection must be a function');
    }
    this.#onConnection = options.onConnection;
  }

  /**
   * Whether the node is registered in the database: true after a
   * `configure()` that reached it; with `startWhileUnavailable`, false
   * until a background attempt succeeds.
   */
  get connected(): boolean {
    return this.#nodeRef !== undefined;
  }

  /** How long (ms) a node counts as alive after its last heartbeat (`heartbeatExpiryMillis`). */
  get heartbeatExpiryMillis(): number {
    return this.#heartbeatExpiry;
  }

  // ---- lifecycle --------------------------------------------------------------------

  protected async openMetadata(): Promise<void> {
    const pool = new pg.Pool({
      connectionString: this.#connectionString,
      max: this.#poolSize,
      connectionTimeoutMillis: this.#connectionTimeout,
      idleTimeoutMillis: 10_000,
      allowExitOnIdle: true,
      keepAlive: true,
      statement_timeout: this.#statementTimeout,
      query_timeout: this.#statementTimeout + 2000,
      application_name: `image-cache ${this.nodeId}`.slice(0, 63),
    });
    // An idle connection that the server drops (restart, failover, idle kill)
    // is reported here; without a listener it would crash the process. The
    // pool has already discarded it and the next call opens a new one, so
    // this is not a sign that the database is down: nothing else to do.
    pool.on('error', () => undefined);
    try {
      await this.#connectAndRegister(pool);
      this.#pool = pool;
      this.#noteSuccess();
    } catch (error) {
      const kind = classifyPgError(error);
      if (this.#startWhileUnavailable && (kind === 'unavailable' || kind === 'timeout')) {
        // Serve the local files now; connect, migrate and register in the background.
        this.#pool = pool;
        this.#noteFailure(error);
        this.#scheduleReconnect(pool, 1, toCacheError(error, this.#context('configure (connect, migrate the schema, register the node)')));
        return;
      }
      await pool.end().catch(() => undefined);
      throw toCacheError(error, this.#context('configure (connect, migrate the schema, register the node)', true));
    }
  }

  /** Connects one client, migrates the schema and registers this node. */
  async #connectAndRegister(pool: pg.Pool): Promise<void> {
    const client = await pool.connect();
    // A checked-out client reports a dropped connection on itself (between statements).
    let broken: Error | undefined;
    const onError = (error: Error) => {
      broken = error;
    };
    client.on('error', onError);
    try {
      this.#migration = await runMigrations(client);
      this.#nodeRef = await registerNode(client, this.nodeId);
    } catch (error) {
      broken ??= error as Error;
      throw error;
    } finally {
      client.removeListener('error', onError);
      client.release(broken);
    }
  }

  /** Reports a failed connection attempt and schedules the next one (exponential backoff, capped). */
  #scheduleReconnect(pool: pg.Pool, attempt: number, error: CacheError): void {
    const retryInMillis = Math.min(this.#reconnectMaxDelay, this.#reconnectDelay * 2 ** Math.min(attempt - 1, 30));
    this.#reconnectAttempt = attempt;
    this.#report({ state: 'unavailable', attempt, retryInMillis, error });
    this.#reconnectTimer = setTimeout(() => void this.#reconnect(pool, attempt + 1), retryInMillis);
    this.#reconnectTimer.unref();
  }

  async #reconnect(pool: pg.Pool, attempt: number): Promise<void> {
    this.#reconnectTimer = undefined;
    if (this.#pool !== pool) return; // closed meanwhile
    try {
      await this.#connectAndRegister(pool);
    } catch (error) {
      if (this.#pool !== pool) return;
      this.#noteFailure(error);
      this.#scheduleReconnect(pool, attempt, toCacheError(error, this.#context('connect, migrate the schema, register the node')));
      return;
    }
    if (this.#pool !== pool) return;
    this.#noteSuccess();
    this.#report({ state: 'connected', attempt });
  }

  #report(event: PostgresConnectionEvent): void {
    try {
      if (this.#onConnection !== undefined) this.#onConnection(event);
      else if (event.state === 'unavailable') {
        process.emitWarning(`${event.error.message} (attempt ${event.attempt}; next in ${event.retryInMillis} ms)`, { code: 'CACHE_METADATA_UNAVAILABLE' });
      }
    } catch {
      // A listener that throws must not stop the reconnection.
    }
  }

  protected async closeMetadata(): Promise<void> {
    const pool = this.#pool;
    this.#pool = undefined;
    this.#nodeRef = undefined;
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = undefined;
    if (pool === undefined) return;
    // end() waits for every connection to say goodbye; a server that vanished
    // without closing its sockets must not make close() hang.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      pool.end().catch(() => undefined),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, this.#connectionTimeout);
        timer.unref();
      }),
    ]);
    clearTimeout(timer);
  }

  /** What the last `configure()` did to the schema; undefined before it. */
  getMigrationState(): MigrationResult | undefined {
    return this.#migration === undefined ? undefined : { ...this.#migration, applied: [...this.#migration.applied] };
  }

  // ---- database access ------------------------------------------------------------

  #context(operation: string, configuring = false) {
    return {
      driver: this.name,
      operation: `[node ${this.nodeId}] ${operation}`,
      target: this.target,
      statementTimeoutMillis: this.#statementTimeout,
      configuring,
    };
  }

  /** Remembers a connection failure: hits are dropped without a connection attempt for a while. */
  #noteFailure(error: unknown): void {
    if (classifyPgError(error) !== 'unavailable') return;
    this.#lastFailure = error;
    this.#failedAt = Date.now();
    this.#unavailableUntil = this.#failedAt + this.#backoff;
  }

  #noteSuccess(): void {
    this.#unavailableUntil = 0;
    this.#failedAt = 0;
  }

  #openPool(operation: string): pg.Pool {
    const pool = this.#pool;
    if (pool === undefined) {
      throw new CacheStorageError(`[${this.name}] ${operation}: the database connection is closed (driver closed)`);
    }
    return pool;
  }

  /**
   * Runs one statement whose `$1` is this node's `node_reference_id`. When
   * the node's row was deleted behind our back (foreign-key violation), the
   * node is registered again and the statement retried once.
   */
  async #nodeQuery<R extends pg.QueryResultRow>(
    operation: string,
    text: string,
    values: readonly unknown[],
    client?: Queryable,
  ): Promise<pg.QueryResult<R>> {
    const db: Queryable = client ?? this.#openPool(operation);
    if (this.#nodeRef === undefined) throw this.#notRegistered(operation);
    for (let attempt = 0; ; attempt++) {
      try {
        const result = await db.query<R>(text, [this.#nodeRef, ...values]);
        this.#noteSuccess();
        return result;
      } catch (error) {
        if ((error as { code?: string }).code === '23503' && attempt === 0) {
          try {
            this.#nodeRef = await registerNode(db, this.nodeId);
            continue;
          } catch (registerError) {
            error = registerError;
          }
        }
        this.#noteFailure(error);
        throw toCacheError(error, this.#context(operation));
      }
    }
  }

  /** The error of a call that needs this node's row while it is not registered yet ({@link PostgresDriverOptions.startWhileUnavailable}). */
  #notRegistered(operation: string): CacheStorageError {
    const reason = this.#lastFailure instanceof Error ? ` (${this.#lastFailure.message})` : '';
    return new CacheStorageError(
      `[${this.name}] [node ${this.nodeId}] ${operation}: not connected: PostgreSQL at ${this.target} was unreachable when the node started${reason}; ` +
        `the local cache is served meanwhile and the driver keeps reconnecting in the background (attempt ${this.#reconnectAttempt}). Bring the database back.`,
      { cause: this.#lastFailure },
    );
  }

  /** Runs one statement that is not about this node's rows. */
  async #query<R extends pg.QueryResultRow>(operation: string, text: string, values: readonly unknown[]): Promise<pg.QueryResult<R>> {
    const pool = this.#openPool(operation);
    try {
      const result = await pool.query<R>(text, [...values]);
      this.#noteSuccess();
      return result;
    } catch (error) {
      this.#noteFailure(error);
      throw toCacheError(error, this.#context(operation));
    }
  }

  /** Runs `fn` in one transaction on one pooled connection. */
  async #transaction<T>(operation: string, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    const pool = this.#openPool(operation);
    let client: pg.PoolClient;
    try {
      client = await pool.connect();
    } catch (error) {
      this.#noteFailure(error);
      throw toCacheError(error, this.#context(operation));
    }
    // While checked out, a dropped connection emits 'error' on the client itself.
    let broken: unknown;
    const onError = (error: unknown) => {
      broken = error;
      this.#noteFailure(error);
    };
    client.on('error', onError);
    try {
      await client.query('BEGIN');
      const result = await fn(client);
      await client.query('COMMIT');
      this.#noteSuccess();
      return result;
    } catch (error) {
      broken ??= classifyPgError(error) === 'unavailable' ? error : undefined;
      if (broken === undefined) await client.query('ROLLBACK').catch(() => undefined);
      this.#noteFailure(error);
      throw toCacheError(error, this.#context(operation));
    } finally {
      client.removeListener('error', onError);
      client.release(broken === undefined ? undefined : (broken as Error));
    }
  }

  // ---- metadata hooks ---------------------------------------------------------------

  protected async recordCommit(id: ImageId, info: CommitInfo): Promise<void> {
    await this.#nodeQuery(`record the commit of '${id}'`, SQL.upsertCommit, [
      id,
      toTimestamp(info.time),
      info.size,
      info.checksum ?? null,
      info.identity,
    ]);
  }

  /**
   * Counts a completed read. While the database is known to be down (within
   * `unavailableBackoffMillis` of a connection failure) the hit is dropped at
   * once; for a while after that (until a statement succeeds again) it is
   * written in the background, so a read never waits on a database that
   * stopped answering. A hit that cannot be written is reported through the
   * warning hook (`CACHE_HIT_NOT_RECORDED`), never thrown at the reader.
   */
  protected async recordHit(id: ImageId, time: number, file: EntryStat): Promise<void> {
    if (this.#nodeRef === undefined) throw this.#notRegistered(`hit of '${id}' dropped`);
    const now = Date.now();
    if (now < this.#unavailableUntil) {
      const reason = this.#lastFailure instanceof Error ? this.#lastFailure.message : String(this.#lastFailure);
      throw new CacheStorageError(
        `[${this.name}] [node ${this.nodeId}] hit of '${id}' dropped: PostgreSQL at ${this.target} was unreachable ` +
          `moments ago (${reason}); the file was served from the local cache. Bring the database back; ` +
          'hits are counted again as soon as it answers.',
        { cause: this.#lastFailure },
      );
    }
    if (this.#failedAt !== 0) {
      void this.#writeHit(id, time, file).catch((error: unknown) =>
        this.warn({
          code: 'CACHE_HIT_NOT_RECORDED',
          message: `[${this.name}] could not record a hit for '${id}': ${(error as Error).message}`,
          imageId: id,
          cause: error,
        }),
      );
      return;
    }
    await this.#writeHit(id, time, file);
  }

  async #writeHit(id: ImageId, time: number, file: EntryStat): Promise<void> {
    const at = toTimestamp(time);
    const fid = fileIdentity(file);
    const updated = await this.#nodeQuery(`record a hit of '${id}'`, SQL.hit, [id, at, fid, toTimestamp(file.mtime), file.size]);
    if ((updated.rowCount ?? 0) > 0) return;
    // A file without a row (committed while the row could not be written, or by another tool): adopt it with this hit,
    // unless it was deleted while it was being read.
    if (!(await this.dir.exists(id, 'active'))) return;
    await this.#nodeQuery(`record a hit of '${id}'`, SQL.adoptWithHit, [id, at, toTimestamp(file.mtime), file.size, fid]);
  }

  protected async readMetadata(entries: readonly EntryStat[]): Promise<Map<ImageId, ImageMetadata>> {
    const metadata = new Map<ImageId, ImageMetadata>();
    if (entries.length === 0) return metadata;
    const result =
      entries.length <= 1000
        ? await this.#nodeQuery<CachedImageRow>('read metadata', SQL.selectSome, [entries.map((entry) => entry.imageId)])
        : await this.#nodeQuery<CachedImageRow>('list metadata', SQL.selectAll, []);
    for (const row of result.rows) {
      metadata.set(row.image_id, {
        hits: Number(row.hits),
        lastAccessed: fromMicros(row.last_accessed_us),
        lastModified: fromMicros(row.last_modified_us),
        checksum: row.checksum ?? undefined,
        identity: row.file_id ?? undefined,
      });
    }
    return metadata;
  }

  protected override async readHitCount(entry: EntryStat): Promise<number> {
    const result = await this.#nodeQuery<{ hits: string; file_id: string | null }>(
      `read the hit count of '${entry.imageId}'`,
      SQL.selectHits,
      [entry.imageId],
    );
    const row = result.rows[0];
    return row !== undefined && metadataMatches({ identity: row.file_id ?? undefined }, entry) ? Number(row.hits) : 0;
  }

  protected override async readStoredChecksum(entry: EntryStat): Promise<Pick<ImageMetadata, 'checksum' | 'identity'> | undefined> {
    const result = await this.#nodeQuery<{ checksum: string | null; file_id: string | null }>(
      `read the checksum of '${entry.imageId}'`,
      SQL.selectChecksum,
      [entry.imageId],
    );
    const row = result.rows[0];
    return row === undefined ? undefined : { checksum: row.checksum ?? undefined, identity: row.file_id ?? undefined };
  }

  protected async forgetImage(id: ImageId): Promise<void> {
    await this.#nodeQuery(`delete the row of '${id}'`, SQL.deleteOne, [id]);
  }

  protected async forgetAllImages(): Promise<void> {
    await this.#nodeQuery("delete this node's rows", SQL.deleteAll, []);
  }

  /**
   * Deletes this node's rows whose file is gone (re-checking each file first,
   * so a commit by another worker of this node in the meantime keeps its row),
   * adopts files without a row (0 hits, mtime as access and commit time) and
   * corrects stale sizes.
   */
  protected override async reconcile(entries: readonly EntryStat[]): Promise<{ orphanRecords: number; adoptedFiles: number }> {
    const files = new Map(entries.map((entry) => [entry.imageId, entry]));
    const rows = await this.#nodeQuery<{ image_id: string; size: string }>('reconcile (list rows)', SQL.selectSizes, []);
    const known = new Set<string>();
    const candidates: string[] = [];
    const resized: { id: string; size: number }[] = [];
    for (const row of rows.rows) {
      known.add(row.image_id);
      const file = files.get(row.image_id);
      if (file === undefined) candidates.push(row.image_id);
      else if (Number(row.size) !== file.size) resized.push({ id: row.image_id, size: file.size });
    }
    const orphans: string[] = [];
    for (const id of candidates) if (!(await this.dir.exists(id, 'active'))) orphans.push(id);
    const adopt = entries.filter((entry) => !known.has(entry.imageId));
    let orphanRecords = 0;
    let adoptedFiles = 0;
    if (orphans.length > 0) {
      orphanRecords = (await this.#nodeQuery('reconcile (delete orphan rows)', SQL.deleteSome, [orphans])).rowCount ?? 0;
    }
    if (resized.length > 0) {
      await this.#nodeQuery('reconcile (fix sizes)', SQL.fixSizes, [resized.map((r) => r.id), resized.map((r) => r.size)]);
    }
    if (adopt.length > 0) {
      const result = await this.#nodeQuery('reconcile (adopt files)', SQL.adoptMany, [
        adopt.map((entry) => entry.imageId),
        adopt.map((entry) => toTimestamp(entry.mtime)),
        adopt.map((entry) => entry.size),
        adopt.map((entry) => fileIdentity(entry)),
      ]);
      adoptedFiles = result.rowCount ?? 0;
    }
    return { orphanRecords, adoptedFiles };
  }

  // ---- cluster-wide queries ---------------------------------------------------------

  /**
   * Which nodes hold the image: the identities of every node with a row for
   * it, sorted (Glance's `get_cached_nodes`). Empty when no node has it.
   * Validates the id (`InvalidImageIdError`).
   */
  async getCachedNodes(id: ImageId): Promise<string[]> {
    this.guard(id);
    const result = await this.#query<{ node_reference_url: string }>(`list the nodes caching '${id}'`, SQL.cachedNodes, [id]);
    return result.rows.map((row) => row.node_reference_url);
  }

  /** Every image cached on any node, sorted by id: which nodes hold it, total hits, latest access. */
  async getClusterImages(): Promise<ClusterImage[]> {
    this.guardOpen();
    const result = await this.#query<{
      image_id: string;
      nodes: string[];
      hits: string;
      last_accessed_us: string;
      last_modified_us: string;
      size: string;
    }>('list the images of the cluster', SQL.clusterImages, []);
    return result.rows
      .map((row) => ({
        imageId: row.image_id,
        nodes: row.nodes,
        hits: Number(row.hits),
        lastAccessed: fromMicros(row.last_accessed_us),
        lastModified: fromMicros(row.last_modified_us),
        size: Number(row.size),
      }))
      .sort((a, b) => compareIds(a.imageId, b.imageId));
  }

  /**
   * Says that this node serves at `url` (its advertised URL, where peers
   * fetch its images: `GET <url>/images/<id>`) and is alive now. Call it
   * every few seconds (well within `heartbeatExpiryMillis`); a server does.
   * Registers the node again if its row was forgotten meanwhile.
   *
   * @throws CacheStorageError while the database is unreachable (or before the node is registered).
   */
  async heartbeat(url: string): Promise<void> {
    this.guardOpen();
    if (typeof url !== 'string' || !/^https?:\/\/[^\s]+$/i.test(url)) {
      throw new InvalidArgumentError(`the advertised URL must be an http(s) URL, got ${JSON.stringify(url)}`);
    }
    await this.#nodeQuery('send a heartbeat', SQL.heartbeat, [url.replace(/\/+$/, '')]);
  }

  /** Marks this node `stopped` (a graceful shutdown): peers stop asking it at once, without waiting for the expiry. */
  async leave(): Promise<void> {
    this.guardOpen();
    await this.#nodeQuery('mark the node stopped', SQL.leave, []);
  }

  /**
   * The live peers (heartbeat within `heartbeatExpiryMillis`, not stopped,
   * with an advertised URL; never this node) that hold `id`, in random order
   * (so that fetches spread over the copies). Works before this node is
   * registered. Validates the id.
   */
  async getPeerCopies(id: ImageId): Promise<PeerCopy[]> {
    this.guard(id);
    const result = await this.#query<{ node_id: string; advertise_url: string; checksum: string | null; size: string }>(
      `list the peers holding '${id}'`,
      SQL.peerCopies,
      [this.nodeId, id, this.#heartbeatExpiry],
    );
    return result.rows.map((row) => ({ nodeId: row.node_id, url: row.advertise_url, checksum: row.checksum ?? undefined, size: Number(row.size) }));
  }

  /**
   * The whole cluster: every registered node with its health, advertised
   * URL and totals, and every cached image with the nodes holding it (size,
   * hits, last access and health of each copy).
   */
  async getClusterStatus(): Promise<ClusterStatus> {
    this.guardOpen();
    const nodeRows = await this.#query<{
      node_id: string;
      advertise_url: string | null;
      state: string | null;
      heartbeat_us: string | null;
      started_us: string | null;
      fresh: boolean | null;
      images: string;
      bytes: string;
      hits: string;
    }>('list the nodes of the cluster', SQL.clusterNodes, [this.#heartbeatExpiry]);
    const copyRows = await this.#query<{ image_id: string; node_id: string; size: string; hits: string; checksum: string | null; last_accessed_us: string }>(
      'list the images of the cluster',
      SQL.clusterCopies,
      [],
    );
    const nodes: ClusterNode[] = nodeRows.rows
      .map((row) => ({
        nodeId: row.node_id,
        url: row.advertise_url ?? undefined,
        health: (row.state === null ? 'unknown' : row.state === 'stopped' ? 'stopped' : row.fresh === true ? 'alive' : 'dead') as NodeHealth,
        lastHeartbeat: row.heartbeat_us === null ? undefined : fromMicros(row.heartbeat_us),
        startedAt: row.started_us === null ? undefined : fromMicros(row.started_us),
        images: Number(row.images),
        bytes: Number(row.bytes),
        hits: Number(row.hits),
        self: row.node_id === this.nodeId,
      }))
      .sort((a, b) => compareIds(a.nodeId, b.nodeId));
    const health = new Map(nodes.map((node) => [node.nodeId, node.health]));
    const images = new Map<string, ClusterImageCopies>();
    for (const row of copyRows.rows) {
      let image = images.get(row.image_id);
      if (image === undefined) images.set(row.image_id, (image = { imageId: row.image_id, size: 0, hits: 0, copies: [] }));
      const size = Number(row.size);
      const hits = Number(row.hits);
      image.size = Math.max(image.size, size);
      image.hits += hits;
      image.copies.push({
        nodeId: row.node_id,
        health: health.get(row.node_id) ?? 'unknown',
        size,
        hits,
        lastAccessed: fromMicros(row.last_accessed_us),
        checksum: row.checksum ?? undefined,
      });
    }
    for (const image of images.values()) image.copies.sort((a, b) => compareIds(a.nodeId, b.nodeId));
    return { nodes, images: [...images.values()].sort((a, b) => compareIds(a.imageId, b.imageId)) };
  }

  /**
   * Removes a node and all its rows (e.g. a host that was decommissioned, or
   * whose identity changed), so {@link getCachedNodes} stops reporting it.
   * Touches no files. Returns how many image rows went with it.
   */
  async forgetNode(nodeId: string): Promise<number> {
    this.guardOpen();
    if (typeof nodeId !== 'string' || nodeId.length === 0) throw new InvalidArgumentError('nodeId must be a non-empty string');
    const result = await this.#query<{ n: string }>(`forget node ${nodeId}`, SQL.forgetNode, [nodeId]);
    if (nodeId === this.nodeId) this.#nodeRef = await registerNode(this.#openPool('re-register this node'), this.nodeId);
    return Number(result.rows[0]?.n ?? 0);
  }

  /**
   * Imports a sqlite `cache.db` (ours, or Glance's `cached_images` table) of
   * this node's cache directory into the central tables, for the rows whose
   * file exists. Idempotent: rows are upserted, keeping the larger hit count
   * and the later times, so running it twice (or after the node already
   * served reads) changes nothing more. The sqlite file is only read.
   *
   * @param dbPath - the sqlite file; relative paths resolve against the cache directory. Default `cache.db`.
   * @throws BadDriverConfigurationError when better-sqlite3 is not installed or the file is not a cache database.
   */
  async importFromSqlite(dbPath = 'cache.db'): Promise<SqliteImportReport> {
    this.guardOpen();
    const path = resolve(this.cacheDir, dbPath);
    const { rows, report } = await readSqliteCache(path, this.name, this.dir);
    if (rows.length === 0) return report;
    await this.#transaction(`import ${path}`, async (client) => {
      for (let start = 0; start < rows.length; start += 1000) {
        const chunk = rows.slice(start, start + 1000);
        await this.#nodeQuery(
          `import ${path}`,
          SQL.importMany,
          [
            chunk.map((r) => r.imageId),
            chunk.map((r) => toTimestamp(r.lastAccessed)),
            chunk.map((r) => toTimestamp(r.lastModified)),
            chunk.map((r) => r.size),
            chunk.map((r) => r.hits),
            chunk.map((r) => r.checksum),
          ],
          client,
        );
      }
    });
    return report;
  }
}

async function registerNode(client: Queryable, nodeId: string): Promise<string> {
  const result = await client.query<{ node_reference_id: string }>(SQL.registerNode, [nodeId]);
  const id = result.rows[0]?.node_reference_id;
  if (id === undefined) throw new Error(`registering node ${nodeId} returned no node_reference_id`);
  return String(id);
}

function positive(name: string, value: number | undefined, fallback: number, allowZero = false): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || (!allowZero && value === 0)) {
    throw new InvalidArgumentError(`${name} must be a ${allowZero ? 'non-negative' : 'positive'} number, got ${String(value)}`);
  }
  return value;
}
