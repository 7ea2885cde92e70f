//! A headless Chromium for end-to-end tests of web pages (the chat widget,
//! the admin UI), driven through chromedriver's W3C WebDriver HTTP API.
//!
//! WebDriver over plain HTTP with `reqwest` rather than a WebDriver or CDP
//! client crate: the handful of commands a test needs (navigate, execute a
//! script, new window, screenshot, choose a file) are one JSON request each, and a test
//! harness gains nothing from a large async dependency tree it would have
//! to keep in step with Chromium.
//!
//! [`Browser::start`] runs a private chromedriver (in its own process
//! group, stopped with the browser it launched on drop) and opens one
//! session on Debian's `/usr/bin/chromium` with a throwaway profile.
//! [`Tab`]s are windows of that one session, so they share cookies and
//! `localStorage` like tabs of one real browser do: a test can open a page
//! twice and watch one tab react to the other. Everything panics on failure
//! with chromedriver's reply, and the browser's console where it helps,
//! because a panic is the clearest failure of a test.
//!
//! `scripts/test` installs Chromium and chromedriver on a fresh machine
//! (`ensure_chromium` in `scripts/lib.sh`).

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex as StdMutex},
    time::{Duration, Instant},
};

use base64::Engine as _;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::Mutex;

use crate::process::{self, START_TIMEOUT};

/// Where Debian's `chromium-driver` puts chromedriver; overridden by
/// `OMNID_TEST_CHROMEDRIVER`.
const DEFAULT_CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Debian's `chromium`; overridden by `OMNID_TEST_CHROMIUM`. Given to
/// chromedriver explicitly so that it never picks up some other Chrome
/// found on the machine, whose version would not match the driver.
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";
/// How often [`Tab::wait_for`] re-evaluates its condition: often enough
/// that a test does not wait noticeably longer than the page, rarely
/// enough not to compete with the page for a CPU.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// The limit on one page load and one asynchronous script. Generous for a
/// loaded CI machine; a page that takes longer is broken.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How many free ports chromedriver is tried on: the port is free when
/// picked, not reserved, so a parallel test can take it first.
const START_ATTEMPTS: usize = 5;
/// The key of a W3C WebDriver element reference (`{"element-6066-...": id}`).
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium under a private chromedriver, with one WebDriver
/// session. Tabs keep the browser alive; it is shut down (session deleted,
/// chromedriver's process group stopped, profile removed) when the
/// `Browser` and every [`Tab`] of it are dropped.
pub struct Browser {
    session: Arc<Session>,
    first: String,
}

/// One window of a [`Browser`]'s session. Cheap to clone; commands on two
/// tabs of one browser are serialised, since WebDriver acts on a session's
/// current window and each command first switches to its tab's.
#[derive(Clone)]
pub struct Tab {
    session: Arc<Session>,
    handle: String,
}

/// The shared state of a browser: the driver process and the session.
struct Session {
    http: reqwest::Client,
    port: u16,
    /// `http://127.0.0.1:<port>/session/<id>`.
    url: String,
    id: String,
    /// The window the session currently acts on. Held across "switch to
    /// my window" and the command itself so that another tab cannot
    /// switch away in between.
    current: Mutex<String>,
    child: StdMutex<Child>,
    /// chromedriver's log and Chromium's profile; removed last.
    dir: TempDir,
}

/// A WebDriver error reply, or a transport failure, with what was asked.
#[derive(Debug)]
struct CommandError {
    command: String,
    /// The W3C error code (`javascript error`, `no such window`, ...), or
    /// `transport` / `bad reply` for failures below WebDriver.
    error: String,
    message: String,
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.command, self.error, self.message)
    }
}

impl std::error::Error for CommandError {}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("port", &self.session.port)
            .field("session", &self.session.id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Tab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tab")
            .field("session", &self.session.id)
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a session on
    /// a fresh headless Chromium (1280x900, no sandbox so that it runs as
    /// root in a container, no GPU, no `/dev/shm` since containers give it
    /// 64 MB).
    ///
    /// # Panics
    ///
    /// If chromedriver or Chromium is not installed (with a hint how to
    /// install them), or either fails to start (with chromedriver's log).
    pub async fn start() -> Browser {
        let driver = binary("OMNID_TEST_CHROMEDRIVER", DEFAULT_CHROMEDRIVER);
        let chromium = binary("OMNID_TEST_CHROMIUM", DEFAULT_CHROMIUM);
        let dir = tempfile::Builder::new()
            .prefix("omnid-browser-")
            .tempdir()
            .expect("create the browser's temp directory");
        let http = reqwest::Client::builder()
            .timeout(COMMAND_TIMEOUT + Duration::from_secs(30))
            .build()
            .expect("build an HTTP client");

        let mut failures = Vec::new();
        let (child, port) = loop {
            let port = process::free_port();
            match spawn_driver(&driver, port, &dir, &http).await {
                Ok(child) => break (child, port),
                Err(why) => failures.push(format!("port {port}: {why}")),
            }
            if failures.len() >= START_ATTEMPTS {
                panic!(
                    "chromedriver {} did not start:\n{}\n--- chromedriver log ---\n{}",
                    driver.display(),
                    failures.join("\n"),
                    driver_log(&dir)
                );
            }
        };

        let profile = dir.path().join("profile");
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "timeouts": {
                        "pageLoad": COMMAND_TIMEOUT.as_millis() as u64,
                        "script": COMMAND_TIMEOUT.as_millis() as u64,
                    },
                    "goog:chromeOptions": {
                        "binary": chromium.display().to_string(),
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            "--window-size=1280,900",
                            "--no-first-run",
                            "--no-default-browser-check",
                            format!("--user-data-dir={}", profile.display()),
                        ],
                    },
                    "goog:loggingPrefs": { "browser": "ALL" },
                }
            }
        });
        let base = format!("http://127.0.0.1:{port}");
        let created = request(
            &http,
            reqwest::Method::POST,
            &format!("{base}/session"),
            Some(&capabilities),
        )
        .await;
        let mut child = StdMutex::new(child);
        let created = match created {
            Ok(value) => value,
            Err(e) => {
                process::stop_group(child.get_mut().unwrap_or_else(|p| p.into_inner()));
                panic!(
                    "Chromium {} did not start: {e}\n--- chromedriver log ---\n{}",
                    chromium.display(),
                    driver_log(&dir)
                );
            }
        };
        let Some(id) = created.get("sessionId").and_then(Value::as_str) else {
            process::stop_group(child.get_mut().unwrap_or_else(|p| p.into_inner()));
            panic!("chromedriver's new session has no sessionId: {created}");
        };
        let session = Arc::new(Session {
            http,
            port,
            url: format!("{base}/session/{id}"),
            id: id.to_owned(),
            current: Mutex::new(String::new()),
            child,
            dir,
        });
        let first = session
            .call(reqwest::Method::GET, "/window", None)
            .await
            .unwrap_or_else(|e| session.fail(e));
        let first = handle_of(&first, "GET /window");
        *session.current.lock().await = first.clone();
        Browser { session, first }
    }

    /// The tab the browser opened with.
    pub async fn tab(&self) -> Tab {
        Tab {
            session: Arc::clone(&self.session),
            handle: self.first.clone(),
        }
    }

    /// Opens another tab (a W3C new window of type `tab`) in the same
    /// session, at `about:blank`. It shares cookies and storage with the
    /// other tabs.
    pub async fn new_tab(&self) -> Tab {
        let created = self
            .session
            .call(
                reqwest::Method::POST,
                "/window/new",
                Some(&json!({ "type": "tab" })),
            )
            .await
            .unwrap_or_else(|e| self.session.fail(e));
        let handle = match created.get("handle") {
            Some(handle) => handle_of(handle, "POST /window/new"),
            None => panic!("POST /window/new: reply without a handle: {created}"),
        };
        Tab {
            session: Arc::clone(&self.session),
            handle,
        }
    }

    /// The browser's console messages since the last call (each of them
    /// read once: chromedriver hands over and forgets them), one line per
    /// message with its level. Messages of all tabs are interleaved.
    pub async fn console_log(&self) -> String {
        self.session.console_log().await
    }
}

impl Tab {
    /// Navigates to `url` and returns once the page has loaded (its `load`
    /// event).
    pub async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(&json!({ "url": url })))
            .await
            .unwrap_or_else(|e| self.session.fail(e));
    }

    /// Reloads the page and returns once it has loaded again.
    pub async fn reload(&self) {
        self.command(reqwest::Method::POST, "/refresh", Some(&json!({})))
            .await
            .unwrap_or_else(|e| self.session.fail(e));
    }

    /// Runs `script` as the body of a function called with `args`
    /// (`arguments[0]`, ...) and returns what it `return`s, as JSON (DOM
    /// elements come back as WebDriver element references).
    ///
    /// # Panics
    ///
    /// If the script throws, with the error and the browser's console.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.try_execute("/execute/sync", script, args)
            .await
            .unwrap_or_else(|e| self.session.fail(e))
    }

    /// Runs `script` like [`Tab::execute`] with one more argument last, a
    /// callback: the result is the value the script passes to it (within
    /// a minute).
    pub async fn execute_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.try_execute("/execute/async", script, args)
            .await
            .unwrap_or_else(|e| self.session.fail(e))
    }

    /// Evaluates the JavaScript expression `js_condition` every 50 ms until
    /// it is truthy, and returns its value. A condition that throws (an
    /// element not there yet) counts as not yet true.
    ///
    /// # Panics
    ///
    /// After `timeout`, naming `what` was awaited, with the condition's
    /// last value or error and the browser's console.
    pub async fn wait_for(&self, what: &str, js_condition: &str, timeout: Duration) -> Value {
        let script = format!("return ({js_condition});");
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.try_execute("/execute/sync", &script, Vec::new()).await {
                Ok(value) if truthy(&value) => return value,
                Ok(value) => format!("last value: {value}"),
                Err(e) => format!("last error: {e}"),
            };
            if Instant::now() >= deadline {
                let url = self
                    .try_execute("/execute/sync", "return location.href;", Vec::new())
                    .await
                    .map_or_else(|e| format!("(unknown: {e})"), |v| v.to_string());
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n\
                     condition: {js_condition}\n{last}\npage: {url}\n\
                     --- browser console ---\n{}",
                    self.session.console_log().await
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// A PNG screenshot of the tab's viewport.
    pub async fn screenshot_png(&self) -> Vec<u8> {
        let encoded = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await
            .unwrap_or_else(|e| self.session.fail(e));
        let Some(encoded) = encoded.as_str() else {
            panic!("GET /screenshot: expected a base64 string, got {encoded}");
        };
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap_or_else(|e| panic!("GET /screenshot: invalid base64: {e}"))
    }

    /// Chooses `files` in the `<input type=file>` that `css_selector`
    /// finds, as a visitor picking them in the file dialog would (the page
    /// gets its `input` and `change` events). WebDriver's "send keys" with
    /// the paths, one per line: the only way a page's file input can be
    /// given a file, since scripts may not set its value. The input may be
    /// hidden behind a button of the page's own.
    ///
    /// # Panics
    ///
    /// If nothing matches, the element is not a file input, or a file does
    /// not exist.
    pub async fn choose_files(&self, css_selector: &str, files: &[&Path]) {
        let found = self
            .command(
                reqwest::Method::POST,
                "/element",
                Some(&json!({ "using": "css selector", "value": css_selector })),
            )
            .await
            .unwrap_or_else(|e| self.session.fail(e));
        let Some(element) = found.get(ELEMENT_KEY).and_then(Value::as_str) else {
            panic!("POST /element {css_selector:?}: reply without an element: {found}");
        };
        let text = files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join("\n");
        self.command(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(&json!({ "text": text })),
        )
        .await
        .unwrap_or_else(|e| self.session.fail(e));
    }

    async fn try_execute(
        &self,
        endpoint: &str,
        script: &str,
        args: Vec<Value>,
    ) -> Result<Value, CommandError> {
        let body = json!({ "script": script, "args": args });
        self.command(reqwest::Method::POST, endpoint, Some(&body))
            .await
    }

    /// Switches the session to this tab if another one is current, then
    /// runs the command, holding the session's window lock throughout.
    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CommandError> {
        let mut current = self.session.current.lock().await;
        if *current != self.handle {
            self.session
                .call(
                    reqwest::Method::POST,
                    "/window",
                    Some(&json!({ "handle": self.handle })),
                )
                .await?;
            current.clone_from(&self.handle);
        }
        self.session.call(method, path, body).await
    }
}

impl Session {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CommandError> {
        request(&self.http, method, &format!("{}{path}", self.url), body).await
    }

    async fn console_log(&self) -> String {
        let entries = match self
            .call(
                reqwest::Method::POST,
                "/se/log",
                Some(&json!({ "type": "browser" })),
            )
            .await
        {
            Ok(entries) => entries,
            Err(e) => return format!("(unavailable: {e})"),
        };
        let lines: Vec<String> = entries
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|entry| {
                        let level = entry.get("level").and_then(Value::as_str).unwrap_or("?");
                        let message = entry
                            .get("message")
                            .and_then(Value::as_str)
                            .map_or_else(|| entry.to_string(), str::to_owned);
                        format!("{level} {message}")
                    })
                    .collect()
            })
            .unwrap_or_default();
        if lines.is_empty() {
            "(empty)".to_owned()
        } else {
            lines.join("\n")
        }
    }

    fn fail(&self, error: CommandError) -> ! {
        panic!(
            "WebDriver {error}\n--- chromedriver log ---\n{}",
            driver_log(&self.dir)
        );
    }
}

impl Drop for Session {
    /// Ends the session first, so that chromedriver quits Chromium the
    /// orderly way (Chromium's processes are not all in chromedriver's
    /// process group), then stops chromedriver's group. Blocking std I/O:
    /// a drop may run on the runtime's thread and cannot await.
    fn drop(&mut self) {
        delete_session(self.port, &self.id);
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        process::stop_group(child);
    }
}

/// The binary named by `var`, or `default`; panics with how to install
/// it when it is missing.
fn binary(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    if !path.is_file() {
        panic!(
            "{} not found (set {var} or install Debian's chromium and chromium-driver: \
             `bash -c '. scripts/lib.sh; ensure_chromium'`)",
            path.display()
        );
    }
    path
}

/// Runs chromedriver on `port` in its own process group and waits until
/// its `/status` says it is ready; on failure it is stopped and the reason
/// returned.
async fn spawn_driver(
    driver: &PathBuf,
    port: u16,
    dir: &TempDir,
    http: &reqwest::Client,
) -> Result<Child, String> {
    use std::os::unix::process::CommandExt as _;

    let mut child = Command::new(driver)
        .arg(format!("--port={port}"))
        .arg(format!(
            "--log-path={}",
            dir.path().join("chromedriver.log").display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let status_url = format!("http://127.0.0.1:{port}/status");
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let _ = child.wait();
                return Err(format!("exited with {status}"));
            }
            Err(e) => {
                process::stop_group(&mut child);
                return Err(format!("wait: {e}"));
            }
            Ok(None) => {}
        }
        if let Ok(status) = request(http, reqwest::Method::GET, &status_url, None).await
            && status.get("ready").and_then(Value::as_bool) == Some(true)
        {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            process::stop_group(&mut child);
            return Err(format!("not ready within {START_TIMEOUT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One WebDriver request: the reply's `value` on success, the W3C error
/// (`{"value": {"error", "message"}}`) otherwise.
async fn request(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<&Value>,
) -> Result<Value, CommandError> {
    let command = format!("{method} {url}");
    let fail = |error: &str, message: String| CommandError {
        command: command.clone(),
        error: error.to_owned(),
        message,
    };
    let mut builder = http.request(method.clone(), url);
    if let Some(body) = body {
        builder = builder
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = builder
        .send()
        .await
        .map_err(|e| fail("transport", e.to_string()))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| fail("transport", e.to_string()))?;
    let reply: Value = serde_json::from_slice(&bytes).map_err(|e| {
        fail(
            "bad reply",
            format!("{status}: {e}: {}", String::from_utf8_lossy(&bytes)),
        )
    })?;
    let value = reply.get("value").cloned().unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(value);
    }
    let error = value
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("unknown error");
    let message = value
        .get("message")
        .and_then(Value::as_str)
        .map_or_else(|| value.to_string(), str::to_owned);
    Err(fail(error, format!("{status}: {message}")))
}

/// A window handle out of a WebDriver reply.
fn handle_of(value: &Value, command: &str) -> String {
    match value.as_str() {
        Some(handle) => handle.to_owned(),
        None => panic!("{command}: expected a window handle, got {value}"),
    }
}

/// JavaScript's truthiness of a JSON value (objects and arrays, including
/// DOM element references, are truthy).
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0 && !n.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// `DELETE /session/<id>` with blocking std I/O, best effort: the caller
/// stops chromedriver regardless.
fn delete_session(port: u16, id: &str) {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let request = format!(
        "DELETE /session/{id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_ok() {
        // chromedriver answers once Chromium has quit, and keeps the
        // connection open regardless of `Connection: close`: the first
        // bytes of the reply are all there is to wait for.
        let mut reply = [0u8; 512];
        let _ = stream.read(&mut reply);
    }
}

/// The end of chromedriver's log, for panic messages.
fn driver_log(dir: &TempDir) -> String {
    let path = dir.path().join("chromedriver.log");
    if fs::metadata(&path).is_err() {
        return "(no log)".to_owned();
    }
    process::tail(&path, 8 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::{Router, response::Html, routing::get};

    const PAGE: &str = r#"<!doctype html>
<html><head><title>first page</title></head>
<body><p id="greeting">hello</p>
<script>
  console.log("page script ran");
  setTimeout(() => { document.body.dataset.ready = "yes"; }, 300);
</script>
</body></html>"#;

    const OTHER: &str = r#"<!doctype html>
<html><head><title>other page</title></head><body>other</body></html>"#;

    /// A hidden file input that reports what was chosen, as the chat
    /// widget's behind its paperclip button.
    const UPLOAD: &str = r#"<!doctype html>
<html><head><title>upload</title></head>
<body><input type="file" id="pick" multiple hidden>
<script>
  document.getElementById("pick").addEventListener("change", async (ev) => {
    const files = Array.from(ev.target.files);
    const texts = await Promise.all(files.map((f) => f.text()));
    document.body.dataset.chosen = JSON.stringify(files.map((f, i) => [f.name, f.size, texts[i]]));
  });
</script>
</body></html>"#;

    /// Serves `/` and `/other` on a free loopback port, on the test's
    /// runtime (which runs it while the test awaits chromedriver).
    async fn serve() -> String {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let address = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/", get(|| async { Html(PAGE) }))
            .route("/other", get(|| async { Html(OTHER) }))
            .route("/upload", get(|| async { Html(UPLOAD) }));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{address}")
    }

    #[tokio::test]
    async fn drives_a_page_scripts_reload_and_screenshot() {
        let base = serve().await;
        let browser = Browser::start().await;
        let tab = browser.tab().await;
        tab.goto(&format!("{base}/")).await;

        assert_eq!(
            tab.execute("return document.title;", vec![]).await,
            "first page"
        );
        assert_eq!(
            tab.execute(
                "return arguments[0] + arguments[1];",
                vec![json!(2), json!(3)]
            )
            .await,
            5
        );
        let doubled = tab
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 setTimeout(() => done(arguments[0] * 2), 50);",
                vec![json!(21)],
            )
            .await;
        assert_eq!(doubled, 42);

        let ready = tab
            .wait_for(
                "the page's timer",
                "document.body.dataset.ready",
                Duration::from_secs(10),
            )
            .await;
        assert_eq!(ready, "yes");
        // A condition that throws until it doesn't.
        let text = tab
            .wait_for(
                "the greeting",
                "document.querySelector('#greeting').textContent",
                Duration::from_secs(10),
            )
            .await;
        assert_eq!(text, "hello");

        tab.execute(
            "window.marker = 1; localStorage.setItem('kept', 'yes');",
            vec![],
        )
        .await;
        tab.reload().await;
        assert_eq!(
            tab.execute("return [typeof window.marker, localStorage.getItem('kept'), document.body.dataset.ready || null];", vec![])
                .await,
            json!(["undefined", "yes", null])
        );

        let png = tab.screenshot_png().await;
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "not a PNG: {:?}",
            png.get(..16)
        );
        // IHDR's width: the viewport is as wide as the window.
        let width = png
            .get(16..20)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        assert_eq!(width, Some(1280));

        assert!(browser.console_log().await.contains("page script ran"));
    }

    #[tokio::test]
    async fn tabs_share_storage_and_keep_their_own_page() {
        let base = serve().await;
        let browser = Browser::start().await;
        let first = browser.tab().await;
        first.goto(&format!("{base}/")).await;
        first
            .execute("localStorage.setItem('from', 'first tab');", vec![])
            .await;

        let second = browser.new_tab().await;
        second.goto(&format!("{base}/other")).await;
        assert_eq!(
            second
                .execute("return localStorage.getItem('from');", vec![])
                .await,
            "first tab"
        );
        second
            .execute("localStorage.setItem('back', 'second tab');", vec![])
            .await;

        // Each command runs in its own tab's window.
        assert_eq!(
            first.execute("return document.title;", vec![]).await,
            "first page"
        );
        assert_eq!(
            second.execute("return document.title;", vec![]).await,
            "other page"
        );
        assert_eq!(
            first
                .wait_for(
                    "the second tab's write",
                    "localStorage.getItem('back')",
                    Duration::from_secs(5),
                )
                .await,
            "second tab"
        );
        assert_ne!(first.handle, second.handle);
    }

    #[tokio::test]
    async fn files_are_chosen_in_a_hidden_file_input() {
        let base = serve().await;
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first.txt");
        let second = dir.path().join("second file.txt");
        fs::write(&first, "one").unwrap();
        fs::write(&second, "and two").unwrap();
        let browser = Browser::start().await;
        let tab = browser.tab().await;
        tab.goto(&format!("{base}/upload")).await;

        tab.choose_files("#pick", &[&first, &second]).await;
        let chosen = tab
            .wait_for(
                "the change event",
                "document.body.dataset.chosen",
                Duration::from_secs(10),
            )
            .await;
        let chosen: Value = serde_json::from_str(chosen.as_str().unwrap()).unwrap();
        assert_eq!(
            chosen,
            json!([["first.txt", 3, "one"], ["second file.txt", 7, "and two"]])
        );
    }

    #[tokio::test]
    async fn a_timed_out_wait_names_what_and_shows_the_console() {
        let base = serve().await;
        let browser = Browser::start().await;
        let tab = browser.tab().await;
        tab.goto(&format!("{base}/")).await;

        let waiting = tokio::spawn(async move {
            tab.wait_for(
                "a title that never comes",
                "document.title === 'never'",
                Duration::from_millis(300),
            )
            .await
        });
        let panic = waiting
            .await
            .expect_err("the wait must time out")
            .into_panic();
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(message.contains("a title that never comes"), "{message}");
        assert!(message.contains("last value: false"), "{message}");
        assert!(message.contains("page script ran"), "{message}");
        assert!(message.contains(&format!("{base}/")), "{message}");
    }

    #[test]
    fn truthiness_follows_javascript() {
        for falsy in [json!(null), json!(false), json!(0), json!(0.0), json!("")] {
            assert!(!truthy(&falsy), "{falsy}");
        }
        for truthy_value in [
            json!(true),
            json!(1),
            json!(-0.5),
            json!("0"),
            json!([]),
            json!({}),
        ] {
            assert!(truthy(&truthy_value), "{truthy_value}");
        }
    }
}
