package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrouter/pgrouter/election"
	"github.com/pgrouter/pgrouter/internal/pgtest"
)

// The cluster's fixed names and secrets. The campaign owns the whole
// cluster, so nothing here needs to be secret.
const (
	superUser = "postgres"
	superPass = "chaos-super-pw"
	replUser  = "replicator"
	replPass  = "chaos-repl-pw"
	scope     = "chaos"
	pgPort    = 5432
	apiPort   = 8008
	etcdPort  = 2379
)

// Host numbers inside 10.213.N.0/24.
const (
	hostEtcd   = 2
	hostMember = 11 // n1 = .11, n2 = .12, n3 = .13
	hostProxy  = 21 // p1 = .21, p2 = .22
)

// Member is one PostgreSQL server and its `pgrouter agent --synchronous`,
// alone in its namespace.
type Member struct {
	Name    string
	IP      string
	DataDir string
	Agent   *Proc
}

// PGAddr is the member's PostgreSQL address.
func (m *Member) PGAddr() string { return net.JoinHostPort(m.IP, strconv.Itoa(pgPort)) }

// API is the agent's HTTP API address.
func (m *Member) API() string { return net.JoinHostPort(m.IP, strconv.Itoa(apiPort)) }

// Proxy is one `pgrouter proxy --discovery etcd`: RW is the passthrough
// read-write port, Pooled the single endpoint in transaction pooling mode.
type Proxy struct {
	Name       string
	IP         string
	RW, Pooled string
	Admin      string
	Proc       *Proc
}

// Cluster is etcd, three members and two proxies, each in its own network
// namespace.
type Cluster struct {
	Dir     string
	Net     *Network
	Etcd    *Proc
	EtcdIP  string
	Members []*Member
	Proxies []*Proxy
	bin     string
}

// ClusterConfig says where the binaries are and where to keep files.
type ClusterConfig struct {
	// Dir holds data directories, logs and the history; it must be
	// traversable by the postgres OS user.
	Dir string
	// PGRouter is the pgrouter binary, Etcd the etcd binary.
	PGRouter, Etcd string
	// Logf reports progress.
	Logf func(format string, args ...any)
}

// StartCluster builds the network, starts etcd and the agents, waits for a
// healthy cluster, creates the schema and starts the proxies.
func StartCluster(ctx context.Context, cfg ClusterConfig) (c *Cluster, err error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("the agents run as the postgres OS user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chmod(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	nw, err := NewNetwork()
	if err != nil {
		return nil, err
	}
	c = &Cluster{Dir: cfg.Dir, Net: nw, bin: filepath.Join(cfg.Dir, "pgrouter")}
	defer func() {
		if err != nil {
			c.Close()
			c = nil
		}
	}()
	// The agents' OS user must be able to run the binary: copy it here.
	if err := pgtest.CopyFile(cfg.PGRouter, c.bin, 0o755); err != nil {
		return c, err
	}
	env := pgtest.ProcessEnv()
	if err := nw.AddHost("etcd", hostEtcd); err != nil {
		return c, err
	}
	c.EtcdIP = nw.IP(hostEtcd)
	client := "http://" + net.JoinHostPort(c.EtcdIP, strconv.Itoa(etcdPort))
	peer := "http://" + net.JoinHostPort(c.EtcdIP, "2380")
	c.Etcd = &Proc{Name: "etcd", ns: nw.NS("etcd"), bin: cfg.Etcd, uid: -1, dir: cfg.Dir, env: env,
		log: filepath.Join(cfg.Dir, "etcd.log"),
		args: []string{"--name=chaos", "--data-dir=" + filepath.Join(cfg.Dir, "etcd"),
			"--listen-client-urls=" + client, "--advertise-client-urls=" + client,
			"--listen-peer-urls=" + peer, "--initial-advertise-peer-urls=" + peer,
			"--initial-cluster=chaos=" + peer, "--unsafe-no-fsync=true", "--log-level=warn"}}
	if err := c.Etcd.Start(); err != nil {
		return c, err
	}
	if err := c.WaitEtcd(ctx, 20*time.Second); err != nil {
		return c, err
	}
	subnet := fmt.Sprintf("10.213.%d.0/24", nw.N)
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("n%d", i)
		if err := nw.AddHost(name, hostMember+i-1); err != nil {
			return c, err
		}
		dir := filepath.Join(cfg.Dir, name)
		if err := os.Mkdir(dir, 0o700); err != nil {
			return c, err
		}
		if err := os.Chown(dir, uid, gid); err != nil {
			return c, err
		}
		m := &Member{Name: name, IP: nw.IP(hostMember + i - 1), DataDir: filepath.Join(dir, "data")}
		m.Agent = &Proc{Name: "agent-" + name, ns: nw.NS(name), bin: c.bin, uid: uid, gid: gid, dir: dir,
			log: filepath.Join(cfg.Dir, name+".log"),
			env: append(append([]string{}, env...), "HOME="+dir,
				"PGROUTER_SUPERUSER_PASSWORD="+superPass, "PGROUTER_REPLICATION_PASSWORD="+replPass),
			args: []string{"agent", "--name", name, "--scope", scope, "--dcs", "etcd",
				"--etcd-endpoints", net.JoinHostPort(c.EtcdIP, strconv.Itoa(etcdPort)),
				"--pgdata", m.DataDir, "--pg-listen", m.PGAddr(), "--api-listen", m.API(),
				"--pg-log", filepath.Join(dir, "postgresql.log"),
				"--superuser", superUser, "--replication-user", replUser, "--synchronous",
				"--pg-hba", "local all all scram-sha-256",
				"--pg-hba", "host all all 127.0.0.1/32 scram-sha-256",
				"--pg-hba", "host all all " + subnet + " scram-sha-256",
				"--pg-hba", "local replication all scram-sha-256",
				"--pg-hba", "host replication all " + subnet + " scram-sha-256",
				"--pg-param", "fsync=off", "--pg-param", "max_connections=100", "--pg-param", "shared_buffers=16MB",
				"--initdb-arg=--no-sync", "--initdb-arg=--wal-segsize=1",
				"--rejoin-timeout", "3s", "--log-level", "debug"}}
		c.Members = append(c.Members, m)
	}
	for _, m := range c.Members {
		if err := m.Agent.Start(); err != nil {
			return c, err
		}
	}
	cfg.Logf("etcd and three agents started in namespaces %s-*, waiting for a healthy cluster", nw.Bridge)
	if _, err := c.WaitHealthy(ctx, 120*time.Second); err != nil {
		return c, err
	}
	ld, err := c.Leader()
	if err != nil {
		return c, err
	}
	if err := c.writeAuthFile(ctx, ld); err != nil {
		return c, err
	}
	for i := 1; i <= 2; i++ {
		p, err := c.startProxy(fmt.Sprintf("p%d", i), hostProxy+i-1, env)
		if err != nil {
			return c, err
		}
		c.Proxies = append(c.Proxies, p)
	}
	if _, err := c.WaitHealthy(ctx, 60*time.Second); err != nil {
		return c, err
	}
	return c, nil
}

// startProxy writes the proxy's configuration and starts it: the
// read-write port in passthrough mode, the single endpoint pooled per
// transaction.
func (c *Cluster) startProxy(name string, host int, env []string) (*Proxy, error) {
	if err := c.Net.AddHost(name, host); err != nil {
		return nil, err
	}
	ip := c.Net.IP(host)
	p := &Proxy{Name: name, IP: ip, RW: net.JoinHostPort(ip, "6433"), Pooled: net.JoinHostPort(ip, "6432"),
		Admin: net.JoinHostPort(ip, "8432")}
	conf := fmt.Sprintf(`log: {level: debug}
proxy:
  listen: %s
  listenRW: %s
  primaryWait: 20s
admin: {listen: %s}
discovery:
  kind: etcd
  etcdEndpoints: [%s]
  scope: %s
health: {user: %s, interval: 200ms}
pool:
  modes: {any: transaction, rw: passthrough}
  size: 8
auth: {file: %s}
`, p.Pooled, p.RW, p.Admin, net.JoinHostPort(c.EtcdIP, strconv.Itoa(etcdPort)), scope, superUser,
		filepath.Join(c.Dir, "userlist.txt"))
	confPath := filepath.Join(c.Dir, name+".yaml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	p.Proc = &Proc{Name: "proxy-" + name, ns: c.Net.NS(name), bin: c.bin, uid: -1, dir: c.Dir,
		log:  filepath.Join(c.Dir, name+".log"),
		env:  append(append([]string{}, env...), "PGROUTER_HEALTH_PASSWORD="+superPass),
		args: []string{"proxy", "--config", confPath}}
	if err := p.Proc.Start(); err != nil {
		return nil, err
	}
	return p, nil
}

// writeAuthFile writes the roles' secrets as the pooled listeners'
// userlist.
func (c *Cluster) writeAuthFile(ctx context.Context, ld *Member) error {
	conn, err := connect(ctx, ld.PGAddr())
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return pgtest.WriteUserlist(ctx, conn, filepath.Join(c.Dir, "userlist.txt"))
}

// Close stops the proxies and the agents (each stops its PostgreSQL), then
// removes the network with whatever still runs in it.
func (c *Cluster) Close() {
	for _, p := range c.Proxies {
		p.Proc.Stop(10 * time.Second)
	}
	done := make(chan struct{})
	for _, m := range c.Members {
		go func() { m.Agent.Stop(30 * time.Second); done <- struct{}{} }()
	}
	for range c.Members {
		<-done
	}
	if c.Etcd != nil {
		c.Etcd.Stop(10 * time.Second)
	}
	c.Net.Close()
}

// WaitEtcd polls etcd's /health.
func (c *Cluster) WaitEtcd(ctx context.Context, d time.Duration) error {
	url := "http://" + net.JoinHostPort(c.EtcdIP, strconv.Itoa(etcdPort)) + "/health"
	return poll(ctx, d, "etcd healthy", func() error {
		if !c.Etcd.Running() {
			return fmt.Errorf("etcd exited (log %s)", c.Etcd.log)
		}
		code, err := httpGet(url, nil)
		if err == nil && code != 200 {
			err = fmt.Errorf("etcd /health %d", code)
		}
		return err
	})
}

// Leader returns the member whose agent answers /primary 200, if exactly
// one does.
func (c *Cluster) Leader() (*Member, error) {
	var found []*Member
	for _, m := range c.Members {
		if code, err := httpGet("http://"+m.API()+"/primary", nil); err == nil && code == 200 {
			found = append(found, m)
		}
	}
	if len(found) != 1 {
		var names []string
		for _, m := range found {
			names = append(names, m.Name)
		}
		return nil, fmt.Errorf("%d agents answer /primary 200 %v", len(found), names)
	}
	return found[0], nil
}

// Status reads an agent's /status.
func (m *Member) Status() (election.View, error) {
	var v election.View
	_, err := httpGet("http://"+m.API()+"/status", &v)
	return v, err
}

// Healthy checks the cluster once: every process runs; exactly one agent
// leads and its server is the only one out of recovery; both other
// members stream from it, one of them synchronously; both proxies' ports
// land on it.
func (c *Cluster) Healthy(ctx context.Context) (*Member, error) {
	if !c.Etcd.Running() {
		return nil, fmt.Errorf("etcd is not running")
	}
	for _, m := range c.Members {
		if !m.Agent.Running() {
			return nil, fmt.Errorf("agent %s is not running (log %s)", m.Name, m.Agent.log)
		}
	}
	ld, err := c.Leader()
	if err != nil {
		return nil, err
	}
	for _, m := range c.Members {
		inRecovery, err := queryBool(ctx, m.PGAddr(), "SELECT pg_is_in_recovery()")
		if err != nil {
			return nil, fmt.Errorf("%s: %w", m.Name, err)
		}
		if (m == ld) == inRecovery {
			return nil, fmt.Errorf("%s: in recovery %v, leader %s", m.Name, inRecovery, ld.Name)
		}
	}
	conn, err := connect(ctx, ld.PGAddr())
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	streaming, err := pgtest.StreamingStandbys(ctx, conn)
	if err != nil {
		return nil, err
	}
	sync := 0
	for _, m := range c.Members {
		if m == ld {
			continue
		}
		ss, ok := streaming[m.Name]
		if !ok {
			return nil, fmt.Errorf("%s does not stream from %s (streaming: %v)", m.Name, ld.Name, streaming)
		}
		if ss == "sync" {
			sync++
		}
	}
	if sync != 1 {
		return nil, fmt.Errorf("%d synchronous standbys (%v)", sync, streaming)
	}
	// Until the leader records its synchronous standby in etcd (one loop
	// after the standby caught up), no member may be promoted: a cluster
	// is ready for the next fault only once that is done.
	st, err := ld.Status()
	if err != nil {
		return nil, fmt.Errorf("%s /status: %w", ld.Name, err)
	}
	if st.Sync == nil || st.Sync.Leader != ld.Name || streaming[st.Sync.Standby] != "sync" {
		return nil, fmt.Errorf("synchronous standby not recorded yet (record %+v, streaming %v)", st.Sync, streaming)
	}
	for _, p := range c.Proxies {
		if !p.Proc.Running() {
			return nil, fmt.Errorf("proxy %s is not running (log %s)", p.Name, p.Proc.log)
		}
		for _, addr := range []string{p.RW, p.Pooled} {
			var ip string
			if err := queryRow(ctx, addr, "SELECT host(inet_server_addr())", &ip); err != nil {
				return nil, fmt.Errorf("proxy %s %s: %w", p.Name, addr, err)
			}
			if ip != ld.IP {
				return nil, fmt.Errorf("proxy %s %s lands on %s, not on the leader %s (%s)", p.Name, addr, ip, ld.Name, ld.IP)
			}
		}
	}
	return ld, nil
}

// WaitHealthy polls Healthy until it passes.
func (c *Cluster) WaitHealthy(ctx context.Context, d time.Duration) (*Member, error) {
	var ld *Member
	err := poll(ctx, d, "cluster healthy", func() error {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		var err error
		ld, err = c.Healthy(cctx)
		return err
	})
	return ld, err
}

// Logs lists every log file of the run.
func (c *Cluster) Logs() []string {
	var logs []string
	if c.Etcd != nil {
		logs = append(logs, c.Etcd.log)
	}
	for _, m := range c.Members {
		logs = append(logs, m.Agent.log, filepath.Join(filepath.Dir(m.DataDir), "postgresql.log"))
	}
	for _, p := range c.Proxies {
		logs = append(logs, p.Proc.log)
	}
	return logs
}

// connect opens a connection as the superuser.
func connect(ctx context.Context, addr string) (*pgx.Conn, error) {
	host, port, _ := net.SplitHostPort(addr)
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s user=%s dbname=postgres sslmode=disable connect_timeout=5", host, port, superUser))
	if err != nil {
		return nil, err
	}
	cfg.Password = superPass
	return pgx.ConnectConfig(ctx, cfg)
}

func queryRow(ctx context.Context, addr, sql string, dst ...any) error {
	conn, err := connect(ctx, addr)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.QueryRow(ctx, sql).Scan(dst...)
}

func queryBool(ctx context.Context, addr, sql string) (bool, error) {
	var b bool
	err := queryRow(ctx, addr, sql, &b)
	return b, err
}

var httpClient = &http.Client{Timeout: 2 * time.Second}

// httpGet returns the status code and decodes a JSON body into v if given.
func httpGet(url string, v any) (int, error) {
	resp, err := httpClient.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if v != nil {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			return resp.StatusCode, err
		}
	}
	return resp.StatusCode, nil
}

// poll calls f until it succeeds, d passes or ctx ends.
func poll(ctx context.Context, d time.Duration, what string, f func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %v: %w", what, d, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last: %v)", what, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
