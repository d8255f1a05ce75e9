//! Dashboards and alerts (`deploy/`): promtool accepts the rule files and the scrape config, every
//! alert is unit-tested both firing and quiet, every alert names its projection and the
//! `projector` command to start with, and the rules and the Grafana dashboard query only metrics
//! that a running host really exports.
//!
//! promtool comes from Debian's `prometheus` package, which `scripts/test` installs. Without it
//! these tests fail; they never skip.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde::Deserialize;
use serde_json::{json, Value};

const ALERT_RULES: &str = "deploy/prometheus/projector-alerts.rules.yml";
const RECORDING_RULES: &str = "deploy/prometheus/projector-recording.rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/tests";
const SCRAPE_CONFIG: &str = "deploy/prometheus/prometheus.yml";
const DASHBOARD: &str = "deploy/grafana/projector-dashboard.json";

// ---------------------------------------------------------------------------------------------
// The scenarios

#[test]
fn promtool_accepts_the_rule_files_and_the_scrape_config() {
    let out = promtool_ok(&["check", "rules", ALERT_RULES, RECORDING_RULES]);
    let text = output_text(&out);
    let alerts = alerting_rules().len();
    let recordings = recording_rules().len();
    assert!(
        text.contains(&format!("SUCCESS: {alerts} rules found"))
            && text.contains(&format!("SUCCESS: {recordings} rules found")),
        "promtool should find {alerts} alerting and {recordings} recording rules:\n{text}"
    );

    // The example config loads exactly these two rule files (promtool checks them through it).
    let out = promtool_ok(&["check", "config", SCRAPE_CONFIG]);
    let text = output_text(&out);
    assert!(
        text.contains("SUCCESS: 2 rule files found"),
        "prometheus.yml should load the alert and recording rules:\n{text}"
    );
}

#[test]
fn every_alert_is_unit_tested_both_firing_and_quiet() {
    let test_files = rule_test_files();
    assert!(!test_files.is_empty(), "no *.test.yml in {RULE_TESTS}");
    let mut args = vec!["test", "rules"];
    args.extend(test_files.iter().map(|p| p.to_str().expect("UTF-8 path")));
    promtool_ok(&args);

    // Which alerts the unit tests expect to fire, and which they expect to stay quiet, somewhere.
    let mut fired = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for path in &test_files {
        let file: RuleTestFile = read_yaml(&repo_root().join(path));
        for case in file.tests.iter().flat_map(|t| &t.alert_rule_test) {
            if case.exp_alerts.is_empty() {
                quiet.insert(case.alertname.clone());
            } else {
                fired.insert(case.alertname.clone());
            }
        }
    }
    for rule in alerting_rules() {
        let name = rule.alert.as_deref().expect("an alerting rule");
        assert!(
            fired.contains(name),
            "no promtool unit test expects {name} to fire"
        );
        assert!(
            quiet.contains(name),
            "no promtool unit test expects {name} to stay quiet"
        );
    }
}

#[test]
fn every_alert_names_its_projection_and_the_projector_command_to_start_with() {
    let alerts = alerting_rules();
    assert!(
        alerts.len() >= 4,
        "expected at least the four alerts of the issue"
    );
    for wanted in [
        "ProjectorOldestEventOverSLA",
        "ProjectorStuckEvents",
        "ProjectorTerminalFailuresSpiking",
        "ProjectorDispatcherNotActive",
    ] {
        assert!(
            alerts.iter().any(|r| r.alert.as_deref() == Some(wanted)),
            "missing alert {wanted}"
        );
    }
    for rule in &alerts {
        let name = rule.alert.as_deref().expect("an alerting rule");
        let annotation = |key: &str| -> &str {
            rule.annotations
                .get(key)
                .map(String::as_str)
                .filter(|text| !text.trim().is_empty())
                .unwrap_or_else(|| panic!("{name} has no {key} annotation"))
        };
        // absent() returns one series without labels: there is no projection to name.
        if !rule.expr.trim_start().starts_with("absent(") {
            for key in ["summary", "description"] {
                assert!(
                    annotation(key).contains("{{ $labels.projection }}"),
                    "the {key} of {name} does not name the projection"
                );
            }
        }
        if rule.expr.contains("reason)") {
            assert!(
                annotation("summary").contains("{{ $labels.reason }}"),
                "{name} is per reason but its summary does not name the reason"
            );
        }
        assert!(
            annotation("runbook").contains("`projector "),
            "the runbook of {name} names no `projector` command"
        );
        let severity = rule.labels.get("severity").map(String::as_str);
        assert!(
            matches!(severity, Some("critical" | "warning" | "info")),
            "{name} has severity {severity:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rules_and_the_dashboard_query_only_metrics_a_running_host_exports() {
    // A host that has done a bit of everything, so that every labelled series exists: events
    // delivered, retried and failed for two reasons, done rows pruned, a rebuild recorded.
    let db = TestDb::new().await;
    let mut host = Host::start(
        &db.url,
        &["--plugin", &plugin_spec("p", &plugin("scripted"))],
        &[
            ("OUTBOX_RETENTION_DONE_SECONDS", "1"),
            ("OUTBOX_RETENTION_INTERVAL_SECONDS", "0.3"),
        ],
    );
    host.wait_ready(PATIENCE);
    let mut events: Vec<NewEvent> = (0..3)
        .map(|i| NewEvent::new("p", format!("ok-{i}"), json!({"outcome": "success"})))
        .collect();
    events.push(NewEvent::new(
        "p",
        "poison",
        json!({"outcome": "deterministic", "reason": "bad_payload"}),
    ));
    events.push(NewEvent::new(
        "p",
        "search-down",
        json!({"outcome": "transient", "reason": "es_connect"}),
    ));
    insert_events(&db.pool, &events).await;
    // What `projector rebuild` records when it finishes; the host exports the latest one.
    sqlx::query(
        "INSERT INTO projector_rebuilds
             (projection, mode, source, truncate, started_by, started_at, finished_at, status)
         VALUES ('p', 'direct', 'test', false, 'monitoring test', now() - interval '2 s', now(),
                 'succeeded')",
    )
    .execute(&db.pool)
    .await
    .expect("record a rebuild");

    let p = [("projection", "p")];
    wait_until(
        "the host has failed, retried, pruned and seen the rebuild",
        PATIENCE,
        async || {
            let text = host.metrics();
            let failed = |reason| {
                metric_value(
                    &text,
                    "outbox_terminal_failed_total",
                    &[("projection", "p"), ("reason", reason)],
                )
            };
            failed("bad_payload") == Some(1.0)
                && failed("es_connect") == Some(1.0)
                && metric_value(&text, "outbox_pruned_total", &p).is_some_and(|n| n > 0.0)
                && metric_value(&text, "projector_rebuild_last_success", &p) == Some(1.0)
        },
    )
    .await;
    let exported = exported_names(&host.metrics());

    // The check itself catches a name the host does not export.
    let misspelt =
        "sum by (projection) (rate(outbox_dispatch_sucess_total{projection=~\"$projection\"}[5m]))";
    assert_eq!(
        unknown_metrics(misspelt, &exported),
        BTreeSet::from(["outbox_dispatch_sucess_total".to_owned()]),
        "a misspelt metric must be reported, and nothing else"
    );

    let recorded: BTreeSet<String> = recording_rules()
        .into_iter()
        .filter_map(|r| r.record)
        .collect();
    let known: BTreeSet<String> = exported.union(&recorded).cloned().collect();
    let mut unknown = Vec::new();
    for rule in alerting_rules().into_iter().chain(recording_rules()) {
        let name = rule.alert.or(rule.record).unwrap_or_default();
        for metric in unknown_metrics(&rule.expr, &known) {
            unknown.push(format!("rule {name}: {metric}"));
        }
    }
    let dashboard_exprs = dashboard_queries();
    for (title, expr) in &dashboard_exprs {
        for metric in unknown_metrics(expr, &known) {
            unknown.push(format!("dashboard panel {title:?}: {metric}"));
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics the host does not export (it exports {exported:?}):\n{}",
        unknown.join("\n")
    );

    // And the dashboard shows every metric the host exports.
    let shown: BTreeSet<String> = dashboard_exprs
        .iter()
        .flat_map(|(_, expr)| selected_metrics(expr))
        .map(|name| family_of(&name, &exported))
        .collect();
    let families = exported_families(&host.metrics());
    let missing: Vec<&String> = families.difference(&shown).collect();
    assert!(
        missing.is_empty(),
        "the dashboard shows nothing of {missing:?}"
    );
}

#[test]
fn promtool_accepts_every_dashboard_query() {
    // Each query becomes a recording rule (Grafana's variables replaced by what they stand for),
    // so promtool parses it exactly as Prometheus would.
    let queries = dashboard_queries();
    assert!(
        queries.len() >= 10,
        "the dashboard has {} queries",
        queries.len()
    );
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| {
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$projection", ".*");
            json!({"record": format!("dashboard_query_{i}"), "expr": expr})
        })
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    // JSON is YAML: promtool reads it as a rule file.
    let path = write_file(
        dir.path(),
        "dashboard.rules.yml",
        json!({"groups": [{"name": "dashboard", "rules": rules}]}).to_string(),
    );
    let out = promtool(&["check", "rules", path.to_str().expect("UTF-8 path")]);
    assert!(
        out.status.success(),
        "a dashboard query is not valid PromQL:\n{}\nqueries:\n{:#?}",
        output_text(&out),
        queries
    );
}

// ---------------------------------------------------------------------------------------------
// promtool and the files under deploy/

fn promtool(args: &[&str]) -> Output {
    Command::new("promtool")
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install Debian's `prometheus` package \
                 (scripts/test does)"
            )
        })
}

fn promtool_ok(args: &[&str]) -> Output {
    let out = promtool(args);
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{}",
        args.join(" "),
        out.status,
        output_text(&out)
    );
    out
}

#[derive(Debug, Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
struct RuleGroup {
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
struct Rule {
    alert: Option<String>,
    record: Option<String>,
    expr: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct RuleTestFile {
    tests: Vec<RuleTestGroup>,
}

#[derive(Debug, Deserialize)]
struct RuleTestGroup {
    #[serde(default)]
    alert_rule_test: Vec<AlertCase>,
}

#[derive(Debug, Deserialize)]
struct AlertCase {
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<serde_yaml::Value>,
}

fn read_yaml<T: for<'de> Deserialize<'de>>(path: &Path) -> T {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn rules_of(file: &str) -> Vec<Rule> {
    let file: RuleFile = read_yaml(&repo_root().join(file));
    file.groups.into_iter().flat_map(|g| g.rules).collect()
}

fn alerting_rules() -> Vec<Rule> {
    let rules = rules_of(ALERT_RULES);
    assert!(
        rules.iter().all(|r| r.alert.is_some()),
        "{ALERT_RULES} holds alerting rules only"
    );
    rules
}

fn recording_rules() -> Vec<Rule> {
    let rules = rules_of(RECORDING_RULES);
    assert!(
        rules.iter().all(|r| r.record.is_some()),
        "{RECORDING_RULES} holds recording rules only"
    );
    rules
}

/// `deploy/prometheus/tests/*.test.yml`, relative to the repository root, sorted.
fn rule_test_files() -> Vec<PathBuf> {
    let dir = repo_root().join(RULE_TESTS);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".test.yml"))
        .map(|p| Path::new(RULE_TESTS).join(p.file_name().expect("a file name")))
        .collect();
    files.sort();
    files
}

/// Every PromQL query of the dashboard, with the title of the panel (or variable) it belongs to:
/// the panels' targets (rows' nested panels included) and the `label_values(...)` variables.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = repo_root().join(DASHBOARD);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let dashboard: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
    let mut queries = Vec::new();
    collect_panel_queries(&dashboard["panels"], &mut queries);
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"]["query"]
            .as_str()
            .or(variable["query"].as_str())
            .expect("a query variable has a query");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.rsplit_once(','))
            .map(|(selector, _label)| selector.trim().to_owned())
            .unwrap_or_else(|| {
                panic!("variable query {query:?} is not label_values(SELECTOR, LABEL)")
            });
        queries.push((format!("variable {}", variable["name"]), inner));
    }
    queries
}

fn collect_panel_queries(panels: &Value, queries: &mut Vec<(String, String)>) {
    for panel in panels.as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        if panel["type"] == "row" {
            collect_panel_queries(&panel["panels"], queries);
            continue;
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("a query of panel {title:?} has no expr"));
            queries.push((title.to_owned(), expr.to_owned()));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Metric names: what the host exports, and what a PromQL expression selects

/// The sample names in a `/metrics` text (histograms' `_bucket`, `_sum` and `_count` included)
/// and the metric family names of its `# TYPE` lines.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = parse_metrics(text).into_iter().map(|s| s.name).collect();
    names.extend(exported_families(text));
    names
}

/// The metric family names of the `# TYPE` lines.
fn exported_families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The family a sample name belongs to (`x_bucket` of histogram `x` is `x`).
fn family_of(name: &str, exported: &BTreeSet<String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(family) = name.strip_suffix(suffix) {
            if exported.contains(family) {
                return family.to_owned();
            }
        }
    }
    name.to_owned()
}

/// The metrics `expr` selects that are not in `known`.
fn unknown_metrics(expr: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    selected_metrics(expr)
        .into_iter()
        .filter(|name| !known.contains(name))
        .collect()
}

/// The metric names an expression selects. The expression is valid PromQL (promtool checks
/// that); what is skipped: strings, label matchers `{...}`, ranges `[...]`, numbers and
/// durations, Grafana variables (`$name`, `${name}`), keywords, and the names of functions and
/// aggregations (a name followed by `(`, or an aggregation followed by `by`/`without`) along with
/// the label lists of `by`, `without`, `on`, `ignoring`, `group_left` and `group_right`.
fn selected_metrics(expr: &str) -> BTreeSet<String> {
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const BEFORE_LABEL_LIST: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: &[&str] = &[
        "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
    ];
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';

    let s: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&s, i);
        } else if c == '{' {
            i = skip_group(&s, i, '{', '}');
        } else if c == '[' {
            i = skip_group(&s, i, '[', ']');
        } else if c == '#' {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '$' {
            i += 1;
            while i < s.len() && is_name_char(s[i]) {
                i += 1;
            }
        } else if c.is_ascii_digit() || (c == '.' && s.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < s.len() && is_name_char(s[i]) {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let lower = word.to_ascii_lowercase();
            let mut next = i;
            while next < s.len() && s[next].is_whitespace() {
                next += 1;
            }
            let before_paren = s.get(next) == Some(&'(');
            if BEFORE_LABEL_LIST.contains(&lower.as_str()) {
                if before_paren {
                    i = skip_group(&s, next, '(', ')');
                }
            } else if !(before_paren
                || AGGREGATIONS.contains(&lower.as_str())
                || KEYWORDS.contains(&lower.as_str()))
            {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The index after the string literal starting at `start`.
fn skip_string(s: &[char], start: usize) -> usize {
    let quote = s[start];
    let mut i = start + 1;
    while i < s.len() {
        if s[i] == '\\' && quote != '`' {
            i += 2;
            continue;
        }
        if s[i] == quote {
            return i + 1;
        }
        i += 1;
    }
    panic!("unterminated string in {:?}", s.iter().collect::<String>());
}

/// The index after the `close` matching the `open` at `start` (strings inside skipped).
fn skip_group(s: &[char], start: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i < s.len() {
        let c = s[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(s, i);
            continue;
        }
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return i + 1;
            }
        }
        i += 1;
    }
    panic!(
        "unbalanced {open}{close} in {:?}",
        s.iter().collect::<String>()
    );
}
