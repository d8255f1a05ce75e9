//! The code's shape, as the README's "Layout" draws it: which crate may use which, and no
//! import cycle between the modules of one crate (Cargo already refuses cycles between crates).
//!
//! Module edges are read from the sources: a top-level module `a` uses `b` when `a`'s files
//! name `crate::b` (or `super::b` from a top-level file, `super::` alone meaning the crate
//! root), and the crate root uses every module whose name it writes as a path (`b::...`).
//! Comments and `#[cfg(test)]` modules are left out: tests may reach anywhere.

use crate::common::repo_root;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates of the workspace and the projector crates each may depend on: the layering of
/// the README's picture. A crate not listed here fails the test, so a new one gets a place.
const LAYERS: &[(&str, &[&str])] = &[
    ("projector-core", &[]),
    ("projector-store", &["projector-core"]),
    ("projector-runtime", &["projector-core"]),
    (
        "projector-service",
        &["projector-core", "projector-store", "projector-runtime"],
    ),
    ("projector-test-support", &[]),
    (
        "projector-authoring",
        &["projector-core", "projector-runtime"],
    ),
    (
        "projector-bench",
        &[
            "projector-core",
            "projector-store",
            "projector-runtime",
            "projector-service",
            "projector-test-support",
        ],
    ),
];

/// Every `projector-*` dependency named in a manifest's `[dependencies]`.
fn projector_dependencies(manifest: &str) -> BTreeSet<String> {
    let mut in_deps = false;
    let mut out = BTreeSet::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && line.starts_with("projector-") {
            out.insert(line.split([' ', '=', '.']).next().unwrap().to_owned());
        }
    }
    out
}

fn package_name(manifest: &str) -> String {
    manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("name = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("a package name")
        .to_owned()
}

fn host_crates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo_root().join("host"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn each_crate_depends_only_on_the_layers_below_it() {
    let layers: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let crates = host_crates();
    assert!(
        crates.len() >= LAYERS.len(),
        "crates under host/: {crates:?}"
    );
    for dir in crates {
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let name = package_name(&manifest);
        let allowed = layers
            .get(name.as_str())
            .unwrap_or_else(|| panic!("{name} ({}) has no place in LAYERS", dir.display()));
        let used = projector_dependencies(&manifest);
        let beyond: Vec<&String> = used
            .iter()
            .filter(|d| !allowed.contains(&d.as_str()))
            .collect();
        assert!(
            beyond.is_empty(),
            "{name} depends on {beyond:?}, above or beside its layer (allowed: {allowed:?})"
        );
    }
}

/// The `.rs` files of one crate's source directory.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its `#[cfg(test)]` part.
fn code(text: &str) -> String {
    let before_tests = text.split("#[cfg(test)]").next().unwrap();
    before_tests
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every identifier directly followed by `::` in `code`, with what precedes it (`crate::`,
/// `super::` or nothing).
fn paths(code: &str) -> Vec<(String, String)> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let starts = (c.is_ascii_lowercase() || c == b'_')
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
            j += 1;
        }
        if code[j..].starts_with("::") {
            let prefix = if code[..i].ends_with("crate::") {
                "crate"
            } else if code[..i].ends_with("super::") {
                "super"
            } else {
                ""
            };
            out.push((prefix.to_owned(), code[i..j].to_owned()));
        }
        i = j;
    }
    out
}

/// One crate's module graph: top-level module → the top-level modules it uses.
fn module_edges(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let module_of = |p: &Path| -> (String, bool) {
        let rel = p.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let name = first.trim_end_matches(".rs").to_owned();
        let top_file = rel.components().count() == 1;
        match name.as_str() {
            "lib" | "main" => ("(root)".to_owned(), top_file),
            _ => (name, top_file),
        }
    };
    let names: BTreeSet<String> = files.iter().map(|p| module_of(p).0).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> =
        names.iter().map(|n| (n.clone(), BTreeSet::new())).collect();
    for file in &files {
        let (module, top_file) = module_of(file);
        let text = code(&std::fs::read_to_string(file).unwrap());
        for (prefix, name) in paths(&text) {
            let target = match prefix.as_str() {
                "crate" => name,
                // From a top-level file `super::` is the root, `super::b` a sibling.
                "super" if top_file && module != "(root)" => {
                    if names.contains(&name) {
                        name
                    } else {
                        "(root)".to_owned()
                    }
                }
                "" if module == "(root)" => name,
                _ => continue,
            };
            if target != module && names.contains(&target) {
                edges.get_mut(&module).unwrap().insert(target);
            }
        }
        if top_file && module != "(root)" {
            // `super::Item`, `super::{...}` or `super::*`: the root, unless it names a sibling.
            for (at, _) in text.match_indices("super::") {
                let rest = &text[at + "super::".len()..];
                let word: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !names.contains(&word) {
                    edges.get_mut(&module).unwrap().insert("(root)".to_owned());
                }
            }
        }
    }
    edges
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        for w in &s.edges[v] {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.stack.contains(&w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn the_cycle_finder_finds_a_cycle_it_is_shown() {
    // Positive control: two modules naming each other, and a root used by a module it uses.
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write(
        "lib.rs",
        "mod a; mod b; mod c; pub struct Plan; fn f() { c::go(); }",
    );
    write(
        "a.rs",
        "use crate::b::X; // crate::c in a comment is not an edge\n",
    );
    write("b.rs", "pub struct X; fn g() { crate::a::h(); }");
    write("c.rs", "use super::Plan; pub fn go() {}");
    let edges = module_edges(dir.path());
    let mut found = cycles(&edges);
    found.sort();
    assert_eq!(
        found,
        vec![
            vec!["(root)".to_owned(), "c".to_owned()],
            vec!["a".to_owned(), "b".to_owned()]
        ]
    );
    assert!(!edges["a"].contains("c"), "a comment is not an edge");
}

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    let mut report = String::new();
    let mut failed = Vec::new();
    let mut roots: Vec<PathBuf> = host_crates().into_iter().map(|d| d.join("src")).collect();
    roots.push(repo_root().join("host/cli"));
    for src in roots {
        let edges = module_edges(&src);
        for (module, uses) in &edges {
            if !uses.is_empty() {
                report.push_str(&format!("{} {module} -> {uses:?}\n", src.display()));
            }
        }
        for cycle in cycles(&edges) {
            failed.push(format!("{}: {cycle:?}", src.display()));
        }
    }
    eprintln!("{report}");
    assert!(failed.is_empty(), "import cycles: {failed:#?}");
}
