// Package chaos runs pgrouter's chaos campaign: three PostgreSQL members
// each run by `pgrouter agent --synchronous`, etcd and two proxies, each
// in its own network namespace; clients run reads, writes and
// compare-and-sets through both proxies' passthrough and transaction-pooled
// ports while faults drawn from a seed break the cluster one at a time.
// Afterwards the clients' history is checked: every key linearizable
// (porcupine), every acknowledged write on the final primary, never two
// members accepting writes at once, every member streaming from the leader
// with the same data.
package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/pgrouter/pgrouter/internal/pgtest"
)

// Config is one campaign.
type Config struct {
	// Faults is how many faults to inject; Seed draws them (and the
	// clients' choices).
	Faults int
	Seed   uint64
	// Only restricts the draw to these fault names (default: all).
	Only []string
	// Dir keeps the cluster's files, logs and history.json.
	Dir string
	// PGRouter and Etcd are the binaries.
	PGRouter, Etcd string
	// ClientsPerPort is how many clients use each proxy port. Default 2.
	ClientsPerPort int
	// CheckTimeout bounds the linearizability check. Default 2m.
	CheckTimeout time.Duration
	// Out receives the progress lines and the report.
	Out io.Writer
}

// FaultRecord is one injected fault as the report shows it.
type FaultRecord struct {
	N      int
	Name   string
	Target string
	// Times since the history started.
	Injected, Healed, Healthy int64
	// Recovery is the write outage: the longest time a client went
	// without an acknowledged write after the injection (see window).
	Recovery time.Duration
	Errors   map[string]int
	// Failed lists the checks this fault's window failed.
	Failed []string
}

// Result is the outcome of a campaign.
type Result struct {
	Seed   uint64
	Faults []FaultRecord
	// Failures are the failed checks, empty when the run passed.
	Failures []string
	// Linearizability is porcupine's verdict.
	Linearizability porcupine.CheckResult
	Ops, Acked      int
	// Unplanned counts leader changes between faults, with none injected.
	Unplanned int
}

// Run runs the campaign. The error is about the harness itself (a cluster
// that could not start); a cluster that misbehaves shows in
// Result.Failures.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.ClientsPerPort == 0 {
		cfg.ClientsPerPort = 2
	}
	if cfg.CheckTimeout == 0 {
		cfg.CheckTimeout = 2 * time.Minute
	}
	out := cfg.Out
	logf := func(format string, args ...any) {
		fmt.Fprintf(out, "%s %s\n", time.Now().UTC().Format("15:04:05.000"), fmt.Sprintf(format, args...))
	}
	faults := Faults
	if len(cfg.Only) > 0 {
		faults = nil
		for _, n := range cfg.Only {
			f, ok := FaultByName(n)
			if !ok {
				return nil, fmt.Errorf("no fault %q", n)
			}
			faults = append(faults, f)
		}
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x5eed))
	c, err := StartCluster(ctx, ClusterConfig{Dir: cfg.Dir, PGRouter: cfg.PGRouter, Etcd: cfg.Etcd, Logf: logf})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ld, err := c.Leader()
	if err != nil {
		return nil, err
	}
	if err := execSQL(ctx, ld.PGAddr(), Schema); err != nil {
		return nil, fmt.Errorf("schema: %w", err)
	}
	res := &Result{Seed: cfg.Seed}
	h := NewHistory()
	cctx, stopClients := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var clients, direct []*Client
	for _, p := range c.Proxies {
		for _, addr := range []string{p.RW, p.Pooled} {
			for range cfg.ClientsPerPort {
				cl := NewClient(len(clients), addr, h, cfg.Seed)
				clients = append(clients, cl)
				wg.Go(func() { cl.Run(cctx) })
			}
		}
	}
	// seen[v] bounds when a write whose client saw an error committed:
	// after each fault the leader is asked which of those writes' rows it
	// has (see barrier).
	seen := map[int64]int64{}
	// One direct writer per member, beside the proxies (see Client.Direct).
	for _, m := range c.Members {
		cl := NewClient(len(clients)+len(direct), m.PGAddr(), h, cfg.Seed)
		cl.Direct = true
		direct = append(direct, cl)
		wg.Go(func() { cl.Run(cctx) })
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopClients()
			wg.Wait()
			stopped = true
		}
	}
	defer stop()
	logf("cluster up: leader %s, %d clients on %d proxies (passthrough and transaction-pooled ports), %d direct writers, seed %d",
		ld.Name, len(clients), len(c.Proxies), len(direct), cfg.Seed)
	if err := waitClientsWrite(ctx, h, clients, h.Now(), 60*time.Second); err != nil {
		res.Failures = append(res.Failures, "before any fault: "+err.Error())
	}

	lastLeader := ld.Name
	for n := 1; n <= cfg.Faults && len(res.Failures) == 0 && ctx.Err() == nil; n++ {
		f := faults[rng.IntN(len(faults))]
		hold := f.Hold(rng)
		// The cluster was healthy after the previous fault; it must still
		// be (or be again) before the next. A leader change nobody caused
		// is worth a line: it shows in the logs around that time.
		now, err := c.WaitHealthy(ctx, 120*time.Second)
		if err != nil {
			res.Failures = append(res.Failures, fmt.Sprintf("before fault %d: %v", n, err))
			break
		}
		if now.Name != lastLeader {
			res.Unplanned++
			logf("NOTE: leader changed from %s to %s with no fault injected", lastLeader, now.Name)
		}
		rec := FaultRecord{N: n, Name: f.Name, Injected: h.Now()}
		target, heal, err := f.Inject(ctx, c, rng)
		rec.Target = target
		if err != nil {
			rec.Failed = append(rec.Failed, "inject: "+err.Error())
		}
		_ = pgtest.Sleep(ctx, hold)
		if heal != nil {
			if err := heal(); err != nil {
				rec.Failed = append(rec.Failed, "heal: "+err.Error())
			}
		}
		rec.Healed = h.Now()
		if _, err := c.WaitHealthy(ctx, 120*time.Second); err != nil {
			rec.Failed = append(rec.Failed, err.Error())
		}
		rec.Healthy = h.Now()
		if ld, err := c.Leader(); err == nil {
			lastLeader = ld.Name
		}
		if len(rec.Failed) == 0 {
			if err := waitClientsWrite(ctx, h, clients, rec.Healthy, 30*time.Second); err != nil {
				rec.Failed = append(rec.Failed, "after recovery: "+err.Error())
			}
		}
		_ = pgtest.Sleep(ctx, time.Duration(1000+rng.IntN(2000))*time.Millisecond)
		if err := barrier(ctx, c, h, seen); err != nil {
			logf("barrier after fault %d: %v", n, err)
		}
		rec.Recovery, rec.Errors = window(h.Ops(), rec.Injected, h.Now())
		res.Faults = append(res.Faults, rec)
		logf("%s", rec.Line(cfg.Faults))
		for _, f := range rec.Failed {
			res.Failures = append(res.Failures, fmt.Sprintf("fault %d %s: %s", n, rec.Name, f))
		}
	}
	stop()
	logf("clients stopped; final checks")
	final(ctx, c, h, cfg, res, seen, logf)
	return res, nil
}

// final runs the checks at the end of a campaign and writes history.json.
func final(ctx context.Context, c *Cluster, h *History, cfg Config, res *Result, seen map[int64]int64, logf func(string, ...any)) {
	ops := h.Ops()
	res.Ops = len(ops)
	if b, err := json.Marshal(ops); err == nil {
		_ = os.WriteFile(filepath.Join(cfg.Dir, "history.json"), b, 0o644)
	}
	fail := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		res.Failures = append(res.Failures, msg)
		logf("CHECK FAILED: %s", msg)
	}
	for _, op := range ops {
		if op.OK && (op.Kind == Write || op.Kind == CAS && op.Applied) {
			res.Acked++
		}
	}
	ld, err := c.WaitHealthy(ctx, 120*time.Second)
	if err != nil {
		fail("final: %v", err)
		return
	}
	if err := converged(ctx, c, ld); err != nil {
		fail("convergence: %v", err)
	}
	committed, err := committedValues(ctx, ld.PGAddr())
	if err != nil {
		fail("read wlog on %s: %v", ld.Name, err)
		return
	}
	// What is committed now committed before this read returned.
	readAt := h.Now()
	for v := range committed {
		if _, ok := seen[v]; !ok {
			seen[v] = readAt
		}
	}
	for _, op := range LostWrites(ops, committed) {
		fail("acknowledged write lost: %s", op)
		attribute(res, op.Ret, "acknowledged write lost")
	}
	resolved := Resolve(ops, committed, seen)
	if b, err := json.Marshal(resolved); err == nil {
		_ = os.WriteFile(filepath.Join(cfg.Dir, "resolved.json"), b, 0o644)
	}
	for _, o := range Overlaps(Eras(resolved)) {
		fail("%s: first %s; last %s", o.Reason, o.B.First, o.A.Last)
		attribute(res, o.A.LastCall, "two members accepted writes")
	}
	start := time.Now()
	viz := filepath.Join(cfg.Dir, "linearizability.html")
	lin, err := Linearizable(resolved, cfg.CheckTimeout, viz)
	res.Linearizability = lin
	switch {
	case err != nil:
		fail("linearizability: %v", err)
	case lin == porcupine.Illegal:
		fail("history not linearizable (see %s)", viz)
	case lin == porcupine.Unknown:
		logf("linearizability: inconclusive, the check ran out of its %v", cfg.CheckTimeout)
	}
	logf("checked %d operations (%d acknowledged writes, %d committed) in %v: linearizability %s",
		len(ops), res.Acked, len(committed), time.Since(start).Round(time.Millisecond), lin)
}

// barrier asks the leader which writes whose clients saw an error have
// their row, and records the time the answer came back: those writes had
// committed by then. Without this bound such a write stays concurrent with
// every later operation, and a few hundred of them make the
// linearizability search explode.
func barrier(ctx context.Context, c *Cluster, h *History, seen map[int64]int64) error {
	var pending []int64
	for _, op := range h.Ops() {
		// 25006: a standby refused the write before running it.
		if !op.OK && op.Kind != Read && op.Key >= 0 && op.Err != "25006" {
			if _, ok := seen[op.Value]; !ok {
				pending = append(pending, op.Value)
			}
		}
	}
	if len(pending) == 0 {
		return nil
	}
	ld, err := c.Leader()
	if err != nil {
		return err
	}
	conn, err := connect(ctx, ld.PGAddr())
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	rows, _ := conn.Query(ctx, "SELECT v FROM wlog WHERE v = ANY($1)", pending)
	var found []int64
	for rows.Next() {
		var v int64
		if err := rows.Scan(&v); err != nil {
			return err
		}
		found = append(found, v)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	now := h.Now()
	for _, v := range found {
		seen[v] = now
	}
	return nil
}

// attribute adds a failed check to the fault whose window holds t.
func attribute(res *Result, t int64, what string) {
	for i := len(res.Faults) - 1; i >= 0; i-- {
		if res.Faults[i].Injected <= t {
			res.Faults[i].Failed = append(res.Faults[i].Failed, what)
			return
		}
	}
}

// window summarizes the operations around one fault, from its injection
// to the end of the recovery pause: the errors that ended in it, and the
// write outage, the longest time any client went without a write
// acknowledged (counted from the injection). It catches writes that fail,
// writes that stall, and an outage that starts late (a killed agent's
// lease running out). A client untouched by the fault shows its usual
// gap between writes, some tens of milliseconds.
func window(ops []Op, from, to int64) (time.Duration, map[string]int) {
	errs := map[string]int{}
	prev := map[int]int64{}
	for _, op := range ops {
		if strings.HasPrefix(op.Port, "direct:") {
			continue // not a proxy client: its errors on standbys are expected
		}
		if !op.OK && op.Ret >= from && op.Ret <= to {
			errs[op.Err]++
		}
		if _, ok := prev[op.Client]; !ok {
			prev[op.Client] = from
		}
	}
	acks := map[int][]int64{}
	for _, op := range ops {
		if op.OK && op.Kind != Read && op.Ret > from && op.Ret <= to && !strings.HasPrefix(op.Port, "direct:") {
			acks[op.Client] = append(acks[op.Client], op.Ret)
		}
	}
	var worst int64
	for client, last := range prev {
		ts := acks[client]
		slices.Sort(ts)
		for _, t := range append(ts, to) {
			worst = max(worst, t-last)
			last = t
		}
	}
	return time.Duration(worst), errs
}

// waitClientsWrite waits until every client had a write (or CAS)
// acknowledged that it called after since: every port of every proxy
// works.
func waitClientsWrite(ctx context.Context, h *History, clients []*Client, since int64, d time.Duration) error {
	return poll(ctx, d, "every client writing", func() error {
		ok := map[int]bool{}
		for _, op := range h.Ops() {
			if op.OK && op.Kind != Read && op.Call >= since {
				ok[op.Client] = true
			}
		}
		for _, cl := range clients {
			if !ok[cl.ID] {
				return fmt.Errorf("client %d (%s) has no acknowledged write", cl.ID, cl.Addr)
			}
		}
		return nil
	})
}

// converged waits until both standbys replayed everything the leader
// wrote, then compares the data on every member.
func converged(ctx context.Context, c *Cluster, ld *Member) error {
	var lsn string
	if err := queryRow(ctx, ld.PGAddr(), "SELECT pg_current_wal_lsn()::text", &lsn); err != nil {
		return err
	}
	for _, m := range c.Members {
		if m == ld {
			continue
		}
		err := poll(ctx, 60*time.Second, m.Name+" replayed "+lsn, func() error {
			ok, err := queryBool(ctx, m.PGAddr(), "SELECT pg_last_wal_replay_lsn() >= '"+lsn+"'::pg_lsn")
			if err == nil && !ok {
				err = errors.New("behind")
			}
			return err
		})
		if err != nil {
			return err
		}
	}
	const digest = `SELECT (SELECT md5(string_agg(k || ':' || v, ',' ORDER BY k)) FROM kv) || '/' ||
(SELECT count(*) || ':' || coalesce(sum(v::numeric), 0) FROM wlog)`
	var want string
	if err := queryRow(ctx, ld.PGAddr(), digest, &want); err != nil {
		return err
	}
	for _, m := range c.Members {
		var got string
		if err := queryRow(ctx, m.PGAddr(), digest, &got); err != nil {
			return fmt.Errorf("%s: %w", m.Name, err)
		}
		if got != want {
			return fmt.Errorf("%s has %s, leader %s has %s", m.Name, got, ld.Name, want)
		}
	}
	return nil
}

// committedValues reads wlog: every value a committed write put.
func committedValues(ctx context.Context, addr string) (map[int64]bool, error) {
	conn, err := connect(ctx, addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	rows, _ := conn.Query(ctx, "SELECT v FROM wlog")
	out := map[int64]bool{}
	for rows.Next() {
		var v int64
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out[v] = true
	}
	return out, rows.Err()
}

func execSQL(ctx context.Context, addr, sql string) error {
	conn, err := connect(ctx, addr)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}
