// @ts-check
/**
 * A reference third-party driver for the conformance kit's mutation suite:
 * plain JavaScript (ESM + JSDoc), built on `@cache/core/driver` the way an
 * outside author would write one, and loaded with plain `node` by the child
 * processes the kit spawns.
 *
 * Metadata lives in an append-only JSON-lines journal, `.journal.jsonl`, in
 * the cache directory (a dot-file: ids never start with '.', so it is never
 * listed as an image). Every change is one line appended with a single
 * write() on an O_APPEND descriptor, so lines of concurrent processes never
 * interleave; the state is the fold of every line, re-read on every metadata
 * read, so it is shared by every process and hit counts are exact across
 * processes. Lines:
 *
 *   {"op":"commit","id","time","checksum"?,"identity"}   a committed entry (0 hits)
 *   {"op":"hit","id","time","identity","mtime"}          a completed read
 *   {"op":"forget","id"}  {"op":"forgetAll"}             deletes, rollbacks, clean()
 *   {"op":"adopt","id","time","identity"}                clean() found a file with no record
 *
 * A hit whose identity differs from the record's (the file was replaced by
 * someone else) restarts the record at 1 hit, without the old digest; a hit
 * on an id with no record creates one. An unterminated last line (a write
 * torn by a crash) is ignored.
 *
 * The bug to inject comes from `KIT_MUTANT` (see {@link MUTANTS}); unset,
 * this is a correct driver that passes the whole kit. Each bug is an
 * `if (bug === '<name>')` branch in the driver's own code.
 */
import { open, readFile, rename, rm, writeFile, appendFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  BadDriverConfigurationError,
  CacheStorageError,
  DirectoryCacheDriver,
  fileIdentity,
  isErrnoError,
  metadataMatches,
  nowSeconds,
  sameFile,
  storageError,
} from '@cache/core/driver';

/** @typedef {import('@cache/core/driver').EntryStat} EntryStat */
/** @typedef {import('@cache/core/driver').CommitInfo} CommitInfo */
/** @typedef {import('@cache/core/driver').ImageMetadata} ImageMetadata */
/** @typedef {import('@cache/core/driver').DriverSupports} DriverSupports */
/** @typedef {import('@cache/core/driver').DirectoryDriverOptions} DirectoryDriverOptions */
/** @typedef {import('node:fs/promises').FileHandle} FileHandle */
/** @typedef {import('node:stream').Readable} Readable */

/**
 * One record of the folded journal.
 * @typedef {{ hits: number, lastAccessed: number, lastModified: number, checksum?: string | undefined, identity?: string | undefined }} JournalRecord
 */

/**
 * One journal line.
 * @typedef {{ op: string, id?: string, time?: number, mtime?: number, checksum?: string, identity?: string, hits?: number, record?: JournalRecord }} JournalLine
 */

/**
 * Where the fold keeps records: a Map, or (one mutant) a plain object.
 * @typedef {{ get(id: string): JournalRecord | undefined, set(id: string, r: JournalRecord): void, has(id: string): boolean, delete(id: string): void, clear(): void, ids(): string[] }} Store
 */

/** The journal's file name in the cache directory. */
export const JOURNAL_NAME = '.journal.jsonl';

/** @typedef {'persistence' | 'deletion' | 'identity' | 'reconcile' | 'digest' | 'concurrency' | 'lru' | 'protocol' | 'lifecycle' | 'small-write'} MutantKind */

/**
 * Kinds of seeded bugs:
 * - persistence: what an instance recorded is not there after close/reopen or a SIGKILL;
 * - deletion: a delete, delete-all or rollback leaves (or wrongly drops) metadata;
 * - identity: metadata of a replaced file is used for the new one, or a file without a record never counts;
 * - reconcile: clean() removes, adopts or counts the wrong records;
 * - digest: stored checksums missing, for the wrong id, or outliving their entry;
 * - concurrency: hits lost under concurrent reads in one process or across processes;
 * - lru: the times the driver returns break least-recently-used order (ordering itself is core's);
 * - protocol: ids, the read/write protocol and the driver's own files in the cache directory;
 * - lifecycle: configure()/close() and the writability probe;
 * - small-write: writeSmallImage() does not commit as openForWrite() and end(bytes) would.
 * @type {Readonly<Record<MutantKind, string>>}
 */
export const KINDS = Object.freeze({
  persistence: 'metadata survives close/reopen and SIGKILL',
  deletion: 'deletes and rollbacks leave no metadata (and keep what they must)',
  identity: 'metadata belongs to the file it was recorded for',
  reconcile: 'clean() removes orphans, adopts files, counts both',
  digest: 'stored digests: kept, for the right id, gone with the entry',
  concurrency: 'no hit lost under concurrency, in one process or several',
  lru: 'the access and commit times behind least-recently-used order',
  protocol: 'ids, read/write protocol, driver files in the cache directory',
  lifecycle: 'configure(), close(), the writability probe',
  'small-write': 'writeSmallImage() commits as openForWrite() would, or refuses and changes nothing',
});

/**
 * Every seeded bug: name -> { kind, description }. Each is one plausible
 * mistake of a driver author, injected with `KIT_MUTANT=<name>`.
 * @type {Readonly<Record<string, { kind: MutantKind, description: string }>>}
 */
export const MUTANTS = Object.freeze({
  // small-write
  'small-true-when-cached': { kind: 'small-write', description: 'writeSmallImage() of a cached id resolves true without committing anything (the caller thinks its bytes are cached)' },
  'small-commits-over-writer': { kind: 'small-write', description: "writeSmallImage() of an id an openForWrite writer has writes the active file itself (temp file + rename) and records it: it commits over the writer, whose commit then replaces it" },
  'small-checksum-dropped': { kind: 'small-write', description: 'writeSmallImage() ignores options.checksum: the entry is committed without its stored digest' },
  'small-stale-hits': { kind: 'small-write', description: 'writeSmallImage() of a re-cached id resumes the hit count the id had when it was deleted (kept in memory by forgetImage)' },
  'small-leaves-incomplete': { kind: 'small-write', description: 'writeSmallImage() also leaves a copy of the bytes in incomplete/ (written there, then copied to the active file instead of renamed)' },
  'small-no-metadata': { kind: 'small-write', description: 'writeSmallImage() writes the file but records no commit line: no digest, and the entry has no metadata of its own' },
  'small-ignores-view-offset': { kind: 'small-write', description: 'writeSmallImage() writes from the start of bytes.buffer, ignoring byteOffset: a view into a larger buffer commits the wrong bytes' },
  // persistence
  'compact-on-open': { kind: 'persistence', description: 'openMetadata() compacts the journal by re-emitting each live record as a commit line: hits and last access reset on every reopen' },
  'journal-truncated-on-open': { kind: 'persistence', description: "openMetadata() opens the journal with flag 'w' instead of 'a': every configure() wipes the metadata, and appends lose O_APPEND" },
  'access-not-persisted': { kind: 'persistence', description: 'hit lines carry no time; last access is kept in an in-memory map, so after reopen (or in another process) lastAccessed falls back to the commit time' },
  'hits-buffered': { kind: 'persistence', description: 'hits are batched in memory and appended only on close(): other processes never see them and a SIGKILL loses them' },
  // deletion
  'forget-noop': { kind: 'deletion', description: 'forgetImage() does nothing: deleteCachedImage() and prune leave the record behind for clean() to find' },
  'forget-all-noop': { kind: 'deletion', description: 'forgetAllImages() only clears an in-process cache: deleteAllCachedImages() leaves every record in the journal' },
  'delete-all-own-ids': { kind: 'deletion', description: 'forgetAllImages() writes forget lines only for ids this instance committed: records written by other processes (or before a restart) survive' },
  'rollback-keeps-stale': { kind: 'deletion', description: 'prepareRollback() is overridden without calling super: a failed write of an id whose file vanished keeps its stale record' },
  'rollback-forgets-committed': { kind: 'deletion', description: 'prepareRollback() forgets the id unconditionally: a failed rewrite of a cached id wipes the committed entry\'s hits and digest' },
  // identity
  'ignore-identity': { kind: 'identity', description: 'no file identity is stored or compared: a file replaced under its id inherits the old hits and digest' },
  'hit-without-identity': { kind: 'identity', description: 'hit lines carry no identity, so hits on a replaced file are added to the old file\'s record (which core then ignores): the new file stays at 0 hits' },
  'replaced-inherits-hits': { kind: 'identity', description: 'a hit on a replaced file takes over the record (new identity, no digest) but keeps counting from the old hits' },
  'replaced-inherits-digest': { kind: 'identity', description: 'a hit on a replaced file restarts the record at 1 hit but copies the old checksum over' },
  'hit-on-missing-record-dropped': { kind: 'identity', description: 'a hit on an id with no record is dropped: files committed by another process or by Glance never count hits until clean() adopts them' },
  // reconcile
  'reconcile-no-orphans': { kind: 'reconcile', description: 'reconcile() never removes records whose file is gone (and reports 0 orphans)' },
  'reconcile-no-adopt': { kind: 'reconcile', description: 'reconcile() never adopts files without a record (and reports 0 adopted)' },
  'reconcile-miscount': { kind: 'reconcile', description: 'reconcile() reports every listed file as adopted, not only the ones it adopted' },
  'reconcile-resets-hits': { kind: 'reconcile', description: 'reconcile() rebuilds the journal from the files (forgetAll + adopt each): every clean() resets all hits to 0' },
  'adopt-time-now': { kind: 'reconcile', description: 'adopted files get the current time instead of their mtime: a file found on disk looks most recently used' },
  // stored digest
  'checksum-never-stored': { kind: 'digest', description: 'commit lines never carry the checksum although supports.storedChecksum is true' },
  'checksum-last-commit': { kind: 'digest', description: 'readStoredChecksum() takes the last commit line of the journal without matching its id: the digest of another entry (or none)' },
  'checksum-survives-delete': { kind: 'digest', description: 'digests live in a side table that forget lines do not clear and only a verified commit overwrites: a deleted id cached again unverified gets the old digest' },
  'checksum-survives-rewrite': { kind: 'digest', description: 'a commit line without a checksum keeps the previous record\'s (merge instead of replace): an unverified rewrite of a cached id keeps the old digest' },
  'checksum-not-persisted': { kind: 'digest', description: 'the checksum is kept in an in-memory map, not in the journal: gone after reopen, unseen by other processes' },
  // concurrency
  'hit-count-in-line': { kind: 'concurrency', description: 'recordHit() reads the count and appends the new absolute count (read-modify-write): concurrent reads, in one process or several, lose hits' },
  'rewrite-whole-file': { kind: 'concurrency', description: 'recordHit() re-reads the journal, updates the record and rewrites the whole file: concurrent writers overwrite each other\'s lines' },
  'batch-flush-race': { kind: 'concurrency', description: 'hits are batched while a flush is in flight, and the batch is reset after the write instead of before: hits that arrive during a flush are dropped' },
  'cached-state': { kind: 'concurrency', description: 'the folded journal is cached in memory after configure() and only updated by this instance\'s own appends: other processes\' hits and deletes are invisible' },
  // lru
  'hit-no-access-time': { kind: 'lru', description: 'a hit increments the count but leaves lastAccessed at the commit time: reads never refresh recency' },
  'lastmodified-is-lastaccessed': { kind: 'lru', description: 'readMetadata() returns lastAccessed as lastModified: reads move the commit time and break tie-breaking by commit' },
  'access-time-whole-seconds': { kind: 'lru', description: 'hit times are stored as whole seconds (Math.floor): reads within one second tie, and a read right after the commit is older than it' },
  'commit-time-whole-seconds': { kind: 'lru', description: 'commit times are stored as whole seconds: entries committed within one second tie and are evicted by id instead of commit order' },
  'hit-uses-atime': { kind: 'lru', description: "a hit records the file's atime from the stat taken before the read (relatime: the write time) instead of the time of the read" },
  'access-age-not-time': { kind: 'lru', description: 'readMetadata() returns the age of the last access (now - lastAccessed) instead of its time: recency order is reversed' },
  'positional-metadata-join': { kind: 'lru', description: 'readMetadata() pairs records with entries by position (journal order vs the id-sorted listing) instead of by id' },
  // ids, read/write protocol, driver files
  'commit-counts-hit': { kind: 'protocol', description: 'recordCommit() starts the count at 1 (the write counted as an access)' },
  'hit-op-typo': { kind: 'protocol', description: "recordHit() appends 'read' lines after a rename but the fold still expects 'hit': hits are never counted" },
  'hit-on-open': { kind: 'protocol', description: 'the hit is appended when a read is opened (to survive a crash mid-read), not when it completes: abandoned reads count' },
  'fast-path-skips-guard': { kind: 'protocol', description: 'a getHitCount() fast path skips this.guard(id): hostile ids reach the filesystem and it answers after close()' },
  'commit-throws-some-ids': { kind: 'protocol', description: 'recordCommit() checks ids against its own ASCII pattern and throws for valid ids with spaces, colons or non-ASCII characters' },
  'object-as-map': { kind: 'protocol', description: "the fold keeps records in a plain object: an id such as 'constructor' or 'toString' with no record of its own resolves to an Object.prototype member, so a dropped-in file of that name counts NaN hits and is never adopted" },
  'prepare-commit-sidecar': { kind: 'protocol', description: 'prepareCommit() writes a crash-recovery sidecar <id>.pending (no dot prefix) that nothing removes: it is listed as an image' },
  'journal-not-hidden': { kind: 'protocol', description: "the journal is named 'journal.jsonl' (no dot prefix, not in reservedNames): it is listed as an image and an id can clobber it" },
  'journal-in-subdir': { kind: 'protocol', description: 'the journal is kept in incomplete/ to keep it out of listings: it looks like a download in progress and clean() reaps it' },
  // lifecycle
  'open-ignores-unwritable': { kind: 'lifecycle', description: 'openMetadata() swallows a journal it cannot open (read-only directory) and keeps metadata in memory instead of refusing with BadDriverConfigurationError' },
  'close-deletes-journal': { kind: 'lifecycle', description: 'closeMetadata() deletes the journal as if it were a lock file: everything is lost at close()' },
  'lazy-journal-enoent': { kind: 'lifecycle', description: 'openMetadata() does not create the journal and reads do not expect it missing: every metadata read on a fresh cache fails with ENOENT' },
  'probe-in-queue': { kind: 'lifecycle', description: 'openMetadata() probes writability with queue/write-test and leaves it there: it shows up as a queued image' },
});

/** Whether a hit's recorded identity is that of the record's file (unknown on either side: yes). */
function sameIdentity(/** @type {string | undefined} */ recorded, /** @type {string | undefined} */ seen) {
  if (recorded === undefined || seen === undefined) return true;
  const match = /^(\d+):(\d+):(\d+)$/.exec(seen);
  if (match === null) return recorded === seen;
  return sameFile(recorded, { ino: BigInt(match[1] ?? '0'), size: Number(match[2]), mtimeNs: BigInt(match[3] ?? '0') });
}

/** @returns {Store} */
function newStore(/** @type {string} */ bug) {
  if (bug === 'object-as-map') {
    /** @type {Record<string, JournalRecord>} */
    const o = {};
    return {
      get: (id) => o[id],
      set: (id, r) => {
        o[id] = r;
      },
      has: (id) => Boolean(o[id]),
      delete: (id) => {
        delete o[id];
      },
      clear: () => {
        for (const id of Object.keys(o)) delete o[id];
      },
      ids: () => Object.keys(o),
    };
  }
  /** @type {Map<string, JournalRecord>} */
  const map = new Map();
  return {
    get: (id) => map.get(id),
    set: (id, r) => void map.set(id, r),
    has: (id) => map.has(id),
    delete: (id) => void map.delete(id),
    clear: () => map.clear(),
    ids: () => [...map.keys()],
  };
}

/**
 * Parses journal text: one JSON object per '\n'-terminated line. An
 * unterminated last line (a torn write) and unparsable lines are skipped.
 * @returns {JournalLine[]}
 */
function parseJournal(/** @type {string} */ text) {
  const parts = text.split('\n');
  parts.pop(); // '' after the last '\n', or a torn line
  /** @type {JournalLine[]} */
  const lines = [];
  for (const part of parts) {
    if (part === '') continue;
    try {
      lines.push(JSON.parse(part));
    } catch {
      // A torn line followed by later appends: skip it.
    }
  }
  return lines;
}

/**
 * The state of a journal: records, plus the digest side table one mutant keeps.
 * @typedef {{ store: Store, digests: Map<string, string | undefined> }} State
 */

/** @returns {State} */
function emptyState(/** @type {string} */ bug) {
  return { store: newStore(bug), digests: new Map() };
}

/** Applies one journal line to the state. */
function applyLine(/** @type {State} */ state, /** @type {JournalLine} */ line, /** @type {string} */ bug) {
  const { store, digests } = state;
  const id = line.id ?? '';
  switch (line.op) {
    case 'commit': {
      const previous = store.get(id);
      let checksum = line.checksum;
      if (bug === 'checksum-survives-rewrite') checksum = line.checksum ?? previous?.checksum;
      if (bug === 'checksum-survives-delete') {
        if (line.checksum !== undefined) digests.set(id, line.checksum);
        checksum = digests.get(id);
      }
      const time = line.time ?? 0;
      store.set(id, { hits: line.hits ?? 0, lastAccessed: time, lastModified: time, checksum, identity: line.identity });
      return;
    }
    case 'hit': {
      const record = store.get(id);
      const time = line.time ?? line.mtime ?? 0;
      if (record !== undefined && sameIdentity(record.identity, line.identity)) {
        record.hits += 1;
        if (line.time !== undefined && bug !== 'hit-no-access-time') record.lastAccessed = line.time;
        return;
      }
      if (record !== undefined && bug === 'replaced-inherits-hits') {
        store.set(id, { hits: record.hits + 1, lastAccessed: time, lastModified: line.mtime ?? time, identity: line.identity });
        return;
      }
      if (record === undefined && bug === 'hit-on-missing-record-dropped') return;
      // No record, or one of a file since replaced: this file starts with this hit, and no digest.
      let checksum;
      if (record !== undefined && bug === 'replaced-inherits-digest') checksum = record.checksum;
      if (bug === 'checksum-survives-delete') checksum = digests.get(id);
      store.set(id, { hits: 1, lastAccessed: time, lastModified: line.mtime ?? time, checksum, identity: line.identity });
      return;
    }
    case 'hits': {
      // Absolute counts ('hit-count-in-line').
      const record = store.get(id);
      const time = line.time ?? line.mtime ?? 0;
      if (record !== undefined && sameIdentity(record.identity, line.identity)) {
        record.hits = line.hits ?? record.hits;
        record.lastAccessed = time;
      } else {
        store.set(id, { hits: line.hits ?? 1, lastAccessed: time, lastModified: line.mtime ?? time, identity: line.identity });
      }
      return;
    }
    case 'set': {
      // Whole records ('rewrite-whole-file').
      if (line.record !== undefined) store.set(id, { ...line.record });
      return;
    }
    case 'forget':
      store.delete(id);
      if (bug !== 'checksum-survives-delete') digests.delete(id);
      return;
    case 'forgetAll':
      store.clear();
      if (bug !== 'checksum-survives-delete') digests.clear();
      return;
    case 'adopt': {
      if (store.has(id)) return;
      const time = line.time ?? 0;
      const checksum = bug === 'checksum-survives-delete' ? digests.get(id) : undefined;
      store.set(id, { hits: 0, lastAccessed: time, lastModified: time, checksum, identity: line.identity });
      return;
    }
    default:
      // Unknown ops (a newer writer): ignored.
      return;
  }
}

/** One line of journal text. */
function lineText(/** @type {JournalLine} */ line) {
  return `${JSON.stringify(line)}\n`;
}

/**
 * The journal driver. `supports` is what a correct journal driver promises;
 * every mutant claims the same (the bug is the lie the kit must catch).
 */
export class JournalDriver extends DirectoryCacheDriver {
  name = 'journal';
  /** @type {DriverSupports} */
  supports = Object.freeze({ persistent: true, storedChecksum: true, crossProcessHits: 'exact', metadataStore: 'separate' });

  /** @type {string} */
  #bug;
  /** @type {string} */
  #journalPath;
  /** @type {FileHandle | undefined} */
  #fd;
  /** 'open-ignores-unwritable': lines kept in memory when the journal could not be opened. @type {JournalLine[] | undefined} */
  #memoryLines;
  /** 'hits-buffered': hit lines not yet appended. @type {JournalLine[]} */
  #pendingHits = [];
  /** 'access-not-persisted': id -> last access time, this instance only. @type {Map<string, number>} */
  #accessTimes = new Map();
  /** 'checksum-not-persisted': id -> checksum, this instance only. @type {Map<string, string | undefined>} */
  #checksums = new Map();
  /** 'cached-state': the fold, kept after configure(). @type {State | undefined} */
  #cached;
  /** 'small-stale-hits': hits of deleted ids; 'small-no-metadata': ids whose commit is not recorded. @type {Map<string, number>} */
  #smallHits = new Map();
  /** @type {Set<string>} */
  #smallUnrecorded = new Set();
  /** 'delete-all-own-ids': ids this instance committed. @type {Set<string>} */
  #committedHere = new Set();
  /** 'batch-flush-race': the batch and its flush in flight. @type {JournalLine[]} */
  #batch = [];
  /** @type {Promise<void> | undefined} */
  #flushing;

  /**
   * @param {DirectoryDriverOptions} options
   * @param {string} [mutant] - the bug to inject (default `process.env.KIT_MUTANT`; '' for none)
   */
  constructor(options, mutant = process.env.KIT_MUTANT ?? '') {
    if (mutant !== '' && !Object.hasOwn(MUTANTS, mutant)) {
      throw new Error(`journal driver: unknown mutant '${mutant}' (KIT_MUTANT); known: ${Object.keys(MUTANTS).join(', ')}`);
    }
    super(options);
    this.#bug = mutant;
    this.#journalPath =
      mutant === 'journal-not-hidden'
        ? join(this.cacheDir, 'journal.jsonl')
        : mutant === 'journal-in-subdir'
          ? join(this.cacheDir, 'incomplete', 'journal.jsonl')
          : join(this.cacheDir, JOURNAL_NAME);
  }

  /** The bug this instance carries ('' for none). */
  get mutant() {
    return this.#bug;
  }

  /** Absolute path of the journal. */
  get journalPath() {
    return this.#journalPath;
  }

  // ---- the journal ----------------------------------------------------------------

  /** Appends lines with one write() on the O_APPEND descriptor. */
  async #append(/** @type {JournalLine[]} */ lines) {
    if (lines.length === 0) return;
    const bug = this.#bug;
    if (this.#memoryLines !== undefined) {
      this.#memoryLines.push(...lines);
      return;
    }
    const text = lines.map(lineText).join('');
    if (bug === 'lazy-journal-enoent') {
      try {
        await appendFile(this.#journalPath, text);
      } catch (error) {
        throw storageError('append to', this.#journalPath, error);
      }
      return;
    }
    const fd = this.#fd;
    if (fd === undefined) throw new CacheStorageError(`[${this.name}] the journal ${this.#journalPath} is not open`, { path: this.#journalPath });
    try {
      await fd.write(text);
    } catch (error) {
      throw storageError('append to', this.#journalPath, error);
    }
    if (bug === 'cached-state' && this.#cached !== undefined) for (const line of lines) applyLine(this.#cached, line, bug);
  }

  /** Reads and folds the whole journal (plus what this instance keeps in memory, for some mutants). */
  async #readState() {
    const bug = this.#bug;
    if (bug === 'cached-state' && this.#cached !== undefined) return this.#cached;
    /** @type {JournalLine[]} */
    let lines;
    if (this.#memoryLines !== undefined) {
      lines = this.#memoryLines;
    } else {
      let text = '';
      try {
        text = await readFile(this.#journalPath, 'utf8');
      } catch (error) {
        // A journal removed behind our back reads as empty; the lazy mutant never expects it missing.
        if (!isErrnoError(error, 'ENOENT') || bug === 'lazy-journal-enoent') throw storageError('read', this.#journalPath, error);
      }
      lines = parseJournal(text);
    }
    const state = emptyState(bug);
    for (const line of lines) applyLine(state, line, bug);
    if (bug === 'hits-buffered') for (const line of this.#pendingHits) applyLine(state, line, bug);
    if (bug === 'access-not-persisted') {
      for (const [id, time] of this.#accessTimes) {
        const record = state.store.get(id);
        if (record !== undefined) record.lastAccessed = time;
      }
    }
    if (bug === 'checksum-not-persisted') {
      for (const [id, checksum] of this.#checksums) {
        const record = state.store.get(id);
        if (record !== undefined) record.checksum = checksum;
      }
    }
    return state;
  }

  // ---- lifecycle ------------------------------------------------------------------

  async openMetadata() {
    const bug = this.#bug;
    if (bug === 'probe-in-queue') {
      await writeFile(join(this.cacheDir, 'queue', 'write-test'), 'probe');
    }
    if (bug !== 'lazy-journal-enoent') {
      try {
        const fd = await open(this.#journalPath, bug === 'journal-truncated-on-open' ? 'w' : 'a', 0o644);
        const info = await fd.stat().catch(async (/** @type {unknown} */ error) => {
          await fd.close();
          throw error;
        });
        if (!info.isFile()) {
          await fd.close();
          throw Object.assign(new Error('not a regular file'), { code: 'EISDIR' });
        }
        this.#fd = fd;
      } catch (error) {
        if (bug === 'open-ignores-unwritable') {
          // "Degrade gracefully": keep metadata in memory.
          this.#memoryLines = [];
        } else {
          throw new BadDriverConfigurationError(
            this.name,
            `cannot open the journal ${this.#journalPath} for appending: ${/** @type {Error} */ (error).message}. ` +
              'Give the process write access to the cache directory.',
            { path: this.#journalPath, cause: error },
          );
        }
      }
    }
    if (bug === 'compact-on-open') {
      const state = await this.#readState();
      const lines = state.store.ids().map((id) => {
        const record = /** @type {JournalRecord} */ (state.store.get(id));
        return { op: 'commit', id, time: record.lastModified, checksum: record.checksum, identity: record.identity };
      });
      await writeFile(this.#journalPath, lines.map(lineText).join(''));
    }
    if (bug === 'cached-state') {
      this.#cached = undefined;
      this.#cached = await this.#readState();
    }
  }

  async closeMetadata() {
    const bug = this.#bug;
    if (bug === 'hits-buffered' && this.#pendingHits.length > 0) {
      const pending = this.#pendingHits;
      this.#pendingHits = [];
      await this.#append(pending).catch(() => undefined);
    }
    await this.#flushing?.catch(() => undefined);
    const fd = this.#fd;
    this.#fd = undefined;
    await fd?.close().catch(() => undefined);
    this.#cached = undefined;
    if (bug === 'close-deletes-journal') await rm(this.#journalPath, { force: true });
  }

  // ---- metadata hooks -------------------------------------------------------------

  /**
   * @param {string} id
   * @param {CommitInfo} info
   */
  async recordCommit(id, info) {
    const bug = this.#bug;
    if (bug === 'commit-throws-some-ids' && !/^[A-Za-z0-9._-]+$/.test(id)) {
      throw new CacheStorageError(`[${this.name}] cannot record '${id}': the journal accepts ids of letters, digits, '.', '_' and '-' only`);
    }
    /** @type {JournalLine} */
    const line = {
      op: 'commit',
      id,
      time: bug === 'commit-time-whole-seconds' ? Math.floor(info.time) : info.time,
      checksum: info.checksum,
      identity: info.identity,
    };
    if (bug === 'checksum-never-stored') delete line.checksum;
    if (bug === 'checksum-not-persisted') {
      delete line.checksum;
      this.#checksums.set(id, info.checksum);
    }
    if (bug === 'ignore-identity') delete line.identity;
    if (bug === 'commit-counts-hit') line.hits = 1;
    if (bug === 'small-no-metadata' && this.#smallUnrecorded.delete(id)) return;
    if (bug === 'small-stale-hits' && this.#smallHits.has(id)) {
      line.hits = this.#smallHits.get(id);
      this.#smallHits.delete(id);
    }
    if (bug === 'access-not-persisted') this.#accessTimes.delete(id);
    if (bug === 'delete-all-own-ids') this.#committedHere.add(id);
    await this.#append([line]);
  }

  /**
   * @param {string} id
   * @param {number} time
   * @param {EntryStat} file
   */
  async recordHit(id, time, file) {
    if (this.#bug === 'hit-on-open') return; // counted when the read was opened
    await this.#recordHitNow(id, time, file);
  }

  /**
   * @param {string} id
   * @param {number} time
   * @param {EntryStat} file
   */
  async #recordHitNow(id, time, file) {
    const bug = this.#bug;
    let at = time;
    if (bug === 'access-time-whole-seconds') at = Math.floor(time);
    if (bug === 'hit-uses-atime') at = file.atime;
    /** @type {JournalLine} */
    const line = { op: 'hit', id, time: at, identity: fileIdentity(file), mtime: file.mtime };
    if (bug === 'ignore-identity' || bug === 'hit-without-identity') delete line.identity;
    if (bug === 'hit-op-typo') line.op = 'read';
    if (bug === 'access-not-persisted') {
      delete line.time;
      this.#accessTimes.set(id, at);
    }
    if (bug === 'hits-buffered') {
      this.#pendingHits.push(line);
      return;
    }
    if (bug === 'hit-count-in-line') {
      const record = (await this.#readState()).store.get(id);
      const hits = record !== undefined && metadataMatches(record, file) ? record.hits + 1 : 1;
      await this.#append([{ ...line, op: 'hits', hits }]);
      return;
    }
    if (bug === 'rewrite-whole-file') {
      const state = await this.#readState();
      applyLine(state, line, bug);
      const text = state.store
        .ids()
        .map((rid) => lineText({ op: 'set', id: rid, record: state.store.get(rid) }))
        .join('');
      try {
        await writeFile(this.#journalPath, text);
      } catch (error) {
        throw storageError('rewrite', this.#journalPath, error);
      }
      return;
    }
    if (bug === 'batch-flush-race') {
      this.#batch.push(line);
      this.#flushing ??= (async () => {
        try {
          await this.#append(this.#batch);
          this.#batch = [];
        } finally {
          this.#flushing = undefined;
        }
      })();
      await this.#flushing;
      return;
    }
    await this.#append([line]);
  }

  /**
   * @param {readonly EntryStat[]} entries
   * @returns {Promise<Map<string, ImageMetadata>>}
   */
  async readMetadata(entries) {
    const bug = this.#bug;
    const { store } = await this.#readState();
    /** @type {Map<string, ImageMetadata>} */
    const result = new Map();
    if (bug === 'positional-metadata-join') {
      const records = store.ids().map((id) => /** @type {JournalRecord} */ (store.get(id)));
      entries.forEach((entry, i) => {
        const record = records[i];
        if (record !== undefined) result.set(entry.imageId, this.#toMetadata(record));
      });
      return result;
    }
    for (const entry of entries) {
      const record = store.get(entry.imageId);
      if (record !== undefined) result.set(entry.imageId, this.#toMetadata(record));
    }
    return result;
  }

  /** @returns {ImageMetadata} */
  #toMetadata(/** @type {JournalRecord} */ record) {
    const bug = this.#bug;
    return {
      hits: record.hits,
      lastAccessed: bug === 'access-age-not-time' ? nowSeconds() - record.lastAccessed : record.lastAccessed,
      lastModified: bug === 'lastmodified-is-lastaccessed' ? record.lastAccessed : record.lastModified,
      checksum: record.checksum,
      identity: record.identity,
    };
  }

  /**
   * @param {EntryStat} entry
   * @returns {Promise<Pick<ImageMetadata, 'checksum' | 'identity'> | undefined>}
   */
  async readStoredChecksum(entry) {
    if (this.#bug === 'checksum-last-commit') {
      const text = await readFile(this.#journalPath, 'utf8').catch(() => '');
      const lines = parseJournal(text);
      for (let i = lines.length - 1; i >= 0; i--) {
        const line = /** @type {JournalLine} */ (lines[i]);
        if (line.op === 'commit') return { checksum: line.checksum, identity: fileIdentity(entry) };
      }
      return undefined;
    }
    const record = (await this.#readState()).store.get(entry.imageId);
    return record === undefined ? undefined : { checksum: record.checksum, identity: record.identity };
  }

  async forgetImage(/** @type {string} */ id) {
    const bug = this.#bug;
    if (bug === 'forget-noop') return;
    if (bug === 'small-stale-hits') {
      const record = (await this.#readState()).store.get(id);
      if (record !== undefined) this.#smallHits.set(id, record.hits);
    }
    this.#accessTimes.delete(id);
    this.#checksums.delete(id);
    this.#committedHere.delete(id);
    // Deleting an unknown id touches nothing on disk, the journal included.
    if (!(await this.#readState()).store.has(id)) return;
    await this.#append([{ op: 'forget', id }]);
  }

  async forgetAllImages() {
    const bug = this.#bug;
    this.#accessTimes.clear();
    this.#checksums.clear();
    if (bug === 'forget-all-noop') {
      this.#cached = undefined;
      return;
    }
    if (bug === 'delete-all-own-ids') {
      const ids = [...this.#committedHere];
      this.#committedHere.clear();
      await this.#append(ids.map((id) => ({ op: 'forget', id })));
      return;
    }
    if ((await this.#readState()).store.ids().length === 0) return;
    await this.#append([{ op: 'forgetAll' }]);
  }

  /**
   * @param {string} id
   * @param {string} incompletePath
   * @param {Error} reason
   */
  async prepareRollback(id, incompletePath, reason) {
    const bug = this.#bug;
    if (bug === 'rollback-keeps-stale') return; // overridden to log, without calling super
    if (bug === 'rollback-forgets-committed') {
      await this.forgetImage(id);
      return;
    }
    await super.prepareRollback(id, incompletePath, reason);
  }

  /**
   * @param {string} id
   * @param {string} incompletePath
   * @param {CommitInfo} info
   */
  async prepareCommit(id, incompletePath, info) {
    if (this.#bug === 'prepare-commit-sidecar') {
      await writeFile(join(this.cacheDir, `${id}.pending`), JSON.stringify({ id, incompletePath, ...info }));
    }
  }

  /**
   * Deletes records whose file is gone and adopts files without a record (0 hits, mtime as times).
   * @param {readonly EntryStat[]} entries
   */
  async reconcile(entries) {
    const bug = this.#bug;
    const { store } = await this.#readState();
    const present = new Set(entries.map((entry) => entry.imageId));
    /** @type {JournalLine[]} */
    const lines = [];
    let orphanRecords = 0;
    let adoptedFiles = 0;
    if (bug !== 'reconcile-no-orphans') {
      for (const id of store.ids()) {
        if (present.has(id)) continue;
        lines.push({ op: 'forget', id });
        orphanRecords++;
      }
    }
    if (bug === 'reconcile-resets-hits') {
      // "Rebuild from the files": forget everything, adopt every file.
      lines.length = 0;
      lines.push({ op: 'forgetAll' });
    }
    if (bug !== 'reconcile-no-adopt') {
      for (const entry of entries) {
        const known = store.has(entry.imageId);
        if (known && bug !== 'reconcile-resets-hits') continue;
        lines.push({
          op: 'adopt',
          id: entry.imageId,
          time: bug === 'adopt-time-now' ? nowSeconds() : entry.mtime,
          identity: bug === 'ignore-identity' ? undefined : fileIdentity(entry),
        });
        if (!known) adoptedFiles++;
      }
    }
    if (bug === 'reconcile-miscount') adoptedFiles = entries.length;
    await this.#append(lines);
    return { orphanRecords, adoptedFiles };
  }

  // ---- public overrides -----------------------------------------------------------

  /**
   * Small commits from memory: the base class's, with the seeded bugs of kind 'small-write'.
   * @param {string} id
   * @param {Uint8Array} bytes
   * @param {import('@cache/core').WriteSmallImageOptions} [options]
   * @returns {Promise<boolean>}
   */
  async writeSmallImage(id, bytes, options = {}) {
    const bug = this.#bug;
    if (!bug.startsWith('small-')) return super.writeSmallImage(id, bytes, options);
    this.guard(id);
    if (bug === 'small-true-when-cached' && (await this.isCached(id))) return true;
    if (bug === 'small-commits-over-writer' && (await this.isBeingCached(id))) {
      // "The incomplete file must be a leftover": write the active file directly.
      const temp = join(this.cacheDir, `.small-${process.pid}-${Date.now()}`);
      await writeFile(temp, bytes);
      await rename(temp, this.getImageFilepath(id));
      const file = await this.dir.statFile(id, 'active');
      if (file === undefined) return false;
      await this.recordCommit(id, { size: file.size, time: nowSeconds(), checksum: options.checksum, identity: fileIdentity(file) });
      return true;
    }
    if (bug === 'small-checksum-dropped') return super.writeSmallImage(id, bytes, { ...options, checksum: undefined });
    if (bug === 'small-ignores-view-offset' && bytes instanceof Uint8Array) {
      return super.writeSmallImage(id, new Uint8Array(bytes.buffer, 0, bytes.byteLength), options);
    }
    if (bug === 'small-no-metadata') this.#smallUnrecorded.add(id);
    const committed = await super.writeSmallImage(id, bytes, options);
    this.#smallUnrecorded.delete(id);
    if (bug === 'small-leaves-incomplete' && committed) await writeFile(this.getImageFilepath(id, 'incomplete'), bytes);
    return committed;
  }

  /**
   * Fast path: one stat and one journal read.
   * @param {string} id
   */
  async getHitCount(id) {
    if (this.#bug !== 'fast-path-skips-guard') this.guard(id);
    const entry = await this.dir.statFile(id, 'active');
    if (entry === undefined) return 0;
    return this.readHitCount(entry);
  }

  /**
   * @param {string} id
   * @param {import('@cache/core/driver').ReadOptions} [options]
   * @returns {Promise<Readable>}
   */
  async openForRead(id, options) {
    const stream = await super.openForRead(id, options);
    if (this.#bug === 'hit-on-open') {
      const file = await this.dir.statFile(id, 'active');
      if (file !== undefined) await this.#recordHitNow(id, nowSeconds(), file);
    }
    return stream;
  }
}

/**
 * Creates the driver on `cacheDir`, with the bug named by `KIT_MUTANT` (none when unset).
 * @param {string} cacheDir
 * @param {{ mutant?: string }} [options]
 */
export function createDriver(cacheDir, options = {}) {
  return new JournalDriver({ cacheDir }, options.mutant ?? process.env.KIT_MUTANT ?? '');
}
