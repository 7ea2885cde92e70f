//! `omni-loadgen`: drives the API channel of a running daemon.
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
    /// The channel's HMAC secret.
    #[arg(long, env = "OMNID_DEMO_API_SECRET")]
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
    let mut tasks = Vec::new();
    for conn in 0..args.connections {
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            connection(args, run_id, conn, warmup_end, end).await
        }));
    }
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
    report(&args, &total);
    Ok(())
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
        let body = serde_json::json!({
            "external_id": format!("lg-{run_id}-{conn}-{seq}"),
            "sender": { "kind": "external", "value": format!("customer-{}", seq % 1000) },
            "text": text,
        })
        .to_string();
        seq += 1;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let request = http::Request::post(&uri)
            .header("content-type", "application/json")
            .header("host", &args.addr)
            .header(omni_api::signature::TIMESTAMP_HEADER, now.to_string())
            .header(
                omni_api::signature::SIGNATURE_HEADER,
                omni_api::signature::sign(args.secret.as_bytes(), now, body.as_bytes()),
            )
            .body(Full::new(Bytes::from(body)))?;
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

fn report(args: &Args, tally: &Tally) {
    let Some(h) = tally.latency_us.as_ref() else {
        return;
    };
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let throughput = tally.ok as f64 / args.duration as f64;
    let result = serde_json::json!({
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
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "{} connections, {} s: {} acknowledged ({:.0}/s); statuses {:?}; transport errors {}\n\
             latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
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
            h.max() as f64 / 1000.0
        );
    }
}
