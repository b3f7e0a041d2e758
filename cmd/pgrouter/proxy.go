package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/admin"
	"github.com/pgrouter/pgrouter/configs"
	"github.com/pgrouter/pgrouter/discovery"
	"github.com/pgrouter/pgrouter/health"
	"github.com/pgrouter/pgrouter/proxy"
	"github.com/pgrouter/pgrouter/proxy/auth"
	"github.com/pgrouter/pgrouter/proxy/pool"
	"github.com/pgrouter/pgrouter/router"
	"github.com/pgrouter/pgrouter/router/classify"
	"github.com/pgrouter/pgrouter/topology"
)

func proxyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Route PostgreSQL sessions to the current primary and hot standbys",
		Args:  cobra.NoArgs,
	}
	flags := configs.BindProxyFlags(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, err := flags.Resolve()
		if err != nil {
			return err
		}
		return runProxy(cmd.Context(), cfg, flags)
	}
	return cmd
}

// runProxy wires discovery → health → feed → proxy and the admin server,
// and runs them until SIGINT/SIGTERM; SIGHUP reloads the configuration.
func runProxy(ctx context.Context, cfg configs.Config, flags *configs.Flags) error {
	if ctx == nil {
		ctx = context.Background()
	}
	log, level, err := newLogger(cfg.Log)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	certs := &certReloader{}
	pcfg, err := proxyConfig(cfg, certs)
	if err != nil {
		return err
	}
	feed := &topology.Feed{}
	if pcfg.Auth, err = authConfig(cfg, feed, log.Named("auth")); err != nil {
		return err
	}
	if pcfg.Auth != nil {
		defer pcfg.Auth.Lookup.Close()
	}
	pcfg.Split = splitConfig(cfg, feed, log.Named("split"))
	srv, err := proxy.New(pcfg, feed, log.Named("proxy"), proxy.NewMetrics(reg))
	if err != nil {
		return err
	}
	if err := srv.Listen(); err != nil {
		return err
	}
	reg.MustRegister(srv.PoolCollector())
	source, static, err := newSource(cfg.Discovery, log.Named("discovery"))
	if err != nil {
		return err
	}
	if c, ok := source.(io.Closer); ok {
		defer c.Close()
	}
	if e, ok := source.(*discovery.Etcd); ok && cfg.Pooled() {
		e.OnSwitchover = switchoverPauser(srv, pcfg.PrimaryWait, log.Named("proxy"))
	}
	monitor := health.NewMonitor(cfg.Health.Config, feed, log.Named("health"), health.NewMetrics(reg))
	timeline := admin.NewTimeline(0)
	monitor.OnEvent = timeline.Add

	var adminSrv *admin.Server
	if cfg.Admin.Listen != "" {
		adminSrv, err = admin.New(cfg.Admin.Listen, feed, admin.Hooks{
			Sessions: func() (map[string]int, map[string]int) {
				st := srv.Stats()
				return st.Listeners, st.Members
			},
			Pools:    func() any { return srv.PoolStats() },
			Pause:    srv.Pause,
			Resume:   srv.Resume,
			Timeline: timeline,
		}, reg, log.Named("admin"))
		if err != nil {
			return fmt.Errorf("admin listen %s: %w", cfg.Admin.Listen, err)
		}
	}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	fields := []zap.Field{zap.Strings("backends", cfg.Discovery.Backends)}
	for _, lc := range pcfg.Listeners {
		fields = append(fields, zap.String("listen_"+lc.Name, srv.Addr(lc.Name).String()))
	}
	if adminSrv != nil {
		fields = append(fields, zap.String("admin", adminSrv.Addr().String()))
	}
	log.Info("pgrouter proxy started", fields...)

	// The proxy drains after ctx ends; the feeders stop after it so that
	// draining sessions still see role changes.
	feedCtx, stopFeed := context.WithCancel(context.Background())
	defer stopFeed()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	run := func(name string, f func(context.Context) error, c context.Context) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(c); err != nil && !errors.Is(err, context.Canceled) {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	run("health", monitor.Run, feedCtx)
	run("discovery", func(c context.Context) error { return source.Run(c, monitor.SetMembers) }, feedCtx)
	if adminSrv != nil {
		run("admin", adminSrv.Run, feedCtx)
	}
	proxyDone := make(chan error, 1)
	go func() { proxyDone <- srv.Serve(ctx) }()

	var runErr error
loop:
	for {
		select {
		case <-hup:
			if flags == nil {
				continue
			}
			next, err := flags.Resolve()
			if err != nil {
				log.Error("reload refused: configuration invalid", zap.Error(err))
				continue
			}
			if err := reloadProxy(srv, static, certs, level, next); err != nil {
				log.Error("reload failed", zap.Error(err))
				continue
			}
			log.Info("configuration reloaded", zap.Strings("backends", next.Discovery.Backends))
		case err := <-errc:
			runErr = err
			log.Error("component failed; shutting down", zap.Error(err))
			stop()
		case err := <-proxyDone:
			if runErr == nil {
				runErr = err
			}
			break loop
		}
	}
	stopFeed()
	wg.Wait()
	log.Info("pgrouter proxy stopped")
	return runErr
}

func reloadProxy(srv *proxy.Server, static *discovery.Static, certs *certReloader, level zap.AtomicLevel, cfg configs.Config) error {
	pcfg, err := proxyConfig(cfg, certs)
	if err != nil {
		return err
	}
	if static != nil {
		if err := static.Update(cfg.Discovery.Backends); err != nil {
			return err
		}
	}
	pcfg.Split = srv.Config().Split
	if old := srv.Config().Auth; old != nil && cfg.Pooled() {
		hba, err := auth.ParseHBA(cfg.Auth.HBA)
		if err != nil {
			return err
		}
		pcfg.Auth = &proxy.AuthConfig{HBA: hba, Lookup: old.Lookup}
	}
	_ = level.UnmarshalText([]byte(cfg.Log.Level))
	srv.Reload(pcfg)
	return nil
}

// switchoverPauser pauses the pooled listeners while the agents run a
// planned switchover (running transactions finish, new ones wait) and
// resumes when it is over, or after maxPause whatever happens, so that a
// switchover loses no transaction and a stuck one holds nobody for long.
func switchoverPauser(srv *proxy.Server, maxPause time.Duration, log *zap.Logger) func(bool) {
	if maxPause <= 0 {
		maxPause = 15 * time.Second
	}
	var mu sync.Mutex
	var timer *time.Timer
	return func(inProgress bool) {
		mu.Lock()
		defer mu.Unlock()
		if timer != nil {
			timer.Stop()
			timer = nil
		}
		if !inProgress {
			srv.Resume()
			log.Info("switchover over: resumed")
			return
		}
		log.Info("switchover under way: pausing new transactions")
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), maxPause)
			defer cancel()
			if err := srv.Pause(ctx); err != nil {
				log.Warn("transactions still running while the switchover proceeds", zap.Error(err))
			}
		}()
		timer = time.AfterFunc(maxPause, func() {
			srv.Resume()
			log.Warn("switchover took longer than the pause allows: resumed", zap.Duration("after", maxPause))
		})
	}
}

// newSource builds the discovery source; static is nil unless the source
// is the static list, which SIGHUP reloads.
func newSource(d configs.Discovery, log *zap.Logger) (discovery.Source, *discovery.Static, error) {
	switch d.Kind {
	case "etcd":
		src, err := discovery.NewEtcd(d.EtcdEndpoints, d.Scope, log)
		return src, nil, err
	case "kubernetes":
		src, err := kubernetesSource(d.Kubernetes, log)
		return src, nil, err
	}
	static, err := discovery.NewStatic(d.Backends)
	return static, static, err
}

// kubernetesSource builds discovery from pod labels. Without a namespace
// it watches the proxy's own, read from its ServiceAccount mount.
func kubernetesSource(k configs.Kubernetes, log *zap.Logger) (*discovery.Kubernetes, error) {
	role, err := k.Role()
	if err != nil {
		return nil, err
	}
	rc, err := discovery.RESTConfig(k.Kubeconfig)
	if err != nil {
		return nil, err
	}
	ns := k.Namespace
	if ns == "" {
		b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
		if err != nil {
			return nil, fmt.Errorf("kubernetes discovery: no --namespace and cannot read the pod's own: %w", err)
		}
		ns = strings.TrimSpace(string(b))
	}
	return discovery.NewKubernetes(discovery.KubernetesConfig{
		Namespace: ns, Selector: k.Selector, Role: role, PortName: k.PGPortName, Port: k.PGPort,
	}, rc, log)
}

// proxyConfig converts the file-and-flags configuration into the proxy's
// own; it (re)loads the TLS certificate into certs.
func proxyConfig(c configs.Config, certs *certReloader) (proxy.Config, error) {
	p := c.Proxy
	var ls []proxy.ListenerConfig
	for _, l := range []struct {
		name, addr string
		kind       router.Listener
	}{{"any", p.Listen, router.ListenerAny}, {"rw", p.ListenRW, router.ListenerReadWrite}, {"ro", p.ListenRO, router.ListenerReadOnly}} {
		if l.addr != "" {
			mode, err := proxy.ParsePoolMode(c.PoolModeFor(l.name))
			if err != nil {
				return proxy.Config{}, err
			}
			ls = append(ls, proxy.ListenerConfig{Name: l.name, Addr: l.addr, Kind: l.kind, MaxClientConns: p.MaxClientConns, PoolMode: mode,
				Split: l.name == "any" && c.Split.Mode == "statement"})
		}
	}
	mode, err := pool.ParseSSLMode(p.ServerSSLMode)
	if err != nil {
		return proxy.Config{}, err
	}
	out := proxy.Config{
		Listeners:        ls,
		UnixSocketDir:    p.UnixSocketDir,
		Server:           pool.DialConfig{Timeout: p.ServerConnectTimeout, SSLMode: mode},
		StartupTimeout:   p.StartupTimeout,
		PrimaryWait:      p.PrimaryWait,
		DrainTimeout:     p.DrainTimeout,
		MaxStartupPacket: p.MaxStartupPacket,
		RelayThreads:     p.RelayThreads,
		ServerResetQuery: c.Pool.ServerResetQuery,
		Peer:             proxy.PeerConfig{Listen: p.PeerListen, Peers: p.Peers},
		Pool: pool.Config{
			Size: c.Pool.Size, MinSize: c.Pool.MinSize, IdleTimeout: c.Pool.ServerIdleTimeout,
			Lifetime: c.Pool.ServerLifetime, WaitTimeout: c.Pool.QueryWaitTimeout,
		},
		Policy: router.Policy{
			MaxLagBytes:       c.Routing.MaxReplicaLagBytes,
			MaxLag:            c.Routing.MaxReplicaLag,
			FallbackToPrimary: c.Routing.FallbackToPrimary == nil || *c.Routing.FallbackToPrimary,
		},
	}
	if p.PrimaryWait == 0 {
		out.PrimaryWait = -1 // configured as zero: refuse at once
	}
	if c.Routing.Balance == "least-connections" {
		out.Policy.Balance = router.LeastConnections
	}
	if p.ServerCAFile != "" {
		pem, err := os.ReadFile(p.ServerCAFile)
		if err != nil {
			return out, fmt.Errorf("server-ca: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return out, fmt.Errorf("server-ca %s: no certificate found", p.ServerCAFile)
		}
		out.Server.TLS = &tls.Config{RootCAs: roots}
	}
	if p.TLSCertFile != "" {
		if err := certs.load(p.TLSCertFile, p.TLSKeyFile); err != nil {
			return out, err
		}
		out.ClientTLS = &tls.Config{
			MinVersion:     tls.VersionTLS12,
			GetCertificate: certs.get,
		}
	}
	return out, nil
}

// authConfig builds client authentication for pooled listeners: the HBA
// rules and the secret lookup (auth file, auth query on the primary).
func authConfig(c configs.Config, feed *topology.Feed, log *zap.Logger) (*proxy.AuthConfig, error) {
	if !c.Pooled() {
		return nil, nil
	}
	hba, err := auth.ParseHBA(c.Auth.HBA)
	if err != nil {
		return nil, err
	}
	primary := func() (string, bool) {
		snap, _ := feed.Load()
		m, ok := router.Primary(snap)
		return m.Addr, ok
	}
	lookup, err := auth.NewLookup(auth.LookupConfig{
		AuthFile: c.Auth.File, AuthQuery: c.Auth.Query, AuthUser: c.Auth.User, AuthPassword: c.Auth.Password,
		AuthDatabase: c.Auth.Database, TTL: c.Auth.CacheTTL,
	}, primary, log)
	if err != nil {
		return nil, err
	}
	return &proxy.AuthConfig{HBA: hba, Lookup: lookup}, nil
}

// splitConfig builds the statement split: the classifier, with user
// functions' volatility read from pg_proc on the primary as the health
// user.
func splitConfig(c configs.Config, feed *topology.Feed, log *zap.Logger) *proxy.SplitConfig {
	if c.Split.Mode != "statement" {
		return nil
	}
	funcs := &proxy.FunctionCatalog{Log: log}
	funcs.Connect = func(ctx context.Context, db string) (*pgconn.PgConn, error) {
		snap, _ := feed.Load()
		m, ok := router.Primary(snap)
		if !ok {
			return nil, errors.New("no primary")
		}
		host, port, _ := net.SplitHostPort(m.Addr)
		pc, err := pgconn.ParseConfig(fmt.Sprintf("host=%s port=%s dbname=%s sslmode=%s connect_timeout=5", host, port, quoteConnValue(db), c.Health.SSLMode))
		if err != nil {
			return nil, err
		}
		pc.User, pc.Password = c.Health.User, c.Health.Password
		return pgconn.ConnectConfig(ctx, pc)
	}
	cl := classify.New(classify.Config{
		ReadOnlyFunctions: c.Split.ReadOnlyFunctions,
		WriteFunctions:    c.Split.WriteFunctions,
		Volatility:        funcs.Volatility,
	})
	funcs.OnChange = cl.InvalidateFunctions
	return &proxy.SplitConfig{Classifier: cl, ReadYourWrites: c.Split.ReadYourWrites != "off",
		RYWMaxWait: c.Split.RYWMaxWait, Functions: funcs}
}

func quoteConnValue(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// certReloader serves the newest client-facing certificate, so SIGHUP can
// rotate it without dropping sessions.
type certReloader struct {
	cur atomic.Pointer[tls.Certificate]
}

func (r *certReloader) load(certFile, keyFile string) error {
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("tls certificate: %w", err)
	}
	r.cur.Store(&c)
	return nil
}

func (r *certReloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) { return r.cur.Load(), nil }
