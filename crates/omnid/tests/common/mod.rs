//! Runs the real `omnid` binary against a temporary config and data
//! directory, for integration tests.

#![allow(dead_code)]

pub mod kafka;
pub mod postgres;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

pub const SECRET: &str = "integration-secret";
pub const CHANNEL: &str = "shop-api";

/// A temporary deployment: config dir, channel files, data dir.
pub struct Deployment {
    pub dir: tempfile::TempDir,
}

impl Deployment {
    pub fn new() -> Self {
        Self::with_config("")
    }

    /// A deployment whose `omnid.toml` ends with `extra` (more sections).
    pub fn with_config(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let deployment = Self { dir };
        std::fs::create_dir_all(deployment.channels_dir()).unwrap();
        std::fs::write(deployment.path().join("secret"), SECRET).unwrap();
        deployment.write_channel(CHANNEL, &format!("id = \"{CHANNEL}\"\nkind = \"api\"\nsecret = {{ file = \"{}\" }}\ndefault_region = \"IR\"\n", deployment.path().join("secret").display()));
        std::fs::write(
            deployment.config_path(),
            format!(
                "data_dir = \"{}\"\nshutdown_timeout_secs = 10\n[http]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 65536\n[channels]\ndir = \"{}\"\nreload_interval_secs = 1\n[telemetry]\nlog_format = \"json\"\nlog_level = \"info\"\n",
                deployment.data_dir().display(),
                deployment.channels_dir().display()
            ) + extra,
        )
        .unwrap();
        deployment
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
    pub fn data_dir(&self) -> PathBuf {
        self.path().join("data")
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
        std::fs::write(self.config_path(), config).unwrap();
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

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_omnid"));
        command
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .env_remove("RUST_LOG");
        command
    }

    /// Starts `omnid run` and waits until it listens.
    pub fn start(&self) -> Daemon {
        let mut child = self
            .command(&["run"])
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
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "omnid did not start listening; stderr:\n{}",
                    lines.lock().unwrap().join("\n")
                );
            }
        };
        Daemon { child, addr, lines }
    }

    /// Every record of a topic, through `omnid tail`.
    pub fn tail(&self, topic: &str) -> Vec<serde_json::Value> {
        let output = self
            .command(&["tail", "--topic", topic])
            .output()
            .expect("run omnid tail");
        assert!(
            output.status.success(),
            "omnid tail failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).expect("tail prints JSON lines"))
            .collect()
    }
}

pub struct Daemon {
    pub child: Child,
    pub addr: String,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "omnid did not exit after SIGTERM; stderr:\n{}",
            self.stderr()
        );
    }

    pub fn stderr(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn message(external_id: &str, text: &str) -> String {
    serde_json::json!({
        "external_id": external_id,
        "sender": { "kind": "phone", "value": "۰۹۱۲ ۱۲۳ ۴۵۶۷", "display_name": "سارا" },
        "text": text,
    })
    .to_string()
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
