package topology

import "time"

// Event is one change of a member that the proxy logged: its availability
// (up, down, not accepting connections) or the role the router acts on.
// The admin server keeps the latest ones for the dashboard's timeline.
type Event struct {
	At     time.Time `json:"at"`
	Member string    `json:"member"`
	// Kind is "role" or "availability".
	Kind string `json:"kind"`
	From string `json:"from"`
	To   string `json:"to"`
	// Reason is what the health check or discovery said.
	Reason string `json:"reason,omitempty"`
}
