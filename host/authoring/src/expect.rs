//! Expectation files for `projector plugin test --expect FILE`, and the diff printed when a run
//! does not match.
//!
//! An expectation file is JSON Lines, one object per event in the events file's order:
//!
//! ```text
//! {"outcome": "success"}
//! {"outcome": "deterministic", "reason": "bad_payload", "message": "missing actorUserId"}
//! {"id": "…", "outcome": "success", "calls": ["sql.execute \"INSERT …\" [...] -> 1"]}
//! ```
//!
//! `outcome` is required; `id`, `reason`, `message` and `calls` are compared only when given, so
//! an author pins as much as matters (`calls` are the lines the transcript prints after `call`).
//! A call is compared with runs of whitespace as one space, and `…` (or `...`) in an expected
//! call stands for any text, so a call can be pinned by its table and answer without the full
//! statement: `sql.execute "INSERT INTO order_totals_applied …" […] -> 0`.
//!
//! With `--deliver-twice` the run has a result per delivery: the file's events, then the
//! redeliveries in the same order; the expectation file has a line for each.

use super::testkit::{render_verdict, EventResult, Run};
use crate::Error;
use projector_core::outbox::Verdict;
use serde::Deserialize;
use std::path::Path;

/// One line of an expectation file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    id: Option<uuid::Uuid>,
    outcome: OutcomeKind,
    reason: Option<String>,
    message: Option<String>,
    calls: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum OutcomeKind {
    Success,
    Transient,
    Deterministic,
}

/// Reads an expectation file; errors name the file and line (a usage error).
pub fn read(path: &Path) -> Result<Vec<Expectation>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::config("--expect", format!("{}: cannot read: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let e: Expectation = serde_json::from_str(line)
            .map_err(|e| Error::config("--expect", format!("{}:{}: {e}", path.display(), i + 1)))?;
        if e.outcome == OutcomeKind::Success && (e.reason.is_some() || e.message.is_some()) {
            return Err(Error::config(
                "--expect",
                format!(
                    "{}:{}: a `success` outcome has no `reason` or `message`",
                    path.display(),
                    i + 1
                ),
            ));
        }
        out.push(e);
    }
    Ok(out)
}

/// `run` as an expectation file: every event's id, outcome, reason, message and calls. For an
/// author to review and keep (`--write-expect`), then trim to what matters.
pub fn render(run: &Run) -> String {
    let mut out = String::new();
    for r in &run.results {
        let mut line = serde_json::Map::new();
        line.insert("id".into(), r.event.id.to_string().into());
        let (outcome, failure) = match &r.verdict {
            Verdict::Success => ("success", None),
            Verdict::Transient { reason, message } => ("transient", Some((reason, message))),
            Verdict::Deterministic { reason, message } => {
                ("deterministic", Some((reason, message)))
            }
            Verdict::Deferred => ("deferred", None),
        };
        line.insert("outcome".into(), outcome.into());
        if let Some((reason, message)) = failure {
            line.insert("reason".into(), reason.as_str().into());
            line.insert("message".into(), message.as_str().into());
        }
        let calls: Vec<serde_json::Value> =
            r.calls.iter().map(|c| c.text.as_str().into()).collect();
        line.insert("calls".into(), calls.into());
        out.push_str(&serde_json::Value::Object(line).to_string());
        out.push('\n');
    }
    out
}

/// The expected side of one event, rendered like the actual side it is compared with.
fn expected_outcome(e: &Expectation) -> String {
    let kind = match e.outcome {
        OutcomeKind::Success => return "success".into(),
        OutcomeKind::Transient => "transient",
        OutcomeKind::Deterministic => "deterministic",
    };
    match (&e.reason, &e.message) {
        (Some(r), Some(m)) => format!("{kind} {r}: {m}"),
        (Some(r), None) => format!("{kind} {r}"),
        (None, Some(m)) => format!("{kind} _: {m}"),
        (None, None) => kind.into(),
    }
}

/// The actual outcome, showing only what `e` pins; everything when the kind itself differs.
fn actual_outcome(v: &Verdict, e: &Expectation) -> String {
    let kind = match v {
        Verdict::Success => OutcomeKind::Success,
        Verdict::Transient { .. } => OutcomeKind::Transient,
        Verdict::Deterministic { .. } => OutcomeKind::Deterministic,
        // The test kit delivers one event per aggregate per call: nothing is ever deferred.
        Verdict::Deferred => return render_verdict(v, true),
    };
    if kind != e.outcome {
        return render_verdict(v, true);
    }
    let full = render_verdict(v, e.message.is_some());
    match (v, &e.reason, &e.message) {
        (Verdict::Success, _, _) => full,
        (_, None, None) => full.split(' ').next().unwrap_or_default().to_owned(),
        (
            Verdict::Transient { message, .. } | Verdict::Deterministic { message, .. },
            None,
            Some(_),
        ) => {
            format!(
                "{} _: {message}",
                full.split(' ').next().unwrap_or_default()
            )
        }
        _ => full,
    }
}

/// The differences between `run` and `expected`, as readable text; empty when they match.
pub fn diff(run: &Run, expected: &[Expectation], events_file: &Path) -> String {
    let mut out = String::new();
    let mut differing = 0;
    if expected.len() != run.results.len() {
        out.push_str(&format!(
            "  the expectation file has {} events, {} has {}\n",
            expected.len(),
            events_file.display(),
            run.results.len()
        ));
    }
    for (i, (r, e)) in run.results.iter().zip(expected).enumerate() {
        let section = event_diff(r, e);
        if !section.is_empty() {
            differing += 1;
            out.push_str(&format!(
                "  event {} ({} {}):\n{section}",
                i + 1,
                r.event.id,
                r.event.event_type
            ));
        }
    }
    for (i, r) in run.results.iter().enumerate().skip(expected.len()) {
        out.push_str(&format!(
            "  event {} ({} {}): not in the expectation file\n    + {}\n",
            i + 1,
            r.event.id,
            r.event.event_type,
            render_verdict(&r.verdict, true)
        ));
    }
    for (i, e) in expected.iter().enumerate().skip(run.results.len()) {
        out.push_str(&format!(
            "  event {}: expected but not in the events file\n    - {}\n",
            i + 1,
            expected_outcome(e)
        ));
    }
    if out.is_empty() {
        return out;
    }
    let extra = run.results.len().abs_diff(expected.len());
    format!(
        "MISMATCH: {} of {} events differ from the expectation (- expected, + actual)\n{out}",
        differing + extra,
        run.results.len().max(expected.len())
    )
}

fn event_diff(r: &EventResult, e: &Expectation) -> String {
    let mut out = String::new();
    if let Some(id) = e.id {
        if id != r.event.id {
            out.push_str(&format!("    id\n    - {id}\n    + {}\n", r.event.id));
        }
    }
    let (want, got) = (expected_outcome(e), actual_outcome(&r.verdict, e));
    if want != got {
        out.push_str(&format!("    outcome\n    - {want}\n    + {got}\n"));
    }
    if let Some(calls) = &e.calls {
        let actual: Vec<&str> = r.calls.iter().map(|c| c.text.as_str()).collect();
        let wanted: Vec<&str> = calls.iter().map(String::as_str).collect();
        let same = actual.len() == wanted.len()
            && wanted.iter().zip(&actual).all(|(w, a)| call_matches(w, a));
        if !same {
            out.push_str("    calls\n");
            for line in line_diff(&wanted, &actual) {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    out
}

/// Whether the actual call `actual` is what `expected` pins: equal with whitespace runs
/// collapsed, `…` or `...` in `expected` matching any text.
fn call_matches(expected: &str, actual: &str) -> bool {
    let squeeze = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let (expected, actual) = (squeeze(expected).replace("...", "…"), squeeze(actual));
    let mut parts = expected.split('…');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = actual.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = parts.collect();
    let Some(last) = parts.pop() else {
        return rest.is_empty();
    };
    for part in parts {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// A line diff (longest common subsequence): `  same`, `- expected only`, `+ actual only`;
/// lines are the same when [`call_matches`] says so.
fn line_diff(a: &[&str], b: &[&str]) -> Vec<String> {
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if call_matches(a[i], b[j]) {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && call_matches(a[i], b[j]) {
            out.push(format!("  {}", b[j]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(format!("- {}", a[i]));
            i += 1;
        } else {
            out.push(format!("+ {}", b[j]));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_diff_marks_removed_and_added_lines() {
        assert_eq!(
            line_diff(&["a", "b", "c"], &["a", "x", "c", "d"]),
            vec!["  a", "- b", "+ x", "  c", "+ d"]
        );
    }

    #[test]
    fn expected_calls_match_with_whitespace_squeezed_and_ellipses() {
        let call =
            r#"sql.execute "INSERT INTO t (a) VALUES ($1) ON CONFLICT DO NOTHING" ["x"] -> 0"#;
        assert!(call_matches(call, call));
        assert!(call_matches(
            r#"sql.execute "INSERT INTO t (a)   VALUES ($1) ON CONFLICT DO NOTHING" ["x"] -> 0"#,
            call
        ));
        assert!(call_matches(
            r#"sql.execute "INSERT INTO t …" […] -> 0"#,
            call
        ));
        assert!(call_matches(
            r#"sql.execute "INSERT INTO t ..." [...] -> 0"#,
            call
        ));
        assert!(call_matches("…", call));
        assert!(!call_matches(
            r#"sql.execute "INSERT INTO t …" […] -> 1"#,
            call
        ));
        assert!(!call_matches(
            r#"sql.execute "INSERT INTO u …" […] -> 0"#,
            call
        ));
        assert!(!call_matches(r#"sql.execute "INSERT INTO t (a)""#, call));
        assert!(
            !call_matches("-> 0…-> 0", "-> 0"),
            "the parts may not overlap"
        );
    }

    #[test]
    fn only_what_the_expectation_pins_is_compared() {
        let v = Verdict::Deterministic {
            reason: "bad_payload".into(),
            message: "missing x".into(),
        };
        let e: Expectation = serde_json::from_str(r#"{"outcome": "deterministic"}"#).unwrap();
        assert_eq!(actual_outcome(&v, &e), expected_outcome(&e));
        let e: Expectation =
            serde_json::from_str(r#"{"outcome": "deterministic", "reason": "bad_payload"}"#)
                .unwrap();
        assert_eq!(actual_outcome(&v, &e), expected_outcome(&e));
        let e: Expectation = serde_json::from_str(
            r#"{"outcome": "deterministic", "reason": "bad_payload", "message": "missing y"}"#,
        )
        .unwrap();
        assert_eq!(expected_outcome(&e), "deterministic bad_payload: missing y");
        assert_eq!(
            actual_outcome(&v, &e),
            "deterministic bad_payload: missing x"
        );
    }
}
