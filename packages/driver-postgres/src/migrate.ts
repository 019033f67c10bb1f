import type pg from 'pg';
import { CREATE_MIGRATIONS_TABLE, MIGRATIONS, MIGRATIONS_TABLE, MIGRATION_LOCK_KEY, type Migration, type MigrationResult } from './schema.js';

export type { MigrationResult } from './schema.js';

/** How long (ms) one node may wait for another node's migration, or run its own. */
const MIGRATION_TIMEOUT_MS = 120_000;

/** A migration statement failed; keeps the SQLSTATE `code` of the cause for classification. */
class MigrationError extends Error {
  readonly code: string | undefined;
  constructor(message: string, cause: unknown) {
    super(message, { cause });
    this.code = (cause as { code?: string } | null)?.code;
  }
}

/**
 * The applied schema version, or undefined when there is no version table yet
 * (one round trip; outside a transaction, the "no such table" error is harmless).
 */
async function currentVersion(client: Pick<pg.ClientBase, 'query'>): Promise<number | undefined> {
  try {
    const result = await client.query<{ version: number | null }>(`SELECT max(version) AS version FROM ${MIGRATIONS_TABLE}`);
    return result.rows[0]?.version ?? 0;
  } catch (error) {
    if ((error as { code?: string }).code === '42P01') return undefined;
    throw error;
  }
}

/**
 * Brings the schema to the newest version of {@link MIGRATIONS}. Without a
 * lock when it is already current (the common case: one query); otherwise in
 * one transaction holding the advisory lock {@link MIGRATION_LOCK_KEY}, so
 * that when many nodes start at once exactly one applies each migration and
 * the others wait and find it done. Each applied version is recorded in
 * {@link MIGRATIONS_TABLE}. A schema newer than this driver knows is
 * accepted (migrations only add), so older nodes keep running during a
 * rolling upgrade.
 *
 * @param client - a connected client (not in a transaction).
 * @param migrations - the migrations to apply (default: this driver's).
 */
export async function runMigrations(
  client: pg.ClientBase,
  migrations: readonly Migration[] = MIGRATIONS,
): Promise<MigrationResult> {
  const latest = migrations[migrations.length - 1]?.version ?? 0;
  const before = await currentVersion(client);
  if (before !== undefined && before >= latest) return { from: before, to: before, applied: [] };
  const timeout = { query_timeout: MIGRATION_TIMEOUT_MS + 5000 };
  await client.query('BEGIN');
  try {
    await client.query(`SET LOCAL statement_timeout = ${MIGRATION_TIMEOUT_MS}`);
    await client.query({ text: `SELECT pg_advisory_xact_lock(${MIGRATION_LOCK_KEY})`, ...timeout });
    await client.query(CREATE_MIGRATIONS_TABLE);
    const from = (await currentVersion(client)) ?? 0;
    const applied: number[] = [];
    for (const migration of migrations) {
      if (migration.version <= from) continue;
      try {
        await client.query({ text: migration.sql, ...timeout });
      } catch (error) {
        throw new MigrationError(
          `migration ${migration.version} (${migration.name}) failed: ${(error as Error).message}` +
            ((error as { code?: string }).code === '42P07'
              ? '. Tables of that name already exist but were not created by this driver (Glance\'s own database?): ' +
                'give the cache its own database, or its own schema with ?options=-csearch_path%3Dimage_cache in the connection string'
              : ''),
          error,
        );
      }
      await client.query(`INSERT INTO ${MIGRATIONS_TABLE} (version, name) VALUES ($1, $2)`, [migration.version, migration.name]);
      applied.push(migration.version);
    }
    await client.query('COMMIT');
    return { from, to: Math.max(from, latest), applied };
  } catch (error) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw error;
  }
}
