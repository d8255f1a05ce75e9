//! The `projector` command line. Parsing only: every command hands its arguments to the module
//! that does the work. Usage errors are one line on stderr and exit code 2.

use clap::{Args, Parser, Subcommand};
use projector_core::{Error, Result};
use projector_service::run::tokio_runtime as runtime;
use projector_service::settings::{table, Database, LogFormat, Overrides, RunArgs, Setting};
use projector_store::outbox;
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
        /// Also prepare the database roles of the `sql` projections this config lists (create,
        /// grant, confine): run as the database owner, so that hosts need no CREATEROLE.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// With --config: grant this role what a running host needs (and nothing more).
        #[arg(long, value_name = "ROLE", requires = "config")]
        host_role: Option<String>,
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
    /// Per projection: events per status, stuck, blocked, failed by reason, oldest pending age,
    /// active plugin version, paused or not. Reads only: applies no migration.
    Status {
        /// Only this projection.
        #[arg(long)]
        projection: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The database.
        #[command(flatten)]
        db: Database,
    },
    /// List a projection's failed (or blocked, or other) events with ids, reasons and payload
    /// excerpts, oldest first; or, with --event, one event's record and replay history.
    Events {
        /// The projection.
        #[arg(long)]
        projection: String,
        /// Which events: failed, blocked (pending behind a failed event of their aggregate),
        /// pending, processing, done or skipped.
        #[arg(long, default_value = "failed", value_parser = parse_listable_status)]
        status: String,
        /// Only events failed with this reason (blocked: whose blocking event failed so).
        #[arg(long)]
        reason: Option<String>,
        /// Only events of this type.
        #[arg(long)]
        event_type: Option<String>,
        /// Only events after this seq (the last seq of the previous page).
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        after: i64,
        /// At most this many.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=outbox::events::MAX_PAGE))]
        limit: i64,
        /// One event (its seq or its id): its payload, headers, attempts, error, the version
        /// that last handled it, and its replays and skips.
        #[arg(long, value_name = "SEQ|ID", conflicts_with_all = ["status", "reason", "event_type", "after", "limit"])]
        event: Option<outbox::events::EventKey>,
        /// Print the list as JSON instead of a table (one event is always JSON).
        #[arg(long)]
        json: bool,
        /// The database.
        #[command(flatten)]
        db: Database,
    },
    /// Rebuild a projection's read model from its source of truth (see `--source`).
    Rebuild(RebuildArgs),
    /// Delete `done` rows older than the retention age, in small batches, once.
    Prune {
        /// Delete `done` rows older than this many seconds.
        #[arg(
            long,
            env = table::retention_done_seconds.env,
            value_name = "SECONDS",
            value_parser = parse_positive_seconds
        )]
        older_than: f64,
        /// Rows per delete batch.
        #[arg(
            long,
            env = table::retention_batch_size.env,
            value_name = "N",
            help = table::retention_batch_size.help_line()
        )]
        batch_size: Option<i64>,
        /// The database.
        #[command(flatten)]
        db: Database,
    },
    /// Measure projector against the raw SQL and search-server ceilings (see BENCHMARKS.md).
    Bench(projector_bench::BenchArgs),
    /// Manage plugin versions of a running host (through its admin API).
    // `plugins` was this command's name before `plugin` (author tools) sat beside it: kept as a
    // hidden alias so existing scripts keep working.
    #[command(alias = "plugins")]
    Versions {
        /// What to do.
        #[command(subcommand)]
        action: VersionsAction,
        /// The running host's HTTP address.
        #[arg(
            long,
            global = true,
            env = "PROJECTOR_ADMIN_URL",
            default_value = "http://127.0.0.1:8080"
        )]
        admin_url: String,
        /// The host's admin token (`load` and `rollback`; `list` needs none, reads are open).
        #[arg(
            long,
            global = true,
            env = table::admin_token.env,
            hide_env_values = true
        )]
        token: Option<String>,
        /// Who is acting (recorded with the activation).
        #[arg(long, global = true, env = "USER", default_value = "cli")]
        by: String,
    },
    /// For plugin authors, no host needed: write a new plugin project, or test a plugin.
    Plugin {
        /// What to do.
        #[command(subcommand)]
        action: projector_authoring::PluginAction,
    },
}

/// `projector versions ...`.
#[derive(Debug, Subcommand)]
pub enum VersionsAction {
    /// Validate FILE and make it the projection's active version, or, with `--canary P%`, run it
    /// for P % of the projection's aggregates until it is promoted or rolled back.
    Load {
        /// The projection.
        #[arg(long)]
        projection: String,
        /// Start a canary for this share of aggregates (`10%` or `10`, 1 to 99) instead of
        /// activating FILE for all of them.
        #[arg(long, value_name = "PERCENT", value_parser = parse_share)]
        canary: Option<u8>,
        /// The component.
        file: PathBuf,
    },
    /// Promote the projection's running canary: it becomes the active version.
    Promote {
        /// The projection.
        #[arg(long)]
        projection: String,
    },
    /// Abort the projection's running canary: its aggregates go back to the active version.
    Abort {
        /// The projection.
        #[arg(long)]
        projection: String,
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

/// Arguments of `projector rebuild`: the projection's configuration as for `projector run`,
/// plus what to rebuild and how.
#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// The projection to rebuild.
    #[arg(long)]
    pub projection: String,
    /// Empty the projection's granted tables first.
    #[arg(long, conflicts_with = "zero_downtime")]
    pub truncate: bool,
    /// Write the source rows as outbox events for the running hosts instead of applying them.
    #[arg(long, conflicts_with = "zero_downtime")]
    pub emit_outbox: bool,
    /// Build into shadow tables and switch them in atomically once caught up (sql projections).
    #[arg(long)]
    pub zero_downtime: bool,
    /// A source named in `[projection.sources]`, or a SELECT returning `id` (uuid),
    /// `event_type`, `aggregate_id`, `payload` and optionally `aggregate_type`, `occurred_at`,
    /// `seq` [default: the projection's only source].
    #[arg(long, value_name = "NAME|SQL")]
    pub source: Option<String>,
    /// Who is rebuilding (recorded).
    #[arg(long, env = "USER", default_value = "cli")]
    pub by: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// The projection's configuration.
    #[command(flatten)]
    pub run: RunArgs,
}

fn parse_listable_status(s: &str) -> Result<String, String> {
    outbox::events::check_status(s).map(|()| s.to_owned())
}

fn parse_positive_seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a positive number of seconds")),
    }
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
            // clap's rendering spans several lines (tips, usage); the first one says it all,
            // except when it ends in `:` and the indented lines after it name what is missing.
            let text = err.render().to_string();
            let mut lines = text.lines();
            let mut line = lines.next().unwrap_or("error: invalid usage").to_owned();
            if line.ends_with(':') {
                let named: Vec<&str> = lines
                    .take_while(|l| l.starts_with("  "))
                    .map(str::trim)
                    .collect();
                line = format!("{line} {}", named.join(", "));
            }
            eprintln!("{line}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Migrate {
            db,
            config,
            host_role,
        } => {
            let log = LogFormat::Text;
            projector_service::run::init_logging(log);
            runtime().block_on(migrate_command(
                &db,
                config.as_deref(),
                host_role.as_deref(),
            ))
        }
        Command::Run(args) => projector_service::run::run_command(args),
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
            let filter = outbox::operator::Filter {
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
            let filter = outbox::operator::Filter {
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
            outbox::operator::pause(&pool, &projection, &by, reason.as_deref()).await?;
            println!("projection `{projection}` paused");
            Ok(())
        }),
        Command::Resume { projection, db } => operator_command(db, move |pool| async move {
            let was = outbox::operator::resume(&pool, &projection).await?;
            println!(
                "projection `{projection}` {}",
                if was { "resumed" } else { "was not paused" }
            );
            Ok(())
        }),
        Command::Status {
            projection,
            json,
            db,
        } => read_command(db, move |pool| async move {
            let rows = outbox::status::status(&pool, projection.as_deref()).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).expect("serialisable")
                );
            } else {
                print!("{}", outbox::status::render_table(&rows));
            }
            Ok(())
        }),
        Command::Events {
            projection,
            status,
            reason,
            event_type,
            after,
            limit,
            event,
            json,
            db,
        } => operator_command(db, move |pool| async move {
            if let Some(key) = event {
                let detail = outbox::events::detail(&pool, &projection, key)
                    .await?
                    .ok_or_else(|| {
                        Error::config(
                            "--event",
                            format!("projection `{projection}` has no such event"),
                        )
                    })?;
                // JSON either way: the payload and headers are JSON documents.
                println!(
                    "{}",
                    serde_json::to_string_pretty(&detail).expect("serialisable")
                );
                return Ok(());
            }
            let query = outbox::events::Query {
                status,
                error_reason: reason,
                event_type,
                after_seq: after,
                limit,
            };
            let rows = outbox::events::list(&pool, &projection, &query).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).expect("serialisable")
                );
            } else {
                print!("{}", outbox::events::render_table(&rows));
            }
            Ok(())
        }),
        Command::Rebuild(args) => rebuild_command(args),
        Command::Prune {
            older_than,
            batch_size,
            db,
        } => table::retention_batch_size
            .resolve(batch_size)
            .and_then(|batch_size| {
                operator_command(db, move |pool| async move {
                    let older = std::time::Duration::from_secs_f64(older_than);
                    let deleted = outbox::retention::prune(&pool, older, batch_size, None).await?;
                    let total: u64 = deleted.values().sum();
                    println!(
                        "{}",
                        serde_json::json!({"deleted": total, "by_projection": deleted})
                    );
                    Ok(())
                })
            }),
        Command::Bench(args) => projector_bench::command(args),
        Command::Versions {
            action,
            admin_url,
            token,
            by,
        } => versions_command(action, &admin_url, token.as_deref(), &by),
        Command::Plugin { action } => projector_authoring::command(action),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

/// `projector versions ...`: one admin API request, its JSON answer printed.
fn versions_command(
    action: VersionsAction,
    admin_url: &str,
    token: Option<&str>,
    by: &str,
) -> Result<()> {
    // Reads are open on the admin API: only the writes need the token.
    let writes = !matches!(action, VersionsAction::List { .. });
    let token = match token {
        Some(token) => Some(token),
        None if writes => {
            return Err(Error::config(
                table::admin_token.env,
                format!(
                    "not set: `load`, `rollback`, `promote` and `abort` need the host's admin token: pass --token or \
                     set {}",
                    table::admin_token.env
                ),
            ))
        }
        None => None,
    };
    let base = admin_url.trim_end_matches('/');
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let auth = token.map(|t| format!("Bearer {t}")).unwrap_or_default();
    let response = match &action {
        VersionsAction::Load {
            projection,
            canary,
            file,
        } => {
            let bytes = std::fs::read(file).map_err(|e| Error::Plugin {
                path: file.clone(),
                message: format!("cannot read: {e}"),
            })?;
            let query = canary.map(|p| format!("?canary={p}")).unwrap_or_default();
            agent
                .put(&format!("{base}/projections/{projection}/plugin{query}"))
                .header("Authorization", &auth)
                .header("X-Projector-By", by)
                .send(&bytes[..])
        }
        VersionsAction::Rollback { projection } => agent
            .post(&format!("{base}/projections/{projection}/rollback"))
            .header("Authorization", &auth)
            .header("X-Projector-By", by)
            .send(&b""[..]),
        VersionsAction::Promote { projection } => agent
            .post(&format!("{base}/projections/{projection}/canary/promote"))
            .header("Authorization", &auth)
            .header("X-Projector-By", by)
            .send(&b""[..]),
        VersionsAction::Abort { projection } => agent
            .post(&format!("{base}/projections/{projection}/canary/abort"))
            .header("Authorization", &auth)
            .header("X-Projector-By", by)
            .send(&b""[..]),
        VersionsAction::List { projection } => {
            let request = agent.get(&format!("{base}/projections/{projection}/plugins"));
            match token {
                Some(_) => request.header("Authorization", &auth).call(),
                None => request.call(),
            }
        }
    };
    let mut response =
        response.map_err(|e| Error::config("--admin-url", format!("cannot reach {base}: {e}")))?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    println!("{body}");
    match status {
        200 => Ok(()),
        401 | 403 => Err(Error::config(
            table::admin_token.env,
            format!("refused by the host ({status})"),
        )),
        404 => Err(Error::config(
            "--projection",
            format!("unknown to the host ({status})"),
        )),
        409 => Err(Error::config(
            "--canary",
            format!("refused by the host ({status}): {body}"),
        )),
        _ => Err(Error::Other(anyhow::anyhow!("the host answered {status}"))),
    }
}

/// `--canary`: a share of aggregates, `10%` or `10`, 1 to 99.
fn parse_share(s: &str) -> std::result::Result<u8, String> {
    match s.trim().trim_end_matches('%').parse::<u8>() {
        Ok(p) if (1..=99).contains(&p) => Ok(p),
        _ => Err(format!(
            "`{s}` is not a share of aggregates between 1% and 99%"
        )),
    }
}

/// `projector replay` / `projector skip`: acts and prints what was (or would be) changed.
fn replay_or_skip(
    db: Database,
    projection: String,
    filter: outbox::operator::Filter,
    by: String,
    reason: String,
    dry_run: bool,
    skip: bool,
) -> Result<()> {
    operator_command(db, move |pool| async move {
        let done =
            outbox::operator::act(&pool, &projection, &filter, &by, &reason, dry_run, skip).await?;
        println!(
            "{}",
            serde_json::to_string_pretty(&done).expect("serialisable")
        );
        Ok(())
    })
}

/// `projector rebuild`: progress on stderr, the report on stdout.
fn rebuild_command(args: RebuildArgs) -> Result<()> {
    use projector_service::rebuild::{Mode, Request};
    let settings = projector_service::settings::Settings::resolve(
        args.run.overrides,
        args.run.config.as_deref(),
        &args.run.plugins,
    )?;
    projector_service::run::init_logging(settings.log_format);
    let request = Request {
        projection: args.projection,
        mode: if args.zero_downtime {
            Mode::ZeroDowntime
        } else if args.emit_outbox {
            Mode::Outbox
        } else {
            Mode::Direct
        },
        truncate: args.truncate,
        source: args.source,
        by: args.by,
    };
    let json = args.json;
    let migrate = !args.run.no_migrate;
    runtime().block_on(async move {
        let pool = projector_store::db::connect(&settings.database_url, 4).await?;
        if migrate {
            projector_store::db::migrate(&pool).await?;
        }
        // The first batch, then at most one line a second.
        let last = std::sync::Mutex::new(None::<std::time::Instant>);
        let progress = |r: &projector_service::rebuild::Report| {
            let mut last = last.lock().expect("not poisoned");
            if last.is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(1)) {
                *last = Some(std::time::Instant::now());
                eprintln!(
                    "rebuild {}: {} rows read, {} applied, {} failed, {} caught up ({:.1}s)",
                    r.projection, r.rows_read, r.rows_applied, r.rows_failed, r.caught_up,
                    r.duration_seconds
                );
            }
        };
        let report = projector_service::rebuild::run(&settings, &pool, request, &progress).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report).expect("serialisable"));
        } else {
            println!(
                "rebuild {} ({:?}, source {}): {} rows read, {} applied, {} failed, {} caught up, {} superseded{} in {:.1}s",
                report.projection, report.mode, report.source, report.rows_read, report.rows_applied,
                report.rows_failed, report.caught_up, report.superseded,
                if report.switched { ", switched" } else { "" }, report.duration_seconds
            );
        }
        Ok(())
    })
}

/// Runs an operator command that writes against the database (migrated first, so it works on a
/// fresh one).
fn operator_command<F, Fut>(db: Database, work: F) -> Result<()>
where
    F: FnOnce(sqlx::PgPool) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    on_database(db, true, work)
}

/// Runs a read-only command against the database: it migrates nothing, and refuses (exit 2,
/// naming `projector migrate`) a database whose schema is missing or behind this binary.
fn read_command<F, Fut>(db: Database, work: F) -> Result<()>
where
    F: FnOnce(sqlx::PgPool) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    on_database(db, false, work)
}

fn on_database<F, Fut>(db: Database, migrate: bool, work: F) -> Result<()>
where
    F: FnOnce(sqlx::PgPool) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    projector_service::run::init_logging(LogFormat::Text);
    let url = db.url()?.to_owned();
    runtime().block_on(async move {
        let pool = projector_store::db::connect(&url, 2).await?;
        if migrate {
            projector_store::db::migrate(&pool).await?;
        } else {
            projector_store::db::require_current(&pool).await?;
        }
        work(pool).await
    })
}

/// `projector migrate [--config FILE [--host-role ROLE]]`: the migrations, then (with a config)
/// the administrator's part of the `sql` projections' roles ([`projector_store::sql_roles::prepare`]).
async fn migrate_command(
    db: &Database,
    config: Option<&std::path::Path>,
    host_role: Option<&str>,
) -> Result<()> {
    let url = db.url()?;
    let pool = projector_store::db::connect(url, 2).await?;
    projector_store::db::migrate(&pool).await?;
    tracing::info!(
        migrations = projector_store::db::MIGRATOR.iter().count(),
        "database migrated"
    );
    let Some(config) = config else {
        return Ok(());
    };
    let overrides = Overrides {
        database_url: Some(url.to_owned()),
        ..Default::default()
    };
    let settings = projector_service::settings::Settings::resolve(overrides, Some(config), &[])?;
    let prepared =
        projector_store::sql_roles::prepare(&pool, &settings.projections, host_role).await?;
    for (projection, role, _) in &prepared {
        tracing::info!(projection, role, host_role, "sql projection role prepared");
    }
    Ok(())
}
