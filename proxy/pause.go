package proxy

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/pgrouter/pgrouter/proxy/pool"
)

// pauseGate holds new transactions of pooled sessions while paused, as
// PgBouncer's PAUSE does: used around a planned switchover so that no
// transaction runs while the primary changes. It holds the channel that
// Resume closes, nil while running (the zero value): every lend looks at
// it, so it is one atomic load, not a lock.
type pauseGate struct {
	resumed atomic.Pointer[chan struct{}]
}

// Pause stops lending servers to new transactions and waits until no
// pooled session holds one. It returns ctx's error if transactions are
// still running when ctx ends; the proxy stays paused either way.
func (s *Server) Pause(ctx context.Context) error {
	ch := make(chan struct{})
	s.gate.resumed.CompareAndSwap(nil, &ch)
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for s.serversLent() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// Resume lets held transactions go.
func (s *Server) Resume() {
	if ch := s.gate.resumed.Swap(nil); ch != nil {
		close(*ch)
	}
}

// Paused reports whether new transactions are held.
func (s *Server) Paused() bool { return s.gate.resumed.Load() != nil }

// waitResumed blocks a new transaction while paused, up to max.
func (s *Server) waitResumed(ctx context.Context, max time.Duration) error {
	ch := s.gate.resumed.Load()
	if ch == nil {
		return nil
	}
	t := time.NewTimer(max)
	defer t.Stop()
	select {
	case <-*ch:
		return nil
	case <-t.C:
		return &clientError{Severity: "ERROR", Code: codeCannotConnectNow,
			Message: "pgrouter is paused", Detail: "New transactions are held while pgrouter is paused (for a planned switchover); the pause lasted longer than " + max.String() + "."}
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Server) serversLent() int {
	n := 0
	s.pools.each(func(p *pool.Pool) { n += p.Stats().Active })
	return n
}
