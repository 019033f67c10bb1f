import { spawn, type ChildProcess } from 'node:child_process';

/** One operation a child process runs against its own driver instance. */
export type ChildOp =
  | { op: 'write'; id: string; size: number; seed: number; checksum?: boolean }
  /** `driver.writeSmallImage(id, makeBytes(size, seed), { checksum })`; the outcome is `'ok'` when it resolved true, `'false'` when false. */
  | { op: 'small-write'; id: string; size: number; seed: number; checksum?: boolean }
  | { op: 'read'; id: string }
  | { op: 'delete'; id: string }
  | { op: 'queue'; id: string };

/** What one operation did: `ok`, or the error's `code` (or message when it has none). */
export type ChildOutcome = 'ok' | string;

/** A child's program: its operations, run one after another or all at once. */
export interface ChildProgram {
  ops: readonly ChildOp[];
  mode: 'sequential' | 'parallel';
  /**
   * After the operations: `'close'` closes the driver and exits;
   * `'hold'` prints `READY` and waits, for the parent to SIGKILL it.
   */
  then: 'close' | 'hold';
}

/**
 * The child's code: plain ESM that loads the driver from the module the kit
 * was given (`createDriver(cacheDir)`), configures it and runs the program.
 * Bytes are made exactly as `makeBytes(size, seed)` makes them.
 */
const CHILD_SCRIPT = `
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
const [moduleUrl, dir, programJson] = process.argv.slice(1);
const program = JSON.parse(programJson);
const makeBytes = (size, seed) => {
  const out = Buffer.alloc(size);
  let counter = 0;
  for (let offset = 0; offset < size; ) {
    const block = createHash('sha256').update(seed + ':' + counter++).digest();
    block.copy(out, offset, 0, Math.min(block.length, size - offset));
    offset += block.length;
  }
  return out;
};
const mod = await import(moduleUrl);
const create = mod.createDriver ?? mod.default?.createDriver ?? mod.default;
if (typeof create !== 'function') throw new Error(moduleUrl + ' exports no createDriver(cacheDir) function');
const driver = await create(dir);
await driver.configure();
const outcome = async (fn) => { try { await fn(); return 'ok'; } catch (error) { return String(error?.code ?? error?.message ?? error); } };
const run = (op) => outcome(async () => {
  if (op.op === 'write') {
    const data = makeBytes(op.size, op.seed);
    const writer = await driver.openForWrite(op.id);
    if (op.checksum) writer.setChecksum('sha256:' + createHash('sha256').update(data).digest('hex'));
    const chunks = [];
    for (let o = 0; o < data.length; o += 65536) chunks.push(data.subarray(o, o + 65536));
    await pipeline(Readable.from(chunks.length ? chunks : [data]), writer);
  } else if (op.op === 'small-write') {
    const data = makeBytes(op.size, op.seed);
    const checksum = op.checksum ? 'sha256:' + createHash('sha256').update(data).digest('hex') : undefined;
    if (!(await driver.writeSmallImage(op.id, data, checksum === undefined ? {} : { checksum }))) throw new Error('false');
  } else if (op.op === 'read') {
    const stream = await driver.openForRead(op.id);
    for await (const _ of stream) { /* drain */ }
  } else if (op.op === 'delete') {
    await driver.deleteCachedImage(op.id);
  } else if (op.op === 'queue') {
    await driver.queueImage(op.id);
  } else throw new Error('unknown op ' + op.op);
});
const results = [];
if (program.mode === 'parallel') results.push(...(await Promise.all(program.ops.map(run))));
else for (const op of program.ops) results.push(await run(op));
process.stdout.write('RESULT ' + JSON.stringify(results) + '\\n');
if (program.then === 'hold') {
  process.stdout.write('READY\\n');
  setInterval(() => undefined, 60_000);
} else {
  await driver.close();
}
`;

/** A running child: its outcomes once it reported them, and the process. */
export interface RunningChild {
  readonly process: ChildProcess;
  /** Resolves with one outcome per operation once the child printed them (rejects when it exits first). */
  readonly results: Promise<ChildOutcome[]>;
  /** Resolves when the child has exited (with its code, or the signal that ended it). */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>;
}

/**
 * Starts a process that loads the driver from `driverModule` on `cacheDir`
 * and runs `program`. Never depends on timing: the parent waits on what the
 * child prints and on its exit.
 */
export function startChild(driverModule: string, cacheDir: string, program: ChildProgram): RunningChild {
  const child = spawn(process.execPath, ['--input-type=module', '-e', CHILD_SCRIPT, driverModule, cacheDir, JSON.stringify(program)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (text: string) => {
    stderr += text;
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve) => {
    child.once('close', (code, signal) => resolve({ code, signal, stderr }));
  });
  const results = new Promise<ChildOutcome[]>((resolve, reject) => {
    const onData = (text: string) => {
      stdout += text;
      const line = stdout.split('\n').find((l) => l.startsWith('RESULT '));
      const ready = program.then === 'hold' ? /^READY$/m.test(stdout) : true;
      if (line !== undefined && ready) {
        child.stdout.off('data', onData);
        resolve(JSON.parse(line.slice('RESULT '.length)) as ChildOutcome[]);
      }
    };
    child.stdout.on('data', onData);
    void exited.then(({ code, signal }) =>
      reject(
        new Error(
          `a child process running the driver from ${driverModule} exited (code ${code}, signal ${signal}) before reporting; stderr:\n${stderr.slice(-4000)}`,
        ),
      ),
    );
  });
  results.catch(() => undefined);
  return { process: child, results, exited };
}

/** Runs `program` in a child process to its end and returns its outcomes; fails when the child fails. */
export async function runChild(driverModule: string, cacheDir: string, program: Omit<ChildProgram, 'then'>): Promise<ChildOutcome[]> {
  const child = startChild(driverModule, cacheDir, { ...program, then: 'close' });
  const results = await child.results;
  const { code, stderr } = await child.exited;
  if (code !== 0) throw new Error(`a child process running the driver exited with code ${code}; stderr:\n${stderr.slice(-4000)}`);
  return results;
}

/** Runs `program` in a child process, then SIGKILLs it while its driver is still open; returns its outcomes. */
export async function runChildThenKill(driverModule: string, cacheDir: string, program: Omit<ChildProgram, 'then'>): Promise<ChildOutcome[]> {
  const child = startChild(driverModule, cacheDir, { ...program, then: 'hold' });
  let results: ChildOutcome[];
  try {
    results = await child.results;
  } finally {
    child.process.kill('SIGKILL');
  }
  const { signal } = await child.exited;
  if (signal !== 'SIGKILL') throw new Error(`the child was to be ended by SIGKILL, but it ended with ${String(signal)}`);
  return results;
}
