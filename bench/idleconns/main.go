// Command idleconns opens N PostgreSQL sessions through a target and holds them
// idle until its standard input closes or it gets SIGINT/SIGTERM, so that a
// benchmark can read a proxy's memory per idle session.
//
// It prints "opened K of N" then "ready" once every session it could open is
// open. With -keep-going (the default) a failed connect ends the opening phase
// and the sessions already open are held, so the caller can divide by K.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

func main() {
	dsn := flag.String("dsn", "host=127.0.0.1 port=5432 user=postgres dbname=postgres sslmode=disable", "connection string")
	n := flag.Int("n", 300, "sessions to open")
	keepGoing := flag.Bool("keep-going", true, "on a failed connect, hold the sessions already open instead of exiting")
	timeout := flag.Duration("timeout", 10*time.Second, "timeout of each connect")
	flag.Parse()

	cfg, err := pgx.ParseConfig(*dsn)
	if err != nil {
		fmt.Fprintf(os.Stderr, "parse dsn: %v\n", err)
		os.Exit(2)
	}
	cfg.ConnectTimeout = *timeout

	// No query is sent: behind PgBouncer in session mode a query would take
	// one of its default_pool_size server connections for good.
	conns := make([]*pgx.Conn, 0, *n)
	for i := 0; i < *n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		c, err := pgx.ConnectConfig(ctx, cfg)
		cancel()
		if err != nil {
			fmt.Fprintf(os.Stderr, "connect %d: %v\n", i+1, err)
			if !*keepGoing {
				os.Exit(1)
			}
			break
		}
		conns = append(conns, c)
	}
	fmt.Printf("opened %d of %d\nready\n", len(conns), *n)

	stop := make(chan struct{}, 2)
	go func() { io.Copy(io.Discard, os.Stdin); stop <- struct{}{} }()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() { <-sig; stop <- struct{}{} }()
	<-stop

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, c := range conns {
		c.Close(ctx)
	}
	if len(conns) < *n {
		os.Exit(1)
	}
}
