// Package configs holds pgrouter's configuration: plain structs read from
// YAML, defaults, and validation that reports every problem at once. Each
// part is converted to the owning package's own Config by cmd/pgrouter.
package configs

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/pgrouter/pgrouter/discovery"
	"github.com/pgrouter/pgrouter/health"
)

// Config is the whole configuration of `pgrouter proxy`.
type Config struct {
	Log       Log       `yaml:"log"`
	Proxy     Proxy     `yaml:"proxy"`
	Admin     Admin     `yaml:"admin"`
	Routing   Routing   `yaml:"routing"`
	Discovery Discovery `yaml:"discovery"`
	Health    Health    `yaml:"health"`
	Pool      Pool      `yaml:"pool"`
	Auth      Auth      `yaml:"auth"`
	Split     Split     `yaml:"split"`
}

// Split configures the statement split of the single endpoint.
type Split struct {
	// Mode is session (a whole session goes to one place) or statement
	// (each transaction goes where its statements may run; needs a pooled
	// mode on the single endpoint). Default session.
	Mode string `yaml:"mode"`
	// ReadYourWrites is off or session: after a session's write, its reads
	// go only to standbys that replayed it. Default session.
	ReadYourWrites string `yaml:"readYourWrites"`
	// RYWMaxWait is how long such a read waits for a standby to catch up
	// before it goes to the primary. Default 0.
	RYWMaxWait time.Duration `yaml:"rywMaxWait"`
	// ReadOnlyFunctions may run on a standby whatever pg_proc says.
	ReadOnlyFunctions []string `yaml:"readOnlyFunctions"`
	// WriteFunctions always go to the primary.
	WriteFunctions []string `yaml:"writeFunctions"`
}

// Pool configures pooled modes (see issue "pooled mode" in the README).
type Pool struct {
	// Mode is passthrough, session or transaction for every listener.
	// Default passthrough: the client authenticates with the server and
	// owns one server session.
	Mode string `yaml:"mode"`
	// Modes overrides Mode per listener: keys any, rw, ro.
	Modes map[string]string `yaml:"modes"`
	// Size caps server connections per (member, database, user). Default 20.
	Size int `yaml:"size"`
	// MinSize keeps this many open when idle. Default 0.
	MinSize int `yaml:"minSize"`
	// ServerIdleTimeout closes servers idle this long. Default 10m.
	ServerIdleTimeout time.Duration `yaml:"serverIdleTimeout"`
	// ServerLifetime closes servers this old when they come back. Default 1h.
	ServerLifetime time.Duration `yaml:"serverLifetime"`
	// QueryWaitTimeout: a client waiting longer for a server gets ERROR
	// 53300 and stays connected. Default 30s.
	QueryWaitTimeout time.Duration `yaml:"queryWaitTimeout"`
	// ServerResetQuery cleans a server between sessions in session mode.
	// Default DISCARD ALL.
	ServerResetQuery string `yaml:"serverResetQuery"`
}

// Auth configures client authentication at the proxy (pooled modes).
type Auth struct {
	// HBA are pg_hba.conf-style rules, first match wins. Default: every
	// database and user from anywhere with scram-sha-256.
	HBA []string `yaml:"hba"`
	// File is a PgBouncer userlist.txt with SCRAM secrets or md5 hashes.
	File string `yaml:"file"`
	// Query looks up a user's secret on the primary, e.g.
	// SELECT usename, passwd FROM pgrouter.user_lookup($1).
	Query string `yaml:"query"`
	// User runs Query; its password comes from PGROUTER_AUTH_PASSWORD or
	// PasswordFile, never a flag.
	User         string `yaml:"user"`
	PasswordFile string `yaml:"passwordFile"`
	Password     string `yaml:"-"`
	// Database is where Query runs. Default postgres.
	Database string `yaml:"database"`
	// CacheTTL is how long a looked-up secret is reused. Default 30s.
	CacheTTL time.Duration `yaml:"cacheTTL"`
}

// PoolModeFor returns the pool mode of a listener (any, rw, ro).
func (c *Config) PoolModeFor(listener string) string {
	if m, ok := c.Pool.Modes[listener]; ok && m != "" {
		return m
	}
	return c.Pool.Mode
}

// Pooled reports whether any listener uses a pooled mode.
func (c *Config) Pooled() bool {
	for _, l := range []string{"any", "rw", "ro"} {
		if m := c.PoolModeFor(l); m == "session" || m == "transaction" {
			return true
		}
	}
	return false
}

// Log configures the zap logger.
type Log struct {
	// Level is debug, info, warn or error. Default info.
	Level string `yaml:"level"`
	// Format is console or json. Default console.
	Format string `yaml:"format"`
}

// Proxy configures the client-facing listeners and the server links.
type Proxy struct {
	// Listen is the single endpoint: the primary, or a standby for
	// sessions that declare themselves read-only. Default: none.
	Listen string `yaml:"listen"`
	// ListenRW always routes to the primary. Default: none.
	ListenRW string `yaml:"listenRW"`
	// ListenRO routes to a hot standby. Default: none.
	ListenRO string `yaml:"listenRO"`
	// UnixSocketDir also serves each listener on a Unix socket in this
	// directory, named as PostgreSQL names its own (.s.PGSQL.PORT, PORT
	// the listener's TCP port), so psql -h DIR -p PORT reaches it. Rules
	// of type local in AuthHBA apply there. Default: none.
	UnixSocketDir string `yaml:"unixSocketDir"`
	// MaxClientConns caps open client connections per listener. Default
	// 0: no cap.
	MaxClientConns int `yaml:"maxClientConns"`
	// StartupTimeout bounds a client's startup packet and its
	// authentication. Default 15s.
	StartupTimeout time.Duration `yaml:"startupTimeout"`
	// PrimaryWait holds read-write sessions while there is no primary.
	// Default 15s.
	PrimaryWait time.Duration `yaml:"primaryWait"`
	// DrainTimeout is how long SIGTERM lets sessions finish. Default 30s.
	DrainTimeout time.Duration `yaml:"drainTimeout"`
	// MaxStartupPacket caps the startup packet in bytes. Default 10000.
	MaxStartupPacket int `yaml:"maxStartupPacket"`
	// RelayThreads is how many epoll threads relay sessions without TLS
	// once they have started (passthrough, session and transaction pooling); 0
	// relays them with goroutines instead. Default 1.
	RelayThreads int `yaml:"relayThreads"`
	// TLSCertFile and TLSKeyFile enable TLS for clients. Default: none
	// (SSLRequest is answered N).
	TLSCertFile string `yaml:"tlsCertFile"`
	TLSKeyFile  string `yaml:"tlsKeyFile"`
	// ServerSSLMode is the sslmode of links to PostgreSQL: disable,
	// prefer, require, verify-ca or verify-full. Default prefer.
	ServerSSLMode string `yaml:"serverSSLMode"`
	// ServerCAFile verifies servers for verify-ca/verify-full. Default:
	// the system roots.
	ServerCAFile string `yaml:"serverCAFile"`
	// ServerConnectTimeout bounds dialing a member. Default 5s.
	ServerConnectTimeout time.Duration `yaml:"serverConnectTimeout"`
	// PeerListen is host:port of the peer port, where other replicas of
	// this proxy pass on cancel requests whose key they do not know.
	// Default: none.
	PeerListen string `yaml:"peerListen"`
	// Peers are the other replicas' peer ports, host:port each; a host
	// resolving to several addresses (a headless Service) names them all.
	// A cancel request with a key unknown here goes to every one. Default:
	// none.
	Peers []string `yaml:"peers"`
}

// Admin configures the HTTP admin server.
type Admin struct {
	// Listen is host:port for /healthz, /readyz, /metrics and /api/v1.
	// Default: none (no admin server).
	Listen string `yaml:"listen"`
}

// Routing configures how read-only sessions choose a standby.
type Routing struct {
	// Balance is round-robin or least-connections. Default round-robin.
	Balance string `yaml:"balance"`
	// MaxReplicaLagBytes skips standbys further behind. Default 0: no limit.
	MaxReplicaLagBytes uint64 `yaml:"maxReplicaLagBytes"`
	// MaxReplicaLag skips standbys whose replay is older. Default 0: no limit.
	MaxReplicaLag time.Duration `yaml:"maxReplicaLag"`
	// FallbackToPrimary sends read-only sessions to the primary when no
	// standby is usable. Default true.
	FallbackToPrimary *bool `yaml:"fallbackToPrimary"`
}

// Discovery says where the member list comes from.
type Discovery struct {
	// Kind is static, etcd or kubernetes. Default static.
	Kind string `yaml:"kind"`
	// Backends is the static member list, host:port each; a host that is
	// a directory (/run/postgresql:5432) is a server's Unix socket there,
	// as in libpq.
	Backends []string `yaml:"backends"`
	// EtcdEndpoints (kind etcd) are the etcd endpoints where pgrouter
	// agents record their members and leader.
	EtcdEndpoints []string `yaml:"etcdEndpoints"`
	// Scope (kind etcd) is the agents' cluster name.
	Scope string `yaml:"scope"`
	// Kubernetes (kind kubernetes) selects the cluster's pods.
	Kubernetes Kubernetes `yaml:"kubernetes"`
}

// Kubernetes configures discovery from pod labels: the pods of Namespace
// matching Selector, their role read from a label.
type Kubernetes struct {
	// Namespace holds the pods. Default: the proxy's own namespace when it
	// runs in a pod; required with Kubeconfig.
	Namespace string `yaml:"namespace"`
	// Selector is a label selector such as app=pg. Default: every pod of
	// the namespace.
	Selector string `yaml:"selector"`
	// RolePreset names an operator's role label: kubedb, kubeblocks,
	// cnpg, zalando or pgrouter. RoleLabel, PrimaryValue and StandbyValue
	// override its parts. Default none.
	RolePreset string `yaml:"rolePreset"`
	// RoleLabel is the label key carrying the role. Required without
	// RolePreset.
	RoleLabel string `yaml:"roleLabel"`
	// PrimaryValue marks the primary. Required without RolePreset.
	PrimaryValue string `yaml:"primaryValue"`
	// StandbyValue marks standbys; pods with any other value (or none)
	// are claimed standbys too, so it documents more than it decides.
	StandbyValue string `yaml:"standbyValue"`
	// Kubeconfig is a kubeconfig file. Default: the in-cluster
	// configuration of the pod's ServiceAccount.
	Kubeconfig string `yaml:"kubeconfig"`
	// PGPortName names the container port of PostgreSQL. Default
	// postgresql.
	PGPortName string `yaml:"pgPortName"`
	// PGPort, when not 0, is PostgreSQL's port on every pod, whatever the
	// container ports say. Default 0.
	PGPort int `yaml:"pgPort"`
}

// Role resolves the preset and its overrides.
func (k Kubernetes) Role() (discovery.RoleLabel, error) {
	var r discovery.RoleLabel
	if k.RolePreset != "" {
		p, ok := discovery.RolePresets[k.RolePreset]
		if !ok {
			return r, fmt.Errorf("role-preset %q: want one of %s", k.RolePreset, strings.Join(discovery.PresetNames(), ", "))
		}
		r = p
	}
	for _, o := range []struct {
		dst *string
		v   string
	}{{&r.Key, k.RoleLabel}, {&r.Primary, k.PrimaryValue}, {&r.Standby, k.StandbyValue}} {
		if o.v != "" {
			*o.dst = o.v
		}
	}
	if r.Key == "" || r.Primary == "" {
		return r, errors.New("kubernetes discovery needs --role-preset, or --role-label and --primary-value")
	}
	return r, nil
}

func (k Kubernetes) validate() []error {
	var errs []error
	if _, err := k.Role(); err != nil {
		errs = append(errs, err)
	}
	if k.Namespace == "" && k.Kubeconfig != "" {
		errs = append(errs, errors.New("kubernetes discovery with --kubeconfig needs --namespace"))
	}
	if _, err := labels.Parse(k.Selector); err != nil {
		errs = append(errs, fmt.Errorf("selector %q: %w", k.Selector, err))
	}
	if k.RoleLabel != "" {
		if msgs := validation.IsQualifiedName(k.RoleLabel); len(msgs) > 0 {
			errs = append(errs, fmt.Errorf("role-label %q: %s", k.RoleLabel, strings.Join(msgs, "; ")))
		}
	}
	if k.PGPort < 0 || k.PGPort > 65535 {
		errs = append(errs, fmt.Errorf("pg-port %d is outside 0..65535", k.PGPort))
	}
	return errs
}

// Health configures the health checkers (see health.Config for each
// field's default).
type Health struct {
	health.Config `yaml:",inline"`
	// PasswordFile holds the health user's password. The environment
	// variable PGROUTER_HEALTH_PASSWORD wins over it. Never a flag.
	PasswordFile string `yaml:"passwordFile"`
}

// Defaults returns the configuration with every default filled in.
func Defaults() Config {
	t := true
	return Config{
		Log: Log{Level: "info", Format: "console"},
		Proxy: Proxy{
			StartupTimeout:       15 * time.Second,
			PrimaryWait:          15 * time.Second,
			DrainTimeout:         30 * time.Second,
			MaxStartupPacket:     10000,
			RelayThreads:         1,
			ServerSSLMode:        "prefer",
			ServerConnectTimeout: 5 * time.Second,
		},
		Routing:   Routing{Balance: "round-robin", FallbackToPrimary: &t},
		Discovery: Discovery{Kind: "static"},
		Health:    Health{Config: health.Config{}.WithDefaults()},
		Pool: Pool{Mode: "passthrough", Size: 20, ServerIdleTimeout: 10 * time.Minute, ServerLifetime: time.Hour,
			QueryWaitTimeout: 30 * time.Second, ServerResetQuery: "DISCARD ALL"},
		Split: Split{Mode: "session", ReadYourWrites: "session"},
		Auth: Auth{HBA: []string{"host all all 0.0.0.0/0 scram-sha-256", "host all all ::/0 scram-sha-256"},
			Database: "postgres", CacheTTL: 30 * time.Second},
	}
}

// Load reads a YAML file over the defaults. Unknown keys are errors, so a
// typo is not silently ignored.
func Load(path string) (Config, error) {
	return loadYAML(path, Defaults())
}

// loadYAML decodes the file at path over c, which holds the defaults; an
// empty path leaves them, and an unknown field is an error, not a silent
// typo.
func loadYAML[T any](path string, c T) (T, error) {
	if path == "" {
		return c, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return c, fmt.Errorf("read config: %w", err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return c, fmt.Errorf("parse %s: %w", path, err)
	}
	return c, nil
}

// ResolveSecrets fills the health and auth-user passwords from the
// environment or their files.
func (c *Config) ResolveSecrets() error {
	var err error
	if c.Health.Password, err = secret("PGROUTER_HEALTH_PASSWORD", c.Health.PasswordFile, "health"); err != nil {
		return err
	}
	c.Auth.Password, err = secret("PGROUTER_AUTH_PASSWORD", c.Auth.PasswordFile, "auth")
	return err
}

func secret(env, file, what string) (string, error) {
	if v, ok := os.LookupEnv(env); ok {
		return v, nil
	}
	if file == "" {
		return "", nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("%s password file: %w", what, err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	addr := func(field, v string) {
		if v == "" {
			return
		}
		if _, port, err := net.SplitHostPort(v); err != nil || port == "" {
			errs = append(errs, fmt.Errorf("%s: %q is not host:port", field, v))
		}
	}
	p := c.Proxy
	if p.Listen == "" && p.ListenRW == "" && p.ListenRO == "" {
		errs = append(errs, errors.New("no listener: set at least one of --listen, --listen-rw, --listen-ro"))
	}
	addr("listen", p.Listen)
	addr("listen-rw", p.ListenRW)
	addr("listen-ro", p.ListenRO)
	addr("admin-listen", c.Admin.Listen)
	addr("peer-listen", p.PeerListen)
	for _, peer := range p.Peers {
		addr("peers", peer)
	}
	seen := map[string]string{}
	for name, v := range map[string]string{"listen": p.Listen, "listen-rw": p.ListenRW, "listen-ro": p.ListenRO, "admin-listen": c.Admin.Listen, "peer-listen": p.PeerListen} {
		if v == "" {
			continue
		}
		if other, dup := seen[v]; dup && !strings.HasSuffix(v, ":0") {
			errs = append(errs, fmt.Errorf("%s and %s both use %s", name, other, v))
		}
		seen[v] = name
	}
	if d := p.UnixSocketDir; d != "" {
		// sun_path holds 107 bytes and a NUL; the longest name is .s.PGSQL.65535.
		if !filepath.IsAbs(d) {
			errs = append(errs, fmt.Errorf("unix-socket-dir %q is not an absolute path", d))
		} else if len(filepath.Join(d, ".s.PGSQL.65535")) > 107 {
			errs = append(errs, fmt.Errorf("unix-socket-dir %q is too long for a socket path (at most %d bytes)", d, 107-len("/.s.PGSQL.65535")))
		}
	}
	if p.MaxClientConns < 0 {
		errs = append(errs, errors.New("max-client-conns must not be negative"))
	}
	if p.MaxStartupPacket != 0 && (p.MaxStartupPacket < 64 || p.MaxStartupPacket > 1<<20) {
		errs = append(errs, fmt.Errorf("max-startup-packet %d is outside 64..1048576", p.MaxStartupPacket))
	}
	if p.RelayThreads < 0 || p.RelayThreads > 64 {
		errs = append(errs, fmt.Errorf("relay-threads %d is outside 0..64", p.RelayThreads))
	}
	if (p.TLSCertFile == "") != (p.TLSKeyFile == "") {
		errs = append(errs, errors.New("tls-cert and tls-key must be given together"))
	}
	switch p.ServerSSLMode {
	case "", "disable", "prefer", "require", "verify-ca", "verify-full":
	default:
		errs = append(errs, fmt.Errorf("server-sslmode %q: want disable, prefer, require, verify-ca or verify-full", p.ServerSSLMode))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"startup-timeout", p.StartupTimeout}, {"drain-timeout", p.DrainTimeout}, {"server-connect-timeout", p.ServerConnectTimeout}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative", d.name))
		}
	}
	switch c.Routing.Balance {
	case "", "round-robin", "least-connections":
	default:
		errs = append(errs, fmt.Errorf("balance %q: want round-robin or least-connections", c.Routing.Balance))
	}
	if c.Routing.MaxReplicaLag < 0 {
		errs = append(errs, errors.New("max-replica-lag must not be negative"))
	}
	switch c.Discovery.Kind {
	case "", "static":
		if len(c.Discovery.Backends) == 0 {
			errs = append(errs, errors.New("static discovery needs --backends"))
		}
		for _, b := range c.Discovery.Backends {
			addr("backends", b)
		}
	case "etcd":
		if len(c.Discovery.EtcdEndpoints) == 0 {
			errs = append(errs, errors.New("etcd discovery needs --etcd-endpoints"))
		}
		if c.Discovery.Scope == "" {
			errs = append(errs, errors.New("etcd discovery needs --scope"))
		}
	case "kubernetes":
		errs = append(errs, c.Discovery.Kubernetes.validate()...)
	default:
		errs = append(errs, fmt.Errorf("discovery %q is not supported (want static, etcd or kubernetes)", c.Discovery.Kind))
	}
	if err := c.Health.Config.Validate(); err != nil {
		errs = append(errs, err)
	}
	for _, l := range []string{"any", "rw", "ro"} {
		switch m := c.PoolModeFor(l); m {
		case "", "passthrough", "session", "transaction":
		default:
			errs = append(errs, fmt.Errorf("pool mode %q for listener %s: want passthrough, session or transaction", m, l))
		}
	}
	for l := range c.Pool.Modes {
		if l != "any" && l != "rw" && l != "ro" {
			errs = append(errs, fmt.Errorf("pool modes: unknown listener %q (want any, rw, ro)", l))
		}
	}
	if c.Pool.Size < 0 || c.Pool.MinSize < 0 || c.Pool.MinSize > max(c.Pool.Size, 20) {
		errs = append(errs, fmt.Errorf("pool size %d / min-pool-size %d: want 0 <= min <= size", c.Pool.Size, c.Pool.MinSize))
	}
	if c.Auth.Query != "" && c.Auth.User == "" {
		errs = append(errs, errors.New("auth-query needs auth-user"))
	}
	if c.Pooled() && c.Auth.Query == "" && c.Auth.File == "" {
		errs = append(errs, errors.New("pooled mode authenticates clients at the proxy: give --auth-file and/or --auth-query"))
	}
	switch c.Split.Mode {
	case "", "session":
	case "statement":
		if p.Listen == "" {
			errs = append(errs, errors.New("--split statement applies to the single endpoint: give --listen"))
		}
		if m := c.PoolModeFor("any"); m != "session" && m != "transaction" {
			errs = append(errs, errors.New("--split statement needs --pool-mode session or transaction on the single endpoint (the proxy must log in to standbys as the client)"))
		}
	default:
		errs = append(errs, fmt.Errorf("split %q: want session or statement", c.Split.Mode))
	}
	switch c.Split.ReadYourWrites {
	case "", "off", "session":
	default:
		errs = append(errs, fmt.Errorf("read-your-writes %q: want off or session", c.Split.ReadYourWrites))
	}
	errs = append(errs, c.Log.validate()...)
	return errors.Join(errs...)
}

// validate reports the log settings' problems, for both commands.
func (l Log) validate() []error {
	var errs []error
	switch l.Level {
	case "", "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log level %q: want debug, info, warn or error", l.Level))
	}
	switch l.Format {
	case "", "console", "json":
	default:
		errs = append(errs, fmt.Errorf("log format %q: want console or json", l.Format))
	}
	return errs
}
