//! The real `omnid` binary against hostile HTTP clients: slow request
//! heads, floods of unauthenticated bodies, more connections than allowed.
//! The assertions are about bounds (memory, connections cut, log lines),
//! never about speed.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use omni_testkit::daemon::{CHANNEL, Daemon, Deployment, SECRET, message, signed};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

const MIB: usize = 1024 * 1024;

/// A deployment whose `[http]` table also has `keys` (one `key = value` a
/// line; `max_body_bytes` replaces the harness's).
fn deployment(keys: &str) -> Deployment {
    let deployment = Deployment::new();
    let mut config = std::fs::read_to_string(deployment.config_path()).unwrap();
    if keys.contains("max_body_bytes =") {
        config = config.replacen("max_body_bytes = 65536\n", "", 1);
    }
    let config = config.replacen("[http]\n", &format!("[http]\n{keys}"), 1);
    std::fs::write(deployment.config_path(), config).unwrap();
    deployment
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn addr(daemon: &Daemon) -> SocketAddr {
    daemon.addr.parse().unwrap()
}

/// A counter of the daemon's `/metrics` (0 when absent).
async fn metric(daemon: &Daemon, series: &str) -> u64 {
    let text = daemon.metrics().await;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |value| value.trim().parse().unwrap())
}

/// How many log lines have this message (and, when given, this reason).
fn log_lines(daemon: &Daemon, message: &str, reason: Option<&str>) -> usize {
    daemon
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["message"] == message)
        .filter(|line| reason.is_none_or(|reason| line["reason"] == reason))
        .count()
}

/// Resident memory of a process, in bytes: `VmRSS` now, or `VmHWM` (the
/// peak so far).
fn memory(pid: u32, field: &str) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: usize = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// Reads until the server closes the connection (EOF or reset): what it
/// sent, and how long after `since` it closed. `None` if still open after
/// `limit`.
async fn until_closed(
    stream: &mut (impl AsyncReadExt + Unpin),
    since: Instant,
    limit: Duration,
) -> Option<(Vec<u8>, Duration)> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::from_std(since + limit);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some((received, since.elapsed())),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

/// The status code of an HTTP/1.1 response's first line.
fn status(response: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(response.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_request_heads_are_cut_while_signed_requests_are_served() {
    const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
    let deployment = deployment("header_read_timeout_secs = 2\n");
    let daemon = deployment.start();
    let addr = addr(&daemon);
    // Cut within twice the timeout, plus slack for a loaded machine.
    let bound = HEADER_TIMEOUT * 2 + Duration::from_secs(3);

    let slow: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn(async move {
                let stream = TcpStream::connect(addr).await.unwrap();
                let opened = Instant::now();
                let (mut reader, mut writer) = stream.into_split();
                let drip = tokio::spawn(async move {
                    let head = format!(
                        "POST /webhooks/{CHANNEL} HTTP/1.1\r\nhost: omnid\r\ncontent-type: application/json\r\nx-padding: {}\r\n",
                        "a".repeat(64)
                    );
                    for byte in head.bytes() {
                        if writer.write_all(&[byte]).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                });
                let closed = until_closed(&mut reader, opened, bound * 2).await;
                drip.abort();
                closed
            })
        })
        .collect();

    // Meanwhile, signed requests are served as usual.
    let client = client();
    let url = daemon.url(&format!("/webhooks/{CHANNEL}"));
    for i in 0..6 {
        let response = signed(&client, &url, message(&format!("s-{i}"), "سلام"), SECRET)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "signed request {i}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    for (i, slow) in slow.into_iter().enumerate() {
        let (received, after) = slow
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("slow connection {i} still open after {:?}", bound * 2));
        assert!(
            after <= bound,
            "slow connection {i} cut after {after:?}, more than {bound:?}"
        );
        assert!(received.is_empty(), "no answer to an incomplete head");
    }
    assert_eq!(
        metric(
            &daemon,
            "omnid_http_refusals_total{reason=\"header_timeout\"}"
        )
        .await,
        50
    );
    let logged = log_lines(&daemon, "http request refused", Some("header_timeout"));
    assert!(
        (1..=2).contains(&logged),
        "{logged} log lines for 50 refusals"
    );
}

/// A client that declares a 1 MiB body and sends all of it but the last
/// byte, from `source`: the status it was answered, or `None` if the
/// connection ended without an answer.
async fn held_body(daemon: SocketAddr, source: IpAddr, body: Arc<Vec<u8>>) -> Option<u16> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let stream = socket.connect(daemon).await.unwrap();
    let opened = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let send = tokio::spawn(async move {
        let head = format!(
            "POST /webhooks/{CHANNEL} HTTP/1.1\r\nhost: omnid\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        writer.write_all(head.as_bytes()).await?;
        writer.write_all(&body[..body.len() - 1]).await?;
        // Hold the connection, the body unfinished.
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, std::io::Error>(writer)
    });
    let answer = until_closed(&mut reader, opened, Duration::from_secs(30)).await;
    send.abort();
    answer.and_then(|(response, _)| status(&response))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_unauthenticated_bodies_is_bounded_by_the_body_budget() {
    const BUDGET: usize = 16 * MIB;
    const PER_PEER: usize = 8 * MIB;
    /// Runtime, allocator and per-connection buffers of 500 connections.
    const ALLOWANCE: usize = 64 * MIB;
    let deployment = deployment(&format!(
        "max_body_bytes = {}\nmax_inflight_body_bytes = {BUDGET}\nmax_inflight_body_bytes_per_peer = {PER_PEER}\nbody_read_timeout_secs = 5\n",
        2 * MIB
    ));
    let daemon = deployment.start();
    let addr = addr(&daemon);
    let pid = daemon.child.id();
    // Warm up the metrics path, then take the baseline.
    assert_eq!(
        metric(&daemon, "omnid_http_refusals_total{reason=\"body_budget\"}").await,
        0
    );
    let baseline = memory(pid, "VmRSS");

    let body = Arc::new(vec![b' '; MIB]);
    // 100 clients from one address: its share (8 bodies) is taken, the
    // others get 429 ...
    let one_peer: Vec<_> = (0..100)
        .map(|_| tokio::spawn(held_body(addr, IpAddr::from([127, 0, 0, 1]), body.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // ... then 400 from 40 other addresses: the rest of the budget (8
    // more) is taken, the others get 503.
    let many_peers: Vec<_> = (0..400u16)
        .map(|i| {
            let source = IpAddr::from([127, 0, 2, 1 + (i % 40) as u8]);
            tokio::spawn(held_body(addr, source, body.clone()))
        })
        .collect();

    let mut peak = baseline;
    let mut answers = Vec::new();
    for task in one_peer.into_iter().chain(many_peers) {
        while !task.is_finished() {
            peak = peak.max(memory(pid, "VmRSS"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        answers.push(task.await.unwrap());
    }
    peak = peak.max(memory(pid, "VmHWM"));
    let count = |range: &[(usize, usize)], code: u16| {
        range
            .iter()
            .map(|&(from, to)| {
                answers[from..to]
                    .iter()
                    .filter(|a| **a == Some(code))
                    .count()
            })
            .sum::<usize>()
    };
    let (read, peer_refused, refused) = (
        count(&[(0, 500)], 408),
        count(&[(0, 100)], 429),
        count(&[(100, 500)], 503),
    );
    eprintln!(
        "rss baseline {} MiB, peak {} MiB (+{} MiB); read then timed out {read}, 429 {peer_refused}, 503 {refused}, other {:?}",
        baseline / MIB,
        peak / MIB,
        peak.saturating_sub(baseline) / MIB,
        answers
            .iter()
            .filter(|a| !matches!(a, Some(408 | 429 | 503)))
            .collect::<Vec<_>>()
    );
    assert!(
        read <= BUDGET / MIB,
        "{read} bodies read, the budget holds {}",
        BUDGET / MIB
    );
    assert!(
        count(&[(0, 100)], 408) <= PER_PEER / MIB,
        "one peer had more bodies read than its share"
    );
    assert!(peer_refused >= 80, "only {peer_refused} of 100 got 429");
    assert!(refused >= 350, "only {refused} of 400 got 503");
    assert!(
        peak.saturating_sub(baseline) <= BUDGET + ALLOWANCE,
        "rss grew from {baseline} to {peak} bytes, more than the budget {BUDGET} + {ALLOWANCE}"
    );

    // Every refusal is counted; few are logged.
    let budget_refusals =
        metric(&daemon, "omnid_http_refusals_total{reason=\"body_budget\"}").await;
    let peer_refusals = metric(
        &daemon,
        "omnid_http_refusals_total{reason=\"peer_body_budget\"}",
    )
    .await;
    assert!(budget_refusals >= refused as u64);
    assert!(peer_refusals >= peer_refused as u64);
    for reason in ["body_budget", "peer_body_budget"] {
        let logged = log_lines(&daemon, "http request refused", Some(reason));
        assert!((1..=2).contains(&logged), "{logged} log lines of {reason}");
    }
    // The budget is given back: a signed request is served.
    let url = daemon.url(&format!("/webhooks/{CHANNEL}"));
    let response = signed(&client(), &url, message("after", "hi"), SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_beyond_the_cap_are_refused_at_once_and_idle_ones_cut() {
    const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
    let deployment = deployment("max_connections = 20\nheader_read_timeout_secs = 3\n");
    let daemon = deployment.start();
    let addr = addr(&daemon);
    let bound = HEADER_TIMEOUT * 2 + Duration::from_secs(3);

    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push((TcpStream::connect(addr).await.unwrap(), Instant::now()));
    }
    // The first 20 are served (and say nothing); the next 20, and a fresh
    // client, are answered 503 and closed, before any header timeout.
    let probe = TcpStream::connect(addr).await.unwrap();
    let mut closed = Vec::new();
    for (mut stream, opened) in idle.into_iter().chain([(probe, Instant::now())]) {
        closed.push(tokio::spawn(async move {
            until_closed(&mut stream, opened, bound * 2).await
        }));
    }
    let mut cut = 0;
    for (i, task) in closed.into_iter().enumerate() {
        let (received, after) = task
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("idle connection {i} still open after {:?}", bound * 2));
        if i < 20 {
            assert!(
                received.is_empty(),
                "connection {i} answered before a request"
            );
            assert!(after <= bound, "idle connection {i} cut after {after:?}");
            cut += 1;
        } else {
            assert_eq!(status(&received), Some(503), "connection {i} over the cap");
            assert!(
                after < HEADER_TIMEOUT,
                "connection {i} over the cap held for {after:?}"
            );
        }
    }
    assert_eq!(cut, 20);

    // With the idle ones gone, a fresh request is served; its connection,
    // kept alive and idle, is cut too.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: omnid\r\n\r\n")
        .await
        .unwrap();
    let sent = Instant::now();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(status(&head), Some(200));
    let (_, after) = until_closed(&mut stream, sent, bound * 2)
        .await
        .expect("an idle keep-alive connection is closed");
    assert!(
        after <= bound,
        "idle keep-alive connection cut after {after:?}"
    );

    assert_eq!(
        metric(
            &daemon,
            "omnid_http_refusals_total{reason=\"connection_limit\"}"
        )
        .await,
        21
    );
    // The kept-alive connection was idle, not slow: not a refusal.
    assert_eq!(
        metric(
            &daemon,
            "omnid_http_refusals_total{reason=\"header_timeout\"}"
        )
        .await,
        20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unauthenticated_webhooks_are_all_counted_and_few_logged() {
    let deployment = Deployment::new();
    let daemon = deployment.start();
    let client = client();
    let url = daemon.url(&format!("/webhooks/{CHANNEL}"));
    for i in 0..30 {
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .body(message(&format!("u-{i}"), "hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403);
    }
    let oversized = client
        .post(&url)
        .body(vec![b' '; 65_537])
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), 413);
    assert_eq!(
        metric(
            &daemon,
            &format!(
                "omnid_webhook_requests_total{{channel=\"{CHANNEL}\",outcome=\"unauthenticated\"}}"
            )
        )
        .await,
        30
    );
    let logged = log_lines(&daemon, "webhook rejected", None);
    assert!(
        (1..=2).contains(&logged),
        "{logged} log lines for 30 refusals"
    );
}
