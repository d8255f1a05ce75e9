//! Least privilege: a host whose database role owns nothing and may not create roles runs `sql`
//! projections once the database owner has prepared their roles with `projector migrate
//! --config FILE --host-role ROLE`; it refuses to start, naming that command, when the config
//! asks for grants nobody prepared; and the roles end up as docs/security.md says.

use crate::common;

use common::*;
use serde_json::json;
use sqlx::Connection;

const SCHEMA: &str = "
CREATE TABLE allowed (id int PRIMARY KEY, note text);
CREATE TABLE secret (id int PRIMARY KEY, note text);
";

fn config(dir: &std::path::Path, tables: &str) -> std::path::PathBuf {
    write_file(
        dir,
        "projector.toml",
        format!(
            "[[projection]]\nname = \"probe\"\nplugin = \"{}\"\n[projection.grants]\nsql_tables = [{tables}]\n\n\
             [[projection]]\nname = \"plain\"\nplugin = \"{}\"\n",
            plugin("sql_probe").display(),
            plugin("scripted").display()
        ),
    )
}

/// `url` with another user and password.
fn as_user(url: &str, user: &str, password: &str) -> String {
    let rest = url.split_once('@').expect("user@host in the URL").1;
    format!("postgres://{user}:{password}@{rest}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_without_createrole_runs_sql_projections_the_owner_prepared() {
    let db = TestDb::new().await;
    db.migrate();
    sqlx::raw_sql(SCHEMA).execute(&db.pool).await.unwrap();
    let host_role = format!("host_{}", &db.name[2..14]);
    sqlx::raw_sql(&format!(
        "CREATE ROLE {host_role} LOGIN PASSWORD 'pw' NOSUPERUSER NOCREATEROLE NOCREATEDB"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let host_url = as_user(&db.url, &host_role, "pw");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "\"allowed\"");

    // Before the owner prepared anything, the host may not do it itself: exit 2, naming the
    // command to run.
    let out = run_projector(
        &["run", "--config", cfg.to_str().unwrap()],
        &[
            ("DATABASE_URL", host_url.as_str()),
            ("OUTBOX_RUN_SECONDS", "1"),
        ],
    );
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains(&format!(
            "projector migrate --config FILE --host-role {host_role}"
        )),
        "{text}"
    );

    // The owner prepares; the host then delivers both projections.
    let out = run_projector(
        &[
            "migrate",
            "--database-url",
            &db.url,
            "--config",
            cfg.to_str().unwrap(),
            "--host-role",
            &host_role,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    insert_events(
        &db.pool,
        &[
            NewEvent::new(
                "probe",
                "a",
                json!({"statements": [{"sql": "INSERT INTO allowed VALUES (1, 'ok')", "params": []}]}),
            ),
            NewEvent::new("plain", "b", json!({"outcome": "success"})),
        ],
    )
    .await;
    let mut host = Host::start(&host_url, &["--config", cfg.to_str().unwrap()], &[]);
    host.wait_ready(PATIENCE);
    assert_eq!(wait_settled(&db.pool, "probe", 1, PATIENCE).await.done, 1);
    assert_eq!(wait_settled(&db.pool, "plain", 1, PATIENCE).await.done, 1);
    let ids: Vec<i32> = sqlx::query_scalar("SELECT id FROM allowed")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(ids, vec![1]);
    drop(host);

    // The host's role: no attribute beyond LOGIN, owns nothing, reads no application table.
    let (super_, createrole, owned): (bool, bool, i64) = sqlx::query_as(
        "SELECT r.rolsuper, r.rolcreaterole,
                (SELECT count(*) FROM pg_class WHERE relowner = r.oid)
              + (SELECT count(*) FROM pg_proc WHERE proowner = r.oid)
              + (SELECT count(*) FROM pg_namespace WHERE nspowner = r.oid)
         FROM pg_roles r WHERE rolname = $1",
    )
    .bind(&host_role)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((super_, createrole, owned), (false, false, 0));
    let mut conn = sqlx::PgConnection::connect(&host_url).await.unwrap();
    let err = sqlx::query("SELECT * FROM secret")
        .fetch_all(&mut conn)
        .await
        .expect_err("the host role reads no application table");
    assert!(err.to_string().contains("permission denied"), "{err}");
    conn.close().await.ok();

    // A config granting more than the owner prepared: the host refuses, says what differs.
    let wider = config(dir.path(), "\"allowed\", \"secret\"");
    let out = run_projector(
        &["run", "--config", wider.to_str().unwrap()],
        &[
            ("DATABASE_URL", host_url.as_str()),
            ("OUTBOX_RUN_SECONDS", "1"),
        ],
    );
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("public.secret") && text.contains("projector migrate"),
        "{text}"
    );
    let secret_grants: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.role_table_grants WHERE table_name = 'secret'
         AND grantee LIKE 'projector\\_probe\\_%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(secret_grants, 0, "nothing was granted by the refused start");
}
