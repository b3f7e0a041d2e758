package configs

import (
	"time"

	"github.com/spf13/pflag"
)

// Flags maps command-line flags onto a Config. Flags win over the YAML
// file, but only the flags the user actually gave: a flag left at its
// default never overwrites a value from the file.
type Flags struct {
	fs    *pflag.FlagSet
	apply map[string]func(*Config)
	// ConfigFile is the value of --config.
	ConfigFile string
}

// BindProxyFlags registers the flags of `pgrouter proxy` on fs. The flag
// names are a public interface: other tooling calls them.
func BindProxyFlags(fs *pflag.FlagSet) *Flags {
	f := &Flags{fs: fs, apply: map[string]func(*Config){}}
	d := Defaults()
	fs.StringVar(&f.ConfigFile, "config", "", "YAML configuration file (flags override it)")

	f.str("listen", d.Proxy.Listen, "single endpoint host:port: primary, or a standby for read-only sessions", func(c *Config) *string { return &c.Proxy.Listen })
	f.str("listen-rw", d.Proxy.ListenRW, "read-write endpoint host:port: always the primary", func(c *Config) *string { return &c.Proxy.ListenRW })
	f.str("listen-ro", d.Proxy.ListenRO, "read-only endpoint host:port: a hot standby", func(c *Config) *string { return &c.Proxy.ListenRO })
	f.str("admin-listen", d.Admin.Listen, "admin HTTP host:port (/healthz, /readyz, /metrics, /api/v1/topology)", func(c *Config) *string { return &c.Admin.Listen })
	f.str("unix-socket-dir", d.Proxy.UnixSocketDir, "also serve each listener on DIR/.s.PGSQL.<its port> (psql -h DIR -p PORT)", func(c *Config) *string { return &c.Proxy.UnixSocketDir })
	f.integer("max-client-conns", d.Proxy.MaxClientConns, "max open client connections per listener (0: no cap)", func(c *Config) *int { return &c.Proxy.MaxClientConns })
	f.dur("startup-timeout", d.Proxy.StartupTimeout, "deadline for a client's startup and authentication", func(c *Config) *time.Duration { return &c.Proxy.StartupTimeout })
	f.dur("primary-wait", d.Proxy.PrimaryWait, "how long read-write sessions wait for a primary during a failover", func(c *Config) *time.Duration { return &c.Proxy.PrimaryWait })
	f.dur("drain-timeout", d.Proxy.DrainTimeout, "how long SIGTERM lets sessions finish before closing them", func(c *Config) *time.Duration { return &c.Proxy.DrainTimeout })
	f.integer("max-startup-packet", d.Proxy.MaxStartupPacket, "max startup packet size in bytes", func(c *Config) *int { return &c.Proxy.MaxStartupPacket })
	f.integer("relay-threads", d.Proxy.RelayThreads, "epoll threads relaying sessions without TLS: passthrough, session and transaction pooling (0: goroutines)", func(c *Config) *int { return &c.Proxy.RelayThreads })
	f.str("tls-cert", d.Proxy.TLSCertFile, "certificate file for client TLS", func(c *Config) *string { return &c.Proxy.TLSCertFile })
	f.str("tls-key", d.Proxy.TLSKeyFile, "key file for client TLS", func(c *Config) *string { return &c.Proxy.TLSKeyFile })
	f.str("server-sslmode", d.Proxy.ServerSSLMode, "sslmode for links to PostgreSQL: disable, prefer, require, verify-ca, verify-full", func(c *Config) *string { return &c.Proxy.ServerSSLMode })
	f.str("server-ca", d.Proxy.ServerCAFile, "CA file to verify PostgreSQL servers", func(c *Config) *string { return &c.Proxy.ServerCAFile })
	f.dur("server-connect-timeout", d.Proxy.ServerConnectTimeout, "deadline for connecting to a member", func(c *Config) *time.Duration { return &c.Proxy.ServerConnectTimeout })
	f.str("peer-listen", d.Proxy.PeerListen, "peer port host:port: other replicas pass on cancel requests here", func(c *Config) *string { return &c.Proxy.PeerListen })
	peers := fs.StringSlice("peers", nil, "other replicas' peer ports, host:port,...; a cancel key unknown here goes to each (a headless Service name covers all)")
	f.apply["peers"] = func(c *Config) { c.Proxy.Peers = append([]string(nil), *peers...) }

	f.str("balance", d.Routing.Balance, "standby choice for read-only sessions: round-robin or least-connections", func(c *Config) *string { return &c.Routing.Balance })
	f.uint64("max-replica-lag-bytes", d.Routing.MaxReplicaLagBytes, "skip standbys whose replay is further behind, in bytes (0: no limit)", func(c *Config) *uint64 { return &c.Routing.MaxReplicaLagBytes })
	f.dur("max-replica-lag", d.Routing.MaxReplicaLag, "skip standbys whose replay is older than this (0: no limit)", func(c *Config) *time.Duration { return &c.Routing.MaxReplicaLag })
	fb := fs.Bool("fallback-to-primary", *d.Routing.FallbackToPrimary, "send read-only sessions to the primary when no standby is usable")
	f.apply["fallback-to-primary"] = func(c *Config) { v := *fb; c.Routing.FallbackToPrimary = &v }

	f.str("discovery", d.Discovery.Kind, "member discovery: static, etcd (pgrouter agents) or kubernetes (pod labels)", func(c *Config) *string { return &c.Discovery.Kind })
	backends := fs.StringSlice("backends", nil, "static member list, host:port,host:port,... (a host that is a directory, /run/postgresql:5432, is a server's Unix socket, as in libpq)")
	f.apply["backends"] = func(c *Config) { c.Discovery.Backends = append([]string(nil), *backends...) }
	etcd := fs.StringSlice("etcd-endpoints", nil, "etcd discovery: endpoints, host:port,host:port,...")
	f.apply["etcd-endpoints"] = func(c *Config) { c.Discovery.EtcdEndpoints = append([]string(nil), *etcd...) }
	f.str("scope", d.Discovery.Scope, "etcd discovery: the agents' cluster name", func(c *Config) *string { return &c.Discovery.Scope })
	k := func(c *Config) *Kubernetes { return &c.Discovery.Kubernetes }
	f.str("namespace", "", "kubernetes discovery: namespace of the pods (default: the proxy's own, in a pod)", func(c *Config) *string { return &k(c).Namespace })
	f.str("selector", "", "kubernetes discovery: label selector of the cluster's pods, e.g. app=pg", func(c *Config) *string { return &k(c).Selector })
	f.str("role-preset", "", "kubernetes discovery: role label of kubedb, kubeblocks, cnpg, zalando or pgrouter", func(c *Config) *string { return &k(c).RolePreset })
	f.str("role-label", "", "kubernetes discovery: label key carrying the role (overrides the preset)", func(c *Config) *string { return &k(c).RoleLabel })
	f.str("primary-value", "", "kubernetes discovery: role label value of the primary (overrides the preset)", func(c *Config) *string { return &k(c).PrimaryValue })
	f.str("standby-value", "", "kubernetes discovery: role label value of standbys (overrides the preset)", func(c *Config) *string { return &k(c).StandbyValue })
	f.str("kubeconfig", "", "kubernetes discovery: kubeconfig file (default: in-cluster ServiceAccount)", func(c *Config) *string { return &k(c).Kubeconfig })
	f.str("pg-port-name", "", "kubernetes discovery: container port name of PostgreSQL (default postgresql)", func(c *Config) *string { return &k(c).PGPortName })
	f.integer("pg-port", 0, "kubernetes discovery: PostgreSQL port on every pod, instead of the named container port", func(c *Config) *int { return &k(c).PGPort })

	f.str("health-user", d.Health.User, "user for health probes (password: PGROUTER_HEALTH_PASSWORD or --health-password-file)", func(c *Config) *string { return &c.Health.User })
	f.str("health-database", d.Health.Database, "database for health probes", func(c *Config) *string { return &c.Health.Database })
	f.str("health-password-file", d.Health.PasswordFile, "file holding the health user's password", func(c *Config) *string { return &c.Health.PasswordFile })
	f.str("health-sslmode", d.Health.SSLMode, "sslmode for health probes", func(c *Config) *string { return &c.Health.SSLMode })
	f.dur("health-interval", d.Health.Interval, "time between probes of a member", func(c *Config) *time.Duration { return &c.Health.Interval })
	f.dur("health-timeout", d.Health.Timeout, "deadline of one probe", func(c *Config) *time.Duration { return &c.Health.Timeout })
	f.integer("health-failure-threshold", d.Health.FailureThreshold, "consecutive failed probes before a member is down", func(c *Config) *int { return &c.Health.FailureThreshold })

	f.str("pool-mode", d.Pool.Mode, "passthrough, session or transaction (YAML pool.modes sets it per listener)", func(c *Config) *string { return &c.Pool.Mode })
	f.integer("pool-size", d.Pool.Size, "server connections per (member, database, user) in pooled modes", func(c *Config) *int { return &c.Pool.Size })
	f.integer("min-pool-size", d.Pool.MinSize, "server connections kept open when idle", func(c *Config) *int { return &c.Pool.MinSize })
	f.dur("server-idle-timeout", d.Pool.ServerIdleTimeout, "close pooled servers idle this long", func(c *Config) *time.Duration { return &c.Pool.ServerIdleTimeout })
	f.dur("server-lifetime", d.Pool.ServerLifetime, "close pooled servers this old when they come back", func(c *Config) *time.Duration { return &c.Pool.ServerLifetime })
	f.dur("query-wait-timeout", d.Pool.QueryWaitTimeout, "a client waiting longer for a server gets ERROR 53300", func(c *Config) *time.Duration { return &c.Pool.QueryWaitTimeout })
	f.str("server-reset-query", d.Pool.ServerResetQuery, "query that cleans a server between sessions (session mode)", func(c *Config) *string { return &c.Pool.ServerResetQuery })
	f.integer("max-client-conn", d.Proxy.MaxClientConns, "same as --max-client-conns (PgBouncer's name)", func(c *Config) *int { return &c.Proxy.MaxClientConns })
	f.str("auth-file", d.Auth.File, "PgBouncer userlist.txt with SCRAM secrets or md5 hashes (pooled modes)", func(c *Config) *string { return &c.Auth.File })
	f.str("auth-query", d.Auth.Query, "query returning (user, secret) for $1, run on the primary as --auth-user", func(c *Config) *string { return &c.Auth.Query })
	f.str("auth-user", d.Auth.User, "user that runs --auth-query (password: PGROUTER_AUTH_PASSWORD or --auth-password-file)", func(c *Config) *string { return &c.Auth.User })
	f.str("auth-password-file", d.Auth.PasswordFile, "file holding --auth-user's password", func(c *Config) *string { return &c.Auth.PasswordFile })
	f.str("auth-database", d.Auth.Database, "database --auth-query runs in", func(c *Config) *string { return &c.Auth.Database })
	hba := fs.StringArray("auth-hba", nil, "pg_hba.conf-style rule for pooled modes, repeatable (default: scram-sha-256 for all)")
	f.apply["auth-hba"] = func(c *Config) { c.Auth.HBA = append([]string(nil), *hba...) }

	f.str("split", d.Split.Mode, "single endpoint: session (whole sessions) or statement (each transaction where its statements may run)", func(c *Config) *string { return &c.Split.Mode })
	f.str("read-your-writes", d.Split.ReadYourWrites, "off or session: a session's reads see its own writes", func(c *Config) *string { return &c.Split.ReadYourWrites })
	f.dur("ryw-max-wait", d.Split.RYWMaxWait, "how long a read waits for a standby to replay the session's write before going to the primary", func(c *Config) *time.Duration { return &c.Split.RYWMaxWait })
	rof := fs.StringSlice("read-only-functions", nil, "functions that may run on a standby whatever their volatility")
	f.apply["read-only-functions"] = func(c *Config) { c.Split.ReadOnlyFunctions = append([]string(nil), *rof...) }
	wf := fs.StringSlice("write-functions", nil, "functions that always run on the primary")
	f.apply["write-functions"] = func(c *Config) { c.Split.WriteFunctions = append([]string(nil), *wf...) }

	f.str("log-level", d.Log.Level, "debug, info, warn or error", func(c *Config) *string { return &c.Log.Level })
	f.str("log-format", d.Log.Format, "console or json", func(c *Config) *string { return &c.Log.Format })
	return f
}

// Apply copies the flags the user set onto c.
func (f *Flags) Apply(c *Config) {
	f.fs.Visit(func(fl *pflag.Flag) {
		if a, ok := f.apply[fl.Name]; ok {
			a(c)
		}
	})
}

// Resolve loads the file named by --config (or the defaults), applies the
// flags given, reads secrets, and validates the result.
func (f *Flags) Resolve() (Config, error) {
	c, err := Load(f.ConfigFile)
	if err != nil {
		return c, err
	}
	f.Apply(&c)
	if err := c.ResolveSecrets(); err != nil {
		return c, err
	}
	return c, c.Validate()
}

func (f *Flags) str(name, def, usage string, field func(*Config) *string) {
	p := f.fs.String(name, def, usage)
	f.apply[name] = func(c *Config) { *field(c) = *p }
}

func (f *Flags) integer(name string, def int, usage string, field func(*Config) *int) {
	p := f.fs.Int(name, def, usage)
	f.apply[name] = func(c *Config) { *field(c) = *p }
}

func (f *Flags) uint64(name string, def uint64, usage string, field func(*Config) *uint64) {
	p := f.fs.Uint64(name, def, usage)
	f.apply[name] = func(c *Config) { *field(c) = *p }
}

func (f *Flags) dur(name string, def time.Duration, usage string, field func(*Config) *time.Duration) {
	p := f.fs.Duration(name, def, usage)
	f.apply[name] = func(c *Config) { *field(c) = *p }
}
