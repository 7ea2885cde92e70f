//! `chat_bench`: what the web chat channel costs a running daemon, in two
//! phases, each printed as one JSON line on stdout (a table follows on
//! stderr):
//!
//! 1. **idle**: many visitors with the widget open and nothing to say.
//!    Their sockets are opened a bounded number at a time (a burst of
//!    thousands of handshakes would measure the accept queue, not the
//!    channel), each sends `hello` and waits for `welcome` and `history`;
//!    then all are held while the daemon's resident memory and CPU are
//!    sampled. Memory per connection is what sizes a deployment.
//! 2. **latency**: replies posted through `POST /v1/outbound` on a fixed
//!    schedule (open loop) to some of those visitors, each matched to the
//!    `reply` frame it becomes by the sequence number in its text. Latency
//!    counts from just before the POST is written. The POSTs are spread
//!    over enough keep-alive connections that each waits tens of
//!    milliseconds between its POSTs, so a slow answer does not delay the
//!    next one; those that still went out more than 5 ms after they were
//!    due are counted (`late_posts`), as a sign the schedule, not the
//!    daemon, set the pace. The POST's own round trip (202 back) is
//!    reported beside it: the difference is what the outbound topic, the
//!    dispatcher and the push add.
//!
//! Each open socket is one file descriptor here and one in the daemon:
//! raise `ulimit -n` for both (scripts/bench-chat does).

use omni_loadgen::proc::{busy_ticks, cpu_ticks, vm_rss_kib};
use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use futures::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::{
    Message, client::IntoClientRequest as _, protocol::WebSocketConfig,
};

#[derive(Debug, Parser)]
#[command(
    about = "Hold many web chat sockets open on a running omnid, then push replies to some of them through POST /v1/outbound and time their arrival"
)]
struct Args {
    /// Daemon address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// The webchat channel's id.
    #[arg(long, default_value = "bench-chat")]
    channel: String,
    /// Bearer token of the daemon's API (`http.api_token`).
    #[arg(long, env = "OMNID_BENCH_API_TOKEN", default_value = "")]
    api_token: String,
    /// The daemon's process id: its memory and CPU are what is measured.
    #[arg(long)]
    pid: Option<u32>,
    /// `Origin` of the sockets: one of the channel's `allowed_origins`.
    #[arg(long, default_value = "http://bench.local")]
    origin: String,
    /// Sockets to open and hold.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Sockets being opened at once (handshake to `history`).
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Seconds a socket may take from connect to `history`.
    #[arg(long, default_value_t = 30)]
    connect_timeout_secs: u64,
    /// Seconds to hold all sockets idle while sampling the daemon.
    #[arg(long, default_value_t = 10)]
    hold_secs: u64,
    /// Visitors (of the open sockets) the replies go to, round robin.
    #[arg(long, default_value_t = 1000)]
    latency_visitors: usize,
    /// Replies posted per second (open loop).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of posting.
    #[arg(long, default_value_t = 20)]
    duration_secs: u64,
    /// Seconds after the last POST a reply may still arrive before it
    /// counts as lost.
    #[arg(long, default_value_t = 5)]
    grace_secs: u64,
    /// Keep-alive HTTP connections the POSTs are spread over.
    #[arg(long, default_value_t = 32)]
    http_connections: usize,
}

/// Why a run could not be measured.
#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error(
        "no socket reached `history` ({failures:?}); is the channel `{channel}` a webchat channel with `{origin}` allowed?"
    )]
    NoneConnected {
        channel: String,
        origin: String,
        failures: BTreeMap<String, u64>,
    },
    #[error("{what} must be at least 1")]
    Zero { what: &'static str },
    #[error("--api-token (or OMNID_BENCH_API_TOKEN) is required for the latency phase")]
    NoToken,
}

// ---- pure parsing ----

/// The text of the reply numbered `seq` in run `run`.
fn reply_text(run: &str, seq: u64) -> String {
    format!("chat-bench {run} {seq}")
}

/// What a frame from the channel is to this tool.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Welcome {
        visitor_id: String,
    },
    History,
    /// One of this run's replies, by its number.
    Reply {
        seq: u64,
    },
    /// A reply not posted by this run (an earlier run's, or a person's).
    ForeignReply,
    Error {
        code: String,
    },
    Other,
}

fn parse_frame(text: &str, run: &str) -> Frame {
    let Ok(frame) = serde_json::from_str::<Value>(text) else {
        return Frame::Other;
    };
    match frame.get("type").and_then(Value::as_str) {
        Some("welcome") => match frame.get("visitor_id").and_then(Value::as_str) {
            Some(id) => Frame::Welcome {
                visitor_id: id.to_owned(),
            },
            None => Frame::Other,
        },
        Some("history") => Frame::History,
        Some("reply") => frame
            .get("text")
            .and_then(Value::as_str)
            .and_then(|t| t.strip_prefix("chat-bench "))
            .and_then(|t| t.strip_prefix(run))
            .and_then(|t| t.strip_prefix(' '))
            .and_then(|t| t.parse().ok())
            .map_or(Frame::ForeignReply, |seq| Frame::Reply { seq }),
        Some("error") => Frame::Error {
            code: frame
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or("unnamed")
                .to_owned(),
        },
        _ => Frame::Other,
    }
}

/// Milliseconds with 2 decimals, for the report.
fn ms(us: u64) -> f64 {
    (us as f64 / 10.0).round() / 100.0
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// CPU ticks of the daemon, this tool and the whole machine at one moment,
/// so a window can say what else ran during it.
#[derive(Debug, Clone, Copy)]
struct CpuMark {
    at: Instant,
    daemon: Option<u64>,
    tool: Option<u64>,
    machine: Option<u64>,
}

impl CpuMark {
    fn now(pid: Option<u32>) -> Self {
        Self {
            at: Instant::now(),
            daemon: pid.and_then(|pid| cpu_ticks(&pid.to_string())),
            tool: cpu_ticks("self"),
            machine: busy_ticks(),
        }
    }

    /// CPU seconds used from `self` to `end`: the daemon's, this tool's,
    /// and everything else's on the machine (other builds on a shared one).
    fn until(&self, end: &CpuMark) -> CpuUsed {
        let d = |a: Option<u64>, b: Option<u64>| a.zip(b).map(|(a, b)| b.saturating_sub(a));
        let daemon = d(self.daemon, end.daemon);
        let tool = d(self.tool, end.tool);
        let machine = d(self.machine, end.machine);
        let others = machine.map(|m| m.saturating_sub(daemon.unwrap_or(0) + tool.unwrap_or(0)));
        let s = |t: Option<u64>| t.map(|t| t as f64 / 100.0);
        CpuUsed {
            wall_s: end.at.duration_since(self.at).as_secs_f64(),
            daemon_s: s(daemon),
            tool_s: s(tool),
            others_s: s(others),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct CpuUsed {
    wall_s: f64,
    daemon_s: Option<f64>,
    tool_s: Option<f64>,
    others_s: Option<f64>,
}

impl CpuUsed {
    /// Percent of one core over the window.
    fn pct(&self, seconds: Option<f64>) -> Option<f64> {
        seconds
            .filter(|_| self.wall_s > 0.0)
            .map(|s| round1(s / self.wall_s * 100.0))
    }
}

// ---- the sockets ----

/// Where replies are timed: per sequence number, nanoseconds after `base`
/// (plus one, so 0 means "not yet") when the POST was sent, when its 202
/// came back and when its frame arrived.
struct Replies {
    run: String,
    base: Instant,
    sent: Vec<AtomicU64>,
    accepted: Vec<AtomicU64>,
    arrived: Vec<AtomicU64>,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    foreign: AtomicU64,
    /// Sockets that ended after `history` (the daemon closed them).
    dropped: AtomicU64,
    errors: std::sync::Mutex<BTreeMap<String, u64>>,
}

impl Replies {
    fn new(run: String, capacity: usize) -> Self {
        let zeros = || (0..capacity).map(|_| AtomicU64::new(0)).collect();
        Self {
            run,
            base: Instant::now(),
            sent: zeros(),
            accepted: zeros(),
            arrived: zeros(),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            errors: Default::default(),
        }
    }

    fn stamp(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    fn on_frame(&self, text: &str) {
        match parse_frame(text, &self.run) {
            Frame::Reply { seq } => {
                let now = self.stamp(Instant::now());
                let slot = usize::try_from(seq).ok().and_then(|i| self.arrived.get(i));
                match slot {
                    Some(slot)
                        if slot
                            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire)
                            .is_ok() =>
                    {
                        self.delivered.fetch_add(1, Ordering::AcqRel);
                    }
                    Some(_) => {
                        self.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        self.foreign.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Frame::ForeignReply => {
                self.foreign.fetch_add(1, Ordering::Relaxed);
            }
            Frame::Error { code } => {
                let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
                *errors.entry(code).or_default() += 1;
            }
            Frame::Welcome { .. } | Frame::History | Frame::Other => {}
        }
    }
}

/// Opens one socket, says `hello` and waits for `welcome` and `history`;
/// the visitor id, or why not.
async fn open(args: &Args, config: WebSocketConfig, run: &str) -> Result<(String, Socket), String> {
    let stream = tokio::net::TcpStream::connect(&args.addr)
        .await
        .map_err(|e| match e.raw_os_error() {
            Some(24) => "connect: too many open files (raise ulimit -n)".to_owned(),
            _ => format!("connect: {}", e.kind()),
        })?;
    let _ = stream.set_nodelay(true);
    let url = format!("ws://{}/channels/{}/socket", args.addr, args.channel);
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    let origin = args
        .origin
        .parse()
        .map_err(|_| "request: --origin is not a header value".to_owned())?;
    request.headers_mut().insert("origin", origin);
    let (mut socket, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(response) => {
                    format!("upgrade refused: http {}", response.status().as_u16())
                }
                other => format!("upgrade: {other}"),
            })?;
    socket
        .send(Message::text(r#"{"type":"hello","locale":"en"}"#))
        .await
        .map_err(|e| format!("hello: {e}"))?;
    let mut visitor = None;
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => match parse_frame(&text, run) {
                Frame::Welcome { visitor_id } => visitor = Some(visitor_id),
                Frame::History => {
                    return visitor
                        .map(|v| (v, socket))
                        .ok_or_else(|| "history before welcome".to_owned());
                }
                Frame::Error { code } => return Err(format!("error frame: {code}")),
                _ => {}
            },
            Some(Ok(Message::Close(frame))) => {
                return Err(format!(
                    "closed before history: {}",
                    frame.map_or(1005, |f| u16::from(f.code))
                ));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("read: {e}")),
            None => return Err("ended before history".to_owned()),
        }
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// One visitor: opens its socket (holding a place among those being
/// opened), reports its visitor id, then reads frames until the socket
/// ends or the process does.
async fn visitor(
    args: Arc<Args>,
    config: WebSocketConfig,
    opening: Arc<Semaphore>,
    replies: Arc<Replies>,
    done: mpsc::UnboundedSender<Result<String, String>>,
) {
    let Ok(place) = opening.acquire_owned().await else {
        return;
    };
    let timeout = Duration::from_secs(args.connect_timeout_secs);
    let opened = match tokio::time::timeout(timeout, open(&args, config, &replies.run)).await {
        Ok(result) => result,
        Err(_) => Err("timed out before history".to_owned()),
    };
    drop(place);
    let mut socket = match opened {
        Ok((visitor_id, socket)) => {
            let _ = done.send(Ok(visitor_id));
            socket
        }
        Err(why) => {
            let _ = done.send(Err(why));
            return;
        }
    };
    drop(done);
    while let Some(message) = socket.next().await {
        match message {
            Ok(Message::Text(text)) => replies.on_frame(&text),
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    replies.dropped.fetch_add(1, Ordering::Relaxed);
}

// ---- the HTTP side ----

/// A POST going out later than this after it was due counts as late.
const LATE: Duration = Duration::from_millis(5);

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn http_connect(addr: &str) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

#[derive(Default)]
struct PostTally {
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    /// POSTs sent more than [`LATE`] after they were due (the tool fell
    /// behind).
    late: u64,
    /// The most any POST went out after it was due.
    max_lateness: Duration,
    last_sent: Option<Instant>,
}

/// One keep-alive connection posting replies `worker`, `worker + workers`,
/// ... each at its due time.
#[allow(clippy::too_many_arguments)]
async fn poster(
    args: Arc<Args>,
    replies: Arc<Replies>,
    visitors: Arc<Vec<String>>,
    worker: usize,
    workers: usize,
    total: usize,
    start: Instant,
    mut sender: Sender,
) -> anyhow::Result<PostTally> {
    let mut tally = PostTally::default();
    let uri = format!("http://{}/v1/outbound", args.addr);
    let authorization = format!("Bearer {}", args.api_token);
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    for seq in (worker..total).step_by(workers) {
        let Some(recipient) = visitors.get(seq % visitors.len().max(1)) else {
            break;
        };
        let due = start + interval.mul_f64(seq as f64);
        tokio::time::sleep_until(due.into()).await;
        let body = json!({
            "channelId": args.channel,
            "providerMessageId": format!("chat-bench-{}-{seq}", replies.run),
            "recipients": [{ "kind": "HANDLE_KIND_CHAT_VISITOR", "value": recipient, "scope": args.channel }],
            "content": { "text": reply_text(&replies.run, seq as u64) },
        })
        .to_string();
        let request = http::Request::post(&uri)
            .header("host", &args.addr)
            .header("content-type", "application/json")
            .header("authorization", &authorization)
            .body(Full::new(Bytes::from(body)))?;
        if sender.ready().await.is_err() {
            sender = http_connect(&args.addr).await?;
        }
        let sent = Instant::now();
        if let Some(slot) = replies.sent.get(seq) {
            slot.store(replies.stamp(sent), Ordering::Release);
        }
        let lateness = sent.saturating_duration_since(due);
        tally.max_lateness = tally.max_lateness.max(lateness);
        if lateness > LATE {
            tally.late += 1;
        }
        tally.last_sent = Some(sent);
        match sender.send_request(request).await {
            Ok(response) => {
                let status = response.status();
                let _ = response.into_body().collect().await;
                if status == http::StatusCode::ACCEPTED
                    && let Some(slot) = replies.accepted.get(seq)
                {
                    slot.store(replies.stamp(Instant::now()), Ordering::Release);
                }
                *tally.statuses.entry(status.as_u16()).or_default() += 1;
            }
            Err(_) => {
                tally.transport_errors += 1;
                sender = http_connect(&args.addr).await?;
            }
        }
    }
    Ok(tally)
}

// ---- the phases ----

struct Idle {
    report: Value,
    visitors: Vec<String>,
}

async fn idle_phase(args: &Arc<Args>, replies: &Arc<Replies>) -> anyhow::Result<Idle> {
    let pid = args.pid;
    let rss_before = pid.and_then(vm_rss_kib);
    let mut config = WebSocketConfig::default();
    // Frames here are a few hundred bytes; the 128 KiB defaults would make
    // this tool's memory, not the daemon's, the limit.
    config.read_buffer_size = 4096;
    config.write_buffer_size = 0;
    let opening = Arc::new(Semaphore::new(args.connect_concurrency));
    let (done, mut results) = mpsc::unbounded_channel();
    let start = Instant::now();
    for _ in 0..args.connections {
        tokio::spawn(visitor(
            args.clone(),
            config,
            opening.clone(),
            replies.clone(),
            done.clone(),
        ));
    }
    drop(done);
    let mut visitors = Vec::with_capacity(args.connections);
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    while let Some(result) = results.recv().await {
        match result {
            Ok(id) => visitors.push(id),
            Err(why) => *failures.entry(why).or_default() += 1,
        }
    }
    let connect_s = start.elapsed().as_secs_f64();
    if visitors.is_empty() {
        return Err(BenchError::NoneConnected {
            channel: args.channel.clone(),
            origin: args.origin.clone(),
            failures,
        }
        .into());
    }
    let rss_connected = pid.and_then(vm_rss_kib);
    let cpu_start = CpuMark::now(pid);
    let hold_end = cpu_start.at + Duration::from_secs(args.hold_secs);
    let mut rss_peak = rss_connected;
    let mut rss_last = rss_connected;
    while Instant::now() < hold_end {
        let next = (Instant::now() + Duration::from_millis(500)).min(hold_end);
        tokio::time::sleep_until(next.into()).await;
        rss_last = pid.and_then(vm_rss_kib);
        rss_peak = rss_peak.max(rss_last);
    }
    let cpu = cpu_start.until(&CpuMark::now(pid));
    let connected = visitors.len();
    let mib = |kib: Option<u64>| kib.map(|k| round1(k as f64 / 1024.0));
    let per_connection_kib = rss_before
        .zip(rss_last)
        .map(|(b, a)| round1(a.saturating_sub(b) as f64 / connected as f64));
    let failed: u64 = failures.values().sum();
    let report = json!({
        "phase": "idle",
        "connections": args.connections,
        "connect_concurrency": args.connect_concurrency,
        "connected": connected,
        "failed": failed,
        "failures": failures,
        "connect_all_s": round1(connect_s * 10.0) / 10.0,
        "connects_per_s": round1(connected as f64 / connect_s.max(1e-9)),
        "hold_s": args.hold_secs,
        "dropped_during_hold": replies.dropped.load(Ordering::Relaxed),
        "daemon_rss_mib": {
            "before": mib(rss_before),
            "connected": mib(rss_connected),
            "after_hold": mib(rss_last),
            "peak": mib(rss_peak),
        },
        "daemon_rss_kib_per_connection": per_connection_kib,
        "cpu_pct_idle": {
            "daemon": cpu.pct(cpu.daemon_s),
            "tool": cpu.pct(cpu.tool_s),
            "others": cpu.pct(cpu.others_s),
        },
        "tool_rss_mib": mib(vm_rss_kib(std::process::id())),
    });
    Ok(Idle { report, visitors })
}

async fn latency_phase(
    args: &Arc<Args>,
    replies: &Arc<Replies>,
    visitors: Vec<String>,
    total: usize,
) -> anyhow::Result<Value> {
    let pid = args.pid;
    let visitors: Arc<Vec<String>> =
        Arc::new(visitors.into_iter().take(args.latency_visitors).collect());
    let workers = args.http_connections;
    // Connections first, so the schedule does not start with handshakes.
    let mut senders = Vec::with_capacity(workers);
    for _ in 0..workers {
        senders.push(http_connect(&args.addr).await?);
    }
    let start = Instant::now() + Duration::from_millis(100);
    let cpu_start = CpuMark {
        at: start,
        ..CpuMark::now(pid)
    };
    let mut tasks = Vec::with_capacity(workers);
    for (worker, sender) in senders.into_iter().enumerate() {
        tasks.push(tokio::spawn(poster(
            args.clone(),
            replies.clone(),
            visitors.clone(),
            worker,
            workers,
            total,
            start,
            sender,
        )));
    }
    let mut posts = PostTally::default();
    for task in tasks {
        let tally = task.await??;
        posts.transport_errors += tally.transport_errors;
        posts.late += tally.late;
        posts.max_lateness = posts.max_lateness.max(tally.max_lateness);
        posts.last_sent = posts.last_sent.max(tally.last_sent);
        for (status, n) in tally.statuses {
            *posts.statuses.entry(status).or_default() += n;
        }
    }
    let posted_s = posts
        .last_sent
        .map_or(0.0, |t| t.saturating_duration_since(start).as_secs_f64());
    let accepted = posts.statuses.get(&202).copied().unwrap_or(0);
    // Wait for the last replies, at most the grace period after the last
    // POST; the CPU window ends when the last one arrives.
    let deadline =
        posts.last_sent.unwrap_or_else(Instant::now) + Duration::from_secs(args.grace_secs);
    while replies.delivered.load(Ordering::Acquire) < accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu = cpu_start.until(&CpuMark::now(pid));

    let mut push = Histogram::<u64>::new(3)?;
    let mut post = Histogram::<u64>::new(3)?;
    let mut lost = 0u64;
    for seq in 0..total {
        let load = |v: &[AtomicU64]| v.get(seq).map_or(0, |a| a.load(Ordering::Acquire));
        let (sent, ok, arrived) = (
            load(&replies.sent),
            load(&replies.accepted),
            load(&replies.arrived),
        );
        if sent == 0 || ok == 0 {
            continue;
        }
        let _ = post.record((ok.saturating_sub(sent) / 1000).max(1));
        if arrived == 0 {
            lost += 1;
        } else {
            let _ = push.record((arrived.saturating_sub(sent) / 1000).max(1));
        }
    }
    let delivered = replies.delivered.load(Ordering::Acquire);
    let per_reply_us = |s: Option<f64>| {
        s.filter(|_| delivered > 0)
            .map(|s| round1(s * 1e6 / delivered as f64))
    };
    let quantiles = |h: &Histogram<u64>| {
        json!({
            "p50": ms(h.value_at_quantile(0.50)),
            "p90": ms(h.value_at_quantile(0.90)),
            "p99": ms(h.value_at_quantile(0.99)),
            "max": ms(h.max()),
        })
    };
    let errors = replies
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(json!({
        "phase": "latency",
        "open_sockets": args.connections,
        "visitors": visitors.len(),
        "target_rate": args.rate,
        "duration_s": args.duration_secs,
        "http_connections": workers,
        "posted": posts.statuses.values().sum::<u64>(),
        "accepted": accepted,
        "achieved_rate_per_s": round1(accepted as f64 / posted_s.max(1e-9)),
        "statuses": posts.statuses,
        "transport_errors": posts.transport_errors,
        "late_posts": posts.late,
        "max_post_lateness_ms": ms(u64::try_from(posts.max_lateness.as_micros()).unwrap_or(u64::MAX)),
        "delivered": delivered,
        "lost": lost,
        "duplicates": replies.duplicates.load(Ordering::Relaxed),
        "foreign_replies": replies.foreign.load(Ordering::Relaxed),
        "error_frames": errors,
        "dropped_sockets": replies.dropped.load(Ordering::Relaxed),
        "reply_latency_ms": quantiles(&push),
        "post_202_ms": quantiles(&post),
        "window_s": round1(cpu.wall_s),
        "cpu_us_per_reply": {
            "daemon": per_reply_us(cpu.daemon_s),
            "tool": per_reply_us(cpu.tool_s),
            "others": per_reply_us(cpu.others_s),
        },
        "daemon_cpu_pct": cpu.pct(cpu.daemon_s),
        "daemon_rss_mib_after": pid.and_then(vm_rss_kib).map(|k| round1(k as f64 / 1024.0)),
    }))
}

fn table(idle: &Value, latency: Option<&Value>) {
    let v = |x: &Value| match x {
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    eprintln!(
        "# idle: {} of {} sockets open ({} failed) in {} s ({}/s, {} at a time), held {} s",
        v(&idle["connected"]),
        v(&idle["connections"]),
        v(&idle["failed"]),
        v(&idle["connect_all_s"]),
        v(&idle["connects_per_s"]),
        v(&idle["connect_concurrency"]),
        v(&idle["hold_s"])
    );
    eprintln!(
        "#   daemon RSS MiB: before {}  connected {}  after hold {}  peak {}  -> {} KiB per connection",
        v(&idle["daemon_rss_mib"]["before"]),
        v(&idle["daemon_rss_mib"]["connected"]),
        v(&idle["daemon_rss_mib"]["after_hold"]),
        v(&idle["daemon_rss_mib"]["peak"]),
        v(&idle["daemon_rss_kib_per_connection"]),
    );
    eprintln!(
        "#   CPU % of a core while idle: daemon {}  tool {}  others {};  tool RSS {} MiB",
        v(&idle["cpu_pct_idle"]["daemon"]),
        v(&idle["cpu_pct_idle"]["tool"]),
        v(&idle["cpu_pct_idle"]["others"]),
        v(&idle["tool_rss_mib"]),
    );
    let Some(l) = latency else { return };
    eprintln!(
        "# latency: {} replies/s target, {} achieved ({} accepted of {} posted, statuses {}), {} visitors of {} open sockets",
        v(&l["target_rate"]),
        v(&l["achieved_rate_per_s"]),
        v(&l["accepted"]),
        v(&l["posted"]),
        v(&l["statuses"]),
        v(&l["visitors"]),
        v(&l["open_sockets"]),
    );
    eprintln!(
        "#   {:<24} {:>8} {:>8} {:>8} {:>8}",
        "ms", "p50", "p90", "p99", "max"
    );
    for (name, key) in [
        ("POST → 202 (ceiling)", "post_202_ms"),
        ("POST → reply frame", "reply_latency_ms"),
    ] {
        let h = &l[key];
        eprintln!(
            "#   {:<24} {:>8} {:>8} {:>8} {:>8}",
            name,
            v(&h["p50"]),
            v(&h["p90"]),
            v(&h["p99"]),
            v(&h["max"])
        );
    }
    eprintln!(
        "#   delivered {}  lost {}  duplicates {}  late posts {} (max {} ms late);  daemon {} µs CPU per reply ({} % of a core), others {} µs",
        v(&l["delivered"]),
        v(&l["lost"]),
        v(&l["duplicates"]),
        v(&l["late_posts"]),
        v(&l["max_post_lateness_ms"]),
        v(&l["cpu_us_per_reply"]["daemon"]),
        v(&l["daemon_cpu_pct"]),
        v(&l["cpu_us_per_reply"]["others"]),
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    for (what, n) in [
        ("--connections", args.connections),
        ("--connect-concurrency", args.connect_concurrency),
        ("--http-connections", args.http_connections),
        ("--rate", usize::try_from(args.rate).unwrap_or(usize::MAX)),
    ] {
        if n == 0 {
            return Err(BenchError::Zero { what }.into());
        }
    }
    let total = usize::try_from(args.rate.saturating_mul(args.duration_secs))?;
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)?
        .as_millis()
        .to_string();
    let replies = Arc::new(Replies::new(run, total));
    let idle = idle_phase(&args, &replies).await?;
    println!("{}", idle.report);
    let latency = if args.latency_visitors == 0 || total == 0 {
        None
    } else {
        if args.api_token.is_empty() {
            return Err(BenchError::NoToken.into());
        }
        let report = latency_phase(&args, &replies, idle.visitors, total).await?;
        println!("{report}");
        Some(report)
    };
    table(&idle.report, latency.as_ref());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_told_apart_and_only_this_runs_replies_are_numbered() {
        let run = "1700000000000";
        assert_eq!(
            parse_frame(
                r#"{"type":"welcome","visitor_id":"v_abc","visitor_token":"t","identity":"none"}"#,
                run
            ),
            Frame::Welcome {
                visitor_id: "v_abc".into()
            }
        );
        assert_eq!(
            parse_frame(r#"{"type":"history","messages":[]}"#, run),
            Frame::History
        );
        let reply = json!({ "type": "reply", "event_id": "e", "text": reply_text(run, 4711), "sent_at": "x" });
        assert_eq!(
            parse_frame(&reply.to_string(), run),
            Frame::Reply { seq: 4711 }
        );
        let other_run = json!({ "type": "reply", "text": reply_text("1600000000000", 3) });
        assert_eq!(
            parse_frame(&other_run.to_string(), run),
            Frame::ForeignReply
        );
        let person = json!({ "type": "reply", "text": "chat-bench 1700000000000 soon" });
        assert_eq!(parse_frame(&person.to_string(), run), Frame::ForeignReply);
        assert_eq!(
            parse_frame(
                r#"{"type":"error","code":"rate_limited","message":"slow down"}"#,
                run
            ),
            Frame::Error {
                code: "rate_limited".into()
            }
        );
        assert_eq!(parse_frame("not json", run), Frame::Other);
        assert_eq!(parse_frame(r#"{"type":"welcome"}"#, run), Frame::Other);
    }

    #[test]
    fn a_reply_is_counted_once_and_out_of_range_numbers_are_foreign() {
        let replies = Replies::new("7".into(), 4);
        let frame = |seq: u64| json!({ "type": "reply", "text": reply_text("7", seq) }).to_string();
        replies.on_frame(&frame(2));
        replies.on_frame(&frame(2));
        replies.on_frame(&frame(9));
        replies.on_frame(r#"{"type":"error","code":"state_unavailable"}"#);
        assert_eq!(replies.delivered.load(Ordering::Relaxed), 1);
        assert_eq!(replies.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(replies.foreign.load(Ordering::Relaxed), 1);
        assert_ne!(replies.arrived[2].load(Ordering::Relaxed), 0);
        assert_eq!(replies.arrived[1].load(Ordering::Relaxed), 0);
        assert_eq!(
            replies.errors.lock().unwrap().get("state_unavailable"),
            Some(&1)
        );
    }
}
