package chaos

import (
	"os"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if addr := os.Getenv("CHAOS_TEST_LISTEN"); addr != "" {
		serveTCP(addr)
	}
	goleak.VerifyTestMain(m)
}

func w(client, key int, v int64, call, ret int64, member string, tl int32) Op {
	return Op{Client: client, Kind: Write, Key: key, Value: v, Call: call, Ret: ret, OK: true, Member: member, Timeline: tl}
}

func r(client, key int, v int64, call, ret int64) Op {
	return Op{Client: client, Kind: Read, Key: key, Value: v, Call: call, Ret: ret, OK: true}
}

func cas(client, key int, old, v int64, applied bool, call, ret int64) Op {
	return Op{Client: client, Kind: CAS, Key: key, Old: old, Value: v, Applied: applied, Call: call, Ret: ret, OK: true,
		Member: "a", Timeline: 1}
}

func failed(op Op) Op {
	op.OK, op.Err = false, "conn-lost"
	return op
}

func TestLinearizable(t *testing.T) {
	for _, tc := range []struct {
		name      string
		ops       []Op
		committed []int64
		seen      map[int64]int64
		want      porcupine.CheckResult
	}{
		{"sequential", []Op{w(0, 0, 1, 0, 1, "a", 1), r(1, 0, 1, 2, 3), cas(0, 0, 1, 2, true, 4, 5), r(1, 0, 2, 6, 7)}, nil, nil, porcupine.Ok},
		{"initial zero", []Op{r(0, 0, 0, 0, 1), cas(0, 0, 0, 5, true, 2, 3)}, nil, nil, porcupine.Ok},
		{"stale read", []Op{w(0, 0, 1, 0, 1, "a", 1), r(1, 0, 0, 2, 3)}, nil, nil, porcupine.Illegal},
		{"concurrent read may see either", []Op{w(0, 0, 1, 0, 10, "a", 1), r(1, 0, 0, 2, 3), r(2, 0, 1, 4, 5)}, nil, nil, porcupine.Ok},
		{"cas that should have applied", []Op{w(0, 0, 1, 0, 1, "a", 1), cas(1, 0, 1, 2, false, 2, 3)}, nil, nil, porcupine.Illegal},
		{"keys are independent", []Op{w(0, 0, 1, 0, 1, "a", 1), r(1, 1, 0, 2, 3)}, nil, nil, porcupine.Ok},
		// A write whose client saw an error but which committed may take
		// effect any time after its call.
		{"unacknowledged committed write seen later", []Op{failed(w(0, 0, 7, 0, 1, "", 0)), r(1, 0, 0, 2, 3), r(1, 0, 7, 20, 21)}, []int64{7}, nil, porcupine.Ok},
		// A query saw its row by 10: reads after that must see it (or a
		// later value).
		{"unacknowledged write seen by a barrier", []Op{failed(w(0, 0, 7, 0, 1, "", 0)), r(1, 0, 7, 2, 3), r(1, 0, 0, 12, 13)}, []int64{7}, map[int64]int64{7: 10}, porcupine.Illegal},
		{"unacknowledged write before a barrier", []Op{failed(w(0, 0, 7, 0, 1, "", 0)), r(1, 0, 0, 2, 3), r(1, 0, 7, 12, 13)}, []int64{7}, map[int64]int64{7: 10}, porcupine.Ok},
		// One that did not commit is dropped, so a read of it is a read of a
		// value nobody wrote.
		{"read of a write that never committed", []Op{failed(w(0, 0, 7, 0, 1, "", 0)), r(1, 0, 7, 2, 3)}, nil, nil, porcupine.Illegal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			committed := map[int64]bool{}
			for _, v := range tc.committed {
				committed[v] = true
			}
			got, err := Linearizable(Resolve(tc.ops, committed, tc.seen), 10*time.Second, "")
			if err != nil || got != tc.want {
				t.Fatalf("Linearizable = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestLostWrites(t *testing.T) {
	ops := []Op{w(0, 0, 1, 0, 1, "a", 1), w(0, 0, 2, 2, 3, "a", 1), cas(0, 0, 2, 3, false, 4, 5), failed(w(0, 0, 4, 6, 7, "", 0))}
	lost := LostWrites(ops, map[int64]bool{1: true})
	if len(lost) != 1 || lost[0].Value != 2 {
		t.Fatalf("lost = %v, want the acknowledged write of 2 only", lost)
	}
}

func TestOverlaps(t *testing.T) {
	for _, tc := range []struct {
		name string
		ops  []Op
		want int
	}{
		{"clean failover", []Op{w(0, 0, 1, 0, 1, "a", 1), w(0, 0, 2, 5, 6, "b", 2), w(1, 0, 3, 7, 8, "b", 2)}, 0},
		// The old primary's write was concurrent with the new one's first:
		// no proof that both accepted writes at once.
		{"concurrent across failover", []Op{w(0, 0, 1, 0, 10, "a", 1), w(1, 0, 2, 5, 6, "b", 2)}, 0},
		{"old primary writes after the new one acknowledged", []Op{w(0, 0, 1, 0, 1, "a", 1), w(1, 0, 2, 2, 3, "b", 2), w(0, 0, 3, 4, 5, "a", 1)}, 1},
		{"two members on one timeline", []Op{w(0, 0, 1, 0, 1, "a", 2), w(1, 0, 2, 2, 3, "b", 2)}, 1},
		{"the same member back on a later timeline", []Op{w(0, 0, 1, 0, 1, "a", 1), w(0, 0, 2, 2, 3, "b", 2), w(0, 0, 3, 4, 5, "a", 3)}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Overlaps(Eras(tc.ops)); len(got) != tc.want {
				t.Fatalf("Overlaps = %+v, want %d", got, tc.want)
			}
		})
	}
}

func TestWindow(t *testing.T) {
	ops := []Op{
		w(0, 0, 1, 0, 1, "a", 1),
		w(1, 0, 2, 0, 2, "a", 1),
		w(0, 0, 3, 11, 12, "a", 1), // client 0 writes on for a while
		failed(w(0, 0, 4, 13, 15, "", 0)),
		w(1, 0, 5, 8, 20, "b", 2), // client 1 stalled across the injection
		w(0, 0, 6, 16, 40, "b", 2),
		w(1, 0, 7, 21, 22, "b", 2),
	}
	out, errs := window(ops, 10, 50)
	if out != 28 || errs["conn-lost"] != 1 {
		t.Fatalf("window = %v, %v; want 28ns (client 0 between 12 and 40) and 1 error", out, errs)
	}
	if out, _ := window(ops, 10, 30); out != 18 {
		t.Fatalf("window to 30 = %v; want 18ns (client 0 from 12 to the end)", out)
	}
}
