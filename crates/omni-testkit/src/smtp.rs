//! A real SMTP server that keeps what it receives.

use std::fs;
use std::io::{BufRead as _, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{self, START_TIMEOUT};
use crate::tls;

/// Debian's interpreter, which has `python3-aiosmtpd`; the `python3` first
/// on PATH may be another one (pyenv) without it.
const PYTHON: &str = "/usr/bin/python3";
const SCRIPT: &str = include_str!("smtp_sink.py");

/// The login [`SmtpSink`] accepts for AUTH PLAIN and AUTH LOGIN.
pub const SMTP_LOGIN: &str = "sender";
/// The password that goes with [`SMTP_LOGIN`].
pub const SMTP_PASSWORD: &str = "sender-pw";

/// One message the sink accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The MAIL FROM address, without angle brackets (empty for `<>`).
    pub mail_from: String,
    /// The RCPT TO addresses, in the order given.
    pub rcpt_to: Vec<String>,
    /// The login the client authenticated as, if it did.
    pub auth: Option<String>,
    /// Whether the message came over STARTTLS.
    pub tls: bool,
    /// The message as sent after DATA, dot-unstuffed, line ends as sent.
    pub data: Vec<u8>,
}

/// An aiosmtpd SMTP server on a free loopback port that accepts every
/// message and stores it with its envelope, for tests of outbound mail.
///
/// It offers STARTTLS (certificate for `localhost`/127.0.0.1 from its own
/// CA, see [`ca_pem_path`](Self::ca_pem_path)) and AUTH PLAIN/LOGIN with
/// [`SMTP_LOGIN`]/[`SMTP_PASSWORD`], allowed without TLS, and requires
/// neither: each [`Received`] says what the client did. SMTPUTF8 is on.
///
/// The Python process is killed on drop. Starting takes about 300 ms.
#[derive(Debug)]
pub struct SmtpSink {
    dir: TempDir,
    ca_pem: String,
    ca_path: PathBuf,
    port: u16,
    child: Child,
}

impl SmtpSink {
    /// Starts the server and waits until it answers `220`.
    ///
    /// # Panics
    /// If aiosmtpd is not installed (`scripts/test` installs it) or the
    /// server does not come up within 30 s; the message carries its output.
    pub fn start() -> SmtpSink {
        assert!(
            Path::new(PYTHON).exists(),
            "{PYTHON} is missing: install Debian's python3-aiosmtpd \
             (scripts/test does, via ensure_mail_servers in scripts/lib.sh)"
        );
        let dir = tempfile::Builder::new()
            .prefix("omni-smtp-")
            .tempdir()
            .expect("create SMTP sink temp dir");
        let tls = tls::write_certificates(dir.path());
        let script = dir.path().join("smtp_sink.py");
        fs::write(&script, SCRIPT).expect("write smtp_sink.py");
        let messages = dir.path().join("messages");
        fs::create_dir(&messages).expect("create messages dir");
        let port_file = dir.path().join("port");
        let output = fs::File::create(dir.path().join("output.log")).expect("create output.log");

        let child = Command::new(PYTHON)
            .arg(&script)
            .arg(&messages)
            .arg(&port_file)
            .arg(&tls.cert_path)
            .arg(&tls.key_path)
            .arg(SMTP_LOGIN)
            .arg(SMTP_PASSWORD)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("clone output.log"))
            .stderr(output)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {PYTHON}: {e}"));
        let mut sink = SmtpSink {
            dir,
            ca_pem: tls.ca_pem,
            ca_path: tls.ca_path,
            port: 0,
            child,
        };

        let child = &mut sink.child;
        let ready = process::poll_until(START_TIMEOUT, || {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(Err(format!("exited with {status}")));
            }
            let port = fs::read_to_string(&port_file).ok()?.trim().parse().ok()?;
            greets(port).then_some(Ok(port))
        });
        match ready {
            Some(Ok(port)) => sink.port = port,
            Some(Err(why)) => panic!("SMTP sink did not start: {why}\n{}", sink.output()),
            None => panic!(
                "SMTP sink did not answer within {START_TIMEOUT:?}\n{}",
                sink.output()
            ),
        }
        sink
    }

    /// The SMTP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The PEM file of the CA that issued the STARTTLS certificate.
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_path
    }

    /// The same CA certificate, PEM-encoded.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        let dir = self.dir.path().join("messages");
        let mut names: Vec<String> = fs::read_dir(&dir)
            .expect("read messages dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".eml").map(str::to_owned))
            .collect();
        names.sort();
        names
            .iter()
            .map(|name| {
                let data = fs::read(dir.join(format!("{name}.eml"))).expect("read .eml");
                let meta =
                    fs::read_to_string(dir.join(format!("{name}.meta"))).expect("read .meta");
                parse_meta(&meta, data)
            })
            .collect()
    }

    /// The raw messages received so far, in arrival order.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.received().into_iter().map(|r| r.data).collect()
    }

    /// Waits until at least `n` messages arrived and returns all of them.
    ///
    /// # Panics
    /// After `timeout`, listing what did arrive and the server's output.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        process::poll_until(timeout, || {
            let received = self.received();
            (received.len() >= n).then_some(received)
        })
        .unwrap_or_else(|| {
            panic!(
                "SMTP sink: expected {n} messages within {timeout:?}, got {}:\n{:#?}\n{}",
                self.received().len(),
                self.received(),
                self.output()
            )
        })
    }

    fn output(&self) -> String {
        process::tail(&self.dir.path().join("output.log"), 16 * 1024)
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        process::stop_group(&mut self.child);
    }
}

fn parse_meta(meta: &str, data: Vec<u8>) -> Received {
    let mut received = Received {
        mail_from: String::new(),
        rcpt_to: Vec::new(),
        auth: None,
        tls: false,
        data,
    };
    for line in meta.lines() {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "mail_from" => received.mail_from = value.to_owned(),
            "rcpt_to" => received.rcpt_to.push(value.to_owned()),
            "auth" => received.auth = Some(value.to_owned()),
            "tls" => received.tls = value == "yes",
            _ => {}
        }
    }
    received
}

/// Whether an SMTP server greets with 220 on `port`.
fn greets(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let _ = BufReader::new(stream).read_line(&mut line);
    line.starts_with("220")
}
