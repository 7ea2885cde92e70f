//! The real `omnid` binary against a temporary config and data directory,
//! for end-to-end tests and benchmarks.
//!
//! A test that kills the daemon with SIGKILL, stops it with SIGTERM or runs
//! its CLI needs the binary, not the library: that is what this module runs.
//! Cargo tells a package's own tests where its binary is
//! (`CARGO_BIN_EXE_omnid`), but not another package's, and depending on
//! `omnid` builds its library only; so [`omnid_binary`] builds it.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, OnceLock, mpsc},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rustix::process::{Pid, Signal, kill_process};

use crate::process::poll_until;

/// The API channel's shared secret in every [`Deployment::new`].
pub const SECRET: &str = "integration-secret";
/// The API channel every [`Deployment::new`] has.
pub const CHANNEL: &str = "shop-api";

/// How long `omnid run` gets to listen: it opens the log, the stores and
/// every channel first, on a machine that may be compiling meanwhile.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `omnid` binary: `$OMNID_BIN` if set, else the one cargo builds for
/// the profile and target directory of the running test executable.
///
/// The build runs once per test process (cargo's own lock serialises it
/// with other builds; when the binary is fresh it only checks), with the
/// cargo that runs the tests. So `cargo test -p omnid-tests` works on a
/// clean checkout, and a test never runs a binary older than its source.
///
/// # Panics
/// If the build fails; the message carries cargo's output.
pub fn omnid_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| match std::env::var_os("OMNID_BIN") {
        Some(path) => PathBuf::from(path),
        None => build_omnid(),
    })
}

/// `cargo build -p omnid --bin omnid` into the test executable's own
/// target directory and profile (`<target>[/<triple>]/<profile>/deps/<test>`).
fn build_omnid() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in <target>/<profile>/deps");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(name) => name,
        None => panic!("no profile directory above {}", exe.display()),
    };
    let mut target_dir = profile_dir.parent().expect("a target directory");
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // Cross builds add the target triple between the two.
    if !target_dir.join("CACHEDIR.TAG").exists()
        && let (Some(triple), Some(parent)) = (target_dir.file_name(), target_dir.parent())
    {
        command.arg("--target").arg(triple);
        target_dir = parent;
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let output = command
        .args([
            "build",
            "--quiet",
            "-p",
            "omnid",
            "--bin",
            "omnid",
            "--profile",
            profile,
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", target_dir)
        .stdin(Stdio::null())
        .output()
        .expect("run cargo to build omnid");
    assert!(
        output.status.success(),
        "cargo build -p omnid failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let binary = profile_dir.join("omnid");
    assert!(binary.exists(), "no omnid at {}", binary.display());
    binary
}

/// A temporary deployment: config, channel files and data directory,
/// deleted on drop.
#[derive(Debug)]
pub struct Deployment {
    pub dir: tempfile::TempDir,
    /// Another binary than [`omnid_binary`] (a benchmark's release build).
    binary: Option<PathBuf>,
}

impl Default for Deployment {
    fn default() -> Self {
        Self::new()
    }
}

impl Deployment {
    /// A daemon on a free loopback port with one API channel, [`CHANNEL`]
    /// (secret [`SECRET`]), JSON logs and a one-second channel reload.
    pub fn new() -> Self {
        Self::with_config("")
    }

    /// A deployment whose `omnid.toml` ends with `extra` (more sections).
    pub fn with_config(extra: &str) -> Self {
        let deployment = Self::empty();
        std::fs::write(deployment.path().join("secret"), SECRET).unwrap();
        deployment.write_channel(CHANNEL, &format!("id = \"{CHANNEL}\"\nkind = \"api\"\nsecret = {{ file = \"{}\" }}\ndefault_region = \"IR\"\n", deployment.path().join("secret").display()));
        deployment.write_config(
            &(format!(
                "data_dir = \"{}\"\nshutdown_timeout_secs = 10\n[http]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 65536\n[channels]\ndir = \"{}\"\nreload_interval_secs = 1\n[rules]\ndir = \"{}\"\n[telemetry]\nlog_format = \"json\"\nlog_level = \"info\"\n",
                deployment.data_dir().display(),
                deployment.channels_dir().display(),
                deployment.rules_dir().display()
            ) + extra),
        );
        deployment
    }

    /// A directory with an empty `channels/` and no `omnid.toml` yet, for
    /// a caller that writes its own ([`write_config`](Self::write_config));
    /// the daemon must log JSON (`telemetry.log_format = "json"`) for
    /// [`start`](Self::start) to see it listen.
    pub fn empty() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("omnid-test-")
            .tempdir()
            .expect("tempdir");
        let deployment = Self { dir, binary: None };
        std::fs::create_dir_all(deployment.channels_dir()).unwrap();
        deployment
    }

    /// Runs `binary` instead of [`omnid_binary`].
    pub fn with_binary(mut self, binary: impl Into<PathBuf>) -> Self {
        self.binary = Some(binary.into());
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn config_path(&self) -> PathBuf {
        self.path().join("omnid.toml")
    }
    pub fn channels_dir(&self) -> PathBuf {
        self.path().join("channels")
    }
    /// The deployment's `rules.dir`; created by the first
    /// [`write_rules`](Self::write_rules).
    pub fn rules_dir(&self) -> PathBuf {
        self.path().join("rules")
    }
    pub fn data_dir(&self) -> PathBuf {
        self.path().join("data")
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// Turns on the `/v1/` API with bearer `token` (`http.api_token`, read
    /// from a file as a secret would be).
    pub fn enable_api(&self, token: &str) {
        let file = self.path().join("api-token");
        std::fs::write(&file, format!("{token}\n")).unwrap();
        let config = std::fs::read_to_string(self.config_path()).unwrap();
        let config = config.replacen(
            "[http]\n",
            &format!(
                "[http]\napi_token = {{ file = {:?} }}\n",
                file.display().to_string()
            ),
            1,
        );
        self.write_config(&config);
    }

    /// Adds an API channel `id` (the shared secret) whose senders' claims
    /// are trusted (`trust_sender = true`).
    pub fn add_trusted_channel(&self, id: &str) {
        self.write_channel(
            id,
            &format!(
                "id = \"{id}\"\nkind = \"api\"\nsecret = {{ file = \"{}\" }}\ntrust_sender = true\n",
                self.path().join("secret").display()
            ),
        );
    }

    pub fn write_channel(&self, name: &str, text: &str) {
        std::fs::write(self.channels_dir().join(format!("{name}.toml")), text).unwrap();
    }

    pub fn write_rules(&self, name: &str, text: &str) {
        std::fs::create_dir_all(self.rules_dir()).unwrap();
        std::fs::write(self.rules_dir().join(format!("{name}.toml")), text).unwrap();
    }

    /// `omnid --config <this deployment> <args>`, without the caller's
    /// `RUST_LOG` (the config's log level applies).
    pub fn command(&self, args: &[&str]) -> Command {
        let binary = self.binary.as_deref().unwrap_or_else(|| omnid_binary());
        let mut command = Command::new(binary);
        command
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .env_remove("RUST_LOG");
        command
    }

    /// Starts `omnid run` and waits until it listens.
    ///
    /// # Panics
    /// If it does not listen within a minute; the message carries its
    /// stderr.
    pub fn start(&self) -> Daemon {
        self.start_with_env(&[])
    }

    /// [`start`](Self::start) with more environment variables (an
    /// `LD_PRELOAD`ed fake clock, say).
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Daemon {
        let mut child = self
            .command(&["run"])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn omnid");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                    && value["message"] == "listening"
                {
                    let _ = tx.send(value["addr"].as_str().unwrap_or_default().to_owned());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "omnid did not start listening; stderr:\n{}",
                    lines.lock().unwrap().join("\n")
                );
            }
        };
        Daemon { child, addr, lines }
    }

    /// The records of `topic` from channel `channel`, through `omnid tail`.
    pub fn channel_records(&self, topic: &str, channel: &str) -> Vec<serde_json::Value> {
        self.tail(topic)
            .into_iter()
            .filter(|r| r["value"]["channelId"] == channel)
            .collect()
    }

    /// Every record of a topic, through `omnid tail`.
    pub fn tail(&self, topic: &str) -> Vec<serde_json::Value> {
        self.json_lines(&["tail", "--topic", topic])
    }

    /// A customer's timeline (`kind:value` of one of their handles),
    /// through `omnid timeline`.
    pub fn timeline(&self, handle: &str) -> Vec<serde_json::Value> {
        self.json_lines(&["timeline", handle])
    }

    /// What an `omnid` command printed, one JSON value per line.
    fn json_lines(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let output = self.command(args).output().expect("run omnid");
        assert!(
            output.status.success(),
            "omnid {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).expect("omnid prints JSON lines"))
            .collect()
    }
}

/// A running `omnid run`, killed on drop if still running.
#[derive(Debug)]
pub struct Daemon {
    pub child: Child,
    /// Where it listens (`127.0.0.1:port`).
    pub addr: String,
    /// Its stderr so far, one JSON log line each.
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let response = reqwest::get(self.url("/metrics"))
            .await
            .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
        response
            .text()
            .await
            .unwrap_or_else(|e| panic!("reading /metrics: {e}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: nothing in flight gets a chance to finish.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and the exit status once it has drained and exited.
    ///
    /// # Panics
    /// If it is still running after 15 s; the message carries its stderr.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(Signal::TERM);
        poll_until(Duration::from_secs(15), || self.child.try_wait().unwrap()).unwrap_or_else(
            || {
                panic!(
                    "omnid did not exit after SIGTERM; stderr:\n{}",
                    self.stderr()
                )
            },
        )
    }

    /// Stops it cleanly if it can (SIGTERM), with SIGKILL after 10 s: for
    /// a caller that needs it gone, not a test of the shutdown.
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal(Signal::TERM);
            if poll_until(Duration::from_secs(10), || {
                self.child.try_wait().ok().flatten()
            })
            .is_none()
            {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }

    fn signal(&self, signal: Signal) {
        let pid = Pid::from_child(&self.child);
        kill_process(pid, signal).expect("signal omnid");
    }

    pub fn stderr(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The last `n` lines of its stderr, for a failing test's message.
    pub fn last_lines(&self, n: usize) -> String {
        let lines = self.lines.lock().unwrap();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Polls `check` every 200 ms until it answers; panics with `what` and
    /// the daemon's last log lines after `within`.
    pub async fn eventually<T>(
        &self,
        what: &str,
        within: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(value) = check() {
                return value;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: not within {within:?}; daemon log (last lines):\n{}",
                self.last_lines(40)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An API channel message from `external_id` with a Persian sender and
/// phone number (written in Persian digits, which the channel normalises).
pub fn message(external_id: &str, text: &str) -> String {
    serde_json::json!({
        "external_id": external_id,
        "sender": { "kind": "phone", "value": "۰۹۱۲ ۱۲۳ ۴۵۶۷", "display_name": "سارا" },
        "text": text,
    })
    .to_string()
}

/// An `application/x-www-form-urlencoded` body of `params`, in order, as
/// Twilio and other form-posting providers send their webhooks.
pub fn form_body(params: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish()
}

/// A request signed the way the API channel documents.
pub fn signed(
    client: &reqwest::Client,
    url: &str,
    body: String,
    secret: &str,
) -> reqwest::RequestBuilder {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let signature = omni_api::signature::sign(secret.as_bytes(), now, body.as_bytes());
    client
        .post(url)
        .header("content-type", "application/json")
        .header("x-omnid-timestamp", now.to_string())
        .header("x-omnid-signature", signature)
        .body(body)
}
