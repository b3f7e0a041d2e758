package chaos

import (
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/anishathalye/porcupine"
)

// Never is the return time of an operation whose client saw an error but
// which committed all the same, when nothing bounds the moment it took
// effect: it stays concurrent with everything after its call.
const Never = math.MaxInt64

// Resolve settles the operations whose outcome the client could not know.
// committed holds the values of wlog on the final primary: a failed write
// or compare-and-set whose value is there committed, and is kept as
// applied; one whose value is not there never took effect (or took effect
// and was lost, which the reads that saw it reveal) and is dropped. A kept
// one returns at seen[value], the time by which a query on the leader had
// seen its row (so it had committed), or Never. Failed reads are dropped:
// they changed nothing.
func Resolve(ops []Op, committed map[int64]bool, seen map[int64]int64) []Op {
	var out []Op
	for _, op := range ops {
		if op.OK {
			out = append(out, op)
			continue
		}
		if op.Kind == Read || !committed[op.Value] {
			continue
		}
		op.Ret = Never
		if t, ok := seen[op.Value]; ok && t >= op.Call {
			op.Ret = t
		}
		op.Applied = true
		out = append(out, op)
	}
	return out
}

// kvInput and kvOutput are an operation as porcupine sees it.
type kvInput struct {
	kind     Kind
	key      int
	old, new int64
}

type kvOutput struct {
	value   int64 // read
	applied bool  // cas
}

// kvModel is a register per key: reads return the last value written,
// a compare-and-set applies exactly when the register holds its old value.
var kvModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[int][]porcupine.Operation{}
		for _, op := range history {
			k := op.Input.(kvInput).key
			byKey[k] = append(byKey[k], op)
		}
		keys := make([]int, 0, len(byKey))
		for k := range byKey {
			keys = append(keys, k)
		}
		sort.Ints(keys)
		var out [][]porcupine.Operation
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return int64(0) },
	Step: func(state, input, output any) (bool, any) {
		s, in, out := state.(int64), input.(kvInput), output.(kvOutput)
		switch in.kind {
		case Read:
			return out.value == s, s
		case Write:
			return true, in.new
		default:
			if out.applied {
				return s == in.old, in.new
			}
			return s != in.old, s
		}
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(kvInput), output.(kvOutput)
		switch in.kind {
		case Read:
			return fmt.Sprintf("read(k%d) → %d", in.key, out.value)
		case Write:
			return fmt.Sprintf("write(k%d, %d)", in.key, in.new)
		default:
			return fmt.Sprintf("cas(k%d, %d→%d) → %v", in.key, in.old, in.new, out.applied)
		}
	},
}

// porcupineOps converts resolved operations.
func porcupineOps(ops []Op) []porcupine.Operation {
	out := make([]porcupine.Operation, 0, len(ops))
	for _, op := range ops {
		out = append(out, porcupine.Operation{
			ClientId: op.Client,
			Input:    kvInput{kind: op.Kind, key: op.Key, old: op.Old, new: op.Value},
			Output:   kvOutput{value: op.Value, applied: op.Applied},
			Call:     op.Call, Return: op.Ret,
		})
	}
	return out
}

// Linearizable checks every key's history with porcupine. On a violation
// it writes porcupine's visualization to vizPath (when not empty). The
// result is porcupine.Unknown when the check ran out of time.
func Linearizable(ops []Op, timeout time.Duration, vizPath string) (porcupine.CheckResult, error) {
	res, info := porcupine.CheckOperationsVerbose(kvModel, porcupineOps(ops), timeout)
	if res == porcupine.Illegal && vizPath != "" {
		if err := porcupine.VisualizePath(kvModel, info, vizPath); err != nil {
			return res, err
		}
	}
	return res, nil
}

// LostWrites returns the acknowledged writes (and applied compare-and-sets)
// whose value the final primary does not have.
func LostWrites(ops []Op, committed map[int64]bool) []Op {
	var lost []Op
	for _, op := range ops {
		if op.OK && (op.Kind == Write || op.Kind == CAS && op.Applied) && !committed[op.Value] {
			lost = append(lost, op)
		}
	}
	return lost
}

// Era is the acknowledged writes one member accepted on one timeline.
type Era struct {
	Member   string
	Timeline int32
	// FirstRet is the earliest acknowledgment, LastCall the latest call of
	// an acknowledged write: the era certainly accepted a write before
	// FirstRet and certainly accepted one after LastCall.
	FirstRet, LastCall int64
	First, Last        Op
	Writes             int
}

// Overlap is a pair of eras that accepted writes at the same time.
type Overlap struct {
	A, B   Era
	Reason string
}

// Eras groups acknowledged writes by (member, timeline), ordered by
// timeline.
func Eras(ops []Op) []Era {
	byKey := map[string]*Era{}
	for _, op := range ops {
		if !op.OK || op.Ret == Never || !(op.Kind == Write || op.Kind == CAS && op.Applied) {
			continue
		}
		k := fmt.Sprintf("%s/%d", op.Member, op.Timeline)
		e := byKey[k]
		if e == nil {
			e = &Era{Member: op.Member, Timeline: op.Timeline, FirstRet: op.Ret, LastCall: op.Call, First: op, Last: op}
			byKey[k] = e
		}
		e.Writes++
		if op.Ret < e.FirstRet {
			e.FirstRet, e.First = op.Ret, op
		}
		if op.Call > e.LastCall {
			e.LastCall, e.Last = op.Call, op
		}
	}
	eras := make([]Era, 0, len(byKey))
	for _, e := range byKey {
		eras = append(eras, *e)
	}
	sort.Slice(eras, func(i, j int) bool {
		if eras[i].Timeline != eras[j].Timeline {
			return eras[i].Timeline < eras[j].Timeline
		}
		return eras[i].Member < eras[j].Member
	})
	return eras
}

// Overlaps finds members that accepted writes at the same time. Two
// members on one timeline both took writes: two promotions from the same
// parent, a split brain. An older timeline that took a write after a
// newer one had acknowledged one: the old primary kept accepting writes
// after the new one was promoted (a paused or partitioned leader that
// wrote when it woke up).
func Overlaps(eras []Era) []Overlap {
	var out []Overlap
	for i := range eras {
		for j := i + 1; j < len(eras); j++ {
			a, b := eras[i], eras[j]
			switch {
			case a.Timeline == b.Timeline:
				out = append(out, Overlap{A: a, B: b, Reason: fmt.Sprintf("two members accepted writes on timeline %d", a.Timeline)})
			case b.FirstRet < a.LastCall:
				out = append(out, Overlap{A: a, B: b, Reason: fmt.Sprintf(
					"%s (timeline %d) accepted a write called after %s (timeline %d) had acknowledged one",
					a.Member, a.Timeline, b.Member, b.Timeline)})
			}
		}
	}
	return out
}
