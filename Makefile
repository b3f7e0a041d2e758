# pgrouter build, test and demo entry points. CI runs `make test`.
# Knobs come from the environment or the command line, all prefixed PGR_:
#   PGR_TEST_TIMEOUT  timeout of the whole `go test` run (default 20m)
#   PGR_FUZZTIME      budget per fuzz target in `make fuzz`, as -fuzztime takes
#                     it (default 100000x: executions, about 10 s each here)
#   PGR_PG_BINDIR     PostgreSQL server bin directory (see scripts/ensure-postgres.sh)
#   PGR_BIN_CACHE     where tools/etcd/ensure.sh caches the etcd binary and
#                     tools/k8s/ensure.sh kube-apiserver + etcd (default bin/)
#   PGR_DEMO_DIR      data and logs of `make demo` (default .demo/ha; wiped at start)
#   PGR_DEMO_PORT     first port of `make demo` (default 6432; see `pgrouter demo --help`)
#   PGR_CHAOS_INTERVAL time between kills in `make demo-chaos` (default 20s)
#   PGR_CHAOS_FAULTS  faults of the short chaos campaign `make test` runs (default 8)
# and, as the issue names them, FAULTS and SEED for `make chaos` (default 100, 0 = a random
# seed) and DURATION for `make soak` (default 30m).

GO ?= go
PGR_TEST_TIMEOUT ?= 20m
PGR_FUZZTIME ?= 100000x
PGR_DEMO_DIR ?= .demo/ha
PGR_DEMO_PORT ?= 6432
PGR_CHAOS_INTERVAL ?= 20s
PGR_CHAOS_FAULTS ?= 8
FAULTS ?= 100
SEED ?= 0
DURATION ?= 30m

.PHONY: build test vet fmt-check fuzz demo demo-chaos bench bench-failover clean ensure-postgres ensure-etcd ensure-chromium ensure-k8s test-kubernetes pgx-suite node-pg-suite chaos soak

build:
	$(GO) build -o bin/pgrouter ./cmd/pgrouter

ensure-postgres:
	sh scripts/ensure-postgres.sh

# ensure-chromium installs Debian's chromium for the dashboard test
# (as root; otherwise it prints the command and the test skips).
ensure-chromium:
	sh scripts/ensure-chromium.sh

vet:
	$(GO) vet ./...

# fmt-check fails listing the files gofmt would change.
fmt-check:
	@files=$$(gofmt -l .); \
	if [ -n "$$files" ]; then \
		echo "gofmt -w needed on:"; echo "$$files"; exit 1; \
	fi

# ensure-etcd builds etcd from tools/etcd once per go.mod/go.sum (cold ~75 s);
# the agent tests get its path in PGR_ETCD_BIN.
ensure-etcd:
	sh tools/etcd/ensure.sh >/dev/null

# ensure-k8s builds kube-apiserver and etcd from tools/k8s once per
# go.mod/go.sum (cold ~10 min, never inside go test); the Kubernetes tests
# get their directory in PGR_K8S_BIN_DIR.
ensure-k8s:
	sh tools/k8s/ensure.sh >/dev/null

# test-kubernetes runs only the tests against a real API server (their
# names hold "Kube"), verbosely so that each one's result shows.
test-kubernetes: ensure-postgres ensure-k8s
	PGR_K8S_BIN_DIR=$$(sh tools/k8s/ensure.sh) $(GO) test -race -count=1 -v -timeout $(PGR_TEST_TIMEOUT) -run 'Kube' ./...

test: ensure-postgres ensure-etcd ensure-k8s ensure-chromium vet fmt-check
	PGR_ETCD_BIN=$$(sh tools/etcd/ensure.sh) PGR_K8S_BIN_DIR=$$(sh tools/k8s/ensure.sh) $(GO) test -race -count=1 -timeout $(PGR_TEST_TIMEOUT) ./...
	$(MAKE) fuzz
	$(MAKE) chaos FAULTS=$(PGR_CHAOS_FAULTS) SEED=$(SEED)

# fuzz runs every Fuzz target of every package for PGR_FUZZTIME each. `go
# test -list` prints a package's matching names and then "ok <package>";
# with no targets there is nothing to run. The budget is a count of
# executions, not a duration: Go 1.26's fuzzing coordinator can report a
# spurious "context deadline exceeded" failure, with no failing input, when
# a duration ends while a worker is busy (go.dev/issue/75804, fixed in 1.27);
# CI met it once on 2026-12-07 in FuzzClassify.
fuzz:
	@set -e; list=$$(mktemp); trap 'rm -f "$$list"' EXIT; \
	$(GO) test -list '^Fuzz' ./... >"$$list"; \
	awk '/^Fuzz/ { names[n++] = $$1; next } \
	     /^ok /  { for (i = 0; i < n; i++) print $$2, names[i]; n = 0 }' "$$list" | \
	while read -r pkg name; do \
		echo "fuzz $$name in $$pkg for $(PGR_FUZZTIME)"; \
		$(GO) test -run='^$$' -fuzz="^$$name\$$" -fuzztime=$(PGR_FUZZTIME) "$$pkg" || exit 1; \
	done

# demo: etcd, three pgrouter agents (synchronous) and the proxy following
# them, on loopback, under PGR_DEMO_DIR; prints the connection strings and
# the dashboard URL; Ctrl-C stops everything (`pgrouter demo`).
# demo-chaos adds a writer and a reader through the proxy and kills the
# primary every PGR_CHAOS_INTERVAL (`pgrouter demo --chaos`).
demo: build ensure-postgres ensure-etcd
	./bin/pgrouter demo --dir $(PGR_DEMO_DIR) --port $(PGR_DEMO_PORT) --etcd-bin "$$(sh tools/etcd/ensure.sh)"

demo-chaos: build ensure-postgres ensure-etcd
	./bin/pgrouter demo --chaos --interval $(PGR_CHAOS_INTERVAL) --dir $(PGR_DEMO_DIR) --port $(PGR_DEMO_PORT) --etcd-bin "$$(sh tools/etcd/ensure.sh)"

bench:
	bash bench/run.sh

# bench-failover: N trials of kill -9 of the primary under a writer through
# the proxy's read-write port (see bench/failover.sh for its knobs).
bench-failover: build ensure-etcd
	bash bench/failover.sh

# chaos: FAULTS faults drawn from SEED (0: a random seed, printed) under
# clients through both proxies, then the history checked (see
# internal/chaos and the README's "Chaos testing"). Needs root. A failing
# run prints the seed and keeps the history and every log.
chaos: build ensure-postgres ensure-etcd
	$(GO) run ./cmd/chaos -faults $(FAULTS) -seed $(SEED) -pgrouter bin/pgrouter -etcd "$$(sh tools/etcd/ensure.sh)"

# soak: pgbench through every port of both proxies for DURATION with
# connection churn and a few switchovers; the proxies' RSS, goroutines and
# descriptors are sampled and must end flat. Needs root. Not part of `make test`.
soak: build ensure-postgres ensure-etcd
	$(GO) run ./cmd/chaos -soak $(DURATION) -pgrouter bin/pgrouter -etcd "$$(sh tools/etcd/ensure.sh)"

clean:
	rm -rf bin

# pgx-suite runs pgx's own test suite against PostgreSQL directly and
# through pgrouter's read-write port and compares the outcomes (see
# scripts/pgx-suite.sh for its PGX_SUITE_* knobs). Not part of `make test`:
# it takes several minutes.
pgx-suite:
	bash scripts/pgx-suite.sh

# node-pg-suite runs node-postgres's integration tests (the pg npm driver)
# against PostgreSQL directly and through pgrouter's read-write port and
# compares the outcomes (see scripts/node-pg-suite.sh for its knobs). Needs
# node and npm, and NODE_PG_SRC (a node-postgres checkout or bare git
# directory) where GitHub is not reachable. Not part of `make test`.
node-pg-suite:
	bash scripts/node-pg-suite.sh
