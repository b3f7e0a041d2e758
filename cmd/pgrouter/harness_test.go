package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"

	"github.com/pgrouter/pgrouter/internal/pgtest"
)

// binPath is the pgrouter binary built once for the package's tests; the
// integration tests drive it as a user would.
var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pgrouter-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "pgrouter")
	build := exec.Command("go", "build", "-race", "-o", binPath, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build pgrouter:", err)
		os.Exit(1)
	}
	code := m.Run()
	closeShared()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

var shared struct {
	once sync.Once
	c    *pgtest.Cluster
	err  error
}

// sharedCluster is a primary, two hot standbys and a warm one, shared by
// the tests that do not change roles.
func sharedCluster(t *testing.T) *pgtest.Cluster {
	t.Helper()
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		shared.c, shared.err = pgtest.Start(ctx, pgtest.Options{Standbys: 2, WarmStandbys: 1})
	})
	if shared.err != nil {
		t.Fatalf("pgtest: %v", shared.err)
	}
	return shared.c
}

func closeShared() {
	if shared.c != nil {
		shared.c.Close()
	}
}

// proxyProc is a running pgrouter proxy process.
type proxyProc struct {
	t           *testing.T
	cmd         *exec.Cmd
	Any, RW, RO string // listener addresses
	Admin       string
	logMu       sync.Mutex
	log         strings.Builder
	done        chan struct{}
	exitErr     error
}

// given holds every address freeAddr returned in this process.
var given struct {
	mu    sync.Mutex
	addrs map[string]bool
}

// freeAddr returns a loopback address free at the time of the call, never
// one it returned before: the kernel may hand out a port again as soon as
// it is closed, and two listeners of one process must not get the same.
func freeAddr(t *testing.T) string {
	t.Helper()
	given.mu.Lock()
	defer given.mu.Unlock()
	if given.addrs == nil {
		given.addrs = map[string]bool{}
	}
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		if !given.addrs[addr] {
			given.addrs[addr] = true
			return addr
		}
	}
	t.Fatal("freeAddr: the kernel returned only addresses already given out")
	return ""
}

func backends(nodes []*pgtest.Node) string {
	var as []string
	for _, n := range nodes {
		as = append(as, n.Addr)
	}
	return strings.Join(as, ",")
}

// startProxy runs pgrouter proxy in front of c with all three listeners
// and waits until it knows a primary. Extra flags come last and win;
// --backends among them replaces c's member list.
func startProxy(t *testing.T, c *pgtest.Cluster, extra ...string) *proxyProc {
	t.Helper()
	p := startProxyNoWait(t, c, extra...)
	p.waitReady()
	return p
}

// startProxyNoWait starts the proxy and returns once its admin server
// answers, whether or not a primary is known.
func startProxyNoWait(t *testing.T, c *pgtest.Cluster, extra ...string) *proxyProc {
	t.Helper()
	p := newProxyProc(t)
	args := []string{"proxy"}
	if !slices.Contains(extra, "--config") && !slices.Contains(extra, "--backends") {
		args = append(args, "--backends", backends(c.Nodes))
	}
	args = append(args, "--listen", p.Any, "--listen-rw", p.RW, "--listen-ro", p.RO, "--admin-listen", p.Admin,
		"--health-user", c.SuperUser, "--health-database", "postgres",
		"--health-interval", "200ms", "--log-level", "debug")
	args = append(args, extra...)
	p.launch(binPath, args, append(os.Environ(), "PGROUTER_HEALTH_PASSWORD="+c.SuperPassword))
	p.waitAdmin()
	return p
}

// waitAdmin returns once the proxy's admin server answers, whether or not
// a primary is known; the test fails if the proxy exits first.
func (p *proxyProc) waitAdmin() {
	t := p.t
	t.Helper()
	eventually(t, 20*time.Second, "admin server up", func() error {
		select {
		case <-p.done:
			t.Fatalf("pgrouter exited: %v\n%s", p.exitErr, p.logs())
		default:
		}
		resp, err := http.Get("http://" + p.Admin + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
}

// newProxyProc picks free loopback addresses for every listener.
func newProxyProc(t *testing.T) *proxyProc {
	return &proxyProc{t: t, Any: freeAddr(t), RW: freeAddr(t), RO: freeAddr(t), Admin: freeAddr(t), done: make(chan struct{})}
}

// launch starts the binary, collects its output, and stops it (SIGTERM)
// when the test ends, showing the tail of its log if the test failed.
func (p *proxyProc) launch(bin string, args, env []string) {
	t := p.t
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = env
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stdout = p.cmd.Stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.logMu.Lock()
			p.log.WriteString(sc.Text() + "\n")
			p.logMu.Unlock()
		}
		p.exitErr = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			logs := p.logs()
			if len(logs) > 20000 {
				logs = logs[len(logs)-20000:]
			}
			t.Logf("pgrouter log (tail):\n%s", logs)
		}
	})
}

func asPgError(err error, pe **pgconn.PgError) bool { return errors.As(err, pe) }

func (p *proxyProc) logs() string {
	p.logMu.Lock()
	defer p.logMu.Unlock()
	return p.log.String()
}

// stop sends SIGTERM and waits for the process to exit.
func (p *proxyProc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(40 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proxyProc) waitReady() {
	p.t.Helper()
	eventually(p.t, 20*time.Second, "proxy ready", func() error {
		select {
		case <-p.done:
			p.t.Fatalf("pgrouter exited: %v\n%s", p.exitErr, p.logs())
		default:
		}
		resp, err := http.Get("http://" + p.Admin + "/readyz")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return fmt.Errorf("readyz %d: %s", resp.StatusCode, b)
		}
		return nil
	})
}

// eventually polls f until it succeeds or the deadline passes.
func eventually(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// connect opens a pgx connection to addr as the cluster's app user unless
// user/password are given.
func connect(t *testing.T, addr, user, password string, params map[string]string) (*pgx.Conn, error) {
	t.Helper()
	return connectDB(t, addr, user, password, "postgres", params)
}

func connectDB(t *testing.T, addr, user, password, db string, params map[string]string) (*pgx.Conn, error) {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	return connectHost(t, host, port, user, password, db, params)
}

// connectHost connects to host and port as libpq would name them: host
// is an address, or the directory of a Unix socket .s.PGSQL.port.
func connectHost(t *testing.T, host, port, user, password, db string, params map[string]string) (*pgx.Conn, error) {
	t.Helper()
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=disable connect_timeout=20", host, port, user, db))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Password = password
	for k, v := range params {
		cfg.RuntimeParams[k] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return pgx.ConnectConfig(ctx, cfg)
}

func mustConnect(t *testing.T, c *pgtest.Cluster, addr string, params map[string]string) *pgx.Conn {
	t.Helper()
	conn, err := connect(t, addr, c.SuperUser, c.SuperPassword, params)
	if err != nil {
		t.Fatalf("connect %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// where returns the port of the server a connection landed on (0 when it
// reached the server on its Unix socket) and whether it is in recovery.
func where(t *testing.T, conn *pgx.Conn) (port int, inRecovery bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := conn.QueryRow(ctx, "SELECT coalesce(inet_server_port(), 0), pg_is_in_recovery()").Scan(&port, &inRecovery); err != nil {
		t.Fatal(err)
	}
	return port, inRecovery
}

func sqlState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// sleepAndCancel runs a long pg_sleep on conn and sends cancel requests
// (through the connection's own address, so through the proxy) until it
// ends; an early cancel, before the sleep runs, is a no-op, hence the
// repeats. It returns the statement's error.
func sleepAndCancel(t *testing.T, conn *pgx.Conn) error {
	return sleepAndCancelWith(t, conn, conn.PgConn().CancelRequest)
}

// sleepAndCancelWith is sleepAndCancel with the cancel request sent by
// cancel, for requests that go elsewhere than the session's own port.
func sleepAndCancelWith(t *testing.T, conn *pgx.Conn, cancel func(context.Context) error) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		_, err := conn.Exec(context.Background(), "SELECT pg_sleep(30)")
		errc <- err
	}()
	for {
		ctx, stop := context.WithTimeout(context.Background(), 5*time.Second)
		cerr := cancel(ctx)
		stop()
		if cerr != nil {
			t.Fatal(cerr)
		}
		select {
		case err := <-errc:
			return err
		case <-time.After(300 * time.Millisecond):
		}
	}
}
