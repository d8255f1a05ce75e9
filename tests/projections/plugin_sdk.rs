//! The plugin SDK and the guide name the same reasons: the table in docs/plugins.md ("Reason
//! naming"), the Rust constants (`plugins/sdk/src/reason.rs`) and the Python ones
//! (`plugins/sdk/python/projector_plugin_sdk.py`) hold the same set, and the table's kind
//! (transient or deterministic) is what the Rust constant's doc says. A reason added to one of
//! them only fails here, naming the side that lacks it.
//!
//! The sources are read as text: the SDK is a wasm guest crate of another workspace, not
//! something this crate links.

use std::collections::BTreeMap;
use std::path::PathBuf;

fn repo_file(path: &str) -> (PathBuf, String) {
    let full = crate::common::repo_root().join(path);
    let text = std::fs::read_to_string(&full)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", full.display()));
    (full, text)
}

/// reason → kind, from the table after the `<!-- reasons:` marker in docs/plugins.md.
fn documented() -> BTreeMap<String, String> {
    let (path, guide) = repo_file("docs/plugins.md");
    let start = guide
        .find("<!-- reasons:")
        .unwrap_or_else(|| panic!("{} has no `<!-- reasons:` marker", path.display()));
    let mut reasons = BTreeMap::new();
    let rows = guide[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with('|'))
        .skip(2); // header and separator
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (reason, kind) = (cells[1].trim_matches('`'), cells[2]);
        assert!(
            reasons.insert(reason.to_owned(), kind.to_owned()).is_none(),
            "docs/plugins.md lists `{reason}` twice"
        );
    }
    assert!(!reasons.is_empty(), "no rows after the reasons marker");
    reasons
}

/// reason → kind (the first word of its doc comment, lowercased), from
/// `pub const NAME: &str = "value";` lines in the Rust SDK's reason module.
fn rust_constants() -> BTreeMap<String, String> {
    let (_, source) = repo_file("plugins/sdk/src/reason.rs");
    let mut reasons = BTreeMap::new();
    let mut doc = String::new();
    for line in source.lines().map(str::trim) {
        if let Some(text) = line.strip_prefix("///") {
            if doc.is_empty() {
                doc = text.trim().to_owned();
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("pub const ") {
            let (name, value) = rest
                .split_once(": &str = ")
                .unwrap_or_else(|| panic!("reason.rs: not a string constant: {line}"));
            let value = value.trim_end_matches(';').trim_matches('"');
            assert_eq!(value, name.to_lowercase(), "reason.rs: {line}");
            let kind = doc.split(':').next().unwrap_or_default().to_lowercase();
            reasons.insert(value.to_owned(), kind);
        }
        doc.clear();
    }
    reasons
}

/// The reasons of the Python SDK: every top-level `NAME = "token"` line.
fn python_constants() -> Vec<String> {
    let (_, source) = repo_file("plugins/sdk/python/projector_plugin_sdk.py");
    source
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(" = \"")?;
            let value = value.strip_suffix('"')?;
            let constant = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            constant.then(|| {
                assert_eq!(
                    value,
                    name.to_lowercase(),
                    "projector_plugin_sdk.py: {line}"
                );
                value.to_owned()
            })
        })
        .collect()
}

/// What `a` has and `b` lacks.
fn missing<'a>(
    a: impl IntoIterator<Item = &'a String>,
    b: &BTreeMap<String, String>,
) -> Vec<&'a str> {
    a.into_iter()
        .filter(|r| !b.contains_key(*r))
        .map(String::as_str)
        .collect()
}

#[test]
fn the_guide_and_both_sdks_name_the_same_reasons() {
    let docs = documented();
    let rust = rust_constants();
    let python: BTreeMap<String, String> = python_constants()
        .into_iter()
        .map(|r| (r, String::new()))
        .collect();
    let differences = [
        (
            "in docs/plugins.md but not in the Rust SDK",
            missing(docs.keys(), &rust),
        ),
        (
            "in the Rust SDK but not in docs/plugins.md",
            missing(rust.keys(), &docs),
        ),
        (
            "in docs/plugins.md but not in the Python SDK",
            missing(docs.keys(), &python),
        ),
        (
            "in the Python SDK but not in docs/plugins.md",
            missing(python.keys(), &docs),
        ),
    ];
    let report: Vec<String> = differences
        .iter()
        .filter(|(_, reasons)| !reasons.is_empty())
        .map(|(what, reasons)| format!("{what}: {}", reasons.join(", ")))
        .collect();
    assert!(report.is_empty(), "{}", report.join("\n"));

    for (reason, kind) in &docs {
        assert!(
            kind == "transient" || kind == "deterministic",
            "docs/plugins.md: `{reason}` has kind `{kind}`"
        );
        assert_eq!(
            &rust[reason], kind,
            "`{reason}`: the Rust SDK's doc says {}, docs/plugins.md says {kind}",
            rust[reason]
        );
    }
}
