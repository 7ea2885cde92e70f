//! The daemon as a library: a channel kind of the test's own, registered
//! through the connector SDK alone, whose pulling loop fails twice before
//! it runs; the daemon restarts it and `/readyz` follows it down, then up.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use omni_connector::{
    ChannelConfig, ChannelContext, ConfigError, Connector, ConnectorError, factory,
};
use omni_proto::v1::ChannelKind;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// A pull channel whose loop fails its first `failures` runs.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FlakyConfig {
    failures: usize,
}

impl ChannelConfig for FlakyConfig {
    const KIND: &'static str = "flaky-pull";
    const CHANNEL_KIND: ChannelKind = ChannelKind::Api;

    fn build(self, context: ChannelContext) -> Result<Arc<dyn Connector>, ConfigError> {
        Ok(Arc::new(Flaky {
            channel: context.channel_id.clone(),
            failures: self.failures,
            runs: AtomicUsize::new(0),
        }))
    }
}

#[derive(Debug)]
struct Flaky {
    channel: String,
    failures: usize,
    runs: AtomicUsize,
}

#[async_trait::async_trait]
impl Connector for Flaky {
    async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), ConnectorError> {
        if self.runs.fetch_add(1, Ordering::SeqCst) < self.failures {
            return Err(ConnectorError {
                channel: self.channel.clone(),
                message: "mailbox login refused".into(),
            });
        }
        shutdown.cancelled().await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_channel_kind_runs_in_the_library_daemon_and_is_restarted_until_up() {
    let dir = tempfile::tempdir().unwrap();
    let channels = dir.path().join("channels");
    std::fs::create_dir_all(&channels).unwrap();
    std::fs::write(
        channels.join("flaky.toml"),
        "id = \"flaky\"\nkind = \"flaky-pull\"\nfailures = 2\n",
    )
    .unwrap();
    let config = dir.path().join("omnid.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nshutdown_timeout_secs = 10\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [channels]\ndir = \"{}\"\n",
            dir.path().join("data").display(),
            channels.display()
        ),
    )
    .unwrap();
    let mut registry = omnid::channels::registry();
    registry.push(factory::<FlakyConfig>());

    let settings = omnid::Settings::load(&config).unwrap();
    let daemon = omnid::Daemon::start(settings, registry, None)
        .await
        .unwrap();
    let url = format!("http://{}/readyz", daemon.local_addr());
    let client = reqwest::Client::new();

    // Down (503, with the loop's error) after each failure, up in the end.
    let mut saw_down = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    let last = loop {
        let response = client.get(&url).send().await.unwrap();
        let status = response.status().as_u16();
        let report: Value = response.json().await.unwrap();
        let flaky = &report["channels"]["flaky"];
        assert_eq!(flaky["kind"], "flaky-pull", "{report}");
        if flaky["state"] == "down" {
            assert_eq!(status, 503, "{report}");
            assert_eq!(report["ready"], false);
            assert_eq!(
                flaky["error"], "channel flaky: mailbox login refused",
                "{report}"
            );
            saw_down = true;
        }
        if status == 200 {
            break report;
        }
        assert!(Instant::now() < deadline, "never ready: {report}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(saw_down, "the failing loop was never reported down");
    assert_eq!(last["ready"], true);
    assert_eq!(last["channels"]["flaky"]["state"], "up");
    assert_eq!(last["channels"]["flaky"]["restarts"], 2);
    assert_eq!(last["channels"]["flaky"]["error"], Value::Null);

    daemon.shutdown();
    tokio::time::timeout(Duration::from_secs(20), daemon.stopped())
        .await
        .expect("the daemon stops");
}
