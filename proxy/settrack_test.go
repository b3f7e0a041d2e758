package proxy

import (
	"testing"

	"github.com/pgrouter/pgrouter/proxy/pool"
)

func TestTrackableSet(t *testing.T) {
	for q, want := range map[string]*settingChange{
		"SET search_path = app, public":              {"search_path", "app, public"},
		"set SESSION Search_Path TO 'a', \"B\" ;":    {"search_path", `'a', "B"`},
		"SET statement_timeout = '1500ms'":           {"statement_timeout", "'1500ms'"},
		"SET work_mem TO 65536":                      {"work_mem", "65536"},
		"SET pgrouter.min_lsn = '0/3000060'":         {"pgrouter.min_lsn", "'0/3000060'"},
		"SET search_path TO DEFAULT":                 {"search_path", ""},
		"RESET statement_timeout;":                   {"statement_timeout", ""},
		"SET search_path = a; SELECT 1":              nil, // a second statement
		"SET search_path = a -- why":                 nil, // a comment would swallow what follows it
		"SET search_path = $$a$$":                    nil,
		"SET x.y = E'\\'' ; DROP TABLE t; --'":       nil, // the server ends the string where this scan would not
		"SET x.y = 'a\\b'":                           nil,
		"SET search_path FROM CURRENT":               nil,
		"SET ROLE admin":                             nil,
		"SET SESSION AUTHORIZATION bob":              nil,
		"SET transaction_isolation = 'serializable'": nil,
		"SET \"search_path\" = a":                    nil,
		"RESET ALL":                                  nil,
		"SET application_name = 'x'":                 nil, // reported: followed through ParameterStatus
		"SET search_path =":                          nil,
		"UPDATE t SET x = 1":                         nil,
	} {
		got, ok := trackableSet(q)
		if want == nil {
			if ok {
				t.Errorf("trackableSet(%q) = %+v, want not trackable", q, got)
			}
			continue
		}
		if !ok || got != *want {
			t.Errorf("trackableSet(%q) = %+v, %v; want %+v", q, got, ok, *want)
		}
	}
}

// TestSettleSet: a SET the server accepted joins the client's settings and
// the server's record of what it was given; a refused one changes
// nothing; RESET goes back to the client's startup value, which the
// server no longer has.
func TestSettleSet(t *testing.T) {
	sc := &pool.ServerConn{Applied: map[string]string{}}
	ps := &pooled{mode: PoolTransaction, txStatus: 'I', desired: map[string]string{"statement_timeout": "'5s'"}}
	ps.desiredFP = settingsFingerprint(ps.desired)
	sc.SettingsFP = ps.desiredFP
	sc.Applied["statement_timeout"] = "'5s'"

	if !ps.trackSet("SET search_path = app") {
		t.Fatal("not tracked")
	}
	ps.settleSet(sc, false)
	if _, ok := ps.desired["search_path"]; ok || ps.pendingSet != nil {
		t.Fatalf("a refused SET was kept: %v", ps.desired)
	}
	ps.trackSet("SET search_path = app")
	ps.settleSet(sc, true)
	if ps.desired["search_path"] != "app" || sc.Applied["search_path"] != "app" || sc.SettingsFP != ps.desiredFP {
		t.Fatalf("after SET: desired %q, applied %q, server fingerprint matches %v", ps.desired, sc.Applied, sc.SettingsFP == ps.desiredFP)
	}
	msg, _, safe := ps.settingsQuery(&pool.ServerConn{Applied: map[string]string{}, Params: map[string]string{}})
	if got := string(msg[5 : len(msg)-1]); safe || !(got == `SET "statement_timeout" = '5s';SET "search_path" = app;` || got == `SET "search_path" = app;SET "statement_timeout" = '5s';`) {
		t.Fatalf("settings for another server: %q (safe %v)", got, safe)
	}
	ps.trackSet("RESET statement_timeout")
	ps.settleSet(sc, true)
	if ps.desired["statement_timeout"] != "'5s'" || sc.Applied["statement_timeout"] != "" || sc.SettingsFP == ps.desiredFP {
		t.Fatalf("after RESET: desired %q, applied %q; the server must get the startup value again", ps.desired, sc.Applied)
	}
	ps.trackSet("SET search_path TO DEFAULT")
	ps.settleSet(sc, true)
	if _, ok := ps.desired["search_path"]; ok {
		t.Fatalf("after SET TO DEFAULT: %q", ps.desired)
	}
	ps.txStatus = 'T'
	if ps.trackSet("SET search_path = app") {
		t.Fatal("tracked inside a transaction, where a rollback would undo it")
	}
}

// TestSetStatement: the split's reading of its own settings, on parseSet.
func TestSetStatement(t *testing.T) {
	for q, want := range map[string][2]string{
		"SET pgrouter.route = primary":                  {"pgrouter.route", "primary"},
		"set session pgrouter.route TO 'standby';":      {"pgrouter.route", "standby"},
		"/* hint */ SET pgrouter.min_lsn = '0/3000060'": {"pgrouter.min_lsn", "0/3000060"},
		"SET x.y = 'it''s' ; SELECT 1":                  {"x.y", "it's"},
		"SET x.y = a b":                                 {"x.y", "a"},
		"RESET pgrouter.route":                          {"", ""},
		"SELECT 1":                                      {"", ""},
	} {
		name, value, ok := setStatement(q)
		if name != want[0] || value != want[1] || ok != (want[0] != "") {
			t.Errorf("setStatement(%q) = %q, %q, %v; want %q, %q", q, name, value, ok, want[0], want[1])
		}
	}
}
