//! `omnid health`: asks a running daemon's `GET /healthz` (or `/readyz`)
//! and succeeds on `200` only, so a container's health check needs no
//! curl and no shell: the image runs its own binary.
//!
//! By default it asks the daemon of the same config, at its `http.listen`
//! address; a wildcard address (`0.0.0.0`, `[::]`) is asked on loopback,
//! where the check runs. The request is a bare HTTP/1.0 `GET` over one
//! TCP connection (the daemon serves plain HTTP/1), and the whole exchange
//! (connect, request, answer) must fit in `--timeout`: a daemon that
//! accepts but never answers is as unhealthy as one that is gone.
//!
//! Parsing (the URL, the status line, `/readyz`'s report) is apart from
//! the I/O, so it is tested without a server.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use clap::Args;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::settings::Settings;

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Ask `/readyz` (every channel up) instead of `/healthz` (the process
    /// serves HTTP).
    #[arg(long)]
    ready: bool,
    /// The daemon's base URL (`http://HOST:PORT`); by default its
    /// `http.listen` address from the config, on loopback when it listens
    /// on every interface.
    #[arg(long)]
    url: Option<String>,
    /// How long the whole check may take (`3s`, `500ms`; a bare number is
    /// seconds).
    #[arg(long, default_value = "3s", value_parser = parse_timeout)]
    timeout: Duration,
}

/// Why the daemon is not healthy, or could not be asked; each one line.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("invalid --url `{url}`: {reason}")]
    Url { url: String, reason: &'static str },
    #[error(
        "http.listen is {0}: the port is chosen at start, so give the daemon's address with --url"
    )]
    AnyPort(SocketAddr),
    #[error("GET {url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("GET {url}: {source}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("GET {url}: not an HTTP response: {head:?}")]
    Malformed { url: String, head: String },
    #[error("GET {url}: {status}{detail}")]
    Status {
        url: String,
        status: String,
        detail: String,
    },
}

/// Where to ask: what to connect to and what to send.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// A host name or IP address (IPv6 without brackets).
    host: String,
    port: u16,
    /// `host:port` as the `Host` header and the URL write it.
    authority: String,
    /// The path up to the endpoint, without a trailing `/` (empty for the
    /// root).
    base_path: String,
}

impl Target {
    /// The daemon at its listen address, on loopback for a wildcard one.
    fn of_listen(listen: SocketAddr) -> Result<Self, HealthError> {
        if listen.port() == 0 {
            return Err(HealthError::AnyPort(listen));
        }
        let addr = loopback_for(listen);
        Ok(Self {
            host: addr.ip().to_string(),
            port: addr.port(),
            authority: addr.to_string(),
            base_path: String::new(),
        })
    }

    /// `http://HOST[:PORT][/PATH]`.
    fn parse(url: &str) -> Result<Self, HealthError> {
        let invalid = |reason| HealthError::Url {
            url: url.to_owned(),
            reason,
        };
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
                return Err(invalid(
                    "https is not supported: the daemon serves plain HTTP, ask its listen address",
                ));
            }
            _ => return Err(invalid("expected http://HOST:PORT")),
        };
        let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
        if path.contains(['?', '#']) {
            return Err(invalid(
                "no query or fragment: the path is the daemon's base",
            ));
        }
        if authority.contains('@') {
            return Err(invalid("no user information"));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| invalid("unclosed `[` in the host"))?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| invalid("expected `:PORT` after `]`"))?,
                    ),
                ),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let port = match port {
            None => 80,
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| invalid("the port is not a number from 1 to 65535"))?,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            base_path: path.trim_end_matches('/').to_owned(),
        })
    }

    fn path(&self, ready: bool) -> String {
        let endpoint = if ready { "/readyz" } else { "/healthz" };
        format!("{}{endpoint}", self.base_path)
    }

    fn url(&self, ready: bool) -> String {
        format!("http://{}{}", self.authority, self.path(ready))
    }

    /// The request, whole: HTTP/1.0, so the daemon closes the connection
    /// after its answer and the body ends there.
    fn request(&self, ready: bool) -> String {
        format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: omnid-health\r\nAccept: application/json\r\n\r\n",
            self.path(ready),
            self.authority
        )
    }
}

/// A wildcard listen address is asked on the loopback of its family: the
/// check runs beside the daemon (in its container, on its host).
fn loopback_for(listen: SocketAddr) -> SocketAddr {
    match listen {
        SocketAddr::V4(v4) if v4.ip().is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, v4.port()))
        }
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, v6.port()))
        }
        other => other,
    }
}

/// `3s`, `500ms`, or a bare number of seconds; more than zero.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        (text, 1.0)
    };
    let seconds = number
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n > 0.0)
        .map(|n| n * scale)
        .ok_or_else(|| format!("`{text}` is not a positive duration such as 3s or 500ms"))?;
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

/// The status code and the status line's text of an HTTP/1 answer.
fn status_line(answer: &[u8]) -> Option<(u16, &str)> {
    let end = answer.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&answer[..end]).ok()?.trim_end();
    let rest = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))?;
    let code = rest.get(..3)?.parse::<u16>().ok()?;
    if rest.len() > 3 && !rest[3..].starts_with(' ') {
        return None;
    }
    Some((code, rest))
}

/// The body of an HTTP/1 answer (after the blank line), if it got that far.
fn body(answer: &[u8]) -> &[u8] {
    answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(&[][..], |at| &answer[at + 4..])
}

/// Most of a failing answer's body worth a one-line report.
const DETAIL_CHARS: usize = 300;

/// Why a non-200 answer failed, from its body: the channels `/readyz`
/// reports as not up (`; not ready: mail (email) down: ...`), or the
/// body's text on one line.
fn detail(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(report) if report.get("channels").is_some_and(|c| c.is_object()) => not_ready(&report),
        _ => text.split_whitespace().collect::<Vec<_>>().join(" "),
    };
    if line.is_empty() {
        return line;
    }
    if line.chars().count() <= DETAIL_CHARS {
        return format!("; {line}");
    }
    let cut: String = line.chars().take(DETAIL_CHARS).collect();
    format!("; {cut}…")
}

/// `/readyz`'s report in a few words: each channel not up, its state and
/// error.
fn not_ready(report: &serde_json::Value) -> String {
    let channels = report["channels"].as_object().into_iter().flatten();
    let failing: Vec<String> = channels
        .filter(|(_, channel)| channel["state"] != "up")
        .map(|(id, channel)| {
            let kind = channel["kind"].as_str().unwrap_or("?");
            let state = channel["state"].as_str().unwrap_or("?");
            match channel["error"].as_str().filter(|e| !e.is_empty()) {
                Some(error) => format!("{id} ({kind}) {state}: {error}"),
                None => format!("{id} ({kind}) {state}"),
            }
        })
        .collect();
    if failing.is_empty() {
        // Every channel is up: the daemon itself is starting or stopping.
        "not ready: the daemon is starting or shutting down".to_owned()
    } else {
        format!("not ready: {}", failing.join(", "))
    }
}

/// The most of an answer read: the status line is what counts, the body
/// only explains a failure.
const MAX_ANSWER_BYTES: u64 = 64 * 1024;

/// `omnid health`: `Ok` with a line to print when the daemon answers 200.
pub(crate) async fn check(config: &Path, args: HealthArgs) -> Result<String, crate::Error> {
    let target = match &args.url {
        Some(url) => Target::parse(url)?,
        None => Target::of_listen(Settings::load(config)?.http.listen)?,
    };
    Ok(ask(&target, args.ready, args.timeout).await?)
}

async fn ask(target: &Target, ready: bool, timeout: Duration) -> Result<String, HealthError> {
    let url = target.url(ready);
    let exchange = async {
        let mut stream = TcpStream::connect((target.host.as_str(), target.port)).await?;
        stream.write_all(target.request(ready).as_bytes()).await?;
        let mut answer = Vec::new();
        (&mut stream)
            .take(MAX_ANSWER_BYTES)
            .read_to_end(&mut answer)
            .await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| HealthError::Timeout {
            url: url.clone(),
            timeout,
        })?
        .map_err(|source| HealthError::Io {
            url: url.clone(),
            source,
        })?;
    let Some((code, status)) = status_line(&answer) else {
        let head = String::from_utf8_lossy(&answer[..answer.len().min(80)]).into_owned();
        return Err(HealthError::Malformed { url, head });
    };
    if code != 200 {
        return Err(HealthError::Status {
            status: status.to_owned(),
            detail: detail(body(&answer)),
            url,
        });
    }
    Ok(format!("ok: GET {url}: {status}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str, port: u16, authority: &str, base_path: &str) -> Target {
        Target {
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            base_path: base_path.to_owned(),
        }
    }

    #[test]
    fn a_wildcard_listen_address_is_asked_on_loopback() {
        let of = |listen: &str| Target::of_listen(listen.parse().unwrap()).unwrap();
        assert_eq!(
            of("0.0.0.0:8080"),
            target("127.0.0.1", 8080, "127.0.0.1:8080", "")
        );
        assert_eq!(of("[::]:9000"), target("::1", 9000, "[::1]:9000", ""));
        assert_eq!(
            of("10.1.2.3:8080"),
            target("10.1.2.3", 8080, "10.1.2.3:8080", "")
        );
        let any_port = Target::of_listen("127.0.0.1:0".parse().unwrap()).unwrap_err();
        assert!(any_port.to_string().contains("--url"), "{any_port}");
    }

    #[test]
    fn urls_name_host_port_and_base_path() {
        let parse = |url: &str| Target::parse(url).unwrap();
        assert_eq!(
            parse("http://127.0.0.1:8080"),
            target("127.0.0.1", 8080, "127.0.0.1:8080", "")
        );
        assert_eq!(
            parse("http://omnid.internal/"),
            target("omnid.internal", 80, "omnid.internal", "")
        );
        assert_eq!(parse("HTTP://[::1]:81"), target("::1", 81, "[::1]:81", ""));
        assert_eq!(parse("http://[::1]"), target("::1", 80, "[::1]", ""));
        let behind = parse("http://gw:8000/omnid/");
        assert_eq!(behind, target("gw", 8000, "gw:8000", "/omnid"));
        assert_eq!(behind.url(true), "http://gw:8000/omnid/readyz");
        assert_eq!(
            behind.request(false),
            "GET /omnid/healthz HTTP/1.0\r\nHost: gw:8000\r\nUser-Agent: omnid-health\r\n\
             Accept: application/json\r\n\r\n"
        );
        for (url, why) in [
            ("https://127.0.0.1:8080", "https"),
            ("127.0.0.1:8080", "http://"),
            ("http://:8080", "no host"),
            ("http://h:0", "port"),
            ("http://h:http", "port"),
            ("http://[::1:80", "unclosed"),
            ("http://[::1]x", "after `]`"),
            ("http://u@h:80", "user"),
            ("http://h:80/x?y=1", "query"),
        ] {
            let error = Target::parse(url).unwrap_err().to_string();
            assert!(error.contains(why), "{url}: {error}");
        }
    }

    #[test]
    fn timeouts_take_seconds_or_milliseconds() {
        assert_eq!(parse_timeout("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_timeout("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_timeout("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["0", "-1s", "soon", "", "NaN", "1e300"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_lines_and_bodies_are_read() {
        let answer =
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\r\n{}";
        assert_eq!(status_line(answer), Some((503, "503 Service Unavailable")));
        assert_eq!(body(answer), b"{}");
        assert_eq!(
            status_line(b"HTTP/1.0 200 OK\r\n\r\n"),
            Some((200, "200 OK"))
        );
        assert_eq!(status_line(b"HTTP/1.1 200\r\n\r\n"), Some((200, "200")));
        for bad in [
            &b"SSH-2.0-OpenSSH_9.2\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n",
            b"HTTP/1.1 OK\r\n",
            b"HTTP/1.1 200 OK",
            b"",
        ] {
            assert_eq!(status_line(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(body(b"HTTP/1.1 200 OK\r\n"), b"");
    }

    #[test]
    fn a_failing_answer_says_why_on_one_line() {
        let report = br#"{"ready":false,"channels":{
            "shop":{"kind":"api","state":"up","error":null,"restarts":0},
            "mail":{"kind":"email","state":"down","error":"connect: connection refused","restarts":2},
            "tg":{"kind":"telegram","state":"starting","error":null,"restarts":0}}}"#;
        assert_eq!(
            detail(report),
            "; not ready: mail (email) down: connect: connection refused, tg (telegram) starting"
        );
        assert_eq!(
            detail(br#"{"ready":false,"channels":{}}"#),
            "; not ready: the daemon is starting or shutting down"
        );
        assert_eq!(detail(b"upstream\n  gone\n"), "; upstream gone");
        assert_eq!(detail(b""), "");
        let long = "x".repeat(1000);
        let cut = detail(long.as_bytes());
        assert_eq!(cut.chars().count(), 2 + DETAIL_CHARS + 1, "{cut}");
        assert!(cut.ends_with('…'));
    }

    /// A server that answers every connection with `answer`, or never
    /// answers when it is `None`.
    async fn server(answer: Option<&'static [u8]>) -> Target {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = vec![0; 1024];
                let _ = stream.read(&mut request).await;
                match answer {
                    Some(answer) => {
                        let _ = stream.write_all(answer).await;
                    }
                    None => held.push(stream),
                }
            }
        });
        Target::of_listen(addr).unwrap()
    }

    #[tokio::test]
    async fn only_a_200_is_healthy() {
        let timeout = Duration::from_secs(5);
        let ok = server(Some(
            b"HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}",
        ))
        .await;
        let line = ask(&ok, false, timeout).await.unwrap();
        assert_eq!(line, format!("ok: GET {}: 200 OK", ok.url(false)));

        let unavailable = server(Some(
            b"HTTP/1.1 503 Service Unavailable\r\n\r\n{\"ready\":false,\"channels\":{}}",
        ))
        .await;
        let error = ask(&unavailable, true, timeout).await.unwrap_err();
        assert!(matches!(error, HealthError::Status { .. }), "{error}");
        let line = error.to_string();
        let expected = format!(
            "GET {}: 503 Service Unavailable; not ready",
            unavailable.url(true)
        );
        assert!(line.starts_with(&expected), "{line}");
        assert!(!line.contains('\n'), "{line}");

        let garbage = server(Some(b"220 smtp.example ESMTP\r\n")).await;
        let error = ask(&garbage, false, timeout).await.unwrap_err();
        assert!(matches!(error, HealthError::Malformed { .. }), "{error}");

        let silent = server(None).await;
        let error = ask(&silent, false, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(error, HealthError::Timeout { .. }), "{error}");
    }

    #[tokio::test]
    async fn a_closed_port_is_unhealthy() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = Target::of_listen(listener.local_addr().unwrap()).unwrap();
        drop(listener);
        let error = ask(&closed, false, Duration::from_secs(5))
            .await
            .unwrap_err();
        let HealthError::Io { source, .. } = &error else {
            panic!("{error}");
        };
        assert_eq!(
            source.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{error}"
        );
    }
}
