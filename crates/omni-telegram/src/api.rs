//! The Bot API client (teloxide-core's `Bot`), and fetching a message's
//! files into the attachment store.

use std::{future::IntoFuture, time::Duration};

use futures::StreamExt;
use omni_connector::{AttachmentStore, ConfigError, SendError};
use omni_proto::v1::Attachment;
use teloxide_core::{Bot, RequestError, net::Download, prelude::Requester, types::FileId};

use crate::{
    config::TelegramChannelConfig,
    metrics::TelegramMetrics,
    normalize::{FILE_ID_URI_PREFIX, FileRef, Normalized},
};

/// Why an update could not be taken in now. Every variant is transient: the
/// update is not acknowledged and comes again.
#[derive(Debug, thiserror::Error)]
pub enum TelegramError {
    #[error("bot api: {0}")]
    Request(#[from] RequestError),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("file download: {0}")]
    Download(String),
    #[error("attachment store: {0}")]
    Attachment(#[from] omni_connector::attachments::AttachmentError),
    #[error("channel state: {0}")]
    State(#[from] omni_connector::state::StateError),
    #[error("event log: {0}")]
    Log(#[from] SendError),
}

/// A configured bot.
#[derive(Debug, Clone)]
pub struct BotApi {
    pub bot: Bot,
    pub request_timeout: Duration,
    pub max_file_bytes: u64,
}

impl BotApi {
    pub fn new(config: &TelegramChannelConfig) -> Result<Self, ConfigError> {
        let token = config
            .bot_token
            .resolve()
            .map_err(|e| ConfigError::new("bot_token", e))?;
        let token = String::from_utf8(token.expose().to_vec())
            .map_err(|_| ConfigError::new("bot_token", "must be text"))?;
        let request_timeout = Duration::from_secs(config.request_timeout_secs);
        // One client for every call: its timeout must outlast a long poll.
        let client = teloxide_core::net::default_reqwest_settings()
            .timeout(request_timeout + Duration::from_secs(u64::from(config.poll_timeout_secs)))
            .build()
            .map_err(|e| ConfigError::new("api_url", format!("cannot build http client: {e}")))?;
        let url = config.api_url.trim_end_matches('/');
        let bot = Bot::with_client(token, client).set_api_url(
            url.parse()
                .map_err(|e| ConfigError::new("api_url", format!("not a URL: {e}")))?,
        );
        Ok(Self {
            bot,
            request_timeout,
            max_file_bytes: config.max_file_bytes,
        })
    }

    /// Awaits a request's `send()`, bounded by the request timeout.
    pub async fn call<T>(
        &self,
        what: &'static str,
        request: impl IntoFuture<Output = Result<T, RequestError>>,
    ) -> Result<T, TelegramError> {
        tokio::time::timeout(self.request_timeout, request.into_future())
            .await
            .map_err(|_| TelegramError::Timeout(what))?
            .map_err(TelegramError::Request)
    }

    /// Fetches every file of `normalized` (in order) and appends its
    /// attachments to the event. Files over the limit, or that the Bot API
    /// refuses to serve, are listed by file_id instead; network trouble is
    /// an error, so the update is taken in again later.
    pub async fn fetch_files(
        &self,
        normalized: &mut Normalized,
        store: &dyn AttachmentStore,
        metrics: &TelegramMetrics,
    ) -> Result<(), TelegramError> {
        let mut attachments = Vec::with_capacity(normalized.files.len());
        for file in &normalized.files {
            attachments.push(self.fetch_file(file, store, metrics).await?);
        }
        if let Some(content) = normalized.event.content.as_mut() {
            content.attachments.extend(attachments);
        }
        Ok(())
    }

    async fn fetch_file(
        &self,
        file: &FileRef,
        store: &dyn AttachmentStore,
        metrics: &TelegramMetrics,
    ) -> Result<Attachment, TelegramError> {
        let listed = |size: u64, reason: &str| {
            metrics.file(false, &file.file_id, reason);
            Attachment {
                name: file.name.clone(),
                media_type: file.media_type.clone(),
                size,
                sha256: String::new(),
                uri: format!("{FILE_ID_URI_PREFIX}{}", file.file_id),
            }
        };
        if file.size > self.max_file_bytes {
            return Ok(listed(file.size, "over the size limit"));
        }
        let info = match self
            .call("getFile", self.bot.get_file(FileId(file.file_id.clone())))
            .await
        {
            Ok(info) => info,
            // The Bot API's own refusal ("file is too big", an expired
            // file_id) will not change on a retry.
            Err(TelegramError::Request(RequestError::Api(e))) => {
                return Ok(listed(file.size, &e.to_string()));
            }
            Err(e) => return Err(e),
        };
        let announced = u64::from(info.meta.size).max(file.size);
        if announced > self.max_file_bytes {
            return Ok(listed(announced, "over the size limit"));
        }
        let download = async {
            let mut stream = self.bot.download_file_stream(&info.path);
            let mut bytes = Vec::new();
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(chunk) => chunk,
                    Err(e) if e.status().is_some_and(|s| s.is_client_error()) => {
                        return Ok(None);
                    }
                    Err(e) => return Err(TelegramError::Download(e.to_string())),
                };
                if (bytes.len() + chunk.len()) as u64 > self.max_file_bytes {
                    return Ok(Some(Err(())));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(Some(Ok(bytes)))
        };
        let downloaded = tokio::time::timeout(self.request_timeout, download)
            .await
            .map_err(|_| TelegramError::Timeout("file download"))??;
        match downloaded {
            None => Ok(listed(announced, "the file server refused the download")),
            Some(Err(())) => Ok(listed(announced, "over the size limit")),
            Some(Ok(bytes)) => {
                let stored = store.put(bytes.into()).await?;
                metrics.file(true, &file.file_id, "");
                Ok(Attachment {
                    name: file.name.clone(),
                    media_type: file.media_type.clone(),
                    size: stored.size,
                    sha256: stored.sha256,
                    uri: stored.uri,
                })
            }
        }
    }
}
