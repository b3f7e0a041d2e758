package classify

import (
	"fmt"
	"testing"
)

const pgbenchSelect = "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;"

// BenchmarkClassifyHit: a statement seen before, as the extended protocol
// sends it (Parse) and as the simple protocol sends it (Query).
func BenchmarkClassifyHit(b *testing.B) {
	c := New(Config{})
	b.Run("Parse", func(b *testing.B) {
		q := "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
		c.ClassifyParse(q)
		b.ReportAllocs()
		for b.Loop() {
			if c.ClassifyParse(q).Route != Read {
				b.Fatal("not a read")
			}
		}
	})
	b.Run("Simple", func(b *testing.B) {
		c.Classify(pgbenchSelect)
		b.ReportAllocs()
		for b.Loop() {
			if c.Classify(pgbenchSelect).Route != Read {
				b.Fatal("not a read")
			}
		}
	})
}

// BenchmarkClassifySimpleNewConstants: pgbench -S -M simple, every text
// new but for its constant.
func BenchmarkClassifySimpleNewConstants(b *testing.B) {
	c := New(Config{})
	queries := make([]string, 4096)
	for i := range queries {
		queries[i] = fmt.Sprintf("SELECT abalance FROM pgbench_accounts WHERE aid = %d;", 1+i*7919%100000)
	}
	c.Classify(queries[0])
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if c.Classify(queries[i%len(queries)]).Route != Read {
			b.Fatal("not a read")
		}
		i++
	}
}

// BenchmarkClassifyMiss: a statement never seen, parsed and walked.
func BenchmarkClassifyMiss(b *testing.B) {
	for _, bc := range []struct{ name, format string }{
		{"pgbench", "SELECT abalance FROM pgbench_accounts WHERE aid = $1 AND c%d = 0"},
		{"join", "SELECT a.id, b.v, lower(b.name) FROM a JOIN b ON a.id = b.a_id WHERE a.c%d > now() - interval '1 day' ORDER BY 1 LIMIT 10"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c := New(Config{})
			n := 0
			b.ReportAllocs()
			for b.Loop() {
				if c.ClassifyParse(fmt.Sprintf(bc.format, n)).Route != Read {
					b.Fatal("not a read")
				}
				n++
			}
		})
	}
}
