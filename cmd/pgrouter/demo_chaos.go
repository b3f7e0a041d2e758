package main

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// chaos is what `pgrouter demo --chaos` counts. The writer and the reader
// add to it; the printer takes and resets the per-second part.
type chaos struct {
	mu                  sync.Mutex
	writes, reads       int            // since the last line
	writeErrs, readErrs int            // since the last line
	wrote, read         map[string]int // member -> count, since the last line
	lastErr             string         // last client error since the last line

	// The kill waiting for writes to resume: zero when none.
	killedAt   time.Time
	killed     string
	errsAtKill int
	totalErrs  int
	recoveries []time.Duration
}

// runChaos runs the writer, the reader, the killer and the printer until
// ctx ends.
func runChaos(ctx context.Context, d *demo) {
	byPort := map[string]string{}
	for _, n := range d.nodes {
		_, port, _ := net.SplitHostPort(n.pgAddr)
		byPort[port] = n.name
	}
	c := &chaos{wrote: map[string]int{}, read: map[string]int{}}
	if err := demoExec(ctx, d.ports[1], "CREATE TABLE IF NOT EXISTS pgrouter_demo (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())"); err != nil {
		d.step("chaos: create the table: %v", err)
	}
	d.step("chaos: a writer on the read-write port and a reader on the read-only port; killing the primary every %v", d.o.interval)
	var wg sync.WaitGroup
	wg.Go(func() {
		c.loop(ctx, d.ports[1], "INSERT INTO pgrouter_demo DEFAULT VALUES RETURNING inet_server_port()", byPort, true, d)
	})
	wg.Go(func() {
		c.loop(ctx, d.ports[2], "SELECT inet_server_port()", byPort, false, d)
	})
	wg.Go(func() { c.killer(ctx, d) })
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			c.summary(d)
			return
		case <-t.C:
			d.step("%s", c.line())
		}
	}
}

// loop runs one statement after the other through addr, reconnecting
// after any error, and counts what happened and which member served it.
func (c *chaos) loop(ctx context.Context, addr, sql string, byPort map[string]string, write bool, d *demo) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		if conn == nil {
			var err error
			if conn, err = demoConnect(ctx, addr); err != nil {
				c.fail(write, err)
				pauseCtx(ctx, 200*time.Millisecond)
				continue
			}
		}
		qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		var port int
		err := conn.QueryRow(qctx, sql).Scan(&port)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.fail(write, err)
			conn.Close(context.Background())
			conn = nil
			pauseCtx(ctx, 100*time.Millisecond)
			continue
		}
		member := byPort[fmt.Sprint(port)]
		if msg := c.ok(write, member); msg != "" {
			d.step("%s", msg)
		}
	}
}

func (c *chaos) fail(write bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if write {
		c.writeErrs++
		c.totalErrs++
	} else {
		c.readErrs++
	}
	c.lastErr = firstLine(err.Error())
}

// ok counts a success; the first write on another member after a kill
// ends that kill's outage, and ok returns the line that says so.
func (c *chaos) ok(write bool, member string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !write {
		c.reads++
		c.read[member]++
		return ""
	}
	c.writes++
	c.wrote[member]++
	if c.killedAt.IsZero() || member == c.killed {
		return ""
	}
	took := time.Since(c.killedAt)
	c.recoveries = append(c.recoveries, took)
	msg := fmt.Sprintf("chaos: recovered: writes resumed on %s %.1fs after the kill of %s (%d client errors meanwhile)",
		member, took.Seconds(), c.killed, c.totalErrs-c.errsAtKill)
	c.killedAt, c.killed = time.Time{}, ""
	return msg
}

// line is the per-second report: what a client saw.
func (c *chaos) line() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := fmt.Sprintf("writes %4d/s on %-8s errors %3d | reads %4d/s on %-8s errors %3d",
		c.writes, members(c.wrote), c.writeErrs, c.reads, members(c.read), c.readErrs)
	if c.writeErrs+c.readErrs > 0 && c.lastErr != "" {
		s += " | " + c.lastErr
	}
	if !c.killedAt.IsZero() {
		s += fmt.Sprintf(" | %.0fs since the kill", time.Since(c.killedAt).Seconds())
	}
	c.writes, c.reads, c.writeErrs, c.readErrs, c.lastErr = 0, 0, 0, 0, ""
	clear(c.wrote)
	clear(c.read)
	return s
}

func members(m map[string]int) string {
	if len(m) == 0 {
		return "-"
	}
	names := make([]string, 0, len(m))
	for n := range m {
		if n == "" {
			n = "?"
		}
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ",")
}

// killer kills the leader's postmaster every interval, once writes have
// resumed after the previous kill.
func (c *chaos) killer(ctx context.Context, d *demo) {
	t := time.NewTicker(d.o.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.mu.Lock()
		pending := !c.killedAt.IsZero()
		c.mu.Unlock()
		if pending {
			d.step("chaos: writes have not resumed since the last kill; not killing again yet")
			continue
		}
		var leader *demoNode
		for i, n := range d.nodes {
			if httpOK("http://"+n.api+"/primary") == nil {
				leader = &d.nodes[i]
			}
		}
		if leader == nil {
			d.step("chaos: no leader right now; not killing")
			continue
		}
		pid, err := postmasterPID(filepath.Join(leader.dataDir, "postmaster.pid"))
		if err != nil || !processAlive(pid) {
			d.step("chaos: %s's postmaster is not running (%v); not killing", leader.name, err)
			continue
		}
		c.mu.Lock()
		c.killedAt, c.killed, c.errsAtKill = time.Now(), leader.name, c.totalErrs
		c.mu.Unlock()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			d.step("chaos: kill %d: %v", pid, err)
			c.mu.Lock()
			c.killedAt, c.killed = time.Time{}, ""
			c.mu.Unlock()
			continue
		}
		d.step("chaos: killed the primary %s (kill -9 of postmaster pid %d)", leader.name, pid)
	}
}

func (c *chaos) summary(d *demo) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.recoveries) == 0 {
		d.step("chaos: no kill recovered yet")
		return
	}
	worst := slices.Max(c.recoveries)
	var sum time.Duration
	for _, r := range c.recoveries {
		sum += r
	}
	d.step("chaos: %d kills recovered, writes resumed after %.1fs on average, %.1fs at worst",
		len(c.recoveries), (sum / time.Duration(len(c.recoveries))).Seconds(), worst.Seconds())
}

func demoConnect(ctx context.Context, addr string) (*pgx.Conn, error) {
	host, port, _ := net.SplitHostPort(addr)
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s user=%s dbname=postgres sslmode=disable connect_timeout=3", host, port, demoSuper))
	if err != nil {
		return nil, err
	}
	cfg.Password = demoSuperPass
	return pgx.ConnectConfig(ctx, cfg)
}

func demoExec(ctx context.Context, addr, sql string) error {
	conn, err := demoConnect(ctx, addr)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

// pauseCtx sleeps for d or until ctx ends.
func pauseCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 120 {
		s = s[:120] + "..."
	}
	return s
}
