package admin

import (
	"sync"

	"github.com/pgrouter/pgrouter/topology"
)

// DefaultTimelineSize is how many events a Timeline made by NewTimeline(0)
// keeps: enough for hours of a healthy cluster and for a chaos demo's
// minutes, bounded so a flapping member cannot grow the proxy's memory.
const DefaultTimelineSize = 500

// Timeline keeps the newest role and availability changes in a ring, for
// the dashboard. Safe for concurrent use; Add never blocks on readers.
type Timeline struct {
	mu      sync.Mutex
	events  []topology.Event // ring of cap size
	next    int              // where the next event goes once full
	changed chan struct{}    // closed and replaced on every Add
}

// NewTimeline keeps up to size events (DefaultTimelineSize when size <= 0).
func NewTimeline(size int) *Timeline {
	if size <= 0 {
		size = DefaultTimelineSize
	}
	return &Timeline{events: make([]topology.Event, 0, size), changed: make(chan struct{})}
}

// Add records e, dropping the oldest event when the ring is full. It
// suits health.Monitor.OnEvent.
func (t *Timeline) Add(e topology.Event) {
	t.mu.Lock()
	if len(t.events) < cap(t.events) {
		t.events = append(t.events, e)
	} else {
		t.events[t.next] = e
		t.next = (t.next + 1) % len(t.events)
	}
	close(t.changed)
	t.changed = make(chan struct{})
	t.mu.Unlock()
}

// Events returns the kept events, oldest first, and a channel closed at
// the next Add.
func (t *Timeline) Events() ([]topology.Event, <-chan struct{}) {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]topology.Event, 0, len(t.events))
	out = append(out, t.events[t.next:]...)
	out = append(out, t.events[:t.next]...)
	return out, t.changed
}
