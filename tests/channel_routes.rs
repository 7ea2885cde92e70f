//! A channel's own endpoints (`Connector::routes`), served by the running
//! daemon under `/channels/{channel_id}/`: plain requests with their query,
//! a WebSocket upgraded and held open across requests, an unknown channel
//! refused, and a reload that removes the channel removing its routes.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{
        Query, State,
        ws::{Message, WebSocket, WebSocketUpgrade},
    },
    response::Response,
    routing::get,
};
use futures::{SinkExt as _, StreamExt as _};
use omni_connector::{ChannelConfig, ChannelContext, ConfigError, Connector, factory};
use omni_proto::v1::ChannelKind;
use omni_testkit::daemon::Deployment;

const KIND: &str = "test-app";
const CHANNEL: &str = "app";

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AppConfig {
    greeting: String,
}

impl ChannelConfig for AppConfig {
    const KIND: &'static str = KIND;
    const CHANNEL_KIND: ChannelKind = ChannelKind::Chat;

    fn build(self, context: ChannelContext) -> Result<Arc<dyn Connector>, ConfigError> {
        Ok(Arc::new(App {
            greeting: format!("{} from {}", self.greeting, context.channel_id),
        }))
    }
}

/// A channel that is an HTTP application of its own: a greeting and an
/// upper-casing WebSocket.
#[derive(Debug)]
struct App {
    greeting: String,
}

#[async_trait::async_trait]
impl Connector for App {
    fn routes(&self) -> Option<Router> {
        Some(
            Router::new()
                .route("/hello", get(hello))
                .route("/socket", get(socket))
                .with_state(self.greeting.clone()),
        )
    }
}

async fn hello(
    State(greeting): State<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> String {
    format!(
        "{greeting}, {}",
        query.get("name").map_or("?", String::as_str)
    )
}

async fn socket(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: WebSocket| async move {
        while let Some(Ok(Message::Text(text))) = socket.recv().await {
            if socket
                .send(Message::Text(text.to_uppercase().into()))
                .await
                .is_err()
            {
                return;
            }
        }
    })
}

fn deployment() -> Deployment {
    let deployment = Deployment::empty();
    deployment.write_config(&format!(
        "data_dir = \"{}\"\nshutdown_timeout_secs = 10\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [channels]\ndir = \"{}\"\nreload_interval_secs = 1\n",
        deployment.data_dir().display(),
        deployment.channels_dir().display(),
    ));
    deployment.write_channel(
        CHANNEL,
        &format!("id = \"{CHANNEL}\"\nkind = \"{KIND}\"\ngreeting = \"salaam\"\n"),
    );
    deployment
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channels_own_routes_and_websocket_are_served_under_its_id() {
    let deployment = deployment();
    let mut registry = omnid::channels::registry();
    registry.push(factory::<AppConfig>());
    let settings = omnid::Settings::load(&deployment.config_path()).unwrap();
    let daemon = omnid::Daemon::start(settings, registry, None)
        .await
        .unwrap();
    let addr = daemon.local_addr();
    let client = reqwest::Client::new();

    let response = client
        .get(format!("http://{addr}/channels/{CHANNEL}/hello?name=Leila"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "salaam from app, Leila");
    let missing = client
        .get(format!("http://{addr}/channels/nowhere/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.text().await.unwrap().contains("unknown_channel"));
    let no_route = client
        .get(format!("http://{addr}/channels/{CHANNEL}/elsewhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_route.status(), 404);

    // The upgraded connection outlives the request that opened it, and
    // plain requests keep being served beside it.
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/channels/{CHANNEL}/socket"))
            .await
            .expect("the daemon upgrades the connection");
    for text in ["hello", "سلام"] {
        socket
            .send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("an answer")
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text.to_uppercase());
    }
    let again = client
        .get(format!("http://{addr}/channels/{CHANNEL}/hello?name=Ali"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.text().await.unwrap(), "salaam from app, Ali");

    // Removing the channel file removes its routes at the next reload.
    std::fs::remove_file(deployment.channels_dir().join(format!("{CHANNEL}.toml"))).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = client
            .get(format!("http://{addr}/channels/{CHANNEL}/hello"))
            .send()
            .await
            .unwrap()
            .status();
        if status == 404 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still served: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    daemon.shutdown();
    tokio::time::timeout(Duration::from_secs(20), daemon.stopped())
        .await
        .expect("the daemon stops with a socket open");
}
