package proxy

import "testing"

func TestSettingsFingerprint(t *testing.T) {
	a := map[string]string{"timezone": "UTC", "application_name": "x"}
	b := map[string]string{"application_name": "x", "timezone": "UTC"}
	if settingsFingerprint(a) != settingsFingerprint(b) {
		t.Fatal("fingerprint depends on map order")
	}
	for _, other := range []map[string]string{
		{"timezone": "UTC", "application_name": "y"},
		{"timezone": "UTC"},
		{"timezone": "UTCapplication_name", "": "x"},
		{},
	} {
		if settingsFingerprint(a) == settingsFingerprint(other) {
			t.Errorf("%v and %v share a fingerprint", a, other)
		}
	}
	if settingsFingerprint(nil) == 0 {
		t.Fatal("a fingerprint is 0, which servers use for unknown")
	}
}
