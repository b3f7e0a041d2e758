package docgen

import (
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/pgrouter/pgrouter/configs"
)

func TestYAML(t *testing.T) {
	out, err := YAML(configs.Config{}, "../..")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, want string
		present    bool
	}{
		{"nested key with its comment", "| `proxy.listenRW` | string | ListenRW always routes to the primary. Default: none. |", true},
		{"inline struct flattened", "| `health.interval` | duration | Interval is", true},
		{"pointer shown as its element", "| `routing.fallbackToPrimary` | bool |", true},
		{"list", "| `discovery.backends` | list of string |", true},
		{"yaml:\"-\" skipped", "`auth.password`", false},
	} {
		if strings.Contains(out, tc.want) != tc.present {
			t.Errorf("%s: %q present=%v, want %v", tc.name, tc.want, !tc.present, tc.present)
		}
	}
}

func TestFlags(t *testing.T) {
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	fs.StringP("output", "o", "table", "table or json")
	fs.Duration("wait", time.Second, "how long | at most")
	fs.StringSlice("endpoints", nil, "list")
	want := "| flag | default | meaning |\n|---|---|---|\n" +
		"| `--endpoints` |  | list |\n" +
		"| `-o, --output` | `table` | table or json |\n" +
		"| `--wait` | `1s` | how long \\| at most |\n"
	if got := Flags(fs); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}
