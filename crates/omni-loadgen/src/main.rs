//! `omni-loadgen`: drives a webhook channel of a running daemon: the API
//! channel (HMAC-signed JSON), a WeChat Official Account in safe mode
//! (AES-encrypted XML with its `msg_signature`), or a WhatsApp phone number
//! (Meta's webhook JSON with `X-Hub-Signature-256`, several messages per
//! POST as Meta batches them under load), so each can be compared with the
//! API channel on one machine in one run.
//!
//! Each connection is one keep-alive HTTP/1.1 connection sending requests
//! back to back (closed loop), or on a fixed schedule when `--rate` is set
//! (open loop). In open-loop mode latency is measured from the time a
//! request was *due*, not when it was sent, so a stalled server cannot hide
//! its queueing delay (coordinated omission).
//!
//! `omni-loadgen bare-server --listen ADDR` is the other end of a
//! comparison: an HTTP server on the same stack that only reads each body
//! and answers `200` (see [`omni_loadgen::bare`]). The benchmark scripts
//! run the same load against it and against the daemon, and report both
//! processes' CPU per request (`--pid`).

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
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
    about = "Post signed API-channel messages to a running omnid and report throughput and latency",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    mode: Option<Mode>,
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
    /// Stop after this many measured requests in all (after warm-up), or
    /// at `--duration`, whichever comes first; rates are then over the time
    /// they took. For profiles that need the same work every run.
    #[arg(long)]
    requests: Option<u64>,
    /// Target messages/s over all connections (open loop); unset: as fast
    /// as the daemon answers (closed loop). With several messages per POST
    /// the POSTs are spaced so the messages come at this rate.
    #[arg(long)]
    rate: Option<u64>,
    /// Bytes of message text.
    #[arg(long, default_value_t = 200)]
    text_bytes: usize,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// Distinct senders of the API messages (`customer-0` ...), taken in
    /// turn over all connections: 1,000 is a support inbox's regulars; a
    /// number near the message count gives a new customer every few
    /// messages, which is what grows the threading state.
    #[arg(long, default_value_t = 1000)]
    senders: u64,
    /// What to post: `api` (signed JSON), `wechat` (safe-mode WeChat
    /// text messages; needs the `--wechat-*` options) or `whatsapp`
    /// (WhatsApp Cloud API webhooks of text messages; needs
    /// `--meta-app-secret`).
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
    /// The Meta app's App Secret the WhatsApp channel checks
    /// `X-Hub-Signature-256` with.
    #[arg(long, env = "OMNID_BENCH_META_APP_SECRET", default_value = "")]
    meta_app_secret: String,
    /// The WhatsApp channel's `phone_number_id` (the webhooks' metadata).
    #[arg(long, default_value = "106540352242922")]
    phone_number_id: String,
    /// Text messages in each WhatsApp POST (Meta batches up to 1000; a
    /// busy number sees several per POST).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    messages_per_post: u64,
    /// The daemon's process id: its CPU time over the measured window is
    /// reported per acknowledged message.
    #[arg(long)]
    pid: Option<u32>,
    /// The process id of the daemon's Kafka broker, on the same machine:
    /// its CPU time is reported per acknowledged message too.
    #[arg(long)]
    broker_pid: Option<u32>,
}

/// What to run instead of posting.
#[derive(Debug, clap::Subcommand)]
enum Mode {
    /// Serve HTTP/1.1 that only reads each request's body and answers 200:
    /// the ceiling the daemon is compared with. Runs until killed.
    BareServer {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:18090")]
        listen: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    Api,
    Wechat,
    Whatsapp,
}

impl Args {
    /// Messages in each request: several only for WhatsApp.
    fn messages_per_request(&self) -> u64 {
        match self.kind {
            Kind::Whatsapp => self.messages_per_post,
            Kind::Api | Kind::Wechat => 1,
        }
    }
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: &str) -> Option<f64> {
    omni_loadgen::proc::cpu_ticks(pid).map(|ticks| ticks as f64 / 100.0)
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
    if let Some(Mode::BareServer { listen }) = &args.mode {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        eprintln!("bare server listening on {}", listener.local_addr()?);
        omni_loadgen::bare::serve(listener).await?;
        return Ok(());
    }
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let warmup_end = Instant::now() + Duration::from_secs(args.warmup);
    let end = warmup_end + Duration::from_secs(args.duration);
    let payload = match args.kind {
        Kind::Api => Payload::Api,
        Kind::Wechat => Payload::Wechat(Arc::new(Wechat::new(&args)?)),
        Kind::Whatsapp => Payload::Whatsapp(Arc::new(Whatsapp::new(&args)?)),
    };
    let tickets = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for conn in 0..args.connections {
        let payload = payload.clone();
        let args = args.clone();
        let window = Window {
            warmup_end,
            end,
            tickets: tickets.clone(),
        };
        tasks.push(tokio::spawn(async move {
            connection(args, payload, run_id, conn, window).await
        }));
    }
    let all_done = tokio::spawn(futures::future::join_all(tasks));
    // CPU over the measured window: the daemon's, its broker's and this
    // generator's.
    let pid = args.pid.map(|p| p.to_string());
    let broker_pid = args.broker_pid.map(|p| p.to_string());
    let sample = || {
        (
            pid.as_deref().and_then(cpu_seconds),
            cpu_seconds("self"),
            broker_pid.as_deref().and_then(cpu_seconds),
        )
    };
    tokio::time::sleep_until(warmup_end.into()).await;
    let cpu_start = sample();
    // With `--requests`, the window ends when the last is answered.
    let mut all_done = std::pin::pin!(all_done);
    let results = tokio::select! {
        () = tokio::time::sleep_until(end.into()) => None,
        results = all_done.as_mut(), if args.requests.is_some() => Some(results),
    };
    let cpu_end = sample();
    let elapsed = Instant::now()
        .min(end)
        .saturating_duration_since(warmup_end);
    let results = match results {
        Some(results) => results?,
        None => all_done.await?,
    };
    let mut total = Tally {
        latency_us: Some(Histogram::new(3)?),
        ..Default::default()
    };
    for tally in results {
        let tally = tally?.context("connection failed")?;
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
        broker_s: used(cpu_start.2, cpu_end.2),
    };
    // A run of fixed duration reports over that duration (requests due
    // in it and answered a little after it count); a run of fixed count
    // over the time it took.
    let seconds = match args.requests {
        Some(_) => elapsed.as_secs_f64().max(1e-3),
        None => args.duration as f64,
    };
    report(&args, &total, &cpu, seconds);
    Ok(())
}

/// When a connection's requests count and when it stops.
struct Window {
    warmup_end: Instant,
    end: Instant,
    /// Measured requests taken so far, by all connections (`--requests`).
    tickets: Arc<AtomicU64>,
}

/// CPU seconds used during the measured window.
struct Cpu {
    daemon_s: Option<f64>,
    loadgen_s: Option<f64>,
    broker_s: Option<f64>,
}

/// What each request is built from.
#[derive(Clone)]
enum Payload {
    Api,
    Wechat(Arc<Wechat>),
    Whatsapp(Arc<Whatsapp>),
}

/// What a WhatsApp webhook needs: the app secret it is signed with and
/// the phone number it is for.
struct Whatsapp {
    app_secret: Vec<u8>,
    phone_number_id: String,
    per_post: u64,
}

impl Whatsapp {
    fn new(args: &Args) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !args.meta_app_secret.is_empty(),
            "--meta-app-secret is required with --kind whatsapp"
        );
        Ok(Self {
            app_secret: args.meta_app_secret.as_bytes().to_vec(),
            phone_number_id: args.phone_number_id.clone(),
            per_post: args.messages_per_post,
        })
    }

    /// The body Meta would post for `per_post` text messages (one entry,
    /// one `messages` change, a contact per sender), and its
    /// `X-Hub-Signature-256`. `first` numbers the first message: wamids
    /// and senders follow from it.
    fn request(&self, id_prefix: &str, first: u64, text: &str, now: u64) -> (String, String) {
        let mut contacts = String::new();
        let mut messages = String::new();
        for n in first..first + self.per_post {
            let wa_id = format!("1555{:07}", n % 1000);
            if n > first {
                contacts.push(',');
                messages.push(',');
            }
            contacts.push_str(&format!(
                r#"{{"profile":{{"name":"Bench {wa_id}"}},"wa_id":"{wa_id}"}}"#
            ));
            messages.push_str(&format!(
                r#"{{"from":"{wa_id}","id":"wamid.{id_prefix}{n}","timestamp":"{now}","text":{{"body":"{text}"}},"type":"text"}}"#
            ));
        }
        let body = format!(
            r#"{{"object":"whatsapp_business_account","entry":[{{"id":"102290129340398","changes":[{{"value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550783881","phone_number_id":"{}"}},"contacts":[{contacts}],"messages":[{messages}]}},"field":"messages"}}]}}]}}"#,
            self.phone_number_id
        );
        let mac = omni_connector::signature::hmac_sha256(&self.app_secret, &[body.as_bytes()]);
        let mut signature = String::with_capacity(7 + 64);
        signature.push_str("sha256=");
        for byte in mac {
            signature.push_str(&format!("{byte:02x}"));
        }
        (body, signature)
    }
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
    payload: Payload,
    run_id: u128,
    conn: usize,
    window: Window,
) -> anyhow::Result<Tally> {
    let Window {
        warmup_end,
        end,
        tickets,
    } = window;
    let mut tally = Tally {
        latency_us: Some(Histogram::new(3)?),
        ..Default::default()
    };
    let mut sender = connect(&args.addr).await?;
    // Requests per second = messages per second / messages per request.
    let per_request = args.messages_per_request() as f64;
    let interval = args.rate.map(|rate| {
        Duration::from_secs_f64(args.connections as f64 * per_request / rate.max(1) as f64)
    });
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
        if let Some(limit) = args.requests
            && Instant::now() >= warmup_end
            && tickets.fetch_add(1, Ordering::Relaxed) >= limit
        {
            break;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let request = match &payload {
            Payload::Api => {
                let body = serde_json::json!({
                    "external_id": format!("lg-{run_id}-{conn}-{seq}"),
                    "sender": {
                        "kind": "external",
                        "value": format!(
                            "customer-{}",
                            (seq * args.connections as u64 + conn as u64) % args.senders.max(1)
                        ),
                    },
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
            Payload::Whatsapp(whatsapp) => {
                // wamids unique per run: the run, the connection, then
                // the message's number on this connection.
                let prefix = format!("lg{run_id}.{conn}.");
                let (body, signature) =
                    whatsapp.request(&prefix, seq * whatsapp.per_post, &text, now);
                http::Request::post(&uri)
                    .header("content-type", "application/json")
                    .header("host", &args.addr)
                    .header("x-hub-signature-256", signature)
                    .body(Full::new(Bytes::from(body)))?
            }
            Payload::Wechat(wechat) => {
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

fn report(args: &Args, tally: &Tally, cpu: &Cpu, seconds: f64) {
    let Some(h) = tally.latency_us.as_ref() else {
        return;
    };
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    // A request answered 2xx acknowledges every message in it.
    let per_request = args.messages_per_request();
    let messages = tally.ok * per_request;
    let throughput = messages as f64 / seconds;
    let requests_per_s = tally.ok as f64 / seconds;
    let per_msg_us = |seconds: Option<f64>| {
        seconds
            .filter(|_| messages > 0)
            .map(|s| (s * 1e6 / messages as f64 * 10.0).round() / 10.0)
    };
    let result = serde_json::json!({
        "kind": format!("{:?}", args.kind).to_lowercase(),
        "mode": if args.rate.is_some() { "open-loop" } else { "closed-loop" },
        "target_rate": args.rate,
        "connections": args.connections,
        "duration_s": match args.requests {
            Some(_) => serde_json::json!((seconds * 1000.0).round() / 1000.0),
            None => serde_json::json!(args.duration),
        },
        "messages_per_request": per_request,
        "acknowledged": messages,
        "acknowledged_per_s": (throughput * 10.0).round() / 10.0,
        "requests": tally.ok,
        "requests_per_s": (requests_per_s * 10.0).round() / 10.0,
        "statuses": tally.statuses,
        "transport_errors": tally.errors,
        "latency_ms": {
            "p50": ms(0.50), "p90": ms(0.90), "p99": ms(0.99), "p999": ms(0.999),
            "max": h.max() as f64 / 1000.0,
        },
        "cpu_us_per_msg": {
            "daemon": per_msg_us(cpu.daemon_s),
            "loadgen": per_msg_us(cpu.loadgen_s),
            "broker": per_msg_us(cpu.broker_s),
        },
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "{} connections, {:.1} s: {} messages acknowledged ({:.0}/s) in {} requests \
             ({:.0}/s, {} messages each); statuses {:?}; transport errors {}\n\
             latency ms (per request): p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}\n\
             cpu µs per message: daemon {:?}  loadgen {:?}  broker {:?}",
            args.connections,
            seconds,
            messages,
            throughput,
            tally.ok,
            requests_per_s,
            per_request,
            tally.statuses,
            tally.errors,
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1000.0,
            per_msg_us(cpu.daemon_s),
            per_msg_us(cpu.loadgen_s),
            per_msg_us(cpu.broker_s),
        );
    }
}
