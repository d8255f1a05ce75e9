//! The compiled-component cache: a restarted host loads its plugin from the cache instead of
//! compiling it again, and a corrupted cache entry is recompiled, never used.

use crate::common;

use common::*;
use serde_json::json;

/// Starts a host on `cache`, waits until it is ready, and returns how it got its plugin
/// (`compiled` or `hit`) and how long loading took, from its "projection started" record.
fn start(db: &TestDb, cache: &std::path::Path) -> (Host, String, f64) {
    let mut host = Host::start(
        &db.url,
        &["--plugin", &plugin_spec("p", &plugin("scripted"))],
        &[("OUTBOX_PLUGIN_CACHE_DIR", cache.to_str().unwrap())],
    );
    host.wait_ready(PATIENCE);
    let lines = host.log_lines();
    let started = records_with_message(&lines, "projection started");
    let record = started.first().expect("a `projection started` record");
    let source = field_str(record, "compiled").expect("compiled field");
    let load_ms = field_f64(record, "load_ms").expect("load_ms field");
    (host, source, load_ms)
}

fn stop(mut host: Host) {
    host.sigterm();
    assert!(host.wait_exit(secs(30)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_host_loads_its_plugin_from_the_cache_and_a_corrupt_entry_is_recompiled() {
    let db = TestDb::new().await;
    db.migrate();
    let cache = tempfile::tempdir().unwrap();

    let (first, source, cold_ms) = start(&db, cache.path());
    assert_eq!(source, "compiled");
    stop(first);
    let (second, source, cached_ms) = start(&db, cache.path());
    assert_eq!(source, "hit", "second start loads from the cache");
    eprintln!("plugin load: compiled {cold_ms:.1} ms, from cache {cached_ms:.1} ms");
    stop(second);

    // Corrupt the artifact: the checksum no longer matches, so it is recompiled and rewritten.
    let artifact = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .expect("a cached artifact");
    let mut bytes = std::fs::read(&artifact).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&artifact, &bytes).unwrap();
    let (third, source, _) = start(&db, cache.path());
    assert_eq!(source, "compiled", "a corrupt entry is never used");
    assert!(third.log_text().contains("cache entry is corrupt"));
    insert_events(
        &db.pool,
        &[NewEvent::new("p", "a", json!({"outcome": "success"}))],
    )
    .await;
    assert_eq!(wait_settled(&db.pool, "p", 1, PATIENCE).await.done, 1);
    stop(third);
    let (fourth, source, _) = start(&db, cache.path());
    assert_eq!(source, "hit", "the rewritten entry is good again");
    stop(fourth);
}
