// Command idleconns opens N PostgreSQL sessions through a target and holds them
// idle until its standard input closes or it gets SIGINT/SIGTERM, so that a
// benchmark can read a proxy's memory per idle session.
//
// It prints "opened K of N" then "ready" once every session it could open is
// open. With -keep-going (the default) a failed connect ends the opening phase
// and the sessions already open are held, so the caller can divide by K.
//
// While it holds the sessions it reads commands from standard input, one a
// line, and answers each on standard output when done:
//
//	warm    every session runs one query (simple protocol), then idles again;
//	        answers "warmed K errors E"
//	active  the first -active sessions run queries back to back (simple
//	        protocol, pgbench -S's SELECT on a random aid) until "idle" or the
//	        end; answers "active A"
//	idle    stops the active sessions; answers "idled queries Q errors E"
//
// Any other line is ignored; end of input ends the program.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

func main() {
	dsn := flag.String("dsn", "host=127.0.0.1 port=5432 user=postgres dbname=postgres sslmode=disable", "connection string")
	n := flag.Int("n", 300, "sessions to open")
	keepGoing := flag.Bool("keep-going", true, "on a failed connect, hold the sessions already open instead of exiting")
	timeout := flag.Duration("timeout", 10*time.Second, "timeout of each connect")
	active := flag.Int("active", 64, "sessions that the \"active\" command sets to work")
	warmQuery := flag.String("warm-query", "select 1", "query each session runs on \"warm\"")
	activeQuery := flag.String("active-query", "SELECT abalance FROM pgbench_accounts WHERE aid = %d", "query the active sessions run; %d is a random aid in 1..100000*scale")
	scale := flag.Int("scale", 10, "pgbench scale, for the aid range of -active-query")
	flag.Parse()

	cfg, err := pgx.ParseConfig(*dsn)
	if err != nil {
		fmt.Fprintf(os.Stderr, "parse dsn: %v\n", err)
		os.Exit(2)
	}
	cfg.ConnectTimeout = *timeout
	// Simple protocol only: no named statements, which PgBouncer before 1.21
	// cannot carry in transaction mode.
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol

	// No query is sent at first: behind PgBouncer in session mode a query
	// would take one of its default_pool_size server connections for good.
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

	var (
		stopActive chan struct{}
		activeWG   sync.WaitGroup
		queries    atomic.Int64
		errs       atomic.Int64
	)
	idle := func() {
		if stopActive == nil {
			return
		}
		close(stopActive)
		activeWG.Wait()
		stopActive = nil
		fmt.Printf("idled queries %d errors %d\n", queries.Load(), errs.Load())
	}

	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			lines <- strings.TrimSpace(sc.Text())
		}
		close(lines)
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)

loop:
	for {
		select {
		case <-sig:
			break loop
		case cmd, ok := <-lines:
			if !ok {
				break loop
			}
			switch cmd {
			case "warm":
				var wg sync.WaitGroup
				var bad atomic.Int64
				sem := make(chan struct{}, 32)
				for _, c := range conns {
					wg.Add(1)
					sem <- struct{}{}
					go func() {
						defer func() { <-sem; wg.Done() }()
						ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
						defer cancel()
						if _, err := c.Exec(ctx, *warmQuery); err != nil {
							if bad.Add(1) == 1 {
								fmt.Fprintf(os.Stderr, "warm: %v\n", err)
							}
						}
					}()
				}
				wg.Wait()
				fmt.Printf("warmed %d errors %d\n", len(conns), bad.Load())
			case "active":
				if stopActive != nil {
					continue
				}
				stopActive = make(chan struct{})
				k := min(*active, len(conns))
				queries.Store(0)
				errs.Store(0)
				for _, c := range conns[:k] {
					activeWG.Add(1)
					go func(stop chan struct{}) {
						defer activeWG.Done()
						for {
							select {
							case <-stop:
								return
							default:
							}
							ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
							var bal int64
							err := c.QueryRow(ctx, fmt.Sprintf(*activeQuery, 1+rand.IntN(100000*max(*scale, 1)))).Scan(&bal)
							cancel()
							if err != nil {
								if errs.Add(1) == 1 {
									fmt.Fprintf(os.Stderr, "active: %v\n", err)
								}
								time.Sleep(10 * time.Millisecond)
								continue
							}
							queries.Add(1)
						}
					}(stopActive)
				}
				fmt.Printf("active %d\n", k)
			case "idle":
				idle()
			}
		}
	}
	idle()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, c := range conns {
		c.Close(ctx)
	}
	if len(conns) < *n {
		os.Exit(1)
	}
}
