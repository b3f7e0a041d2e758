package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgrouter/pgrouter/configs"
	"github.com/pgrouter/pgrouter/internal/pgtest"
)

func demoCommand() *cobra.Command {
	var dir string
	var standbys int
	var port int
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Start a local primary with hot standbys and the proxy in front; Ctrl-C stops everything",
		Args:  cobra.NoArgs,
	}
	cmd.Flags().StringVar(&dir, "dir", "", "parent directory for the demo cluster (default: the system temp dir)")
	cmd.Flags().IntVar(&standbys, "standbys", 2, "number of hot standbys")
	cmd.Flags().IntVar(&port, "port", 6432, "first proxy port: single endpoint; +1 read-write, +2 read-only, +2000 admin")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		if dir != "" {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			abs, err := filepath.Abs(dir)
			if err != nil {
				return err
			}
			dir = abs
		}
		step := func(format string, args ...any) {
			fmt.Printf("%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
		}
		step("starting PostgreSQL: a primary and %d hot standbys (initdb, pg_basebackup)...", standbys)
		startCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		c, err := pgtest.Start(startCtx, pgtest.Options{Standbys: standbys, Dir: dir, Logf: func(f string, a ...any) { step(f, a...) }})
		cancel()
		if err != nil {
			return err
		}
		defer func() {
			step("stopping PostgreSQL and removing %s", c.Dir)
			c.Close()
		}()
		cfg := configs.Defaults()
		cfg.Proxy.Listen = fmt.Sprintf("127.0.0.1:%d", port)
		cfg.Proxy.ListenRW = fmt.Sprintf("127.0.0.1:%d", port+1)
		cfg.Proxy.ListenRO = fmt.Sprintf("127.0.0.1:%d", port+2)
		cfg.Admin.Listen = fmt.Sprintf("127.0.0.1:%d", port+2000)
		cfg.Log.Level = "warn"
		cfg.Proxy.DrainTimeout = time.Second
		for _, n := range c.Nodes {
			cfg.Discovery.Backends = append(cfg.Discovery.Backends, n.Addr)
		}
		cfg.Health.User, cfg.Health.Password = c.SuperUser, c.SuperPassword
		if err := cfg.Validate(); err != nil {
			return err
		}
		conn := func(addr string) string {
			return fmt.Sprintf("psql 'host=127.0.0.1 port=%s user=%s password=%s dbname=%s'", addr[len("127.0.0.1:"):], c.AppUser, c.AppPassword, c.AppDB)
		}
		for i, n := range c.Nodes {
			role := "hot standby"
			if i == 0 {
				role = "primary"
			}
			step("member %-16s %s (data %s)", n.Addr, role, n.DataDir)
		}
		fmt.Printf(`
pgrouter is running. Connect with:
  single endpoint : %s
  read-write      : %s
  read-only       : %s
  admin           : http://%s/api/v1/topology  (also /metrics, /readyz)
  superuser       : user=%s password=%s
Try: promote a standby by hand (SELECT pg_promote() on it) and watch the read-write port follow.
Press Ctrl-C to stop everything.

`, conn(cfg.Proxy.Listen), conn(cfg.Proxy.ListenRW), conn(cfg.Proxy.ListenRO), cfg.Admin.Listen, c.SuperUser, c.SuperPassword)
		return runProxy(ctx, cfg, nil)
	}
	return cmd
}
