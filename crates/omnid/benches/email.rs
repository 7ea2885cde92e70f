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
//! - Backlog: N messages of omni-testkit's corpus (plain text,
//!   multipart/alternative with HTML, a few with a 50 KB attachment) are
//!   APPENDed to alice's INBOX;
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
    collections::{BTreeMap, HashMap},
    io::Write as _,
    path::Path,
    process::{Command, ExitCode, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use omni_log::{EventLog, SqliteLog, SqliteLogConfig};
use omni_proto::{Message as _, v1};
use omni_testkit::{
    ALICE, Dovecot,
    corpus::{self, Kind},
    cpu::{self, CpuMeter, CpuUse},
    daemon::{Daemon, Deployment},
    imap::{self, Session},
};
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
        .map(|i| corpus::message(i, "backlog"))
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
        "with_attachment": (0..messages.len()).filter(|i| corpus::kind(*i) == Kind::Attachment).count(),
        "multipart_alternative": (0..messages.len()).filter(|i| corpus::kind(*i) == Kind::Html).count(),
        "append_secs": round(seeded.as_secs_f64()),
    }));
    drop(messages);

    let master = dovecot.master_pid();
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

    let mut idle_daemon: Option<Ingest> = None;
    for run in 1..=options.runs {
        if options.runs("backlog") {
            for &batch in &options.batch_sizes {
                // One daemon at a time: the previous one stops first.
                drop(idle_daemon.take());
                let mut daemon = Ingest::start(&dovecot, master, batch, &options.log_level);
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
                let mut daemon = Ingest::start(&dovecot, master, batch, &options.log_level);
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

/// `omnid run` (the release binary cargo builds for this bench) on a fresh
/// data directory with one email channel on alice's INBOX, and the event
/// log it writes.
struct Ingest {
    daemon: Daemon,
    /// Config and data; deleted once the daemon has stopped.
    _deployment: Deployment,
    started: Instant,
    log: SqliteLog,
    /// Measures CPU from spawning until the backlog is in.
    meter: Option<CpuMeter>,
}

struct Backlog {
    /// The daemon's CPU seconds by thread name.
    threads: BTreeMap<String, f64>,
    secs: f64,
    secs_from_first: f64,
    dead_letters: i64,
    cpu: CpuUse,
}

impl Ingest {
    fn start(dovecot: &Dovecot, master: Option<u32>, batch_size: u32, log_level: &str) -> Ingest {
        let deployment = Deployment::empty().with_binary(env!("CARGO_BIN_EXE_omnid"));
        let path = deployment.path();
        std::fs::write(path.join("imap-password"), ALICE.password).unwrap();
        deployment.write_channel(
            CHANNEL,
            &format!(
                "id = \"{CHANNEL}\"\nkind = \"email\"\n[imap]\nhost = \"127.0.0.1\"\n\
                 port = {port}\ntls = \"none\"\nusername = \"{user}\"\n\
                 password = {{ file = \"{password}\" }}\nmailboxes = [\"INBOX\"]\n\
                 batch_size = {batch_size}\n",
                port = dovecot.imap_port(),
                user = ALICE.login,
                password = path.join("imap-password").display(),
            ),
        );
        deployment.write_config(&format!(
            "data_dir = \"{data}\"\n[http]\nlisten = \"127.0.0.1:0\"\n[channels]\n\
             dir = \"{channels}\"\n[telemetry]\nlog_format = \"json\"\n\
             log_level = \"{log_level},omnid=info\"\n\
             # Ingestion alone: the threading worker (its own benchmark,\n\
             # bench-threading) would share the two cores.\n\
             [threading]\nenabled = false\n",
            data = deployment.data_dir().display(),
            channels = deployment.channels_dir().display(),
        ));

        let meter = CpuMeter::start(master);
        let started = Instant::now();
        let daemon = deployment.start();
        // The daemon created the log and its schema before listening; this
        // process only reads it (as `omnid tail` does).
        let log = SqliteLog::open(
            &deployment.data_dir().join("events.sqlite3"),
            SqliteLogConfig::default(),
        )
        .expect("open the daemon's event log");
        Ingest {
            daemon,
            _deployment: deployment,
            started,
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
                let pid = self.daemon.pid();
                let ticks = cpu::proc_stat(pid).map_or(0, |s| s.ticks);
                let threads = cpu::thread_cpu(pid);
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
                self.daemon.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.daemon.stop();
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
        match cpu::proc_stat(child.id()) {
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
    daemon: &Ingest,
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
    let (exists_before, notices) =
        idle_observer(dovecot, Arc::clone(&observer_stop), Arc::clone(&told));

    let mut imap = login(dovecot);
    let mut sent = Vec::with_capacity(count);
    let mut append_ms = Vec::with_capacity(count);
    let start = Instant::now();
    for i in 0..count {
        let due = start + options.idle_interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let raw = corpus::message(i, "idle");
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
        if let Some(durable) = seen.get(&corpus::message_id(i, "idle")) {
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

/// Alice's IMAP session, over which each measured command is written in
/// one go (see [`Session::append`]).
fn login(dovecot: &Dovecot) -> Session {
    Session::login(dovecot.imap_port(), ALICE.login, ALICE.password).expect("imap login")
}

/// Logs in, SELECTs INBOX and IDLEs until `stop`, noting when each
/// `* N EXISTS` arrives (and the highest N in `told`). Returns the
/// message count at SELECT and the thread that collects `(N, when)`.
fn idle_observer(
    dovecot: &Dovecot,
    stop: Arc<AtomicBool>,
    told: Arc<AtomicU32>,
) -> (u32, std::thread::JoinHandle<Vec<(u32, Instant)>>) {
    let mut session = login(dovecot);
    let selected = session.run(b"SELECT \"INBOX\"").expect("select");
    let before = selected.iter().find_map(|l| imap::exists(l)).unwrap_or(0);
    let mut idle = session.idle().expect("IDLE");
    let thread = std::thread::spawn(move || {
        let mut notices = Vec::new();
        while !stop.load(Ordering::Acquire) {
            match idle.next(Duration::from_millis(50)) {
                Ok(Some(line)) => {
                    let at = Instant::now();
                    if let Some(n) = imap::exists(&line) {
                        notices.push((n, at));
                        told.fetch_max(n, Ordering::AcqRel);
                    }
                }
                Ok(None) => {}
                Err(_) => break,
            }
        }
        idle.done();
        notices
    });
    (before, thread)
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
    let mut client = login(dovecot);
    client.run(b"SELECT \"INBOX\"").expect("select");
    let uids = imap::search_results(&client.run(b"UID SEARCH ALL").expect("search"));
    let (mut messages, mut bytes) = (0, 0);
    for chunk in uids.chunks(batch) {
        let set = format!("{}:{}", chunk[0], chunk[chunk.len() - 1]);
        if heads {
            client
                .fetch_counting(&format!(
                    "UID FETCH {set} (UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"
                ))
                .expect("fetch heads");
        }
        let (n, b) = client
            .fetch_counting(&format!("UID FETCH {set} (UID INTERNALDATE BODY.PEEK[])"))
            .expect("fetch bodies");
        messages += n;
        bytes += b;
    }
    client.logout();
    let secs = started.elapsed().as_secs_f64();
    Fetched {
        secs,
        messages,
        bytes,
        cpu: meter.finish(0),
    }
}
