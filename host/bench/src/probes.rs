//! Measurements that need no host: the search server's own `_bulk` ceiling, and the plugin
//! runtime in-process (load from the compiled cache, instantiate, call).

use crate::plan::{Plan, Plugins};
use crate::workload::Document;
use projector_core::spec::{Grants, Ordering, ProjectionSpec, Tuning};
use projector_core::{Error, Result};
use projector_runtime::{Handler, Runtime};
use projector_store::outbox::{Claim, ClaimedEvent};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sends `docs` to `index` as `_bulk` requests of `plan.batch_size` operations (external
/// versions, as `search-index` sends them) from `plan.concurrency` clients. Returns documents per
/// second. Bodies are built before the clock starts: this is the server's ceiling.
pub async fn bulk_ceiling(url: &str, index: &str, docs: Vec<Document>, plan: &Plan) -> Result<f64> {
    let bodies: Vec<String> = docs
        .chunks(plan.batch_size as usize)
        .map(|chunk| {
            let mut body = String::new();
            for d in chunk {
                let meta = serde_json::json!({"index": {"_index": index, "_id": d.id,
                    "version": d.version, "version_type": "external"}});
                body.push_str(&meta.to_string());
                body.push('\n');
                body.push_str(&d.source);
                body.push('\n');
            }
            body
        })
        .collect();
    let total = docs.len();
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .proxy(None)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let endpoint = format!("{url}/_bulk");
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..plan.concurrency {
        let (bodies, next, agent, endpoint) = (
            bodies.clone(),
            next.clone(),
            agent.clone(),
            endpoint.clone(),
        );
        clients.push(tokio::task::spawn_blocking(
            move || -> Result<(), String> {
                loop {
                    let i = next.fetch_add(1, AtomicOrdering::Relaxed);
                    let Some(body) = bodies.get(i) else {
                        return Ok(());
                    };
                    let mut response = agent
                        .post(&endpoint)
                        .header("Content-Type", "application/x-ndjson")
                        .send(body.as_bytes())
                        .map_err(|e| format!("{endpoint}: {e}"))?;
                    let status = response.status().as_u16();
                    let text = response.body_mut().read_to_string().unwrap_or_default();
                    if status != 200 {
                        return Err(format!("{endpoint} answered {status}: {text}"));
                    }
                    let answer: serde_json::Value =
                        serde_json::from_str(&text).map_err(|e| format!("{endpoint}: {e}"))?;
                    let items = answer["items"].as_array().map(Vec::as_slice).unwrap_or(&[]);
                    for item in items {
                        let status = item["index"]["status"].as_u64().unwrap_or(0);
                        if !(200..300).contains(&status) && status != 409 {
                            return Err(format!("{endpoint}: an item answered {item}"));
                        }
                    }
                }
            },
        ));
    }
    for client in clients {
        client
            .await
            .map_err(|e| anyhow::anyhow!("bulk client panicked: {e}"))?
            .map_err(|e| Error::Other(anyhow::anyhow!("search ceiling: {e}")))?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Deletes `index` (the server keeps everything in memory); a failure only wastes its memory.
pub async fn delete_index(url: &str, index: &str) {
    let endpoint = format!("{url}/{index}");
    let _ = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .proxy(None)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        if let Err(e) = agent.delete(&endpoint).call() {
            tracing::warn!(index = %endpoint, error = %e, "could not delete the benchmark's index");
        }
    })
    .await;
}

/// What the in-process plugin probes measured.
pub struct PluginProbes {
    pub compile_ms: f64,
    pub cached_load_ms: f64,
    pub instantiate_ms: f64,
    pub per_event_us: f64,
    pub single_call_us: f64,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn event(seq: i64) -> ClaimedEvent {
    ClaimedEvent {
        seq,
        id: uuid::Uuid::new_v4(),
        event_type: "book.updated".into(),
        aggregate_type: "book".into(),
        aggregate_id: format!("book-{seq}"),
        payload: serde_json::json!({
            "title": format!("The benchmark book number {seq}"),
            "author": "Author 7",
            "content": "Chapter 3: lorem ipsum dolor sit amet lorem ipsum dolor sit amet lorem ipsum dolor sit amet",
            "tenantId": "tenant-1",
            "requestId": "0cc175b9c0f1b6a831c399e269772661",
            "source": "bench",
            "tags": ["fiction", "tag-3"],
        })
        .to_string(),
        headers: vec![],
        occurred_at: "2026-01-01T00:00:00.000000Z".into(),
        attempt: 1,
        reclaimed: false,
        too_large: None,
    }
}

/// Loads `noop` twice through a fresh compiled-component cache (compile, then cache hit), times
/// instantiating from its `InstancePre`, and times `handle` calls on a warm instance.
pub async fn plugin_probes(
    plugins: &Plugins,
    work: &Path,
    batch_size: usize,
) -> Result<PluginProbes> {
    let bytes = std::fs::read(&plugins.noop).map_err(|e| Error::Plugin {
        path: plugins.noop.clone(),
        message: format!("cannot read: {e}"),
    })?;
    let cache_dir = work.join("probe-cache");
    let origin = plugins.noop.clone();
    let spec = ProjectionSpec {
        name: "bench_probe".into(),
        plugin: origin.clone(),
        ordering: Ordering::Aggregate,
        tuning: Tuning {
            concurrency: 1,
            batch_size: batch_size as i64,
            ..projector_service::settings::default_tuning()
        },
        config: Default::default(),
        sources: Default::default(),
        grants: Grants::default(),
        memory_limit: 64 << 20,
    };
    tokio::task::spawn_blocking(move || -> Result<PluginProbes> {
        let runtime = Runtime::new()
            .map_err(|e| anyhow::anyhow!("starting the WebAssembly runtime: {e:#}"))?
            .with_cache(Some(&cache_dir));
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let first = runtime.load_bytes(&spec, "bench", &bytes, &origin)?;
        let compile_ms = ms(first.load_time);
        let mut loads = Vec::new();
        let mut plugin = first;
        for _ in 0..7 {
            plugin = runtime.load_bytes(&spec, "bench", &bytes, &origin)?;
            if plugin.compiled != projector_runtime::cache::Source::Hit {
                return Err(Error::Other(anyhow::anyhow!(
                    "the compiled-component cache in {} was not used",
                    cache_dir.display()
                )));
            }
            loads.push(ms(plugin.load_time));
        }
        let mut instantiations = Vec::new();
        for _ in 0..201 {
            let started = Instant::now();
            plugin
                .instantiate_probe()
                .map_err(|e| anyhow::anyhow!("instantiating noop: {e:#}"))?;
            instantiations.push(ms(started.elapsed()));
        }
        let claim = |n: usize| Claim {
            batch_id: uuid::Uuid::new_v4(),
            projection: "bench_probe".into(),
            events: (0..n as i64).map(event).collect(),
        };
        let mut handler = Handler::new(plugin);
        let budget = Duration::from_secs(60);
        let batch = claim(batch_size);
        let single = claim(1);
        handler.handle(&batch, budget); // instantiates
        let mut per_event = Vec::new();
        for _ in 0..51 {
            let started = Instant::now();
            let (verdicts, _) = handler.handle(&batch, budget);
            per_event.push(started.elapsed().as_secs_f64() * 1e6 / verdicts.len() as f64);
        }
        let mut singles = Vec::new();
        for _ in 0..201 {
            let started = Instant::now();
            handler.handle(&single, budget);
            singles.push(started.elapsed().as_secs_f64() * 1e6);
        }
        Ok(PluginProbes {
            compile_ms,
            cached_load_ms: median(loads),
            instantiate_ms: median(instantiations),
            per_event_us: median(per_event),
            single_call_us: median(singles),
        })
    })
    .await
    .map_err(|e| anyhow::anyhow!("plugin probes panicked: {e}"))?
}
