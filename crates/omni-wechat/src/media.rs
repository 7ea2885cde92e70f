//! The deferred-media fetcher of both WeChat channels: a message names each
//! file by WeChat's media id (`media:{media_id}`), and the media queue's
//! worker downloads it here with `cgi-bin/media/get` once the message is
//! durable. WeChat keeps temporary media 3 days, so a download that keeps
//! failing past that leaves the attachment with its media id.

use async_trait::async_trait;
use omni_connector::{FetchError, Fetched, MediaFetcher, MediaRef};

use crate::api::ApiClient;

/// The prefix of a [`MediaRef::source`] naming a WeChat media id.
pub const MEDIA_SOURCE_PREFIX: &str = "media:";

/// The [`MediaRef::source`] of a media id.
pub fn media_source(media_id: &str) -> String {
    format!("{MEDIA_SOURCE_PREFIX}{media_id}")
}

/// Downloads one channel's files.
#[derive(Debug)]
pub struct WechatFetcher {
    /// None when the channel has no secret (it then cannot get a token).
    pub(crate) api: Option<ApiClient>,
    pub(crate) max_bytes: u64,
}

impl WechatFetcher {
    /// A fetcher through `api` (None: every download fails permanently)
    /// of files up to `max_bytes`.
    pub fn new(api: Option<ApiClient>, max_bytes: u64) -> Self {
        Self { api, max_bytes }
    }
}

#[async_trait]
impl MediaFetcher for WechatFetcher {
    async fn fetch(&self, media: &MediaRef) -> Result<Fetched, FetchError> {
        let Some(media_id) = media
            .source
            .strip_prefix(MEDIA_SOURCE_PREFIX)
            .filter(|id| !id.is_empty())
        else {
            let shown: String = media.source.chars().take(64).collect();
            return Err(FetchError::Permanent(format!(
                "not a WeChat media reference: {shown:?}"
            )));
        };
        let Some(api) = &self.api else {
            return Err(FetchError::Permanent(
                "no app secret configured, so no access token to download with".into(),
            ));
        };
        api.media_get(media_id, self.max_bytes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::fake::{Fake, Reply};

    fn media(source: &str) -> MediaRef {
        MediaRef {
            attachment: 0,
            source: source.into(),
        }
    }

    #[tokio::test]
    async fn fetches_media_ids() {
        let fake = Fake::start().await;
        fake.add_media(
            "MID",
            Reply::File {
                content_type: "image/jpeg".into(),
                disposition: true,
                bytes: b"jpeg".to_vec(),
            },
        );
        let fetcher = WechatFetcher::new(Some(fake.oa_client()), 100);
        let fetched = fetcher.fetch(&media(&media_source("MID"))).await.unwrap();
        assert_eq!(&fetched.content[..], b"jpeg");
        assert_eq!(fetched.media_type, "image/jpeg");
        assert!(matches!(
            fetcher.fetch(&media("https://example.com/a.jpg")).await,
            Err(FetchError::Permanent(_))
        ));
        assert!(matches!(
            fetcher.fetch(&media("media:")).await,
            Err(FetchError::Permanent(_))
        ));
        let small = WechatFetcher::new(Some(fake.oa_client()), 3);
        assert!(matches!(
            small.fetch(&media("media:MID")).await,
            Err(FetchError::Permanent(_))
        ));
    }

    #[tokio::test]
    async fn without_a_secret_every_download_fails_for_good() {
        let fetcher = WechatFetcher::new(None, 100);
        match fetcher.fetch(&media("media:MID")).await {
            Err(FetchError::Permanent(reason)) => assert!(reason.contains("no app secret")),
            other => panic!("{other:?}"),
        }
    }
}
