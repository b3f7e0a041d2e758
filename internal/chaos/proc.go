package chaos

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Proc is one process of the cluster (etcd, an agent, a proxy) run inside
// a host's namespace through nsenter, optionally as another OS user. It can
// be started again after it exited (a restarted agent or etcd); its output
// goes to one log file, appended across restarts.
type Proc struct {
	Name string
	ns   string
	bin  string
	args []string
	env  []string
	dir  string
	uid  int // -1: root
	gid  int
	log  string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Start runs the process; a previous run must have exited.
func (p *Proc) Start() error {
	logf, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "=== chaos: start %s at %s\n", p.Name, time.Now().UTC().Format(time.RFC3339Nano))
	args := []string{"--net=/run/netns/" + p.ns}
	if p.uid >= 0 {
		args = append(args, "--setuid", strconv.Itoa(p.uid), "--setgid", strconv.Itoa(p.gid))
	}
	args = append(append(args, "--", p.bin), p.args...)
	// nsenter execs the program in place (no fork without --pid), so the
	// PID is the program's own: the one the faults signal.
	cmd := exec.Command("nsenter", args...)
	cmd.Env = p.env
	cmd.Dir = p.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	// Pdeathsig does not survive the change of user; Network.Close and
	// ReapStale kill what is left in the namespaces.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
	return nil
}

// PID is the running process's PID, or 0.
func (p *Proc) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.exitedLocked() {
		return 0
	}
	return p.cmd.Process.Pid
}

func (p *Proc) exitedLocked() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Running reports whether the process was started and has not exited.
func (p *Proc) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil && !p.exitedLocked()
}

// Signal sends sig to the process (not its children).
func (p *Proc) Signal(sig syscall.Signal) error {
	pid := p.PID()
	if pid == 0 {
		return fmt.Errorf("%s is not running", p.Name)
	}
	return syscall.Kill(pid, sig)
}

// Kill sends SIGKILL and waits for the exit.
func (p *Proc) Kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGCONT)
	_ = cmd.Process.Kill()
	<-done
}

// Stop sends SIGTERM (the agent then stops its PostgreSQL) and waits up to
// d before SIGKILL.
func (p *Proc) Stop(d time.Duration) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGCONT)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(d):
		_ = cmd.Process.Kill()
		<-done
	}
}
