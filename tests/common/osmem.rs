//! A throwaway search server: `osmem-server` (PyPI `osmem-server`, an in-memory server that
//! answers like OpenSearch), one per test, on a free port.
//!
//! It keeps everything in memory: stopping it loses every index, and starting it again on the
//! same port gives an empty server at the same URL (what the outage scenario needs: the host's
//! `ELASTIC_URL` stays valid).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{free_port, PATIENCE};

/// Where the `osmem-server` binary is: `OSMEM_SERVER_BIN`, `osmem-server` on `PATH`, or the one
/// bundled in the Python package (`pip install osmem-server` does not put it on `PATH`).
fn osmem_binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(bin) = std::env::var_os("OSMEM_SERVER_BIN") {
            return PathBuf::from(bin);
        }
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                let candidate = dir.join("osmem-server");
                if candidate.is_file() {
                    return candidate;
                }
            }
        }
        let out = Command::new("python3")
            .args([
                "-c",
                "import osmem_server; print(osmem_server.resolve_binary())",
            ])
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(out) if out.status.success() => {
                PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
            }
            _ => panic!(
                "osmem-server not found: `pip install osmem-server` (scripts/test does), put \
                 `osmem-server` on PATH, or set OSMEM_SERVER_BIN"
            ),
        }
    })
}

/// A running (or stopped) `osmem-server`; killed on drop.
pub struct Osmem {
    child: Option<Child>,
    /// Its port on 127.0.0.1, the same across restarts.
    pub port: u16,
    /// `http://127.0.0.1:PORT`, for `ELASTIC_URL`.
    pub url: String,
    agent: ureq::Agent,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Osmem {
    /// Starts a server on a free port and waits until it answers.
    pub fn start() -> Osmem {
        let port = free_port();
        let dir = tempfile::Builder::new()
            .prefix("projector-osmem-")
            .tempdir()
            .expect("temp dir");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .proxy(None)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let mut server = Osmem {
            child: None,
            port,
            url: format!("http://127.0.0.1:{port}"),
            agent,
            log_path: dir.path().join("osmem.log"),
            _dir: dir,
        };
        server.restart();
        server
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (its data is gone) and waits until the port refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
        let deadline = Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "osmem-server still answers on port {} after being killed",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the server (again) on the same port, empty, and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let log = File::options()
                .create(true)
                .append(true)
                .open(&self.log_path)
                .expect("osmem log file");
            let mut cmd = Command::new(osmem_binary());
            cmd.arg("-addr")
                .arg(format!("127.0.0.1:{}", self.port))
                .arg("-no-stdin-watch")
                // Gone with the test process, even if it is killed outright.
                .arg("-parent-pid")
                .arg(std::process::id().to_string())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log file"))
                .stderr(log);
            // SAFETY: prctl is async-signal-safe and touches nothing but the child.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let mut child = cmd.spawn().unwrap_or_else(|e| {
                panic!("spawn {}: {e}", osmem_binary().display());
            });
            // Ready once `GET /` answers; a quick exit means the port was not free (yet).
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if matches!(self.get("/"), Some((200, _))) {
                    self.child = Some(child);
                    return;
                }
                if Instant::now() >= deadline {
                    child.kill().ok();
                    child.wait().ok();
                    panic!(
                        "osmem-server did not answer on port {} within {PATIENCE:?}; log:\n{}",
                        self.port,
                        self.log_text()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(
                Instant::now() < deadline,
                "osmem-server could not start on port {}; log:\n{}",
                self.port,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What the server wrote so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut response = self.agent.get(format!("{}{path}", self.url)).call().ok()?;
        let status = response.status().as_u16();
        Some((
            status,
            response.body_mut().read_to_string().unwrap_or_default(),
        ))
    }

    /// `METHOD path` with an optional JSON body; returns the status and the decoded answer
    /// (`Value::Null` if it is not JSON). Panics if the server does not answer.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.url);
        let result = match body {
            Some(body) => {
                let request = match method {
                    "POST" => self.agent.post(&url),
                    "PUT" => self.agent.put(&url),
                    other => panic!("unsupported method with a body: {other}"),
                };
                request
                    .header("content-type", "application/json")
                    .send(body.to_string())
            }
            None => match method {
                "GET" => self.agent.get(&url).call(),
                "DELETE" => self.agent.delete(&url).call(),
                "POST" => self.agent.post(&url).send_empty(),
                other => panic!("unsupported method: {other}"),
            },
        };
        let mut response =
            result.unwrap_or_else(|e| panic!("{method} {url}: no answer from osmem-server: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Creates `index` with `mappings` (e.g. `{"properties": {"pages": {"type": "integer"}}}`).
    pub fn create_index(&self, index: &str, mappings: Value) {
        let (status, body) = self.request(
            "PUT",
            &format!("/{index}"),
            Some(&json!({ "mappings": mappings })),
        );
        assert_eq!(status, 200, "create index {index}: {body}");
    }

    /// Makes every write to `index` visible to search.
    pub fn refresh(&self, index: &str) {
        let (status, body) = self.request("POST", &format!("/{index}/_refresh"), None);
        assert_eq!(status, 200, "refresh {index}: {body}");
    }

    /// `GET index/_doc/id`: the document's `_source` and `_version`, or `None` if it does not
    /// exist.
    pub fn document(&self, index: &str, id: &str) -> Option<(Value, i64)> {
        let (status, body) = self.request("GET", &format!("/{index}/_doc/{id}"), None);
        match status {
            200 if body["found"] == json!(true) => Some((
                body["_source"].clone(),
                body["_version"].as_i64().expect("_version"),
            )),
            200 | 404 => None,
            other => panic!("GET {index}/_doc/{id}: {other} {body}"),
        }
    }

    /// Every document of `index` (refreshed first), by id. Empty if there is no such index.
    pub fn documents(&self, index: &str) -> BTreeMap<String, StoredDoc> {
        let (status, _) = self.request("GET", &format!("/{index}"), None);
        if status == 404 {
            return BTreeMap::new();
        }
        self.refresh(index);
        let (status, body) = self.request(
            "POST",
            &format!("/{index}/_search"),
            Some(&json!({"query": {"match_all": {}}, "size": 10000, "version": true})),
        );
        assert_eq!(status, 200, "search {index}: {body}");
        let hits = body["hits"]["hits"].as_array().expect("hits.hits");
        assert!(hits.len() < 10000, "more documents than one search returns");
        let docs: BTreeMap<String, StoredDoc> = hits
            .iter()
            .map(|h| {
                let doc = StoredDoc {
                    source: h["_source"].clone(),
                    version: h["_version"].as_i64().expect("_version"),
                };
                (h["_id"].as_str().expect("_id").to_owned(), doc)
            })
            .collect();
        assert_eq!(docs.len(), hits.len(), "duplicate ids in {index}");
        docs
    }
}

/// A document as the search server holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDoc {
    /// `_source`.
    pub source: Value,
    /// `_version` (the external version it was last written with).
    pub version: i64,
}

impl Drop for Osmem {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}
