//! The deferred-media fetcher of the three kinds. A message names each
//! file by where it can be fetched: WhatsApp by its media id
//! (`graph:{media_id}`, looked up with the Graph API, then downloaded with
//! the bearer token), Messenger and Instagram by the CDN URL in the
//! payload (`https://…`, signed by Meta, downloaded as is).
//!
//! A WhatsApp media id is good for 30 days, the link its lookup returns
//! for 5 minutes, so each attempt looks the id up afresh. Messenger and
//! Instagram links expire too (after days); a download that keeps failing
//! leaves the attachment with its link.

use async_trait::async_trait;
use omni_connector::{FetchError, Fetched, MediaFetcher, MediaRef};

use crate::graph::GraphClient;

/// The prefix of a [`omni_connector::MediaRef::source`] naming a WhatsApp
/// media id.
pub const GRAPH_MEDIA_PREFIX: &str = "graph:";

/// The [`omni_connector::MediaRef::source`] of a WhatsApp media id.
pub fn graph_media(media_id: &str) -> String {
    format!("{GRAPH_MEDIA_PREFIX}{media_id}")
}

/// Downloads one channel's files.
#[derive(Debug, Clone)]
pub struct MetaFetcher {
    /// None: every download fails for good. A client without a token
    /// ([`GraphClient::anonymous`]) still downloads CDN links.
    graph: Option<GraphClient>,
    max_bytes: u64,
}

impl MetaFetcher {
    /// A fetcher through `graph` of files up to `max_bytes`.
    pub fn new(graph: Option<GraphClient>, max_bytes: u64) -> Self {
        Self { graph, max_bytes }
    }
}

/// What a source names.
#[derive(Debug, PartialEq, Eq)]
enum Source<'a> {
    /// A WhatsApp media id.
    MediaId(&'a str),
    /// A link to download as is.
    Link(&'a str),
}

/// Reads a source: `graph:{id}`, or an `https://` link (an `http://` one
/// only when `allow_http`, i.e. the Graph base is a local test server;
/// Meta serves its CDN over https, so a plain link in production is a
/// forgery or a mistake, and is not fetched in the clear).
fn source(raw: &str, allow_http: bool) -> Result<Source<'_>, FetchError> {
    if let Some(id) = raw.strip_prefix(GRAPH_MEDIA_PREFIX) {
        if id.is_empty() {
            return Err(FetchError::Permanent("empty WhatsApp media id".into()));
        }
        return Ok(Source::MediaId(id));
    }
    let scheme = raw.get(..8).unwrap_or_default().to_ascii_lowercase();
    if scheme == "https://" || (allow_http && scheme.starts_with("http://")) {
        return Ok(Source::Link(raw));
    }
    let shown: String = raw.chars().take(64).collect();
    Err(FetchError::Permanent(format!(
        "not a Meta media reference (graph:{{id}} or an https link): {shown:?}"
    )))
}

/// Whether a media type says nothing about the file (then Meta's own
/// `mime_type` from the lookup is used).
fn uninformative(media_type: &str) -> bool {
    let essence = media_type.split(';').next().unwrap_or_default().trim();
    essence.is_empty() || essence.eq_ignore_ascii_case("application/octet-stream")
}

#[async_trait]
impl MediaFetcher for MetaFetcher {
    async fn fetch(&self, media: &MediaRef) -> Result<Fetched, FetchError> {
        let allow_http = self.graph.as_ref().is_some_and(GraphClient::allows_http);
        let source = source(&media.source, allow_http)?;
        let Some(graph) = &self.graph else {
            return Err(FetchError::Permanent(
                "no Graph API client for this channel, so nothing is downloaded".into(),
            ));
        };
        match source {
            Source::MediaId(id) => {
                if !graph.has_token() {
                    return Err(FetchError::Permanent(
                        "no access_token configured, so WhatsApp media cannot be downloaded".into(),
                    ));
                }
                let info = graph.media_info(id).await.map_err(|e| e.into_fetch())?;
                if let Some(size) = info.file_size.filter(|size| *size > self.max_bytes) {
                    return Err(FetchError::Permanent(format!(
                        "the file is too large: {size} bytes, more than {}",
                        self.max_bytes
                    )));
                }
                let mut fetched = graph
                    .download(&info.url, true, self.max_bytes)
                    .await
                    .map_err(|e| e.into_fetch())?;
                if !digest_matches(&info.sha256, &fetched.content) {
                    // A truncated or altered transfer: the lookup is
                    // repeated later, with a fresh URL.
                    return Err(FetchError::Temporary(
                        "the downloaded file does not match the sha256 WhatsApp gave".into(),
                    ));
                }
                if uninformative(&fetched.media_type) && !info.mime_type.is_empty() {
                    fetched.media_type = info.mime_type;
                }
                Ok(fetched)
            }
            Source::Link(url) => graph
                .download(url, false, self.max_bytes)
                .await
                .map_err(|e| e.into_fetch()),
        }
    }
}

/// Whether `content` is the file WhatsApp described by `expected`, its
/// SHA-256 in hex or base64 (both are seen in Meta's answers). An empty or
/// unreadable value checks nothing rather than refusing every file.
fn digest_matches(expected: &str, content: &[u8]) -> bool {
    use base64::Engine as _;
    use sha2::Digest as _;
    let expected = expected.trim();
    let digest = sha2::Sha256::digest(content);
    if expected.len() == 64 && expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return hex::encode(digest).eq_ignore_ascii_case(expected);
    }
    match base64::engine::general_purpose::STANDARD.decode(expected) {
        Ok(bytes) if bytes.len() == 32 => bytes == digest.as_slice(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_download_not_matching_its_digest_is_retried_later() {
        let fake = crate::graph::fake::Fake::start().await;
        fake.add_media("corrupt-1", "image/jpeg", b"jpeg bytes");
        fake.add_media("fine-1", "image/jpeg", b"jpeg bytes");
        let fetcher = super::MetaFetcher::new(Some(fake.client()), 1024);
        let media = |id: &str| omni_connector::MediaRef {
            attachment: 0,
            source: super::graph_media(id),
        };
        use omni_connector::MediaFetcher as _;
        assert!(matches!(
            fetcher.fetch(&media("corrupt-1")).await,
            Err(omni_connector::FetchError::Temporary(reason)) if reason.contains("sha256")
        ));
        assert_eq!(
            &fetcher.fetch(&media("fine-1")).await.unwrap().content[..],
            b"jpeg bytes"
        );
    }

    #[test]
    fn downloads_are_checked_against_whatsapps_digest_in_hex_or_base64() {
        use base64::Engine as _;
        use sha2::Digest as _;
        let file = b"a customer's photo";
        let digest = sha2::Sha256::digest(file);
        let hex = hex::encode(digest);
        let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
        assert!(super::digest_matches(&hex, file));
        assert!(super::digest_matches(&hex.to_uppercase(), file));
        assert!(super::digest_matches(&b64, file));
        assert!(!super::digest_matches(&hex, b"a customer's photX"));
        assert!(!super::digest_matches(&b64, b"truncated"));
        // Nothing to check against: accepted.
        assert!(super::digest_matches("", file));
        assert!(super::digest_matches("00", file));
    }

    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::graph::fake::{Fake, Reply, TOKEN, VERSION};

    fn media(source: &str) -> MediaRef {
        MediaRef {
            attachment: 0,
            source: source.into(),
        }
    }

    fn permanent(result: Result<Fetched, FetchError>) -> String {
        match result {
            Err(FetchError::Permanent(reason)) => reason,
            other => panic!("expected a permanent failure, got {other:?}"),
        }
    }

    #[test]
    fn sources_are_read() {
        assert_eq!(source("graph:123", false).unwrap(), Source::MediaId("123"));
        assert_eq!(
            source("https://scontent.xx.fbcdn.net/v/t1?x=1", false).unwrap(),
            Source::Link("https://scontent.xx.fbcdn.net/v/t1?x=1")
        );
        assert_eq!(
            source("http://127.0.0.1:1/cdn/a", true).unwrap(),
            Source::Link("http://127.0.0.1:1/cdn/a")
        );
        for bad in ["graph:", "http://cdn/a", "ftp://x", "media:1", "", "é"] {
            assert!(source(bad, false).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn whatsapp_media_is_looked_up_then_downloaded_with_the_token() {
        let fake = Fake::start().await;
        fake.add_media("1037543291543636", "audio/ogg; codecs=opus", b"OggS");
        let fetcher = MetaFetcher::new(Some(fake.client()), 100);
        let fetched = fetcher
            .fetch(&media(&graph_media("1037543291543636")))
            .await
            .unwrap();
        assert_eq!(&fetched.content[..], b"OggS");
        assert_eq!(fetched.media_type, "audio/ogg; codecs=opus");
        assert_eq!(
            fake.calls(),
            ["GET /v23.0/1037543291543636", "GET /files/1037543291543636"]
        );
        for seen in [
            &fake.seen("/v23.0/1037543291543636")[0],
            &fake.seen("/files/1037543291543636")[0],
        ] {
            assert_eq!(
                seen.authorization.as_deref(),
                Some(&*format!("Bearer {TOKEN}"))
            );
        }
    }

    #[tokio::test]
    async fn an_uninformative_content_type_gives_way_to_the_lookup() {
        let fake = Fake::start().await;
        fake.add_media("77", "application/octet-stream", b"%PDF");
        fake.script(
            &Fake::graph_path("77"),
            vec![Reply::json(
                200,
                json!({"url": format!("{}/files/77", fake.base), "mime_type": "application/pdf", "file_size": "4", "id": "77"}),
            )],
        );
        let fetcher = MetaFetcher::new(Some(fake.client()), 100);
        let fetched = fetcher.fetch(&media("graph:77")).await.unwrap();
        assert_eq!(fetched.media_type, "application/pdf");
    }

    #[tokio::test]
    async fn cdn_links_are_downloaded_without_a_token() {
        let fake = Fake::start().await;
        let url = fake.add_cdn("photo.jpg", "image/jpeg", b"jpeg");
        // Even a channel without a token downloads them.
        let anonymous =
            GraphClient::anonymous(&fake.base, VERSION, Duration::from_secs(5)).unwrap();
        for fetcher in [
            MetaFetcher::new(Some(fake.client()), 100),
            MetaFetcher::new(Some(anonymous), 100),
        ] {
            let fetched = fetcher.fetch(&media(&url)).await.unwrap();
            assert_eq!(&fetched.content[..], b"jpeg");
            assert_eq!(fetched.media_type, "image/jpeg");
        }
        assert!(
            fake.seen("/cdn/photo.jpg")
                .iter()
                .all(|s| s.authorization.is_none())
        );
    }

    #[tokio::test]
    async fn oversized_files_are_refused_for_good() {
        let fake = Fake::start().await;
        fake.add_media("9", "video/mp4", &[0; 200]);
        let url = fake.add_cdn("v.mp4", "video/mp4", &[0; 200]);
        let fetcher = MetaFetcher::new(Some(fake.client()), 199);
        // The lookup's file_size is enough to refuse it.
        let reason = permanent(fetcher.fetch(&media("graph:9")).await);
        assert!(reason.contains("too large"), "{reason}");
        assert!(fake.seen("/files/9").is_empty());
        // A link is refused while it is read.
        let reason = permanent(fetcher.fetch(&media(&url)).await);
        assert!(reason.contains("too large"), "{reason}");
    }

    #[tokio::test]
    async fn unknown_media_is_permanent_and_outages_temporary() {
        let fake = Fake::start().await;
        let fetcher = MetaFetcher::new(Some(fake.client()), 100);
        let reason = permanent(fetcher.fetch(&media("graph:404")).await);
        assert!(reason.contains("graph error 100/33"), "{reason}");
        let gone = format!("{}/cdn/gone.jpg", fake.base);
        let reason = permanent(fetcher.fetch(&media(&gone)).await);
        assert!(reason.contains("graph error 100"), "{reason}");

        fake.add_media("5", "image/png", b"png");
        fake.script(
            &Fake::graph_path("5"),
            vec![Reply::error(400, 131016, None, "Service unavailable")],
        );
        fake.script("/files/5", vec![Reply::json(503, json!({}))]);
        for _ in 0..2 {
            assert!(
                matches!(
                    fetcher.fetch(&media("graph:5")).await,
                    Err(FetchError::Temporary(_))
                ),
                "{:?}",
                fake.calls()
            );
        }
        assert_eq!(
            &fetcher.fetch(&media("graph:5")).await.unwrap().content[..],
            b"png"
        );
    }

    #[tokio::test]
    async fn without_a_client_or_a_token_nothing_is_fetched() {
        let fake = Fake::start().await;
        let none = MetaFetcher::new(None, 100);
        let reason = permanent(none.fetch(&media("graph:1")).await);
        assert!(reason.contains("no Graph API client"), "{reason}");
        let anonymous = MetaFetcher::new(
            Some(GraphClient::anonymous(&fake.base, VERSION, Duration::from_secs(5)).unwrap()),
            100,
        );
        let reason = permanent(anonymous.fetch(&media("graph:1")).await);
        assert!(reason.contains("no access_token"), "{reason}");
        // Bad references are refused before any request.
        let fetcher = MetaFetcher::new(Some(fake.client()), 100);
        for bad in ["graph:", "wechat:1", "ftp://x/y"] {
            permanent(fetcher.fetch(&media(bad)).await);
        }
        assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    }

    #[tokio::test]
    async fn plain_http_links_are_refused_against_an_https_graph() {
        let client = GraphClient::new(
            "https://graph.facebook.com",
            VERSION,
            omni_connector::Secret::new(TOKEN),
            Duration::from_secs(1),
        )
        .unwrap();
        let fetcher = MetaFetcher::new(Some(client), 100);
        let reason = permanent(fetcher.fetch(&media("http://127.0.0.1:9/cdn/a.jpg")).await);
        assert!(reason.contains("not a Meta media reference"), "{reason}");
    }
}
