//! Omnid, the omnichannel message-ingestion daemon, as a library: the
//! `omnid` binary is a thin CLI over it, and a test suite or an embedding
//! runs the same daemon with its own channel kinds ([`Daemon::start`] with
//! a registry of [`omni_connector::ConnectorFactory`]s,
//! built with the connector SDK alone).

mod attachment_gc;
mod auth;
pub mod channels;
mod commands;
mod consume;
mod daemon;
mod event_log;
mod events;
mod health;
mod listener;
mod media;
mod outbound;
mod retention;
pub mod rules;
mod seen_prune;
mod server;
pub mod settings;
mod sink;
mod supervisor;
mod tail;
mod task;
mod threading;
mod traces;

use std::{path::Path, process::ExitCode, sync::Arc};

use omni_connector::{Ack, ConnectorFactory, EventSender, EventSink, LogEntry, SendError};

pub use daemon::{Daemon, run};
pub use health::{HealthArgs, HealthError};
pub use settings::Settings;
pub use tail::TailArgs;
pub use threading::TimelineArgs;

use crate::{channels::ChannelFileError, settings::SettingsError};

/// Why the daemon or one of its commands could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The daemon's config file (or an `OMNID__*` override).
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// Channel files: every problem found, each naming its file and key.
    #[error("invalid channel configuration:\n  {}", lines(.0))]
    Channels(Vec<ChannelFileError>),
    /// Rule files: every problem found, each naming its file and key.
    #[error("invalid rule files:\n  {}", lines(.0))]
    Rules(Vec<omni_rules::RuleFileError>),
    /// `omnid health`: the daemon is not healthy (or ready), or could not
    /// be asked.
    #[error(transparent)]
    Health(#[from] HealthError),
    /// Something the daemon opens or runs failed (the event log, a store,
    /// the listener, a command's output), with its causes.
    #[error("{0}")]
    Failed(String),
}

impl Error {
    /// An internal error with its chain of causes, as one line.
    fn failed(error: anyhow::Error) -> Self {
        Self::Failed(format!("{error:#}"))
    }
}

fn lines<E: std::fmt::Display>(errors: &[E]) -> String {
    let lines: Vec<_> = errors.iter().map(ToString::to_string).collect();
    lines.join("\n  ")
}

/// An event sink that stores nothing, for validating channel files without
/// opening the log.
struct DiscardSink;

impl EventSink for DiscardSink {
    fn submit(&self, _entry: LogEntry) -> Ack {
        Box::pin(async { Err(SendError::Closed) })
    }
}

/// What `omnid check-config` found valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Each channel's id and kind.
    pub channels: Vec<(String, String)>,
    /// Each rule set's name and number of rules.
    pub rule_sets: Vec<(String, usize)>,
}

/// `omnid check-config`: validates the daemon's config, every channel file
/// with the kinds of `registry`, and every rule file (including that the
/// channels rules name exist), opening nothing. Channel files are checked
/// first: rules are only checked against a valid set of channels.
pub fn check_config(
    config: &Path,
    registry: &[Box<dyn ConnectorFactory>],
) -> Result<Checked, Error> {
    let settings = Settings::load(config)?;
    let wiring = channels::Wiring {
        sender: EventSender::new(Arc::new(DiscardSink)),
        public_base_url: settings.http.public_base_url.clone(),
        state: None,
        attachments: None,
        media: None,
    };
    let channels =
        channels::load(&settings.channels.dir, registry, &wiring, None).map_err(Error::Channels)?;
    let book = rules::load(&settings.rules.dir).map_err(Error::Rules)?;
    let unknown = book.unknown_channels(|id| channels.contains_key(id));
    if !unknown.is_empty() {
        return Err(Error::Rules(unknown));
    }
    Ok(Checked {
        channels: channels
            .into_values()
            .map(|channel| (channel.id, channel.kind))
            .collect(),
        rule_sets: book
            .rule_sets()
            .iter()
            .map(|set| (set.name().to_owned(), set.rule_names().count()))
            .collect(),
    })
}

/// `omnid tail`: prints a topic's records as JSON lines.
pub async fn tail(config: &Path, args: TailArgs) -> Result<ExitCode, Error> {
    tail::tail(config, args).await.map_err(Error::failed)
}

/// `omnid health`: asks a running daemon's `/healthz` (`/readyz` with
/// `--ready`); a line to print when it answers 200, else why not.
pub async fn health(config: &Path, args: HealthArgs) -> Result<String, Error> {
    health::check(config, args).await
}

/// `omnid timeline`: prints a customer's timeline as JSON lines.
pub async fn timeline(config: &Path, args: TimelineArgs) -> Result<ExitCode, Error> {
    threading::timeline(config, args)
        .await
        .map_err(Error::failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(channel: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let channels = dir.path().join("channels");
        std::fs::create_dir_all(&channels).unwrap();
        std::fs::write(dir.path().join("secret"), "k").unwrap();
        std::fs::write(
            channels.join("shop.toml"),
            channel.replace("$DIR", &dir.path().display().to_string()),
        )
        .unwrap();
        let config = dir.path().join("omnid.toml");
        std::fs::write(
            &config,
            format!(
                "[channels]\ndir = \"{}\"\n[rules]\ndir = \"{}\"\n",
                channels.display(),
                dir.path().join("rules").display()
            ),
        )
        .unwrap();
        (dir, config)
    }

    #[test]
    fn check_config_lists_the_channels_or_every_problem() {
        let (_dir, config) =
            deployment("id = \"shop\"\nkind = \"api\"\nsecret = { file = \"$DIR/secret\" }\n");
        let checked = check_config(&config, &channels::registry()).unwrap();
        assert_eq!(checked.channels, [("shop".to_owned(), "api".to_owned())]);
        assert!(checked.rule_sets.is_empty());

        let (_dir, config) = deployment("id = \"shop\"\nkind = \"api\"\nsecrt = 1\n");
        let Err(Error::Channels(errors)) = check_config(&config, &channels::registry()) else {
            panic!("a bad channel file is refused");
        };
        assert!(errors[0].file.ends_with("shop.toml"), "{}", errors[0]);
        assert_eq!(errors[0].key, "secrt");

        let (_dir, config) = deployment("");
        std::fs::write(&config, "[log]\nbackend = \"kafak\"\n").unwrap();
        let error = check_config(&config, &channels::registry()).unwrap_err();
        assert!(matches!(error, Error::Settings(_)), "{error}");
    }

    #[test]
    fn check_config_lists_the_rule_sets_or_names_file_key_and_reason() {
        let (dir, config) =
            deployment("id = \"shop\"\nkind = \"api\"\nsecret = { file = \"$DIR/secret\" }\n");
        let rules = dir.path().join("rules");
        std::fs::create_dir_all(&rules).unwrap();
        let set = |channel: &str| {
            format!(
                "name = \"support\"\ntime_zone = \"Asia/Tehran\"\ndefault_language = \"fa\"\nchannels = [\"{channel}\"]\n\
                 [[rules]]\nname = \"refunds\"\nmatch.keywords = [\"refund\"]\nactions.tags = [\"refund\"]\n"
            )
        };
        std::fs::write(rules.join("support.toml"), set("shop")).unwrap();
        let checked = check_config(&config, &channels::registry()).unwrap();
        assert_eq!(checked.rule_sets, [("support".to_owned(), 1)]);

        std::fs::write(rules.join("support.toml"), set("shoop")).unwrap();
        let Err(Error::Rules(errors)) = check_config(&config, &channels::registry()) else {
            panic!("rules naming an unknown channel are refused");
        };
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].file.ends_with("support.toml"), "{}", errors[0]);
        assert_eq!(errors[0].key, "channels[0]");
        assert!(errors[0].reason.contains("shoop"), "{}", errors[0]);

        std::fs::write(
            rules.join("support.toml"),
            set("shop").replace(
                "time_zone = \"Asia/Tehran\"",
                "time_zone = \"Asia/Teheran\"",
            ),
        )
        .unwrap();
        let Err(Error::Rules(errors)) = check_config(&config, &channels::registry()) else {
            panic!("a bad time zone is refused");
        };
        assert_eq!(errors[0].key, "time_zone", "{}", errors[0]);
    }
}
