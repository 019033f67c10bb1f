/**
 * `@cache/driver-sqlite`: image-cache metadata in SQLite (better-sqlite3),
 * compatible with Glance's sqlite driver.
 *
 * @packageDocumentation
 */
export { SqliteDriver, type SqliteDriverOptions, type SqliteJournalMode } from './sqlite-driver.js';
export { CREATE_LRU_INDEX, CREATE_TABLE, REQUIRED_COLUMNS, type CachedImageRow } from './sqlite-schema.js';
