//! `omnid health`, the image's health check command, against the real
//! daemon: 0 while it serves (at the config's listen address, a wildcard
//! one asked on loopback), 1 with one line saying why when nothing listens
//! or a channel is down (`--ready`; a channel kind of the test's own whose
//! loop always fails, in the library daemon).

use std::{
    net::{Ipv4Addr, TcpListener},
    process::Output,
    sync::Arc,
    time::{Duration, Instant},
};

use omni_connector::{
    ChannelConfig, ChannelContext, ConfigError, Connector, ConnectorError, factory,
};
use omni_proto::v1::ChannelKind;
use omni_testkit::daemon::Deployment;
use tokio_util::sync::CancellationToken;

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// `omnid health ARGS` of `deployment`, with the environment `env`.
fn health(deployment: &Deployment, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = deployment.command(&["health"]);
    command.args(args).envs(env.iter().copied());
    command.output().expect("run omnid health")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The one line `omnid health` printed on stderr, checked to be one.
fn one_line(output: &Output) -> String {
    let stderr = text(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line saying why: {stderr:?}");
    lines[0].to_owned()
}

#[test]
fn health_passes_against_a_serving_daemon_and_fails_on_a_closed_port() {
    let deployment = Deployment::new();
    // Listening on every interface, as in the image: the check asks
    // loopback at the config's port.
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let env = [("OMNID__HTTP__LISTEN", listen.as_str())];
    let daemon = deployment.start_with_env(&env);
    assert!(
        daemon.addr.ends_with(&format!(":{port}")),
        "{}",
        daemon.addr
    );

    let ok = health(&deployment, &[], &env);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert_eq!(
        text(&ok.stdout).trim(),
        format!("ok: GET http://127.0.0.1:{port}/healthz: 200 OK")
    );
    // --ready: every channel (the API channel) is up.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = health(&deployment, &["--ready"], &env);
        if ready.status.success() {
            assert!(text(&ready.stdout).contains("/readyz: 200"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never ready: {}",
            text(&ready.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // --url instead of the config's address; a name is resolved (and each
    // of its addresses tried).
    let by_url = health(
        &deployment,
        &["--url", &format!("http://localhost:{port}")],
        &[],
    );
    assert_eq!(by_url.status.code(), Some(0), "{}", text(&by_url.stderr));

    // Nothing on the port: 1, and why.
    let closed = free_port();
    let url = format!("http://127.0.0.1:{closed}");
    let refused = health(&deployment, &["--url", &url], &[]);
    assert_eq!(refused.status.code(), Some(1));
    let line = one_line(&refused);
    assert!(
        line.starts_with(&format!("error: GET {url}/healthz: ")) && line.contains("refused"),
        "{line}"
    );
    // The config's port 0 (any free port) cannot be asked.
    let any = health(&deployment, &[], &[]);
    assert_eq!(any.status.code(), Some(1));
    assert!(one_line(&any).contains("--url"));
}

/// A channel kind whose pulling loop always fails: the daemon restarts it
/// with backoff and reports it down.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BrokenConfig {}

const BROKEN_KIND: &str = "test-broken";
const BROKEN_ERROR: &str = "the mailbox server refused the login";

impl ChannelConfig for BrokenConfig {
    const KIND: &'static str = BROKEN_KIND;
    const CHANNEL_KIND: ChannelKind = ChannelKind::Email;

    fn build(self, context: ChannelContext) -> Result<Arc<dyn Connector>, ConfigError> {
        Ok(Arc::new(Broken {
            channel_id: context.channel_id.clone(),
        }))
    }
}

#[derive(Debug)]
struct Broken {
    channel_id: String,
}

#[async_trait::async_trait]
impl Connector for Broken {
    async fn run(self: Arc<Self>, _shutdown: CancellationToken) -> Result<(), ConnectorError> {
        Err(ConnectorError {
            channel: self.channel_id.clone(),
            message: BROKEN_ERROR.to_owned(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_fails_naming_the_channel_that_is_down() {
    let deployment = Deployment::new();
    deployment.write_channel(
        "mail",
        &format!("id = \"mail\"\nkind = \"{BROKEN_KIND}\"\n"),
    );
    let mut registry = omnid::channels::registry();
    registry.push(factory::<BrokenConfig>());
    let settings = omnid::Settings::load(&deployment.config_path()).unwrap();
    let daemon = omnid::Daemon::start(settings, registry, None)
        .await
        .unwrap();
    let url = format!("http://{}", daemon.local_addr());
    let ask = |args: &[&str]| {
        let mut all = vec!["--url", url.as_str()];
        all.extend_from_slice(args);
        tokio::task::block_in_place(|| health(&deployment, &all, &[]))
    };

    // Alive, not ready: the line names the channel, its state and error,
    // and not the channel that is up.
    let alive = ask(&[]);
    assert_eq!(alive.status.code(), Some(0), "{}", text(&alive.stderr));
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        let ready = ask(&["--ready"]);
        assert_eq!(ready.status.code(), Some(1), "{}", text(&ready.stdout));
        let line = one_line(&ready);
        if line.contains("down") {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "the channel never went down: {line}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        line,
        format!(
            "error: GET {url}/readyz: 503 Service Unavailable; not ready: mail ({BROKEN_KIND}) \
             down: channel mail: {BROKEN_ERROR}"
        )
    );

    daemon.shutdown();
    tokio::time::timeout(Duration::from_secs(20), daemon.stopped())
        .await
        .expect("the daemon stops");
}
