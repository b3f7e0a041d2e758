// Package kubetest runs a real kube-apiserver, with its own etcd, on free
// loopback ports for tests: no fake clientset, so informers, watches,
// Leases, RBAC and server-side dry runs behave as in a cluster.
//
// Nothing else of Kubernetes runs: no scheduler, kubelet or controllers.
// Pods stay Pending with no IP until a test plays kubelet and patches their
// status (SetPodStatus); a deleted namespace stays Terminating forever, so
// tests use a fresh namespace each (Namespace) and never wait for one to go.
//
// The binaries are built by tools/k8s/ensure.sh (never inside go test: a
// cold build takes about 10 minutes) and found through $PGR_K8S_BIN_DIR.
// When it is unset StartT skips the test, unless $CI is set: then it
// fails, so CI can never pass having run no Kubernetes test.
//
// Linux only: the children get Pdeathsig, so a test binary that crashes
// or times out leaves no server behind.
package kubetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// BinDirEnv names the environment variable holding the directory with the
// kube-apiserver and etcd binaries (the output of tools/k8s/ensure.sh).
const BinDirEnv = "PGR_K8S_BIN_DIR"

// startTimeout bounds Start when its context has no deadline; the API
// server is ready in about 3.5 s on an idle machine.
const startTimeout = 90 * time.Second

// Env is a running API server and its etcd. Config authenticates as an
// admin (group system:masters, which RBAC never denies); ServiceAccount
// mints credentials that RBAC does check. Its methods are safe for
// concurrent use.
type Env struct {
	// Config reaches the API server as the admin. Copy it before changing
	// it (rest.CopyConfig).
	Config *rest.Config
	// Client is a clientset for Config.
	Client kubernetes.Interface
	// Dir holds the data, certificates and logs (etcd.log,
	// kube-apiserver.log); Stop removes it.
	Dir string

	mu    sync.Mutex
	procs []*exec.Cmd // apiserver first: it is stopped before etcd
}

// BinDir returns the directory named by $PGR_K8S_BIN_DIR after checking
// that it holds both binaries.
func BinDir() (string, error) {
	dir := os.Getenv(BinDirEnv)
	if dir == "" {
		return "", fmt.Errorf("$%s is not set: run `make test-kubernetes`, or export %s=$(sh tools/k8s/ensure.sh)", BinDirEnv, BinDirEnv)
	}
	for _, b := range []string{"kube-apiserver", "etcd"} {
		if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.Mode()&0o111 == 0 {
			return "", fmt.Errorf("$%s=%s has no executable %s: run sh tools/k8s/ensure.sh", BinDirEnv, dir, b)
		}
	}
	return dir, nil
}

// RequireBinaries skips the test when the binaries are missing, or fails
// it when $CI is set.
func RequireBinaries(t testing.TB) string {
	t.Helper()
	dir, err := BinDir()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("kubetest: %v (CI is set: Kubernetes tests must run)", err)
		} else {
			t.Skipf("kubetest: %v", err)
		}
	}
	return dir
}

// StartT starts an API server for a test and stops it in t.Cleanup.
// Missing binaries skip the test (fail it under CI); any other error fails
// it.
func StartT(t testing.TB) *Env {
	t.Helper()
	RequireBinaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	e, err := Start(ctx, t.Logf)
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	t.Cleanup(e.Stop)
	return e
}

// Start starts etcd and the API server and returns once /readyz answers
// 200. On error nothing is left running or on disk. logf, if not nil,
// receives progress lines.
func Start(ctx context.Context, logf func(string, ...any)) (_ *Env, err error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, startTimeout)
		defer cancel()
	}
	dir, err := os.MkdirTemp("", "kubetest-")
	if err != nil {
		return nil, err
	}
	e := &Env{Dir: dir}
	defer func() {
		if err != nil {
			e.Stop()
		}
	}()
	began := time.Now()
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	client, peer, secure := ports[0], ports[1], ports[2]
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(client)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peer)
	if err := e.spawn(filepath.Join(bin, "etcd"), "etcd.log",
		"--name=t", "--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=t="+peerURL, "--unsafe-no-fsync=true", "--log-level=warn"); err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, http.DefaultClient, etcdURL+"/health", ""); err != nil {
		return nil, fmt.Errorf("etcd not healthy: %w (log: %s)", err, filepath.Join(dir, "etcd.log"))
	}

	token, err := randomToken()
	if err != nil {
		return nil, err
	}
	if err := writeKey(filepath.Join(dir, "sa.key")); err != nil {
		return nil, err
	}
	// The admin token is a static one in system:masters: RBAC lets it do
	// anything, and the bootstrap roles exist for every other subject.
	if err := os.WriteFile(filepath.Join(dir, "tokens.csv"), []byte(token+",admin,admin,system:masters\n"), 0o600); err != nil {
		return nil, err
	}
	// --advertise-address pins the address instead of guessing from the
	// default route; loopback then needs the endpoint reconciler off. The
	// ServiceAccount admission plugin goes: nothing creates the default
	// ServiceAccount, so it would refuse every pod.
	if err := e.spawn(filepath.Join(bin, "kube-apiserver"), "kube-apiserver.log",
		"--etcd-servers="+etcdURL, "--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(secure),
		"--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
		"--cert-dir="+filepath.Join(dir, "certs"), "--service-cluster-ip-range=10.0.0.0/24",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+filepath.Join(dir, "sa.key"),
		"--service-account-signing-key-file="+filepath.Join(dir, "sa.key"),
		"--token-auth-file="+filepath.Join(dir, "tokens.csv"),
		"--authorization-mode=RBAC", "--disable-admission-plugins=ServiceAccount"); err != nil {
		return nil, err
	}
	host := "https://127.0.0.1:" + strconv.Itoa(secure)
	// The serving certificate does not exist before the server writes it:
	// probe without verification, then trust the certificate it wrote.
	insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	defer insecure.CloseIdleConnections()
	if err := waitHTTP(ctx, insecure, host+"/readyz", token); err != nil {
		return nil, fmt.Errorf("kube-apiserver not ready: %w (log: %s)", err, filepath.Join(dir, "kube-apiserver.log"))
	}
	e.Config = &rest.Config{
		Host:            host,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAFile: filepath.Join(dir, "certs", "apiserver.crt")},
		QPS:             -1, // no client-side rate limit in tests
	}
	if e.Client, err = kubernetes.NewForConfig(e.Config); err != nil {
		return nil, err
	}
	logf("kubetest: kube-apiserver %s ready in %v (dir %s)", host, time.Since(began).Round(time.Millisecond), dir)
	return e, nil
}

// Stop stops the API server, then etcd (SIGTERM, then SIGKILL after 10 s
// each), and removes Dir. It is idempotent.
func (e *Env) Stop() {
	e.mu.Lock()
	procs := e.procs
	e.procs = nil
	e.mu.Unlock()
	for _, c := range procs {
		stop(c, 10*time.Second)
	}
	if e.Dir != "" {
		_ = os.RemoveAll(e.Dir)
	}
}

// Kubeconfig writes a kubeconfig file for the admin into dir and returns
// its path, for a binary under test (pgrouter --kubeconfig) or kubectl.
func (e *Env) Kubeconfig(dir string) (string, error) {
	return WriteKubeconfig(dir, "admin", e.Config)
}

// WriteKubeconfig writes cfg (host, CA file, bearer token) as a kubeconfig
// file named name+".kubeconfig" in dir and returns its path.
func WriteKubeconfig(dir, name string, cfg *rest.Config) (string, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Config\ncurrent-context: t\n")
	fmt.Fprintf(&b, "clusters:\n- name: t\n  cluster:\n    server: %q\n    certificate-authority: %q\n", cfg.Host, cfg.CAFile)
	fmt.Fprintf(&b, "users:\n- name: u\n  user:\n    token: %q\n", cfg.BearerToken)
	fmt.Fprintf(&b, "contexts:\n- name: t\n  context:\n    cluster: t\n    user: u\n")
	path := filepath.Join(dir, name+".kubeconfig")
	return path, os.WriteFile(path, b.Bytes(), 0o600)
}

func (e *Env) spawn(path, logName string, args ...string) error {
	logf, err := os.Create(filepath.Join(e.Dir, logName))
	if err != nil {
		return err
	}
	defer logf.Close() // the child holds its own descriptor
	c := exec.Command(path, args...)
	c.Dir = e.Dir
	c.Stdout, c.Stderr = logf, logf
	// etcd reads every ETCD_* variable as a flag: give the children only
	// what they need.
	c.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + e.Dir}
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := c.Start(); err != nil {
		return fmt.Errorf("start %s: %w", path, err)
	}
	e.mu.Lock()
	e.procs = append([]*exec.Cmd{c}, e.procs...)
	e.mu.Unlock()
	return nil
}

func stop(c *exec.Cmd, grace time.Duration) {
	done := make(chan struct{})
	go func() { _ = c.Wait(); close(done) }()
	_ = c.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return
	case <-time.After(grace):
	}
	_ = c.Process.Kill()
	<-done
}

// waitHTTP polls url until it answers 200 or ctx ends.
func waitHTTP(ctx context.Context, client *http.Client, url, token string) error {
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s: %s", url, resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func randomToken() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// writeKey writes a fresh RSA key: the API server signs and checks
// ServiceAccount tokens with it.
func writeKey(path string) error {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	der := x509.MarshalPKCS1PrivateKey(k)
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: der}), 0o600)
}
