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
	"syscall"
	"time"

	"github.com/pgrouter/pgrouter/internal/proc"
)

// Node is one PostgreSQL server of a Cluster. Its methods are safe for
// concurrent use; each one waits until the server has reached the state it
// names.
type Node struct {
	// Name is pg0, pg1, ...; it is also the server's cluster_name, so it is
	// the application_name of a standby in pg_stat_replication.
	Name string
	// Port is the TCP port on 127.0.0.1; it never changes.
	Port int
	// Addr is "127.0.0.1:Port".
	Addr string
	// DataDir is the data directory (PGDATA).
	DataDir string
	// Warm is true for a standby with hot_standby=off: while in recovery it
	// refuses every connection with SQLSTATE 57P03.
	Warm bool
	// LogFile is the server log, named in every error about this node.
	LogFile string
	// SocketDir holds the Unix socket, where local connections are trusted.
	SocketDir string

	r  *runner
	mu sync.Mutex
	// running is true from a successful start until Stop, Kill or Close;
	// guarded by mu.
	running bool
}

func (n *Node) pidFile() string { return filepath.Join(n.DataDir, "postmaster.pid") }

// Running reports whether the node was started and not stopped or killed
// since.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.running
}

// PID returns the postmaster's PID, read from postmaster.pid.
func (n *Node) PID() (int, error) {
	pid, err := proc.ReadPID(n.pidFile())
	if err != nil {
		return 0, n.errorf("read PID: %w", err)
	}
	return pid, nil
}

// Start starts the server with pg_ctl start -w and returns when it accepts
// connections (a warm standby: when it has begun recovery). Starting a
// running node is an error.
func (n *Node) Start(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.running {
		return n.errorf("start: already running")
	}
	if _, err := n.r.run(ctx, filepath.Dir(n.DataDir), nil, "pg_ctl", "start", "-w", "-s",
		"-t", strconv.Itoa(timeoutSeconds(ctx, time.Minute)), "-D", n.DataDir, "-l", n.LogFile); err != nil {
		return n.errorf("start: %w", err)
	}
	n.running = true
	return nil
}

// Stop shuts the server down cleanly (pg_ctl stop -m fast): a primary first
// sends all its WAL to connected standbys. Stopping a stopped node is a
// no-op.
func (n *Node) Stop(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stop(ctx, "fast")
}

// stop runs pg_ctl stop in mode; n.mu is held.
func (n *Node) stop(ctx context.Context, mode string) error {
	pid, err := proc.ReadPID(n.pidFile())
	if errors.Is(err, os.ErrNotExist) {
		n.running = false
		return nil
	}
	if err == nil && !proc.Alive(pid) {
		n.running = false
		return n.removeStalePID()
	}
	if _, err := n.r.run(ctx, filepath.Dir(n.DataDir), nil, "pg_ctl", "stop", "-w", "-s",
		"-t", strconv.Itoa(timeoutSeconds(ctx, time.Minute)), "-m", mode, "-D", n.DataDir); err != nil {
		return n.errorf("stop -m %s: %w", mode, err)
	}
	n.running = false
	return nil
}

// Kill sends SIGKILL to the postmaster and to all its children, as a host
// crash would, and returns once they are gone: open connections break at
// once and nothing is flushed. Start then runs crash recovery. Killing a
// stopped node is a no-op.
func (n *Node) Kill() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.kill()
}

// kill is Kill with n.mu held.
func (n *Node) kill() error {
	pid, err := proc.ReadPID(n.pidFile())
	if errors.Is(err, os.ErrNotExist) {
		n.running = false
		return nil
	}
	if err != nil {
		return n.errorf("kill: %w", err)
	}
	if !proc.Alive(pid) {
		n.running = false
		return n.removeStalePID()
	}
	// Freeze the postmaster so it forks no child we would miss.
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil && !errors.Is(err, syscall.ESRCH) {
		return n.errorf("kill: SIGSTOP postmaster %d: %w", pid, err)
	}
	procs := append(proc.Children(pid), pid)
	for _, p := range procs {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := proc.WaitGone(ctx, procs); err != nil {
		return n.errorf("kill: %w", err)
	}
	n.running = false
	return n.removeStalePID()
}

// removeStalePID removes the lock files of a dead server: postmaster.pid
// and the socket's. PostgreSQL would ignore stale ones itself, but here the
// dead postmaster may linger as an unreaped zombie (nobody waits for an
// orphan when PID 1 is not an init), and its PID still answers kill(pid, 0).
func (n *Node) removeStalePID() error {
	sock := filepath.Join(n.SocketDir, fmt.Sprintf(".s.PGSQL.%d", n.Port))
	var errs []error
	for _, f := range []string{n.pidFile(), sock + ".lock", sock} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return n.errorf("remove stale lock files: %w", err)
	}
	return nil
}

// shutdown stops the server however it can, for Close: pg_ctl stop -m
// immediate, then SIGKILL.
func (n *Node) shutdown() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	err := n.stop(ctx, "immediate")
	if err == nil {
		return nil
	}
	if kerr := n.kill(); kerr != nil {
		return errors.Join(err, kerr)
	}
	return nil
}

// errorf prefixes the node's name and appends its log file and the log's
// last lines, which usually hold the reason.
func (n *Node) errorf(format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return fmt.Errorf("pgtest: node %s (port %d): %w; log %s%s", n.Name, n.Port, err, n.LogFile, logTail(n.LogFile, 8))
}

// logTail returns the last lines of a log, indented, or "" when unreadable.
func logTail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return ":\n\t" + strings.Join(all, "\n\t")
}
