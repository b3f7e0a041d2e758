package chaos

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Network is the campaign's own piece of the host: a bridge in the root
// namespace, and one network namespace per host (each member with its
// agent, etcd, each proxy) joined to the bridge by a veth pair. Every name
// carries the run's number N (pgchN, pgchN-n1, ...), allocated by creating
// the bridge (creation fails when another run holds N), and the hosts
// take addresses in 10.213.N.0/24; the root namespace (the campaign's
// clients and checks) is 10.213.N.1.
//
// Partitions are blackhole routes inside the namespaces: a host with a
// blackhole route to a peer drops every packet it would send there, so a
// cut in one direction leaves the other side's packets arriving unanswered,
// as a one-way network fault does.
type Network struct {
	N      int
	Bridge string
	hosts  []string
	owner  string // file naming the owning process, for the reaper
}

// ownerDir records which process owns which run number, so a later run can
// clean up after one that was killed.
const ownerDir = "/run/pgrouter-chaos"

// NewNetwork allocates a run number and creates the bridge. Stale runs of
// dead processes are removed first.
func NewNetwork() (*Network, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("ip (iproute2) not found: %w", err)
	}
	if _, err := exec.LookPath("nsenter"); err != nil {
		return nil, fmt.Errorf("nsenter (util-linux) not found: %w", err)
	}
	ReapStale()
	if err := os.MkdirAll(ownerDir, 0o755); err != nil {
		return nil, err
	}
	start := os.Getpid()%200 + 20
	for i := 0; i < 235; i++ {
		n := (start+i)%235 + 20
		br := fmt.Sprintf("pgch%d", n)
		if err := run("ip", "link", "add", br, "type", "bridge"); err != nil {
			continue
		}
		nw := &Network{N: n, Bridge: br, owner: filepath.Join(ownerDir, br)}
		if err := os.WriteFile(nw.owner, []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			nw.Close()
			return nil, err
		}
		if err := runAll(
			[]string{"ip", "addr", "add", nw.IP(1) + "/24", "dev", br},
			[]string{"ip", "link", "set", br, "up"},
		); err != nil {
			nw.Close()
			return nil, err
		}
		return nw, nil
	}
	return nil, fmt.Errorf("no free run number (bridges pgch20..pgch254 all exist)")
}

// IP returns 10.213.N.host.
func (nw *Network) IP(host int) string { return fmt.Sprintf("10.213.%d.%d", nw.N, host) }

// NS returns the namespace name of a host.
func (nw *Network) NS(name string) string { return fmt.Sprintf("%s-%s", nw.Bridge, name) }

// AddHost creates the namespace of name with address IP(host) on eth0.
func (nw *Network) AddHost(name string, host int) error {
	ns := nw.NS(name)
	if len(ns) > 15 {
		return fmt.Errorf("interface name %s longer than 15 bytes", ns)
	}
	if err := run("ip", "netns", "add", ns); err != nil {
		return err
	}
	nw.hosts = append(nw.hosts, ns)
	return runAll(
		[]string{"ip", "link", "add", ns, "type", "veth", "peer", "name", "eth0", "netns", ns},
		[]string{"ip", "link", "set", ns, "master", nw.Bridge, "up"},
		[]string{"ip", "-n", ns, "link", "set", "lo", "up"},
		[]string{"ip", "-n", ns, "addr", "add", nw.IP(host) + "/24", "dev", "eth0"},
		[]string{"ip", "-n", ns, "link", "set", "eth0", "up"},
	)
}

// Drop makes host from drop every packet it sends to address to (a
// one-way cut). Undrop removes it.
func (nw *Network) Drop(from, to string) error {
	return run("ip", "-n", nw.NS(from), "route", "add", "blackhole", to+"/32")
}

// Undrop heals a Drop; healing a cut that is not there is no error.
func (nw *Network) Undrop(from, to string) error {
	err := run("ip", "-n", nw.NS(from), "route", "del", "blackhole", to+"/32")
	if err != nil && strings.Contains(err.Error(), "No such process") {
		return nil
	}
	return err
}

// Close kills every process left in the run's namespaces, removes them,
// the veth pairs and the bridge.
func (nw *Network) Close() {
	for _, ns := range nw.hosts {
		killNamespace(ns)
		_ = run("ip", "link", "del", ns)
		_ = run("ip", "netns", "del", ns)
	}
	_ = run("ip", "link", "del", nw.Bridge)
	os.Remove(nw.owner)
}

// ReapStale removes the namespaces and bridges of runs whose owner
// process is gone (a campaign killed with SIGKILL). Runs of live
// processes are left alone.
func ReapStale() {
	owners, _ := filepath.Glob(filepath.Join(ownerDir, "pgch*"))
	for _, f := range owners {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err == nil && processAlive(pid) {
			continue
		}
		br := filepath.Base(f)
		out, _ := exec.Command("ip", "netns", "list").Output()
		for _, line := range strings.Split(string(out), "\n") {
			ns, _, _ := strings.Cut(strings.TrimSpace(line), " ")
			if strings.HasPrefix(ns, br+"-") {
				killNamespace(ns)
				_ = run("ip", "link", "del", ns)
				_ = run("ip", "netns", "del", ns)
			}
		}
		_ = run("ip", "link", "del", br)
		os.Remove(f)
		fmt.Fprintf(os.Stderr, "chaos: removed %s left by dead process %d\n", br, pid)
	}
}

// killNamespace SIGKILLs every process in ns (agents, their PostgreSQL,
// etcd, proxies: all started by this campaign) and waits for them to go.
func killNamespace(ns string) {
	for try := 0; try < 50; try++ {
		out, _ := exec.Command("ip", "netns", "pids", ns).Output()
		pids := strings.Fields(string(out))
		if len(pids) == 0 {
			return
		}
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z' && b[i+2] != 'X'
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func runAll(cmds ...[]string) error {
	for _, c := range cmds {
		if err := run(c[0], c[1:]...); err != nil {
			return err
		}
	}
	return nil
}
