package main

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pgrouter/pgrouter/internal/pgtest"
)

// demoPortOffsets are the ports `pgrouter demo --port P` listens on.
var demoPortOffsets = []int{0, 1, 2, 10, 11, 101, 102, 103, 201, 202, 203, 2000}

// freeDemoBase finds a base port whose whole demo layout is free now,
// below the kernel's ephemeral range (32768 and up) so that no other
// test's dialer or free-port listener takes one meanwhile.
func freeDemoBase(t *testing.T) int {
	t.Helper()
	for range 50 {
		base := 10000 + rand.IntN(20000)
		free := true
		for _, off := range demoPortOffsets {
			ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(base+off))
			if err != nil {
				free = false
				break
			}
			ln.Close()
		}
		if free {
			return base
		}
	}
	t.Fatal("no free port range for the demo")
	return 0
}

// descendants returns the PIDs of every process below root, from /proc.
func descendants(root int) []int {
	parent := map[int]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 1 {
			parent[pid], _ = strconv.Atoi(f[1])
		}
	}
	var out []int
	for pid := range parent {
		for p := parent[pid]; p > 1; p = parent[p] {
			if p == root {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

// mentioning returns the live processes whose command line names dir.
func mentioning(dir string) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !processAlive(pid) {
			continue
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if bytes.Contains(b, []byte(dir)) {
			out = append(out, fmt.Sprintf("%d %s", pid, bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
		}
	}
	return out
}

// TestDemoChaos runs `pgrouter demo --chaos` through the real binary until
// it reports that writes recovered after a kill of the primary, then sends
// SIGINT as Ctrl-C does: the demo must exit cleanly and leave no process
// behind (etcd, agents, PostgreSQL servers, proxy).
func TestDemoChaos(t *testing.T) {
	etcd := etcdBin(t)
	dir, err := os.MkdirTemp("", "pgr-demo-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	dir = filepath.Join(dir, "cluster")
	cmd := exec.Command(binPath, "demo", "--chaos", "--interval", "4s", "--port", strconv.Itoa(freeDemoBase(t)),
		"--dir", dir, "--etcd-bin", etcd)
	cmd.Env = pgtest.ProcessEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var output strings.Builder
	lines := make(chan string, 1000)
	done := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			mu.Lock()
			output.WriteString(sc.Text() + "\n")
			mu.Unlock()
			select {
			case lines <- sc.Text():
			default:
			}
		}
		done <- cmd.Wait()
	}()
	exited := false
	t.Cleanup(func() {
		if !exited {
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			mu.Lock()
			t.Logf("demo output:\n%s", output.String())
			mu.Unlock()
			for _, n := range []string{"n1", "n2", "n3", "proxy"} {
				b, _ := os.ReadFile(filepath.Join(dir, n+".log"))
				if len(b) > 6000 {
					b = b[len(b)-6000:]
				}
				t.Logf("%s.log (tail):\n%s", n, b)
			}
			return
		}
		os.RemoveAll(filepath.Dir(dir))
	})

	var children []int
	seen := map[string]bool{}
	deadline := time.After(4 * time.Minute)
	for !seen["recovered"] {
		select {
		case l := <-lines:
			for _, w := range []string{"init:", "clone:", "ready", "dashboard       : http://", "read-write      : psql", "chaos: killed the primary", "recovered"} {
				if strings.Contains(l, w) {
					seen[w] = true
				}
			}
			if strings.Contains(l, "chaos: killed") {
				children = descendants(cmd.Process.Pid)
			}
		case err := <-done:
			exited = true
			t.Fatalf("demo exited before a recovery: %v", err)
		case <-deadline:
			t.Fatal("no recovery reported within 4 minutes")
		}
	}
	for _, w := range []string{"init:", "clone:", "ready", "dashboard       : http://", "read-write      : psql", "chaos: killed the primary"} {
		if !seen[w] {
			t.Errorf("the output never said %q", w)
		}
	}
	if len(children) < 5 {
		t.Errorf("only %d processes under the demo while it ran: %v", len(children), children)
	}

	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		exited = true
		if err != nil {
			t.Errorf("demo exited with %v after SIGINT", err)
		}
	case <-time.After(3 * time.Minute):
		t.Fatal("demo still running 3 minutes after SIGINT")
	}
	mu.Lock()
	final := output.String()
	mu.Unlock()
	if !strings.Contains(final, "stopped; data and logs are in") {
		t.Errorf("no clean stop in the output")
	}
	for _, pid := range children {
		if processAlive(pid) {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			t.Errorf("process %d (%s) outlived the demo", pid, bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
	if left := mentioning(dir); len(left) > 0 {
		t.Errorf("processes naming %s still run:\n%s", dir, strings.Join(left, "\n"))
	}
	t.Logf("demo: %d child processes, all gone after SIGINT; last lines:\n%s", len(children), lastLines(final, 4))
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}
