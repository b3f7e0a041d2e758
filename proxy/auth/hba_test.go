package auth

import (
	"net"
	"strings"
	"testing"
)

func TestParseHBAErrors(t *testing.T) {
	for _, tc := range []struct {
		name, line, want string
	}{
		{"unknown type", "hostx all all all md5", `invalid connection type "hostx"`},
		{"gssenc", "hostgssenc all all all md5", "GSSAPI"},
		{"no user", "host all", "end of line before the user field"},
		{"no address", "host all all", "end of line before the address field"},
		{"no method", "host all all 10.0.0.0/8", "end of line before the authentication method"},
		{"local no method", "local all all", "end of line before the authentication method"},
		{"unknown method", "host all all all ident", `authentication method "ident" is not supported`},
		{"options", "host all all all scram-sha-256 clientcert=verify-full", "authentication options are not supported"},
		{"bad cidr", "host all all 10.0.0.0/33 md5", `invalid CIDR block "10.0.0.0/33"`},
		{"host name", "host all all db.example.com md5", "host names are not supported"},
		{"samehost", "host all all samehost md5", `"samehost" is not supported`},
		{"address without mask", "host all all 10.0.0.1 md5", "needs a /prefix or a mask"},
		{"mask not an address", "host all all 10.0.0.1 xyz md5", `invalid mask "xyz"`},
		{"bad mask", "host all all 10.0.0.1 255.0.255.0 md5", "not a prefix"},
		{"mask family", "host all all 10.0.0.1 ffff:: md5", "does not match"},
		{"group", "host all +admins all md5", "group \"+admins\""},
		{"file", "host @dbs all all md5", "file inclusion"},
		{"samerole", "host samerole all all md5", "samerole"},
		{"all in list", "host all,app all all md5", `mixes "all"`},
		{"trailing comma", "local all app,", "list ends with a comma"},
		{"blank after comma continues the list", "host app, all all md5", `mixes "all"`},
		{"unterminated quote", `host "app all all md5`, "unterminated quoted string"},
		{"method list", "host all all all md5,trust", "cannot be a list"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseHBA([]string{"# first line is a comment", tc.line})
			if err == nil {
				t.Fatalf("ParseHBA(%q) succeeded", tc.line)
			}
			if !strings.HasPrefix(err.Error(), "hba line 2: ") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseHBA(%q) = %v, want an error on line 2 containing %q", tc.line, err, tc.want)
			}
		})
	}
}

func TestHBAMatch(t *testing.T) {
	h, err := ParseHBA([]string{
		"# rules for the tests",
		"",
		"local   all          all                        trust",
		`hostssl "my db"      all        0.0.0.0/0        password  # quoted name with a space`,
		"host    replication  all        all              trust",
		"host    sameuser     all        127.0.0.1/32     md5",
		"host    all          blocked    all              reject",
		"host    app,reports  alice, bob 10.1.0.0/16      scram-sha-256",
		"hostnossl all        carol      10.2.0.0 255.255.0.0 md5",
		`host    all          "all"      all              trust`,
		"host    all          all        ::1/128          trust",
		"host    all          all        192.168.0.0/16   scram-sha-256",
	})
	if err != nil {
		t.Fatal(err)
	}
	ip := net.ParseIP
	for _, tc := range []struct {
		name           string
		database, user string
		addr           net.IP
		tls            bool
		want           Method
	}{
		{"unix socket", "app", "x", nil, false, MethodTrust},
		{"quoted database over TLS", "my db", "x", ip("203.0.113.9"), true, MethodPassword},
		{"quoted database without TLS falls through", "my db", "x", ip("192.168.1.1"), false, MethodSCRAM},
		{"replication keyword never matches", "replication", "x", ip("192.168.1.1"), false, MethodSCRAM},
		{"sameuser", "dave", "dave", ip("127.0.0.1"), false, MethodMD5},
		{"sameuser other db", "app", "dave", ip("127.0.0.1"), false, MethodReject},
		{"reject rule", "app", "blocked", ip("192.168.1.1"), false, MethodReject},
		{"lists", "reports", "bob", ip("10.1.200.3"), false, MethodSCRAM},
		{"list miss on address", "reports", "bob", ip("10.3.0.1"), false, MethodReject},
		{"mask column", "app", "carol", ip("10.2.9.9"), false, MethodMD5},
		{"hostnossl skips TLS", "app", "carol", ip("10.2.9.9"), true, MethodReject},
		{"quoted all is a name", "app", "all", ip("198.51.100.1"), false, MethodTrust},
		{"ipv6", "app", "x", ip("::1"), false, MethodTrust},
		{"ipv4-mapped ipv6", "app", "x", ip("::ffff:192.168.3.4"), false, MethodSCRAM},
		{"no match rejects", "app", "x", ip("203.0.113.9"), false, MethodReject},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := h.Match(tc.database, tc.user, tc.addr, tc.tls); got != tc.want {
				t.Fatalf("Match(%q, %q, %v, %t) = %s, want %s", tc.database, tc.user, tc.addr, tc.tls, got, tc.want)
			}
		})
	}
	var none *HBA
	if got := none.Match("app", "x", nil, false); got != MethodReject {
		t.Fatalf("nil HBA: %s, want reject", got)
	}
}

func TestHBAAllows(t *testing.T) {
	h, err := ParseHBA([]string{"host all app 10.0.0.0/8 scram-sha-256", "host all all 127.0.0.1/32 trust"})
	if err != nil {
		t.Fatal(err)
	}
	if !h.Allows(MethodTrust) || !h.Allows(MethodSCRAM) || h.Allows(MethodMD5) {
		t.Fatal("Allows does not follow the rules")
	}
	var none *HBA
	if none.Allows(MethodTrust) {
		t.Fatal("a nil HBA allows trust")
	}
}
