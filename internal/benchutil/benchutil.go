// Package benchutil holds what the Go benchmark commands under bench/
// (ryw, txfailover) share: a throwaway cluster with pgrouter's auth file,
// free loopback addresses, and waiting for a pgrouter process they start.
package benchutil

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrouter/pgrouter/internal/pgtest"
)

// readyWithin bounds WaitReady: a pgrouter that knows no primary by then
// will not.
const readyWithin = 20 * time.Second

// Cluster is a pgtest cluster and an auth file (PgBouncer's userlist
// format) with the secrets of its roles, for pgrouter's --auth-file.
type Cluster struct {
	*pgtest.Cluster
	AuthFile string
	dir      string
}

// StartCluster starts a primary with the given number of hot standbys and
// writes the auth file into a new temporary directory named by prefix.
func StartCluster(ctx context.Context, standbys int, prefix string) (_ *Cluster, err error) {
	c, err := pgtest.Start(ctx, pgtest.Options{Standbys: standbys})
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, err
	}
	bc := &Cluster{Cluster: c, AuthFile: filepath.Join(dir, "userlist.txt"), dir: dir}
	if err := c.WriteAuthFile(ctx, bc.AuthFile); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return bc, nil
}

// Close stops the servers and removes their directories and the auth file.
func (c *Cluster) Close() error {
	err := c.Cluster.Close()
	return errors.Join(err, os.RemoveAll(c.dir))
}

// AppConnString is a connection string to addr (a proxy's listener) as the
// cluster's application user, TLS off.
func (c *Cluster) AppConnString(addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=%s sslmode=disable", host, port, c.AppUser, c.AppPassword, c.AppDB)
}

// Exec runs stmts in order on one new connection to connString.
func Exec(ctx context.Context, connString string, stmts ...string) error {
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			return err
		}
	}
	return nil
}

// FreeAddr returns a loopback address whose port was free a moment ago,
// for a listener of a process about to start. It panics when the kernel
// gives no port, as nothing can be measured then.
func FreeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// WaitReady polls pgrouter's /readyz on its admin address until it
// answers 200 (the proxy knows a primary), for at most 20 s.
func WaitReady(admin string) error {
	for deadline := time.Now().Add(readyWithin); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
	}
	return fmt.Errorf("proxy not ready (no primary known) within %v", readyWithin)
}

// Short is err's text cut to at most n bytes, to count errors by kind.
func Short(err error, n int) string {
	s := err.Error()
	if len(s) > n {
		s = s[:n]
	}
	return s
}
