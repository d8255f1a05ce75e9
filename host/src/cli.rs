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
        /// The database.
        #[command(flatten)]
        db: Database,
    },
    /// Run the projections until SIGTERM/SIGINT (or for OUTBOX_RUN_SECONDS).
    Run(RunArgs),
    /// Move failed events back to pending (attempts reset, due now), audited.
    Replay {
        /// The projection.
        #[arg(long)]
        projection: String,
        /// Who is replaying (audited).
        #[arg(long)]
        by: String,
        /// Why (audited).
        #[arg(long)]
        reason: String,
        /// Only events failed with this error reason.
        #[arg(long)]
        error_reason: Option<String>,
        /// Only events of this type.
        #[arg(long)]
        event_type: Option<String>,
        /// Only these event ids.
        #[arg(long, value_delimiter = ',')]
        ids: Option<Vec<uuid::Uuid>>,
        /// At most this many, oldest first.
        #[arg(long)]
        limit: Option<u32>,
        /// Print what would change, change nothing (still audited, marked dry).
        #[arg(long)]
        dry_run: bool,
        /// The database.
        #[command(flatten)]
        db: Database,
    },
    /// Mark failed events as skipped (terminal) so their aggregates continue, audited.
    Skip {
        /// The projection.
        #[arg(long)]
        projection: String,
        /// The events to skip.
        #[arg(long, value_delimiter = ',', required = true)]
        ids: Vec<uuid::Uuid>,
        /// Who is skipping (audited).
        #[arg(long)]
        by: String,
        /// Why (audited).
        #[arg(long)]
        reason: String,
        /// The database.
        #[command(flatten)]
        db: Database,
    },
    /// Stop a projection from claiming (survives restarts) ...
    Pause {
        /// The projection.
        #[arg(long)]
        projection: String,
        /// Who is pausing.
        #[arg(long, env = "USER", default_value = "cli")]
        by: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
        /// The database.
        #[command(flatten)]
        db: Database,
    },
    /// ... and let it claim again.
    Resume {
        /// The projection.
        #[arg(long)]
        projection: String,
        /// The database.
        #[command(flatten)]
        db: Database,
    },
    /// Measure projector against the raw SQL and search-server ceilings (see BENCHMARKS.md).
    Bench(crate::bench::BenchArgs),
    /// Manage plugin versions of a running host (through its admin API).
    Plugins {
        /// What to do.
        #[command(subcommand)]
        action: PluginsAction,
        /// The running host's HTTP address.
        #[arg(
            long,
            global = true,
            env = "PROJECTOR_ADMIN_URL",
            default_value = "http://127.0.0.1:8080"
        )]
        admin_url: String,
        /// The host's admin token.
        #[arg(
            long,
            global = true,
            env = "OUTBOX_ADMIN_TOKEN",
            hide_env_values = true
        )]
        token: Option<String>,
        /// Who is acting (recorded with the activation).
        #[arg(long, global = true, env = "USER", default_value = "cli")]
        by: String,
    },
}

/// `projector plugins ...`.
#[derive(Debug, Subcommand)]
pub enum PluginsAction {
    /// Validate FILE and make it the projection's active version.
    Load {
        /// The projection.
        #[arg(long)]
        projection: String,
        /// The component.
        file: PathBuf,
    },
    /// Re-activate the version that was active before the current one.
    Rollback {
        /// The projection.
        #[arg(long)]
        projection: String,
    },
    /// List the projection's versions, which is active, and how many events each settled.
    List {
        /// The projection.
        #[arg(long)]
        projection: String,
    },
}

/// The database a one-shot command works on.
#[derive(Debug, Args)]
pub struct Database {
    /// Postgres connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
}

impl Database {
    /// The URL, or the error naming `DATABASE_URL` when it is missing.
    pub fn url(&self) -> crate::Result<&str> {
        self.database_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| {
                crate::Error::config(
                    "DATABASE_URL",
                    "not set: pass --database-url or set DATABASE_URL",
                )
            })
    }
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
        Command::Migrate { db } => {
            let log = LogFormat::Text;
            crate::service::init_logging(log);
            runtime().block_on(crate::db::migrate_command(&db))
        }
        Command::Run(args) => crate::service::run_command(args),
        Command::Replay {
            projection,
            by,
            reason,
            error_reason,
            event_type,
            ids,
            limit,
            dry_run,
            db,
        } => {
            let filter = crate::outbox::operator::Filter {
                error_reason,
                event_type,
                ids,
                limit: limit.map(i64::from),
            };
            replay_or_skip(db, projection, filter, by, reason, dry_run, false)
        }
        Command::Skip {
            projection,
            ids,
            by,
            reason,
            db,
        } => {
            let filter = crate::outbox::operator::Filter {
                ids: Some(ids),
                ..Default::default()
            };
            replay_or_skip(db, projection, filter, by, reason, false, true)
        }
        Command::Pause {
            projection,
            by,
            reason,
            db,
        } => operator_command(db, move |pool| async move {
            crate::outbox::operator::pause(&pool, &projection, &by, reason.as_deref()).await?;
            println!("projection `{projection}` paused");
            Ok(())
        }),
        Command::Resume { projection, db } => operator_command(db, move |pool| async move {
            let was = crate::outbox::operator::resume(&pool, &projection).await?;
            println!(
                "projection `{projection}` {}",
                if was { "resumed" } else { "was not paused" }
            );
            Ok(())
        }),
        Command::Bench(args) => crate::bench::command(args),
        Command::Plugins {
            action,
            admin_url,
            token,
            by,
        } => plugins_command(action, &admin_url, token.as_deref(), &by),
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

/// `projector plugins ...`: one admin API request, its JSON answer printed.
fn plugins_command(
    action: PluginsAction,
    admin_url: &str,
    token: Option<&str>,
    by: &str,
) -> crate::Result<()> {
    use crate::Error;
    let token = token.ok_or_else(|| {
        Error::config(
            "OUTBOX_ADMIN_TOKEN",
            "not set: the admin API needs the host's token",
        )
    })?;
    let base = admin_url.trim_end_matches('/');
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let auth = format!("Bearer {token}");
    let response = match &action {
        PluginsAction::Load { projection, file } => {
            let bytes = std::fs::read(file).map_err(|e| Error::Plugin {
                path: file.clone(),
                message: format!("cannot read: {e}"),
            })?;
            agent
                .put(&format!("{base}/projections/{projection}/plugin"))
                .header("Authorization", &auth)
                .header("X-Projector-By", by)
                .send(&bytes[..])
        }
        PluginsAction::Rollback { projection } => agent
            .post(&format!("{base}/projections/{projection}/rollback"))
            .header("Authorization", &auth)
            .header("X-Projector-By", by)
            .send(&b""[..]),
        PluginsAction::List { projection } => agent
            .get(&format!("{base}/projections/{projection}/plugins"))
            .header("Authorization", &auth)
            .call(),
    };
    let mut response =
        response.map_err(|e| Error::config("--admin-url", format!("cannot reach {base}: {e}")))?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    println!("{body}");
    match status {
        200 => Ok(()),
        401 | 403 => Err(Error::config(
            "OUTBOX_ADMIN_TOKEN",
            format!("refused by the host ({status})"),
        )),
        404 => Err(Error::config(
            "--projection",
            format!("unknown to the host ({status})"),
        )),
        _ => Err(Error::Other(anyhow::anyhow!("the host answered {status}"))),
    }
}

/// `projector replay` / `projector skip`: acts and prints what was (or would be) changed.
fn replay_or_skip(
    db: Database,
    projection: String,
    filter: crate::outbox::operator::Filter,
    by: String,
    reason: String,
    dry_run: bool,
    skip: bool,
) -> crate::Result<()> {
    operator_command(db, move |pool| async move {
        let done =
            crate::outbox::operator::act(&pool, &projection, &filter, &by, &reason, dry_run, skip)
                .await?;
        println!(
            "{}",
            serde_json::to_string_pretty(&done).expect("serialisable")
        );
        Ok(())
    })
}

/// Runs an operator command against the database (migrated first, so it works on a fresh one).
fn operator_command<F, Fut>(db: Database, work: F) -> crate::Result<()>
where
    F: FnOnce(sqlx::PgPool) -> Fut,
    Fut: std::future::Future<Output = crate::Result<()>>,
{
    crate::service::init_logging(LogFormat::Text);
    let url = db.url()?.to_owned();
    runtime().block_on(async move {
        let pool = crate::db::connect(&url, 2).await?;
        crate::db::migrate(&pool).await?;
        work(pool).await
    })
}
