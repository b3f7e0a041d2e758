//go:build ignore

// gen_builtins writes builtin_functions.txt, the names of PostgreSQL's
// built-in functions with their volatility, from a server installation's
// postgres.bki (the pg_proc rows initdb loads):
//
//	go run gen_builtins.go [/usr/share/postgresql/15/postgres.bki]
//
// A name with several overloads gets its most volatile one.
package main

import (
	"bufio"
	"fmt"
	"log"
	"os"
	"sort"
	"strings"
)

func main() {
	path := "/usr/share/postgresql/15/postgres.bki"
	if len(os.Args) > 1 {
		path = os.Args[1]
	}
	f, err := os.Open(path)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	rank := map[byte]int{'i': 0, 's': 1, 'v': 2}
	vol := map[string]byte{}
	inProc := false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "create "):
			inProc = strings.HasPrefix(line, "create pg_proc ")
		case inProc && strings.HasPrefix(line, "insert "):
			// insert ( oid proname pronamespace ... provolatile ... ):
			// provolatile is the 15th column.
			fields := strings.Fields(line)
			if len(fields) < 17 {
				log.Fatalf("short pg_proc row: %s", line)
			}
			name, v := fields[3], fields[16][0]
			if old, ok := vol[name]; !ok || rank[v] > rank[old] {
				vol[name] = v
			}
		}
	}
	if err := sc.Err(); err != nil {
		log.Fatal(err)
	}
	names := make([]string, 0, len(vol))
	for n := range vol {
		names = append(names, n)
	}
	sort.Strings(names)
	out, err := os.Create("builtin_functions.txt")
	if err != nil {
		log.Fatal(err)
	}
	w := bufio.NewWriter(out)
	fmt.Fprintf(w, "# PostgreSQL built-in functions and their volatility, from %s by gen_builtins.go.\n", path)
	for _, n := range names {
		fmt.Fprintf(w, "%s %c\n", n, vol[n])
	}
	if err := w.Flush(); err != nil {
		log.Fatal(err)
	}
	if err := out.Close(); err != nil {
		log.Fatal(err)
	}
}
