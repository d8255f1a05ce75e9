//! A real headless Chromium for the console's scenarios: Debian's `chromium` driven by its
//! `chromedriver` over the W3C WebDriver protocol (JSON over HTTP to the local driver, sent with
//! `ureq`, which the tests already use: the handful of commands a scenario needs, no client
//! crate whose features would rebuild half the dependency tree). `scripts/lib/setup.sh` installs both
//! when missing; without them a browser test fails (it does not skip), naming what to install.
//!
//! Every browser gets a fresh profile directory and runs in a process group of its own, which
//! is killed when the `Browser` is dropped (a failing test leaves no Chromium behind).
//! Screenshots go to `target/test-artifacts/` (not committed).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{free_port, repo_root};

/// Chromium's flags on this kind of machine: headless, no sandbox (tests run as root), and no
/// background traffic of its own.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1500",
];

/// How long a lookup waits for its element.
const ELEMENT_WAIT: Duration = Duration::from_secs(30);

/// The key under which WebDriver names an element.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A WebDriver session's endpoint: `http://127.0.0.1:<port>/session/<id>`.
#[derive(Clone)]
struct Session {
    agent: ureq::Agent,
    base: String,
}

impl Session {
    /// One WebDriver command; its `value`, or the driver's error and message.
    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let response = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or_else(|| json!({})).to_string().as_bytes()),
        };
        let mut response = response.map_err(|e| format!("{method} {url}: {e}"))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status == 200 {
            Ok(answer["value"].clone())
        } else {
            Err(format!(
                "{method} {path}: {status} {} {}",
                answer["value"]["error"], answer["value"]["message"]
            ))
        }
    }
}

/// A headless Chromium session.
pub struct Browser {
    session: Session,
    _driver: DriverGuard,
    _profile: tempfile::TempDir,
}

/// An element of the page.
pub struct Element {
    session: Session,
    id: String,
}

impl Element {
    /// Types `text` into it.
    pub async fn send_keys(&self, text: &str) -> Result<(), String> {
        let path = format!("/element/{}/value", self.id);
        self.session
            .command("POST", &path, Some(json!({"text": text})))
            .map(|_| ())
    }

    /// Empties it (an input).
    pub async fn clear(&self) -> Result<(), String> {
        let path = format!("/element/{}/clear", self.id);
        self.session.command("POST", &path, None).map(|_| ())
    }

    /// Clicks it.
    pub async fn click(&self) -> Result<(), String> {
        let path = format!("/element/{}/click", self.id);
        self.session.command("POST", &path, None).map(|_| ())
    }

    /// Its rendered text.
    pub async fn text(&self) -> Result<String, String> {
        let path = format!("/element/{}/text", self.id);
        let v = self.session.command("GET", &path, None)?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }
}

fn tool(var: &str, default: &str, package: &str) -> String {
    let path = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: install Debian's `{package}` (scripts/lib/setup.sh does) or set {var}"
    );
    path
}

impl Browser {
    /// Starts chromedriver on a free port and opens a session of a fresh headless Chromium.
    pub async fn start() -> Browser {
        use std::os::unix::process::CommandExt;
        let driver_bin = tool("CHROMEDRIVER", "/usr/bin/chromedriver", "chromium-driver");
        let chromium = tool("CHROMIUM", "/usr/bin/chromium", "chromium");
        let port = free_port();
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {driver_bin}: {e}"));
        let driver = DriverGuard(Some(driver));
        let profile = tempfile::tempdir().expect("a profile directory");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let root = Session {
            agent: agent.clone(),
            base: format!("http://127.0.0.1:{port}"),
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let created = root
            .command("POST", "/session", Some(caps))
            .unwrap_or_else(|e| panic!("a Chromium session through chromedriver: {e}"));
        let id = created["sessionId"].as_str().expect("a session id");
        Browser {
            session: Session {
                agent,
                base: format!("http://127.0.0.1:{port}/session/{id}"),
            },
            _driver: driver,
            _profile: profile,
        }
    }

    /// Loads `url` and waits for it.
    pub async fn goto(&self, url: &str) {
        self.session
            .command("POST", "/url", Some(json!({"url": url})))
            .unwrap_or_else(|e| panic!("load {url}: {e}"));
    }

    /// Saves a screenshot of the window as `target/test-artifacts/<name>.png`; returns the path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = repo_root().join("target/test-artifacts");
        std::fs::create_dir_all(&dir).expect("target/test-artifacts");
        let encoded = self
            .session
            .command("GET", "/screenshot", None)
            .unwrap_or_else(|e| panic!("a screenshot: {e}"));
        let png = base64_decode(encoded.as_str().expect("base64 text"));
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }

    /// The rendered text of the first element `css` matches, waiting up to 30 s for one. Read in
    /// one script, so a page that re-renders the element meanwhile cannot make it stale.
    pub async fn text(&self, css: &str) -> String {
        let deadline = Instant::now() + ELEMENT_WAIT;
        loop {
            let text = self
                .eval(
                    "const e = document.querySelector(arguments[0]); return e === null ? null : e.innerText;",
                    vec![json!(css)],
                )
                .await;
            if let Value::String(text) = text {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "no element {css} within {ELEMENT_WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The first element `css` matches, waiting up to 30 s for it.
    pub async fn wait_for(&self, css: &str) -> Element {
        let deadline = Instant::now() + ELEMENT_WAIT;
        loop {
            let found = self.session.command(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            );
            match found {
                Ok(v) => {
                    return Element {
                        session: self.session.clone(),
                        id: v[ELEMENT_KEY].as_str().expect("an element id").to_owned(),
                    };
                }
                Err(e) if Instant::now() >= deadline => {
                    panic!("no element {css} within {ELEMENT_WAIT:?}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Clicks the first element `css` matches (found again if the page re-rendered it between
    /// the lookup and the click).
    pub async fn click(&self, css: &str) {
        let deadline = Instant::now() + ELEMENT_WAIT;
        loop {
            match self.wait_for(css).await.click().await {
                Ok(()) => return,
                Err(e) if e.contains("stale element") && Instant::now() < deadline => continue,
                Err(e) => panic!("click {css}: {e}"),
            }
        }
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the page; its return value.
    pub async fn eval(&self, script: &str, args: Vec<Value>) -> Value {
        self.session
            .command(
                "POST",
                "/execute/sync",
                Some(json!({"script": script, "args": args})),
            )
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Polls `script` every 100 ms until it returns `true`; panics after `timeout`, naming `what`.
    pub async fn wait_true(&self, what: &str, timeout: Duration, script: &str) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(script, vec![]).await == Value::Bool(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting until {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ends the session (Chromium exits); chromedriver is stopped when `self` is dropped.
    pub async fn close(self) {
        let _ = self.session.command("DELETE", "", None);
    }
}

/// Decodes standard base64 (what WebDriver sends a screenshot as).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a') as u32 + 26,
            b'0'..=b'9' => (c - b'0') as u32 + 52,
            b'+' => 62,
            b'/' => 63,
            other => panic!("not base64: {:?}", other as char),
        }
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c) << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len() - 1]);
    }
    out
}

/// Kills chromedriver's process group (chromedriver and the Chromium it started) when dropped.
struct DriverGuard(Option<Child>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // The group id is the driver's pid (process_group(0)).
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }
}
