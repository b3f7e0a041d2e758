package main

import (
	"bufio"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	promqlengine "github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/util/annotations"

	"github.com/pgrouter/pgrouter/health"
	"github.com/pgrouter/pgrouter/proxy"
)

// describer records the names of every metric its collectors describe:
// unlike a scrape, it sees vectors that have no child yet (pools, pins,
// split routes on a proxy that has not used them).
type describer map[string]bool

func (d describer) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	re := regexp.MustCompile(`fqName: "([^"]+)"`)
	for desc := range ch {
		if m := re.FindStringSubmatch(desc.String()); m != nil {
			d[m[1]] = true
		}
	}
	return nil
}

func (d describer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = d.Register(c)
	}
}

func (d describer) Unregister(prometheus.Collector) bool { return true }

// proxyMetricNames registers what runProxy registers.
func proxyMetricNames() describer {
	d := describer{}
	d.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	proxy.NewMetrics(d)
	d.MustRegister((&proxy.Server{}).PoolCollector())
	health.NewMetrics(d)
	return d
}

// exported says whether a series name is one the proxy exports, counting
// a histogram's _bucket, _sum and _count series.
func (d describer) exported(name string) bool {
	if d[name] {
		return true
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suf); ok && d[base] {
			return true
		}
	}
	return false
}

var promql = parser.NewParser(parser.Options{})

// metricNames parses a PromQL expression and returns the series names it
// selects.
func metricNames(t *testing.T, expr string) []string {
	t.Helper()
	e, err := promql.ParseExpr(expr)
	if err != nil {
		t.Errorf("%q: %v", expr, err)
		return nil
	}
	var names []string
	for _, sel := range parser.ExtractSelectors(e) {
		for _, m := range sel {
			if m.Name == model.MetricNameLabel {
				names = append(names, m.Value)
			}
		}
	}
	if len(names) == 0 {
		t.Errorf("%q selects no series by name", expr)
	}
	return names
}

// grafanaVars are the dashboard's variables, replaced by values PromQL
// accepts before parsing.
var grafanaVars = strings.NewReplacer("$__rate_interval", "1m", "$__interval", "1m", "$job", ".*")

// TestGrafanaDashboardMetricsExported checks that every query of
// configs/grafana-dashboard.json parses and names only series the proxy
// exports, and that a real running proxy exports nothing the check does
// not know of (so the list it checks against is the proxy's).
func TestGrafanaDashboardMetricsExported(t *testing.T) {
	known := proxyMetricNames()
	b, err := os.ReadFile("../../configs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Annotations struct {
			List []struct {
				Expr string `json:"expr"`
			} `json:"list"`
		} `json:"annotations"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	var exprs []string
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, a := range dash.Annotations.List {
		if a.Expr != "" {
			exprs = append(exprs, a.Expr)
		}
	}
	if len(exprs) < 20 {
		t.Fatalf("only %d queries found", len(exprs))
	}
	used := map[string]bool{}
	for _, e := range exprs {
		for _, n := range metricNames(t, grafanaVars.Replace(e)) {
			used[n] = true
			if !known.exported(n) {
				t.Errorf("dashboard query uses %s, which the proxy does not export: %s", n, e)
			}
		}
	}
	t.Logf("%d queries over %d series names", len(exprs), len(used))

	// A real proxy's /metrics: every family is one proxyMetricNames knows.
	p := startProxy(t, sharedCluster(t))
	resp, err := http.Get("http://" + p.Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	var scraped []string
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			scraped = append(scraped, f[2])
			if !known[f[2]] {
				t.Errorf("the proxy exports %s, which proxyMetricNames does not register: update it", f[2])
			}
		}
	}
	if len(scraped) < 10 {
		t.Fatalf("scraped only %v", scraped)
	}
	for _, n := range []string{"pgrouter_member_role", "pgrouter_member_up", "pgrouter_member_replay_lag_bytes"} {
		if !strings.Contains(strings.Join(scraped, " "), n) {
			t.Errorf("a running proxy does not export %s", n)
		}
	}
}

// TestPrometheusRules parses configs/prometheus-rules.yaml with
// Prometheus' own rule parser and checks the alerts the operators expect
// are there and name only series the proxy exports.
func TestPrometheusRules(t *testing.T) {
	groups, errs := rulefmt.ParseFile("../../configs/prometheus-rules.yaml", false, model.UTF8Validation, promql, slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	known := proxyMetricNames()
	var alerts []string
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			for _, n := range metricNames(t, r.Expr) {
				if !known.exported(n) {
					t.Errorf("alert %s uses %s, which the proxy does not export", r.Alert, n)
				}
			}
		}
	}
	sort.Strings(alerts)
	for _, want := range []string{"PgrouterNoPrimary", "PgrouterFailover", "PgrouterReplicaLagHigh", "PgrouterPoolSaturated"} {
		if i := sort.SearchStrings(alerts, want); i == len(alerts) || alerts[i] != want {
			t.Errorf("no alert %s (have %v)", want, alerts)
		}
	}
}

// TestPrometheusRulesFire evaluates each alert's expression with
// Prometheus' own engine on series shaped as the proxy exports them (41
// samples 15 s apart, evaluated at the last): it fires for the member or
// proxy in trouble and for nothing else. Proxy i1 is in trouble, i2 is
// healthy.
func TestPrometheusRulesFire(t *testing.T) {
	groups, errs := rulefmt.ParseFile("../../configs/prometheus-rules.yaml", false, model.UTF8Validation, promql, slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	expr := map[string]string{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			expr[r.Alert] = r.Expr
		}
	}
	for _, tc := range []struct {
		alert  string
		series []string
		want   []string
	}{
		{"PgrouterNoPrimary", []string{
			`pgrouter_member_role{job="p",instance="i1",member="a",role="primary"} 0x40`,
			`pgrouter_member_role{job="p",instance="i1",member="b",role="primary"} 0x40`,
			`pgrouter_member_role{job="p",instance="i2",member="a",role="primary"} 1x40`,
			`pgrouter_member_role{job="p",instance="i2",member="b",role="primary"} 0x40`,
		}, []string{`{instance="i1", job="p"} 0`}},
		{"PgrouterFailover", []string{
			`pgrouter_member_role{job="p",instance="i1",member="a",role="primary"} 1x20 0x20`,
			`pgrouter_member_role{job="p",instance="i1",member="b",role="primary"} 0x20 1x20`,
			`pgrouter_member_role{job="p",instance="i2",member="a",role="primary"} 1x40`,
			`pgrouter_member_role{job="p",instance="i2",member="b",role="primary"} 0x40`,
		}, []string{`{instance="i1", job="p", member="b", role="primary"} 1`}},
		{"PgrouterReplicaLagHigh", []string{
			`pgrouter_member_role{job="p",instance="i1",member="a",role="standby"} 0x40`,
			`pgrouter_member_role{job="p",instance="i1",member="b",role="standby"} 1x40`,
			`pgrouter_member_role{job="p",instance="i1",member="c",role="standby"} 1x40`,
			`pgrouter_member_replay_lag_bytes{job="p",instance="i1",member="a"} 99999999x40`,
			`pgrouter_member_replay_lag_bytes{job="p",instance="i1",member="b"} 20971520x40`,
			`pgrouter_member_replay_lag_bytes{job="p",instance="i1",member="c"} 1000x40`,
			`pgrouter_member_replay_lag_seconds{job="p",instance="i1",member="a"} 0x40`,
			`pgrouter_member_replay_lag_seconds{job="p",instance="i1",member="b"} 1x40`,
			`pgrouter_member_replay_lag_seconds{job="p",instance="i1",member="c"} 0x40`,
		}, []string{`{__name__="pgrouter_member_replay_lag_bytes", instance="i1", job="p", member="b"} 20971520`}},
		{"PgrouterPoolSaturated", []string{
			`pgrouter_pool_clients_waiting{job="p",instance="i1",member="a",database="d",user="u"} 3x40`,
			`pgrouter_pool_wait_timeouts_total{job="p",instance="i1",member="a",database="d",user="u"} 0x40`,
			`pgrouter_pool_clients_waiting{job="p",instance="i2",member="a",database="d",user="u"} 0x40`,
			`pgrouter_pool_wait_timeouts_total{job="p",instance="i2",member="a",database="d",user="u"} 7x40`,
		}, []string{`{database="d", instance="i1", job="p", member="a", user="u"} 3`}},
		{"PgrouterMemberDown", []string{
			`pgrouter_member_up{job="p",instance="i1",member="a"} 0x40`,
			`pgrouter_member_up{job="p",instance="i1",member="b"} 1x40`,
		}, []string{`{__name__="pgrouter_member_up", instance="i1", job="p", member="a"} 0`}},
	} {
		t.Run(tc.alert, func(t *testing.T) {
			e, ok := expr[tc.alert]
			if !ok {
				t.Fatalf("no alert %s", tc.alert)
			}
			got := evalAt(t, e, tc.series, 40*15*time.Second)
			sort.Strings(got)
			sort.Strings(tc.want)
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("%s:\n%s\ngot  %q\nwant %q", tc.alert, e, got, tc.want)
			}
		})
	}
}

// evalAt loads series (promtool's notation, one sample every 15 s from
// time 0) into memory and evaluates expr at time at, as "labels value"
// lines.
func evalAt(t *testing.T, expr string, series []string, at time.Duration) []string {
	t.Helper()
	var all []storage.Series
	for _, desc := range series {
		lset, vals, err := promql.ParseSeriesDesc(desc)
		if err != nil {
			t.Fatalf("%s: %v", desc, err)
		}
		var samples []chunks.Sample
		for i, v := range vals {
			if !v.Omitted {
				samples = append(samples, floatSample{t: int64(i) * 15000, f: v.Value})
			}
		}
		all = append(all, storage.NewListSeries(lset, samples))
	}
	q := &storage.MockQueryable{MockQuerier: &storage.MockQuerier{
		SelectMockFunction: func(_ bool, _ *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
			var out []storage.Series
			for _, s := range all {
				if matchesAll(s.Labels(), ms) {
					out = append(out, s)
				}
			}
			return &sliceSeriesSet{series: out, i: -1}
		},
	}}
	engine := promqlengine.NewEngine(promqlengine.EngineOpts{MaxSamples: 1e6, Timeout: time.Minute, LookbackDelta: 5 * time.Minute})
	ctx := context.Background()
	qry, err := engine.NewInstantQuery(ctx, q, nil, expr, time.UnixMilli(0).Add(at))
	if err != nil {
		t.Fatal(err)
	}
	defer qry.Close()
	vec, err := qry.Exec(ctx).Vector()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range vec {
		out = append(out, s.Metric.String()+" "+strconv.FormatFloat(s.F, 'f', -1, 64))
	}
	return out
}

func matchesAll(lset labels.Labels, ms []*labels.Matcher) bool {
	for _, m := range ms {
		if !m.Matches(lset.Get(m.Name)) {
			return false
		}
	}
	return true
}

// floatSample is one float sample for storage.NewListSeries.
type floatSample struct {
	t int64
	f float64
}

func (s floatSample) T() int64                      { return s.t }
func (s floatSample) ST() int64                     { return 0 }
func (s floatSample) F() float64                    { return s.f }
func (s floatSample) H() *histogram.Histogram       { return nil }
func (s floatSample) FH() *histogram.FloatHistogram { return nil }
func (s floatSample) Type() chunkenc.ValueType      { return chunkenc.ValFloat }
func (s floatSample) Copy() chunks.Sample           { return s }

// sliceSeriesSet iterates over a slice of series.
type sliceSeriesSet struct {
	series []storage.Series
	i      int
}

func (s *sliceSeriesSet) Next() bool                        { s.i++; return s.i < len(s.series) }
func (s *sliceSeriesSet) At() storage.Series                { return s.series[s.i] }
func (s *sliceSeriesSet) Err() error                        { return nil }
func (s *sliceSeriesSet) Warnings() annotations.Annotations { return nil }
