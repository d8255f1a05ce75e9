//! For plugin authors, no running host needed: `projector plugin new` writes a ready-to-build
//! plugin project ([`scaffold`]); `projector plugin test` runs a component over a file of events
//! with recording in-memory stand-ins for the capabilities ([`testkit`]), or for `sql` a real
//! Postgres in a transaction rolled back at the end ([`database`]), optionally delivering every
//! event twice to check that a redelivery changes nothing, and checks the outcomes
//! against an expectation file ([`expect`]). The guide is `docs/plugins.md`.
#![deny(missing_docs)]

pub mod database;
pub mod expect;
pub mod scaffold;
mod search_stand_in;
pub mod testkit;

use clap::Subcommand;
pub use projector_core::{Error, Result};
pub use scaffold::{Capability, Lang};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `projector plugin ...`.
#[derive(Debug, Subcommand)]
pub enum PluginAction {
    /// Write a new plugin project (WIT wired, a handler that compiles, a test) into ./NAME.
    New {
        /// The plugin's name: lowercase letters, digits and `-`, starting with a letter.
        name: String,
        /// The language to write it in.
        #[arg(long, value_enum, default_value_t = Lang::Rust)]
        lang: Lang,
        /// A capability the plugin uses beyond log and config (repeatable).
        #[arg(long = "capability", value_enum)]
        capabilities: Vec<Capability>,
        /// Where to write the project (default ./NAME); must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run PLUGIN over a file of events with in-memory stand-ins for the capabilities (a test
    /// kit: no Postgres, no search cluster), print every outcome and capability call; exit 1
    /// when --expect is given and does not match.
    Test {
        /// The plugin component (.wasm).
        plugin: PathBuf,
        /// The events, JSON Lines: `{"event_type": "...", "payload": {...}}` per line.
        #[arg(long, value_name = "FILE.jsonl")]
        events: PathBuf,
        /// An entry of the plugin's config map (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// The expected outcomes (and optionally calls), JSON Lines, one per event.
        #[arg(long, value_name = "FILE.jsonl")]
        expect: Option<PathBuf>,
        /// Write the run as an expectation file (every outcome and call) to review and keep.
        #[arg(long, value_name = "FILE.jsonl", conflicts_with = "expect")]
        write_expect: Option<PathBuf>,
        /// The projection name the events carry.
        #[arg(long, default_value = "test")]
        projection: String,
        /// Run the plugin's sql on this PostgreSQL database (which holds its tables) in one
        /// transaction, rolled back at the end, instead of the in-memory stand-in.
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
        /// A table the plugin writes (repeatable, needs --database-url): read back after the run
        /// and compared around every redelivery.
        #[arg(long = "sql-table", value_name = "TABLE", requires = "database_url")]
        sql_tables: Vec<String>,
        /// After the file, deliver every event that succeeded again (same id, next attempt) and
        /// fail when a second delivery changes the sink (search documents, --sql-table rows).
        #[arg(long)]
        deliver_twice: bool,
    },
}

/// Runs `projector plugin ...`.
pub fn command(action: PluginAction) -> crate::Result<()> {
    match action {
        PluginAction::New {
            name,
            lang,
            capabilities,
            dir,
        } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let written = scaffold::write(&name, lang, &capabilities, &dir)?;
            print!(
                "{}",
                scaffold::next_steps(&name, lang, &capabilities, &dir, &written)
            );
            Ok(())
        }
        PluginAction::Test {
            plugin,
            events,
            config,
            expect,
            write_expect,
            projection,
            database_url,
            sql_tables,
            deliver_twice,
        } => {
            let config = parse_config(&config)?;
            let expected = expect.as_deref().map(expect::read).transpose()?;
            let input = testkit::read_events(&events)?;
            let options = testkit::Options {
                database_url,
                sql_tables,
                deliver_twice,
            };
            let run = testkit::run_with(&plugin, input, config, &projection, &options)?;
            print!("{}", run.transcript());
            if !run.findings.is_empty() {
                return Err(Error::Other(anyhow::anyhow!(
                    "the plugin is not idempotent: {} of its redelivered events changed the sink \
                     (NOT IDEMPOTENT above)",
                    run.findings.len()
                )));
            }
            if let Some(path) = write_expect {
                std::fs::write(&path, expect::render(&run)).map_err(|e| {
                    Error::config(
                        "--write-expect",
                        format!("cannot write {}: {e}", path.display()),
                    )
                })?;
                println!("wrote the expectations to {}", path.display());
                return Ok(());
            }
            let (Some(expected), Some(path)) = (expected, expect) else {
                return Ok(());
            };
            let diff = expect::diff(&run, &expected, &events);
            if diff.is_empty() {
                println!("expectations met ({})", path.display());
                return Ok(());
            }
            print!("{diff}");
            Err(Error::Other(anyhow::anyhow!(
                "the run does not match the expectations in {}",
                path.display()
            )))
        }
    }
}

/// `KEY=VALUE` entries into a map; a bad or repeated one is a usage error naming it.
fn parse_config(entries: &[String]) -> crate::Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for entry in entries {
        let Some((key, value)) = entry.split_once('=').filter(|(k, _)| !k.trim().is_empty()) else {
            return Err(Error::config(
                "--config",
                format!("`{entry}` is not KEY=VALUE"),
            ));
        };
        if map.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(Error::config("--config", format!("`{key}` given twice")));
        }
    }
    Ok(map)
}
