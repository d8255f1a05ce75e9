//! `projector plugin new`: writes a ready-to-build plugin project.
//!
//! What it writes (Rust / Python):
//! - the plugin SDK, vendored: for Rust `vendor/projector-plugin-sdk/` (a copy of the
//!   repository's `plugins/sdk` crate, with the contract this host speaks in its `wit/`), for
//!   Python `projector_plugin_sdk.py` (`plugins/sdk/python`). A copy rather than a path into the
//!   repository: the project lives anywhere, builds offline, and the SDK it was written against
//!   stays with it.
//! - Python only: `wit/deps/projector-plugin/plugin.wit` (the contract, a copy of the repository's
//!   `wit/plugin.wit`) and `wit/world.wit`, the world `projection` componentize-py builds against,
//!   which includes `projector:plugin/plugin@0.1.0` and imports the chosen capabilities. A Rust
//!   component gets its bindings from the SDK and imports the capabilities its code calls.
//! - the handler (`src/lib.rs` with `Cargo.toml` and `rust-toolchain.toml`, or `app.py`),
//! - `migrations/0001_<table>.sql` when the plugin uses `sql`,
//! - its test: `tests/events.jsonl` and `tests/expected.jsonl` for `projector plugin test`,
//! - a `README.md` with the build and test commands.
//!
//! Templates live in `templates/`; `#if CAPABILITY` / `#endif` lines keep or drop the lines
//! between them, `{{name}}`, `{{table}}` and `{{wit_name}}` are substituted.

use crate::Error;
use clap::ValueEnum;
use std::path::{Path, PathBuf};

/// A language `plugin new` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// Rust with the plugin SDK (plugins/sdk), built with cargo for wasm32-wasip2.
    Rust,
    /// Python, built with componentize-py.
    Python,
}

/// A capability `plugin new` wires in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Capability {
    /// Bulk writes to the search cluster.
    Search,
    /// Statements against the host's Postgres.
    Sql,
}

const CONTRACT: &str = include_str!("../../../wit/plugin.wit");
const WORLD: &str = include_str!("templates/world.wit");
const MIGRATION: &str = include_str!("templates/migration.sql");
const RUST_LIB: &str = include_str!("templates/rust/lib.rs");
const RUST_CARGO: &str = include_str!("templates/rust/Cargo.toml");
const RUST_TOOLCHAIN: &str = include_str!("templates/rust/rust-toolchain.toml");
const PYTHON_APP: &str = include_str!("templates/python/app.py");

/// Where the Rust SDK is vendored in a project.
const RUST_SDK_DIR: &str = "vendor/projector-plugin-sdk";
/// The Rust SDK's files (its `wit/plugin.wit` is [`CONTRACT`]).
const RUST_SDK: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../../plugins/sdk/Cargo.toml"),
    ),
    (
        "src/lib.rs",
        include_str!("../../../plugins/sdk/src/lib.rs"),
    ),
    (
        "src/reason.rs",
        include_str!("../../../plugins/sdk/src/reason.rs"),
    ),
    (
        "src/search.rs",
        include_str!("../../../plugins/sdk/src/search.rs"),
    ),
    (
        "src/sql.rs",
        include_str!("../../../plugins/sdk/src/sql.rs"),
    ),
];
const PYTHON_SDK: &str = include_str!("../../../plugins/sdk/python/projector_plugin_sdk.py");

/// componentize-py's release the Python route is tested with (see `scripts/lib/setup.sh`).
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// Checks a plugin name: lowercase letters, digits and single `-`, starting with a letter.
pub fn check_name(name: &str) -> Result<(), Error> {
    // Each `-`-separated word starts with a letter: the name is also a WIT package name.
    let ok = name.len() <= 64
        && name.split('-').all(|word| {
            word.starts_with(|c: char| c.is_ascii_lowercase())
                && word
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        });
    if ok {
        Ok(())
    } else {
        Err(Error::config(
            "NAME",
            format!(
                "`{name}` is not a plugin name: use lowercase words of letters and digits, each \
                 starting with a letter, joined by single `-` (at most 64), e.g. `book-search`"
            ),
        ))
    }
}

/// The Rust library file name cargo gives the component: `-` becomes `_`.
pub fn artifact_stem(name: &str) -> String {
    name.replace('-', "_")
}

/// Keeps the lines between `#if CAP` and `#endif` when `CAP` is chosen; substitutes names.
fn render(template: &str, name: &str, capabilities: &[Capability]) -> String {
    let table = artifact_stem(name);
    let mut out = String::with_capacity(template.len());
    let mut keep = true;
    for line in template.lines() {
        let trimmed = line.trim();
        if let Some(cap) = trimmed.strip_prefix("#if ") {
            keep = match cap {
                "sql" => capabilities.contains(&Capability::Sql),
                "search" => capabilities.contains(&Capability::Search),
                other => unreachable!("template condition `{other}`"),
            };
            continue;
        }
        if trimmed == "#endif" {
            keep = true;
            continue;
        }
        if keep {
            out.push_str(
                &line
                    .replace("{{name}}", name)
                    .replace("{{table}}", &table)
                    .replace("{{wit_name}}", name),
            );
            out.push('\n');
        }
    }
    out
}

/// The aggregate the scaffold's test events are about: the plugin name's first word
/// (`order-totals` → `order`, so its events are `order.created`, `order.renamed`).
pub fn aggregate_noun(name: &str) -> &str {
    name.split('-').next().unwrap_or(name)
}

/// The search index the scaffold's search plugin writes: the noun's plural (`orders`).
pub fn index_name(name: &str) -> String {
    let noun = aggregate_noun(name);
    if noun.ends_with('s') {
        noun.to_owned()
    } else {
        format!("{noun}s")
    }
}

/// The test the scaffold ships: three events about the plugin's aggregate (see
/// [`aggregate_noun`]), the last one with a payload that is not JSON.
fn test_files(name: &str, capabilities: &[Capability]) -> (String, String) {
    let table = artifact_stem(name);
    let noun = aggregate_noun(name);
    let index = index_name(name);
    let events = [
        format!(
            r#"{{"event_type": "{noun}.created", "aggregate_type": "{noun}", "aggregate_id": "{noun}-1", "payload": {{"title": "Dune"}}}}"#
        ),
        format!(
            r#"{{"event_type": "{noun}.renamed", "aggregate_type": "{noun}", "aggregate_id": "{noun}-1", "payload": {{"title": "Dune Messiah"}}}}"#
        ),
        format!(
            r#"{{"event_type": "{noun}.created", "aggregate_type": "{noun}", "aggregate_id": "{noun}-2", "payload": "not json"}}"#
        ),
    ];
    let calls = |seq: u32, id: &str, doc: &str| {
        let mut calls = Vec::new();
        if capabilities.contains(&Capability::Sql) {
            calls.push(format!(
                "sql.execute \"INSERT INTO {table} (event_id, event_type, aggregate_id, payload) \
                 VALUES ($1::uuid, $2, $3, $4::jsonb) ON CONFLICT (event_id) DO UPDATE SET \
                 event_type = EXCLUDED.event_type, aggregate_id = EXCLUDED.aggregate_id, \
                 payload = EXCLUDED.payload\" [\"00000000-0000-4000-8000-00000000000{seq}\",\
                 \"{noun}.{}\",\"{id}\",{}] -> 1",
                if seq == 1 { "created" } else { "renamed" },
                serde_json::to_string(doc).expect("a string")
            ));
        }
        if capabilities.contains(&Capability::Search) {
            calls.push(format!(
                "search.bulk [index {index}/{id} v{seq} {doc}] -> [201]"
            ));
        }
        calls.push(format!(
            "log debug [event 00000000-0000-4000-8000-00000000000{seq}] projected {noun}.{} \
             (payload keys: title)",
            if seq == 1 { "created" } else { "renamed" }
        ));
        serde_json::to_string(&calls).expect("strings")
    };
    // The second index of the first aggregate is a newer version of the same document: 200.
    let first = format!("{noun}-1");
    let second = calls(2, &first, r#"{"title":"Dune Messiah"}"#).replace("-> [201]", "-> [200]");
    let expected = [
        format!(
            r#"{{"outcome": "success", "calls": {}}}"#,
            calls(1, &first, r#"{"title":"Dune"}"#)
        ),
        format!(r#"{{"outcome": "success", "calls": {second}}}"#),
        r#"{"outcome": "deterministic", "reason": "bad_payload", "message": "payload is not a JSON object", "calls": []}"#.to_owned(),
    ];
    (events.join("\n") + "\n", expected.join("\n") + "\n")
}

/// The `projector plugin test` flags the scaffold's test needs.
fn test_flags(name: &str, capabilities: &[Capability]) -> String {
    if capabilities.contains(&Capability::Search) {
        format!(" --config index={}", index_name(name))
    } else {
        String::new()
    }
}

/// Where the built component lands, relative to the project directory.
pub fn component_path(name: &str, lang: Lang) -> String {
    match lang {
        Lang::Rust => format!("target/wasm32-wasip2/release/{}.wasm", artifact_stem(name)),
        Lang::Python => format!("{name}.wasm"),
    }
}

/// The command that builds the component, run in the project directory.
pub fn build_command(name: &str, lang: Lang) -> String {
    match lang {
        Lang::Rust => "cargo build --release --target wasm32-wasip2".into(),
        Lang::Python => {
            format!("componentize-py -d wit -w projection componentize app -o {name}.wasm")
        }
    }
}

/// The command that runs the project's test, in the project directory.
pub fn test_command(name: &str, lang: Lang, capabilities: &[Capability]) -> String {
    format!(
        "projector plugin test {} --events tests/events.jsonl --expect tests/expected.jsonl{}",
        component_path(name, lang),
        test_flags(name, capabilities)
    )
}

fn readme(name: &str, lang: Lang, capabilities: &[Capability]) -> String {
    let install = match lang {
        Lang::Rust => {
            "rustup (the toolchain and target in rust-toolchain.toml install themselves)".to_owned()
        }
        Lang::Python => format!("`pip install componentize-py=={COMPONENTIZE_PY_VERSION}`"),
    };
    let mut grants = String::new();
    if capabilities.contains(&Capability::Sql) {
        grants.push_str(&format!(
            "sql_tables = [\"{}\"]          # apply migrations/ first\n",
            artifact_stem(name)
        ));
    }
    if capabilities.contains(&Capability::Search) {
        grants.push_str(&format!("search_indices = [\"{}\"]\n", index_name(name)));
    }
    let config = if capabilities.contains(&Capability::Search) {
        format!("[projection.config]\nindex = \"{}\"\n", index_name(name))
    } else {
        String::new()
    };
    format!(
        "# {name}\n\nA projector projection plugin. Needs {install}.\n\n\
         ```sh\n{build}\n{test}\n```\n\n\
         The test runs the component over `tests/events.jsonl` with the test kit's in-memory \
         stand-ins and compares the outcomes (and recorded capability calls) with \
         `tests/expected.jsonl`; it exits 1 with a diff when they differ.\n\n{twice}\
         Run it in a host (`projector.toml`):\n\n```toml\n[[projection]]\nname = \"{name}\"\n\
         plugin = \"{component}\"\n{config}[projection.grants]\n{grants}```\n\n\
         or load it into a running host: `projector versions load --projection {name} {component}`.\n\
         The guide: docs/plugins.md in the projector repository.\n",
        twice = if capabilities.contains(&Capability::Sql) {
            format!(
                "To check that a second delivery of an event changes nothing, run the test \
                 against a development database holding `migrations/` (one transaction, rolled \
                 back): add `--database-url URL --sql-table {} --deliver-twice` (and drop \
                 `--expect`, whose file has no lines for the second deliveries).\n\n",
                artifact_stem(name)
            )
        } else {
            String::new()
        },
        build = build_command(name, lang),
        test = test_command(name, lang, capabilities),
        component = component_path(name, lang),
    )
}

/// Writes the project for `name` into `dir` and returns the files written (relative paths).
pub fn write(
    name: &str,
    lang: Lang,
    capabilities: &[Capability],
    dir: &Path,
) -> Result<Vec<PathBuf>, Error> {
    check_name(name)?;
    let mut capabilities = capabilities.to_vec();
    capabilities.sort();
    capabilities.dedup();
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(Error::config(
                "--dir",
                format!(
                    "{} already exists and is not empty: choose another NAME or --dir",
                    dir.display()
                ),
            ));
        }
    }
    let (events, expected) = test_files(name, &capabilities);
    let render = |t: &str| render(t, name, &capabilities);
    let mut files: Vec<(PathBuf, String)> = vec![
        ("tests/events.jsonl".into(), events),
        ("tests/expected.jsonl".into(), expected),
        ("README.md".into(), readme(name, lang, &capabilities)),
    ];
    match lang {
        Lang::Rust => {
            files.push(("Cargo.toml".into(), render(RUST_CARGO)));
            files.push(("rust-toolchain.toml".into(), RUST_TOOLCHAIN.to_owned()));
            files.push(("src/lib.rs".into(), render(RUST_LIB)));
            files.push((".gitignore".into(), "/target\n".into()));
            let sdk = Path::new(RUST_SDK_DIR);
            for (path, text) in RUST_SDK {
                files.push((sdk.join(path), (*text).to_owned()));
            }
            files.push((sdk.join("wit/plugin.wit"), CONTRACT.to_owned()));
        }
        Lang::Python => {
            files.push((
                "wit/deps/projector-plugin/plugin.wit".into(),
                CONTRACT.to_owned(),
            ));
            files.push(("wit/world.wit".into(), render(WORLD)));
            files.push(("projector_plugin_sdk.py".into(), PYTHON_SDK.to_owned()));
            files.push(("app.py".into(), render(PYTHON_APP)));
            files.push((".gitignore".into(), format!("__pycache__/\n/{name}.wasm\n")));
        }
    }
    if capabilities.contains(&Capability::Sql) {
        files.push((
            format!("migrations/0001_{}.sql", artifact_stem(name)).into(),
            render(MIGRATION),
        ));
    }
    for (path, text) in &files {
        let full = dir.join(path);
        let parent = full.parent().expect("a relative file path has a parent");
        std::fs::create_dir_all(parent)
            .and_then(|()| std::fs::write(&full, text))
            .map_err(|e| Error::config("--dir", format!("cannot write {}: {e}", full.display())))?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

/// What `plugin new` prints: the files and the two commands to run next.
pub fn next_steps(
    name: &str,
    lang: Lang,
    capabilities: &[Capability],
    dir: &Path,
    written: &[PathBuf],
) -> String {
    let mut out = format!("wrote {} ({lang:?}):\n", dir.display());
    for f in written {
        out.push_str(&format!("  {}\n", f.display()));
    }
    out.push_str(&format!(
        "next:\n  cd {}\n  {}\n  {}\n",
        dir.display(),
        build_command(name, lang),
        test_command(name, lang, capabilities)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["a", "book-search", "stamp-v2", "x9"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Book", "9a", "a-", "a--b", "a_b", "a b", "-a", "a-9b"] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.starts_with("NAME: "), "{e}");
        }
    }

    #[test]
    fn test_events_are_about_the_plugins_own_aggregate() {
        let (events, expected) = test_files("order-totals", &[Capability::Search]);
        assert!(
            events.contains(r#""event_type": "order.created""#),
            "{events}"
        );
        assert!(events.contains(r#""aggregate_id": "order-1""#), "{events}");
        assert!(!events.contains("book"), "{events}");
        assert!(expected.contains("index orders/order-1 v1"), "{expected}");
        assert_eq!(index_name("news-feed"), "news");
        assert_eq!(
            test_flags("order-totals", &[Capability::Search]),
            " --config index=orders"
        );
    }

    #[test]
    fn conditions_keep_only_the_chosen_capabilities() {
        let t = "a\n#if sql\nsql {{table}}\n#endif\n#if search\nsearch\n#endif\nz {{name}}\n";
        assert_eq!(render(t, "my-plugin", &[]), "a\nz my-plugin\n");
        assert_eq!(
            render(t, "my-plugin", &[Capability::Sql]),
            "a\nsql my_plugin\nz my-plugin\n"
        );
        assert_eq!(
            render(t, "p", &[Capability::Search, Capability::Sql]),
            "a\nsql p\nsearch\nz p\n"
        );
    }
}
