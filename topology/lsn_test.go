package topology

import "testing"

func TestLSN(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"0/0", 0, true}, {"1/2A", 1<<32 | 0x2a, true}, {"FFFFFFFF/FFFFFFFF", 1<<64 - 1, true},
		{"12", 0, false}, {"x/1", 0, false}, {"1/100000000", 0, false},
	} {
		got, err := ParseLSN(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseLSN(%q) = %v, %v", tc.in, got, err)
		}
		if tc.ok {
			if back, _ := ParseLSN(FormatLSN(got)); back != got {
				t.Errorf("FormatLSN(%d) does not round-trip", got)
			}
		}
	}
}
