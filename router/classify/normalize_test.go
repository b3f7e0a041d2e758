package classify

import (
	"hash/maphash"
	"testing"
)

func TestNormalizedKey(t *testing.T) {
	seed := maphash.MakeSeed()
	key := func(q string) (uint64, bool) { return normalizedKey(seed, q) }
	same := []struct{ name, a, b string }{
		{"integers", "SELECT * FROM t WHERE aid = 12345", "SELECT * FROM t WHERE aid = 7"},
		{"strings", "SELECT * FROM t WHERE s = 'abc'", "SELECT * FROM t WHERE s = 'it''s; DELETE FROM t'"},
		{"decimals", "SELECT 1.5, .5, 1e10, 2.5E-3", "SELECT 3.25, .0, 7e1, 9.9e+9"},
		{"underscores", "SELECT 1_000_000", "SELECT 5"},
		{"dollar strings", "SELECT $$x$$, $a$ ' $$ $a$", "SELECT $$; DELETE FROM t$$, $b$y$b$"},
		{"escape string", "SELECT E'abc'", "SELECT e'x''y'"},
		{"bit strings", "SELECT B'1010', X'ff'", "SELECT b'1', x'0'"},
		{"spacing and comments", "SELECT  a,\n\tb FROM t -- c\n", "select a, /* x */ b from t"},
		{"keyword case", "SELECT A FROM T", "select a from t"},
		{"negative numbers", "SELECT -1", "SELECT -2"},
		{"typed literals", "SELECT interval '1 day', date '2020-01-01'", "SELECT interval '2 hours', date '1999-12-31'"},
		{"int32 limit", "SELECT 2147483647", "SELECT 0000000000001"},
		{"float value", "SELECT 1::float(5), 2.5::float", "SELECT 3::float(5), 1.0::float"},
	}
	for _, tc := range same {
		t.Run("same/"+tc.name, func(t *testing.T) {
			ka, oka := key(tc.a)
			kb, okb := key(tc.b)
			if !oka || !okb || ka != kb {
				t.Errorf("%q and %q: keys %x (%v) and %x (%v), want equal", tc.a, tc.b, ka, oka, kb, okb)
			}
		})
	}
	differ := []struct{ name, a, b string }{
		{"integer and float", "FETCH 5 FROM c", "FETCH 5.0 FROM c"},
		{"int32 overflow", "SELECT 2147483647", "SELECT 2147483648"},
		{"number and string", "SELECT 1", "SELECT '1'"},
		{"string and dollar", "SELECT 'a'", "SELECT $$a$$"},
		{"quoted identifier case", `SELECT "A"`, `SELECT "a"`},
		{"quoted identifier and word", `SELECT "a"`, `SELECT a`},
		{"separated tokens", "SELECT a b", "SELECT ab"},
		{"comment separates", "SELECT a/**/b", "SELECT ab"},
		{"number then word", "SELECT 1 t", "SELECT 1t"},
		{"junk number", "SELECT 1x", "SELECT 2x"},
		{"hex verbatim", "SELECT 0x1F", "SELECT 0x20"},
		{"parameter", "SELECT $1", "SELECT $2"},
		{"param then dollar quote", "SELECT $1$a$ 'x' $a$", "SELECT $1$a$ 'x' $b$"},
		{"e prefix", "SELECT E'a'", "SELECT 'a'"},
		{"e word", "SELECT e 'a'", "SELECT e'a'"},
		{"statements", "SELECT 1", "SELECT 1; DELETE FROM t"},
		{"verbs", "SELECT * FROM t", "DELETE FROM t"},
		{"float precision", "SELECT 1::float(0)", "SELECT 1::float(5)"},
	}
	for _, tc := range differ {
		t.Run("differ/"+tc.name, func(t *testing.T) {
			ka, oka := key(tc.a)
			kb, okb := key(tc.b)
			if oka && okb && ka == kb {
				t.Errorf("%q and %q: same key %x", tc.a, tc.b, ka)
			}
		})
	}
	exact := []struct{ name, q string }{
		{"unterminated string", "SELECT 'abc"},
		{"unterminated quoted identifier", `SELECT "abc`},
		{"unterminated dollar string", "SELECT $x$abc$y$"},
		{"unterminated comment", "SELECT 1 /* x"},
		{"unterminated nested comment", "SELECT 1 /* /* */"},
		{"escape with backslash", `SELECT E'a\'b'`},
		{"unicode string", `SELECT U&'d\0061t' UESCAPE '\'`},
		{"bit string doubled quote", "SELECT B'1''0'"},
		{"string continuation", "SELECT 'a'\n'b'"},
		{"string then string", "SELECT 'a' 'b'"},
		{"string, comment, string", "SELECT 'a' -- c\n'b'"},
		{"comment after string unterminated", "SELECT 'a' /* c"},
		{"string not UTF-8", "SELECT '\x85'"},
		{"dollar string not UTF-8", "SELECT $$\xff$$"},
	}
	for _, tc := range exact {
		t.Run("exact/"+tc.name, func(t *testing.T) {
			if _, ok := key(tc.q); ok {
				t.Errorf("%q normalized; want the exact-text fallback", tc.q)
			}
		})
	}
}

func TestNumberClass(t *testing.T) {
	for s, want := range map[string]byte{
		"0": classInt, "12345": classInt, "1_000": classInt, "2147483647": classInt,
		"2147483648": classFloat, "99999999999999999999999": classFloat,
		"1.5": classFloat, "1.": classFloat, ".5": classFloat, "1e5": classFloat,
		"1E-5": classFloat, "1.5e+10": classFloat, "1_0.0_1": classFloat,
		"1x": 0, "0x1F": 0, "1__0": 0, "1_": 0, "1..2": 0, "1.2.3": 0, "1e": 0,
		"1e+": 0, "1.e": 0, "1abc": 0,
	} {
		if got := numberClass(s); got != want {
			t.Errorf("numberClass(%q) = %q, want %q", s, got, want)
		}
	}
}

func TestLeadingHint(t *testing.T) {
	for q, want := range map[string]string{
		"/* pgrouter:primary */ SELECT 1":                "primary",
		"/*pgrouter:standby*/SELECT 1":                   "standby",
		"  \n/*  PGRouter:Standby\t*/ SELECT 1":          "standby",
		"-- x\n/* a */ /* pgrouter:primary */ SELECT 1":  "primary",
		"/* /* nested */ pgrouter:primary */ SELECT 1":   "",
		"SELECT 1 /* pgrouter:primary */":                "",
		"/* pgrouter:primary":                            "",
		"-- pgrouter:primary\nSELECT 1":                  "",
		"/* pgrouter:elsewhere */ SELECT 1":              "",
		"/* pgrouter:standby */ /* pgrouter:primary */ ": "standby",
	} {
		if got := leadingHint(q); got != want {
			t.Errorf("leadingHint(%q) = %q, want %q", q, got, want)
		}
	}
}
