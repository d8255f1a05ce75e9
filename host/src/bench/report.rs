//! The benchmark's one table, printed and written as JSON (`projector-bench/1`) for comparing
//! runs.

use super::Plan;
use serde_json::{json, Value};

/// What a row is held to.
#[derive(Debug, Clone)]
enum Target {
    /// `value / compared_to` must be at least this.
    RatioAtLeast {
        of: &'static str,
        of_value: f64,
        min: f64,
    },
    /// `value` must be at most this.
    AtMost(f64),
}

/// One measurement.
#[derive(Debug, Clone)]
pub struct Row {
    key: &'static str,
    label: String,
    value: f64,
    unit: &'static str,
    target: Option<Target>,
    note: Option<String>,
}

impl Row {
    /// A throughput in events per second.
    pub fn rate(key: &'static str, label: &str, value: f64) -> Row {
        Row::value(key, label, value, "ev/s")
    }

    /// Any value with its unit.
    pub fn value(key: &'static str, label: &str, value: f64, unit: &'static str) -> Row {
        Row {
            key,
            label: label.to_owned(),
            value,
            unit,
            target: None,
            note: None,
        }
    }

    /// Held to at least `min` times the row `of` (whose value is `of_value`).
    pub fn ratio_of(mut self, of: &'static str, of_value: f64, min: f64) -> Row {
        self.target = Some(Target::RatioAtLeast { of, of_value, min });
        self
    }

    /// Held to at most `max`.
    pub fn at_most(mut self, max: f64) -> Row {
        self.target = Some(Target::AtMost(max));
        self
    }

    /// A remark printed under the table.
    pub fn note(mut self, note: &str) -> Row {
        self.note = Some(note.to_owned());
        self
    }

    fn ratio(&self) -> Option<f64> {
        match self.target {
            Some(Target::RatioAtLeast { of_value, .. }) if of_value > 0.0 => {
                Some(self.value / of_value)
            }
            _ => None,
        }
    }

    fn met(&self) -> Option<bool> {
        match &self.target {
            Some(Target::RatioAtLeast { min, .. }) => self.ratio().map(|r| r >= *min),
            Some(Target::AtMost(max)) => Some(self.value <= *max),
            None => None,
        }
    }

    fn target_text(&self) -> String {
        match &self.target {
            Some(Target::RatioAtLeast { of, min, .. }) => format!("≥ {:.0} % of {of}", min * 100.0),
            Some(Target::AtMost(max)) => format!("≤ {max} {}", self.unit),
            None => String::new(),
        }
    }
}

/// The run: settings, machine, rows.
pub struct Report {
    settings: Value,
    machine: Value,
    rows: Vec<Row>,
    started: chrono::DateTime<chrono::Utc>,
}

fn first_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned()
}

impl Report {
    /// An empty report for `plan` on a server of `postgres_version`.
    pub fn new(plan: &Plan, postgres_version: String) -> Report {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_default();
        Report {
            settings: json!({
                "events": plan.events,
                "search_events": plan.search_events,
                "batch_size": plan.batch_size,
                "concurrency": plan.concurrency,
                "rate": plan.rate,
                "latency_seconds": plan.latency_seconds,
                "done_rows": plan.done_rows,
            }),
            machine: json!({
                "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                "cpu_model": cpu_model,
                "kernel": first_line("/proc/sys/kernel/osrelease"),
                "load_average_at_start": first_line("/proc/loadavg"),
                "postgres": postgres_version,
                "build_profile": if cfg!(debug_assertions) { "dev" } else { "release" },
            }),
            rows: Vec::new(),
            started: chrono::Utc::now(),
        }
    }

    /// Adds a row.
    pub fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    /// The table, as printed.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let label_w = self
            .rows
            .iter()
            .map(|r| r.label.chars().count())
            .max()
            .unwrap_or(0);
        out.push_str(&format!(
            "projector bench: {} events ({} for search), batch {}, concurrency {}, {} build, {} CPUs, PostgreSQL {}\n",
            self.settings["events"],
            self.settings["search_events"],
            self.settings["batch_size"],
            self.settings["concurrency"],
            self.machine["build_profile"].as_str().unwrap_or(""),
            self.machine["cpus"],
            self.machine["postgres"].as_str().unwrap_or(""),
        ));
        out.push_str(&format!(
            "{:<label_w$}  {:>14}  {:>8}  {:<28}  {}\n",
            "measurement", "value", "ratio", "target", "met"
        ));
        out.push_str(&format!("{}\n", "-".repeat(label_w + 14 + 8 + 28 + 12)));
        for r in &self.rows {
            let value = if r.value >= 100.0 {
                format!("{:.0} {}", r.value, r.unit)
            } else if r.value >= 1.0 {
                format!("{:.2} {}", r.value, r.unit)
            } else {
                format!("{:.4} {}", r.value, r.unit)
            };
            let ratio = r
                .ratio()
                .map(|x| format!("{:.0} %", x * 100.0))
                .unwrap_or_default();
            let met = match r.met() {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            };
            let pad = label_w - r.label.chars().count();
            out.push_str(&format!(
                "{}{}  {:>14}  {:>8}  {:<28}  {}\n",
                r.label,
                " ".repeat(pad),
                value,
                ratio,
                r.target_text(),
                met
            ));
        }
        for r in self.rows.iter().filter(|r| r.note.is_some()) {
            out.push_str(&format!(
                "note ({}): {}\n",
                r.key,
                r.note.as_deref().unwrap_or("")
            ));
        }
        out
    }

    /// The JSON document.
    pub fn json(&self) -> Value {
        let results: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let (compared_to, target_min, target_max) = match &r.target {
                    Some(Target::RatioAtLeast { of, min, .. }) => (Some(*of), Some(*min), None),
                    Some(Target::AtMost(max)) => (None, None, Some(*max)),
                    None => (None, None, None),
                };
                json!({
                    "key": r.key,
                    "label": r.label,
                    "value": r.value,
                    "unit": r.unit,
                    "compared_to": compared_to,
                    "ratio": r.ratio(),
                    "target_min_ratio": target_min,
                    "target_max": target_max,
                    "met": r.met(),
                    "note": r.note,
                })
            })
            .collect();
        json!({
            "format": "projector-bench/1",
            "started_at": self.started.to_rfc3339(),
            "finished_at": chrono::Utc::now().to_rfc3339(),
            "settings": self.settings,
            "machine": self.machine,
            "results": results,
        })
    }
}
