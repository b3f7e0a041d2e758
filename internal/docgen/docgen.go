// Package docgen renders pgrouter's configuration reference from the code
// itself: the YAML keys of the config structs with their doc comments, and
// the flags of each command with their defaults. The README's reference
// section is this output, and a test fails when the two differ, so the
// documentation cannot drift from the code.
package docgen

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// modulePath is the prefix of pgrouter's package paths; the rest is the
// package's directory under the module root.
const modulePath = "github.com/pgrouter/pgrouter/"

// YAML renders a table of every YAML key of v's type (a struct), its type
// and the doc comment of its field. root is the module's root directory,
// where the sources holding the comments are read.
func YAML(v any, root string) (string, error) {
	c := &comments{root: root, pkgs: map[string]map[string]map[string]string{}}
	var b strings.Builder
	b.WriteString("| key | type | meaning and default |\n|---|---|---|\n")
	if err := c.walk(&b, reflect.TypeOf(v), ""); err != nil {
		return "", err
	}
	return b.String(), nil
}

var durationType = reflect.TypeOf(time.Duration(0))

func (c *comments) walk(b *strings.Builder, t reflect.Type, prefix string) error {
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if opts == "inline" && f.Type.Kind() == reflect.Struct {
			if err := c.walk(b, f.Type, prefix); err != nil {
				return err
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		key := prefix + name
		if f.Type.Kind() == reflect.Struct && f.Type != durationType {
			if err := c.walk(b, f.Type, key+"."); err != nil {
				return err
			}
			continue
		}
		doc, err := c.doc(t, f.Name)
		if err != nil {
			return err
		}
		fmt.Fprintf(b, "| `%s` | %s | %s |\n", key, typeName(f.Type), cell(doc))
	}
	return nil
}

func typeName(t reflect.Type) string {
	switch {
	case t == durationType:
		return "duration"
	case t.Kind() == reflect.Pointer:
		return typeName(t.Elem())
	case t.Kind() == reflect.Slice:
		return "list of " + typeName(t.Elem())
	case t.Kind() == reflect.Map:
		return "map of " + typeName(t.Key()) + " to " + typeName(t.Elem())
	case t.Kind() == reflect.Uint64 || t.Kind() == reflect.Uint32 || t.Kind() == reflect.Int64:
		return "integer"
	default:
		return t.Kind().String()
	}
}

// comments reads the doc comments of struct fields from the sources.
type comments struct {
	root string
	// pkgs: package path -> type name -> field name -> comment.
	pkgs map[string]map[string]map[string]string
}

func (c *comments) doc(t reflect.Type, field string) (string, error) {
	types, ok := c.pkgs[t.PkgPath()]
	if !ok {
		rel, found := strings.CutPrefix(t.PkgPath(), modulePath)
		if !found {
			return "", fmt.Errorf("type %s is not pgrouter's", t)
		}
		var err error
		if types, err = parseFields(filepath.Join(c.root, rel)); err != nil {
			return "", err
		}
		c.pkgs[t.PkgPath()] = types
	}
	return types[t.Name()][field], nil
}

// parseFields returns the doc comments of every struct field in dir's
// package (tests excluded), by type and field name. A comment written
// above a group of fields (`User, PasswordFile string`, or fields with no
// comment of their own right after one) is not repeated: they get "".
func parseFields(dir string) (map[string]map[string]string, error) {
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, dir, func(fi fs.FileInfo) bool {
		return !strings.HasSuffix(fi.Name(), "_test.go")
	}, parser.ParseComments)
	if err != nil {
		return nil, err
	}
	out := map[string]map[string]string{}
	for _, p := range pkgs {
		for _, f := range p.Files {
			ast.Inspect(f, func(n ast.Node) bool {
				ts, ok := n.(*ast.TypeSpec)
				if !ok {
					return true
				}
				st, ok := ts.Type.(*ast.StructType)
				if !ok {
					return true
				}
				fields := map[string]string{}
				for _, fl := range st.Fields.List {
					text := strings.Join(strings.Fields(fl.Doc.Text()), " ")
					for _, name := range fl.Names {
						fields[name.Name] = text
					}
				}
				out[ts.Name.Name] = fields
				return false
			})
		}
	}
	return out, nil
}

// Flags renders a table of the flags of one command: name, default, usage.
func Flags(fs *pflag.FlagSet) string {
	var b strings.Builder
	b.WriteString("| flag | default | meaning |\n|---|---|---|\n")
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Hidden {
			return
		}
		name := "--" + f.Name
		if f.Shorthand != "" {
			name = "-" + f.Shorthand + ", " + name
		}
		def := f.DefValue
		switch {
		case def == "" || def == "[]":
			def = ""
		default:
			def = "`" + def + "`"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", name, def, cell(f.Usage))
	})
	return b.String()
}

// cell makes text safe in a Markdown table cell.
func cell(s string) string {
	s = strings.ReplaceAll(s, "|", "\\|")
	return strings.ReplaceAll(s, "\n", " ")
}
