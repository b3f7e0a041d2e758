// Command pgrouter is a PostgreSQL high-availability routing proxy.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	root := &cobra.Command{
		Use:           "pgrouter",
		Short:         "PostgreSQL high-availability routing proxy",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(proxyCommand(), agentCommand(), switchoverCommand(), failoverCommand(), statusCommand(), demoCommand(), versionCommand(), installCommand())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "pgrouter:", err)
		os.Exit(1)
	}
}

func versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Run:   func(*cobra.Command, []string) { fmt.Println("pgrouter", version) },
	}
}
