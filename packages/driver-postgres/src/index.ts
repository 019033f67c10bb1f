/**
 * `@cache/driver-postgres`: image-cache metadata of many nodes in one
 * PostgreSQL database, in the shape of Glance's `centralized_db` schema; the
 * bytes stay in each node's local cache directory.
 *
 * @packageDocumentation
 */
export {
  PostgresDriver,
  defaultNodeId,
  type ClusterImage,
  type ClusterImageCopies,
  type ClusterNode,
  type ClusterStatus,
  type NodeHealth,
  type PeerCopy,
  type PostgresConnectionEvent,
  type PostgresDriverOptions,
} from './postgres-driver.js';
export { importSqliteCache, type ImportSqliteCacheOptions } from './import.js';
export type { SqliteImportReport } from './sqlite-import.js';
export {
  CREATE_MIGRATIONS_TABLE,
  MIGRATIONS,
  MIGRATIONS_TABLE,
  MIGRATION_LOCK_KEY,
  SCHEMA_VERSION,
  type Migration,
  type MigrationResult,
} from './schema.js';
export { classifyPgError, type PgFailureKind } from './pg-errors.js';
