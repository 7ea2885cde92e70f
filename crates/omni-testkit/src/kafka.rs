//! A real Kafka-protocol broker (Tansu) for tests, reached through a TCP
//! proxy the test can cut and restore. Tansu advertises the proxy's
//! address, so every client connection (bootstrap and partition leaders)
//! goes through it: cutting the proxy is, from the daemon's side, the
//! broker going away, while the broker's in-memory storage survives.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{net::TcpListener, sync::Mutex, task::JoinHandle};

use crate::process::free_port;

/// The broker binary: `$TANSU`, else `~/.cargo/bin/tansu`, else `tansu` on
/// the PATH. `./scripts/test` installs it.
fn tansu_binary() -> PathBuf {
    if let Ok(path) = std::env::var("TANSU") {
        return PathBuf::from(path);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cargo_bin = PathBuf::from(home).join(".cargo/bin/tansu");
    if cargo_bin.exists() {
        cargo_bin
    } else {
        PathBuf::from("tansu")
    }
}

/// A Tansu broker with in-memory storage, stopped on drop.
#[derive(Debug)]
pub struct Broker {
    child: Child,
    pub proxy: Proxy,
}

impl Broker {
    /// Starts a broker and its proxy (on the caller's tokio runtime) and
    /// waits up to 10 s for the broker to listen.
    ///
    /// # Panics
    /// If Tansu is not installed.
    pub async fn start() -> Broker {
        let proxy_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_port = proxy_listener.local_addr().unwrap().port();
        let broker_port = free_port();
        let child = Command::new(tansu_binary())
            .args([
                "broker",
                "--storage-engine",
                "memory://tansu/",
                "--listener-url",
                &format!("tcp://127.0.0.1:{broker_port}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{proxy_port}"),
            ])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the tansu broker ({e}); run ./scripts/test, which installs it, \
                     or `cargo install tansu --locked --features dynostore`"
                )
            });
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", broker_port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let proxy = Proxy::start(proxy_listener, broker_port);
        Broker { child, proxy }
    }

    /// The bootstrap address clients are given: the proxy's.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.proxy.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Forwards connections to the broker until cut.
#[derive(Debug)]
pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    _accept: JoinHandle<()>,
}

impl Proxy {
    fn start(listener: TcpListener, broker_port: u16) -> Proxy {
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (accept_up, accept_connections) = (up.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if !accept_up.load(Ordering::SeqCst) {
                    drop(client); // refused: the broker is "down"
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", broker_port)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                accept_connections.lock().await.push(task);
            }
        });
        Proxy {
            port,
            up,
            connections,
            _accept: accept,
        }
    }

    /// Drops every connection and refuses new ones.
    pub async fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for task in self.connections.lock().await.drain(..) {
            task.abort();
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// The `[log]` section of a daemon on this broker.
pub fn log_config(bootstrap: &str, partitions: i32, encoding: &str) -> String {
    format!(
        "[log]\nbackend = \"kafka\"\nencoding = \"{encoding}\"\n\
         [log.kafka]\nbrokers = \"{bootstrap}\"\npartitions = {partitions}\n\
         [log.kafka.librdkafka]\n\"reconnect.backoff.max.ms\" = \"500\"\n\
         [log.spool]\nspool_after_ms = 500\n"
    )
}
