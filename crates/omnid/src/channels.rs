//! Channel files: one TOML file per channel instance under the channels
//! directory, each with a unique `id`, a `kind` naming a registered
//! factory, and the kind's own settings. Loading is all-or-nothing: one bad
//! file rejects the whole set, so a reload never half-applies.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use omni_connector::{
    AttachmentStore, ChannelContext, ChannelState, Connector, ConnectorFactory, EventSender,
    StateStore, WebhookHandler, factory,
};
use omni_proto::v1::ChannelKind;
use sha2::{Digest, Sha256};

use crate::events::WebhookLimitMetrics;

/// The explicit registry of connector factories, one per channel kind.
/// Adding a channel crate means adding one line here.
pub fn registry() -> Vec<Box<dyn ConnectorFactory>> {
    vec![
        factory::<omni_api::ApiChannelConfig>(),
        factory::<omni_email::EmailChannelConfig>(),
        factory::<omni_telegram::TelegramChannelConfig>(),
        factory::<omni_sms::twilio::TwilioConfig>(),
        factory::<omni_sms::vonage::VonageConfig>(),
        factory::<omni_sms::gateway::GatewayConfig>(),
        factory::<omni_wechat::WechatOaConfig>(),
        factory::<omni_wechat::WecomKfConfig>(),
        factory::<omni_meta::WhatsappConfig>(),
        factory::<omni_meta::MessengerConfig>(),
        factory::<omni_meta::InstagramConfig>(),
        factory::<omni_chat::WebchatConfig>(),
    ]
}

/// One problem in one channel file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelFileError {
    pub file: PathBuf,
    /// The offending key (`.` for the file as a whole).
    pub key: String,
    pub reason: String,
}

impl std::fmt::Display for ChannelFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: key `{}`: {}",
            self.file.display(),
            self.key,
            self.reason
        )
    }
}

/// A built channel.
#[derive(Debug, Clone)]
pub struct Channel {
    pub id: String,
    pub kind: String,
    /// What the channel's events carry as `channel_kind` on the stream.
    pub channel_kind: ChannelKind,
    pub file: PathBuf,
    /// SHA-256 of the file's text: an unchanged file keeps its running
    /// connector across reloads.
    pub fingerprint: String,
    pub connector: Arc<dyn Connector>,
    pub webhook: Option<Webhook>,
    /// The channel's own endpoints, built once with the channel (a cheap
    /// clone per request), served under `/channels/{id}/`.
    pub routes: Option<axum::Router>,
}

/// A channel's webhook endpoint, with the handles of the daemon's own
/// refusals of its requests, registered when the channel is built.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub handler: Arc<dyn WebhookHandler>,
    pub(crate) limits: WebhookLimitMetrics,
}

/// Every configured channel, by id.
pub type ChannelSet = BTreeMap<String, Channel>;

/// The channels in force, replaced whole by a reload: readers take the
/// set of the moment and keep it for their request or attempt.
#[derive(Debug, Clone, Default)]
pub struct LiveChannels(Arc<RwLock<Arc<ChannelSet>>>);

impl LiveChannels {
    pub fn new(channels: ChannelSet) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(channels))))
    }

    pub fn get(&self) -> Arc<ChannelSet> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn replace(&self, channels: ChannelSet) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(channels);
    }
}

/// A fingerprint of the directory listing (names, sizes, modification
/// times), to notice edits cheaply between reloads.
pub fn directory_stamp(dir: &Path) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
    let mut stamp: Vec<_> = toml_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|path| {
            let meta = std::fs::metadata(&path).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (path, len, modified)
        })
        .collect();
    stamp.sort();
    stamp
}

/// The `*.toml` files of a directory, sorted: channel files and rule files.
pub(crate) fn toml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// What every channel is built with.
#[derive(Debug, Clone)]
pub struct Wiring {
    pub sender: EventSender,
    pub public_base_url: Option<String>,
    /// Durable channel state; `None` keeps it in memory (`check-config`).
    pub state: Option<Arc<dyn StateStore>>,
    /// The attachment store; `None` keeps attachments in memory.
    pub attachments: Option<Arc<dyn AttachmentStore>>,
    /// The durable media queue; `None` only records jobs (`check-config`).
    pub media: Option<Arc<dyn omni_connector::MediaQueue>>,
}

impl Wiring {
    fn context(&self, channel_id: &str) -> ChannelContext {
        let mut context = ChannelContext::new(channel_id, self.sender.clone());
        context.public_base_url = self.public_base_url.clone();
        if let Some(store) = &self.state {
            context.state = ChannelState::new(store.clone(), channel_id);
        }
        if let Some(attachments) = &self.attachments {
            context.attachments = attachments.clone();
        }
        if let Some(media) = &self.media {
            context.media = media.clone();
        }
        context
    }
}

/// Loads and builds every channel in `dir`. `previous` channels whose file
/// is unchanged are reused as they are. Returns every error found, not just
/// the first, so `omnid check-config` shows them all at once.
pub fn load(
    dir: &Path,
    factories: &[Box<dyn ConnectorFactory>],
    wiring: &Wiring,
    previous: Option<&ChannelSet>,
) -> Result<ChannelSet, Vec<ChannelFileError>> {
    let dir_error = |reason: String| {
        vec![ChannelFileError {
            file: dir.to_path_buf(),
            key: ".".into(),
            reason,
        }]
    };
    let files =
        toml_files(dir).map_err(|e| dir_error(format!("cannot read channel directory: {e}")))?;
    let by_kind: HashMap<&str, &dyn ConnectorFactory> =
        factories.iter().map(|f| (f.kind(), f.as_ref())).collect();

    let mut channels = ChannelSet::new();
    let mut errors = Vec::new();
    let mut first_file_of: HashMap<String, PathBuf> = HashMap::new();
    for file in files {
        let error = |key: &str, reason: String| ChannelFileError {
            file: file.clone(),
            key: key.into(),
            reason,
        };
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                errors.push(error(".", format!("cannot read file: {e}")));
                continue;
            }
        };
        let mut table: toml::Table = match toml::from_str(&text) {
            Ok(table) => table,
            Err(e) => {
                errors.push(error(
                    ".",
                    format!("invalid TOML: {}", e.to_string().trim_end()),
                ));
                continue;
            }
        };
        let id = match take_string(&mut table, "id") {
            Ok(id) => id,
            Err(reason) => {
                errors.push(error("id", reason));
                continue;
            }
        };
        if let Err(reason) = omni_model::check_channel_id(&id) {
            errors.push(error("id", reason));
            continue;
        }
        if let Some(other) = first_file_of.get(&id) {
            errors.push(error(
                "id",
                format!(
                    "duplicate channel id `{id}`, also used by {}",
                    other.display()
                ),
            ));
            continue;
        }
        first_file_of.insert(id.clone(), file.clone());
        let kind = match take_string(&mut table, "kind") {
            Ok(kind) => kind,
            Err(reason) => {
                errors.push(error("kind", reason));
                continue;
            }
        };
        let Some(factory) = by_kind.get(kind.as_str()) else {
            let mut known: Vec<_> = by_kind.keys().copied().collect();
            known.sort_unstable();
            errors.push(error(
                "kind",
                format!(
                    "unknown channel kind `{kind}`, expected one of {}",
                    known.join(", ")
                ),
            ));
            continue;
        };
        let fingerprint = hex::encode(Sha256::digest(text.as_bytes()));
        if let Some(old) = previous
            .and_then(|p| p.get(&id))
            .filter(|old| old.fingerprint == fingerprint && old.file == file)
        {
            channels.insert(id, old.clone());
            continue;
        }
        match factory.build(wiring.context(&id), table) {
            Ok(connector) => {
                let webhook = connector.webhook().map(|handler| Webhook {
                    handler,
                    limits: WebhookLimitMetrics::register(&id),
                });
                channels.insert(
                    id.clone(),
                    Channel {
                        id,
                        kind,
                        channel_kind: factory.channel_kind(),
                        file: file.clone(),
                        fingerprint,
                        routes: connector.routes(),
                        connector,
                        webhook,
                    },
                );
            }
            Err(e) => errors.push(error(&e.key, e.reason)),
        }
    }
    if errors.is_empty() {
        Ok(channels)
    } else {
        Err(errors)
    }
}

fn take_string(table: &mut toml::Table, key: &str) -> Result<String, String> {
    match table.remove(key) {
        Some(toml::Value::String(value)) => Ok(value),
        Some(other) => Err(format!("expected a string, found {}", other.type_str())),
        None => Err("missing required key".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use omni_connector::{Ack, EventSink, LogEntry};

    struct NoSink;
    impl EventSink for NoSink {
        fn submit(&self, _: LogEntry) -> Ack {
            Box::pin(async { Err(omni_connector::SendError::Closed) })
        }
    }

    fn load_dir(
        files: &[(&str, &str)],
    ) -> (tempfile::TempDir, Result<ChannelSet, Vec<ChannelFileError>>) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let text = text.replace("$DIR", &dir.path().display().to_string());
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        std::fs::write(dir.path().join("secret"), "k").unwrap();
        let wiring = Wiring {
            sender: EventSender::new(Arc::new(NoSink)),
            public_base_url: None,
            state: None,
            attachments: None,
            media: None,
        };
        let result = load(dir.path(), &registry(), &wiring, None);
        (dir, result)
    }

    const SECRET: &str = "secret = { file = \"$DIR/secret\" }";

    #[test]
    fn errors_name_file_key_and_reason() {
        let cases = [
            (
                "a.toml",
                format!(
                    "id = \"a\"\nkind = \"api\"\n{}\nreplay_window_secs = \"soon\"",
                    SECRET
                ),
                "replay_window_secs",
                "invalid type",
            ),
            (
                "b.toml",
                format!("id = \"b\"\nkind = \"api\"\n{}\nsecrt = 1", SECRET),
                "secrt",
                "unknown field",
            ),
            (
                "c.toml",
                "id = \"c\"\nkind = \"fax\"".to_owned(),
                "kind",
                "unknown channel kind `fax`",
            ),
            (
                "d.toml",
                "kind = \"api\"".to_owned(),
                "id",
                "missing required key",
            ),
            (
                "e.toml",
                "id = \"E!\"\nkind = \"api\"".to_owned(),
                "id",
                "invalid channel id",
            ),
            (
                "f.toml",
                "id = \"f\"\nkind = \"api\"\nsecret = { env = \"OMNI_SURELY_UNSET_VAR\" }"
                    .to_owned(),
                "secret",
                "OMNI_SURELY_UNSET_VAR is not set",
            ),
            (
                "g.toml",
                "id = \"g\"\nkind = \"api\"\nsecret = [".to_owned(),
                ".",
                "invalid TOML",
            ),
        ];
        for (name, text, key, reason) in &cases {
            let (_guard, result) = load_dir(&[(name, text)]);
            let errors = result.unwrap_err();
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(errors[0].file.ends_with(name), "{}", errors[0]);
            assert_eq!(errors[0].key, *key, "{}", errors[0]);
            assert!(errors[0].reason.contains(reason), "{}", errors[0]);
        }
    }

    #[test]
    fn valid_channels_load_and_duplicate_ids_are_rejected() {
        let text = format!("id = \"shop\"\nkind = \"api\"\n{}", SECRET);
        let (_g, result) = load_dir(&[("shop.toml", &text)]);
        let channels = result.unwrap();
        assert!(channels["shop"].webhook.is_some());
        let (_g, result) = load_dir(&[("1.toml", &text), ("2.toml", &text)]);
        let errors = result.unwrap_err();
        assert!(
            errors[0].reason.contains("duplicate channel id `shop`"),
            "{errors:?}"
        );
    }

    /// A kind of the test's own, as an embedding registers it.
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Probe {
        #[serde(default)]
        _note: String,
    }

    #[derive(Debug)]
    struct ProbeConnector;

    impl Connector for ProbeConnector {}

    impl omni_connector::ChannelConfig for Probe {
        const KIND: &'static str = "probe";
        const CHANNEL_KIND: ChannelKind = ChannelKind::Api;

        fn build(
            self,
            _: ChannelContext,
        ) -> Result<Arc<dyn Connector>, omni_connector::ConfigError> {
            Ok(Arc::new(ProbeConnector))
        }
    }

    #[test]
    fn a_reload_keeps_unchanged_channels_and_rebuilds_edited_ones() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("a.toml", "id = \"a\"\nkind = \"probe\"\n");
        write("b.toml", "id = \"b\"\nkind = \"probe\"\n");
        let wiring = Wiring {
            sender: EventSender::new(Arc::new(NoSink)),
            public_base_url: None,
            state: None,
            attachments: None,
            media: None,
        };
        let factories = vec![factory::<Probe>()];
        let first = load(dir.path(), &factories, &wiring, None).unwrap();
        assert_eq!(first["a"].kind, "probe");
        assert_eq!(first["a"].channel_kind, ChannelKind::Api);

        write(
            "b.toml",
            "id = \"b\"\nkind = \"probe\"\n_note = \"edited\"\n",
        );
        let second = load(dir.path(), &factories, &wiring, Some(&first)).unwrap();
        assert!(Arc::ptr_eq(&first["a"].connector, &second["a"].connector));
        assert!(!Arc::ptr_eq(&first["b"].connector, &second["b"].connector));
        // A forced reload (no previous set) rebuilds everything.
        let forced = load(dir.path(), &factories, &wiring, None).unwrap();
        assert!(!Arc::ptr_eq(&second["a"].connector, &forced["a"].connector));

        // Built-in kinds are unknown to a registry without them.
        write("c.toml", "id = \"c\"\nkind = \"api\"\n");
        let errors = load(dir.path(), &factories, &wiring, None).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].key, "kind");
        assert!(
            errors[0].reason.contains("expected one of probe"),
            "{}",
            errors[0]
        );
    }
}
