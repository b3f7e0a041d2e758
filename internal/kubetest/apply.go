package kubetest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
)

// Decode reads every object of a multi-document YAML (or JSON) manifest.
// Empty documents are skipped.
func Decode(data []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return objs, nil
			}
			return nil, err
		}
		if len(m) == 0 {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
}

// ApplyFile creates every object of the manifest at path in namespace ns
// (see Apply).
func (e *Env) ApplyFile(t testing.TB, ns, path string, dryRun bool) []*unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	objs, err := e.Apply(ns, data, dryRun)
	if err != nil {
		t.Fatalf("kubetest: apply %s: %v", path, err)
	}
	return objs
}

// Apply creates every object of a manifest as the admin, as
// `kubectl apply -k` with `namespace: ns` would: namespaced objects go to
// ns, and the subjects of role bindings that are ServiceAccounts are moved
// to ns too. With dryRun the API server validates, defaults and admits each
// object (DryRun: All) and stores nothing. It returns the objects as the
// server answered them, and the first error naming the object.
func (e *Env) Apply(ns string, data []byte, dryRun bool) ([]*unstructured.Unstructured, error) {
	objs, err := Decode(data)
	if err != nil {
		return nil, err
	}
	dc, err := discovery.NewDiscoveryClientForConfig(e.Config)
	if err != nil {
		return nil, err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	dyn, err := dynamic.NewForConfig(e.Config)
	if err != nil {
		return nil, err
	}
	opts := metav1.CreateOptions{FieldValidation: "Strict"}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	ctx, cancel := opContext()
	defer cancel()
	var out []*unstructured.Unstructured
	for _, o := range objs {
		gvk := o.GroupVersionKind()
		what := fmt.Sprintf("%s %s", gvk.Kind, o.GetName())
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return out, fmt.Errorf("%s: %w", what, err)
		}
		var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			o.SetNamespace(ns)
			ri = dyn.Resource(m.Resource).Namespace(ns)
		}
		if gvk.Kind == "RoleBinding" || gvk.Kind == "ClusterRoleBinding" {
			subjects, _, _ := unstructured.NestedSlice(o.Object, "subjects")
			for _, s := range subjects {
				if sm, ok := s.(map[string]any); ok && sm["kind"] == "ServiceAccount" {
					sm["namespace"] = ns
				}
			}
			_ = unstructured.SetNestedSlice(o.Object, subjects, "subjects")
		}
		got, err := ri.Create(ctx, o, opts)
		if err != nil {
			return out, fmt.Errorf("%s: %w", what, err)
		}
		out = append(out, got)
	}
	return out, nil
}
