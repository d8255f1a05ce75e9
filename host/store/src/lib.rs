//! projector's PostgreSQL side: the migrations, the outbox state machine's statements (claim,
//! settle, leases and reclaim, heads, retention, status, operator transitions), the plugin
//! versions table ([`versions`]), the rebuilds' records and shadow tables ([`rebuilds`]), the
//! database roles behind the `sql` capability ([`sql_roles`]), and the NOTIFY channels.
//!
//! Invariants:
//! - Every SQL statement the host runs is here, in a `.sql` file next to the module that runs it
//!   (loaded with `include_str!`, its leading comment saying what it does and what its
//!   parameters are), behind a function with typed parameters and rows. The only SQL built in
//!   Rust is DDL naming roles, schemas or tables (identifiers cannot be parameters), with every
//!   identifier quoted: role provisioning ([`sql_roles`]) and shadow tables
//!   ([`rebuilds::shadow`]). Crates above this one hold no SQL (a rebuild's source query comes
//!   from the configuration and is only passed through).
//! - Every write to `outbox_events.status` is a statement in [`outbox`]; nothing above this
//!   crate writes it. (An outbox-mode rebuild inserts new events, as an application does:
//!   [`rebuilds::emit`].)
//! - Every NOTIFY goes through [`notify`]; every pause and resume through
//!   [`outbox::operator`].
//! - Depends on `projector-core` only.
#![deny(missing_docs)]

pub mod db;
pub mod notify;
pub mod outbox;
pub mod rebuilds;
pub mod sql_roles;
pub mod versions;

pub use projector_core::{Error, Result};

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn sql_files(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("readable src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                sql_files(&path, found);
            } else if path.extension().is_some_and(|e| e == "sql") {
                found.push(path);
            }
        }
    }

    /// Whether `comment` names parameter `n`: `$n` itself, or a range `$a..$b` holding it.
    fn names(comment: &str, n: u32) -> bool {
        // The number written right after `$` at byte `i`, and where it ends.
        let number_at = |i: usize| -> Option<(u32, usize)> {
            let digits: String = comment[i..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok().map(|v| (v, i + digits.len()))
        };
        comment
            .match_indices('$')
            .any(|(i, _)| match number_at(i + 1) {
                Some((a, _)) if a == n => true,
                Some((a, end)) if comment[end..].starts_with("..$") => {
                    number_at(end + 3).is_some_and(|(b, _)| (a..=b).contains(&n))
                }
                _ => false,
            })
    }

    #[test]
    fn every_statement_file_says_what_it_does_and_names_its_parameters() {
        let mut files = Vec::new();
        sql_files(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        assert!(files.len() > 50, "found only {} .sql files", files.len());
        for file in files {
            let text = std::fs::read_to_string(&file).expect("readable");
            let comment: String = text
                .lines()
                .take_while(|l| l.starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n");
            assert!(
                !comment.is_empty(),
                "{} does not begin with a comment saying what it does",
                file.display()
            );
            let body = &text[comment.len()..];
            for n in 1..=20 {
                let used = body
                    .match_indices(&format!("${n}"))
                    .any(|(i, m)| !body[i + m.len()..].starts_with(|c: char| c.is_ascii_digit()));
                assert!(
                    !used || names(&comment, n),
                    "{} uses ${n} but its leading comment does not say what it is",
                    file.display()
                );
            }
        }
    }
}
