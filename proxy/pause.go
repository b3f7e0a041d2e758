package proxy

import (
	"context"
	"time"

	"github.com/pgrouter/pgrouter/proxy/pool"
)

// pauseGate holds new transactions of pooled sessions while paused, as
// PgBouncer's PAUSE does: used around a planned switchover so that no
// transaction runs while the primary changes. The zero value is running.
type pauseGate struct {
	paused  bool
	resumed chan struct{} // closed by Resume
}

// Pause stops lending servers to new transactions and waits until no
// pooled session holds one. It returns ctx's error if transactions are
// still running when ctx ends; the proxy stays paused either way.
func (s *Server) Pause(ctx context.Context) error {
	s.mu.Lock()
	if !s.gate.paused {
		s.gate.paused = true
		s.gate.resumed = make(chan struct{})
	}
	s.mu.Unlock()
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
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gate.paused {
		s.gate.paused = false
		close(s.gate.resumed)
	}
}

// Paused reports whether new transactions are held.
func (s *Server) Paused() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gate.paused
}

// waitResumed blocks a new transaction while paused, up to max.
func (s *Server) waitResumed(ctx context.Context, max time.Duration) error {
	s.mu.Lock()
	paused, ch := s.gate.paused, s.gate.resumed
	s.mu.Unlock()
	if !paused {
		return nil
	}
	t := time.NewTimer(max)
	defer t.Stop()
	select {
	case <-ch:
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
