package chaos

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"
)

// Line is the progress line of one fault.
func (r FaultRecord) Line(total int) string {
	status := "ok"
	if len(r.Failed) > 0 {
		status = "FAILED: " + strings.Join(r.Failed, "; ")
	}
	return fmt.Sprintf("fault %d/%d %-24s target=%s held=%v write-outage=%v healthy-after=%v errors=%s %s",
		r.N, total, r.Name, r.Target, ms(r.Healed-r.Injected), r.Recovery.Round(time.Millisecond),
		ms(r.Healthy-r.Injected), formatCounts(r.Errors), status)
}

func ms(ns int64) time.Duration { return time.Duration(ns).Round(time.Millisecond) }

func formatCounts(m map[string]int) string {
	if len(m) == 0 {
		return "{}"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s:%d", k, m[k]))
	}
	return "{" + strings.Join(parts, " ") + "}"
}

// Summary writes the table per fault type and the verdict.
func (res *Result) Summary(w io.Writer) {
	type agg struct {
		n        int
		recovery []time.Duration
		errors   map[string]int
		failed   int
	}
	byName := map[string]*agg{}
	for _, r := range res.Faults {
		a := byName[r.Name]
		if a == nil {
			a = &agg{errors: map[string]int{}}
			byName[r.Name] = a
		}
		a.n++
		a.recovery = append(a.recovery, r.Recovery)
		for k, v := range r.Errors {
			a.errors[k] += v
		}
		if len(r.Failed) > 0 {
			a.failed++
		}
	}
	fmt.Fprintf(w, "\n%-24s %5s %14s %12s %7s  %s\n", "fault", "count", "outage p50", "max", "failed", "client errors by SQLSTATE/class")
	for _, name := range slices.Sorted(maps.Keys(byName)) {
		a := byName[name]
		sort.Slice(a.recovery, func(i, j int) bool { return a.recovery[i] < a.recovery[j] })
		fmt.Fprintf(w, "%-24s %5d %14v %12v %7d  %s\n", name, a.n,
			a.recovery[len(a.recovery)/2].Round(time.Millisecond), a.recovery[len(a.recovery)-1].Round(time.Millisecond),
			a.failed, formatCounts(a.errors))
	}
	fmt.Fprintf(w, "\n%d faults, %d operations, %d acknowledged writes; linearizability: %s; %d leader changes between faults\n",
		len(res.Faults), res.Ops, res.Acked, res.Linearizability, res.Unplanned)
	if len(res.Failures) == 0 {
		fmt.Fprintf(w, "PASS seed=%d\n", res.Seed)
		return
	}
	fmt.Fprintf(w, "FAIL seed=%d: %d failed checks\n", res.Seed, len(res.Failures))
	for _, f := range res.Failures {
		fmt.Fprintf(w, "  - %s\n", f)
	}
}
