//! `omni-loadgen`: drives a webhook channel of a running daemon: the API
//! channel (HMAC-signed JSON), or a WeChat Official Account in safe mode
//! (AES-encrypted XML with its `msg_signature`), so the two can be compared
//! on one machine in one run.
//!
//! Each connection is one keep-alive HTTP/1.1 connection sending requests
//! back to back (closed loop), or on a fixed schedule when `--rate` is set
//! (open loop). In open-loop mode latency is measured from the time a
//! request was *due*, not when it was sent, so a stalled server cannot hide
//! its queueing delay (coordinated omission).

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

#[derive(Debug, Parser)]
#[command(
    about = "Post signed API-channel messages to a running omnid and report throughput and latency"
)]
struct Args {
    /// Daemon address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// API channel id.
    #[arg(long, default_value = "demo-api")]
    channel: String,
    /// The API channel's HMAC secret.
    #[arg(long, env = "OMNID_DEMO_API_SECRET", default_value = "")]
    secret: String,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds to measure (after warm-up).
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Seconds of warm-up, not measured.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Target messages/s over all connections (open loop); unset: as fast
    /// as the daemon answers (closed loop).
    #[arg(long)]
    rate: Option<u64>,
    /// Bytes of message text.
    #[arg(long, default_value_t = 200)]
    text_bytes: usize,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// What to post: `api` (signed JSON) or `wechat` (safe-mode WeChat
    /// text messages; needs the `--wechat-*` options).
    #[arg(long, default_value = "api")]
    kind: Kind,
    /// The WeChat channel's AppID.
    #[arg(long, default_value = "wx1234567890abcdef")]
    wechat_app_id: String,
    /// The WeChat channel's Token.
    #[arg(long, env = "OMNID_BENCH_WECHAT_TOKEN", default_value = "")]
    wechat_token: String,
    /// The WeChat channel's EncodingAESKey (43 characters).
    #[arg(long, env = "OMNID_BENCH_WECHAT_AES_KEY", default_value = "")]
    wechat_aes_key: String,
    /// The daemon's process id: its CPU time over the measured window is
    /// reported per acknowledged message.
    #[arg(long)]
    pid: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    Api,
    Wechat,
}

/// CPU seconds (user + system) a process has used so far, from
/// `/proc/<pid>/stat` (fields 14 and 15, in clock ticks of 1/100 s).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields count from after its `)`.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

#[derive(Default)]
struct Tally {
    latency_us: Option<Histogram<u64>>,
    ok: u64,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let warmup_end = Instant::now() + Duration::from_secs(args.warmup);
    let end = warmup_end + Duration::from_secs(args.duration);
    let wechat = match args.kind {
        Kind::Api => None,
        Kind::Wechat => Some(Arc::new(Wechat::new(&args)?)),
    };
    let mut tasks = Vec::new();
    for conn in 0..args.connections {
        let wechat = wechat.clone();
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            connection(args, wechat, run_id, conn, warmup_end, end).await
        }));
    }
    // CPU over the measured window: the daemon's and this generator's.
    let pid = args.pid.map(|p| p.to_string());
    tokio::time::sleep_until(warmup_end.into()).await;
    let cpu_start = (pid.as_deref().and_then(cpu_seconds), cpu_seconds("self"));
    tokio::time::sleep_until(end.into()).await;
    let cpu_end = (pid.as_deref().and_then(cpu_seconds), cpu_seconds("self"));
    let mut total = Tally {
        latency_us: Some(Histogram::new(3)?),
        ..Default::default()
    };
    for task in tasks {
        let tally = task.await?.context("connection failed")?;
        total.ok += tally.ok;
        total.errors += tally.errors;
        for (status, n) in tally.statuses {
            *total.statuses.entry(status).or_default() += n;
        }
        if let (Some(all), Some(one)) = (total.latency_us.as_mut(), tally.latency_us.as_ref()) {
            all.add(one)?;
        }
    }
    let used = |start: Option<f64>, end: Option<f64>| start.zip(end).map(|(s, e)| e - s);
    let cpu = Cpu {
        daemon_s: used(cpu_start.0, cpu_end.0),
        loadgen_s: used(cpu_start.1, cpu_end.1),
    };
    report(&args, &total, &cpu);
    Ok(())
}

/// CPU seconds used during the measured window.
struct Cpu {
    daemon_s: Option<f64>,
    loadgen_s: Option<f64>,
}

/// What a safe-mode WeChat request needs.
struct Wechat {
    token: Vec<u8>,
    crypt: omni_wechat::crypto::MsgCrypt,
}

impl Wechat {
    fn new(args: &Args) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !args.wechat_token.is_empty(),
            "--wechat-token is required with --kind wechat"
        );
        let key = omni_wechat::crypto::AesKey::from_encoding_aes_key(&args.wechat_aes_key)
            .context("--wechat-aes-key")?;
        Ok(Self {
            token: args.wechat_token.as_bytes().to_vec(),
            crypt: omni_wechat::crypto::MsgCrypt::new(key, None, args.wechat_app_id.clone()),
        })
    }

    /// The query and body WeChat would post for one text message.
    fn request(&self, msg_id: u64, from: u64, text: &str, now: u64) -> (String, String) {
        let xml = format!(
            "<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName>\
             <FromUserName><![CDATA[oBench{from:022}]]></FromUserName>\
             <CreateTime>{now}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
             <Content><![CDATA[{text}]]></Content><MsgId>{msg_id}</MsgId></xml>"
        );
        let encrypted = self.crypt.encrypt(xml.as_bytes());
        let (timestamp, nonce) = (now.to_string(), format!("{}", msg_id % 1_000_000_007));
        let signature = omni_wechat::crypto::sign(&self.token, &[&timestamp, &nonce]);
        let msg_signature =
            omni_wechat::crypto::sign(&self.token, &[&timestamp, &nonce, &encrypted]);
        let query = format!(
            "signature={signature}&timestamp={timestamp}&nonce={nonce}\
             &openid=oBench{from:022}&encrypt_type=aes&msg_signature={msg_signature}"
        );
        let body = format!(
            "<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName>\
             <Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
        );
        (query, body)
    }
}

async fn connect(
    addr: &str,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn connection(
    args: Arc<Args>,
    wechat: Option<Arc<Wechat>>,
    run_id: u128,
    conn: usize,
    warmup_end: Instant,
    end: Instant,
) -> anyhow::Result<Tally> {
    let mut tally = Tally {
        latency_us: Some(Histogram::new(3)?),
        ..Default::default()
    };
    let mut sender = connect(&args.addr).await?;
    let interval = args
        .rate
        .map(|rate| Duration::from_secs_f64(args.connections as f64 / rate.max(1) as f64));
    let text = "x".repeat(args.text_bytes);
    let uri = format!("http://{}/webhooks/{}", args.addr, args.channel);
    let start = Instant::now();
    let mut seq: u64 = 0;
    loop {
        // Open loop: request n is due at start + n * interval (staggered
        // per connection); closed loop: due now.
        let due = match interval {
            Some(interval) => {
                start + interval.mul_f64(seq as f64 + conn as f64 / args.connections as f64)
            }
            None => Instant::now(),
        };
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let request = match &wechat {
            None => {
                let body = serde_json::json!({
                    "external_id": format!("lg-{run_id}-{conn}-{seq}"),
                    "sender": { "kind": "external", "value": format!("customer-{}", seq % 1000) },
                    "text": text,
                })
                .to_string();
                http::Request::post(&uri)
                    .header("content-type", "application/json")
                    .header("host", &args.addr)
                    .header(omni_api::signature::TIMESTAMP_HEADER, now.to_string())
                    .header(
                        omni_api::signature::SIGNATURE_HEADER,
                        omni_api::signature::sign(args.secret.as_bytes(), now, body.as_bytes()),
                    )
                    .body(Full::new(Bytes::from(body)))?
            }
            Some(wechat) => {
                // MsgIds unique per run: the run's low digits, then the
                // connection, then the sequence number.
                let msg_id = (run_id % 1_000_000) as u64 * 1_000_000_000_000
                    + conn as u64 * 1_000_000_000
                    + seq;
                let (query, body) = wechat.request(msg_id, seq % 1000, &text, now);
                http::Request::post(format!("{uri}?{query}"))
                    .header("content-type", "text/xml")
                    .header("host", &args.addr)
                    .body(Full::new(Bytes::from(body)))?
            }
        };
        seq += 1;
        if sender.ready().await.is_err() {
            sender = connect(&args.addr).await?;
        }
        let result = sender.send_request(request).await;
        let measured = due >= warmup_end;
        match result {
            Ok(response) => {
                let status = response.status();
                let _ = response.into_body().collect().await;
                if measured {
                    let elapsed = due.elapsed().as_micros() as u64;
                    if let Some(h) = tally.latency_us.as_mut() {
                        let _ = h.record(elapsed.max(1));
                    }
                    if status.is_success() {
                        tally.ok += 1;
                    }
                    *tally.statuses.entry(status.as_u16()).or_default() += 1;
                }
            }
            Err(_) => {
                if measured {
                    tally.errors += 1;
                }
                sender = connect(&args.addr).await?;
            }
        }
    }
    Ok(tally)
}

fn report(args: &Args, tally: &Tally, cpu: &Cpu) {
    let Some(h) = tally.latency_us.as_ref() else {
        return;
    };
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let throughput = tally.ok as f64 / args.duration as f64;
    let per_msg_us = |seconds: Option<f64>| {
        seconds
            .filter(|_| tally.ok > 0)
            .map(|s| (s * 1e6 / tally.ok as f64 * 10.0).round() / 10.0)
    };
    let result = serde_json::json!({
        "kind": format!("{:?}", args.kind).to_lowercase(),
        "mode": if args.rate.is_some() { "open-loop" } else { "closed-loop" },
        "target_rate": args.rate,
        "connections": args.connections,
        "duration_s": args.duration,
        "acknowledged": tally.ok,
        "acknowledged_per_s": (throughput * 10.0).round() / 10.0,
        "statuses": tally.statuses,
        "transport_errors": tally.errors,
        "latency_ms": {
            "p50": ms(0.50), "p90": ms(0.90), "p99": ms(0.99), "p999": ms(0.999),
            "max": h.max() as f64 / 1000.0,
        },
        "cpu_us_per_msg": {
            "daemon": per_msg_us(cpu.daemon_s),
            "loadgen": per_msg_us(cpu.loadgen_s),
        },
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "{} connections, {} s: {} acknowledged ({:.0}/s); statuses {:?}; transport errors {}\n\
             latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}\n\
             cpu µs per message: daemon {:?}  loadgen {:?}",
            args.connections,
            args.duration,
            tally.ok,
            throughput,
            tally.statuses,
            tally.errors,
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1000.0,
            per_msg_us(cpu.daemon_s),
            per_msg_us(cpu.loadgen_s),
        );
    }
}
