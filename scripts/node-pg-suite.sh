#!/usr/bin/env bash
# node-pg-suite.sh runs the integration tests of node-postgres (the `pg`
# npm driver, pure JavaScript client) twice against one throwaway
# PostgreSQL cluster: once connected to PostgreSQL directly and once
# through pgrouter's read-write port. It prints pass/fail counts per test
# file and per test for both runs and every test whose outcome differs,
# with the proxied failure output, and exits 1 when the proxied run fails
# a test (or a file) that the direct run does not. It is the second driver
# suite after scripts/pgx-suite.sh and is built the same way (the cluster
# and pgrouter steps are in scripts/suite-lib.sh).
#
# What it builds, all under one temporary directory:
#   - a primary made by initdb: the database node_pg_test, the superuser
#     postgres with a password (the tests' PGUSER, as in node-postgres's
#     CI, and pgrouter's health user), the roles scram_test and
#     scram_unicode_test of node-postgres's CI (sasl-scram-tests.js),
#     scram-sha-256 for everything over 127.0.0.1, and TLS with
#     node-postgres's test/tls server certificate (ssl-tests.js,
#     gh-issues/2085-tests.js);
#   - a hot standby cloned with pg_basebackup, so that pgrouter has a real
#     topology to route in;
#   - pgrouter built from this checkout's working tree (or NODE_PG_SUITE_REV),
#     with --listen-rw, --listen-ro and client TLS on the same certificate;
#   - node-postgres's packages/pg from NODE_PG_SRC, with its runtime
#     dependencies (pg-connection-string, pg-pool, pg-protocol, pg-types,
#     pgpass: the ranges of its package.json) and the test devDependencies
#     the integration tests load (async, bluebird, co, pg-copy-streams)
#     installed from the npm registry with npm. The registry's compiled
#     packages are used rather than the monorepo's TypeScript sources.
#
# The suite is packages/pg's `make test-integration`: every
# test/integration/**/*-tests.js (connection-pool/ included) run as its own
# node process, `node FILE postgres://`, with PGHOST=127.0.0.1, PGPORT,
# PGUSER=postgres, PGPASSWORD, PGDATABASE=node_pg_test and SCRAM_TEST_*.
# (The Makefile's test-binary target passes `binary`, which this version of
# test/test-helper.js ignores: it would rerun the same tests.) Each file
# gets NODE_PG_SUITE_FILE_TIMEOUT seconds. node is started with a preload
# (node -r) that wraps test/suite.js's Suite and records per test whether
# it passed, failed, timed out or never ran, to a JSON-lines file. By
# default the wrapper keeps going after a failed test (upstream's Suite
# exits the process on the first one), so that one failure does not hide
# the rest of the file; NODE_PG_SUITE_KEEP_GOING=0 keeps upstream's
# behaviour. In keep-going mode an uncaught exception (test-helper.js
# exits 255 on one) fails the test running and the file goes on: a failure
# that a test left behind may then be blamed on a later one, so read the
# first failure of a file first. Files that use no Suite only have a per-file outcome: the exit
# status of node.
# Left out in both runs:
#   PG_CLIENT_CERT_TEST (connection-pool/tls-tests.js): certificate
#       authentication cannot cross a proxy that terminates TLS (pgrouter
#       has no client certificate for its own link to the server);
#   the native bindings (pg-native, `native` argument) and the Cloudflare
#       worker tests: not the protocol implementation under test here.
#   can connect with direct SSL negotiation (ssl-tests.js) skips itself on
#       PostgreSQL before 17.
#
# Usage: scripts/node-pg-suite.sh [test file paths or substrings, e.g. client/api notice]
# Knobs (environment):
#   NODE_PG_SRC        a node-postgres checkout (work tree: its packages/pg is
#                      copied as it is) or bare git directory (packages/pg of
#                      NODE_PG_REV is extracted with git archive). Unset: a
#                      shallow clone of https://github.com/brianc/node-postgres,
#                      which needs GitHub access. On machines without it pass
#                      a local copy, e.g. NODE_PG_SRC=/work/.mirror/brianc+node-postgres/repo
#   NODE_PG_REV        commit of a git NODE_PG_SRC to test (default HEAD)
#   NODE_PG_SUITE_FILE_TIMEOUT  seconds per test file (default 120)
#   NODE_PG_SUITE_KEEP_GOING    1 (default) or 0: see above
#   NODE_PG_SUITE_TLS  1 (default) or 0: server and pgrouter TLS, and the TLS
#                      tests (0 sets PGTESTNOSSL and the TLS tests fail alike)
#   NODE_PG_SUITE_ONLY direct or proxy: one run only, no comparison
#   NODE_PG_SUITE_POOL_MODE  passthrough (default), session or transaction:
#                      the rw port's --pool-mode. Pooled, pgrouter
#                      authenticates the clients itself (a userlist made from
#                      pg_authid, scram-sha-256 as on the server) and logs in
#                      as them
#   NODE_PG_SUITE_OUT  directory to copy the per-file logs, results and report into
#   NODE_PG_SUITE_KEEP 1: leave the work directory behind (servers stopped)
#   NODE_PG_SUITE_REV  build pgrouter from this commit (git archive, e.g. HEAD)
#                      rather than from the working tree
#   NODE_PG_SUITE_PGROUTER a pgrouter binary to use instead of building one
#   NODE_PG_SUITE_NODE node binary (default: node on PATH; node-postgres
#                      needs 16 or later)
#   PGR_PG_BINDIR      PostgreSQL server bin directory (see ensure-postgres.sh)
set -euo pipefail

began=$(date +%s)
repo=$(cd "$(dirname "$0")/.." && pwd)
only=${NODE_PG_SUITE_ONLY:-}
poolmode=${NODE_PG_SUITE_POOL_MODE:-passthrough}
tls=${NODE_PG_SUITE_TLS:-1}
filetimeout=${NODE_PG_SUITE_FILE_TIMEOUT:-120}
keepgoing=${NODE_PG_SUITE_KEEP_GOING:-1}
node=${NODE_PG_SUITE_NODE:-node}
case "$poolmode" in passthrough | session | transaction) ;; *) echo "NODE_PG_SUITE_POOL_MODE: passthrough, session or transaction" >&2; exit 2 ;; esac
case "$only" in "" | direct | proxy) ;; *) echo "NODE_PG_SUITE_ONLY: direct or proxy" >&2; exit 2 ;; esac

suite_name="node-pg-suite"
suite_knob=NODE_PG_SUITE
# shellcheck source=scripts/suite-lib.sh
. "$repo/scripts/suite-lib.sh"

command -v "$node" >/dev/null || die "no node ($node): install Node.js 16 or later"
command -v npm >/dev/null || die "no npm"
nodemajor=$("$node" -p 'process.versions.node.split(".")[0]')
[ "$nodemajor" -ge 16 ] || die "node $("$node" --version) is too old: node-postgres needs 16 or later"
suite_init

# --- the work directory; from here on everything started is stopped by
# its own PID on exit (the per-file logs and results are copied to
# NODE_PG_SUITE_OUT from the run directories direct/ and proxy/).
suite_workdir

# --- node-postgres: packages/pg and its dependencies.
src=${NODE_PG_SRC:-}
nodepg=$work/node-postgres
mkdir -p "$nodepg"
if [ -z "$src" ]; then
	log "cloning https://github.com/brianc/node-postgres (set NODE_PG_SRC to use a local copy)"
	git clone -q --depth 1 https://github.com/brianc/node-postgres "$work/clone" >"$work/clone.log" 2>&1 ||
		dielog "$work/clone.log" "git clone failed: without GitHub access pass NODE_PG_SRC=<node-postgres checkout or bare git dir>"
	src=$work/clone
fi
[ -d "$src" ] || die "NODE_PG_SRC $src is not a directory"
if [ -f "$src/packages/pg/package.json" ] && [ -d "$src/packages/pg/test/integration" ]; then
	srcdesc="$src (work tree, $(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo 'not git'))"
	cp -R "$src/packages/pg" "$nodepg/pg"
elif git --git-dir="$src" rev-parse -q --verify "${NODE_PG_REV:-HEAD}^{commit}" >/dev/null 2>&1; then
	rev=$(git --git-dir="$src" rev-parse --short "${NODE_PG_REV:-HEAD}^{commit}") || die "no commit ${NODE_PG_REV:-HEAD} in $src"
	srcdesc="$src at $rev"
	git --git-dir="$src" archive --format=tar "$rev" packages/pg | tar -x -C "$nodepg" --strip-components=1 ||
		die "git archive of packages/pg at $rev failed"
else
	die "NODE_PG_SRC $src is neither a node-postgres checkout nor a bare git directory"
fi
pgdir=$nodepg/pg
pgver=$("$node" -p "require('$pgdir/package.json').version")
log "node-postgres pg $pgver from $srcdesc"

# npm installs the dependencies into a directory of their own (packages/pg's
# package.json would pull vitest, wrangler and typescript), which becomes
# packages/pg/node_modules.
mkdir -p "$work/npm"
"$node" -e '
const pkg = require(process.argv[1]);
const want = ["async", "bluebird", "co", "pg-copy-streams"];
const deps = { ...pkg.dependencies };
for (const d of want) deps[d] = pkg.devDependencies[d];
require("fs").writeFileSync(process.argv[2], JSON.stringify({ name: "node-pg-suite-deps", private: true, dependencies: deps }, null, 2));
' "$pgdir/package.json" "$work/npm/package.json"
log "npm install $(tr -d '\n ' <"$work/npm/package.json" | sed 's/.*"dependencies"://; s/}}$/}/')"
(cd "$work/npm" && npm install --no-audit --no-fund --no-package-lock --ignore-scripts) >"$work/npm-install.log" 2>&1 ||
	dielog "$work/npm-install.log" "npm install failed"
ln -s "$work/npm/node_modules" "$pgdir/node_modules"
(cd "$work/npm" && npm ls --depth=0 2>/dev/null) >"$work/npm-versions.txt" || true

# --- PostgreSQL: a primary and a hot standby.
suite_layout
password=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
log "initdb primary ($bindir)"
suite_initdb "$primary"
asdb tee -a "$primary/data/pg_hba.conf" >/dev/null <<EOF
host      all          all          127.0.0.1/32          scram-sha-256
EOF
if [ "$tls" = 1 ]; then
	mkdir -p "$work/certs"
	cp "$pgdir/test/tls/test-server.crt" "$pgdir/test/tls/test-server.key" "$pgdir/test/tls/test-server-ca.crt" "$work/certs/"
	chmod 644 "$work"/certs/*
	asdb install -m 600 "$work/certs/test-server.crt" "$primary/data/server.crt"
	asdb install -m 600 "$work/certs/test-server.key" "$primary/data/server.key"
	echo "ssl = on" | asdb tee -a "$primary/data/postgresql.conf" >/dev/null
fi
startpg "$primary" primary_port || dielog "$primary/postgres.log" "primary did not start"
log "primary on 127.0.0.1:$primary_port"
suite_psql "$primary" "$primary_port" -d postgres \
	-c "SET password_encryption = 'scram-sha-256'" \
	-c "ALTER ROLE postgres PASSWORD '$password'" \
	-c "CREATE ROLE scram_test LOGIN PASSWORD 'test4scram'" \
	-c "CREATE ROLE scram_unicode_test LOGIN PASSWORD U&'IX-\\2168'" \
	-c "CREATE DATABASE node_pg_test" >"$work/setup.log" 2>&1 || dielog "$work/setup.log" "database setup failed"
suite_standby "$primary" "$primary_port" "$standby" standby_port

# --- pgrouter in front of both.
suite_build_pgrouter
tlsflags=()
[ "$tls" = 1 ] && tlsflags=(--tls-cert "$work/certs/test-server.crt" --tls-key "$work/certs/test-server.key")
suite_pool_flags "$primary" "$primary_port" "local all all scram-sha-256" "host all all 127.0.0.1/32 scram-sha-256"
suite_start_pgrouter "$password" "127.0.0.1:$primary_port,127.0.0.1:$standby_port" "${tlsflags[@]}" "${poolflags[@]}"

# --- the test files, and the preload that records per-test outcomes.
(cd "$pgdir" && find test/integration -name '*-tests.js' | LC_ALL=C sort) >"$work/files.txt"
if [ "$#" -gt 0 ]; then
	for pat in "$@"; do grep -F -- "$pat" "$work/files.txt" || true; done | LC_ALL=C sort -u >"$work/files-picked.txt"
	mv "$work/files-picked.txt" "$work/files.txt"
	[ -s "$work/files.txt" ] || die "no test file matches $*"
fi
log "$(wc -l <"$work/files.txt") test files"

cat >"$work/hook.js" <<'EOF'
// Preloaded (node -r) into each test file: wraps test/suite.js's Suite to
// record each test's outcome as JSON lines in $NODE_PG_SUITE_EVENTS.
'use strict'
const fs = require('fs')
const path = require('path')
const out = process.env.NODE_PG_SUITE_EVENTS
const keepGoing = process.env.NODE_PG_SUITE_KEEP_GOING !== '0'
const emit = (ev) => fs.appendFileSync(out, JSON.stringify(ev) + '\n')
const Suite = require(path.resolve('test/suite.js'))
let failures = 0
let current = null // finish() of the test running, in keep-going mode

// test-helper.js exits 255 on an uncaught exception (an assertion thrown in
// a callback): in keep-going mode, one that comes while a test runs fails
// that test instead, and the next one runs. Only test-helper's handler, the
// first one registered, is wrapped: tests that add their own (gh-issues/
// 2556) keep them as they are.
if (keepGoing) {
  const on = process.on
  const addListener = process.addListener
  process.on = process.addListener = function (ev, fn) {
    if (ev !== 'uncaughtException') return on.apply(this, arguments)
    process.on = on
    process.addListener = addListener
    return on.call(this, ev, function (err) {
      if (current) {
        console.log('\nuncaught exception: ' + ((err && err.stack) || err))
        return current(err)
      }
      return fn.apply(this, arguments)
    })
  }
}

const test = Suite.prototype.test
Suite.prototype.test = function (name, cb) {
  emit({ ev: 'queue', name, skip: !cb })
  return test.call(this, name, cb)
}

const run = Suite.prototype.run
Suite.prototype.run = function (t, cb) {
  emit({ ev: 'start', name: t.name })
  if (!keepGoing || !t.action) {
    // upstream's run: a failure or a timeout exits the process
    return run.call(this, t, function () {
      emit({ ev: t.action ? 'pass' : 'skip', name: t.name })
      return cb.apply(this, arguments)
    })
  }
  // upstream's run, but a failure or a timeout is recorded and the next
  // test runs; the process exits 1 once the queue is drained.
  const queue = this._queue
  process.stdout.write('  ' + t.name + ' ')
  let settled = false
  const finish = (err, how) => {
    if (settled) {
      if (err) emit({ ev: 'late', name: t.name, error: String((err && err.message) || err) })
      return
    }
    settled = true
    current = null
    clearTimeout(tid)
    if (err) {
      failures++
      process.exitCode = 1
      process.stdout.write(`FAILED!\n\n${(err && err.stack) || err}\n`)
      emit({ ev: how || 'fail', name: t.name, error: String((err && err.message) || err) })
    } else {
      process.stdout.write('✔\n')
      emit({ ev: 'pass', name: t.name })
    }
    cb()
    // Tests that failed may leave clients open that keep node alive.
    if (failures > 0) {
      setImmediate(() => {
        if (queue.idle()) setTimeout(() => process.exit(1), 3000).unref()
      })
    }
  }
  const tid = setTimeout(
    () => finish(new Error(`test: ${t.name} did not complete within ${t.timeout}ms`), 'timeout'),
    t.timeout
  )
  current = finish
  t.run((err) => finish(err))
}

process.on('exit', (code) => emit({ ev: 'exit', code }))
EOF

# runsuite NAME PORT runs every file against 127.0.0.1:PORT and writes
# $work/NAME/results.txt (file, exit status, seconds), NAME/logs/*.log and
# NAME/events/*.jsonl.
runsuite() {
	local name=$1 port=$2 f id rc t0 t1 n=0 failed=0
	mkdir -p "$work/$name/logs" "$work/$name/events"
	: >"$work/$name/results.txt"
	log "run $name: $(wc -l <"$work/files.txt") files against 127.0.0.1:$port"
	t0=$(date +%s)
	while read -r f; do
		id=$(printf '%s' "${f#test/integration/}" | tr '/' '_')
		id=${id%.js}
		t1=$(date +%s%N)
		rc=0
		(
			cd "$pgdir"
			# shellcheck disable=SC2046
			unset $(compgen -e | grep -E '^(PG|SCRAM_TEST_)' || true)
			export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGPASSWORD=$password PGDATABASE=node_pg_test
			export SCRAM_TEST_PGUSER=scram_test SCRAM_TEST_PGPASSWORD=test4scram
			export SCRAM_TEST_PGUSER_UNICODE=scram_unicode_test SCRAM_TEST_PGPASSWORD_UNICODE=$'IX-\xe2\x85\xa8'
			[ "$tls" = 1 ] || export PGTESTNOSSL=true
			export NODE_PG_SUITE_EVENTS=$work/$name/events/$id.jsonl NODE_PG_SUITE_KEEP_GOING=$keepgoing
			: >"$NODE_PG_SUITE_EVENTS"
			exec timeout -k 5 "$filetimeout" "$node" -r "$work/hook.js" "$f" postgres://
		) >"$work/$name/logs/$id.log" 2>&1 </dev/null &
		runner_pid=$!
		wait "$runner_pid" || rc=$?
		runner_pid=
		printf '%s %s %s\n' "$f" "$rc" "$((($(date +%s%N) - t1) / 1000000))" >>"$work/$name/results.txt"
		n=$((n + 1))
		if [ "$rc" != 0 ]; then
			failed=$((failed + 1))
			log "run $name: $f exit $rc"
		fi
	done <"$work/files.txt"
	echo "$(($(date +%s) - t0))" >"$work/$name-seconds.txt"
	log "run $name: $n files, $failed failed, $(cat "$work/$name-seconds.txt")s"
}

case "$only" in
"" | direct) runsuite direct "$primary_port" ;;
esac
case "$only" in
"" | proxy)
	runsuite proxy "$rw_port"
	suite_pgrouter_counters
	;;
esac

# --- compare.
cat >"$work/report.js" <<'EOF'
// report.js NAME=DIR... reads the runs' results and events and compares them.
'use strict'
const fs = require('fs')
const path = require('path')

function load(name, dir) {
  if (!fs.existsSync(path.join(dir, 'results.txt'))) return null
  const files = new Map() // file -> {rc, ms, tests: Map(name -> {state, error}), log}
  for (const line of fs.readFileSync(path.join(dir, 'results.txt'), 'utf8').split('\n')) {
    if (!line) continue
    const [file, rc, ms] = line.split(' ')
    const id = file.replace(/^test\/integration\//, '').replace(/\//g, '_').replace(/\.js$/, '')
    const tests = new Map()
    const seen = new Map()
    const nameOf = new Map() // last key given to a raw name
    const evf = path.join(dir, 'events', id + '.jsonl')
    const evs = fs.existsSync(evf) ? fs.readFileSync(evf, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)) : []
    for (const e of evs) {
      if (e.ev === 'queue') {
        // the same name queued twice gets a #2
        const k = seen.has(e.name) ? `${e.name} #${seen.get(e.name) + 1}` : e.name
        seen.set(e.name, (seen.get(e.name) || 0) + 1)
        tests.set(k, { state: 'not run', error: '', raw: e.name })
        continue
      }
      if (!e.name) continue
      // the first test of that raw name whose state is still open
      let key = null
      for (const [k, t] of tests) {
        if (t.raw !== e.name) continue
        if (e.ev === 'start' ? t.state === 'not run' : t.state === 'running') { key = k; break }
      }
      if (!key) continue
      const t = tests.get(key)
      switch (e.ev) {
        case 'start': t.state = 'running'; break
        case 'pass': t.state = 'pass'; break
        case 'skip': t.state = 'skip'; break
        case 'fail': t.state = 'fail'; t.error = e.error; break
        case 'timeout': t.state = 'timeout'; t.error = e.error; break
      }
    }
    const exited = evs.some((e) => e.ev === 'exit')
    for (const t of tests.values()) {
      // started, never finished: the process died (uncaught exception,
      // upstream's exit on failure, the file timeout)
      if (t.state === 'running') t.state = exited ? 'fail' : 'killed'
    }
    const log = fs.existsSync(path.join(dir, 'logs', id + '.log')) ? fs.readFileSync(path.join(dir, 'logs', id + '.log'), 'utf8') : ''
    files.set(file, { rc: Number(rc), ms: Number(ms), tests, log })
  }
  return { name, files }
}

const bad = (s) => s === 'fail' || s === 'timeout' || s === 'killed'
function tail(s, n) {
  const lines = s.replace(/\s+$/, '').split('\n')
  const keep = lines.length > n ? [`[... ${lines.length - n} lines cut ...]`, ...lines.slice(-n)] : lines
  return keep.map((l) => '    ' + l).join('\n')
}
function counts(run) {
  const c = { files: 0, filesPass: 0, filesFail: 0, pass: 0, fail: 0, skip: 0, notrun: 0 }
  for (const f of run.files.values()) {
    c.files++
    if (f.rc === 0) c.filesPass++
    else c.filesFail++
    for (const t of f.tests.values()) {
      if (t.state === 'pass') c.pass++
      else if (t.state === 'skip') c.skip++
      else if (t.state === 'not run') c.notrun++
      else c.fail++
    }
  }
  return c
}

const runs = process.argv.slice(2).map((a) => { const i = a.indexOf('='); return load(a.slice(0, i), a.slice(i + 1)) }).filter(Boolean)
const allFiles = [...new Set(runs.flatMap((r) => [...r.files.keys()]))].sort()

console.log('Per test file (exit status; tests pass/fail/not run):')
console.log('file'.padEnd(62) + runs.map((r) => ` | ${r.name.padEnd(6)} exit  pass fail nrun`).join(''))
for (const file of allFiles) {
  let row = file.replace(/^test\/integration\//, '').padEnd(62)
  for (const r of runs) {
    const f = r.files.get(file)
    if (!f) { row += ` | ${''.padEnd(6)}  n/a` + ''.padEnd(15); continue }
    const ts = [...f.tests.values()]
    const p = ts.filter((t) => t.state === 'pass' || t.state === 'skip').length
    const x = ts.filter((t) => bad(t.state)).length
    const nr = ts.filter((t) => t.state === 'not run').length
    row += ` | ${''.padEnd(6)} ${String(f.rc).padStart(4)} ${String(p).padStart(5)} ${String(x).padStart(4)} ${String(nr).padStart(4)}`
  }
  console.log(row)
}
console.log('')
for (const r of runs) {
  const c = counts(r)
  console.log(`run ${r.name}: files ${c.files} (${c.filesPass} pass, ${c.filesFail} fail); Suite tests ${c.pass + c.fail + c.skip + c.notrun} (${c.pass} pass, ${c.fail} fail, ${c.skip} skipped, ${c.notrun} not run)`)
}

if (runs.length === 1) {
  const r = runs[0]
  const failing = allFiles.filter((f) => r.files.get(f) && r.files.get(f).rc !== 0)
  console.log(`\n${failing.length} failing files in run ${r.name}`)
  for (const file of failing) {
    const f = r.files.get(file)
    const ts = [...f.tests].filter(([, t]) => bad(t.state))
    console.log(`\n--- ${file}: exit ${f.rc}` + ts.map(([k, t]) => `\n  ${k}: ${t.state}${t.error ? ': ' + t.error : ''}`).join(''))
    console.log(tail(f.log, 40))
  }
  process.exit(0)
}

const [a, b] = runs
let regressions = 0
const diffs = []
for (const file of allFiles) {
  const fa = a.files.get(file), fb = b.files.get(file)
  if (!fa || !fb) continue
  const names = [...new Set([...fa.tests.keys(), ...fb.tests.keys()])]
  const tdiff = []
  for (const k of names) {
    const sa = (fa.tests.get(k) || { state: 'absent' }).state
    const sb = (fb.tests.get(k) || { state: 'absent' }).state
    if (sa === sb) continue
    const reg = bad(sb) && !bad(sa)
    if (reg) regressions++
    tdiff.push({ k, sa, sb, reg, err: (fb.tests.get(k) || {}).error || '' })
  }
  const freg = fb.rc !== 0 && fa.rc === 0
  if (freg && !tdiff.some((d) => d.reg)) regressions++
  if (tdiff.length || (fa.rc === 0) !== (fb.rc === 0)) diffs.push({ file, fa, fb, tdiff, freg })
}
console.log(`\n${diffs.length} files differ between ${a.name} and ${b.name}:`)
for (const d of diffs) {
  console.log(`  ${d.file}: exit ${a.name}=${d.fa.rc} ${b.name}=${d.fb.rc}${d.freg ? '  <-- regression' : ''}`)
  for (const t of d.tdiff) console.log(`      ${t.k}: ${a.name}=${t.sa} ${b.name}=${t.sb}${t.reg ? '  <-- regression' : ''}${t.err ? '\n          ' + t.err.split('\n')[0] : ''}`)
}
for (const d of diffs) {
  for (const [r, f] of [[b, d.fb], [a, d.fa]]) {
    if (f.rc === 0) continue
    console.log(`\n--- ${d.file} (${r.name} run: exit ${f.rc}, ${f.ms} ms)`)
    console.log(tail(f.log, 60))
  }
}
if (regressions > 0) {
  console.log(`\n${regressions} regressions: ${b.name} fails where ${a.name} does not`)
  process.exit(1)
}
console.log(`\nno regressions: ${b.name} fails nothing that ${a.name} passes`)
EOF
suite_run_args ""
rc=0
"$node" "$work/report.js" "${args[@]}" >"$work/report.txt" || rc=$?
suite_finish "$rc" "pgrouter ($poolmode) from the $built; node-postgres pg $pgver from $srcdesc; node $("$node" --version); PostgreSQL $(pg postgres --version | awk '{print $3}'); total $(($(date +%s) - began))s"
