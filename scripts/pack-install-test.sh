#!/usr/bin/env bash
# The packages as a stranger gets them: `pnpm pack` every public package of the
# workspace (pnpm rewrites `workspace:` specifiers to versions), inspect each
# tarball, then, in a scratch project outside the repo, copy
# examples/driver-template, install @cache/core and @cache/conformance from the
# tarballs with plain npm (no workspace, no links), check that the install
# compiles nothing, that `@cache/core` and `@cache/core/driver` resolve, build
# the template with tsc and run the whole conformance kit against it. Last, all
# tarballs are installed together in a second scratch project (without install
# scripts) to check that npm resolves every `@cache/*` dependency from the
# tarballs, that every export of every package resolves for node and for tsc.
#
# Usage: scripts/pack-install-test.sh [--build] [--keep]
#   --build  run `pnpm build` in the repo first (otherwise dist/ must be current)
#   --keep   keep the scratch directory (it is also kept when a step fails)
#
# Output: one line per step, then `kit: N passed, N failed, N skipped`
# (the conformance kit's cases in the scratch project) and, last,
# `pack-install-test: OK` or `pack-install-test: FAILED (<step>)`.
# Exit status 0 only when every step passed.
#
# Network: npm downloads the third-party dependencies (vitest, typescript, ...)
# on the first run; later runs use ~/.npm (--prefer-offline).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build=0
keep=0
for arg in "$@"; do
  case "$arg" in
    --build) build=1 ;;
    --keep) keep=1 ;;
    -h | --help) sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "pack-install-test: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

started=$SECONDS
work="$(mktemp -d "${TMPDIR:-/tmp}/pack-install-test.XXXXXX")"
tarballs="$work/tarballs"
project="$work/driver-template"
everything="$work/all-packages"
fakebin="$work/no-compiler"
mkdir -p "$tarballs" "$project" "$everything" "$fakebin"
step="setup"
ok=0
finish() {
  local status=$?
  if [[ $ok == 1 && $keep == 0 ]]; then
    rm -rf "$work"
  else
    echo "pack-install-test: scratch directory kept at $work"
  fi
  if [[ $ok == 1 ]]; then
    echo "pack-install-test: OK in $((SECONDS - started)) s"
  else
    echo "pack-install-test: FAILED ($step)"
    [[ $status == 0 ]] && status=1
  fi
  exit "$status"
}
trap finish EXIT

say() { printf '[%4ds] %s\n' "$((SECONDS - started))" "$*"; }

# Whatever the caller's environment holds for the repo's own test run must not
# reach the scratch projects: the repo's JSON report directory, workspace npm
# settings, node options.
unset TEST_RESULTS_DIR NODE_OPTIONS npm_config_workspace npm_config_workspaces INIT_CWD || true
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false npm_config_loglevel=warn
# vitest: no interactive UI, no colours in the output we parse.
export CI=true NO_COLOR=1 FORCE_COLOR=0

# ---------------------------------------------------------------------------
step="build"
if [[ $build == 1 ]]; then
  say "building the workspace (pnpm build)"
  (cd "$root" && TURBO_TELEMETRY_DISABLED=1 pnpm build --output-logs=errors-only)
fi

# ---------------------------------------------------------------------------
step="pack"
packages=()
for manifest in "$root"/packages/*/package.json "$root"/conformance/package.json; do
  dir="$(dirname "$manifest")"
  if node -e 'process.exit(require(process.argv[1]).private === true ? 0 : 1)' "$manifest"; then continue; fi
  if [[ ! -d "$dir/dist" ]]; then
    echo "pack-install-test: ${dir#"$root"/} has no dist/: build first (pnpm build, or pass --build)" >&2
    exit 1
  fi
  packages+=("$dir")
done
say "packing ${#packages[@]} public packages into $tarballs"
for dir in "${packages[@]}"; do
  # --json prints the tarball's name and file list; the list is checked below.
  (cd "$dir" && pnpm pack --pack-destination "$tarballs" --json) >"$tarballs/$(basename "$dir").pack.json"
done

# ---------------------------------------------------------------------------
step="inspect tarballs"
say "inspecting the tarballs"
node --input-type=module - "$root" "$tarballs" "${packages[@]}" <<'NODE'
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { basename, join, relative } from 'node:path';

const [root, tarballs, ...dirs] = process.argv.slice(2);
const errors = [];
const warnings = [];
const DEP_FIELDS = ['dependencies', 'optionalDependencies', 'peerDependencies', 'devDependencies'];

/** Every path string an `exports` value points at. */
function targets(value) {
  if (typeof value === 'string') return [value];
  if (value === null || typeof value !== 'object') return [];
  return Object.values(value).flatMap(targets);
}

for (const dir of dirs) {
  const where = relative(root, dir);
  const pack = JSON.parse(readFileSync(join(tarballs, `${basename(dir)}.pack.json`), 'utf8'));
  const tarball = pack.filename;
  const files = new Set(execFileSync('tar', ['-tzf', tarball], { encoding: 'utf8' }).split('\n').filter(Boolean).map((f) => f.replace(/^package\//, '')));
  const manifest = JSON.parse(execFileSync('tar', ['-xzOf', tarball, 'package/package.json'], { encoding: 'utf8' }));
  const name = manifest.name;
  const problem = (list, text) => list.push(`${name} (${where}): ${text}`);

  for (const field of DEP_FIELDS) {
    for (const [dep, spec] of Object.entries(manifest[field] ?? {})) {
      if (/^(workspace|catalog|link|file|portal):/.test(String(spec))) problem(errors, `${field}.${dep} is "${spec}" in the packed package.json`);
    }
  }
  const wanted = new Map();
  for (const target of targets(manifest.exports)) wanted.set(target, 'exports');
  for (const field of ['main', 'types', 'typings', 'module']) if (typeof manifest[field] === 'string') wanted.set(manifest[field], field);
  const bins = typeof manifest.bin === 'string' ? { [name]: manifest.bin } : (manifest.bin ?? {});
  for (const [command, target] of Object.entries(bins)) wanted.set(target, `bin.${command}`);
  for (const [target, field] of wanted) {
    if (target.includes('*')) continue;
    const path = target.replace(/^\.\//, '');
    if (!files.has(path)) problem(errors, `${field} points at ${target}, which is not in the tarball`);
  }
  for (const [command, target] of Object.entries(bins)) {
    const path = target.replace(/^\.\//, '');
    if (!files.has(path)) continue;
    const head = execFileSync('tar', ['-xzOf', tarball, `package/${path}`], { encoding: 'utf8' }).slice(0, 64);
    if (!head.startsWith('#!')) problem(errors, `bin ${command} (${target}) has no #! line`);
  }
  if (manifest.exports !== undefined && typeof manifest.exports === 'object' && !('./package.json' in manifest.exports)) {
    problem(warnings, 'exports has no "./package.json" entry (tools that read the manifest through require.resolve fail)');
  }
  if (![...files].some((f) => /^readme(\.md)?$/i.test(f))) problem(warnings, 'no README in the tarball');
  if (![...files].some((f) => /^(licen[cs]e|copying)(\.md|\.txt)?$/i.test(f))) problem(warnings, 'no LICENSE file in the tarball');
  if (manifest.license === undefined) problem(warnings, 'package.json has no "license"');
  const tests = [...files].filter((f) => /(^|\/)(test|__tests__)\/|\.test\.(js|d\.ts)$/.test(f));
  if (tests.length > 0) problem(warnings, `ships test files: ${tests.slice(0, 5).join(', ')}${tests.length > 5 ? ', ...' : ''}`);
  // Build output whose source is gone (tsc -b never deletes outputs): stale files a user would import.
  const srcDir = join(dir, 'src');
  if (existsSync(srcDir)) {
    const stale = [...files]
      .filter((f) => /^dist\/.*\.js$/.test(f))
      .map((f) => f.replace(/^dist\//, '').replace(/\.js$/, ''))
      .filter((stem) => !['.ts', '.mts', '.tsx'].some((ext) => existsSync(join(srcDir, `${stem}${ext}`))));
    if (stale.length > 0) problem(errors, `dist/ holds output with no source in src/ (stale build output: rebuild from a clean dist/): ${stale.map((s) => `dist/${s}.js`).join(', ')}`);
  }
  console.log(`  ${basename(tarball).padEnd(34)} ${String(files.size).padStart(4)} files  ${name}@${manifest.version}`);
}
for (const w of warnings) console.log(`  warning: ${w}`);
for (const e of errors) console.log(`  error: ${e}`);
if (errors.length > 0) process.exit(1);
NODE

tgz() { # tgz <package dir name>: the tarball packed from that directory
  node -e 'process.stdout.write(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).filename)' "$tarballs/$1.pack.json"
}

# A PATH on which every C/C++ compiler and make fail and leave a note: the
# kit's install must not need one (fs-xattr, its only native dependency, must
# be optional).
for tool in cc gcc g++ c++ clang clang++ make; do
  printf '#!/bin/sh\necho "%s $*" >> "%s/calls"\necho "pack-install-test: no compiler here (%s)" >&2\nexit 1\n' "$tool" "$fakebin" "$tool" >"$fakebin/$tool"
  chmod +x "$fakebin/$tool"
done

# ---------------------------------------------------------------------------
step="install the template"
say "copying examples/driver-template to $project"
(cd "$root/examples/driver-template" && tar --exclude=./node_modules --exclude=./dist --exclude='./*.tsbuildinfo' -cf - .) | (cd "$project" && tar -xf -)
core_tgz="$(tgz core)"
conformance_tgz="$(tgz conformance)"
say "npm install: @cache/core and @cache/conformance from their tarballs, the rest from the registry; no compiler on PATH"
(
  cd "$project"
  # The template names the packages by version, as a published release would be
  # installed; here they come from the tarballs.
  node -e '
    const fs = require("fs");
    const [core, conformance] = process.argv.slice(1);
    const p = JSON.parse(fs.readFileSync("package.json", "utf8"));
    if (!p.dependencies?.["@cache/core"] || !p.devDependencies?.["@cache/conformance"]) throw new Error("the template must list @cache/core in dependencies and @cache/conformance in devDependencies");
    p.dependencies["@cache/core"] = "file:" + core;
    p.devDependencies["@cache/conformance"] = "file:" + conformance;
    fs.writeFileSync("package.json", JSON.stringify(p, null, 2) + "\n");
  ' "$core_tgz" "$conformance_tgz"
  PATH="$fakebin:$PATH" CC="$fakebin/cc" CXX="$fakebin/c++" npm install --prefer-offline --no-audit --no-fund
)
if [[ -s "$fakebin/calls" ]]; then
  say "the install tried to compile (and went on without it): $(sort -u "$fakebin/calls" | cut -d' ' -f1 | sort -u | tr '\n' ' ')"
  : >"$fakebin/calls"
fi
if [[ -d "$project/node_modules/fs-xattr" ]]; then
  xattr_state="installed"
  [[ -e "$project/node_modules/fs-xattr/build/Release" ]] || xattr_state="installed without its compiled addon"
else
  xattr_state="not installed (optional)"
fi
say "fs-xattr: $xattr_state"

step="resolve @cache/core"
(
  cd "$project"
  node --input-type=module -e '
    const core = await import("@cache/core");
    const driver = await import("@cache/core/driver");
    const need = { "@cache/core": [core, ["ImageCache", "MemoryDriver", "BadDriverConfigurationError"]], "@cache/core/driver": [driver, ["DirectoryCacheDriver", "fileIdentity", "metadataMatches"]] };
    for (const [spec, [mod, names]] of Object.entries(need)) {
      const missing = names.filter((n) => mod[n] === undefined);
      if (missing.length > 0) throw new Error(`${spec} lacks ${missing.join(", ")}`);
    }
    const { createRequire } = await import("node:module");
    const require = createRequire(process.cwd() + "/");
    const from = (spec) => require.resolve(spec).replace(process.cwd() + "/", "");
    console.log(`  @cache/core        -> ${import.meta.resolve("@cache/core").replace("file://" + process.cwd() + "/", "")} (${Object.keys(core).length} exports)`);
    console.log(`  @cache/core/driver -> ${import.meta.resolve("@cache/core/driver").replace("file://" + process.cwd() + "/", "")} (${Object.keys(driver).length} exports)`);
  '
  # One copy of @cache/core: a second one (nested under the kit) would break `instanceof` on its error classes.
  copies="$(find node_modules -path '*/@cache/core/package.json' | wc -l)"
  if [[ "$copies" != 1 ]]; then
    echo "pack-install-test: $copies copies of @cache/core installed:" >&2
    find node_modules -path '*/@cache/core/package.json' >&2
    exit 1
  fi
  for dep in @cache/core @cache/conformance; do
    spec="$(node -e 'const p=require("./package.json"); const n=process.argv[1]; process.stdout.write(String((p.dependencies??{})[n] ?? (p.devDependencies??{})[n] ?? "missing"))' "$dep")"
    echo "  package.json: $dep $spec"
  done
)

# ---------------------------------------------------------------------------
step="build the template"
say "npm run build"
(cd "$project" && npm run build --silent)
step="type-check the template's tests"
say "npm run typecheck (the tests against the kit's published types)"
(cd "$project" && npm run typecheck --silent)

step="run the kit"
say "npm test (the conformance kit against the template driver${CACHE_TEST_FILESYSTEMS:+, on $CACHE_TEST_FILESYSTEMS})"
report="$work/kit-report.json"
set +e
(cd "$project" && npm test --silent -- --reporter=default --reporter=json --outputFile.json="$report") >"$work/kit.log" 2>&1
kit_status=$?
set -e
tail -n 40 "$work/kit.log"
node --input-type=module - "$report" <<'NODE'
import { existsSync, readFileSync } from 'node:fs';
const [file] = process.argv.slice(2);
if (!existsSync(file)) {
  console.log('kit: no report written (vitest did not run)');
  process.exit(0);
}
const report = JSON.parse(readFileSync(file, 'utf8'));
// The kit's cases sit under a `<name> driver conformance` suite; the template's own tests do not.
const counts = { kit: { passed: 0, failed: 0, skipped: 0 }, own: { passed: 0, failed: 0, skipped: 0 } };
const failures = [];
for (const suite of report.testResults ?? []) {
  const tests = suite.assertionResults ?? [];
  if (suite.status === 'failed' && !tests.some((t) => t.status === 'failed')) {
    counts.own.failed++;
    failures.push(`${suite.name}: ${String(suite.message ?? 'the file failed to run').split('\n')[0]}`);
  }
  for (const t of tests) {
    const outcome = t.status === 'passed' ? 'passed' : t.status === 'failed' ? 'failed' : 'skipped';
    counts[/ driver conformance$/.test(t.ancestorTitles?.[0] ?? '') ? 'kit' : 'own'][outcome]++;
    if (outcome === 'failed') failures.push(`${[...(t.ancestorTitles ?? []), t.title].join(' > ')}: ${String(t.failureMessages?.[0] ?? '').split('\n')[0]}`);
  }
}
for (const f of failures.slice(0, 20)) console.log(`  FAIL ${f}`);
if (failures.length > 20) console.log(`  ... and ${failures.length - 20} more`);
const line = (c) => `${c.passed} passed, ${c.failed} failed, ${c.skipped} skipped`;
console.log(`template's own tests: ${line(counts.own)}`);
console.log(`kit: ${line(counts.kit)}`);
NODE
if [[ $kit_status != 0 ]]; then
  echo "pack-install-test: npm test exited $kit_status (full log: $work/kit.log)" >&2
  exit 1
fi

# ---------------------------------------------------------------------------
step="install every package"
all_tgz=()
for dir in "${packages[@]}"; do all_tgz+=("$(tgz "$(basename "$dir")")"); done
say "npm install all ${#all_tgz[@]} tarballs together (--ignore-scripts: native addons are not built here)"
(
  cd "$everything"
  printf '{ "name": "all-packages", "version": "0.0.0", "private": true, "type": "module" }\n' >package.json
  npm install --prefer-offline --no-audit --no-fund --ignore-scripts "${all_tgz[@]}" "@types/node@20.19.43"
  copies="$(find node_modules -path 'node_modules/*/node_modules/@cache/*/package.json' | head -5)"
  if [[ -n "$copies" ]]; then
    echo "pack-install-test: nested @cache/* copies (a dependency not satisfied by the tarballs):" >&2
    echo "$copies" >&2
    exit 1
  fi
)

step="resolve every export"
say "importing every export of every package (node), and type-checking an import of each (tsc)"
node --input-type=module - "$everything" "$project/node_modules/typescript/bin/tsc" <<'NODE'
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const [dir, tsc] = process.argv.slice(2);
const specs = [];
for (const name of readdirSync(join(dir, 'node_modules', '@cache'))) {
  const manifest = JSON.parse(readFileSync(join(dir, 'node_modules', '@cache', name, 'package.json'), 'utf8'));
  const subpaths = typeof manifest.exports === 'object' && manifest.exports !== null && !Array.isArray(manifest.exports) && Object.keys(manifest.exports).some((k) => k.startsWith('.'))
    ? Object.keys(manifest.exports)
    : ['.'];
  for (const sub of subpaths) if (!sub.includes('*') && !sub.endsWith('.json')) specs.push(sub === '.' ? manifest.name : `${manifest.name}${sub.slice(1)}`);
}
// Native addons are not built in this install (--ignore-scripts): a load failure of one is expected, anything else is not.
const NATIVE = /\.node\b|build\/(Release|Debug)\/|bindings file|ERR_DLOPEN_FAILED|NODE_MODULE_VERSION|Could not locate the bindings/;
const errors = [];
const script = `
  const [spec] = process.argv.slice(1);
  try {
    const mod = await import(spec);
    console.log(JSON.stringify({ ok: true, exports: Object.keys(mod).length }));
  } catch (error) {
    console.log(JSON.stringify({ ok: false, message: String(error?.stack ?? error).split('\\n').slice(0, 3).join(' | ') }));
  }`;
for (const spec of specs) {
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script, spec], { cwd: dir, encoding: 'utf8' });
  const result = JSON.parse(out.trim().split('\n').pop());
  if (result.ok) console.log(`  ${spec.padEnd(34)} ok (${result.exports} exports)`);
  else if (NATIVE.test(result.message)) console.log(`  ${spec.padEnd(34)} resolves; its native addon is not built here (${result.message.slice(0, 120)})`);
  else errors.push(`import('${spec}') fails: ${result.message}`);
}
writeFileSync(join(dir, 'imports.ts'), specs.map((spec, i) => `export * as m${i} from '${spec}';`).join('\n') + '\n');
writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({
  compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noEmit: true, skipLibCheck: true, types: ['node'] },
  files: ['imports.ts'],
}));
try {
  execFileSync(process.execPath, [tsc, '-p', join(dir, 'tsconfig.json')], { cwd: dir, encoding: 'utf8', stdio: 'pipe' });
  console.log(`  tsc: the types of all ${specs.length} entry points resolve`);
} catch (error) {
  errors.push(`tsc on imports of every entry point:\n${String(error.stdout ?? '') + String(error.stderr ?? '')}`);
}
for (const e of errors) console.log(`  error: ${e}`);
if (errors.length > 0) process.exit(1);
NODE

step="done"
ok=1
