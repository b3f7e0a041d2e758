package dcs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// startEtcd runs the etcd binary from PGR_ETCD_BIN (see tools/etcd) on free
// loopback ports; without it the test is skipped, or fails under CI.
func startEtcd(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("PGR_ETCD_BIN")
	if bin == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("PGR_ETCD_BIN is not set (make test builds etcd with tools/etcd/ensure.sh)")
		}
		t.Skip("PGR_ETCD_BIN is not set: PGR_ETCD_BIN=$(tools/etcd/ensure.sh) go test ./dcs")
	}
	free := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().String()
	}
	client, peer := free(), free()
	dir := t.TempDir()
	cmd := exec.Command(bin, "--name=t", "--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls=http://"+client, "--advertise-client-urls=http://"+client,
		"--listen-peer-urls=http://"+peer, "--initial-advertise-peer-urls=http://"+peer,
		"--initial-cluster=t=http://"+peer, "--unsafe-no-fsync=true", "--log-level=error")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + client + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return client
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd not healthy: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func newStore(t *testing.T, endpoint, name string) *Etcd {
	t.Helper()
	s, err := NewEtcd(EtcdConfig{Endpoints: []string{endpoint}, Scope: "t", Name: name, TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func waitFor(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestEtcdLease exercises the leader key's life cycle against a real etcd:
// the bootstrap race, one winner, renewal, leader-only writes, expiry
// without renewal, adoption after a restart, release and handover.
func TestEtcdLease(t *testing.T) {
	ep := startEtcd(t)
	ctx := context.Background()
	a, b := newStore(t, ep, "a"), newStore(t, ep, "b")

	checkBootstrap(t, ctx, a, b)
	if err := b.Acquire(ctx, false); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("second acquire = %v, want ErrNotLeader", err)
	}
	// Renewing keeps it past the TTL.
	for range 6 {
		if err := a.Renew(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if c := loadCluster(t, b); c.Leader != "a" {
		t.Fatalf("renewed leader lost: %+v", c)
	}
	// Without renewal the key expires and b can take it; a's renewal
	// then reports the loss.
	waitFor(t, 10*time.Second, "lease expiry", func() error {
		if c := loadCluster(t, b); c.Leader != "" {
			return fmt.Errorf("leader still %q", c.Leader)
		}
		return nil
	})
	if err := a.Renew(ctx); !errors.Is(err, ErrLost) {
		t.Fatalf("renew after expiry = %v, want ErrLost", err)
	}
	if err := b.Acquire(ctx, false); err != nil {
		t.Fatal(err)
	}
	// A restarted b (new Store, same name) adopts its own key.
	b2 := newStore(t, ep, "b")
	if err := b2.Acquire(ctx, false); err != nil {
		t.Fatalf("adopt own key: %v", err)
	}
	if err := b.Renew(ctx); !errors.Is(err, ErrLost) {
		t.Fatalf("old lease after adoption: renew = %v, want ErrLost", err)
	}
	if err := b2.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	checkHandoverAndRelease(t, ctx, b2, a, b)
}

// TestEtcdMembersAndWatch: member records expire with their agent, the
// watch wakes on control keys, and member churn wakes only when asked.
func TestEtcdMembersAndWatch(t *testing.T) {
	ep := startEtcd(t)
	a, reader := newStore(t, ep, "a"), newStore(t, ep, "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	control, all := make(chan struct{}, 100), make(chan struct{}, 100)
	done := make(chan struct{}, 2)
	go func() { _ = reader.Watch(ctx, false, func() { control <- struct{}{} }); done <- struct{}{} }()
	go func() { _ = reader.Watch(ctx, true, func() { all <- struct{}{} }); done <- struct{}{} }()
	time.Sleep(300 * time.Millisecond) // let both watches start

	m := Member{ConnAddr: "127.0.0.1:5432", Role: RoleStandby, ReceivedLSN: 7}
	if err := a.PublishMember(ctx, m, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "member record", func() error {
		c := loadCluster(t, reader)
		if got := c.Members["a"]; got.Name != "a" || got.ReceivedLSN != 7 || got.Rev == 0 {
			return fmt.Errorf("members %+v", c.Members)
		}
		return nil
	})
	select {
	case <-all:
	case <-time.After(5 * time.Second):
		t.Fatal("member watch did not fire")
	}
	select {
	case <-control:
		t.Fatal("control watch fired for a member record")
	case <-time.After(200 * time.Millisecond):
	}
	if err := a.Acquire(ctx, false); err != nil {
		t.Fatal(err)
	}
	select {
	case <-control:
	case <-time.After(5 * time.Second):
		t.Fatal("control watch did not fire for the leader key")
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	// An agent that stops publishing disappears after the TTL.
	waitFor(t, 10*time.Second, "member record expiry", func() error {
		if c := loadCluster(t, reader); len(c.Members) != 0 {
			return fmt.Errorf("members %v", c.Members)
		}
		return nil
	})
	// Publishing again re-creates it on a fresh lease.
	if err := a.PublishMember(ctx, m, false); err != nil {
		t.Fatal(err)
	}
	if c := loadCluster(t, reader); c.Members["a"].ConnAddr != m.ConnAddr {
		t.Fatalf("republished: %+v", c.Members)
	}
	cancel()
	<-done
	<-done
}

// checkHandoverAndRelease runs the contract's last steps on any Store:
// the holder hands over (holder gone, switchover recorded, in one step)
// and may write no more; a takes the lease, clears the switchover and
// releases it. It returns the cluster as b then sees it.
func checkHandoverAndRelease(t *testing.T, ctx context.Context, holder, a, b Store) *Cluster {
	t.Helper()
	if err := holder.Handover(ctx, Switchover{From: "b", To: "a", HandedOverAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	c := loadCluster(t, a)
	if c.Leader != "" || c.Switchover == nil || c.Switchover.To != "a" {
		t.Fatalf("after handover: leader %q switchover %+v", c.Leader, c.Switchover)
	}
	if err := holder.SetStatus(ctx, Status{Leader: "b"}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("write after handover = %v", err)
	}
	if err := a.Acquire(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := a.ClearSwitchover(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	c = loadCluster(t, b)
	if c.Leader != "" || c.Switchover != nil {
		t.Fatalf("after release: %+v", c)
	}
	return c
}

// checkBootstrap runs the contract's first steps on two fresh stores: a
// bootstrap race has one winner (a), only the leader records the
// initialization and the synchronous standby, and b sees both.
func checkBootstrap(t *testing.T, ctx context.Context, a, b Store) {
	t.Helper()
	errA, errB := a.Acquire(ctx, true), b.Acquire(ctx, true)
	if errA != nil || !errors.Is(errB, ErrInitialized) {
		t.Fatalf("bootstrap race: a=%v b=%v", errA, errB)
	}
	if c := loadCluster(t, a); c.Leader != "a" || c.Bootstrapping != "a" || c.Initialized != "" {
		t.Fatalf("after bootstrap acquire: %+v", c)
	}
	if err := b.SetInitialized(ctx, "42"); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("non-leader SetInitialized = %v", err)
	}
	if err := a.SetInitialized(ctx, "42"); err != nil {
		t.Fatal(err)
	}
	if err := a.SetSync(ctx, Sync{Leader: "a", Standby: "b"}); err != nil {
		t.Fatal(err)
	}
	if c := loadCluster(t, b); c.Initialized != "42" || c.Bootstrapping != "" || c.Sync.Standby != "b" || c.Leader != "a" {
		t.Fatalf("after SetInitialized: %+v", c)
	}
}
