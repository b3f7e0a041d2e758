package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pgrouter/pgrouter/internal/proc"
)

// installHint is appended to every "PostgreSQL is missing" error.
const installHint = "install it with scripts/ensure-postgres.sh " +
	"(as root: apt-get install -y postgresql-15 postgresql-client-15), " +
	"or point PGR_PG_BINDIR at a directory holding initdb"

// serverTools are the programs Start needs from the server's bin directory.
var serverTools = []string{"initdb", "pg_ctl", "postgres", "pg_basebackup"}

// debianBinDir is where Debian's postgresql-15 package puts the server.
const debianBinDir = "/usr/lib/postgresql/15/bin"

var binDir = sync.OnceValues(findBinDir)

// BinDir returns the directory holding initdb, pg_ctl, postgres and
// pg_basebackup: $PGR_PG_BINDIR if set, else `pg_config --bindir` when that
// directory has the server (Debian's /usr/bin/pg_config may belong to a
// client-only libpq), else /usr/lib/postgresql/15/bin. The error says how
// to install PostgreSQL.
func BinDir() (string, error) { return binDir() }

func findBinDir() (string, error) {
	if d := os.Getenv("PGR_PG_BINDIR"); d != "" {
		if missing := proc.MissingPrograms(d, serverTools); len(missing) > 0 {
			return "", fmt.Errorf("PGR_PG_BINDIR=%s lacks %s: %s", d, strings.Join(missing, ", "), installHint)
		}
		return d, nil
	}
	var tried []string
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		d := strings.TrimSpace(string(out))
		if len(proc.MissingPrograms(d, serverTools)) == 0 {
			return d, nil
		}
		tried = append(tried, d+" (from pg_config --bindir)")
	}
	if len(proc.MissingPrograms(debianBinDir, serverTools)) == 0 {
		return debianBinDir, nil
	}
	tried = append(tried, debianBinDir)
	return "", fmt.Errorf("PostgreSQL server not found (looked in %s for %s): %s",
		strings.Join(tried, ", "), strings.Join(serverTools, ", "), installHint)
}

// runner runs the PostgreSQL programs of one bin directory as the OS user
// that owns the data directories: postgres when we are root, since the
// server refuses to run as root, else ourselves.
type runner struct {
	bin string
	// cred is nil when the programs run as the current user.
	cred *syscall.Credential
	// home is $HOME for the programs; libpq looks there for .pgpass.
	home string
}

// newRunner finds the bin directory and, when running as root, the postgres
// OS user.
func newRunner(home string) (*runner, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	r := &runner{bin: bin, home: home}
	if os.Geteuid() != 0 {
		return r, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, so PostgreSQL must run as the postgres OS user: %w (%s)", err, installHint)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("postgres OS user: %w", err)
	}
	r.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}
	return r, nil
}

// own hands path to the user the server runs as; a no-op unless root.
func (r *runner) own(path string) error {
	if r.cred == nil {
		return nil
	}
	return os.Lchown(path, int(r.cred.Uid), int(r.cred.Gid))
}

// run runs a program of the bin directory in dir with the extra environment
// and returns its combined output. The child gets its own process group and
// dies with us (Pdeathsig), so a crashed test leaves no initdb behind; the
// postmaster that pg_ctl starts detaches itself and is stopped by Close.
func (r *runner) run(ctx context.Context, dir string, env []string, prog string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(r.bin, prog), args...)
	cmd.Dir = dir
	cmd.Env = append(cleanEnv(r.home), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: r.cred}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		msg := strings.TrimSpace(out.String())
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return out.Bytes(), fmt.Errorf("%s %s: %w: %s", prog, strings.Join(args, " "), err, msg)
	}
	return out.Bytes(), nil
}

// cleanEnv is our environment without the PG* variables that would steer
// libpq or pg_ctl elsewhere (PGHOST, PGDATA, ...), and with LC_ALL=C so
// messages are in English.
func cleanEnv(home string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "HOME=") || strings.HasPrefix(kv, "LC_ALL=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "HOME="+home, "LC_ALL=C")
}

// timeoutSeconds turns ctx's deadline into whole seconds, at least one,
// for pg_ctl -t and pg_promote; def when ctx has none.
func timeoutSeconds(ctx context.Context, def time.Duration) int {
	d := def
	if dl, ok := ctx.Deadline(); ok {
		d = time.Until(dl)
	}
	return max(1, int(d.Round(time.Second)/time.Second))
}

var ports struct {
	sync.Mutex
	given map[int]bool
}

// freePort returns a loopback port nobody listens on now and that this
// process has not handed out before. Another process may still take it
// before the server binds; Start retries with a new port then.
func freePort() (int, error) {
	ports.Lock()
	defer ports.Unlock()
	if ports.given == nil {
		ports.given = make(map[int]bool)
	}
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("find a free port: %w", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !ports.given[p] {
			ports.given[p] = true
			return p, nil
		}
	}
	return 0, errors.New("find a free port: every port offered was handed out before")
}

// tmpfsMagic is the f_type statfs reports for a tmpfs.
const tmpfsMagic = 0x01021994

// DefaultDir is where clusters go when Options.Dir is "": $PGR_PGTEST_DIR
// if set, else /dev/shm when it is a tmpfs we can write with 2 GiB free,
// else os.TempDir(). A cluster is a few thousand small files, and making
// them on tmpfs is several times faster than on a disk file system.
func DefaultDir() string {
	if d := os.Getenv("PGR_PGTEST_DIR"); d != "" {
		return d
	}
	const shm = "/dev/shm"
	var st syscall.Statfs_t
	if syscall.Statfs(shm, &st) == nil && st.Type == tmpfsMagic &&
		st.Bavail*uint64(st.Bsize) >= 2<<30 && syscall.Access(shm, 0o3) == nil {
		return shm
	}
	return os.TempDir()
}

// ownerFile in a cluster directory holds the PID of the process that made
// it, so a later process can tell a cluster left by a crashed test.
const ownerFile = "owner.pid"

var reapOnce sync.Once

// reapStale stops the servers of clusters under parent whose owning process
// has died without Close (a test binary killed on timeout) and removes
// their directories. A postmaster is killed only when its command line
// names that cluster's data directory, so a reused PID is never hit.
func reapStale(parent string, logf func(string, ...any)) {
	dirs, _ := filepath.Glob(filepath.Join(parent, dirPrefix+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue // not ours, or still being made
		}
		owner, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || proc.Alive(owner) {
			continue
		}
		pidFiles, _ := filepath.Glob(filepath.Join(dir, "*", "data", "postmaster.pid"))
		for _, pf := range pidFiles {
			pid, err := proc.ReadPID(pf)
			if err != nil || !proc.Alive(pid) {
				continue
			}
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if bytes.Contains(cmdline, []byte(filepath.Dir(pf))) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_ = proc.WaitGone(ctx, []int{pid})
				cancel()
			}
		}
		if err := os.RemoveAll(dir); err == nil {
			logf("pgtest: removed %s left by dead process %d", dir, owner)
		}
	}
}

// canTraverse reports whether uid/gid may enter the directory fi describes.
func canTraverse(fi os.FileInfo, uid, gid uint32) bool {
	perm := fi.Mode().Perm()
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !ok:
		return perm&0o001 != 0
	case st.Uid == uid:
		return perm&0o100 != 0
	case st.Gid == gid:
		return perm&0o010 != 0
	default:
		return perm&0o001 != 0
	}
}

// ProcessEnv is the environment for processes a test starts that run
// PostgreSQL's programs or talk to etcd (agents, proxies): the caller's own
// without its PG*, HOME and ETCD* variables, which would point them at
// the developer's servers.
func ProcessEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		if strings.HasPrefix(e, "PG") || strings.HasPrefix(e, "HOME=") || strings.HasPrefix(e, "ETCD") {
			continue
		}
		env = append(env, e)
	}
	return env
}
