//! Running projector as a service (`deploy/systemd`, `deploy/kubernetes`): the systemd unit passes
//! `systemd-analyze verify` without a complaint and scores as hardened, the kustomize base renders
//! with `kubectl kustomize`, and both name only flags and variables the binary really accepts,
//! probe and scrape the paths and port a real host serves, and give the shutdown drain the time
//! the host takes.
//!
//! What "the binary accepts" means is read from the binary under test (`projector run --help`
//! lists every flag with its variable and default), never from a list kept here. `systemd-analyze`
//! (Debian's `systemd`) and `kubectl` (Debian's `kubernetes-client`) are installed by
//! `scripts/test`; without them these tests fail, they never skip.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde::Deserialize;
use serde_yaml::Value;

const UNIT: &str = "deploy/systemd/projector.service";
const KUSTOMIZE_BASE: &str = "deploy/kubernetes/base";
const SECRET_EXAMPLE: &str = "deploy/kubernetes/base/secret.example.yaml";

/// Where the unit expects the binary; the tests put the one under test there in a copy.
const INSTALLED_BINARY: &str = "/usr/local/bin/projector";

/// The longest the host may spend after its drain: releasing claims, then flushing traces (at
/// most 5 s, README "Tracing").
const AFTER_DRAIN_SECONDS: f64 = 5.0;

// ---------------------------------------------------------------------------------------------
// The scenarios

#[test]
fn systemd_analyze_verifies_the_unit_without_a_complaint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let unit = unit_with_binary_under_test(dir.path());
    let out = tool(
        "systemd-analyze",
        &["verify", "--man=no", unit.to_str().expect("UTF-8 path")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on unknown keys and bad values too: every line about the unit is a failure.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("projector.service"))
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify {UNIT} complained ({}):\n{}",
        out.status,
        output_text(&out)
    );
}

#[test]
fn the_unit_is_hardened_and_keeps_write_execute_for_the_plugin_compiler() {
    let unit = unit_text();
    let settings = unit_settings(&unit);
    for (key, value) in [
        ("Type", "exec"),
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
        ("CapabilityBoundingSet", ""),
        ("LockPersonality", "yes"),
        ("RestrictNamespaces", "yes"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "2"),
    ] {
        assert!(
            settings
                .get(key)
                .is_some_and(|values| values.iter().any(|v| v == value)),
            "{UNIT}: expected {key}={value}, found {:?}",
            settings.get(key)
        );
    }
    // The binary sends no sd_notify, so Type=notify would time out every start.
    assert!(
        !settings.contains_key("NotifyAccess") && settings["Type"] != ["notify"],
        "{UNIT}"
    );
    // The default worker id (`claimed_by`) is `<hostname>-<pid>`, read from /proc/sys, which
    // ProcSubset=pid hides: every machine's host would be `projector-<pid>`.
    assert!(
        !settings.contains_key("ProcSubset"),
        "{UNIT} must not set ProcSubset (the worker id needs the host name)"
    );
    // wasmtime writes machine code and then maps it executable: W^X would stop every load.
    assert!(
        !settings.contains_key("MemoryDenyWriteExecute"),
        "{UNIT} must not set MemoryDenyWriteExecute (wasmtime's JIT needs it off)"
    );

    // systemd's own score of what is left exposed (0 = everything locked, 10 = nothing).
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = unit_with_binary_under_test(dir.path());
    let out = tool(
        "systemd-analyze",
        &[
            "security",
            "--offline=yes",
            "--no-pager",
            copy.to_str().expect("UTF-8 path"),
        ],
    );
    let text = output_text(&out);
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for projector.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure in systemd-analyze security:\n{text}"));
    assert!(
        exposure <= 2.0,
        "exposure {exposure} (systemd calls up to 2.0 \"OK\"):\n{text}"
    );
}

#[test]
fn the_unit_names_only_flags_and_variables_the_binary_accepts_and_waits_out_the_drain() {
    let help = RunHelp::read();
    let unit = unit_text();
    let settings = unit_settings(&unit);

    // ExecStart: the installed binary, `run`, and flags `projector run` has.
    let exec = &settings["ExecStart"];
    assert_eq!(exec.len(), 1, "{UNIT}: one ExecStart");
    let words: Vec<&str> = exec[0].split_whitespace().collect();
    assert_eq!(words[..2], [INSTALLED_BINARY, "run"], "{UNIT}: {exec:?}");
    for flag in words.iter().filter(|w| w.starts_with("--")) {
        assert!(
            help.flags.contains(*flag),
            "{UNIT}: ExecStart passes {flag}, which `projector run` does not accept"
        );
    }

    // Every variable set, and every one the comments tell the operator to put in the
    // EnvironmentFile, is one the binary reads.
    for assignment in settings.get("Environment").into_iter().flatten() {
        let (name, _) = assignment
            .split_once('=')
            .unwrap_or_else(|| panic!("{UNIT}: Environment={assignment} has no `=`"));
        assert!(
            help.variables.contains_key(name),
            "{UNIT}: Environment sets {name}, which `projector run` does not read"
        );
    }
    let mentioned = setting_like_words(&unit);
    assert!(
        mentioned.contains("DATABASE_URL") && mentioned.contains("OUTBOX_ADMIN_TOKEN"),
        "{UNIT} should tell what goes into the EnvironmentFile: {mentioned:?}"
    );
    for name in &mentioned {
        assert!(
            help.variables.contains_key(name.as_str()),
            "{UNIT} mentions {name}, which `projector run` does not read"
        );
    }
    assert!(settings.contains_key("EnvironmentFile"), "{UNIT}");

    // systemd kills what is still running at TimeoutStopSec: the drain must fit before it.
    let stop = seconds(&settings["TimeoutStopSec"][0]);
    let lease = help.default_seconds("OUTBOX_LEASE_SECONDS");
    assert!(
        stop >= lease + AFTER_DRAIN_SECONDS,
        "{UNIT}: TimeoutStopSec {stop}s < lease {lease}s + {AFTER_DRAIN_SECONDS}s"
    );
}

#[test]
fn the_kustomize_base_renders_and_matches_the_binary() {
    let help = RunHelp::read();
    let objects = render_kustomize_base();
    let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in ["Deployment", "Service", "PodDisruptionBudget", "ConfigMap"] {
        assert!(
            kinds.contains(kind),
            "no {kind} in the rendered base: {kinds:?}"
        );
    }
    let deployment = one(&objects, "Deployment");
    let pod = &deployment["spec"]["template"];
    let pod_labels = mapping(&pod["metadata"]["labels"]);
    assert!(
        deployment["spec"]["replicas"].as_u64().unwrap_or(0) >= 2,
        "the base runs several replicas: {:?}",
        deployment["spec"]["replicas"]
    );
    assert_eq!(
        mapping(&deployment["spec"]["selector"]["matchLabels"]),
        pod_labels,
        "the Deployment selects its own pods"
    );
    let containers = pod["spec"]["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];

    // The settings the pod gets: the ConfigMaps it reads whole, then its own `env`.
    let config_maps: BTreeMap<String, BTreeMap<String, String>> = objects
        .iter()
        .filter(|o| o["kind"] == "ConfigMap")
        .map(|o| (text(&o["metadata"]["name"]), mapping(&o["data"])))
        .collect();
    let mut settings: BTreeMap<String, String> = BTreeMap::new();
    for source in container["envFrom"].as_sequence().into_iter().flatten() {
        let name = text(&source["configMapRef"]["name"]);
        let data = config_maps
            .get(&name)
            .unwrap_or_else(|| panic!("envFrom names ConfigMap {name}, which the base lacks"));
        settings.extend(data.clone());
    }
    let secret = secret_example();
    for var in container["env"].as_sequence().expect("env") {
        let name = text(&var["name"]);
        if let Some(value) = var["value"].as_str() {
            settings.insert(name.clone(), value.to_owned());
        }
        if let Some(reference) = var["valueFrom"]["secretKeyRef"].as_mapping() {
            let key = text(&reference[&Value::from("key")]);
            assert_eq!(
                text(&reference[&Value::from("name")]),
                text(&secret["metadata"]["name"]),
                "{name}: read from the Secret {SECRET_EXAMPLE} describes"
            );
            assert!(
                secret["stringData"].get(&key).is_some(),
                "{name}: the Secret key {key} is not in {SECRET_EXAMPLE}"
            );
        }
        assert!(
            help.variables.contains_key(name.as_str()),
            "the container sets {name}, which `projector run` does not read"
        );
    }
    for name in settings.keys() {
        assert!(
            help.variables.contains_key(name.as_str()),
            "a ConfigMap the pod reads sets {name}, which `projector run` does not read"
        );
    }
    let secret_names: BTreeSet<String> = container["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .filter(|v| v["valueFrom"]["secretKeyRef"].is_mapping())
        .map(|v| text(&v["name"]))
        .collect();
    assert_eq!(
        secret_names,
        BTreeSet::from(["DATABASE_URL".to_owned(), "OUTBOX_ADMIN_TOKEN".to_owned()]),
        "the database URL and the admin token come from the Secret"
    );

    // The port: the one the host listens on, named `http`, which probes and Service use.
    let http_port: u16 = settings
        .get("OUTBOX_HTTP_PORT")
        .cloned()
        .unwrap_or_else(|| help.default_of("OUTBOX_HTTP_PORT"))
        .parse()
        .expect("a port number");
    let ports = container["ports"].as_sequence().expect("ports");
    let http = ports
        .iter()
        .find(|p| p["name"] == "http")
        .expect("a container port named http");
    assert_eq!(http["containerPort"].as_u64(), Some(http_port as u64));
    assert!(
        !settings.contains_key("OUTBOX_METRICS_PORT"),
        "metrics share the HTTP port here; a separate port needs its own containerPort and annotation"
    );
    let probe = |name: &str| -> (String, u16) {
        let get = &container[name]["httpGet"];
        let port = match &get["port"] {
            Value::String(named) => ports
                .iter()
                .find(|p| p["name"] == named.as_str())
                .and_then(|p| p["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("{name}: no container port named {named}")),
            other => other
                .as_u64()
                .unwrap_or_else(|| panic!("{name}: port {other:?}")),
        };
        (text(&get["path"]), port as u16)
    };
    assert_eq!(probe("livenessProbe"), ("/healthz".to_owned(), http_port));
    assert_eq!(probe("readinessProbe"), ("/readyz".to_owned(), http_port));
    assert_eq!(probe("startupProbe"), ("/healthz".to_owned(), http_port));

    // Prometheus finds /metrics on that port.
    let annotations = mapping(&pod["metadata"]["annotations"]);
    assert_eq!(
        annotations.get("prometheus.io/scrape").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        annotations.get("prometheus.io/port"),
        Some(&http_port.to_string())
    );
    let metrics_path = annotations
        .get("prometheus.io/path")
        .cloned()
        .expect("a prometheus.io/path annotation");

    // The drain fits in the grace period: the longest lease, then release and trace flush.
    let lease = settings
        .get("OUTBOX_LEASE_SECONDS")
        .map(|v| v.parse::<f64>().expect("OUTBOX_LEASE_SECONDS is a number"))
        .unwrap_or_else(|| help.default_seconds("OUTBOX_LEASE_SECONDS"));
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_f64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace >= lease + AFTER_DRAIN_SECONDS,
        "terminationGracePeriodSeconds {grace} < lease {lease} + {AFTER_DRAIN_SECONDS}"
    );

    // `run --config FILE`, FILE a key of the ConfigMap mounted there.
    let args: Vec<String> = container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(text)
        .collect();
    assert_eq!(args[0], "run", "{args:?}");
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.flags.contains(flag.as_str()),
            "args pass {flag}, unknown to `projector run`"
        );
    }
    let config =
        PathBuf::from(&args[args.iter().position(|a| a == "--config").expect("--config") + 1]);
    let mount = container["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .find(|m| Some(Path::new(m["mountPath"].as_str().unwrap_or_default())) == config.parent())
        .unwrap_or_else(|| panic!("nothing is mounted where {} is", config.display()));
    let volume = pod["spec"]["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mount's volume");
    let file_name = config
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a file name");
    let from = text(&volume["configMap"]["name"]);
    assert!(
        config_maps
            .get(&from)
            .is_some_and(|data| data.contains_key(file_name)),
        "ConfigMap {from} has no {file_name}"
    );

    // The disruption budget and the Service select these pods.
    let pdb = one(&objects, "PodDisruptionBudget");
    let pdb_selects = mapping(&pdb["spec"]["selector"]["matchLabels"]);
    assert!(
        !pdb_selects.is_empty()
            && pdb_selects
                .iter()
                .all(|(k, v)| pod_labels.get(k) == Some(v)),
        "the PodDisruptionBudget selects {pdb_selects:?}, the pods carry {pod_labels:?}"
    );
    let service = one(&objects, "Service");
    let service_selects = mapping(&service["spec"]["selector"]);
    assert!(
        !service_selects.is_empty()
            && service_selects
                .iter()
                .all(|(k, v)| pod_labels.get(k) == Some(v)),
        "the Service selects {service_selects:?}"
    );
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");

    // And the paths are the ones a real host answers, with the ConfigMap's settings.
    serve_probe_paths(&settings, &metrics_path);
}

// ---------------------------------------------------------------------------------------------
// A real host behind the probes

/// Starts a host with the pod's settings (the harness picks the port and a scratch cache; the
/// Secret's values are the test database's) and checks that the probe and scrape paths answer
/// 200, `/metrics` with the host's metrics.
fn serve_probe_paths(settings: &BTreeMap<String, String>, metrics_path: &str) {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let db = rt.block_on(TestDb::new());
    let cache = tempfile::tempdir().expect("temp dir");
    let cache_dir = cache.path().to_str().expect("UTF-8 path").to_owned();
    let env: Vec<(&str, &str)> = settings
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "OUTBOX_HTTP_PORT" | "OUTBOX_PLUGIN_CACHE_DIR"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain([("OUTBOX_PLUGIN_CACHE_DIR", cache_dir.as_str())])
        .collect();
    let spec = plugin_spec("probe", &plugin("noop"));
    let mut host = Host::start(&db.url, &["--plugin", &spec], &env);
    host.wait_ready(PATIENCE);
    for path in ["/healthz", "/readyz", metrics_path] {
        let answer = host.get(path);
        assert!(
            matches!(answer, Some((200, _))),
            "GET {path} on a host run with the pod's settings: {answer:?}"
        );
    }
    let metrics = host.get(metrics_path).expect("metrics").1;
    assert!(
        metrics.contains("outbox_dispatch_active{projection=\"probe\"} 1"),
        "{metrics_path} is not the host's metrics:\n{metrics}"
    );
    host.sigterm();
    assert!(host.wait_exit(PATIENCE).success());
}

// ---------------------------------------------------------------------------------------------
// Reading the files and the binary

/// What `projector run --help` says the binary accepts.
struct RunHelp {
    /// Every `--flag`.
    flags: BTreeSet<String>,
    /// Every variable, with its help line (which carries `[default: ...]`).
    variables: BTreeMap<String, String>,
}

impl RunHelp {
    fn read() -> RunHelp {
        let out = run_projector(&["run", "--help"], &[]);
        assert!(out.status.success(), "{}", output_text(&out));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut flags = BTreeSet::new();
        let mut variables = BTreeMap::new();
        for line in text.lines() {
            let trimmed = line.trim_start();
            if let Some(flag) = trimmed.strip_prefix("--") {
                let name = flag.split([' ', '=', ',']).next().unwrap_or_default();
                flags.insert(format!("--{name}"));
            }
            let mut rest = line;
            while let Some(at) = rest.find("[env: ") {
                rest = &rest[at + 6..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                variables.insert(name, line.to_owned());
            }
        }
        assert!(
            flags.contains("--config") && variables.contains_key("DATABASE_URL"),
            "unexpected `projector run --help`:\n{text}"
        );
        RunHelp { flags, variables }
    }

    /// The `[default: ...]` of `variable`, as `--help` shows it.
    fn default_of(&self, variable: &str) -> String {
        let line = self
            .variables
            .get(variable)
            .unwrap_or_else(|| panic!("`projector run` does not read {variable}"));
        let at = line
            .find("[default: ")
            .unwrap_or_else(|| panic!("{variable} has no default: {line}"));
        line[at + 10..]
            .split(']')
            .next()
            .unwrap_or_default()
            .trim_matches('`')
            .to_owned()
    }

    fn default_seconds(&self, variable: &str) -> f64 {
        let shown = self.default_of(variable);
        shown
            .parse()
            .unwrap_or_else(|_| panic!("{variable}'s default `{shown}` is not seconds"))
    }
}

fn unit_text() -> String {
    std::fs::read_to_string(repo_root().join(UNIT)).unwrap_or_else(|e| panic!("{UNIT}: {e}"))
}

/// The unit's `Key=value` lines (comments and section headers left out), values per key in order.
fn unit_settings(unit: &str) -> BTreeMap<String, Vec<String>> {
    let mut settings: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(['#', ';', '[']) {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{UNIT}: not a Key=value line: {line}"));
        settings
            .entry(key.trim().to_owned())
            .or_default()
            .push(value.trim().to_owned());
    }
    settings
}

/// Words of `text` spelled like the host's settings (`OUTBOX_*`, `ELASTIC_*`, `DATABASE_URL`).
fn setting_like_words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("OUTBOX_") || w.starts_with("ELASTIC_") || *w == "DATABASE_URL")
        .map(str::to_owned)
        .collect()
}

/// A copy of the unit in `dir` whose ExecStart is the binary under test (verify wants it to
/// exist).
fn unit_with_binary_under_test(dir: &Path) -> PathBuf {
    let text = unit_text();
    assert!(
        text.contains(INSTALLED_BINARY),
        "{UNIT} runs {INSTALLED_BINARY}"
    );
    let path = dir.join("projector.service");
    std::fs::write(
        &path,
        text.replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_projector")),
    )
    .expect("write the unit copy");
    path
}

/// `5`, `45s`, `1min 30s` as seconds.
fn seconds(value: &str) -> f64 {
    let mut total = 0.0;
    for part in value.split_whitespace() {
        let split = part
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(part.len());
        let (number, unit) = part.split_at(split);
        let number: f64 = number
            .parse()
            .unwrap_or_else(|_| panic!("not a time span: {value}"));
        total += number
            * match unit {
                "" | "s" | "sec" => 1.0,
                "min" | "m" => 60.0,
                "ms" => 0.001,
                other => panic!("unit {other} in {value}"),
            };
    }
    total
}

/// Runs a tool the packaging is checked with; fails (not skips) when it is missing.
fn tool(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): scripts/test installs it (scripts/lib/setup.sh)")
        })
}

/// `kubectl kustomize deploy/kubernetes/base`, parsed.
fn render_kustomize_base() -> Vec<Value> {
    let out = tool("kubectl", &["kustomize", KUSTOMIZE_BASE]);
    assert!(
        out.status.success(),
        "kubectl kustomize {KUSTOMIZE_BASE} failed:\n{}",
        output_text(&out)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("kubectl kustomize writes YAML"))
        .collect()
}

fn secret_example() -> Value {
    let text = std::fs::read_to_string(repo_root().join(SECRET_EXAMPLE))
        .unwrap_or_else(|e| panic!("{SECRET_EXAMPLE}: {e}"));
    let secret: Value = serde_yaml::from_str(&text).expect("the example Secret is YAML");
    assert_eq!(secret["kind"], "Secret");
    secret
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} in the rendered base");
    found[0]
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn mapping(value: &Value) -> BTreeMap<String, String> {
    value
        .as_mapping()
        .map(|m| m.iter().map(|(k, v)| (text(k), text(v))).collect())
        .unwrap_or_default()
}
