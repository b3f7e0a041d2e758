package chaos

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgrouter/pgrouter/internal/pgtest"
)

// SoakConfig is one soak run: pgbench through every port of both proxies
// for Duration, with connection churn and a few planned switchovers,
// while the proxies' memory, goroutines and descriptors are sampled.
type SoakConfig struct {
	Duration       time.Duration
	Dir            string
	PGRouter, Etcd string
	// RoleChanges is how many switchovers happen along the way. Default 3.
	RoleChanges int
	Out         io.Writer
}

// Sample is one measurement of one proxy.
type Sample struct {
	At         time.Duration // since the load started; negative: idle before
	Proxy      string
	RSSKB      int
	Goroutines int
	FDs        int
	Phase      string // idle-start, load, idle-end
}

// SoakResult holds the samples and the verdict.
type SoakResult struct {
	Samples      []Sample
	Transactions int64
	Failures     []string
}

// RunSoak runs the soak.
func RunSoak(ctx context.Context, cfg SoakConfig) (*SoakResult, error) {
	if cfg.RoleChanges == 0 {
		cfg.RoleChanges = 3
	}
	pgbench, err := findPGBench()
	if err != nil {
		return nil, err
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(cfg.Out, "%s %s\n", time.Now().UTC().Format("15:04:05"), fmt.Sprintf(format, args...))
	}
	c, err := StartCluster(ctx, ClusterConfig{Dir: cfg.Dir, PGRouter: cfg.PGRouter, Etcd: cfg.Etcd, Logf: logf})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ld, err := c.Leader()
	if err != nil {
		return nil, err
	}
	if out, err := pgbenchCmd(ctx, pgbench, ld.PGAddr(), "-i", "-s", "1", "-q").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("pgbench -i: %v: %s", err, out)
	}
	res := &SoakResult{}
	sample := func(at time.Duration, phase string) {
		for _, p := range c.Proxies {
			s := measure(p)
			s.At, s.Phase = at, phase
			res.Samples = append(res.Samples, s)
		}
	}
	sample(0, "idle-start")
	logf("soak: %v of pgbench through %d proxies (passthrough and transaction-pooled ports, steady and -C churn), %d switchovers",
		cfg.Duration, len(c.Proxies), cfg.RoleChanges)

	lctx, stopLoad := context.WithTimeout(ctx, cfg.Duration)
	defer stopLoad()
	var wg sync.WaitGroup
	var txns atomic.Int64
	for _, p := range c.Proxies {
		for _, addr := range []string{p.RW, p.Pooled} {
			// Steady clients, and clients that connect for every
			// transaction (-C), each rate-limited to leave the two cores
			// some air.
			for _, extra := range [][]string{{"-c", "4", "-j", "2", "-R", "150"}, {"-C", "-c", "2", "-R", "25"}} {
				wg.Go(func() { pgbenchLoop(lctx, pgbench, addr, extra, &txns) })
			}
		}
	}
	began := time.Now()
	every := max(cfg.Duration/30, 5*time.Second)
	next := every
	changes := 0
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	for lctx.Err() == nil {
		_ = pgtest.Sleep(lctx, time.Until(began.Add(next)))
		if lctx.Err() != nil {
			break
		}
		sample(time.Since(began), "load")
		next += every
		if changes < cfg.RoleChanges && time.Since(began) > time.Duration(changes+1)*cfg.Duration/time.Duration(cfg.RoleChanges+1) {
			changes++
			target, _, err := switchover(lctx, c, rng)
			if err != nil {
				res.Failures = append(res.Failures, "switchover: "+err.Error())
			}
			logf("switchover %d: %s", changes, target)
			if _, err := c.WaitHealthy(lctx, 120*time.Second); err != nil && lctx.Err() == nil {
				res.Failures = append(res.Failures, "after switchover: "+err.Error())
			}
		}
	}
	wg.Wait()
	res.Transactions = txns.Load()
	// Let pooled servers and closing sessions settle, then the idle
	// figures must be back near where they started.
	_ = pgtest.Sleep(ctx, 10*time.Second)
	sample(time.Since(began), "idle-end")
	res.check()
	return res, nil
}

// pgbenchCmd runs pgbench as the superuser against addr.
func pgbenchCmd(ctx context.Context, bin, addr string, args ...string) *exec.Cmd {
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.CommandContext(ctx, bin, append([]string{"-h", host, "-p", port, "-U", superUser}, append(args, "postgres")...)...)
	cmd.Env = append(pgtest.ProcessEnv(), "PGPASSWORD="+superPass, "PGCONNECT_TIMEOUT=5")
	return cmd
}

var processed = regexp.MustCompile(`number of transactions actually processed: (\d+)`)

// pgbenchLoop runs 20-second pgbench rounds until ctx ends; a round that
// fails (a switchover broke its sessions) is followed by the next.
func pgbenchLoop(ctx context.Context, bin, addr string, extra []string, txns *atomic.Int64) {
	for ctx.Err() == nil {
		d := 20
		if dl, ok := ctx.Deadline(); ok {
			d = min(d, int(time.Until(dl).Seconds()))
		}
		if d < 1 {
			return
		}
		args := append([]string{"-n", "-T", strconv.Itoa(d)}, extra...)
		// Not CommandContext: pgbench ends by itself with -T, and a killed
		// pgbench would count as churn the proxy never saw end cleanly.
		out, _ := pgbenchCmd(context.Background(), bin, addr, args...).CombinedOutput()
		if m := processed.FindSubmatch(out); m != nil {
			n, _ := strconv.ParseInt(string(m[1]), 10, 64)
			txns.Add(n)
		}
		_ = pgtest.Sleep(ctx, 200*time.Millisecond)
	}
}

// measure reads a proxy's resident memory and open descriptors from /proc
// and its goroutine count from /debug/pprof.
func measure(p *Proxy) Sample {
	s := Sample{Proxy: p.Name, RSSKB: -1, Goroutines: -1, FDs: -1}
	pid := p.Proc.PID()
	if pid == 0 {
		return s
	}
	if f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
				s.RSSKB, _ = strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			}
		}
		f.Close()
	}
	if fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
		s.FDs = len(fds)
	}
	if resp, err := httpClient.Get("http://" + p.Admin + "/debug/pprof/goroutine?debug=1"); err == nil {
		line, _ := bufio.NewReader(resp.Body).ReadString('\n')
		resp.Body.Close()
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "goroutine profile: total "); ok {
			s.Goroutines, _ = strconv.Atoi(v)
		}
	}
	return s
}

// Flatness tolerances: the end of the load may exceed its second quarter
// by this fraction plus this slack; idle at the end may exceed idle at the
// start by the idle slack (pooled server connections kept open).
const (
	flatFrac     = 0.25
	rssSlackKB   = 16 << 10
	countSlack   = 20
	idleSlack    = 2*8 + 10 // two pools of size 8, plus a few
	idleRSSFrac  = 1.0      // memory the runtime keeps after a load is not a leak
	minLoadSampl = 8
)

// check compares the end of the load with its second quarter (after the
// warm-up), and idle at the end with idle at the start, per proxy.
func (res *SoakResult) check() {
	byProxy := map[string][]Sample{}
	for _, s := range res.Samples {
		byProxy[s.Proxy] = append(byProxy[s.Proxy], s)
	}
	for name, ss := range byProxy {
		var load []Sample
		var idleStart, idleEnd *Sample
		for i := range ss {
			switch ss[i].Phase {
			case "load":
				load = append(load, ss[i])
			case "idle-start":
				idleStart = &ss[i]
			case "idle-end":
				idleEnd = &ss[i]
			}
		}
		fail := func(format string, args ...any) {
			res.Failures = append(res.Failures, name+": "+fmt.Sprintf(format, args...))
		}
		for _, s := range ss {
			if s.RSSKB < 0 || s.Goroutines < 0 || s.FDs < 0 {
				fail("a sample at %v could not be read (proxy not running?)", s.At)
				return
			}
		}
		if len(load) >= minLoadSampl {
			q := len(load) / 4
			base, end := peak(load[q:2*q]), peak(load[len(load)-q:])
			if float64(end.RSSKB) > float64(base.RSSKB)*(1+flatFrac)+rssSlackKB {
				fail("RSS grew from %d kB to %d kB under load", base.RSSKB, end.RSSKB)
			}
			if float64(end.Goroutines) > float64(base.Goroutines)*(1+flatFrac)+countSlack {
				fail("goroutines grew from %d to %d under load", base.Goroutines, end.Goroutines)
			}
			if float64(end.FDs) > float64(base.FDs)*(1+flatFrac)+countSlack {
				fail("descriptors grew from %d to %d under load", base.FDs, end.FDs)
			}
		}
		if idleStart != nil && idleEnd != nil {
			if idleEnd.Goroutines > idleStart.Goroutines+idleSlack {
				fail("idle goroutines %d at the end, %d at the start", idleEnd.Goroutines, idleStart.Goroutines)
			}
			if idleEnd.FDs > idleStart.FDs+idleSlack {
				fail("idle descriptors %d at the end, %d at the start", idleEnd.FDs, idleStart.FDs)
			}
			if float64(idleEnd.RSSKB) > float64(idleStart.RSSKB)*(1+idleRSSFrac)+2*rssSlackKB {
				fail("idle RSS %d kB at the end, %d kB at the start", idleEnd.RSSKB, idleStart.RSSKB)
			}
		}
	}
}

// peak is the per-field maximum of samples.
func peak(ss []Sample) Sample {
	var p Sample
	for _, s := range ss {
		p.RSSKB, p.Goroutines, p.FDs = max(p.RSSKB, s.RSSKB), max(p.Goroutines, s.Goroutines), max(p.FDs, s.FDs)
	}
	return p
}

// Table writes the samples, one row per time with a column group per
// proxy, and the verdict.
func (res *SoakResult) Table(w io.Writer, seconds float64) {
	var proxies []string
	rows := map[string][]Sample{}
	var order []string
	for _, s := range res.Samples {
		key := fmt.Sprintf("%s %v", s.Phase, s.At.Round(time.Second))
		if _, ok := rows[key]; !ok {
			order = append(order, key)
		}
		rows[key] = append(rows[key], s)
		if !contains(proxies, s.Proxy) {
			proxies = append(proxies, s.Proxy)
		}
	}
	fmt.Fprintf(w, "\n%-22s", "sample")
	for _, p := range proxies {
		fmt.Fprintf(w, " | %-3s %8s %6s %5s", p, "RSS MB", "gorout", "fds")
	}
	fmt.Fprintln(w)
	for _, k := range order {
		fmt.Fprintf(w, "%-22s", k)
		for _, s := range rows[k] {
			fmt.Fprintf(w, " | %-3s %8.1f %6d %5d", "", float64(s.RSSKB)/1024, s.Goroutines, s.FDs)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "\n%d pgbench transactions (%.0f/s)\n", res.Transactions, float64(res.Transactions)/seconds)
	if len(res.Failures) == 0 {
		fmt.Fprintln(w, "PASS: memory, goroutines and descriptors flat")
		return
	}
	fmt.Fprintf(w, "FAIL: %d checks\n", len(res.Failures))
	for _, f := range res.Failures {
		fmt.Fprintf(w, "  - %s\n", f)
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// findPGBench finds pgbench on PATH or beside the PostgreSQL server.
func findPGBench() (string, error) {
	if p, err := exec.LookPath("pgbench"); err == nil {
		return p, nil
	}
	cands := []string{}
	if d := os.Getenv("PGR_PG_BINDIR"); d != "" {
		cands = append(cands, filepath.Join(d, "pgbench"))
	}
	more, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pgbench")
	for _, p := range append(cands, more...) {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("pgbench not found (run scripts/ensure-postgres.sh)")
}
