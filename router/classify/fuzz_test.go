package classify

import (
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// FuzzClassify checks that the classifier never panics, that a text the
// parser rejects goes to the primary whatever its hint, and that the caches never change an
// answer: a cached Classify (keyed by the normalized text, shared with
// every input fuzzed before) and a cached ClassifyParse agree with a
// classification made from scratch.
func FuzzClassify(f *testing.F) {
	for _, tc := range classifyCases {
		f.Add(tc.query)
	}
	shared := New(Config{})
	fresh := New(Config{CacheSize: -1})
	f.Fuzz(func(t *testing.T, q string) {
		want := fresh.Classify(q)
		got := shared.Classify(q)
		parse := shared.ClassifyParse(q)
		if _, err := pg_query.Parse(cutNUL(q)); err != nil {
			if got.Route != Write || parse.Route != Write || want.Route != Write || got.Hint != "" {
				t.Fatalf("%q does not parse (%v) but routes %v/%v/%v (hint %q)", q, err, got.Route, parse.Route, want.Route, got.Hint)
			}
		}
		if got != want {
			t.Fatalf("Classify(%q) from the cache\n got %+v\nwant %+v", q, got, want)
		}
		if parse != want {
			t.Fatalf("ClassifyParse(%q) from the cache\n got %+v\nwant %+v", q, parse, want)
		}
	})
}
