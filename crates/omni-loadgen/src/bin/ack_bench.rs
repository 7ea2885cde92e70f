//! `ack_bench`: how long a customer waits for the rules' acknowledgement,
//! from the moment their message is durable to the moment the daemon
//! hands the acknowledgement to the provider.
//!
//! The daemon runs a generic SMS gateway channel (`kind = "sms_gateway"`)
//! whose `outbound.url` is this tool, and a rule that acknowledges every
//! new conversation. The tool posts signed gateway webhooks on a fixed
//! schedule (open loop), each from a number no one used before, so every
//! message opens a conversation and earns one acknowledgement. The `2xx`
//! of a POST is the moment its message is durable (the webhook driver
//! answers after the log's commit); the acknowledgement's arrival at the
//! fake gateway, matched to its message by the recipient number, is the
//! moment it was handed over. Between the two lie the threading worker,
//! the timeline relay that puts the reply on the outbound topic, and the
//! outbound dispatcher with the channel's HTTP call.
//!
//! Beside it, as the ceiling measured in the same run: the POST's own
//! latency (from when it was due, so a stalled daemon cannot hide queueing),
//! and the daemon's CPU per message. `--metrics` samples the daemon's
//! `/metrics` every second, so a backlog shows at which stage it forms.
//! `--out` writes every message's times and the samples as CSV, for
//! scripts/bench-ack's plot.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    fmt::Write as _,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use omni_loadgen::proc::{busy_ticks, cpu_ticks, thread_ticks};
use serde_json::{Value, json};
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(
    about = "Post new customers' SMS to a running omnid's gateway channel and time each rules acknowledgement from the message's durable 2xx to its arrival at a fake gateway"
)]
struct Args {
    /// Daemon address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// The `sms_gateway` channel's id.
    #[arg(long, default_value = "bench-sms")]
    channel: String,
    /// The channel's HMAC-SHA256 secret (hex signature in `x-signature`).
    #[arg(long, env = "OMNID_BENCH_GATEWAY_SECRET", default_value = "")]
    secret: String,
    /// Where the fake gateway listens: the channel's `outbound.url` must
    /// point here, with `body_template` carrying `"to":"{{to}}"`.
    #[arg(long, default_value = "127.0.0.1:18091")]
    gateway_listen: String,
    /// The daemon's process id: its CPU per message is reported.
    #[arg(long)]
    pid: Option<u32>,
    /// Messages per second (open loop).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of posting.
    #[arg(long, default_value_t = 60)]
    duration_secs: u64,
    /// Seconds after the last POST an acknowledgement may still arrive
    /// before it counts as not handed over.
    #[arg(long, default_value_t = 300)]
    grace_secs: u64,
    /// Keep-alive HTTP connections the POSTs are spread over.
    #[arg(long, default_value_t = 32)]
    http_connections: usize,
    /// Whether acknowledgements are expected (`false` for the run with the
    /// rules off: the tool then waits, within the grace period, only for
    /// the threading worker to catch up, which needs `--metrics`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    acks: bool,
    /// Sample the daemon's `/metrics` every second.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    metrics: bool,
    /// A name for this run in the report.
    #[arg(long, default_value = "rules on")]
    label: String,
    /// Directory for `messages.csv`, `samples.csv` and `summary.json`.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Why a run could not be measured.
#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("{what} must be at least 1")]
    Zero { what: &'static str },
    #[error("--secret (or OMNID_BENCH_GATEWAY_SECRET) is required")]
    NoSecret,
    #[error("{messages} messages do not fit the {NUMBERS} distinct sender numbers")]
    TooMany { messages: u64 },
}

// ---- numbers and bodies ----

/// Sender numbers are `+1 201 2000000` onwards: valid NANP mobile numbers
/// (the daemon validates numbers against libphonenumber's metadata), one
/// per message, so every message is a new customer.
const FIRST_NUMBER: u64 = 12_012_000_000;
/// How many numbers that range holds (`+1 201 [2-9]xx xxxx`).
const NUMBERS: u64 = 8_000_000;

fn sender_number(seq: u64) -> String {
    format!("+{}", FIRST_NUMBER + seq)
}

/// The message number an acknowledgement to `to` answers, if `to` is one
/// of this tool's senders (with or without `+`).
fn seq_of_recipient(to: &str) -> Option<u64> {
    let digits: u64 = to.trim().trim_start_matches('+').parse().ok()?;
    digits
        .checked_sub(FIRST_NUMBER)
        .filter(|seq| *seq < NUMBERS)
}

/// What the fake gateway makes of one request body: the message number,
/// or `None` for anything that is not an acknowledgement of this tool's.
fn seq_of_gateway_body(body: &[u8]) -> Option<u64> {
    let value: Value = serde_json::from_slice(body).ok()?;
    seq_of_recipient(value.get("to")?.as_str()?)
}

/// The gateway webhook for message `seq` of run `run`, and its signature.
fn webhook(secret: &[u8], run: &str, seq: u64) -> (String, String) {
    let body = json!({
        "id": format!("ack-bench-{run}-{seq}"),
        "from": sender_number(seq),
        "text": "Hello, I wrote to you about the parcel I am waiting for. Could someone look into it?",
    })
    .to_string();
    let mac = omni_connector::signature::hmac_sha256(secret, &[body.as_bytes()]);
    let mut signature = String::with_capacity(64);
    for byte in mac {
        let _ = write!(signature, "{byte:02x}");
    }
    (body, signature)
}

// ---- /metrics ----

/// The sum of every sample of `name` in a Prometheus text exposition whose
/// labels contain `labels` (`""`: all).
fn metric_sum(text: &str, name: &str, labels: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_set, value) = match rest.chars().next() {
            Some('{') => match rest.find('}') {
                Some(end) => (&rest[..=end], &rest[end + 1..]),
                None => continue,
            },
            Some(' ') => ("", rest),
            _ => continue,
        };
        if !label_set.contains(labels) {
            continue;
        }
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// The pipeline stages `/metrics` shows, as counts since the start.
#[derive(Debug, Clone, Copy, Default)]
struct Stages {
    /// Inbound events the threading worker has threaded (messages and the
    /// acknowledgements' delivery statuses alike).
    threaded: Option<f64>,
    /// Acknowledgements the timeline relay put on the outbound topic.
    handed_to_outbound: Option<f64>,
    /// Deliveries the outbound dispatcher finished (any outcome).
    delivered: Option<f64>,
}

fn stages(text: &str) -> Stages {
    Stages {
        threaded: metric_sum(text, "omnid_threading_events_total", "outcome=\"threaded\""),
        handed_to_outbound: metric_sum(
            text,
            "omnid_automated_replies_total",
            "outcome=\"handed_over\"",
        ),
        delivered: metric_sum(text, "omnid_outbound_deliveries_total", ""),
    }
}

// ---- the run's clock ----

/// Per message, nanoseconds after `base` (plus one, so 0 means "not yet")
/// when its POST went out, when its 2xx came back and when its
/// acknowledgement reached the gateway.
struct Times {
    base: Instant,
    sent: Vec<AtomicU64>,
    answered: Vec<AtomicU64>,
    arrived: Vec<AtomicU64>,
    acks: AtomicU64,
    duplicates: AtomicU64,
    foreign: AtomicU64,
}

impl Times {
    fn new(base: Instant, n: usize) -> Self {
        let zeros = || (0..n).map(|_| AtomicU64::new(0)).collect();
        Self {
            base,
            sent: zeros(),
            answered: zeros(),
            arrived: zeros(),
            acks: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
        }
    }

    fn stamp(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// Records an acknowledgement's arrival: the first for a message
    /// counts, a repeat is a duplicate.
    fn arrive(&self, seq: Option<u64>, at: Instant) {
        let slot = seq
            .and_then(|s| usize::try_from(s).ok())
            .and_then(|i| self.arrived.get(i));
        match slot {
            Some(slot) => {
                if slot
                    .compare_exchange(0, self.stamp(at), Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.acks.fetch_add(1, Ordering::AcqRel);
                } else {
                    self.duplicates.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                self.foreign.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

// ---- the fake gateway ----

async fn gateway_answer(
    times: Arc<Times>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match request.into_body().collect().await {
        Ok(body) => {
            times.arrive(seq_of_gateway_body(&body.to_bytes()), Instant::now());
            (http::StatusCode::OK, r#"{"status":"queued"}"#)
        }
        Err(_) => (http::StatusCode::BAD_REQUEST, "{}"),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Answers every send with `200`, stamping the arrival first.
async fn gateway(listener: TcpListener, times: Arc<Times>) -> std::io::Result<()> {
    let mut builder = http1::Builder::new();
    builder.keep_alive(true);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let times = times.clone();
        let connection = builder.serve_connection(
            TokioIo::new(stream),
            service_fn(move |request| gateway_answer(times.clone(), request)),
        );
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

// ---- the posts ----

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

/// A GET's body, or `None` when the daemon did not answer 200.
async fn get(sender: &mut Sender, addr: &str, path: &str) -> Option<String> {
    sender.ready().await.ok()?;
    let request = http::Request::get(format!("http://{addr}{path}"))
        .header("host", addr)
        .body(Full::new(Bytes::new()))
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    if response.status() != http::StatusCode::OK {
        return None;
    }
    let body = response.into_body().collect().await.ok()?.to_bytes();
    String::from_utf8(body.to_vec()).ok()
}

/// A POST going out later than this after it was due counts as late.
const LATE: Duration = Duration::from_millis(5);

#[derive(Default)]
struct PostTally {
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    late: u64,
    max_lateness: Duration,
    last_answered: Option<Instant>,
}

/// One keep-alive connection posting messages `worker`, `worker +
/// workers`, ... each at its due time.
#[allow(clippy::too_many_arguments)]
async fn poster(
    args: Arc<Args>,
    times: Arc<Times>,
    run: Arc<str>,
    worker: usize,
    workers: usize,
    total: usize,
    start: Instant,
    mut sender: Sender,
) -> anyhow::Result<PostTally> {
    let mut tally = PostTally::default();
    let uri = format!("http://{}/webhooks/{}", args.addr, args.channel);
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    for seq in (worker..total).step_by(workers) {
        let due = start + interval.mul_f64(seq as f64);
        tokio::time::sleep_until(due.into()).await;
        let (body, signature) = webhook(args.secret.as_bytes(), &run, seq as u64);
        let request = http::Request::post(&uri)
            .header("host", &args.addr)
            .header("content-type", "application/json")
            .header("x-signature", signature)
            .body(Full::new(Bytes::from(body)))?;
        if sender.ready().await.is_err() {
            sender = http_connect(&args.addr).await?;
        }
        let sent = Instant::now();
        times.sent[seq].store(times.stamp(sent), Ordering::Release);
        let lateness = sent.saturating_duration_since(due);
        tally.max_lateness = tally.max_lateness.max(lateness);
        if lateness > LATE {
            tally.late += 1;
        }
        match sender.send_request(request).await {
            Ok(response) => {
                let status = response.status();
                let _ = response.into_body().collect().await;
                let now = Instant::now();
                if status.is_success() {
                    times.answered[seq].store(times.stamp(now), Ordering::Release);
                }
                tally.last_answered = Some(now);
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

// ---- sampling ----

/// One sample of the run, each second.
#[derive(Debug, Clone, Copy)]
struct Sample {
    t_s: f64,
    answered: u64,
    acks: u64,
    stages: Stages,
    daemon_ticks: Option<u64>,
    tool_ticks: Option<u64>,
    machine_ticks: Option<u64>,
}

fn answered_count(times: &Times) -> u64 {
    times
        .answered
        .iter()
        .filter(|a| a.load(Ordering::Relaxed) != 0)
        .count() as u64
}

async fn sample(
    args: &Args,
    times: &Times,
    start: Instant,
    metrics: &mut Option<Sender>,
) -> Sample {
    let stages = match metrics.as_mut() {
        Some(sender) => match get(sender, &args.addr, "/metrics").await {
            Some(text) => stages(&text),
            None => {
                // A closed connection: reconnect for the next sample.
                *metrics = http_connect(&args.addr).await.ok();
                Stages::default()
            }
        },
        None => Stages::default(),
    };
    Sample {
        t_s: Instant::now()
            .saturating_duration_since(start)
            .as_secs_f64(),
        answered: answered_count(times),
        acks: times.acks.load(Ordering::Acquire),
        stages,
        daemon_ticks: args.pid.and_then(|pid| cpu_ticks(&pid.to_string())),
        tool_ticks: cpu_ticks("self"),
        machine_ticks: busy_ticks(),
    }
}

// ---- the report ----

/// Quantile `q` of `sorted` when it holds only the values of the first
/// `sorted.len()` of `population` items and the rest are larger than any
/// (not arrived): `None` when the quantile falls among those.
fn quantile_of(sorted: &[u64], population: usize, q: f64) -> Option<u64> {
    if population == 0 {
        return None;
    }
    let rank = ((q * population as f64).ceil() as usize).clamp(1, population);
    sorted.get(rank - 1).copied()
}

fn ms(ns: Option<u64>) -> Value {
    ns.map_or(Value::Null, |ns| {
        json!((ns as f64 / 10_000.0).round() / 100.0)
    })
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn quantiles(sorted: &[u64], population: usize) -> Value {
    json!({
        "p50": ms(quantile_of(sorted, population, 0.50)),
        "p90": ms(quantile_of(sorted, population, 0.90)),
        "p99": ms(quantile_of(sorted, population, 0.99)),
        "max": ms(if sorted.len() == population { sorted.last().copied() } else { None }),
    })
}

/// The daemon's CPU per message by thread name over the window, largest
/// first (threads that ended during it are missing).
fn thread_share(
    start: Option<BTreeMap<String, u64>>,
    end: Option<BTreeMap<String, u64>>,
    messages: u64,
) -> Value {
    let (Some(start), Some(end)) = (start, end) else {
        return Value::Null;
    };
    let mut used: Vec<(String, u64)> = end
        .into_iter()
        .map(|(name, ticks)| {
            let before = start.get(&name).copied().unwrap_or(0);
            (name, ticks.saturating_sub(before))
        })
        .filter(|(_, ticks)| *ticks > 0)
        .collect();
    used.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Value::Array(
        used.into_iter()
            .map(|(name, ticks)| {
                json!({
                    "thread": name,
                    "us_per_msg": round1(ticks as f64 * 1e4 / messages.max(1) as f64),
                })
            })
            .collect(),
    )
}

/// Each stage's rate between two samples: where a backlog builds, the
/// stage after it runs slower than the one before.
fn stage_rates(from: &Sample, to: &Sample) -> Value {
    let secs = to.t_s - from.t_s;
    // A counter appears in /metrics at its first increment: absent
    // before, it was 0.
    let rate = |a: Option<f64>, b: Option<f64>| {
        b.filter(|_| secs > 0.5)
            .map(|b| round1((b - a.unwrap_or(0.0)) / secs))
    };
    let count = |n: u64| Some(n as f64);
    json!({
        "seconds": round1(secs),
        "durable": rate(count(from.answered), count(to.answered)),
        "threaded": rate(from.stages.threaded, to.stages.threaded),
        "handed_to_outbound": rate(from.stages.handed_to_outbound, to.stages.handed_to_outbound),
        "delivered": rate(from.stages.delivered, to.stages.delivered),
        "acks_at_gateway": rate(count(from.acks), count(to.acks)),
    })
}

fn write_csvs(
    dir: &std::path::Path,
    times: &Times,
    start: Instant,
    interval: Duration,
    samples: &[Sample],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Seconds since the schedule's start; empty when it did not happen.
    let offset = times.stamp(start);
    let secs = |stamp: u64| {
        if stamp == 0 {
            String::new()
        } else {
            format!("{:.6}", (stamp as f64 - offset as f64) / 1e9)
        }
    };
    let mut csv = String::from("seq,due_s,sent_s,answered_s,arrived_s\n");
    for seq in 0..times.sent.len() {
        let load = |v: &[AtomicU64]| v[seq].load(Ordering::Acquire);
        let _ = writeln!(
            csv,
            "{seq},{:.6},{},{},{}",
            interval.as_secs_f64() * seq as f64,
            secs(load(&times.sent)),
            secs(load(&times.answered)),
            secs(load(&times.arrived)),
        );
    }
    std::fs::write(dir.join("messages.csv"), csv)?;
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v}"));
    let opt_u = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
    let mut csv = String::from(
        "t_s,answered,acks,threaded,handed_to_outbound,delivered,daemon_ticks,tool_ticks,machine_ticks\n",
    );
    for s in samples {
        let _ = writeln!(
            csv,
            "{:.3},{},{},{},{},{},{},{},{}",
            s.t_s,
            s.answered,
            s.acks,
            opt(s.stages.threaded),
            opt(s.stages.handed_to_outbound),
            opt(s.stages.delivered),
            opt_u(s.daemon_ticks),
            opt_u(s.tool_ticks),
            opt_u(s.machine_ticks),
        );
    }
    std::fs::write(dir.join("samples.csv"), csv)?;
    Ok(())
}

fn table(r: &Value) {
    let v = |x: &Value| match x {
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    eprintln!(
        "# {}: {} msg/s target for {} s, {} achieved ({} answered 2xx of {} posted, statuses {}, transport errors {}, late posts {}, max {} ms late)",
        v(&r["label"]),
        v(&r["target_rate"]),
        v(&r["duration_s"]),
        v(&r["achieved_rate_per_s"]),
        v(&r["answered"]),
        v(&r["posted"]),
        v(&r["statuses"]),
        v(&r["transport_errors"]),
        v(&r["late_posts"]),
        v(&r["max_post_lateness_ms"]),
    );
    eprintln!(
        "#   {:<34} {:>9} {:>9} {:>9} {:>9}",
        "ms", "p50", "p90", "p99", "max"
    );
    for (name, key) in [
        ("POST due → 2xx (ceiling)", "post_2xx_ms"),
        (
            "durable (2xx) → ack at gateway",
            "durable_to_handed_over_ms",
        ),
    ] {
        let h = &r[key];
        eprintln!(
            "#   {:<34} {:>9} {:>9} {:>9} {:>9}",
            name,
            v(&h["p50"]),
            v(&h["p90"]),
            v(&h["p99"]),
            v(&h["max"])
        );
    }
    eprintln!(
        "#   acknowledgements {} of {} messages (duplicates {}, foreign {}); all in by {} s after the first POST; window {} s",
        v(&r["acks"]),
        v(&r["answered"]),
        v(&r["duplicate_acks"]),
        v(&r["foreign_acks"]),
        v(&r["last_ack_s"]),
        v(&r["window_s"]),
    );
    eprintln!(
        "#   CPU µs per message: daemon {}  tool {}  others {};  daemon {} % of a core",
        v(&r["cpu_us_per_msg"]["daemon"]),
        v(&r["cpu_us_per_msg"]["tool"]),
        v(&r["cpu_us_per_msg"]["others"]),
        v(&r["daemon_cpu_pct"]),
    );
    eprintln!(
        "#   at the end of posting: threaded {}, acks on the outbound topic {}, delivered {}, at the gateway {}",
        v(&r["at_end_of_posting"]["threaded"]),
        v(&r["at_end_of_posting"]["handed_to_outbound"]),
        v(&r["at_end_of_posting"]["delivered"]),
        v(&r["at_end_of_posting"]["acks"]),
    );
    if let Value::Array(threads) = &r["daemon_cpu_us_per_msg_by_thread"] {
        let list: Vec<String> = threads
            .iter()
            .map(|t| format!("{} {}", v(&t["thread"]), v(&t["us_per_msg"])))
            .collect();
        eprintln!(
            "#   daemon CPU µs per message by thread: {}",
            list.join(", ")
        );
    }
    for phase in ["while_posting", "after_posting"] {
        let s = &r["stage_rates_per_s"][phase];
        eprintln!(
            "#   per second {phase} ({} s): durable {}, threaded {}, acks on the outbound topic {}, delivered {}, at the gateway {}",
            v(&s["seconds"]),
            v(&s["durable"]),
            v(&s["threaded"]),
            v(&s["handed_to_outbound"]),
            v(&s["delivered"]),
            v(&s["acks_at_gateway"]),
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    for (what, n) in [
        ("--http-connections", args.http_connections as u64),
        ("--rate", args.rate),
        ("--duration-secs", args.duration_secs),
    ] {
        if n == 0 {
            return Err(BenchError::Zero { what }.into());
        }
    }
    if args.secret.is_empty() {
        return Err(BenchError::NoSecret.into());
    }
    let messages = args.rate.saturating_mul(args.duration_secs);
    if messages > NUMBERS {
        return Err(BenchError::TooMany { messages }.into());
    }
    let total = usize::try_from(messages)?;
    let run: Arc<str> = SystemTime::now()
        .duration_since(UNIX_EPOCH)?
        .as_millis()
        .to_string()
        .into();
    let times = Arc::new(Times::new(Instant::now(), total));
    let listener = TcpListener::bind(&args.gateway_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.gateway_listen))?;
    tokio::spawn(gateway(listener, times.clone()));

    let workers = args.http_connections;
    let mut senders = Vec::with_capacity(workers);
    for _ in 0..workers {
        senders.push(http_connect(&args.addr).await?);
    }
    let mut metrics = if args.metrics {
        Some(http_connect(&args.addr).await?)
    } else {
        None
    };
    let start = Instant::now() + Duration::from_millis(200);
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let threads_start = args.pid.and_then(thread_ticks);
    let mut samples = vec![sample(&args, &times, start, &mut metrics).await];
    let cpu_start = samples[0];
    let mut tasks = Vec::with_capacity(workers);
    for (worker, sender) in senders.into_iter().enumerate() {
        tasks.push(tokio::spawn(poster(
            args.clone(),
            times.clone(),
            run.clone(),
            worker,
            workers,
            total,
            start,
            sender,
        )));
    }
    let mut posting = std::pin::pin!(futures::future::try_join_all(tasks));
    let mut tick = tokio::time::interval_at(
        (start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let tallies = loop {
        tokio::select! {
            tallies = posting.as_mut() => break tallies?,
            _ = tick.tick() => samples.push(sample(&args, &times, start, &mut metrics).await),
        }
    };
    let at_end_of_posting = sample(&args, &times, start, &mut metrics).await;
    samples.push(at_end_of_posting);
    let mut posts = PostTally::default();
    for tally in tallies {
        let tally = tally?;
        posts.transport_errors += tally.transport_errors;
        posts.late += tally.late;
        posts.max_lateness = posts.max_lateness.max(tally.max_lateness);
        posts.last_answered = posts.last_answered.max(tally.last_answered);
        for (status, n) in tally.statuses {
            *posts.statuses.entry(status).or_default() += n;
        }
    }
    let answered = answered_count(&times);
    // Wait for the acknowledgements (or, without them, for threading to
    // catch up), at most the grace period after the last answer.
    let deadline =
        posts.last_answered.unwrap_or_else(Instant::now) + Duration::from_secs(args.grace_secs);
    loop {
        let last = samples.last().copied().unwrap_or(at_end_of_posting);
        let done = if args.acks {
            times.acks.load(Ordering::Acquire) >= answered
        } else {
            last.stages.threaded.is_none_or(|t| t >= answered as f64)
        };
        if done || Instant::now() >= deadline {
            break;
        }
        tokio::select! {
            _ = tick.tick() => samples.push(sample(&args, &times, start, &mut metrics).await),
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
    let cpu_end = sample(&args, &times, start, &mut metrics).await;
    samples.push(cpu_end);
    let threads = thread_share(threads_start, args.pid.and_then(thread_ticks), answered);

    // Latencies, in nanoseconds.
    let mut post = Vec::with_capacity(total);
    let mut handed = Vec::with_capacity(total);
    let mut last_arrival = 0u64;
    let offset = times.stamp(start);
    for seq in 0..total {
        let answered_at = times.answered[seq].load(Ordering::Acquire);
        if answered_at == 0 {
            continue;
        }
        let due = offset + u64::try_from(interval.mul_f64(seq as f64).as_nanos())?;
        post.push(answered_at.saturating_sub(due));
        let arrived = times.arrived[seq].load(Ordering::Acquire);
        if arrived != 0 {
            handed.push(arrived.saturating_sub(answered_at));
            last_arrival = last_arrival.max(arrived);
        }
    }
    post.sort_unstable();
    handed.sort_unstable();

    let d = |a: Option<u64>, b: Option<u64>| a.zip(b).map(|(a, b)| b.saturating_sub(a));
    let daemon = d(cpu_start.daemon_ticks, cpu_end.daemon_ticks);
    let tool = d(cpu_start.tool_ticks, cpu_end.tool_ticks);
    let others = d(cpu_start.machine_ticks, cpu_end.machine_ticks)
        .map(|m| m.saturating_sub(daemon.unwrap_or(0) + tool.unwrap_or(0)));
    let window_s = cpu_end.t_s - cpu_start.t_s;
    let per_msg_us = |ticks: Option<u64>| {
        ticks
            .filter(|_| answered > 0)
            .map(|t| round1(t as f64 * 1e4 / answered as f64))
    };
    let posted_s = posts
        .last_answered
        .map_or(0.0, |t| t.saturating_duration_since(start).as_secs_f64());
    let report = json!({
        "label": args.label,
        "channel": args.channel,
        "target_rate": args.rate,
        "duration_s": args.duration_secs,
        "http_connections": workers,
        "posted": posts.statuses.values().sum::<u64>() + posts.transport_errors,
        "answered": answered,
        "achieved_rate_per_s": round1(answered as f64 / posted_s.max(1e-9)),
        "statuses": posts.statuses,
        "transport_errors": posts.transport_errors,
        "late_posts": posts.late,
        "max_post_lateness_ms": ms(u64::try_from(posts.max_lateness.as_nanos()).ok()),
        "post_2xx_ms": quantiles(&post, post.len()),
        "acks": times.acks.load(Ordering::Acquire),
        "duplicate_acks": times.duplicates.load(Ordering::Relaxed),
        "foreign_acks": times.foreign.load(Ordering::Relaxed),
        "durable_to_handed_over_ms": quantiles(&handed, post.len()),
        "last_ack_s": (last_arrival > 0).then(|| round1((last_arrival.saturating_sub(offset)) as f64 / 1e9)),
        "grace_s": args.grace_secs,
        "window_s": round1(window_s),
        "cpu_us_per_msg": {
            "daemon": per_msg_us(daemon),
            "tool": per_msg_us(tool),
            "others": per_msg_us(others),
        },
        "daemon_cpu_us_per_msg_by_thread": threads,
        "daemon_cpu_pct": daemon.filter(|_| window_s > 0.0).map(|t| round1(t as f64 / window_s)),
        "at_end_of_posting": {
            "t_s": round1(at_end_of_posting.t_s),
            "answered": at_end_of_posting.answered,
            "threaded": at_end_of_posting.stages.threaded,
            "handed_to_outbound": at_end_of_posting.stages.handed_to_outbound,
            "delivered": at_end_of_posting.stages.delivered,
            "acks": at_end_of_posting.acks,
        },
        "at_end": {
            "threaded": cpu_end.stages.threaded,
            "handed_to_outbound": cpu_end.stages.handed_to_outbound,
            "delivered": cpu_end.stages.delivered,
        },
        "stage_rates_per_s": {
            "while_posting": stage_rates(&cpu_start, &at_end_of_posting),
            "after_posting": stage_rates(&at_end_of_posting, &cpu_end),
        },
    });
    if let Some(dir) = &args.out {
        write_csvs(dir, &times, start, interval, &samples)?;
        std::fs::write(dir.join("summary.json"), format!("{report:#}\n"))?;
    }
    println!("{report}");
    table(&report);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgements_are_matched_to_their_message_by_the_recipient() {
        assert_eq!(sender_number(0), "+12012000000");
        assert_eq!(seq_of_recipient(&sender_number(59_999)), Some(59_999));
        assert_eq!(seq_of_recipient("12012000042"), Some(42));
        assert_eq!(seq_of_recipient("+12011999999"), None);
        assert_eq!(seq_of_recipient("+12020000000"), None);
        assert_eq!(seq_of_recipient("not a number"), None);
        let body = br#"{"to":"+12012000007","text":"Hi there","ref":"e-1"}"#;
        assert_eq!(seq_of_gateway_body(body), Some(7));
        assert_eq!(seq_of_gateway_body(br#"{"msg":"no to"}"#), None);
        assert_eq!(seq_of_gateway_body(b"not json"), None);
    }

    #[test]
    fn an_arrival_counts_once_and_strangers_are_foreign() {
        let base = Instant::now();
        let times = Times::new(base, 3);
        times.arrive(Some(1), base + Duration::from_millis(5));
        times.arrive(Some(1), base + Duration::from_millis(9));
        times.arrive(Some(3), base);
        times.arrive(None, base);
        assert_eq!(times.acks.load(Ordering::Relaxed), 1);
        assert_eq!(times.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(times.foreign.load(Ordering::Relaxed), 2);
        assert_eq!(times.arrived[1].load(Ordering::Relaxed), 5_000_001);
        assert_eq!(times.arrived[0].load(Ordering::Relaxed), 0);
    }

    #[test]
    fn webhooks_are_signed_over_the_exact_body() {
        let (body, signature) = webhook(b"s3cret", "run", 5);
        let parsed: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["from"], "+12012000005");
        assert_eq!(parsed["id"], "ack-bench-run-5");
        let mac = omni_connector::signature::hmac_sha256(b"s3cret", &[body.as_bytes()]);
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(signature, hex);
        assert_ne!(webhook(b"other", "run", 5).1, signature);
    }

    #[test]
    fn metric_samples_are_summed_over_matching_labels() {
        let text = "\
# HELP omnid_automated_replies_total Automated replies.
# TYPE omnid_automated_replies_total counter
omnid_automated_replies_total{kind=\"acknowledgement\",outcome=\"handed_over\"} 40
omnid_automated_replies_total{kind=\"auto_reply\",outcome=\"handed_over\"} 2
omnid_automated_replies_total{kind=\"acknowledgement\",outcome=\"dead_lettered\"} 1
omnid_threading_events_total 1234
omnid_threading_events_total_other 99
";
        assert_eq!(
            metric_sum(
                text,
                "omnid_automated_replies_total",
                "outcome=\"handed_over\""
            ),
            Some(42.0)
        );
        assert_eq!(
            metric_sum(text, "omnid_automated_replies_total", ""),
            Some(43.0)
        );
        assert_eq!(
            metric_sum(text, "omnid_threading_events_total", ""),
            Some(1234.0)
        );
        assert_eq!(
            metric_sum(text, "omnid_outbound_deliveries_total", ""),
            None
        );
    }

    #[test]
    fn thread_cpu_is_the_difference_per_name_largest_first() {
        let start = BTreeMap::from([("tokio-rt".to_owned(), 100), ("writer".to_owned(), 50)]);
        let end = BTreeMap::from([
            ("tokio-rt".to_owned(), 300),
            ("writer".to_owned(), 50),
            ("sqlite".to_owned(), 400),
        ]);
        let share = thread_share(Some(start), Some(end), 1000);
        assert_eq!(
            share,
            json!([
                { "thread": "sqlite", "us_per_msg": 4000.0 },
                { "thread": "tokio-rt", "us_per_msg": 2000.0 },
            ])
        );
        assert_eq!(thread_share(None, Some(BTreeMap::new()), 1), Value::Null);
    }

    #[test]
    fn quantiles_that_fall_among_missing_arrivals_are_unknown() {
        let sorted: Vec<u64> = (1..=98).collect();
        // 98 of 100 arrived: p50 is known, p99 is among the two missing.
        assert_eq!(quantile_of(&sorted, 100, 0.50), Some(50));
        assert_eq!(quantile_of(&sorted, 100, 0.98), Some(98));
        assert_eq!(quantile_of(&sorted, 100, 0.99), None);
        assert_eq!(quantile_of(&sorted, 98, 0.99), Some(98));
        assert_eq!(quantile_of(&[], 0, 0.5), None);
        assert_eq!(quantiles(&sorted, 100)["max"], Value::Null);
    }
}
