//! The HTTP listener: accepts connections and serves the router over
//! HTTP/1.1 with the limits that keep hostile clients from holding the
//! daemon's connections or memory. A client must send its request head
//! within `http.header_read_timeout_secs`, at most `http.max_connections`
//! connections are open, and webhook bodies, buffered before any signature
//! can be checked, share a byte budget ([`BodyBudget`]).
//!
//! Worst-case memory held for clients: `max_inflight_body_bytes` of webhook
//! bodies plus `max_connections` × [`MAX_CONNECTION_BUFFER`] of connection
//! buffers.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::ConnectInfo};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use omni_telemetry::emit;
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::events::{HttpRefusal, HttpRefusalMetrics, HttpRefused};
use crate::settings::HttpSettings;

/// Read and write buffer of one connection at most: a request head must fit
/// (a larger one is answered 431), and a slow client holds no more.
pub(crate) const MAX_CONNECTION_BUFFER: usize = 64 * 1024;

/// What a connection beyond `http.max_connections` is told before it is
/// closed; written without waiting, so a refused client costs nothing.
const CONNECTION_LIMIT_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
retry-after: 1\r\ncontent-type: application/json\r\ncontent-length: 70\r\nconnection: close\r\n\r\n\
{\"error\":{\"code\":\"overloaded\",\"message\":\"too many open connections\"}}\n";

/// How long the accept loop pauses after a failed accept (out of file
/// descriptors), instead of spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// What every request handler may need from the listener: the body budget,
/// the body deadline and the refusal metrics. Each request carries it as an
/// extension, beside its peer's [`ConnectInfo`].
#[derive(Debug)]
pub(crate) struct Admission {
    pub budget: Arc<BodyBudget>,
    pub body_read_timeout: Duration,
    pub refusals: HttpRefusalMetrics,
}

/// Why a webhook body was not read.
#[derive(Debug)]
pub(crate) enum BodyRefusal {
    /// Over `http.max_body_bytes` (answer 413).
    TooLarge,
    /// The budget had no room for it (answer 429 or 503, unread).
    Exhausted(Exhausted),
    /// It did not arrive within `http.body_read_timeout_secs` (answer 408).
    TimedOut,
    /// The connection failed mid-body (answer 400).
    Unreadable(String),
}

impl Admission {
    /// Reads a body of at most `max` bytes within the body deadline, its
    /// bytes reserved from the budget before they are buffered: all of a
    /// declared `Content-Length` up front, otherwise chunk by chunk. The
    /// bytes stay reserved until the returned reservation drops.
    pub(crate) async fn read_body(
        &self,
        peer: IpAddr,
        body: axum::body::Body,
        declared: Option<usize>,
        max: usize,
    ) -> Result<(Bytes, Reservation), BodyRefusal> {
        let mut reservation = self
            .budget
            .reserve(peer, declared.unwrap_or(0))
            .map_err(|exhausted| self.exhausted(peer, exhausted))?;
        let read = async {
            let mut body = body;
            // A body that arrives in one chunk (most do) is kept as hyper
            // handed it over, without a copy; only a second chunk starts a
            // buffer.
            let mut whole: Option<Bytes> = None;
            let mut buffer = BytesMut::new();
            let mut len = 0;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| BodyRefusal::Unreadable(e.to_string()))?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                len += data.len();
                if len > max {
                    return Err(BodyRefusal::TooLarge);
                }
                reservation
                    .grow_to(len)
                    .map_err(|exhausted| self.exhausted(peer, exhausted))?;
                if whole.is_none() && buffer.is_empty() {
                    whole = Some(data);
                    continue;
                }
                if let Some(first) = whole.take() {
                    buffer.reserve(declared.unwrap_or(0).max(len));
                    buffer.extend_from_slice(&first);
                }
                buffer.extend_from_slice(&data);
            }
            Ok(whole.unwrap_or_else(|| buffer.freeze()))
        };
        let read = tokio::time::timeout(self.body_read_timeout, read).await;
        match read {
            Ok(Ok(body)) => Ok((body, reservation)),
            Ok(Err(refusal)) => Err(refusal),
            Err(_) => {
                self.refuse(
                    HttpRefusal::BodyTimeout,
                    peer,
                    "request body not read in time",
                );
                Err(BodyRefusal::TimedOut)
            }
        }
    }

    fn exhausted(&self, peer: IpAddr, exhausted: Exhausted) -> BodyRefusal {
        let (reason, detail) = match exhausted {
            Exhausted::Peer => (
                HttpRefusal::PeerBodyBudget,
                "the peer's unauthenticated body bytes are at their limit",
            ),
            Exhausted::Total => (
                HttpRefusal::BodyBudget,
                "unauthenticated body bytes are at their limit",
            ),
        };
        self.refuse(reason, peer, detail);
        BodyRefusal::Exhausted(exhausted)
    }

    pub(crate) fn refuse(&self, reason: HttpRefusal, peer: IpAddr, detail: &str) {
        emit!(HttpRefused {
            reason,
            peer,
            detail,
        } => &self.refusals);
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then waits for
/// every open connection to finish its in-flight request.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    settings: &HttpSettings,
    shutdown: CancellationToken,
) {
    let admission = Arc::new(Admission {
        budget: Arc::new(BodyBudget::new(
            settings.max_inflight_body_bytes,
            settings.max_inflight_body_bytes_per_peer,
        )),
        body_read_timeout: Duration::from_secs(settings.body_read_timeout_secs),
        refusals: HttpRefusalMetrics::register(),
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(settings.header_read_timeout_secs))
        .max_buf_size(MAX_CONNECTION_BUFFER)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let max_connections = settings.max_connections;
    let connections = Arc::new(Semaphore::new(max_connections as usize));

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(error = %error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            admission.refuse(
                HttpRefusal::ConnectionLimit,
                peer.ip(),
                "too many open connections",
            );
            let _ = stream.try_write(CONNECTION_LIMIT_RESPONSE);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let served = Arc::new(AtomicU64::new(0));
        let service = {
            let (admission, served) = (admission.clone(), served.clone());
            app.clone()
                .map_request(move |mut request: axum::http::Request<Incoming>| {
                    served.fetch_add(1, Ordering::Relaxed);
                    let extensions = request.extensions_mut();
                    extensions.insert(ConnectInfo(peer));
                    extensions.insert(admission.clone());
                    request
                })
        };
        let (builder, admission, shutdown) = (builder.clone(), admission.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _permit = permit;
            // Upgrades (a web chat's WebSocket) take the connection over
            // from HTTP; the permit then goes back, and the channel bounds
            // its own sockets.
            let connection = builder
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            match result {
                Ok(()) => {}
                // A connection that never sent a request head is a slow or
                // silent client; one that did was only idle between requests.
                Err(error) if error.is_timeout() && served.load(Ordering::Relaxed) == 0 => {
                    admission.refuse(
                        HttpRefusal::HeaderTimeout,
                        peer.ip(),
                        "no complete request head in time",
                    );
                }
                Err(error) => tracing::debug!(%peer, error = %error, "http connection ended"),
            }
        });
    }
    drop(listener);
    // Every connection holds a permit until it is done: having them all
    // back means the in-flight requests are answered.
    let _ = connections.acquire_many(max_connections).await;
}

/// Why a body's bytes could not be reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exhausted {
    /// The peer's share is taken (answer 429).
    Peer,
    /// The whole budget is taken (answer 503).
    Total,
}

/// Bytes of request bodies being buffered before authentication, in total
/// and per peer address. Reserving never waits: a request that does not
/// fit is refused at once, so the budget bounds memory, not a queue.
#[derive(Debug)]
pub(crate) struct BodyBudget {
    total_max: usize,
    peer_max: usize,
    used: Mutex<Used>,
}

#[derive(Debug, Default)]
struct Used {
    total: usize,
    /// Only peers holding bytes: at most one entry per open connection.
    /// Looked up twice per request: a fast hash, still seeded per process
    /// (peers choose their addresses).
    peers: HashMap<IpAddr, usize, foldhash::fast::RandomState>,
}

impl Used {
    fn take(
        &mut self,
        peer: IpAddr,
        bytes: usize,
        total_max: usize,
        peer_max: usize,
    ) -> Result<(), Exhausted> {
        let held = self.peers.get(&peer).copied().unwrap_or(0);
        if held.saturating_add(bytes) > peer_max {
            return Err(Exhausted::Peer);
        }
        if self.total.saturating_add(bytes) > total_max {
            return Err(Exhausted::Total);
        }
        self.total += bytes;
        if bytes > 0 {
            *self.peers.entry(peer).or_default() += bytes;
        }
        Ok(())
    }

    fn give_back(&mut self, peer: IpAddr, bytes: usize) {
        self.total = self.total.saturating_sub(bytes);
        if let Some(held) = self.peers.get_mut(&peer) {
            *held = held.saturating_sub(bytes);
            if *held == 0 {
                self.peers.remove(&peer);
            }
        }
    }
}

impl BodyBudget {
    pub(crate) fn new(total_max: usize, peer_max: usize) -> Self {
        Self {
            total_max,
            peer_max,
            used: Mutex::default(),
        }
    }

    fn used(&self) -> std::sync::MutexGuard<'_, Used> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `bytes` for `peer`; they are given back when the
    /// reservation drops.
    pub(crate) fn reserve(
        self: &Arc<Self>,
        peer: IpAddr,
        bytes: usize,
    ) -> Result<Reservation, Exhausted> {
        self.used()
            .take(peer, bytes, self.total_max, self.peer_max)?;
        Ok(Reservation {
            budget: self.clone(),
            peer,
            bytes,
        })
    }
}

/// Body bytes held from a [`BodyBudget`] until dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<BodyBudget>,
    peer: IpAddr,
    bytes: usize,
}

impl Reservation {
    /// Makes the reservation at least `bytes` (for a body without a
    /// declared length, as its chunks arrive).
    pub(crate) fn grow_to(&mut self, bytes: usize) -> Result<(), Exhausted> {
        if bytes <= self.bytes {
            return Ok(());
        }
        let more = bytes - self.bytes;
        let budget = &self.budget;
        budget
            .used()
            .take(self.peer, more, budget.total_max, budget.peer_max)?;
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used().give_back(self.peer, self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn a_peer_cannot_take_more_than_its_share_nor_all_peers_more_than_the_total() {
        let budget = Arc::new(BodyBudget::new(10, 4));
        let a = budget.reserve(ip(1), 3).unwrap();
        assert_eq!(budget.reserve(ip(1), 2).unwrap_err(), Exhausted::Peer);
        let _b = budget.reserve(ip(2), 4).unwrap();
        let mut c = budget.reserve(ip(3), 2).unwrap();
        assert_eq!(c.grow_to(5).unwrap_err(), Exhausted::Peer);
        c.grow_to(3).unwrap();
        // 3 + 4 + 3 = 10: full, whatever the peer.
        assert_eq!(budget.reserve(ip(4), 1).unwrap_err(), Exhausted::Total);
        drop(a);
        let _d = budget.reserve(ip(4), 3).unwrap();
        assert_eq!(budget.reserve(ip(5), 1).unwrap_err(), Exhausted::Total);
    }

    #[tokio::test]
    async fn bodies_are_read_whole_from_one_chunk_or_many_and_limited() {
        let admission = Admission {
            budget: Arc::new(BodyBudget::new(100, 100)),
            body_read_timeout: Duration::from_secs(5),
            refusals: HttpRefusalMetrics::register(),
        };
        let chunks = |parts: &[&'static str]| {
            let parts: Vec<_> = parts
                .iter()
                .map(|part| Ok::<_, std::io::Error>(Bytes::from_static(part.as_bytes())))
                .collect();
            axum::body::Body::from_stream(futures::stream::iter(parts))
        };
        let (one, held) = admission
            .read_body(ip(1), chunks(&["hello"]), Some(5), 10)
            .await
            .unwrap();
        assert_eq!(one, "hello");
        drop(held);
        let (many, held) = admission
            .read_body(ip(1), chunks(&["he", "", "llo", " world"]), None, 20)
            .await
            .unwrap();
        assert_eq!(many, "hello world");
        assert_eq!(admission.budget.used().total, 11);
        drop(held);
        let (empty, _) = admission
            .read_body(ip(1), chunks(&[]), None, 20)
            .await
            .unwrap();
        assert!(empty.is_empty());
        let over = admission
            .read_body(ip(1), chunks(&["hello", " world"]), None, 10)
            .await;
        assert!(matches!(over, Err(BodyRefusal::TooLarge)), "{over:?}");
        assert_eq!(admission.budget.used().total, 0);
    }

    #[test]
    fn dropped_reservations_give_every_byte_back() {
        let budget = Arc::new(BodyBudget::new(8, 8));
        let mut held: Vec<_> = (1..=4).map(|i| budget.reserve(ip(i), 1).unwrap()).collect();
        held[0].grow_to(5).unwrap();
        drop(held);
        let used = budget.used();
        assert_eq!(used.total, 0);
        assert!(used.peers.is_empty());
    }
}
