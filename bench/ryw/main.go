// Command ryw measures read-your-writes through pgrouter's statement-split
// single endpoint: a client inserts a row and immediately reads it back,
// n times, while a few other clients write to another table on the
// primary. A read that does not find the row just inserted is stale.
//
// It starts a primary and two hot standbys (internal/pgtest), then for
// each mode of --read-your-writes a pgrouter process with
//
//	--listen ADDR --pool-mode transaction --split statement --read-your-writes MODE
//
// and prints one summary line per mode: stale reads (with off that is the
// figure to report; with session it must be 0), where the reads ran
// (pg_is_in_recovery() and inet_server_port() in the same statement),
// errors, and pgrouter_split_routes_total over the measurement.
//
//	go build -o bin/pgrouter ./cmd/pgrouter && go run ./bench/ryw -bin bin/pgrouter -n 10000
//
// It exits 1 when a mode that promises read-your-writes (session) saw a
// stale read or an error.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrouter/pgrouter/internal/benchutil"
)

func main() { os.Exit(realMain()) }

func realMain() int {
	bin := flag.String("bin", "bin/pgrouter", "pgrouter binary")
	n := flag.Int("n", 10000, "insert-then-read iterations per mode")
	modes := flag.String("modes", "off,session", "comma-separated --read-your-writes modes to measure, in order")
	writers := flag.Int("writers", 3, "background writer clients (INSERTs straight to the primary)")
	execMode := flag.String("exec", "prepared", "measuring client's protocol: prepared (pgx's default, named prepared statements), simple, or extended (unnamed statements)")
	rywMaxWait := flag.String("ryw-max-wait", "", "--ryw-max-wait for pgrouter (empty: pgrouter's default, 0)")
	extra := flag.String("pgrouter-args", "", "further pgrouter flags, space-separated")
	keepLog := flag.Bool("log", false, "copy pgrouter's stderr to ours")
	flag.Parse()

	qm, ok := map[string]pgx.QueryExecMode{
		"prepared": pgx.QueryExecModeCacheStatement,
		"simple":   pgx.QueryExecModeSimpleProtocol,
		"extended": pgx.QueryExecModeExec,
	}[*execMode]
	if !ok {
		return fatal(fmt.Errorf("-exec %q: want prepared, simple or extended", *execMode))
	}
	if _, err := os.Stat(*bin); err != nil {
		return fatal(fmt.Errorf("%v (build it: go build -o bin/pgrouter ./cmd/pgrouter)", err))
	}

	ctx := context.Background()
	fmt.Printf("load average at start: %s\n", loadavg())
	c, err := benchutil.StartCluster(ctx, 2, "ryw-")
	if err != nil {
		return fatal(err)
	}
	defer c.Close()
	if err := setup(ctx, c); err != nil {
		return fatal(err)
	}
	fmt.Printf("cluster: primary %s, hot standbys %s %s (pgtest: fsync=off, asynchronous streaming replication)\n",
		c.Nodes[0].Addr, c.Nodes[1].Addr, c.Nodes[2].Addr)

	bad := false
	for _, mode := range strings.Split(*modes, ",") {
		mode = strings.TrimSpace(mode)
		r, err := run(ctx, c, runConfig{bin: *bin, mode: mode, n: *n, writers: *writers,
			qm: qm, execName: *execMode, rywMaxWait: *rywMaxWait, extra: strings.Fields(*extra), showLog: *keepLog})
		if err != nil {
			fmt.Fprintf(os.Stderr, "mode %s failed: %v\n", mode, err)
			return 1
		}
		r.print()
		if mode != "off" && (r.stale > 0 || r.errors > 0) {
			bad = true
		}
	}
	fmt.Printf("load average at end: %s\n", loadavg())
	if bad {
		return 1
	}
	return 0
}

func fatal(err error) int {
	fmt.Fprintln(os.Stderr, "ryw:", err)
	return 1
}

type runConfig struct {
	bin, mode  string
	n, writers int
	qm         pgx.QueryExecMode
	execName   string
	rywMaxWait string
	extra      []string
	showLog    bool
}

type result struct {
	mode, exec     string
	n              int
	stale          int // the row just inserted was not found
	staleOnPrimary int // ... and the read ran on the primary (never expected)
	standbyReads   int
	primaryReads   int
	byPort         map[int]int
	errors         int
	errorKinds     map[string]int
	elapsed        time.Duration
	readLat        []time.Duration
	writerTx       int64
	loadStart      string
	loadEnd        string
	routes         map[string]float64 // pgrouter_split_routes_total deltas, by label set
	pgrouterLog    string
}

func (r *result) print() {
	sort.Slice(r.readLat, func(i, j int) bool { return r.readLat[i] < r.readLat[j] })
	pct := func(p float64) time.Duration {
		if len(r.readLat) == 0 {
			return 0
		}
		return r.readLat[min(len(r.readLat)-1, int(p*float64(len(r.readLat))))]
	}
	var ports []string
	keys := make([]int, 0, len(r.byPort))
	for p := range r.byPort {
		keys = append(keys, p)
	}
	slices.Sort(keys)
	for _, p := range keys {
		ports = append(ports, fmt.Sprintf("%d:%d", p, r.byPort[p]))
	}
	var kinds []string
	for k, v := range r.errorKinds {
		kinds = append(kinds, fmt.Sprintf("%dx %s", v, k))
	}
	sort.Strings(kinds)
	var routes []string
	for k, v := range r.routes {
		if v != 0 {
			routes = append(routes, fmt.Sprintf("%s=%.0f", k, v))
		}
	}
	sort.Strings(routes)
	fmt.Printf("  pgrouter_split_routes_total during the run: %s\n", strings.Join(routes, " "))
	fmt.Printf("  reads by server port: %s\n", strings.Join(ports, " "))
	if len(kinds) > 0 {
		fmt.Printf("  errors: %s\n", strings.Join(kinds, "; "))
	}
	fmt.Printf("  load average: %s at start, %s at end\n", r.loadStart, r.loadEnd)
	fmt.Printf("summary: read-your-writes=%s exec=%s n=%d stale=%d (%.2f%%, %d of them on the primary) reads on standbys=%d on primary=%d errors=%d; read latency p50 %v p99 %v; background writers %d tx (%.0f/s); %v\n",
		r.mode, r.exec, r.n, r.stale, 100*float64(r.stale)/float64(max(1, r.n)), r.staleOnPrimary,
		r.standbyReads, r.primaryReads, r.errors, pct(0.5).Round(time.Microsecond), pct(0.99).Round(time.Microsecond),
		r.writerTx, float64(r.writerTx)/r.elapsed.Seconds(), r.elapsed.Round(time.Millisecond))
}

func run(ctx context.Context, c *benchutil.Cluster, rc runConfig) (*result, error) {
	listen, admin := benchutil.FreeAddr(), benchutil.FreeAddr()
	args := []string{"proxy", "--backends", c.Nodes[0].Addr + "," + c.Nodes[1].Addr + "," + c.Nodes[2].Addr,
		"--listen", listen, "--admin-listen", admin, "--pool-mode", "transaction", "--split", "statement",
		"--read-your-writes", rc.mode, "--auth-file", c.AuthFile,
		"--health-user", c.SuperUser, "--health-database", "postgres", "--log-level", "info"}
	if rc.rywMaxWait != "" {
		args = append(args, "--ryw-max-wait", rc.rywMaxWait)
	}
	args = append(args, rc.extra...)
	cmd := exec.Command(rc.bin, args...)
	cmd.Env = append(os.Environ(), "PGROUTER_HEALTH_PASSWORD="+c.SuperPassword)
	var logBuf strings.Builder
	var logMu sync.Mutex
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			logMu.Lock()
			logBuf.WriteString(sc.Text() + "\n")
			logMu.Unlock()
			if rc.showLog {
				fmt.Fprintln(os.Stderr, "pgrouter:", sc.Text())
			}
		}
	}()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	fmt.Printf("mode %s: %s %s\n", rc.mode, rc.bin, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); pw.Close() }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cmd.Process.Signal(syscall.SIGTERM) // only the process this run started
		select {
		case <-exited:
		case <-time.After(40 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}
	defer stop()
	logTail := func() string {
		logMu.Lock()
		defer logMu.Unlock()
		s := logBuf.String()
		if len(s) > 4000 {
			s = "...\n" + s[len(s)-4000:]
		}
		return s
	}
	fail := func(err error) (*result, error) {
		select {
		case e := <-exited:
			exited <- e
			return nil, fmt.Errorf("%w (pgrouter exited: %v)\npgrouter log:\n%s", err, e, logTail())
		default:
		}
		return nil, fmt.Errorf("%w\npgrouter log:\n%s", err, logTail())
	}
	if err := benchutil.WaitReady(admin); err != nil {
		return fail(err)
	}
	connStr := c.AppConnString(listen)

	// Until the proxy's health checks have seen both standbys, reads would
	// all go to the primary: wait until plain reads reach each of them.
	if err := waitStandbys(ctx, connStr, c); err != nil {
		return fail(err)
	}

	res := &result{mode: rc.mode, exec: rc.execName, n: rc.n, byPort: map[int]int{}, errorKinds: map[string]int{}}
	res.loadStart = loadavg()

	// The background write load: autocommit INSERTs on the primary, straight.
	var writerTx atomic.Int64
	stopW := make(chan struct{})
	var wg sync.WaitGroup
	wconnStr := c.ConnString(c.Primary(), c.AppUser, c.AppPassword, c.AppDB)
	var werrMu sync.Mutex
	var werr error
	for w := range rc.writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, wconnStr)
			if err != nil {
				werrMu.Lock()
				werr = err
				werrMu.Unlock()
				return
			}
			defer conn.Close(ctx)
			for {
				select {
				case <-stopW:
					return
				default:
				}
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				_, err := conn.Exec(cctx, "INSERT INTO ryw_load (writer, payload) SELECT $1, repeat('x', 200) FROM generate_series(1, 5)", w)
				cancel()
				if err != nil {
					werrMu.Lock()
					werr = err
					werrMu.Unlock()
					return
				}
				writerTx.Add(1)
			}
		}()
	}
	time.Sleep(500 * time.Millisecond) // let the load get going

	before, err := splitRoutes(admin)
	if err != nil {
		close(stopW)
		wg.Wait()
		return fail(err)
	}
	w0 := writerTx.Load()
	began := time.Now()
	conn, err := pgx.Connect(ctx, connStr)
	if err != nil {
		close(stopW)
		wg.Wait()
		return fail(fmt.Errorf("connect through the single endpoint: %w", err))
	}
	for i := range rc.n {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		var id int64
		err := conn.QueryRow(cctx, "INSERT INTO ryw_t (client, i) VALUES (1, $1) RETURNING id", rc.qm, i).Scan(&id)
		if err == nil {
			var found, rec bool
			var port int
			t0 := time.Now()
			err = conn.QueryRow(cctx, "SELECT EXISTS (SELECT 1 FROM ryw_t WHERE id = $1), pg_is_in_recovery(), inet_server_port()",
				rc.qm, id).Scan(&found, &rec, &port)
			if err == nil {
				res.readLat = append(res.readLat, time.Since(t0))
				res.byPort[port]++
				if rec {
					res.standbyReads++
				} else {
					res.primaryReads++
				}
				if !found {
					res.stale++
					if !rec {
						res.staleOnPrimary++
					}
				}
			}
		}
		cancel()
		if err != nil {
			res.errors++
			res.errorKinds[benchutil.Short(err, 100)]++
			if conn.IsClosed() {
				conn.Close(ctx)
				if conn, err = pgx.Connect(ctx, connStr); err != nil {
					close(stopW)
					wg.Wait()
					return fail(fmt.Errorf("reconnect after error: %w", err))
				}
			}
		}
	}
	res.elapsed = time.Since(began)
	res.writerTx = writerTx.Load() - w0
	lsn := conn.PgConn().ParameterStatus("pgrouter.last_write_lsn")
	conn.Close(ctx)
	after, err := splitRoutes(admin)
	close(stopW)
	wg.Wait()
	if err != nil {
		return fail(err)
	}
	if werr != nil {
		return fail(fmt.Errorf("background writer: %w", werr))
	}
	res.loadEnd = loadavg()
	res.routes = map[string]float64{}
	for k, v := range after {
		res.routes[k] = v - before[k]
	}
	fmt.Printf("  pgrouter.last_write_lsn reported to the client at the end: %q\n", lsn)
	stop()
	return res, nil
}

// waitStandbys waits until reads through the endpoint have run on both
// hot standbys, on a session that has not written.
func waitStandbys(ctx context.Context, connStr string, c *benchutil.Cluster) error {
	want := map[string]bool{c.Nodes[1].Addr: false, c.Nodes[2].Addr: false}
	var lastErr error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		conn, err := pgx.Connect(ctx, connStr)
		if err != nil {
			lastErr = err
			continue
		}
		for range 10 {
			var port int
			if err := conn.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
				lastErr = err
				break
			}
			a := fmt.Sprintf("127.0.0.1:%d", port)
			if _, ok := want[a]; ok {
				want[a] = true
			}
		}
		conn.Close(ctx)
		all := true
		for _, v := range want {
			all = all && v
		}
		if all {
			return nil
		}
	}
	return fmt.Errorf("reads through the split endpoint did not reach both standbys within 30s (seen %v, last error %v)", want, lastErr)
}

// splitRoutes reads pgrouter_split_routes_total from /metrics, keyed by
// "target/reason".
func splitRoutes(admin string) (map[string]float64, error) {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, "pgrouter_split_routes_total")
		if !ok {
			continue
		}
		i := strings.LastIndexByte(rest, ' ')
		if i < 0 {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(rest[i+1:], &v); err != nil {
			continue
		}
		var target, reason string
		for _, kv := range strings.Split(strings.Trim(rest[:i], "{}"), ",") {
			k, val, _ := strings.Cut(kv, "=")
			switch k {
			case "target":
				target = strings.Trim(val, `"`)
			case "reason":
				reason = strings.Trim(val, `"`)
			}
		}
		out[target+"/"+reason] = v
	}
	return out, sc.Err()
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func setup(ctx context.Context, c *benchutil.Cluster) error {
	if err := benchutil.Exec(ctx, c.ConnString(c.Nodes[0], c.AppUser, c.AppPassword, c.AppDB),
		"CREATE TABLE ryw_t (id bigserial PRIMARY KEY, client int, i int)",
		"CREATE TABLE ryw_load (id bigserial PRIMARY KEY, writer int, payload text)"); err != nil {
		return err
	}
	return c.WaitReplayed(ctx)
}
