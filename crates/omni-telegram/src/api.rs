//! The Bot API client (teloxide-core's `Bot`), and the downloader of a
//! message's files.

use std::{future::IntoFuture, time::Duration};

use async_trait::async_trait;
use futures::StreamExt;
use omni_connector::{ConfigError, FetchError, Fetched, MediaFetcher, MediaRef, SendError};
use omni_telemetry::emit;
use teloxide_core::{
    ApiError, Bot, RequestError, net::Download, prelude::Requester, types::FileId,
};

use crate::{
    config::TelegramChannelConfig,
    events::{FileDownloaded, FileListed, TelegramMetrics},
};

/// Why an update could not be taken in now. Every variant is transient: the
/// update is not acknowledged and comes again.
#[derive(Debug, thiserror::Error)]
pub enum TelegramError {
    #[error("bot api: {0}")]
    Request(#[from] RequestError),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("media queue: {0}")]
    Media(#[from] omni_connector::MediaQueueError),
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
}

/// Whether an API error may pass on a retry.
pub(crate) fn is_temporary(error: &ApiError) -> bool {
    match error {
        // The operator's fix, not the customer's fault.
        ApiError::InvalidToken => true,
        ApiError::Unknown(text) => {
            let text = text.to_ascii_lowercase();
            [
                "internal server error",
                "bad gateway",
                "gateway timeout",
                "service unavailable",
                "too many requests",
            ]
            .iter()
            .any(|t| text.contains(t))
        }
        _ => false,
    }
}

/// Downloads a message's files once the message is durable: `getFile`,
/// then the download, within `max_file_bytes` and the request timeout.
/// The job's source is the file's `file_id`.
#[derive(Debug, Clone)]
pub struct TelegramFetcher {
    pub(crate) api: BotApi,
    pub(crate) metrics: TelegramMetrics,
}

impl TelegramFetcher {
    /// A file that will never be downloaded: its attachment keeps the
    /// `file_id`.
    fn refused(&self, file_id: &str, reason: String) -> FetchError {
        emit!(FileListed { file_id, reason: &reason } => &self.metrics);
        FetchError::Permanent(reason)
    }

    fn too_big(&self, file_id: &str, size: u64) -> FetchError {
        self.refused(
            file_id,
            format!(
                "{size} bytes is over max_file_bytes ({})",
                self.api.max_file_bytes
            ),
        )
    }
}

#[async_trait]
impl MediaFetcher for TelegramFetcher {
    async fn fetch(&self, media: &MediaRef) -> Result<Fetched, FetchError> {
        let file_id = media.source.as_str();
        let info = match self
            .api
            .call("getFile", self.api.bot.get_file(FileId(file_id.to_owned())))
            .await
        {
            Ok(info) => info,
            // The Bot API's own refusal ("file is too big", an unknown
            // file_id) will not change on a retry.
            Err(TelegramError::Request(RequestError::Api(e))) if !is_temporary(&e) => {
                return Err(self.refused(file_id, format!("getfile: {e}")));
            }
            Err(e) => return Err(FetchError::Temporary(e.to_string())),
        };
        let announced = u64::from(info.meta.size);
        if announced > self.api.max_file_bytes {
            return Err(self.too_big(file_id, announced));
        }
        let download = async {
            let mut stream = self.api.bot.download_file_stream(&info.path);
            let mut bytes = Vec::new();
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(chunk) => chunk,
                    Err(e) if e.status().is_some_and(|s| s.is_client_error()) => {
                        return Err(self.refused(file_id, format!("download: {e}")));
                    }
                    Err(e) => return Err(FetchError::Temporary(format!("download: {e}"))),
                };
                let size = (bytes.len() + chunk.len()) as u64;
                if size > self.api.max_file_bytes {
                    return Err(self.too_big(file_id, size));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(bytes)
        };
        let content = tokio::time::timeout(self.api.request_timeout, download)
            .await
            .map_err(|_| FetchError::Temporary("timed out downloading the file".into()))??;
        emit!(FileDownloaded => &self.metrics);
        Ok(Fetched {
            content: content.into(),
            // The type is the message's (Telegram's getFile says none).
            media_type: String::new(),
        })
    }
}
