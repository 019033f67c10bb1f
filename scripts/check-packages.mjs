// `pnpm check:packages [dir...]`: checks every public package of the workspace
// as npm users will install it, from the tarball `pnpm pack` makes (no network):
//   - publint --strict: package.json against the packed files (errors and warnings fail;
//     suggestions are printed only),
//   - attw --pack <dir> --profile esm-only: the types resolve for every entry point
//     (ESM-only packages: CommonJS resolutions are not checked),
//   - the tarball itself: LICENSE, README.md and package.json are in it, every source
//     and declaration map points at a source file that is in it too (so a stale
//     dist/ file whose source is gone fails), and package.json declares `repository`
//     (with this directory) and `sideEffects`.
// Public = every workspace package without `"private": true`. With arguments, checks
// only those package directories (relative to the repository root); `--list` prints
// the public package directories as a JSON array and checks nothing. Prints each
// package's result, then `check-packages: N passed, N failed`; exits 1 if any failed.
// Needs the packages built (`pnpm build`).
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, normalize, posix, relative } from 'node:path';

const root = join(import.meta.dirname, '..');
const bin = (name) => join(root, 'node_modules', '.bin', name);

/** Workspace package directories, from the `packages:` globs of pnpm-workspace.yaml (`dir` or `dir/*`). */
function workspaceDirs() {
  const yaml = readFileSync(join(root, 'pnpm-workspace.yaml'), 'utf8');
  const block = /^packages:\s*\n((?:[ \t]+-[^\n]*\n?)+)/m.exec(yaml)?.[1] ?? '';
  const dirs = [];
  for (const line of block.split('\n')) {
    const glob = /^\s*-\s*['"]?([^'"#\s]+)['"]?/.exec(line)?.[1];
    if (glob === undefined) continue;
    if (glob.endsWith('/*')) {
      const parent = glob.slice(0, -2);
      for (const entry of readdirSync(join(root, parent), { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
        if (entry.isDirectory() && existsSync(join(root, parent, entry.name, 'package.json'))) dirs.push(`${parent}/${entry.name}`);
      }
    } else if (existsSync(join(root, glob, 'package.json'))) {
      dirs.push(glob);
    }
  }
  return dirs;
}

function manifestOf(dir) {
  return JSON.parse(readFileSync(join(root, dir, 'package.json'), 'utf8'));
}

function run(command, args, cwd) {
  const result = spawnSync(command, args, {
    cwd,
    encoding: 'utf8',
    env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: '0' },
    maxBuffer: 64 << 20,
  });
  const output = `${result.stdout ?? ''}${result.stderr ?? ''}`.trim();
  if (result.error !== undefined) return { ok: false, output: `${command}: ${result.error.message}\n${output}` };
  return { ok: result.status === 0, output };
}

/** Own checks on the packed file list (pnpm pack, as `pnpm publish` would pack it). */
function checkTarball(dir, manifest) {
  const problems = [];
  const packed = run('pnpm', ['pack', '--dry-run', '--json'], join(root, dir));
  if (!packed.ok) return { ok: false, output: `pnpm pack --dry-run failed:\n${packed.output}` };
  let files;
  try {
    const json = packed.output.slice(packed.output.indexOf('{'));
    files = new Set(JSON.parse(json).files.map((f) => f.path));
  } catch (error) {
    return { ok: false, output: `pnpm pack --dry-run printed no file list (${error.message}):\n${packed.output}` };
  }
  for (const required of ['package.json', 'LICENSE', 'README.md']) {
    if (!files.has(required)) problems.push(`${required} is not in the tarball`);
  }
  const repo = manifest.repository;
  if (typeof repo !== 'object' || repo === null || repo.type !== 'git' || typeof repo.url !== 'string') {
    problems.push('package.json has no `repository: { type: "git", url, directory }`');
  } else if (repo.directory !== dir) {
    problems.push(`repository.directory is ${JSON.stringify(repo.directory)}, expected ${JSON.stringify(dir)}`);
  }
  if (!('sideEffects' in manifest)) problems.push('package.json does not declare `sideEffects`');

  let maps = 0;
  for (const file of [...files].sort()) {
    if (/\.(?:d\.ts|js)$/.test(file) && file.startsWith('dist/') && !files.has(`${file}.map`)) {
      problems.push(`${file} is packed without its ${posix.basename(file)}.map`);
    }
    if (!file.endsWith('.map')) continue;
    maps += 1;
    let map;
    try {
      map = JSON.parse(readFileSync(join(root, dir, file), 'utf8'));
    } catch (error) {
      problems.push(`${file}: not a JSON source map (${error.message})`);
      continue;
    }
    for (const source of map.sources ?? []) {
      const target = posix.normalize(posix.join(posix.dirname(file), map.sourceRoot ?? '', source));
      if (!files.has(target)) problems.push(`${file} points at ${source}, which is not in the tarball (stale build output?)`);
    }
  }
  const summary = `${files.size} files, ${maps} maps resolve to packed sources`;
  return { ok: problems.length === 0, output: problems.length === 0 ? summary : problems.join('\n') };
}

const all = workspaceDirs().filter((dir) => manifestOf(dir).private !== true);
if (process.argv[2] === '--list') {
  // For the test that runs this script once per package (examples/test/packages.test.ts).
  console.log(JSON.stringify(all));
  process.exit(0);
}
const requested = process.argv.slice(2).map((d) => relative(root, join(root, normalize(d))).split('\\').join('/'));
for (const dir of requested) {
  if (!all.includes(dir)) {
    console.error(`check-packages: ${dir} is not a public workspace package (public: ${all.join(', ')})`);
    process.exit(2);
  }
}
const dirs = requested.length > 0 ? requested : all;

let passed = 0;
let failed = 0;
for (const dir of dirs) {
  const manifest = manifestOf(dir);
  const cwd = join(root, dir);
  const missing = Object.values(manifest.exports ?? {})
    .flatMap((entry) => (typeof entry === 'string' ? [entry] : Object.values(entry)))
    .filter((target) => typeof target === 'string' && !existsSync(join(cwd, target)));
  const steps = [];
  if (missing.length > 0) {
    steps.push(['build', { ok: false, output: `not built: ${missing.join(', ')} missing (run pnpm build)` }]);
  } else {
    steps.push(['publint', run(bin('publint'), ['--strict'], cwd)]);
    steps.push(['attw', run(bin('attw'), ['--pack', '.', '--profile', 'esm-only', '--no-color'], cwd)]);
    steps.push(['tarball', checkTarball(dir, manifest)]);
  }
  const ok = steps.every(([, step]) => step.ok);
  if (ok) passed += 1;
  else failed += 1;
  console.log(`\n=== ${manifest.name} (${dir}): ${ok ? 'ok' : 'FAILED'}`);
  for (const [name, step] of steps) {
    console.log(`--- ${name}: ${step.ok ? 'ok' : 'FAILED'}`);
    if (step.output !== '') console.log(step.output.replace(/^/gm, '    '));
  }
}
console.log(`\ncheck-packages: ${passed} passed, ${failed} failed (${dirs.join(', ')})`);
process.exit(failed > 0 ? 1 : 0);
