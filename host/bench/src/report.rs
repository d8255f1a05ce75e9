//! The benchmark's one table, printed and written as JSON (`projector-bench/2`) for comparing
//! runs.
//!
//! A row may be compared with other rows of the same run: the first comparison is its ratio
//! column (and the JSON's `compared_to`, `ratio`, `target_min_ratio`, `met`); further ones are
//! printed under it and listed, with the first, in the JSON's `ratios`.

use crate::plan::Plan;
use serde_json::{json, Value};

/// The unit of [`Row::count`] rows.
const COUNT: &str = "events";

/// One comparison of a row with another row of the same run.
#[derive(Debug, Clone)]
struct Comparison {
    /// The key of the row compared with.
    of: String,
    /// Its value.
    of_value: f64,
    /// The ratio `value / of_value` the row is held to, if any.
    min: Option<f64>,
}

impl Comparison {
    fn ratio(&self, value: f64) -> Option<f64> {
        (self.of_value > 0.0).then(|| value / self.of_value)
    }
}

/// One measurement.
#[derive(Debug, Clone)]
pub struct Row {
    key: String,
    label: String,
    value: f64,
    unit: &'static str,
    /// The first is the row's primary comparison (the table's ratio column, the JSON's
    /// `compared_to`); the others are printed under it.
    comparisons: Vec<Comparison>,
    at_most: Option<f64>,
    note: Option<String>,
}

impl Row {
    /// A throughput in events per second.
    pub fn rate(key: impl Into<String>, label: &str, value: f64) -> Row {
        Row::value(key, label, value, "ev/s")
    }

    /// A number of events (lost, duplicated, ...).
    pub fn count(key: impl Into<String>, label: &str, value: i64) -> Row {
        Row::value(key, label, value as f64, COUNT)
    }

    /// Any value with its unit.
    pub fn value(key: impl Into<String>, label: &str, value: f64, unit: &'static str) -> Row {
        Row {
            key: key.into(),
            label: label.to_owned(),
            value,
            unit,
            comparisons: Vec::new(),
            at_most: None,
            note: None,
        }
    }

    /// Held to at least `min` times the row `of` (whose value is `of_value`).
    pub fn ratio_of(mut self, of: impl Into<String>, of_value: f64, min: f64) -> Row {
        self.comparisons.push(Comparison {
            of: of.into(),
            of_value,
            min: Some(min),
        });
        self
    }

    /// Compared with the row `of` (whose value is `of_value`), without a target.
    pub fn compared_to(mut self, of: impl Into<String>, of_value: f64) -> Row {
        self.comparisons.push(Comparison {
            of: of.into(),
            of_value,
            min: None,
        });
        self
    }

    /// Held to at most `max`.
    pub fn at_most(mut self, max: f64) -> Row {
        self.at_most = Some(max);
        self
    }

    /// A remark printed under the table.
    pub fn note(mut self, note: &str) -> Row {
        self.note = Some(note.to_owned());
        self
    }

    fn ratio(&self) -> Option<f64> {
        self.comparisons.first().and_then(|c| c.ratio(self.value))
    }

    fn met(&self) -> Option<bool> {
        if let Some(Comparison { min: Some(min), .. }) = self.comparisons.first() {
            return self.ratio().map(|r| r >= *min);
        }
        self.at_most.map(|max| self.value <= max)
    }

    fn target_text(&self) -> String {
        match (self.comparisons.first(), self.at_most) {
            (Some(c), _) => match c.min {
                Some(min) => format!("≥ {:.0} % of {}", min * 100.0, c.of),
                None => format!("of {}", c.of),
            },
            (None, Some(max)) => format!("≤ {max} {}", self.unit),
            (None, None) => String::new(),
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
                "skew_events": plan.skew_events,
                "skew_hot_aggregates": plan.skew_hot,
                "skew_hot_percent": plan.skew_hot_percent,
                "long_events": plan.long_events,
                "sweep_batch_sizes": plan.sweep_batch_sizes,
                "sweep_events": plan.sweep_events,
                "sweep_ceilings": plan.sweep_ceilings,
                "multi_host_events": plan.multi_host_events,
                "hosts": plan.hosts,
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
            // Counts are whole numbers, and zero is one of them.
            let value = if r.unit == COUNT || r.value >= 100.0 {
                format!("{:.0} {}", r.value, r.unit)
            } else if r.value >= 1.0 {
                format!("{:.2} {}", r.value, r.unit)
            } else {
                format!("{:.4} {}", r.value, r.unit)
            };
            let min = r.comparisons.first().and_then(|c| c.min);
            let ratio = r
                .ratio()
                .map(|x| percent_against(x, min))
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
            for c in r.comparisons.iter().skip(1) {
                let ratio = c
                    .ratio(r.value)
                    .map(|x| percent_against(x, c.min))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "{}  {:>14}  {:>8}  of {}\n",
                    " ".repeat(label_w),
                    "",
                    ratio,
                    c.of
                ));
            }
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
                let first = r.comparisons.first();
                let ratios: serde_json::Map<String, Value> = r
                    .comparisons
                    .iter()
                    .map(|c| (c.of.clone(), json!(c.ratio(r.value))))
                    .collect();
                json!({
                    "key": r.key,
                    "label": r.label,
                    "value": r.value,
                    "unit": r.unit,
                    "compared_to": first.map(|c| c.of.as_str()),
                    "ratio": r.ratio(),
                    "ratios": ratios,
                    "target_min_ratio": first.and_then(|c| c.min),
                    "target_max": r.at_most,
                    "met": r.met(),
                    "note": r.note,
                })
            })
            .collect();
        json!({
            "format": "projector-bench/2",
            "started_at": self.started.to_rfc3339(),
            "finished_at": chrono::Utc::now().to_rfc3339(),
            "settings": self.settings,
            "machine": self.machine,
            "results": results,
        })
    }
}

/// A ratio in whole percent, or with as many decimals as it takes to show which side of its
/// target it is on (99.7 % against ≥ 100 % prints as 99.7 %, not 100 %).
fn percent_against(ratio: f64, min: Option<f64>) -> String {
    let pct = ratio * 100.0;
    let decimals = (0..4)
        .find(|&d| {
            let scale = 10f64.powi(d);
            let shown = (pct * scale).round() / scale;
            min.is_none_or(|min| (shown >= min * 100.0) == (ratio >= min))
        })
        .unwrap_or(4) as usize;
    format!("{pct:.decimals$} %")
}

#[cfg(test)]
mod tests {
    use super::percent_against;

    #[test]
    fn a_ratio_just_under_its_target_does_not_print_as_meeting_it() {
        assert_eq!(percent_against(0.997, Some(1.0)), "99.7 %");
        assert_eq!(percent_against(0.99996, Some(1.0)), "99.996 %");
        assert_eq!(percent_against(0.796, Some(0.8)), "79.6 %");
    }

    #[test]
    fn other_ratios_print_in_whole_percent() {
        assert_eq!(percent_against(1.004, Some(1.0)), "100 %");
        assert_eq!(percent_against(0.81, Some(0.8)), "81 %");
        assert_eq!(percent_against(0.997, None), "100 %");
        assert_eq!(percent_against(1.2649, None), "126 %");
    }
}
