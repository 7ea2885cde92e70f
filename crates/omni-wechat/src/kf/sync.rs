//! Pulling WeChat Customer Service messages with `kf/sync_msg`.
//!
//! The cursor is the acknowledgement: a page's messages are appended and
//! durable (and their files queued) before its `next_cursor` is stored in
//! the channel's state, so a crash at any point replays at most the page in
//! flight, whose events keep their ids (from `msgid`) and are dropped
//! downstream. Every known account is also synced every
//! `poll_interval_secs` without a callback: WeCom keeps messages for three
//! days only, and a lost callback must not lose them. A sync that stops
//! early (the API or the log failed) is retried with backoff. The gauge
//! `omnid_wecom_kf_unread_age_seconds` says how long ago each account was
//! last read to its end, so an operator is warned long before that.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use omni_connector::{
    ChannelState, EventSender, MediaJob, MediaQueue, SendError, StateUpdate, dead_letter,
};
use omni_proto::v1::ChannelKind;
use omni_telemetry::emit;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    api::{ApiClient, ApiError, SyncRequest},
    events::{SyncCaughtUp, SyncFailed, SyncPageStored, WechatMetrics},
    kf::normalize::{self, KfContext},
};

/// Most accounts one channel remembers from callbacks: bounds the memory
/// and the polling a forged-but-signed flood could cause.
pub(crate) const MAX_ACCOUNTS: usize = 256;

/// The state key listing the accounts learned from callbacks.
const ACCOUNTS_KEY: &str = "accounts";

/// Callbacks waiting for the syncer: which accounts have news, with the
/// token each callback brought.
#[derive(Debug, Default)]
pub(crate) struct Wake {
    pending: Mutex<BTreeMap<String, Option<String>>>,
    notify: Notify,
}

impl Wake {
    /// Records that `open_kfid` has news and wakes the syncer. A newer
    /// token replaces an older one; a callback without one keeps it.
    pub(crate) fn notify(&self, open_kfid: &str, token: Option<&str>) {
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.len() >= MAX_ACCOUNTS && !pending.contains_key(open_kfid) {
                return;
            }
            let slot = pending.entry(open_kfid.to_owned()).or_default();
            if let Some(token) = token {
                *slot = Some(token.to_owned());
            }
        }
        self.notify.notify_one();
    }

    fn take(&self) -> BTreeMap<String, Option<String>> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Accounts whose last sync stopped early, and when to try them again.
#[derive(Debug)]
struct Retry {
    due: BTreeMap<String, Option<String>>,
    at: tokio::time::Instant,
    delay: Duration,
    max: Duration,
}

impl Retry {
    const FIRST: Duration = Duration::from_secs(1);

    fn new(max: Duration) -> Self {
        Self {
            due: BTreeMap::new(),
            at: tokio::time::Instant::now(),
            delay: Self::FIRST.min(max),
            max,
        }
    }

    fn schedule(&mut self, open_kfid: String, token: Option<String>) {
        if self.due.is_empty() {
            self.at = tokio::time::Instant::now() + self.delay;
        }
        let slot = self.due.entry(open_kfid).or_default();
        if token.is_some() {
            *slot = token;
        }
    }

    /// After a round of retries: back off further while some still fail,
    /// start from 1 s again once all passed.
    fn rearm(&mut self) {
        if self.due.is_empty() {
            self.delay = Self::FIRST.min(self.max);
        } else {
            self.delay = (self.delay * 2).min(self.max);
            self.at = tokio::time::Instant::now() + self.delay;
        }
    }
}

/// Why a sync stopped before the end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SyncError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("the event log did not take the page: {0}")]
    Log(#[from] SendError),
    #[error("{0}")]
    State(String),
}

/// The puller of one customer-service app.
#[derive(Debug)]
pub(crate) struct Syncer {
    pub(crate) channel_id: String,
    pub(crate) corp_id: String,
    pub(crate) api: ApiClient,
    pub(crate) sender: EventSender,
    pub(crate) state: ChannelState,
    pub(crate) media: Arc<dyn MediaQueue>,
    pub(crate) limit: u32,
    pub(crate) poll_interval: Duration,
    pub(crate) configured: Vec<String>,
    pub(crate) wake: Arc<Wake>,
    pub(crate) metrics: WechatMetrics,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Syncer {
    /// Syncs on callbacks and every `poll_interval` until shutdown.
    pub(crate) async fn run(&self, shutdown: CancellationToken) {
        let started = unix_now();
        let mut accounts: Vec<String> = self.configured.clone();
        for learned in self.learned_accounts().await {
            if !accounts.contains(&learned) {
                accounts.push(learned);
            }
        }
        let mut poll = tokio::time::interval(self.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut gauges = tokio::time::interval(Duration::from_secs(5));
        let mut retry = Retry::new(self.poll_interval);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notify.notified() => {
                    for (open_kfid, token) in self.wake.take() {
                        if !accounts.contains(&open_kfid) && accounts.len() < MAX_ACCOUNTS {
                            accounts.push(open_kfid.clone());
                            self.remember(&accounts).await;
                        }
                        self.sync_logged(open_kfid, token, &mut retry, &shutdown).await;
                    }
                }
                _ = poll.tick() => {
                    for open_kfid in &accounts {
                        self.sync_logged(open_kfid.clone(), None, &mut retry, &shutdown).await;
                    }
                }
                _ = tokio::time::sleep_until(retry.at), if !retry.due.is_empty() => {
                    for (open_kfid, token) in std::mem::take(&mut retry.due) {
                        self.sync_logged(open_kfid, token, &mut retry, &shutdown).await;
                    }
                    retry.rearm();
                }
                _ = gauges.tick() => {
                    for open_kfid in &accounts {
                        self.update_gauge(open_kfid, started).await;
                    }
                }
            }
        }
    }

    /// Syncs one account; one that stops early is retried with backoff
    /// (from 1 s, doubling up to the poll interval) rather than waiting
    /// for the next poll, with the callback's token while it lasts.
    async fn sync_logged(
        &self,
        open_kfid: String,
        token: Option<String>,
        retry: &mut Retry,
        shutdown: &CancellationToken,
    ) {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = self.sync(&open_kfid, token.clone()) => result,
        };
        match result {
            Ok(pages) => {
                emit!(SyncCaughtUp { open_kfid: &open_kfid, pages } => &self.metrics);
                retry.due.remove(&open_kfid);
            }
            Err(error) => {
                emit!(SyncFailed {
                    open_kfid: &open_kfid,
                    error: &error,
                    retry_in: retry.delay,
                } => &self.metrics);
                retry.schedule(open_kfid, token);
            }
        }
    }

    /// Reads one account to its end, storing the cursor after each
    /// durable page. Returns the number of pages read.
    pub(crate) async fn sync(
        &self,
        open_kfid: &str,
        token: Option<String>,
    ) -> Result<u64, SyncError> {
        let cursor_key = format!("cursor/{open_kfid}");
        let mut cursor = self
            .state
            .get(&cursor_key)
            .await
            .map_err(|e| SyncError::State(e.to_string()))?
            .and_then(|c| String::from_utf8(c).ok());
        let mut pages = 0;
        loop {
            let page = self
                .api
                .sync_msg(&SyncRequest {
                    cursor: cursor.clone(),
                    token: token.clone(),
                    limit: self.limit,
                    open_kfid: open_kfid.to_owned(),
                })
                .await?;
            pages += 1;
            self.store_page(open_kfid, &page.msg_list, page.has_more)
                .await?;
            let mut puts = vec![(cursor_key.clone(), page.next_cursor.clone().into_bytes())];
            if !page.has_more {
                puts.push((
                    format!("caught_up/{open_kfid}"),
                    unix_now().to_string().into_bytes(),
                ));
            }
            self.state
                .commit(StateUpdate {
                    puts,
                    seen: Vec::new(),
                    deletes: Vec::new(),
                })
                .await
                .map_err(|e| SyncError::State(e.to_string()))?;
            if !page.has_more {
                return Ok(pages);
            }
            if page.next_cursor.is_empty() || cursor.as_deref() == Some(page.next_cursor.as_str()) {
                // A page that says "more" without moving would loop for
                // ever; the next poll tries again.
                return Err(SyncError::Api(ApiError::Unreadable {
                    api: "kf/sync_msg",
                    message: "has_more without a new cursor".to_owned(),
                }));
            }
            cursor = Some(page.next_cursor);
        }
    }

    /// Appends a page's messages (and dead letters), waits until all are
    /// durable, then queues their files.
    async fn store_page(
        &self,
        open_kfid: &str,
        items: &[serde_json::Value],
        has_more: bool,
    ) -> Result<(), SyncError> {
        let received_at = omni_proto::timestamp(SystemTime::now());
        let cx = KfContext {
            channel_id: &self.channel_id,
            corp_id: &self.corp_id,
            received_at,
        };
        let mut acks = Vec::with_capacity(items.len());
        let mut jobs = Vec::new();
        let (mut events, mut dead_letters, mut skipped) = (0, 0, 0);
        for item in items {
            match normalize::normalize(item, &cx) {
                Ok(inbound) => {
                    jobs.extend(inbound.media.into_iter().map(|media| MediaJob {
                        channel_id: self.channel_id.clone(),
                        ..MediaJob::new(&inbound.event, media)
                    }));
                    acks.push(self.sender.send_event(inbound.event));
                    events += 1;
                }
                Err(error) if error.code == normalize::SERVICER_EVENT => skipped += 1,
                Err(error) => {
                    acks.push(self.sender.send_dead_letter(dead_letter(
                        &self.channel_id,
                        ChannelKind::Wechat,
                        error.code,
                        &error.message,
                        item.to_string().into_bytes(),
                        "application/json",
                        received_at,
                    )));
                    dead_letters += 1;
                }
            }
        }
        for ack in acks {
            ack.await?;
        }
        if !jobs.is_empty() {
            self.media
                .defer(jobs)
                .await
                .map_err(|e| SyncError::State(e.to_string()))?;
        }
        emit!(SyncPageStored {
            open_kfid,
            events,
            dead_letters,
            skipped,
            has_more,
        } => &self.metrics);
        Ok(())
    }

    async fn learned_accounts(&self) -> Vec<String> {
        match self.state.get(ACCOUNTS_KEY).await {
            Ok(Some(list)) => String::from_utf8_lossy(&list)
                .lines()
                .filter(|l| super::valid_open_kfid(l))
                .take(MAX_ACCOUNTS)
                .map(str::to_owned)
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => {
                tracing::warn!(channel = %self.channel_id, error = %e, "accounts learned from callbacks unreadable; polling the configured ones");
                Vec::new()
            }
        }
    }

    async fn remember(&self, accounts: &[String]) {
        let update = StateUpdate {
            puts: vec![(ACCOUNTS_KEY.to_owned(), accounts.join("\n").into_bytes())],
            seen: Vec::new(),
            deletes: Vec::new(),
        };
        if let Err(e) = self.state.commit(update).await {
            tracing::warn!(channel = %self.channel_id, error = %e, "account learned from a callback not remembered");
        }
    }

    /// Seconds since the account was last read to its end (since the
    /// syncer started, if never).
    async fn update_gauge(&self, open_kfid: &str, started: u64) {
        let caught_up = match self.state.get(&format!("caught_up/{open_kfid}")).await {
            Ok(Some(value)) => String::from_utf8_lossy(&value).parse().unwrap_or(started),
            _ => started,
        };
        self.metrics
            .unread_age(open_kfid)
            .set(unix_now().saturating_sub(caught_up) as f64);
    }
}
