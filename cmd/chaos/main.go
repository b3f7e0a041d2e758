// Command chaos runs pgrouter's chaos campaign (package internal/chaos):
// a three-member cluster of `pgrouter agent --synchronous`, etcd and two
// proxies in network namespaces, clients through every proxy port, faults
// drawn from a seed, and the clients' history checked afterwards. It needs
// root (network namespaces) and the postgres OS user.
//
//	go run ./cmd/chaos -faults 8 -seed 42 -pgrouter bin/pgrouter -etcd "$(sh tools/etcd/ensure.sh)"
//
// It exits 0 when every check passed, 1 when one failed (the seed, the
// history and every log are kept and printed), 2 when the harness itself
// could not run.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pgrouter/pgrouter/internal/chaos"
)

func main() {
	faults := flag.Int("faults", 100, "number of faults to inject")
	seed := flag.Uint64("seed", 0, "seed of the fault draw and the clients (0: random, printed)")
	dir := flag.String("dir", "", "directory for the cluster's files, logs and history (default: a new temporary one)")
	bin := flag.String("pgrouter", "", "pgrouter binary (default: built from ./cmd/pgrouter)")
	etcd := flag.String("etcd", os.Getenv("PGR_ETCD_BIN"), "etcd binary (default $PGR_ETCD_BIN)")
	only := flag.String("only", "", "comma-separated fault names to draw from (default: all)")
	keep := flag.Bool("keep", false, "keep the directory even when the run passes")
	checkTimeout := flag.Duration("check-timeout", 2*time.Minute, "time limit of the linearizability check")
	soak := flag.Duration("soak", 0, "instead of the campaign: pgbench through every proxy port this long, with churn and switchovers, sampling the proxies' RSS, goroutines and descriptors")
	flag.Parse()
	os.Exit(run(*faults, *seed, *dir, *bin, *etcd, *only, *keep, *checkTimeout, *soak))
}

func run(faults int, seed uint64, dir, bin, etcd, only string, keep bool, checkTimeout, soak time.Duration) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "chaos: needs root (network namespaces, agents run as the postgres user)")
		if os.Getenv("CI") != "" {
			return 2
		}
		fmt.Fprintln(os.Stderr, "chaos: skipped (not root, CI not set)")
		return 0
	}
	if etcd == "" {
		fmt.Fprintln(os.Stderr, "chaos: no etcd binary: pass -etcd or set PGR_ETCD_BIN (sh tools/etcd/ensure.sh prints it)")
		return 2
	}
	for seed == 0 {
		seed = uint64(time.Now().UnixNano()) % 1_000_000_000
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "pgrouter-chaos-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "chaos:", err)
			return 2
		}
		dir = d
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 2
	}
	if bin == "" {
		bin = filepath.Join(dir, "pgrouter-build")
		build := exec.Command("go", "build", "-o", bin, "./cmd/pgrouter")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "chaos: build pgrouter:", err)
			return 2
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if soak > 0 {
		return runSoak(ctx, soak, dir, bin, etcd, keep)
	}
	var names []string
	if only != "" {
		names = strings.Split(only, ",")
	}
	fmt.Printf("chaos: %d faults, seed %d, files in %s\n", faults, seed, dir)
	res, err := chaos.Run(ctx, chaos.Config{
		Faults: faults, Seed: seed, Only: names, Dir: dir, PGRouter: bin, Etcd: etcd,
		CheckTimeout: checkTimeout, Out: os.Stdout,
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "chaos: %v\nchaos: seed %d; files kept in %s\n", err, seed, dir)
		return 2
	}
	res.Summary(os.Stdout)
	if len(res.Failures) > 0 || ctx.Err() != nil {
		fmt.Printf("replay: make chaos FAULTS=%d SEED=%d\nhistory and logs kept in %s:\n", faults, seed, dir)
		logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
		more, _ := filepath.Glob(filepath.Join(dir, "n*", "postgresql.log"))
		for _, l := range append(append(logs, more...), filepath.Join(dir, "history.json")) {
			fmt.Println("  " + l)
		}
		return 1
	}
	if !keep {
		os.RemoveAll(dir)
	}
	return 0
}

func runSoak(ctx context.Context, d time.Duration, dir, bin, etcd string, keep bool) int {
	fmt.Printf("soak: %v, files in %s\n", d, dir)
	began := time.Now()
	res, err := chaos.RunSoak(ctx, chaos.SoakConfig{Duration: d, Dir: dir, PGRouter: bin, Etcd: etcd, Out: os.Stdout})
	if err != nil {
		fmt.Fprintf(os.Stderr, "soak: %v\nsoak: files kept in %s\n", err, dir)
		return 2
	}
	res.Table(os.Stdout, min(d, time.Since(began)).Seconds())
	if len(res.Failures) > 0 || ctx.Err() != nil {
		fmt.Printf("logs kept in %s\n", dir)
		return 1
	}
	if !keep {
		os.RemoveAll(dir)
	}
	return 0
}
