// Command txfailover measures what clients of pgrouter's transaction-mode
// port see when the primary fails or is switched over: a writer and a
// reader run through the proxy while, in each trial, the primary is
// killed (kill -9) and a standby promoted by hand, or a planned
// switchover is done with PAUSE/RESUME. It prints per trial: client
// errors, the longest time without a successful write, and acknowledged
// writes missing from the new primary.
//
//	go run ./bench/txfailover -bin bin/pgrouter -trials 5 -mode kill
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrouter/pgrouter/internal/benchutil"
)

func main() {
	bin := flag.String("bin", "bin/pgrouter", "pgrouter binary")
	trials := flag.Int("trials", 5, "trials")
	mode := flag.String("mode", "kill", "kill (kill -9 the primary, promote by hand) or switchover (PAUSE, stop, promote, RESUME)")
	sync := flag.Bool("sync", false, "synchronous replication (synchronous_standby_names='*')")
	flag.Parse()
	var gaps []time.Duration
	totalErrs, totalLost, totalAcked := 0, 0, 0
	for i := range *trials {
		r, err := trial(*bin, *mode, *sync)
		if err != nil {
			fmt.Fprintln(os.Stderr, "trial", i+1, "failed:", err)
			os.Exit(1)
		}
		fmt.Printf("trial %d: %s: write gap %v, client errors %d (%s), acked %d, lost %d, reads ok %d\n",
			i+1, *mode, r.gap.Round(time.Millisecond), r.errors, strings.Join(r.errorKinds, "; "), r.acked, r.lost, r.reads)
		gaps = append(gaps, r.gap)
		totalErrs += r.errors
		totalLost += r.lost
		totalAcked += r.acked
	}
	sort.Slice(gaps, func(a, b int) bool { return gaps[a] < gaps[b] })
	fmt.Printf("summary: mode=%s sync=%v trials=%d write gap median %v worst %v; client errors %d; acked %d; lost %d\n",
		*mode, *sync, len(gaps), gaps[len(gaps)/2].Round(time.Millisecond), gaps[len(gaps)-1].Round(time.Millisecond), totalErrs, totalAcked, totalLost)
}

type result struct {
	gap        time.Duration
	errors     int
	errorKinds []string
	acked      int
	lost       int
	reads      int
}

func trial(bin, mode string, syncRep bool) (*result, error) {
	ctx := context.Background()
	c, err := benchutil.StartCluster(ctx, 1, "txfailover-")
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if syncRep {
		// After the standby streams: set at init it would block initdb's users.
		if err := benchutil.Exec(ctx, c.ConnString(c.Nodes[0], c.SuperUser, c.SuperPassword, "postgres"),
			"ALTER SYSTEM SET synchronous_standby_names = '*'", "SELECT pg_reload_conf()"); err != nil {
			return nil, err
		}
	}
	if err := benchutil.Exec(ctx, c.ConnString(c.Nodes[0], c.AppUser, c.AppPassword, c.AppDB),
		"CREATE TABLE bench_w (seq int PRIMARY KEY)"); err != nil {
		return nil, err
	}
	rw, admin := benchutil.FreeAddr(), benchutil.FreeAddr()
	cmd := exec.Command(bin, "proxy", "--backends", c.Nodes[0].Addr+","+c.Nodes[1].Addr,
		"--listen-rw", rw, "--admin-listen", admin, "--pool-mode", "transaction", "--pool-size", "10",
		"--auth-file", c.AuthFile, "--health-user", c.SuperUser, "--health-interval", "200ms",
		"--health-timeout", "500ms", "--health-failure-threshold", "2", "--log-level", "warn")
	cmd.Env = append(os.Environ(), "PGROUTER_HEALTH_PASSWORD="+c.SuperPassword)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	if err := benchutil.WaitReady(admin); err != nil {
		return nil, err
	}
	connStr := c.AppConnString(rw)

	var mu sync.Mutex
	res := &result{}
	var acked []int
	var okTimes []time.Time
	kinds := map[string]int{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // writer
		defer wg.Done()
		conn, err := pgx.Connect(ctx, connStr)
		if err != nil {
			panic(err)
		}
		defer conn.Close(ctx)
		for seq := 1; ; seq++ {
			select {
			case <-stop:
				return
			default:
			}
			cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			_, err := conn.Exec(cctx, "INSERT INTO bench_w (seq) VALUES ($1)", seq)
			cancel()
			mu.Lock()
			if err == nil {
				acked = append(acked, seq)
				okTimes = append(okTimes, time.Now())
			} else {
				res.errors++
				kinds[benchutil.Short(err, 90)]++
			}
			mu.Unlock()
			if err != nil && conn.IsClosed() {
				conn, _ = pgx.Connect(ctx, connStr)
				if conn == nil {
					time.Sleep(50 * time.Millisecond)
					conn, _ = pgx.Connect(ctx, connStr)
				}
				if conn == nil {
					return
				}
			}
		}
	}()
	go func() { // reader
		defer wg.Done()
		conn, err := pgx.Connect(ctx, connStr)
		if err != nil {
			panic(err)
		}
		defer conn.Close(ctx)
		for {
			select {
			case <-stop:
				return
			default:
			}
			var n int
			if err := conn.QueryRow(ctx, "SELECT count(*) FROM bench_w").Scan(&n); err == nil {
				mu.Lock()
				res.reads++
				mu.Unlock()
			} else {
				mu.Lock()
				res.errors++
				kinds["reader: "+benchutil.Short(err, 90)]++
				mu.Unlock()
			}
		}
	}()
	time.Sleep(time.Second)
	failAt := time.Now()
	switch mode {
	case "kill":
		if err := c.Nodes[0].Kill(); err != nil {
			return nil, err
		}
		if err := c.Promote(ctx, c.Nodes[1]); err != nil {
			return nil, err
		}
	case "switchover":
		resp, err := http.Post("http://"+admin+"/api/v1/pause?timeout=10s", "", nil)
		if err != nil {
			return nil, err
		}
		resp.Body.Close()
		if err := c.Nodes[0].Stop(ctx); err != nil { // clean shutdown: everything is sent to the standby
			return nil, err
		}
		if err := c.Promote(ctx, c.Nodes[1]); err != nil {
			return nil, err
		}
		// Wait until the proxy routes to the new primary, then resume.
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			resp, err := http.Get("http://" + admin + "/readyz")
			if err == nil {
				b := make([]byte, 256)
				n, _ := resp.Body.Read(b)
				resp.Body.Close()
				if strings.Contains(string(b[:n]), c.Nodes[1].Addr) {
					break
				}
			}
		}
		resp, err = http.Post("http://"+admin+"/api/v1/resume", "", nil)
		if err != nil {
			return nil, err
		}
		resp.Body.Close()
	}
	// Run until writes have succeeded on the new primary for a while.
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		mu.Lock()
		n := len(okTimes)
		last := time.Time{}
		if n > 0 {
			last = okTimes[n-1]
		}
		mu.Unlock()
		if last.After(failAt.Add(time.Second)) && time.Since(failAt) > 3*time.Second {
			break
		}
	}
	close(stop)
	wg.Wait()
	// The longest gap between successful writes around the fault.
	prev := failAt
	for _, t := range okTimes {
		if t.Before(failAt) {
			continue
		}
		if g := t.Sub(prev); g > res.gap {
			res.gap = g
		}
		prev = t
	}
	conn, err := pgx.Connect(ctx, c.ConnString(c.Nodes[1], c.AppUser, c.AppPassword, c.AppDB))
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT seq FROM bench_w")
	if err != nil {
		return nil, err
	}
	present, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		return nil, err
	}
	slices.Sort(present)
	res.acked = len(acked)
	for _, s := range acked {
		if _, found := slices.BinarySearch(present, s); !found {
			res.lost++
		}
	}
	for k, n := range kinds {
		res.errorKinds = append(res.errorKinds, fmt.Sprintf("%dx %s", n, k))
	}
	return res, nil
}
