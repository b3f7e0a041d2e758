package admin

import (
	"fmt"
	"testing"

	"github.com/pgrouter/pgrouter/topology"
)

func TestTimelineBounded(t *testing.T) {
	for _, tc := range []struct {
		name     string
		size, n  int
		wantLen  int
		wantHead string
	}{
		{"empty", 3, 0, 0, ""},
		{"partly full", 3, 2, 2, "m0"},
		{"full", 3, 3, 3, "m0"},
		{"wrapped", 3, 7, 3, "m4"},
		{"default size", 0, DefaultTimelineSize + 1, DefaultTimelineSize, "m1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tl := NewTimeline(tc.size)
			_, changed := tl.Events()
			for i := range tc.n {
				tl.Add(topology.Event{Member: fmt.Sprintf("m%d", i)})
			}
			evs, _ := tl.Events()
			if len(evs) != tc.wantLen {
				t.Fatalf("%d events, want %d", len(evs), tc.wantLen)
			}
			if tc.n > 0 {
				select {
				case <-changed:
				default:
					t.Fatal("Add did not close the changed channel")
				}
				if evs[0].Member != tc.wantHead || evs[len(evs)-1].Member != fmt.Sprintf("m%d", tc.n-1) {
					t.Fatalf("order: first %s last %s", evs[0].Member, evs[len(evs)-1].Member)
				}
			}
		})
	}
}
