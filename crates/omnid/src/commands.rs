//! Helpdesk commands to the threading service (close, reopen, link,
//! unlink, merge, split), from the commands topic and from the HTTP API.
//!
//! Both paths end in [`ThreadingStore::apply_command`]: one transaction
//! that changes the state and writes the command's timeline entries to
//! the outbox, which the relay publishes like any other. A command id is
//! applied once, so a producer retries freely.
//!
//! The consumer (group [`GROUP`]) applies each polled record in order,
//! retrying store failures without moving on, dead-letters records that do
//! not decode or that the threading service refuses (`command_refused`,
//! with the reason), and only then commits the batch's position: a crash
//! re-applies the batch and the store drops what it already applied.

use std::sync::Arc;

use omni_connector::EventSender;
use omni_log::{EventLog, StoredRecord};
use omni_model::cloudevents;
use omni_proto::v1::{ChannelKind, ThreadingCommand, threading_command::Command};
use omni_telemetry::emit;
use omni_threading::{CommandOutcome, StoreError, ThreadingStore};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::consume::{self, Backoff, Stopped, dead_letter_of, decode_as, header, pause};
use crate::events::{CommandHandled, CommandMetrics, CommandOutcome as Handled};

/// The consumer group on the commands topic.
pub(crate) const GROUP: &str = "omnid-commands";

/// Commands applied per poll (and per commit).
const POLL_BATCH: usize = 64;

/// The channel id dead letters of the commands topic carry.
const DEAD_LETTER_CHANNEL: &str = "commands";

/// The action's name, for logs, metrics and the HTTP answer.
pub(crate) fn action_name(command: &ThreadingCommand) -> &'static str {
    match &command.command {
        Some(Command::Close(_)) => "close",
        Some(Command::Reopen(_)) => "reopen",
        Some(Command::Link(_)) => "link",
        Some(Command::Unlink(_)) => "unlink",
        Some(Command::Merge(_)) => "merge",
        Some(Command::Split(_)) => "split",
        Some(Command::SetSegment(_)) => "segment",
        None => "",
    }
}

/// Applies `command` once (no retry), recording the outcome: what both
/// the consumer and the HTTP API do.
pub(crate) async fn apply(
    store: &dyn ThreadingStore,
    command: &ThreadingCommand,
    metrics: &CommandMetrics,
) -> Result<CommandOutcome, StoreError> {
    let result = store.apply_command(command).await;
    let (outcome, detail) = match &result {
        Ok(CommandOutcome::Duplicate) => (Handled::Duplicate, String::new()),
        Ok(CommandOutcome::Applied(entries)) if entries.is_empty() => {
            (Handled::Unchanged, String::new())
        }
        Ok(CommandOutcome::Applied(_)) => (Handled::Applied, String::new()),
        Err(StoreError::Command { source, .. }) => (Handled::Refused, source.to_string()),
        // The caller retries (consumer) or answers 503 (HTTP).
        Err(_) => return result,
    };
    emit!(CommandHandled {
        outcome,
        command_id: &command.command_id,
        action: action_name(command),
        actor: &command.actor,
        detail: &detail,
        retry_in: None,
    } => metrics);
    result
}

/// The commands-topic consumer.
pub(crate) struct Consumer {
    pub log: Arc<dyn EventLog>,
    pub topic: String,
    pub store: Arc<dyn ThreadingStore>,
    pub sender: EventSender,
    pub metrics: CommandMetrics,
    /// Woken after each applied batch: the relay publishes at once.
    pub wake: Arc<Notify>,
    pub shutdown: CancellationToken,
}

impl consume::BatchHandler for Consumer {
    async fn handle_batch(&self, records: &[StoredRecord]) -> Result<(), Stopped> {
        for stored in records {
            self.handle(stored).await?;
        }
        self.wake.notify_one();
        Ok(())
    }
}

impl Consumer {
    pub(crate) async fn run(self) {
        consume::consume_batches(
            self.log.as_ref(),
            GROUP,
            &self.topic,
            POLL_BATCH,
            &self.shutdown,
            &self,
        )
        .await;
    }

    /// One record: applied, or dead-lettered; store failures are retried
    /// until it passes or the consumer is stopped.
    async fn handle(&self, stored: &StoredRecord) -> Result<(), Stopped> {
        let command: ThreadingCommand = match decode_as(stored, cloudevents::TYPE_THREADING_COMMAND)
        {
            Ok(command) => command,
            Err((reason, detail)) => {
                let id = header(stored, cloudevents::HEADER_ID).unwrap_or_default();
                self.dead_letter(stored, &id, reason, &detail).await?;
                emit!(CommandHandled {
                    outcome: Handled::Refused,
                    command_id: &id,
                    action: "",
                    actor: "",
                    detail: &format!("{reason}: {detail}"),
                    retry_in: None,
                } => &self.metrics);
                return Ok(());
            }
        };
        let mut backoff = Backoff::default();
        loop {
            match apply(self.store.as_ref(), &command, &self.metrics).await {
                Ok(_) => return Ok(()),
                // `apply` counted the refusal.
                Err(StoreError::Command { source, .. }) => {
                    let detail = source.to_string();
                    return self
                        .dead_letter(stored, &command.command_id, "command_refused", &detail)
                        .await;
                }
                Err(error) => {
                    let wait = backoff.next();
                    emit!(CommandHandled {
                        outcome: Handled::Retried,
                        command_id: &command.command_id,
                        action: action_name(&command),
                        actor: &command.actor,
                        detail: &format!("{:#}", anyhow::Error::new(error)),
                        retry_in: Some(wait),
                    } => &self.metrics);
                    pause(&self.shutdown, wait).await?;
                }
            }
        }
    }

    async fn dead_letter(
        &self,
        stored: &StoredRecord,
        command_id: &str,
        reason: &'static str,
        detail: &str,
    ) -> Result<(), Stopped> {
        let dead_letter = dead_letter_of(
            stored,
            DEAD_LETTER_CHANNEL,
            ChannelKind::Unspecified,
            command_id,
            reason,
            detail,
        );
        consume::store_dead_letter(&self.sender, dead_letter, &self.shutdown).await
    }
}
