//! The throwaway Postgres: one server per test run or test process, one fresh database per test.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::Connection;
use uuid::Uuid;

pub use projector_test_support::with_database;

use super::process::{free_port, output_text, run_projector};

struct Cluster {
    admin_url: String,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| match std::env::var("PROJECTOR_TEST_PG_ADMIN_URL") {
        Ok(url) if !url.trim().is_empty() => Cluster { admin_url: url },
        _ => Cluster {
            admin_url: PgServer::start_private().admin_url,
        },
    })
}

/// A Postgres server of the test's own (for scenarios that restart the server, which the shared
/// one must not be). Stopped and removed by a watchdog once the test process is gone.
pub struct PgServer {
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub admin_url: String,
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The newest `/usr/lib/postgresql/<N>/bin` that has `initdb`, or `PG_BIN` if set.
fn pg_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin: install the `postgresql` \
             package, set PG_BIN, or set PROJECTOR_TEST_PG_ADMIN_URL (scripts/test does all this)"
        ),
    }
}

/// A command that runs `program` as the `postgres` user when we are root (initdb and postgres
/// refuse to run as root), or as ourselves otherwise.
fn as_postgres(program: &Path) -> Command {
    if running_as_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn run_checked(what: &str, cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PgServer {
    /// Restarts the server (fast shutdown: every connection is cut), waiting until it is back.
    pub fn restart(&self) {
        run_checked(
            "pg_ctl restart",
            as_postgres(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(&self.log)
                .args(["-w", "-t", "60", "-m", "fast", "restart"])
                .process_group(0),
        );
    }

    /// initdb + start on a free port.
    pub fn start_private() -> PgServer {
        start_private_cluster()
    }
}

fn start_private_cluster() -> PgServer {
    let bin = pg_bin_dir();
    let dir = tempfile::Builder::new()
        .prefix("projector-pg-")
        .tempdir()
        .expect("temp dir for the test cluster")
        .keep();
    let data = dir.join("data");
    let sock = dir.join("sock");
    std::fs::create_dir(&sock).expect("socket dir");
    if running_as_root() {
        run_checked(
            "chown of the test cluster dir",
            Command::new("chown").arg("-R").arg("postgres:").arg(&dir),
        );
    }

    // The watchdog exists before the server does, so no path leaves a server behind: it waits
    // for this process to vanish, then stops the cluster (a no-op if it never started) and
    // removes the directory. Its own process group keeps a terminal's Ctrl-C from reaching it.
    let script = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 0.5; done
        if [ "$5" = 1 ]; then
            runuser -u postgres -- "$2" -D "$3" stop -m immediate
        else
            "$2" -D "$3" stop -m immediate
        fi
        rm -rf "$4"
    "#;
    // Never waited for: it outlives this process by design.
    #[allow(clippy::zombie_processes)]
    let _watchdog = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("projector-test-pg-watchdog")
        .arg(std::process::id().to_string())
        .arg(bin.join("pg_ctl"))
        .arg(&data)
        .arg(&dir)
        .arg(if running_as_root() { "1" } else { "0" })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn the test cluster watchdog");

    run_checked(
        "initdb",
        as_postgres(&bin.join("initdb")).arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]),
    );

    let log = dir.join("postgres.log");
    let mut last_error = String::new();
    for _ in 0..5 {
        let port = free_port();
        let out = as_postgres(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-p {port} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 -k {}",
                sock.display()
            ))
            .arg("start")
            .stdin(Stdio::null())
            .process_group(0)
            .output()
            .expect("run pg_ctl start");
        if out.status.success() {
            return PgServer {
                admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
                bin,
                data,
                log,
            };
        }
        // Most likely somebody took the port between our probe and the server's bind: retry.
        last_error = format!(
            "{}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    panic!(
        "could not start the test cluster in {}:\n{last_error}",
        dir.display()
    );
}

/// A fresh, empty database of its own for one test.
pub struct TestDb {
    /// `postgres://postgres@127.0.0.1:PORT/t_xxx`, as the host takes it in `DATABASE_URL`.
    pub url: String,
    /// The database's name.
    pub name: String,
    /// A small pool on it, bound to the test's runtime.
    pub pool: PgPool,
}

impl TestDb {
    /// Creates `t_<random>` on the test server (starting a private cluster on first use).
    pub async fn new() -> TestDb {
        TestDb::on(&cluster().admin_url).await
    }

    /// Creates `t_<random>` on the server `admin_url` names.
    pub async fn on(admin_url: &str) -> TestDb {
        let admin_url = admin_url.to_owned();
        let name = format!("t_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("connect to the test server {admin_url}: {e}"));
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        admin.close().await.ok();
        let url = with_database(&admin_url, &name);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        TestDb { url, name, pool }
    }

    /// Another pool on the same database, if a test wants one of its own.
    pub async fn new_pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url))
    }

    /// `projector migrate --database-url <this>`, asserting it succeeds.
    pub fn migrate(&self) {
        let out = run_projector(&["migrate", "--database-url", &self.url], &[]);
        assert!(
            out.status.success(),
            "projector migrate failed ({}):\n{}",
            out.status,
            output_text(&out)
        );
    }

    /// The tables in the `public` schema, sorted (to check that nothing was touched).
    pub async fn public_tables(&self) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .expect("list tables")
    }
}
