// Package pgtest starts a real PostgreSQL cluster for tests and demos: a
// primary plus streaming-replication standbys cloned with pg_basebackup,
// in a temporary directory, on free loopback ports.
//
// Every member listens on 127.0.0.1 only, has the roles of the constants
// (SuperUser, AppUser, MD5User, ...) and the pg_hba.conf of hbaConf, and
// runs with fsync=off and full_page_writes=off for speed; see memberConf
// for the rest. When the process runs as root the servers run as the
// postgres OS user, since PostgreSQL refuses root.
//
// Start waits until every standby streams; Close stops every server and
// removes the directory. A cluster left behind by a test binary that was
// killed is removed by the next Start in the same parent directory. initdb
// runs once per machine: its output is kept beside the clusters (see
// templatePrefix) and copied for each cluster.
//
// Linux only: it reads /proc and uses Pdeathsig.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// dirPrefix names cluster directories; it is short because the Unix socket
// path inside must stay under 107 bytes.
const dirPrefix = "pgt-"

// startTimeout bounds Start when its context has no deadline.
const startTimeout = 2 * time.Minute

// Options says what cluster Start makes. The zero value is a lone primary.
type Options struct {
	// Standbys is the number of hot standbys (hot_standby=on).
	Standbys int
	// WarmStandbys is the number of further standbys with hot_standby=off:
	// they stream and replay but accept no connection.
	WarmStandbys int
	// Params are extra postgresql.conf settings for every member. The
	// per-node settings (port, unix_socket_directories, cluster_name,
	// hot_standby) override them.
	Params map[string]string
	// Dir is the parent of the cluster directory. "" means DefaultDir():
	// $PGR_PGTEST_DIR, else /dev/shm when it is a roomy tmpfs, else
	// os.TempDir(). When running as root it must be traversable by the
	// postgres OS user.
	Dir string
	// Logf, if set, receives progress lines.
	Logf func(format string, args ...any)
}

// Cluster is a running primary and its standbys. Its methods are safe for
// concurrent use.
type Cluster struct {
	// Dir holds one directory per node; Close removes it.
	Dir string
	// Nodes are the members: Nodes[0] is the initial primary, then the hot
	// standbys, then the warm ones. The slice never changes.
	Nodes []*Node
	// Users are the roles created at init, with their passwords.
	Users

	r    *runner
	logf func(format string, args ...any)

	mu      sync.Mutex
	primary *Node // guarded by mu
	closed  bool  // guarded by mu
}

// StartT starts a cluster for a test and closes it in t.Cleanup. Any error,
// including PostgreSQL not being installed, fails the test: the message
// says how to install it.
func StartT(t testing.TB, o Options) *Cluster {
	t.Helper()
	if o.Logf == nil {
		o.Logf = t.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	c, err := Start(ctx, o)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("pgtest: close: %v", err)
		}
	})
	return c
}

// Start makes and starts a cluster and returns when every standby streams
// from the primary. On error nothing is left running or on disk.
func Start(ctx context.Context, o Options) (_ *Cluster, err error) {
	began := time.Now()
	if o.Standbys < 0 || o.WarmStandbys < 0 {
		return nil, fmt.Errorf("pgtest: negative standby count %d/%d", o.Standbys, o.WarmStandbys)
	}
	conf, err := memberConf(o.Params)
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, startTimeout)
		defer cancel()
	}
	logf := o.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	parent := o.Dir
	if parent == "" {
		parent = DefaultDir()
	}
	if _, err := BinDir(); err != nil {
		return nil, err
	}
	reapOnce.Do(func() { reapStale(parent, logf) })

	dir, err := os.MkdirTemp(parent, dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	c := &Cluster{Dir: dir, Users: defaultUsers, logf: logf}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Close())
		}
	}()
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if c.r, err = newRunner(dir); err != nil {
		return nil, err
	}
	if err := c.r.own(dir); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if err := c.checkTraversable(dir); err != nil {
		return nil, err
	}

	total := 1 + o.Standbys + o.WarmStandbys
	for i := range total {
		n, err := c.newNode(i, i > o.Standbys)
		if err != nil {
			return nil, err
		}
		c.Nodes = append(c.Nodes, n)
	}
	c.primary = c.Nodes[0]

	if err := c.initPrimary(ctx, conf); err != nil {
		return nil, err
	}
	logf("pgtest: primary %s on %s ready after %s", c.Nodes[0].Name, c.Nodes[0].Addr, time.Since(began).Round(time.Millisecond))

	errs := make([]error, total)
	var wg sync.WaitGroup
	for i, n := range c.Nodes[1:] {
		wg.Go(func() { errs[i] = c.initStandby(ctx, n) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if err := c.waitStreaming(ctx); err != nil {
		return nil, err
	}
	logf("pgtest: cluster of %d in %s started in %s", total, dir, time.Since(began).Round(time.Millisecond))
	return c, nil
}

// newNode picks a port and makes the node's directory, which holds its
// socket, its log and its data directory.
func (c *Cluster) newNode(i int, warm bool) (*Node, error) {
	port, err := freePort()
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	name := "pg" + strconv.Itoa(i)
	dir := filepath.Join(c.Dir, name)
	n := &Node{
		Name:      name,
		Port:      port,
		Addr:      "127.0.0.1:" + strconv.Itoa(port),
		DataDir:   filepath.Join(dir, "data"),
		Warm:      warm,
		LogFile:   filepath.Join(dir, "postgres.log"),
		SocketDir: dir,
		r:         c.r,
	}
	if sock := filepath.Join(dir, ".s.PGSQL.65535"); len(sock) > 100 {
		return nil, fmt.Errorf("pgtest: socket path %s is %d bytes, over the limit of ~107: use a shorter Options.Dir or TMPDIR", sock, len(sock))
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if err := c.r.own(dir); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	return n, nil
}

// initPrimary runs initdb, configures and starts the primary, and creates
// the roles.
func (c *Cluster) initPrimary(ctx context.Context, conf string) error {
	n := c.Nodes[0]
	if err := c.initData(ctx, n); err != nil {
		return err
	}
	if err := appendFile(filepath.Join(n.DataDir, "postgresql.conf"), conf); err != nil {
		return n.errorf("%w", err)
	}
	if err := writeOwned(c.r, filepath.Join(n.DataDir, "pg_hba.conf"), hbaConf); err != nil {
		return n.errorf("%w", err)
	}
	if err := c.startNew(ctx, n); err != nil {
		return err
	}
	conn, err := c.connect(ctx, n)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := createUsers(ctx, conn, c.Users); err != nil {
		return n.errorf("create users: %w", err)
	}
	return nil
}

// initStandby clones the primary with pg_basebackup -R, which writes
// standby.signal and primary_conninfo, then starts the copy.
func (c *Cluster) initStandby(ctx context.Context, n *Node) error {
	p := c.Nodes[0]
	began := time.Now()
	if _, err := c.r.run(ctx, c.Dir, []string{"PGPASSWORD=" + c.ReplPassword}, "pg_basebackup",
		"-D", n.DataDir, "-h", "127.0.0.1", "-p", strconv.Itoa(p.Port), "-U", c.ReplUser,
		"-R", "-X", "stream", "-c", "fast", "--no-sync"); err != nil {
		return n.errorf("pg_basebackup from %s: %w (primary log %s)", p.Name, err, p.LogFile)
	}
	c.logf("pgtest: pg_basebackup %s took %s", n.Name, time.Since(began).Round(time.Millisecond))
	return c.startNew(ctx, n)
}

// startNew writes the node's own settings and starts it the first time.
// Should another process take the port first, it retries on a new one.
func (c *Cluster) startNew(ctx context.Context, n *Node) error {
	for attempt := 0; ; attempt++ {
		if err := writeOwned(c.r, filepath.Join(n.DataDir, nodeConfName), nodeConf(n)); err != nil {
			return n.errorf("%w", err)
		}
		err := n.Start(ctx)
		if err == nil || attempt == 3 || !strings.Contains(err.Error(), "Address already in use") {
			return err
		}
		port, perr := freePort()
		if perr != nil {
			return errors.Join(err, perr)
		}
		c.logf("pgtest: %s: port %d taken, retrying on %d", n.Name, n.Port, port)
		n.Port, n.Addr = port, "127.0.0.1:"+strconv.Itoa(port)
	}
}

// Close stops every node it can find running, by pg_ctl stop -m immediate
// and then SIGKILL, and removes Dir. Calling it again does nothing.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	errs := make([]error, len(c.Nodes)+1)
	var wg sync.WaitGroup
	for i, n := range c.Nodes {
		wg.Go(func() { errs[i] = n.shutdown() })
	}
	wg.Wait()
	if err := os.RemoveAll(c.Dir); err != nil {
		errs[len(c.Nodes)] = fmt.Errorf("pgtest: %w", err)
	}
	return errors.Join(errs...)
}

// Primary returns the node that is primary as far as the cluster knows:
// Nodes[0] until Promote succeeds, then the promoted node.
func (c *Cluster) Primary() *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.primary
}

// ConnString returns a libpq key/value connection string for n over TCP,
// without TLS: "host=127.0.0.1 port=.. user=.. password=.. dbname=..
// sslmode=disable". Values are quoted when needed.
func (c *Cluster) ConnString(n *Node, user, password, db string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=disable",
		n.Port, connValue(user), connValue(password), connValue(db))
}

// connValue quotes a connection string value that is empty or holds
// spaces, quotes or backslashes.
func connValue(v string) string {
	if v != "" && !strings.ContainsAny(v, ` '\`) {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// connect opens a superuser connection to n's postgres database.
func (c *Cluster) connect(ctx context.Context, n *Node) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, c.ConnString(n, c.SuperUser, c.SuperPassword, "postgres"))
	if err != nil {
		return nil, n.errorf("connect: %w", err)
	}
	return conn, nil
}

// checkTraversable fails early, with a clear message, when the servers'
// OS user cannot reach dir: initdb's own error does not say why.
func (c *Cluster) checkTraversable(dir string) error {
	if c.r.cred == nil {
		return nil
	}
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("pgtest: %w", err)
		}
		if !canTraverse(fi, c.r.cred.Uid, c.r.cred.Gid) {
			return fmt.Errorf("pgtest: the postgres OS user cannot enter %s (mode %v): set Options.Dir or TMPDIR to a directory it can traverse, such as /tmp", d, fi.Mode().Perm())
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}
