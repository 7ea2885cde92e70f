//! The email channel end to end against a local Dovecot: backlog ingestion
//! rate, the same backlog pulled by mbsync, and APPEND-to-durable-event
//! latency under IDLE. See docs/benchmarks.md ("Email channel") for how the
//! figures are taken and what they mean; `scripts/bench-email` installs
//! what is missing and runs this.
//!
//! ```sh
//! cargo bench -p omnid --bench email -- [--messages 10000] [--batch-sizes 100,500]
//!     [--runs 1] [--idle-messages 300] [--idle-interval-ms 200]
//!     [--only backlog|fetch|mbsync|idle] [--log-level warn] [--mbsync /usr/bin/mbsync]
//! ```
//!
//! One JSON line per measurement on stdout; progress and a header (cores,
//! commit, server versions) on stderr.
//!
//! - Backlog: N generated messages (plain text, multipart/alternative with
//!   HTML, a few with a 50 KB attachment) are APPENDed to alice's INBOX;
//!   then, per batch size and run, a real `omnid run` (the release binary
//!   cargo builds for this bench) on a fresh data directory ingests them.
//!   Time runs from spawning the daemon until the inbound topic holds N
//!   records, read through omni-log's own reader from this process (a
//!   record is visible to another connection only once its transaction
//!   committed, which with `synchronous=FULL` is after the WAL fsync).
//! - mbsync: Debian's isync pulls the same mailbox into a fresh Maildir
//!   (`FSync yes`, its default), timed.
//! - IDLE: with the last daemon idle (backlog done), one message is
//!   APPENDed every interval over a connection of our own; each latency
//!   runs from just before the APPEND command is written to the first
//!   poll (every millisecond) that finds its event in the log.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    path::Path,
    process::{Child, Command, ExitCode, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use omni_log::{EventLog, SqliteLog, SqliteLogConfig};
use omni_proto::{Message as _, v1};
use omni_testkit::{ALICE, Dovecot};
use serde_json::json;

const INBOUND: &str = "omni.inbound.v1";
const DEADLETTER: &str = "omni.deadletter.v1";
const CHANNEL: &str = "bench-mail";
const MBSYNC: &str = "/usr/bin/mbsync";

const USAGE: &str = "\
usage: cargo bench -p omnid --bench email -- [options]
  --messages N          backlog size (10000)
  --batch-sizes A,B     the daemon's imap.batch_size values to run (100,500)
  --runs N              repeat every backlog measurement N times (1)
  --idle-messages N     messages APPENDed under IDLE, 0 to skip (300)
  --idle-interval-ms N  between those APPENDs (200)
  --only PART           backlog, fetch, mbsync or idle alone
  --log-level FILTER    the daemon's log filter (warn)
  --mbsync PATH         the mbsync binary (/usr/bin/mbsync)";

#[derive(Debug)]
struct Options {
    messages: usize,
    batch_sizes: Vec<u32>,
    runs: usize,
    idle_messages: usize,
    idle_interval: Duration,
    only: Option<String>,
    log_level: String,
    mbsync: String,
}

impl Options {
    fn parse() -> Result<Options, String> {
        let mut options = Options {
            messages: 10_000,
            batch_sizes: vec![100, 500],
            runs: 1,
            idle_messages: 300,
            idle_interval: Duration::from_millis(200),
            only: None,
            log_level: "warn".to_owned(),
            mbsync: MBSYNC.to_owned(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            // `cargo bench` passes `--bench` to every bench binary.
            if arg == "--bench" {
                continue;
            }
            let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
            let number = |v: String| {
                v.parse::<u64>()
                    .map_err(|e| format!("{arg}: {e}: {v:?}"))
                    .map(|n| n as usize)
            };
            match arg.as_str() {
                "--help" | "-h" => return Err(USAGE.to_owned()),
                "--messages" => options.messages = number(value()?)?,
                "--runs" => options.runs = number(value()?)?.max(1),
                "--idle-messages" => options.idle_messages = number(value()?)?,
                "--idle-interval-ms" => {
                    options.idle_interval = Duration::from_millis(number(value()?)? as u64)
                }
                "--batch-sizes" => {
                    options.batch_sizes = value()?
                        .split(',')
                        .map(|s| s.trim().parse().map_err(|e| format!("{arg}: {e}: {s:?}")))
                        .collect::<Result<_, _>>()?
                }
                "--only" => {
                    let only = value()?;
                    if !["backlog", "fetch", "mbsync", "idle"].contains(&only.as_str()) {
                        return Err(format!(
                            "--only takes backlog, fetch, mbsync or idle, not {only}"
                        ));
                    }
                    options.only = Some(only);
                }
                "--log-level" => options.log_level = value()?,
                "--mbsync" => options.mbsync = value()?,
                _ => return Err(format!("unknown argument {arg}")),
            }
        }
        if options.messages == 0 || options.batch_sizes.is_empty() {
            return Err("--messages and --batch-sizes must not be empty".into());
        }
        Ok(options)
    }

    fn runs(&self, part: &str) -> bool {
        self.only.as_deref().is_none_or(|only| only == part)
    }
}

fn main() -> ExitCode {
    let options = match Options::parse() {
        Ok(options) => options,
        Err(e) if e == USAGE => {
            eprintln!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    eprintln!("# {}", header());

    let dovecot = Dovecot::start();
    let messages: Vec<Vec<u8>> = (0..options.messages)
        .map(|i| generate(i, "backlog"))
        .collect();
    let bytes: usize = messages.iter().map(Vec::len).sum();
    let started = Instant::now();
    dovecot.append_many(ALICE, "INBOX", &messages);
    let seeded = started.elapsed();
    emit(json!({
        "bench": "email_seed",
        "messages": messages.len(),
        "bytes": bytes,
        "mean_message_bytes": bytes / messages.len(),
        "with_attachment": (0..messages.len()).filter(|i| kind(*i) == Kind::Attachment).count(),
        "multipart_alternative": (0..messages.len()).filter(|i| kind(*i) == Kind::Html).count(),
        "append_secs": round(seeded.as_secs_f64()),
    }));
    drop(messages);

    let master = dovecot_master(&dovecot);
    if master.is_none() {
        eprintln!("# warning: Dovecot's master process not found; no imap CPU figures");
    }
    // The first pass over freshly appended mail makes Dovecot build its
    // index cache (sizes, dates, Message-IDs): measured once here, so that
    // every tool and batch size below meets the same warm server.
    let warm = raw_fetch(&dovecot, master, 100, true);
    emit(json!({
        "bench": "email_warmup",
        "tool": "raw_fetch",
        "heads_first": true,
        "batch_size": 100,
        "messages": warm.messages,
        "secs": round(warm.secs),
        "messages_per_sec": round(warm.messages as f64 / warm.secs),
        "imap_cpu_secs": round(warm.cpu.imap),
        "other_cpu_secs": round(warm.cpu.others),
    }));

    let mut idle_daemon: Option<Daemon> = None;
    for run in 1..=options.runs {
        if options.runs("backlog") {
            for &batch in &options.batch_sizes {
                // One daemon at a time: the previous one stops first.
                drop(idle_daemon.take());
                let mut daemon = Daemon::start(&dovecot, master, batch, &options.log_level);
                let result = runtime.block_on(daemon.wait_for_backlog(options.messages, bytes));
                emit(json!({
                    "bench": "email_backlog",
                    "tool": "omnid",
                    "run": run,
                    "batch_size": batch,
                    "messages": options.messages,
                    "bytes": bytes,
                    "secs": round(result.secs),
                    "secs_from_first_event": round(result.secs_from_first),
                    "messages_per_sec": round(options.messages as f64 / result.secs),
                    "mb_per_sec": round(bytes as f64 / 1e6 / result.secs),
                    "dead_letters": result.dead_letters,
                    "tool_cpu_secs": round(result.cpu.tool),
                    "imap_cpu_secs": round(result.cpu.imap),
                    "other_cpu_secs": round(result.cpu.others),
                    "tool_cpu_by_thread": result.threads,
                }));
                idle_daemon = Some(daemon);
            }
        }
        if options.runs("fetch") {
            for &batch in &options.batch_sizes {
                for heads in [true, false] {
                    let f = raw_fetch(&dovecot, master, batch as usize, heads);
                    emit(json!({
                        "bench": "email_backlog",
                        "tool": "raw_fetch",
                        "heads_first": heads,
                        "run": run,
                        "batch_size": batch,
                        "messages": f.messages,
                        "bytes": f.bytes,
                        "secs": round(f.secs),
                        "messages_per_sec": round(f.messages as f64 / f.secs),
                        "mb_per_sec": round(f.bytes as f64 / 1e6 / f.secs),
                        "imap_cpu_secs": round(f.cpu.imap),
                        "other_cpu_secs": round(f.cpu.others),
                    }));
                }
            }
        }
        if options.runs("mbsync") {
            match mbsync(&dovecot, master, &options.mbsync) {
                Ok(Synced { secs, synced, cpu }) => emit(json!({
                    "bench": "email_backlog",
                    "tool": "mbsync",
                    "run": run,
                    "messages": synced,
                    "bytes": bytes,
                    "secs": round(secs),
                    "messages_per_sec": round(synced as f64 / secs),
                    "mb_per_sec": round(bytes as f64 / 1e6 / secs),
                    "tool_cpu_secs": round(cpu.tool),
                    "imap_cpu_secs": round(cpu.imap),
                    "other_cpu_secs": round(cpu.others),
                })),
                Err(e) => {
                    eprintln!("error: mbsync: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }

    if options.runs("idle") && options.idle_messages > 0 {
        let daemon = match idle_daemon.take() {
            Some(daemon) => daemon,
            None => {
                let batch = options.batch_sizes[0];
                let mut daemon = Daemon::start(&dovecot, master, batch, &options.log_level);
                runtime.block_on(daemon.wait_for_backlog(options.messages, bytes));
                daemon
            }
        };
        drop(idle_daemon);
        let result = idle_latency(&runtime, &dovecot, &daemon, &options);
        emit(result);
    }
    ExitCode::SUCCESS
}

fn header() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let commit = Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=7"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or("none".to_owned(), |o| {
            String::from_utf8_lossy(&o.stdout).trim().to_owned()
        });
    let version = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "missing".to_owned())
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "cores: {cores}; load: {load}; commit: {commit}; dovecot: {}; mbsync: {}",
        version("/usr/sbin/dovecot", "--version"),
        version(MBSYNC, "--version"),
    )
}

fn emit(value: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

// ---------------------------------------------------------------------
// The daemon

/// `omnid run` on a fresh data directory with one email channel on
/// alice's INBOX.
struct Daemon {
    /// Config and data; deleted on drop.
    _dir: tempfile::TempDir,
    child: Child,
    started: Instant,
    stderr: Arc<Mutex<Vec<String>>>,
    log: SqliteLog,
    /// Measures CPU from spawning until the backlog is in.
    meter: Option<CpuMeter>,
}

struct Backlog {
    /// The daemon's CPU seconds by thread name.
    threads: std::collections::BTreeMap<String, f64>,
    secs: f64,
    secs_from_first: f64,
    dead_letters: i64,
    cpu: CpuUse,
}

impl Daemon {
    fn start(dovecot: &Dovecot, master: Option<u32>, batch_size: u32, log_level: &str) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("omnid-bench-email-")
            .tempdir()
            .expect("tempdir");
        let path = dir.path();
        std::fs::create_dir(path.join("channels")).unwrap();
        std::fs::write(path.join("imap-password"), ALICE.password).unwrap();
        std::fs::write(
            path.join("channels").join(format!("{CHANNEL}.toml")),
            format!(
                "id = \"{CHANNEL}\"\nkind = \"email\"\n[imap]\nhost = \"127.0.0.1\"\n\
                 port = {port}\ntls = \"none\"\nusername = \"{user}\"\n\
                 password = {{ file = \"{password}\" }}\nmailboxes = [\"INBOX\"]\n\
                 batch_size = {batch_size}\n",
                port = dovecot.imap_port(),
                user = ALICE.login,
                password = path.join("imap-password").display(),
            ),
        )
        .unwrap();
        std::fs::write(
            path.join("omnid.toml"),
            format!(
                "data_dir = \"{data}\"\n[http]\nlisten = \"127.0.0.1:0\"\n[channels]\n\
                 dir = \"{channels}\"\n[telemetry]\nlog_format = \"json\"\n\
                 log_level = \"{log_level},omnid=info\"\n\
                 # Ingestion alone: the threading worker (its own benchmark,\n\
                 # bench-threading) would share the two cores.\n\
                 [threading]\nenabled = false\n",
                data = path.join("data").display(),
                channels = path.join("channels").display(),
            ),
        )
        .unwrap();

        let meter = CpuMeter::start(master);
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_omnid"))
            .arg("--config")
            .arg(path.join("omnid.toml"))
            .arg("run")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn omnid");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (listening_tx, listening) = mpsc::channel();
        let lines = BufReader::new(child.stderr.take().unwrap());
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                if line.contains("\"listening\"") {
                    let _ = listening_tx.send(());
                }
                sink.lock().unwrap().push(line);
            }
        });
        if listening.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            panic!(
                "omnid did not start; stderr:\n{}\n{}",
                stderr.lock().unwrap().join("\n"),
                dovecot.log()
            );
        }
        // The daemon created the log and its schema before listening; this
        // process only reads it (as `omnid tail` does).
        let log = SqliteLog::open(
            &path.join("data").join("events.sqlite3"),
            SqliteLogConfig::default(),
        )
        .expect("open the daemon's event log");
        Daemon {
            _dir: dir,
            child,
            started,
            stderr,
            log,
            meter: Some(meter),
        }
    }

    async fn count(&self, topic: &str) -> i64 {
        self.log
            .end_offset(topic, 0)
            .await
            .expect("read end offset")
    }

    /// Waits until the inbound topic holds `n` records (10 minutes at
    /// most), printing progress on stderr.
    async fn wait_for_backlog(&mut self, n: usize, bytes: usize) -> Backlog {
        let n = n as i64;
        let mut first = None;
        let mut last_report = (Instant::now(), 0_i64);
        let deadline = self.started + Duration::from_secs(600);
        loop {
            let count = self.count(INBOUND).await;
            let now = Instant::now();
            if count > 0 && first.is_none() {
                first = Some(now);
            }
            if count >= n {
                let ticks = proc_stat(self.child.id()).map_or(0, |s| s.ticks);
                let threads = thread_cpu(self.child.id());
                let cpu = self
                    .meter
                    .take()
                    .map(|m| m.finish(ticks))
                    .unwrap_or(CpuUse {
                        tool: f64::NAN,
                        imap: f64::NAN,
                        others: f64::NAN,
                    });
                let secs = now.duration_since(self.started).as_secs_f64();
                let first = first.unwrap_or(now);
                eprintln!(
                    "#   {n} events durable after {secs:.2} s ({:.1} MB)",
                    bytes as f64 / 1e6
                );
                return Backlog {
                    secs,
                    secs_from_first: now.duration_since(first).as_secs_f64(),
                    dead_letters: self.count(DEADLETTER).await,
                    cpu,
                    threads,
                };
            }
            if now.duration_since(last_report.0) >= Duration::from_secs(2) {
                let rate = (count - last_report.1) as f64
                    / now.duration_since(last_report.0).as_secs_f64();
                eprintln!(
                    "#   {:6.1} s: {count} events ({rate:.0}/s)",
                    now.duration_since(self.started).as_secs_f64()
                );
                last_report = (now, count);
            }
            assert!(
                now < deadline,
                "only {count} of {n} events after 10 minutes; omnid stderr:\n{}",
                self.stderr.lock().unwrap().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM for a clean shutdown, SIGKILL if it takes too long.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..200 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------
// mbsync

/// Pulls alice's INBOX into a fresh Maildir; returns the seconds it took
/// and how many messages arrived.
fn mbsync(dovecot: &Dovecot, master: Option<u32>, program: &str) -> Result<Synced, String> {
    let dir = tempfile::Builder::new()
        .prefix("omnid-bench-mbsync-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let maildir = dir.path().join("mail");
    std::fs::create_dir(&maildir).map_err(|e| e.to_string())?;
    let rc = dir.path().join("mbsyncrc");
    std::fs::write(
        &rc,
        format!(
            "# The default, spelled out: every message file and the sync state\n\
             # are fsynced.\nFSync yes\n\n\
             IMAPAccount bench\nHost 127.0.0.1\nPort {port}\nUser {user}\nPass {pass}\n\
             SSLType None\nAuthMechs LOGIN\n\n\
             IMAPStore far\nAccount bench\n\n\
             MaildirStore near\nPath {maildir}/\nInbox {maildir}/INBOX\n\n\
             Channel bench\nFar :far:\nNear :near:\nPatterns INBOX\nSync Pull\n\
             Create Near\nSyncState *\n",
            port = dovecot.imap_port(),
            user = ALICE.login,
            pass = ALICE.password,
            maildir = maildir.display(),
        ),
    )
    .map_err(|e| e.to_string())?;
    let stderr_path = dir.path().join("mbsync.stderr");
    let stderr = std::fs::File::create(&stderr_path).map_err(|e| e.to_string())?;
    let meter = CpuMeter::start(master);
    let started = Instant::now();
    let mut child = Command::new(program)
        .arg("-c")
        .arg(&rc)
        .arg("-q")
        .arg("bench")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("run {program}: {e} (install Debian's isync)"))?;
    // Until it is a zombie, whose CPU times /proc still shows until it
    // is reaped.
    let mut ticks = 0;
    loop {
        match proc_stat(child.id()) {
            Some(stat) if stat.state == 'Z' => {
                ticks = stat.ticks;
                break;
            }
            Some(_) => std::thread::sleep(Duration::from_millis(1)),
            None => break,
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = meter.finish(ticks);
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!(
            "{program} exited with {status}: {}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        ));
    }
    let inbox = maildir.join("INBOX");
    let synced = count_files(&inbox.join("new")) + count_files(&inbox.join("cur"));
    eprintln!("#   mbsync: {synced} messages in {secs:.2} s");
    Ok(Synced { secs, synced, cpu })
}

struct Synced {
    secs: f64,
    synced: usize,
    cpu: CpuUse,
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| entries.count())
}

// ---------------------------------------------------------------------
// IDLE latency

fn idle_latency(
    runtime: &tokio::runtime::Runtime,
    dovecot: &Dovecot,
    daemon: &Daemon,
    options: &Options,
) -> serde_json::Value {
    let count = options.idle_messages;
    let base = runtime.block_on(daemon.count(INBOUND));
    // Let the daemon settle into IDLE after its backlog.
    std::thread::sleep(Duration::from_secs(2));
    eprintln!(
        "#   idle: {count} messages, one every {} ms",
        options.idle_interval.as_millis()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = runtime.spawn(watch(daemon.log.clone(), base, count, Arc::clone(&stop)));
    // A second IDLE client of our own: when the server tells IDLE clients
    // about each message, independent of the daemon.
    let observer_stop = Arc::new(AtomicBool::new(false));
    let told = Arc::new(AtomicU32::new(0));
    let (exists_before, notices) = idle_observer(
        dovecot.imap_port(),
        Arc::clone(&observer_stop),
        Arc::clone(&told),
    );

    let mut imap = ImapClient::login(dovecot.imap_port()).expect("imap login");
    let mut sent = Vec::with_capacity(count);
    let mut append_ms = Vec::with_capacity(count);
    let start = Instant::now();
    for i in 0..count {
        let due = start + options.idle_interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let raw = generate(i, "idle");
        let before = Instant::now();
        sent.push(before);
        imap.append("INBOX", &raw).expect("append");
        append_ms.push(ms(before.elapsed()));
    }
    // Give stragglers up to 30 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !watcher.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Release);
    let seen = runtime.block_on(watcher).expect("watcher");
    // The daemon may learn of the last message before our observer does
    // (IDLE reports pending changes at once when it starts).
    let deadline = Instant::now() + Duration::from_secs(3);
    while told.load(Ordering::Acquire) < exists_before + count as u32 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    observer_stop.store(true, Ordering::Release);
    let notices = notices.join().expect("idle observer");

    let (mut total, mut server) = (Vec::new(), Vec::new());
    for (i, before) in sent.iter().enumerate() {
        if let Some(durable) = seen.get(&message_id(i, "idle")) {
            total.push(ms(durable.duration_since(*before)));
        }
        // The first EXISTS that counts this message (sequence number
        // `exists_before + i + 1`, as nothing is expunged).
        let sequence = exists_before + i as u32 + 1;
        if let Some((_, told)) = notices.iter().find(|(n, _)| *n >= sequence) {
            server.push(ms(told.saturating_duration_since(*before)));
        }
    }
    let missing = count - total.len();
    let under_2s = total.iter().filter(|l| **l < 2000.0).count();
    let mut result = json!({
        "bench": "email_idle_latency",
        "messages": count,
        "interval_ms": options.idle_interval.as_millis() as u64,
        "mailbox_messages_before": base,
        "received": total.len(),
        "missing": missing,
        "under_2s": under_2s,
        "server_notified": server.len(),
    });
    for (prefix, values) in [
        ("", &mut total),
        ("server_notify_", &mut server),
        ("append_", &mut append_ms),
    ] {
        values.sort_by(f64::total_cmp);
        let fields = [
            ("min", values.first().copied().unwrap_or(f64::NAN)),
            ("p50", percentile(values, 50.0)),
            ("p90", percentile(values, 90.0)),
            ("p95", percentile(values, 95.0)),
            ("p99", percentile(values, 99.0)),
            ("max", values.last().copied().unwrap_or(f64::NAN)),
        ];
        for (name, value) in fields {
            result[format!("{prefix}{name}_ms")] = json!(round(value));
        }
    }
    result
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Logs in, SELECTs INBOX and IDLEs until `stop`, noting when each
/// `* N EXISTS` arrives (and the highest N in `told`). Returns the
/// message count at SELECT and the thread that collects `(N, when)`.
fn idle_observer(
    port: u16,
    stop: Arc<AtomicBool>,
    told: Arc<AtomicU32>,
) -> (u32, std::thread::JoinHandle<Vec<(u32, Instant)>>) {
    let mut client = ImapClient::login(port).expect("imap login");
    let selected = client.run(b"SELECT \"INBOX\"", &[]).expect("select");
    let before = selected.iter().find_map(|l| exists(l)).unwrap_or(0);
    client
        .stream
        .get_mut()
        .write_all(b"i1 IDLE\r\n")
        .expect("send IDLE");
    let mut line = Vec::new();
    client
        .stream
        .read_until(b'\n', &mut line)
        .expect("IDLE continuation");
    assert!(line.starts_with(b"+"), "IDLE refused: {line:?}");
    client
        .stream
        .get_mut()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("set timeout");
    let thread = std::thread::spawn(move || {
        let mut notices = Vec::new();
        let mut line = Vec::new();
        while !stop.load(Ordering::Acquire) {
            match client.stream.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {
                    let at = Instant::now();
                    if let Some(n) = exists(&String::from_utf8_lossy(&line)) {
                        notices.push((n, at));
                        told.fetch_max(n, Ordering::AcqRel);
                    }
                    line.clear();
                }
                // A read timeout keeps what was read of the line.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        let _ = client.stream.get_mut().write_all(b"DONE\r\n");
        notices
    });
    (before, thread)
}

/// N of an untagged `* N EXISTS` line.
fn exists(line: &str) -> Option<u32> {
    let rest = line.strip_prefix("* ")?;
    let (n, what) = rest.split_once(' ')?;
    what.trim_end()
        .eq_ignore_ascii_case("EXISTS")
        .then(|| n.parse().ok())?
}

/// Polls the log every millisecond from offset `base` and notes, per
/// provider message id, when its event was first seen; returns after
/// `count` events or when told to stop.
async fn watch(
    log: SqliteLog,
    base: i64,
    count: usize,
    stop: Arc<AtomicBool>,
) -> HashMap<String, Instant> {
    let mut seen = HashMap::with_capacity(count);
    let mut next = base;
    while seen.len() < count && !stop.load(Ordering::Acquire) {
        let end = log.end_offset(INBOUND, 0).await.expect("end offset");
        if end > next {
            let at = Instant::now();
            while next < end {
                let records = log
                    .read(INBOUND, 0, next, (end - next) as usize)
                    .await
                    .expect("read");
                for stored in &records {
                    next = stored.position.offset + 1;
                    let event = v1::ConversationEvent::decode(stored.record.payload.as_ref())
                        .expect("inbound records are ConversationEvents");
                    seen.entry(event.provider_message_id).or_insert(at);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    seen
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Just enough IMAP to APPEND over one logged-in connection, so that each
/// latency starts when the APPEND command is written (not at a login).
struct ImapClient {
    stream: BufReader<TcpStream>,
    tag: u32,
}

impl ImapClient {
    fn login(port: u16) -> std::io::Result<ImapClient> {
        let tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut client = ImapClient {
            stream: BufReader::new(tcp),
            tag: 0,
        };
        let mut greeting = String::new();
        client.stream.read_line(&mut greeting)?;
        let login = format!("LOGIN \"{}\" \"{}\"", ALICE.login, ALICE.password);
        client.run(login.as_bytes(), &[])?;
        Ok(client)
    }

    fn append(&mut self, mailbox: &str, message: &[u8]) -> std::io::Result<()> {
        let command = format!("APPEND \"{mailbox}\" {{{}+}}\r\n", message.len());
        self.run(command.as_bytes(), message).map(drop)
    }

    /// Sends `tag command literal CRLF` in one write and returns the
    /// untagged lines up to the tagged OK.
    fn run(&mut self, command: &[u8], literal: &[u8]) -> std::io::Result<Vec<String>> {
        self.tag += 1;
        let tag = format!("b{}", self.tag);
        let mut buf = Vec::with_capacity(tag.len() + command.len() + literal.len() + 3);
        buf.extend_from_slice(tag.as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(command);
        buf.extend_from_slice(literal);
        buf.extend_from_slice(b"\r\n");
        self.stream.get_mut().write_all(&buf)?;
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.stream.read_line(&mut line)? == 0 {
                return Err(std::io::Error::other("server closed the connection"));
            }
            if let Some(status) = line.strip_prefix(&tag) {
                return if status.trim_start().starts_with("OK") {
                    Ok(lines)
                } else {
                    Err(std::io::Error::other(line))
                };
            }
            lines.push(line);
        }
    }

    /// Runs a FETCH and returns how many messages it answered for and the
    /// bytes of their literals (read and dropped).
    fn fetch(&mut self, command: &str) -> std::io::Result<(usize, usize)> {
        self.tag += 1;
        let tag = format!("b{}", self.tag);
        self.stream
            .get_mut()
            .write_all(format!("{tag} {command}\r\n").as_bytes())?;
        let (mut fetches, mut bytes) = (0, 0);
        let mut line = Vec::new();
        loop {
            line.clear();
            if self.stream.read_until(b'\n', &mut line)? == 0 {
                return Err(std::io::Error::other("server closed the connection"));
            }
            if let Some(status) = line.strip_prefix(tag.as_bytes()) {
                return if status.starts_with(b" OK") {
                    Ok((fetches, bytes))
                } else {
                    Err(std::io::Error::other(
                        String::from_utf8_lossy(&line).into_owned(),
                    ))
                };
            }
            if line.starts_with(b"* ") && memchr_str(&line, b" FETCH (") {
                fetches += 1;
            }
            // A literal ends the line; the response goes on after it.
            while let Some(size) = literal_size(&line) {
                let copied = std::io::copy(
                    &mut (&mut self.stream).take(size as u64),
                    &mut std::io::sink(),
                )?;
                if copied != size as u64 {
                    return Err(std::io::Error::other("connection closed in a literal"));
                }
                bytes += size;
                line.clear();
                self.stream.read_until(b'\n', &mut line)?;
            }
        }
    }
}

/// The size N of a literal `{N}\r\n` that ends `line`.
fn literal_size(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\r\n")?.strip_suffix(b"}")?;
    let open = line.iter().rposition(|b| *b == b'{')?;
    std::str::from_utf8(&line[open + 1..]).ok()?.parse().ok()
}

fn memchr_str(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------
// Raw FETCH: what Dovecot serves with no client work at all

struct Fetched {
    secs: f64,
    messages: usize,
    bytes: usize,
    cpu: CpuUse,
}

/// Fetches the whole INBOX in batches of `batch` UIDs over one
/// connection, with the daemon's two FETCHes per batch (`heads`: sizes
/// and Message-IDs, then bodies) or the bodies alone, and drops what
/// arrives.
fn raw_fetch(dovecot: &Dovecot, master: Option<u32>, batch: usize, heads: bool) -> Fetched {
    let meter = CpuMeter::start(master);
    let started = Instant::now();
    let mut client = ImapClient::login(dovecot.imap_port()).expect("imap login");
    client.run(b"SELECT \"INBOX\"", &[]).expect("select");
    let found = client.run(b"UID SEARCH ALL", &[]).expect("search");
    let uids: Vec<u32> = found
        .iter()
        .filter_map(|l| l.strip_prefix("* SEARCH"))
        .flat_map(|l| l.split_whitespace().filter_map(|n| n.parse().ok()))
        .collect();
    let (mut messages, mut bytes) = (0, 0);
    for chunk in uids.chunks(batch) {
        let set = format!("{}:{}", chunk[0], chunk[chunk.len() - 1]);
        if heads {
            client
                .fetch(&format!(
                    "UID FETCH {set} (UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"
                ))
                .expect("fetch heads");
        }
        let (n, b) = client
            .fetch(&format!("UID FETCH {set} (UID INTERNALDATE BODY.PEEK[])"))
            .expect("fetch bodies");
        messages += n;
        bytes += b;
    }
    let _ = client.run(b"LOGOUT", &[]);
    let secs = started.elapsed().as_secs_f64();
    Fetched {
        secs,
        messages,
        bytes,
        cpu: meter.finish(0),
    }
}

// ---------------------------------------------------------------------
// Messages

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// text/plain, about 2 KB with headers, a third with a quoted reply.
    Plain,
    /// multipart/alternative: text/plain and a quoted-printable HTML part.
    Html,
    /// multipart/mixed: the alternative above plus a 50 KB PDF.
    Attachment,
}

fn kind(i: usize) -> Kind {
    if i % 50 == 49 {
        Kind::Attachment
    } else if i % 4 == 1 {
        Kind::Html
    } else {
        Kind::Plain
    }
}

fn message_id(i: usize, tag: &str) -> String {
    format!("bench-{tag}-{i}.{:08x}@mail.shop.example", hash(i as u64))
}

/// A deterministic, realistic customer message; `tag` keeps the
/// Message-IDs of different sets apart.
fn generate(i: usize, tag: &str) -> Vec<u8> {
    let mut rng = Rng(hash(i as u64 ^ hash(tag.len() as u64 + 7)));
    let customer = i % 997;
    let (first, last) = (
        FIRST_NAMES[customer % FIRST_NAMES.len()],
        LAST_NAMES[(customer / FIRST_NAMES.len()) % LAST_NAMES.len()],
    );
    let order = 100_000 + (hash(customer as u64) % 900_000);
    let subject = format!(
        "Order #{order}: {}",
        sentence(&mut rng, 4).trim_end_matches('.')
    );
    let day = 1 + i % 28;
    let (hour, minute, second) = (i / 3600 % 24, i / 60 % 60, i % 60);
    let date = format!("{day} Nov 2026 {hour:02}:{minute:02}:{second:02} +0100");
    let mut m = String::with_capacity(4096);
    let _ = write!(
        m,
        "Return-Path: <customer{customer}@mail.shop.example>\r\n\
         Received: from mx2.mail.shop.example (mx2.mail.shop.example [203.0.113.{a}])\r\n\
         \tby mx.acme.example (Postfix) with ESMTPS id 4Q{h:X}\r\n\
         \tfor <support@acme.example>; Mon, {date}\r\n\
         Received: by mail.shop.example with SMTP id q{h2:x}; Mon, {date}\r\n\
         DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=mail.shop.example; s=s1;\r\n\
         \th=from:to:subject:date:message-id:mime-version; bh={bh};\r\n\
         \tb={b}\r\n\
         From: {from} <customer{customer}@mail.shop.example>\r\n\
         To: Acme Support <support@acme.example>\r\n\
         Subject: {subject}\r\n\
         Date: Mon, {date}\r\n\
         Message-ID: <{id}>\r\n\
         MIME-Version: 1.0\r\n\
         X-Mailer: Bench Mail 1.0\r\n",
        from = encoded_word(&format!("{first} {last}")),
        subject = encoded_word(&subject),
        a = i % 250,
        h = hash(i as u64 + 1),
        h2 = hash(i as u64 + 2),
        bh = base64_of(&mut rng, 32),
        b = base64_of(&mut rng, 190),
        id = message_id(i, tag),
    );
    let text = body_text(&mut rng, first, order, i.is_multiple_of(3));
    match kind(i) {
        Kind::Plain => {
            m.push_str(
                "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
            );
            m.push_str(&text);
        }
        Kind::Html => {
            let boundary = format!("alt-{:016x}", hash(i as u64 + 3));
            let _ = write!(
                m,
                "Content-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n"
            );
            alternative(&mut m, &boundary, &text, &mut rng, first, order);
        }
        Kind::Attachment => {
            let mixed = format!("mix-{:016x}", hash(i as u64 + 4));
            let alt = format!("alt-{:016x}", hash(i as u64 + 3));
            let _ = write!(
                m,
                "Content-Type: multipart/mixed; boundary=\"{mixed}\"\r\n\r\n\
                 This is a multi-part message in MIME format.\r\n\r\n--{mixed}\r\n\
                 Content-Type: multipart/alternative; boundary=\"{alt}\"\r\n\r\n"
            );
            alternative(&mut m, &alt, &text, &mut rng, first, order);
            let _ = write!(
                m,
                "\r\n--{mixed}\r\nContent-Type: application/pdf; name=\"invoice-{order}.pdf\"\r\n\
                 Content-Disposition: attachment; filename=\"invoice-{order}.pdf\"\r\n\
                 Content-Transfer-Encoding: base64\r\n\r\n"
            );
            let mut pdf = b"%PDF-1.4\n".to_vec();
            while pdf.len() < 50 * 1024 {
                pdf.extend_from_slice(&rng.next().to_le_bytes());
            }
            base64_lines(&mut m, &pdf);
            let _ = write!(m, "--{mixed}--\r\n");
        }
    }
    m.into_bytes()
}

/// Header text as is when ASCII, else as one RFC 2047 encoded word.
fn encoded_word(text: &str) -> String {
    if text.is_ascii() {
        return text.to_owned();
    }
    let mut word = "=?UTF-8?B?".to_owned();
    let mut encoded = String::new();
    base64_lines(&mut encoded, text.as_bytes());
    word.push_str(&encoded.replace("\r\n", ""));
    word.push_str("?=");
    word
}

fn alternative(m: &mut String, boundary: &str, text: &str, rng: &mut Rng, name: &str, order: u64) {
    let _ = write!(
        m,
        "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n{text}\r\n--{boundary}\r\n\
         Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    );
    let mut html = String::with_capacity(3000);
    html.push_str(
        "<!DOCTYPE html><html><head><meta http-equiv=\"Content-Type\" content=\"text/html; \
         charset=utf-8\"><style>body{font-family:Arial,sans-serif;font-size:14px}\
         .sig{color:#888888}</style></head><body><div dir=\"ltr\">",
    );
    let _ = write!(html, "<p>Hello,</p>");
    for _ in 0..3 {
        let _ = write!(html, "<p>{}</p>", paragraph(rng, 300));
    }
    let _ = write!(
        html,
        "<table border=\"0\" cellpadding=\"4\"><tr><td><b>Order</b></td><td>#{order}</td></tr>\
         <tr><td><b>Status</b></td><td>{}</td></tr></table>\
         <p>Merci beaucoup,<br>{name}</p><div class=\"sig\">Envoy\u{e9} de mon t\u{e9}l\u{e9}phone</div>\
         </div></body></html>",
        sentence(rng, 3)
    );
    quoted_printable(m, html.as_bytes());
    let _ = write!(m, "\r\n--{boundary}--\r\n");
}

fn body_text(rng: &mut Rng, name: &str, order: u64, quoted: bool) -> String {
    let mut text = String::with_capacity(1500);
    text.push_str("Hello,\r\n\r\n");
    let paragraphs = if quoted { 2 } else { 3 };
    for _ in 0..paragraphs {
        wrap(&mut text, &paragraph(rng, 340));
        text.push_str("\r\n");
    }
    let _ = write!(
        text,
        "Order number: {order}\r\n\r\nThanks a lot,\r\n{name}\r\n\r\n-- \r\nEnvoy\u{e9} de mon iPhone\r\n"
    );
    if quoted {
        text.push_str(
            "\r\nOn Fri, 20 Nov 2026 at 09:12, Acme Support <support@acme.example> wrote:\r\n",
        );
        let mut q = String::new();
        wrap(&mut q, &paragraph(rng, 300));
        for line in q.lines() {
            let _ = write!(text, "> {line}\r\n");
        }
    }
    text
}

const FIRST_NAMES: &[&str] = &[
    "Ana", "Bruno", "Chloé", "Dmitri", "Elif", "Farah", "Gustavo", "Hana", "Ines", "Jonas",
    "Keiko", "Lucía", "Mehmet", "Nora", "Oskar", "Priya", "Quentin", "Rania", "Sven", "Tariq",
];
const LAST_NAMES: &[&str] = &[
    "Silva",
    "Müller",
    "Dubois",
    "Ivanova",
    "Yılmaz",
    "Haddad",
    "Costa",
    "Sato",
    "Moreau",
    "Novak",
    "Berg",
    "Kaya",
    "Rossi",
    "Nguyen",
    "Okafor",
    "Larsen",
    "Jensen",
    "Fischer",
    "Garcia",
    "Kowalski",
    "Tanaka",
    "Petrov",
    "Schmidt",
    "Martin",
    "Rahman",
    "Lopez",
    "Weber",
    "Andersen",
    "Popescu",
    "Horvat",
    "Kim",
    "Sousa",
    "Lindqvist",
    "Baker",
    "Ortiz",
    "Fontaine",
    "Wagner",
    "Singh",
    "Mendes",
    "Ali",
    "Kruger",
    "Dahl",
    "Ferreira",
    "Bianchi",
    "Eriksson",
    "Demir",
    "Romero",
    "Costa",
];
const WORDS: &[&str] = &[
    "order",
    "delivery",
    "package",
    "refund",
    "invoice",
    "parcel",
    "tracking",
    "number",
    "still",
    "not",
    "arrived",
    "yesterday",
    "week",
    "please",
    "could",
    "you",
    "check",
    "the",
    "status",
    "of",
    "my",
    "I",
    "was",
    "told",
    "it",
    "would",
    "be",
    "here",
    "by",
    "Monday",
    "but",
    "nothing",
    "came",
    "courier",
    "address",
    "changed",
    "apartment",
    "wrong",
    "size",
    "colour",
    "return",
    "label",
    "exchange",
    "payment",
    "charged",
    "twice",
    "card",
    "account",
    "password",
    "reset",
    "discount",
    "code",
    "expired",
    "customer",
    "service",
    "waiting",
    "reply",
    "urgent",
    "gift",
    "birthday",
    "café",
    "größe",
    "déjà",
    "naïve",
    "thank",
    "again",
    "help",
    "when",
    "will",
];

fn sentence(rng: &mut Rng, words: usize) -> String {
    let mut s = String::new();
    for k in 0..words {
        let word = WORDS[(rng.next() % WORDS.len() as u64) as usize];
        if k == 0 {
            let mut chars = word.chars();
            if let Some(c) = chars.next() {
                s.extend(c.to_uppercase());
                s.push_str(chars.as_str());
            }
        } else {
            s.push(' ');
            s.push_str(word);
        }
    }
    s.push('.');
    s
}

fn paragraph(rng: &mut Rng, bytes: usize) -> String {
    let mut p = String::with_capacity(bytes + 80);
    while p.len() < bytes {
        if !p.is_empty() {
            p.push(' ');
        }
        let words = 6 + (rng.next() % 10) as usize;
        p.push_str(&sentence(rng, words));
    }
    p
}

/// Wraps at 72 columns with CRLF.
fn wrap(out: &mut String, text: &str) {
    let mut column = 0;
    for word in text.split(' ') {
        if column > 0 && column + 1 + word.chars().count() > 72 {
            out.push_str("\r\n");
            column = 0;
        } else if column > 0 {
            out.push(' ');
            column += 1;
        }
        out.push_str(word);
        column += word.chars().count();
    }
    out.push_str("\r\n");
}

fn quoted_printable(out: &mut String, bytes: &[u8]) {
    let mut column = 0;
    for &b in bytes {
        let literal = (b' '..=b'~').contains(&b) && b != b'=';
        let width = if literal { 1 } else { 3 };
        if column + width > 75 {
            out.push_str("=\r\n");
            column = 0;
        }
        if literal {
            out.push(b as char);
        } else {
            let _ = write!(out, "={b:02X}");
        }
        column += width;
    }
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_lines(out: &mut String, bytes: &[u8]) {
    for line in bytes.chunks(57) {
        for chunk in line.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (k, b)| n | u32::from(*b) << (16 - 8 * k));
            for k in 0..4 {
                if k <= chunk.len() {
                    out.push(BASE64[(n >> (18 - 6 * k) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out.push_str("\r\n");
    }
}

fn base64_of(rng: &mut Rng, chars: usize) -> String {
    (0..chars)
        .map(|_| BASE64[(rng.next() % 64) as usize] as char)
        .collect()
}

fn hash(x: u64) -> u64 {
    // splitmix64
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        hash(self.0)
    }
}

// ---------------------------------------------------------------------
// CPU accounting from /proc: what the tool, Dovecot's `imap` processes
// and everything else on the machine used during a measurement.

/// Clock ticks per second of the times in /proc (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

struct ProcStat {
    state: char,
    ticks: u64,
}

/// State and user + system CPU ticks of a process.
fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may contain spaces.
    let fields: Vec<&str> = text[text.rfind(')')? + 2..].split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ticks: fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?,
    })
}

/// CPU seconds of a process's live threads, summed by thread name.
fn thread_cpu(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut by_name: std::collections::BTreeMap<String, u64> = Default::default();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Default::default();
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let ticks = std::fs::read_to_string(path.join("stat"))
            .ok()
            .and_then(|text| {
                let fields: Vec<&str> = text[text.rfind(')')? + 2..].split_whitespace().collect();
                Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0);
        *by_name.entry(name.trim().to_owned()).or_insert(0) += ticks;
    }
    by_name
        .into_iter()
        .map(|(name, ticks)| (name, ticks as f64 / TICKS_PER_SEC))
        .collect()
}

/// Busy ticks of all CPUs together (everything but idle and iowait).
fn machine_busy_ticks() -> u64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = text.lines().next().unwrap_or_default();
    let n: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    [0, 1, 2, 5, 6, 7].iter().filter_map(|i| n.get(*i)).sum()
}

/// The pid of our Dovecot's master process, found by the temp directory
/// in its command line.
fn dovecot_master(dovecot: &Dovecot) -> Option<u32> {
    let dir = dovecot.ca_pem_path().parent()?.to_str()?.to_owned();
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        (cmdline.starts_with("/usr/sbin/dovecot") && cmdline.contains(&dir)).then_some(pid)
    })
}

/// The CPU seconds Dovecot's `imap` processes (the master's children
/// named `imap`), the tool and the rest of the machine use during a
/// measurement. `imap` processes are sampled every 10 ms, so one that
/// exits loses at most its last 10 ms.
struct CpuMeter {
    stop: Arc<AtomicBool>,
    imap: Option<std::thread::JoinHandle<u64>>,
    busy_start: u64,
    own_start: u64,
}

#[derive(Debug)]
struct CpuUse {
    tool: f64,
    imap: f64,
    /// Everything else that ran on the machine meanwhile (other builds,
    /// tests and benchmarks on a shared machine); 0 on a quiet one.
    others: f64,
}

impl CpuMeter {
    fn start(master: Option<u32>) -> CpuMeter {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let imap = std::thread::spawn(move || {
            let Some(master) = master else { return 0 };
            let children = || -> Vec<u32> {
                std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .filter(|p| {
                        std::fs::read_to_string(format!("/proc/{p}/comm"))
                            .is_ok_and(|c| c.trim() == "imap")
                    })
                    .collect()
            };
            // Processes already running count from now; new ones from 0.
            let baseline: HashMap<u32, u64> = children()
                .into_iter()
                .filter_map(|p| Some((p, proc_stat(p)?.ticks)))
                .collect();
            let mut latest: HashMap<u32, u64> = HashMap::new();
            loop {
                let stopping = flag.load(Ordering::Acquire);
                for pid in children() {
                    if let Some(stat) = proc_stat(pid) {
                        latest.insert(pid, stat.ticks);
                    }
                }
                if stopping {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            latest
                .iter()
                .map(|(pid, ticks)| ticks - baseline.get(pid).copied().unwrap_or(0))
                .sum()
        });
        CpuMeter {
            stop,
            imap: Some(imap),
            busy_start: machine_busy_ticks(),
            own_start: proc_stat(std::process::id()).map_or(0, |s| s.ticks),
        }
    }

    /// Ends the window; `tool_ticks` is what the tool used in it.
    fn finish(mut self, tool_ticks: u64) -> CpuUse {
        let busy = machine_busy_ticks() - self.busy_start;
        let own = proc_stat(std::process::id()).map_or(0, |s| s.ticks) - self.own_start;
        self.stop.store(true, Ordering::Release);
        let imap = self
            .imap
            .take()
            .and_then(|thread| thread.join().ok())
            .unwrap_or(0);
        let others = busy.saturating_sub(tool_ticks + imap + own);
        CpuUse {
            tool: tool_ticks as f64 / TICKS_PER_SEC,
            imap: imap as f64 / TICKS_PER_SEC,
            others: others as f64 / TICKS_PER_SEC,
        }
    }
}

impl Drop for CpuMeter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}
