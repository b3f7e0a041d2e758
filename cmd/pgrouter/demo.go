package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgrouter/pgrouter/election"
)

// The demo's fixed credentials: it listens on loopback only.
const (
	demoScope     = "demo"
	demoSuper     = "postgres"
	demoSuperPass = "demo-super"
	demoReplPass  = "demo-repl"
)

// demoOptions are the flags of `pgrouter demo`.
type demoOptions struct {
	dir         string
	port        int
	etcdBin     string
	synchronous bool
	chaos       bool
	interval    time.Duration
}

func demoCommand() *cobra.Command {
	var o demoOptions
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run an HA cluster on loopback: etcd, three agents with PostgreSQL, and the proxy; Ctrl-C stops everything",
		Long: `demo starts, under one directory, etcd, three ` + "`pgrouter agent`" + `s (the first to start bootstraps
PostgreSQL, the others clone it) and ` + "`pgrouter proxy --discovery etcd`" + ` in front, prints the connection
strings and the dashboard URL, and stops everything on Ctrl-C.

With --chaos it also kills the primary's postmaster every --interval while a built-in writer (read-write
port) and reader (read-only port) run, and prints what a client sees: writes and reads per second, errors,
which member served them, and how long writes took to resume after each kill.

Ports, from --port P: single endpoint P, read-write P+1, read-only P+2, admin and dashboard P+2000,
etcd P+10 and P+11, PostgreSQL P+101..P+103, agent APIs P+201..P+203.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.etcdBin == "" {
				o.etcdBin = os.Getenv("PGR_ETCD_BIN")
			}
			if o.etcdBin == "" {
				p, err := exec.LookPath("etcd")
				if err != nil {
					return errors.New("no etcd binary: pass --etcd-bin or set PGR_ETCD_BIN " +
						"(`make demo` builds one with tools/etcd/ensure.sh; or apt-get install etcd-server)")
				}
				o.etcdBin = p
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return runDemo(ctx, o, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&o.dir, "dir", "", "directory for the data and logs, wiped at start (default $TMPDIR/pgrouter-demo)")
	cmd.Flags().IntVar(&o.port, "port", 6432, "first port (see above for the layout)")
	cmd.Flags().StringVar(&o.etcdBin, "etcd-bin", "", "etcd binary (default $PGR_ETCD_BIN, then etcd on PATH)")
	cmd.Flags().BoolVar(&o.synchronous, "synchronous", true, "synchronous replication: no acknowledged write is lost on failover")
	cmd.Flags().BoolVar(&o.chaos, "chaos", false, "kill the primary every --interval under a built-in writer and reader")
	cmd.Flags().DurationVar(&o.interval, "interval", 20*time.Second, "time between kills with --chaos")
	return cmd
}

// demo is one running demo cluster. Its children run in their own process
// groups, so a Ctrl-C reaches the demo alone and it stops them in order:
// proxy, agents (each stops its PostgreSQL), etcd.
type demo struct {
	o      demoOptions
	out    io.Writer
	bin    string // pgrouter binary the children run
	etcd   string // etcd client address
	admin  string
	ports  [3]string // single, rw, ro
	nodes  []demoNode
	procs  []*demoProc // in start order
	asUser *syscall.Credential
}

type demoNode struct {
	name, dataDir, pgAddr, api string
}

// demoProc is one child process.
type demoProc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

func (d *demo) step(format string, args ...any) {
	fmt.Fprintf(d.out, "%s  %s\n", time.Now().Format(time.TimeOnly), fmt.Sprintf(format, args...))
}

func runDemo(ctx context.Context, o demoOptions, out io.Writer) error {
	if o.dir == "" {
		o.dir = filepath.Join(os.TempDir(), "pgrouter-demo")
	}
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return err
	}
	o.dir = dir
	d := &demo{o: o, out: out}
	addr := func(off int) string { return "127.0.0.1:" + strconv.Itoa(o.port+off) }
	d.etcd, d.admin, d.ports = addr(10), addr(2000), [3]string{addr(0), addr(1), addr(2)}
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("n%d", i)
		d.nodes = append(d.nodes, demoNode{name: name, dataDir: filepath.Join(dir, name, "data"), pgAddr: addr(100 + i), api: addr(200 + i)})
	}
	defer d.stopAll()
	if err := d.prepare(); err != nil {
		return err
	}
	if err := d.start(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	d.printBanner()
	if o.chaos {
		runChaos(ctx, d)
		return nil
	}
	<-ctx.Done()
	return nil
}

// prepare wipes what a previous run left and sets up the directory, the
// binary and the operating system user the agents run as.
func (d *demo) prepare() error {
	for _, n := range d.nodes {
		killPostmaster(filepath.Join(n.dataDir, "postmaster.pid"), d.o.dir)
	}
	if err := os.RemoveAll(d.o.dir); err != nil {
		return err
	}
	if err := os.MkdirAll(d.o.dir, 0o755); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	d.bin = self
	if os.Geteuid() != 0 {
		return nil
	}
	// PostgreSQL, and so the agent, refuses to run as root: run the
	// agents as postgres, from a copy of the binary that user can read.
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("running as root, the agents need the postgres user (apt-get install postgresql-15 creates it): %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	d.asUser = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	if err := os.Chmod(d.o.dir, 0o755); err != nil {
		return err
	}
	d.bin = filepath.Join(d.o.dir, "pgrouter")
	b, err := os.ReadFile(self)
	if err != nil {
		return err
	}
	if err := os.WriteFile(d.bin, b, 0o755); err != nil {
		return err
	}
	for _, n := range d.nodes {
		nd := filepath.Dir(n.dataDir)
		if err := os.MkdirAll(nd, 0o700); err != nil {
			return err
		}
		if err := os.Chown(nd, uid, gid); err != nil {
			return err
		}
	}
	return nil
}

// spawn starts a child with its output in dir/<name>.log.
func (d *demo) spawn(name string, cred *syscall.Credential, env []string, bin string, args ...string) error {
	logf, err := os.OpenFile(filepath.Join(d.o.dir, name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = d.o.dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group: the terminal's Ctrl-C reaches the demo only. The
	// kernel kills the child if the demo dies without stopping it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &demoProc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(p.done) }()
	d.procs = append(d.procs, p)
	return nil
}

func (d *demo) start(ctx context.Context) error {
	peer := "127.0.0.1:" + strconv.Itoa(d.o.port+11)
	d.step("starting etcd on %s", d.etcd)
	if err := d.spawn("etcd", nil, nil, d.o.etcdBin, "--name=demo", "--data-dir="+filepath.Join(d.o.dir, "etcd"),
		"--listen-client-urls=http://"+d.etcd, "--advertise-client-urls=http://"+d.etcd,
		"--listen-peer-urls=http://"+peer, "--initial-advertise-peer-urls=http://"+peer,
		"--initial-cluster=demo=http://"+peer, "--log-level=warn"); err != nil {
		return err
	}
	if err := d.waitFor(ctx, time.Minute, "etcd", func() error { return httpOK("http://" + d.etcd + "/health") }); err != nil {
		return err
	}
	for _, n := range d.nodes {
		d.step("starting agent %s: PostgreSQL on %s, API on %s", n.name, n.pgAddr, n.api)
		args := []string{"agent", "--name", n.name, "--scope", demoScope, "--dcs", "etcd", "--etcd-endpoints", d.etcd,
			"--pgdata", n.dataDir, "--pg-listen", n.pgAddr, "--api-listen", n.api}
		if d.o.synchronous {
			args = append(args, "--synchronous")
		}
		env := []string{"HOME=" + filepath.Dir(n.dataDir), "PGROUTER_SUPERUSER_PASSWORD=" + demoSuperPass, "PGROUTER_REPLICATION_PASSWORD=" + demoReplPass}
		if err := d.spawn(n.name, d.asUser, env, d.bin, args...); err != nil {
			return err
		}
	}
	d.step("waiting for a leader and two streaming standbys (initdb, pg_basebackup)...")
	seen := map[string]string{}
	logs := map[string]int64{}
	err := d.waitFor(ctx, 3*time.Minute, "the agents", func() error {
		leaders, replicas := 0, 0
		for _, n := range d.nodes {
			d.logProgress(n.name, logs)
			var v election.View
			if err := getJSON(ctx, n.api, "/status", &v); err != nil {
				continue
			}
			if now := demoReady(v); now != "" && now != seen[n.name] {
				seen[n.name] = now
				d.step("%s: %s", n.name, now)
			}
			if v.IsLeader && v.Role == "primary" {
				leaders++
			} else if v.Role == "standby" && v.Streaming {
				replicas++
			}
		}
		if leaders != 1 || replicas != 2 {
			return fmt.Errorf("%d leader(s), %d streaming standby(s)", leaders, replicas)
		}
		return nil
	})
	if err != nil {
		return err
	}
	d.step("starting the proxy: single %s, read-write %s, read-only %s, admin %s", d.ports[0], d.ports[1], d.ports[2], d.admin)
	if err := d.spawn("proxy", nil, []string{"PGROUTER_HEALTH_PASSWORD=" + demoSuperPass}, d.bin,
		"proxy", "--discovery", "etcd", "--etcd-endpoints", d.etcd, "--scope", demoScope,
		"--listen", d.ports[0], "--listen-rw", d.ports[1], "--listen-ro", d.ports[2], "--admin-listen", d.admin,
		"--health-user", demoSuper, "--drain-timeout", "1s"); err != nil {
		return err
	}
	if err := d.waitFor(ctx, time.Minute, "the proxy", func() error { return httpOK("http://" + d.admin + "/readyz") }); err != nil {
		return err
	}
	d.step("ready")
	return nil
}

// demoReady names the ready states: primary, or standby streaming.
func demoReady(v election.View) string {
	switch {
	case v.IsLeader && v.Role == "primary":
		return "ready: primary, holds the leader key"
	case v.Role == "standby" && v.Streaming:
		return "ready: standby streaming from " + v.Leader
	}
	return ""
}

// demoSteps are the agent log messages that make the progress lines: the
// agent is busy in initdb or pg_basebackup then, and its API shows only
// where it was before.
var demoSteps = []struct{ msg, say string }{
	{"bootstrapping the cluster (initdb)", "init: initdb, this member bootstraps the cluster"},
	{"\tbootstrapped\t", "init: done, running as primary"},
	{"cloning the leader", "clone: pg_basebackup from the leader"},
	{"cloned the leader", "clone: done, starting as a standby"},
}

// logProgress prints the steps found in an agent's log since offsets[name].
func (d *demo) logProgress(name string, offsets map[string]int64) {
	f, err := os.Open(filepath.Join(d.o.dir, name+".log"))
	if err != nil {
		return
	}
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, offsets[name], 1<<30))
	if err != nil {
		return
	}
	// Only whole lines: a half-written one is read again next time.
	end := bytes.LastIndexByte(b, '\n') + 1
	offsets[name] += int64(end)
	for _, line := range strings.Split(string(b[:end]), "\n") {
		for _, st := range demoSteps {
			if strings.Contains(line, st.msg) {
				d.step("%s: %s", name, st.say)
			}
		}
	}
}

// waitFor polls f until it succeeds, a child exits, ctx ends or d passes.
func (d *demo) waitFor(ctx context.Context, limit time.Duration, what string, f func() error) error {
	deadline := time.Now().Add(limit)
	for {
		err := f()
		if err == nil {
			return nil
		}
		for _, p := range d.procs {
			select {
			case <-p.done:
				return fmt.Errorf("%s exited; see %s", p.name, filepath.Join(d.o.dir, p.name+".log"))
			default:
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %v (logs in %s)", what, limit, err, d.o.dir)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func httpOK(url string) error {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return errors.New(resp.Status)
	}
	return nil
}

func (d *demo) conn(addr string) string {
	_, port, _ := strings.Cut(addr, ":")
	return fmt.Sprintf("psql 'host=127.0.0.1 port=%s user=%s password=%s dbname=postgres'", port, demoSuper, demoSuperPass)
}

func (d *demo) printBanner() {
	apis := make([]string, 0, len(d.nodes))
	for _, n := range d.nodes {
		apis = append(apis, n.api)
	}
	mode := "asynchronous"
	if d.o.synchronous {
		mode = "synchronous"
	}
	fmt.Fprintf(d.out, `
pgrouter is running in front of three agents (%s replication). Connect with:
  single endpoint : %s
  read-write      : %s
  read-only       : %s
  dashboard       : http://%s/
  cluster status  : %s status --admin %s --api %s
  agent APIs      : %s   (/status, /primary, /replica, /metrics)
  etcd            : %s (keys under /pgrouter/%s/)
Try:
  %s switchover --api %s               # planned switchover
  %s failover --api %s --to NAME        # promote NAME now
Logs: %s/{etcd,n1,n2,n3,proxy}.log. Press Ctrl-C to stop everything.

`, mode, d.conn(d.ports[0]), d.conn(d.ports[1]), d.conn(d.ports[2]), d.admin, "pgrouter", d.admin, d.nodes[0].api,
		strings.Join(apis, "  "), d.etcd, demoScope, "pgrouter", d.nodes[0].api, "pgrouter", d.nodes[0].api, d.o.dir)
}

// stopAll stops the children in reverse order of start, SIGTERM first
// and SIGKILL after a grace period, then kills any postmaster an agent
// left behind, so nothing the demo started outlives it.
func (d *demo) stopAll() {
	if len(d.procs) == 0 {
		return
	}
	d.step("stopping the proxy, the agents (each stops its PostgreSQL) and etcd")
	stop := func(p *demoProc, grace time.Duration) {
		select {
		case <-p.done:
			return
		default:
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	var agents []*demoProc
	var etcd, proxy *demoProc
	for _, p := range d.procs {
		switch p.name {
		case "etcd":
			etcd = p
		case "proxy":
			proxy = p
		default:
			agents = append(agents, p)
		}
	}
	if proxy != nil {
		stop(proxy, 10*time.Second)
	}
	done := make(chan struct{})
	for _, p := range agents {
		go func() { stop(p, time.Minute); done <- struct{}{} }()
	}
	for range agents {
		<-done
	}
	if etcd != nil {
		stop(etcd, 10*time.Second)
	}
	for _, n := range d.nodes {
		killPostmaster(filepath.Join(n.dataDir, "postmaster.pid"), d.o.dir)
	}
	d.step("stopped; data and logs are in %s", d.o.dir)
}

// processAlive reports whether pid runs (a zombie does not count).
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z' && b[i+2] != 'X'
}

// killPostmaster kills the postmaster of pidFile if its command line
// mentions mustMention, and waits for it to go.
func killPostmaster(pidFile, mustMention string) {
	pid, err := postmasterPID(pidFile)
	if err != nil || !processAlive(pid) {
		return
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if !bytes.Contains(cmdline, []byte(mustMention)) {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 500 && processAlive(pid); i++ {
		time.Sleep(10 * time.Millisecond)
	}
}

// postmasterPID reads the first line of a postmaster.pid.
func postmasterPID(pidFile string) (int, error) {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return strconv.Atoi(strings.TrimSpace(line))
}
