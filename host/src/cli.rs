//! The `projector` command line. Parsing only: every command hands its arguments to the module
//! that does the work. Usage errors are one line on stderr and exit code 2.

use crate::settings::{LogFormat, Overrides};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// projector: runs transactional-outbox projections as sandboxed WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "projector", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the database migrations (creates `outbox_events` and friends) and exit.
    Migrate {
        /// Postgres connection URL.
        #[arg(
            long,
            env = "DATABASE_URL",
            value_name = "DATABASE_URL",
            hide_env_values = true
        )]
        database_url: Option<String>,
    },
    /// Run the projections until SIGTERM/SIGINT (or for OUTBOX_RUN_SECONDS).
    Run(RunArgs),
}

/// Arguments of `projector run`. Every setting also reads its environment variable; a flag wins
/// over the variable, the variable over the `--config` file.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML file listing projections and settings.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A projection with default settings: NAME=path/to/plugin.wasm (repeatable).
    #[arg(long = "plugin", value_name = "NAME=PATH")]
    pub plugins: Vec<String>,
    /// Do not apply migrations at start.
    #[arg(long)]
    pub no_migrate: bool,
    /// The settings.
    #[command(flatten)]
    pub overrides: Overrides,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            use clap::error::ErrorKind;
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) {
                let _ = err.print();
                return ExitCode::SUCCESS;
            }
            // clap's rendering spans several lines (tips, usage); the first one says it all.
            let text = err.render().to_string();
            eprintln!("{}", text.lines().next().unwrap_or("error: invalid usage"));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Migrate { database_url } => {
            let log = LogFormat::Text;
            crate::service::init_logging(log);
            runtime().block_on(crate::db::migrate_command(database_url))
        }
        Command::Run(args) => crate::service::run_command(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

/// The tokio runtime every command runs on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime")
}

/// `LogFormat` parses from `text` or `json`.
impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("expected `text` or `json`, got `{other}`")),
        }
    }
}
