package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrouter/pgrouter/election"
	"github.com/pgrouter/pgrouter/internal/pgtest"
)

// The agent tests run real processes only: etcd built by tools/etcd (its
// path in PGR_ETCD_BIN, which `make test` sets), three `pgrouter agent`
// processes of the binary TestMain builds, running as the postgres OS user
// when the tests run as root, each managing its own PostgreSQL, and a
// `pgrouter proxy --discovery etcd` in front of them.

const (
	agentSuper     = "postgres"
	agentSuperPass = "agent-super-pw"
	agentRepl      = "replicator"
	agentReplPass  = "agent-repl-pw"
	agentScope     = "e2e"
	agentDirPrefix = "pgr-agents-"
)

// etcdBin returns PGR_ETCD_BIN or skips the test; in CI it fails instead,
// so CI can never pass having run no agent test.
func etcdBin(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("PGR_ETCD_BIN")
	if bin == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("PGR_ETCD_BIN is not set (run `make test`, which builds etcd with tools/etcd/ensure.sh)")
		}
		t.Skip("PGR_ETCD_BIN is not set: run `make test` or PGR_ETCD_BIN=$(tools/etcd/ensure.sh) go test ...")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("PGR_ETCD_BIN: %v", err)
	}
	return bin
}

// pgCredential is the postgres OS user when running as root, else nil.
func pgCredential(t *testing.T) *syscall.Credential {
	t.Helper()
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatalf("running as root, so the agents must run as the postgres OS user: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}
}

// reapStaleAgentDirs stops the servers a killed test binary left in
// agent test directories, and removes the directories. A postmaster is
// killed only when its command line names that directory.
func reapStaleAgentDirs(t *testing.T) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), agentDirPrefix+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, "owner.pid"))
		if err != nil {
			continue
		}
		owner, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || processAlive(owner) {
			continue
		}
		pids, _ := filepath.Glob(filepath.Join(dir, "*", "data", "postmaster.pid"))
		for _, pf := range pids {
			killPostmaster(pf, dir)
		}
		os.RemoveAll(dir)
		t.Logf("removed %s left by dead test process %d", dir, owner)
	}
}

// etcdProc is a running etcd.
type etcdProc struct {
	Client string // host:port
	cmd    *exec.Cmd
	done   chan struct{}
	log    string
}

func startEtcd(t *testing.T, bin, dir string) *etcdProc {
	t.Helper()
	client, peer := freeAddr(t), freeAddr(t)
	e := &etcdProc{Client: client, done: make(chan struct{}), log: filepath.Join(dir, "etcd.log")}
	logf, err := os.Create(e.log)
	if err != nil {
		t.Fatal(err)
	}
	e.cmd = exec.Command(bin, "--name=t", "--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls=http://"+client, "--advertise-client-urls=http://"+client,
		"--listen-peer-urls=http://"+peer, "--initial-advertise-peer-urls=http://"+peer,
		"--initial-cluster=t=http://"+peer, "--unsafe-no-fsync=true", "--log-level=warn")
	e.cmd.Stdout, e.cmd.Stderr = logf, logf
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := e.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = e.cmd.Wait(); logf.Close(); close(e.done) }()
	t.Cleanup(func() {
		_ = e.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-e.done:
		case <-time.After(10 * time.Second):
			_ = e.cmd.Process.Kill()
			<-e.done
		}
	})
	eventually(t, 20*time.Second, "etcd healthy", func() error {
		select {
		case <-e.done:
			b, _ := os.ReadFile(e.log)
			t.Fatalf("etcd exited:\n%s", b)
		default:
		}
		resp, err := http.Get("http://" + client + "/health")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("health %d", resp.StatusCode)
		}
		return nil
	})
	return e
}

// agentProc is one `pgrouter agent` and its PostgreSQL.
type agentProc struct {
	t       *testing.T
	Name    string
	Dir     string // node directory, owned by the agents' OS user
	DataDir string
	PGAddr  string
	PGPort  int
	API     string
	args    []string
	env     []string
	cred    *syscall.Credential
	bin     string
	logPath string
	etcd    *faultLink // the agent's link to etcd

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// start runs the agent process; the previous one must have exited.
func (a *agentProc) start() {
	a.t.Helper()
	logf, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		a.t.Fatal(err)
	}
	cmd := exec.Command(a.bin, a.args...)
	cmd.Env = a.env
	cmd.Dir = a.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: a.cred}
	if err := cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	a.mu.Lock()
	a.cmd, a.done = cmd, done
	a.mu.Unlock()
}

// kill sends SIGKILL to the agent alone: its PostgreSQL keeps running.
func (a *agentProc) kill() {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.mu.Unlock()
	_ = cmd.Process.Kill()
	<-done
}

// stop sends SIGTERM: the agent stops PostgreSQL and exits.
func (a *agentProc) stop() {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(90 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

func (a *agentProc) running() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	select {
	case <-a.done:
		return false
	default:
		return true
	}
}

// status reads the agent's /status.
func (a *agentProc) status() (election.View, error) {
	var v election.View
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + a.API + "/status")
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&v)
	return v, err
}

// get returns the status code of an API path.
func (a *agentProc) get(path string) (int, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + a.API + path)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// metric returns the sum of a metric's samples whose label text contains
// labels (e.g. `reason="renew_deadline"`), from /metrics.
func (a *agentProc) metric(name, labels string) float64 {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + a.API + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) || !strings.Contains(line, labels) {
			continue
		}
		f := strings.Fields(line)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		sum += v
	}
	return sum
}

// postmasterPID reads the server's PID from postmaster.pid.
func (a *agentProc) postmasterPID() (int, error) {
	b, err := os.ReadFile(filepath.Join(a.DataDir, "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return strconv.Atoi(strings.TrimSpace(line))
}

func (a *agentProc) logTail(n int) string {
	b, _ := os.ReadFile(a.logPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	var keep []string
	for _, l := range lines {
		if !strings.Contains(l, "\tDEBUG\t") {
			keep = append(keep, l)
		}
	}
	if len(keep) > n {
		keep = keep[len(keep)-n:]
	}
	return strings.Join(keep, "\n")
}

// agentCluster is etcd, three agents and a proxy following them.
type agentCluster struct {
	t      *testing.T
	dir    string
	etcd   *etcdProc
	agents []*agentProc
	proxy  *proxyProc
}

type agentOptions struct {
	synchronous bool
	warm        bool
	extra       []string // more agent flags
	// bin is the pgrouter binary for the agents and the proxy; default
	// binPath (built with -race).
	bin string
	// store, when set, replaces etcd (none is started): it prepares the
	// agent's consensus store and returns its flags.
	store func(a *agentProc) []string
	// proxy, when set, starts the proxy instead of startEtcdProxy.
	proxy func(bin string) *proxyProc
}

// startAgentCluster starts etcd, three agents (each behind its own
// fault proxy to etcd) and the proxy, and waits until one leads, the two
// others stream from it and the proxy routes writes to it.
func startAgentCluster(t *testing.T, o agentOptions) *agentCluster {
	t.Helper()
	var bin string
	if o.store == nil {
		bin = etcdBin(t)
	}
	cred := pgCredential(t)
	reapStaleAgentDirs(t)
	dir, err := os.MkdirTemp("", agentDirPrefix)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		t.Fatal(err)
	}
	c := &agentCluster{t: t, dir: dir}
	// The agents' OS user must be able to run the binary: copy it here.
	agentBin := filepath.Join(dir, "pgrouter")
	src := binPath
	if o.bin != "" {
		src = o.bin
	}
	if err := pgtest.CopyFile(src, agentBin, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.close)
	if o.store == nil {
		c.etcd = startEtcd(t, bin, dir)
	}
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("n%d", i)
		nodeDir := filepath.Join(dir, name)
		if err := os.Mkdir(nodeDir, 0o700); err != nil {
			t.Fatal(err)
		}
		if cred != nil {
			if err := os.Chown(nodeDir, int(cred.Uid), int(cred.Gid)); err != nil {
				t.Fatal(err)
			}
		}
		port := freePortNum(t)
		a := &agentProc{
			t: t, Name: name, Dir: nodeDir, DataDir: filepath.Join(nodeDir, "data"),
			PGPort: port, PGAddr: "127.0.0.1:" + strconv.Itoa(port), API: freeAddr(t),
			cred: cred, bin: agentBin, logPath: filepath.Join(dir, name+".log"),
		}
		var store []string
		if o.store != nil {
			store = o.store(a)
		} else {
			a.etcd = newFaultLink(t, c.etcd.Client)
			store = []string{"--name", name, "--dcs", "etcd", "--etcd-endpoints", a.etcd.Addr()}
		}
		a.args = append([]string{"agent", "--scope", agentScope}, store...)
		a.args = append(a.args, "--pgdata", a.DataDir, "--pg-listen", a.PGAddr,
			"--api-listen", a.API, "--superuser", agentSuper, "--replication-user", agentRepl,
			"--pg-param", "fsync=off", "--pg-param", "max_connections=60", "--pg-param", "shared_buffers=16MB",
			"--initdb-arg=--no-sync", "--initdb-arg=--wal-segsize=1",
			"--rejoin-timeout", "3s", "--log-level", "debug")
		if o.synchronous {
			a.args = append(a.args, "--synchronous")
		}
		if o.warm {
			a.args = append(a.args, "--standby-mode", "warm")
		}
		a.args = append(a.args, o.extra...)
		a.env = append(pgtest.ProcessEnv(), "HOME="+nodeDir,
			"PGROUTER_SUPERUSER_PASSWORD="+agentSuperPass, "PGROUTER_REPLICATION_PASSWORD="+agentReplPass)
		c.agents = append(c.agents, a)
	}
	for _, a := range c.agents {
		a.start()
	}
	c.waitHealthy(90 * time.Second)
	if o.proxy != nil {
		c.proxy = o.proxy(agentBin)
	} else {
		c.proxy = startEtcdProxy(t, agentBin, c.etcd.Client)
	}
	c.waitHealthy(30 * time.Second)
	return c
}

func freePortNum(t *testing.T) int {
	t.Helper()
	_, port, _ := net.SplitHostPort(freeAddr(t))
	n, _ := strconv.Atoi(port)
	return n
}

// close stops the proxy, the agents (each stops its PostgreSQL), kills
// any postmaster left (an agent killed by a test), and removes the
// directory unless the test failed.
func (c *agentCluster) close() {
	if c.proxy != nil {
		c.proxy.stop()
	}
	var wg sync.WaitGroup
	for _, a := range c.agents {
		wg.Go(a.stop)
	}
	wg.Wait()
	for _, a := range c.agents {
		killPostmaster(filepath.Join(a.DataDir, "postmaster.pid"), a.DataDir)
		// The binary is built with -race: a report fails the test.
		if b, err := os.ReadFile(a.logPath); err == nil && bytes.Contains(b, []byte("WARNING: DATA RACE")) {
			c.t.Errorf("agent %s reported a data race (log %s)", a.Name, a.logPath)
		}
	}
	if c.t.Failed() {
		for _, a := range c.agents {
			c.t.Logf("agent %s log (%s), last lines:\n%s", a.Name, a.logPath, a.logTail(60))
		}
		// Without owner.pid the next run's reaper leaves it alone.
		os.Remove(filepath.Join(c.dir, "owner.pid"))
		c.t.Logf("kept %s for inspection", c.dir)
		return
	}
	os.RemoveAll(c.dir)
}

func (c *agentCluster) agent(name string) *agentProc {
	for _, a := range c.agents {
		if a.Name == name {
			return a
		}
	}
	c.t.Fatalf("no agent %s", name)
	return nil
}

// leader returns the agent whose /primary answers 200, if exactly one does.
func (c *agentCluster) leader() (*agentProc, error) {
	var found []*agentProc
	for _, a := range c.agents {
		if code, err := a.get("/primary"); err == nil && code == 200 {
			found = append(found, a)
		}
	}
	if len(found) != 1 {
		names := []string{}
		for _, a := range found {
			names = append(names, a.Name)
		}
		return nil, fmt.Errorf("%d agents answer /primary 200: %v", len(found), names)
	}
	return found[0], nil
}

// pgConn connects to a member's PostgreSQL directly as the superuser.
func pgConn(ctx context.Context, addr string) (*pgx.Conn, error) {
	host, port, _ := net.SplitHostPort(addr)
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s user=%s dbname=postgres sslmode=disable connect_timeout=3", host, port, agentSuper))
	if err != nil {
		return nil, err
	}
	cfg.Password = agentSuperPass
	return pgx.ConnectConfig(ctx, cfg)
}

// checkHealthy verifies the invariants once: exactly one running primary,
// which is the one agent answering /primary; every other member a standby
// streaming from it (pg_stat_replication on the primary); in synchronous
// mode a confirmed synchronous standby; the proxy's read-write port lands
// on the primary.
func (c *agentCluster) checkHealthy() (*agentProc, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ld, err := c.leader()
	if err != nil {
		return nil, err
	}
	primaries := 0
	for _, a := range c.agents {
		conn, err := pgConn(ctx, a.PGAddr)
		if err != nil {
			if st, serr := a.status(); serr == nil && st.Warm && st.Role == "standby" {
				continue // a warm standby takes no connections
			}
			return nil, fmt.Errorf("%s: %v", a.Name, err)
		}
		var rec bool
		err = conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec)
		conn.Close(ctx)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", a.Name, err)
		}
		if !rec {
			primaries++
			if a != ld {
				return nil, fmt.Errorf("%s runs as primary but %s leads", a.Name, ld.Name)
			}
		}
	}
	if primaries != 1 {
		return nil, fmt.Errorf("%d primaries", primaries)
	}
	conn, err := pgConn(ctx, ld.PGAddr)
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	streaming, err := pgtest.StreamingStandbys(ctx, conn)
	if err != nil {
		return nil, err
	}
	for _, a := range c.agents {
		if a == ld {
			if code, err := a.get("/replica"); err != nil || code != 503 {
				return nil, fmt.Errorf("leader %s: /replica %d %v, want 503", a.Name, code, err)
			}
			continue
		}
		if _, ok := streaming[a.Name]; !ok {
			return nil, fmt.Errorf("%s does not stream from %s (streaming: %v)", a.Name, ld.Name, streaming)
		}
		for path, want := range map[string]int{"/replica": 200, "/health": 200, "/primary": 503} {
			if code, err := a.get(path); err != nil || code != want {
				return nil, fmt.Errorf("standby %s: %s %d %v, want %d", a.Name, path, code, err, want)
			}
		}
	}
	st, err := ld.status()
	if err != nil {
		return nil, err
	}
	if st.Sync != nil && st.Sync.Leader == ld.Name && st.Sync.Standby == "" && strings.Contains(strings.Join(ld.args, " "), "--synchronous") {
		return nil, fmt.Errorf("no synchronous standby confirmed yet (%v)", streaming)
	}
	if c.proxy != nil {
		pc, err := connect(c.t, c.proxy.RW, agentSuper, agentSuperPass, nil)
		if err != nil {
			return nil, fmt.Errorf("proxy rw: %v", err)
		}
		defer pc.Close(ctx)
		var port int
		if err := pc.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
			return nil, fmt.Errorf("proxy rw: %v", err)
		}
		if port != ld.PGPort {
			return nil, fmt.Errorf("proxy rw lands on port %d, not on %s (%d)", port, ld.Name, ld.PGPort)
		}
	}
	return ld, nil
}

// waitHealthy polls checkHealthy until it passes and returns the leader.
func (c *agentCluster) waitHealthy(d time.Duration) *agentProc {
	c.t.Helper()
	var ld *agentProc
	eventually(c.t, d, "cluster healthy", func() error {
		for _, a := range c.agents {
			if !a.running() {
				return fmt.Errorf("agent %s exited:\n%s", a.Name, a.logTail(20))
			}
		}
		var err error
		ld, err = c.checkHealthy()
		return err
	})
	return ld
}

// startEtcdProxy runs pgrouter proxy with etcd discovery and waits until
// it knows a primary.
func startEtcdProxy(t *testing.T, bin, etcd string) *proxyProc {
	t.Helper()
	p := newProxyProc(t)
	p.launch(bin, []string{"proxy", "--discovery", "etcd", "--etcd-endpoints", etcd, "--scope", agentScope,
		"--listen", p.Any, "--listen-rw", p.RW, "--listen-ro", p.RO, "--admin-listen", p.Admin,
		"--health-user", agentSuper, "--health-interval", "200ms", "--primary-wait", "20s", "--log-level", "debug"},
		append(pgtest.ProcessEnv(), "PGROUTER_HEALTH_PASSWORD="+agentSuperPass))
	p.waitReady()
	return p
}

// writer inserts rows through the proxy's read-write port, one statement
// per transaction, reconnecting after any error, and remembers the rows
// PostgreSQL acknowledged.
type writer struct {
	t    *testing.T
	addr string
	stop context.CancelFunc
	done chan struct{}

	mu        sync.Mutex
	next      int64
	acked     []int64
	ackedAt   []time.Time
	ackedBy   []int // server port that acknowledged each write
	errors    int
	lastOK    time.Time
	longest   time.Duration // longest time between two acknowledged writes
	longestAt time.Time
}

func startWriter(t *testing.T, addr string, first int64) *writer {
	ctx, cancel := context.WithCancel(context.Background())
	w := &writer{t: t, addr: addr, stop: cancel, done: make(chan struct{}), next: first, lastOK: time.Now()}
	go w.run(ctx)
	return w
}

func (w *writer) run(ctx context.Context) {
	defer close(w.done)
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		if conn == nil {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			c, err := connectWriter(cctx, w.addr)
			cancel()
			if err != nil {
				w.fail()
				pauseCtx(ctx, 20*time.Millisecond)
				continue
			}
			conn = c
		}
		w.mu.Lock()
		id := w.next
		w.next++
		w.mu.Unlock()
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		var port int
		err := conn.QueryRow(qctx, "INSERT INTO acked (id) VALUES ($1) RETURNING inet_server_port()", id).Scan(&port)
		cancel()
		if err != nil {
			w.fail()
			conn.Close(context.Background())
			conn = nil
			continue
		}
		now := time.Now()
		w.mu.Lock()
		w.acked = append(w.acked, id)
		w.ackedAt = append(w.ackedAt, now)
		w.ackedBy = append(w.ackedBy, port)
		if gap := now.Sub(w.lastOK); gap > w.longest {
			w.longest, w.longestAt = gap, now
		}
		w.lastOK = now
		w.mu.Unlock()
		pauseCtx(ctx, 5*time.Millisecond)
	}
}

func connectWriter(ctx context.Context, addr string) (*pgx.Conn, error) {
	host, port, _ := net.SplitHostPort(addr)
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s user=%s dbname=postgres sslmode=disable", host, port, agentSuper))
	if err != nil {
		return nil, err
	}
	cfg.Password = agentSuperPass
	return pgx.ConnectConfig(ctx, cfg)
}

func (w *writer) fail() {
	w.mu.Lock()
	w.errors++
	w.mu.Unlock()
}

// finish stops the writer and returns what it saw.
func (w *writer) finish() (acked []int64, errs int, longest time.Duration) {
	w.stop()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.acked, w.errors, w.longest
}

// firstAckAfter returns when the first write after t that a server other
// than notPort acknowledged was. (A killed postmaster's backends may still
// acknowledge a write or two.)
func (w *writer) firstAckAfter(t time.Time, notPort int) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	i := len(w.ackedAt)
	for i > 0 && w.ackedAt[i-1].After(t) {
		i--
	}
	for ; i < len(w.ackedAt); i++ {
		if w.ackedBy[i] != notPort {
			return w.ackedAt[i], true
		}
	}
	return time.Time{}, false
}

// errorCount returns how many errors the client saw so far.
func (w *writer) errorCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.errors
}

// count returns how many writes were acknowledged so far.
// settle waits until writes flow again after a fault, stops the writer,
// and fails the test if an acknowledged row is missing on the new leader.
func (w *writer) settle(t *testing.T, nl *agentProc) (acked []int64, errs int, longest time.Duration) {
	t.Helper()
	before := w.count()
	eventually(t, 20*time.Second, "writes flowing again", func() error {
		if n := w.count(); n < before+20 {
			return fmt.Errorf("%d acknowledged since healthy", n-before)
		}
		return nil
	})
	acked, errs, longest = w.finish()
	if missing := missingRows(t, nl.PGAddr, acked); len(missing) > 0 {
		t.Errorf("%d of %d acknowledged rows missing on %s, e.g. %v", len(missing), len(acked), nl.Name, missing[:min(5, len(missing))])
	}
	return acked, errs, longest
}

func (w *writer) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

// missing returns the acknowledged ids the primary does not have.
func missingRows(t *testing.T, addr string, acked []int64) []int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgConn(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, _ := conn.Query(ctx, "SELECT id FROM acked")
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	have := make(map[int64]bool, len(ids))
	for _, id := range ids {
		have[id] = true
	}
	var missing []int64
	for _, id := range acked {
		if !have[id] {
			missing = append(missing, id)
		}
	}
	return missing
}

// fencedBeforePromoted waits, after ld was cut off at cut, until its
// PostgreSQL refuses connections and another member leads; the fencing
// must come first. It returns the new leader.
func fencedBeforePromoted(t *testing.T, c *agentCluster, ld *agentProc, cut time.Time) *agentProc {
	t.Helper()
	var fenced, promoted time.Time
	var nl *agentProc
	eventually(t, 30*time.Second, "old primary fenced and a new leader promoted", func() error {
		if fenced.IsZero() && !acceptsConnections(ld) {
			fenced = time.Now()
		}
		if promoted.IsZero() {
			if l, err := c.leader(); err == nil && l != ld {
				promoted, nl = time.Now(), l
			}
		}
		if fenced.IsZero() || promoted.IsZero() {
			return fmt.Errorf("fenced %v, promoted %v", !fenced.IsZero(), !promoted.IsZero())
		}
		return nil
	})
	if !fenced.Before(promoted) {
		t.Errorf("the old primary still accepted connections %v after the new leader was promoted", fenced.Sub(promoted))
	}
	if n := ld.metric("pgrouter_agent_fencings_total", ""); n < 1 {
		t.Errorf("fencings_total on %s = %v, want ≥ 1", ld.Name, n)
	}
	t.Logf("partition: old primary fenced %v after the cut, new leader at %v",
		fenced.Sub(cut).Round(time.Millisecond), promoted.Sub(cut).Round(time.Millisecond))
	return nl
}
