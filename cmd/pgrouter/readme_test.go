package main

import (
	"os"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/pgrouter/pgrouter/configs"
	"github.com/pgrouter/pgrouter/internal/docgen"
)

const (
	referenceBegin = "<!-- BEGIN GENERATED configuration reference: PGR_UPDATE_README=1 go test ./cmd/pgrouter -run TestREADMEConfigReference -->\n"
	referenceEnd   = "<!-- END GENERATED configuration reference -->\n"
)

// configReference renders the README's configuration reference from the
// commands' flag sets and the config structs' fields and comments.
func configReference(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	yaml := func(title string, v any) {
		s, err := docgen.YAML(v, "../..")
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString("### " + title + "\n\n" + s + "\n")
	}
	flags := func(c *cobra.Command) {
		b.WriteString("### `pgrouter " + c.Name() + "` flags\n\n" + docgen.Flags(c.Flags()) + "\n")
	}
	flags(proxyCommand())
	yaml("`pgrouter proxy --config FILE` (YAML; `configs/example.yaml`)", configs.Config{})
	flags(agentCommand())
	yaml("`pgrouter agent --config FILE` (YAML; `configs/agent.example.yaml`)", configs.Agent{})
	for _, c := range []*cobra.Command{statusCommand(), switchoverCommand(), failoverCommand(), demoCommand()} {
		flags(c)
	}
	return b.String()
}

// TestREADMEConfigReference fails when the README's configuration
// reference is not what the code renders; PGR_UPDATE_README=1 rewrites it.
func TestREADMEConfigReference(t *testing.T) {
	const path = "../../README.md"
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	i, j := strings.Index(readme, referenceBegin), strings.Index(readme, referenceEnd)
	if i < 0 || j < i {
		t.Fatalf("README.md has no generated reference between %q and %q", referenceBegin, referenceEnd)
	}
	want := configReference(t)
	got := readme[i+len(referenceBegin) : j]
	if got == want {
		return
	}
	if os.Getenv("PGR_UPDATE_README") != "" {
		if err := os.WriteFile(path, []byte(readme[:i+len(referenceBegin)]+want+readme[j:]), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Log("README.md configuration reference rewritten")
		return
	}
	gl, wl := strings.Split(got, "\n"), strings.Split(want, "\n")
	for k := range max(len(gl), len(wl)) {
		var g, w string
		if k < len(gl) {
			g = gl[k]
		}
		if k < len(wl) {
			w = wl[k]
		}
		if g != w {
			t.Fatalf("README.md's configuration reference differs from the code at line %d of the section:\nREADME: %s\ncode:   %s\nRun PGR_UPDATE_README=1 go test ./cmd/pgrouter -run TestREADMEConfigReference", k+1, g, w)
		}
	}
}
