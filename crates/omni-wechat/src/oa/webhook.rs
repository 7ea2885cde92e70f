//! An Official Account's server URL: WeChat's URL check (`GET`) and its
//! pushed messages (`POST`) in plaintext, compatible and safe mode.
//!
//! WeChat waits 5 seconds for the answer and retries three times; the SDK's
//! driver answers `success` only once the event is durable, and the event
//! id comes from `MsgId` (events: sender, `CreateTime` and event name), so
//! a retry is the same event. The only I/O before the append is the
//! optional unionid lookup, bounded well inside WeChat's 5 seconds and
//! cached per openid; when it fails the message goes in without it.

use std::time::Duration;

use async_trait::async_trait;
use http::{Method, StatusCode};
use omni_connector::{
    ChannelState, EnrichError, ParseError, Parsed, Refusal, StateUpdate, WebhookChannel,
    WebhookRequest, WebhookResponse, handle::to_proto, webhook::error_response,
};
use omni_model::{Handle, HandleKind};
use omni_proto::v1::ConversationEvent;
use omni_telemetry::emit;

use crate::{
    api::ApiClient,
    callback::{self, CallbackQuery, Keys},
    events::{PushHandled, WechatMetrics},
    oa::normalize::{self, OaContext},
    xml,
};

/// The parse errors of requests that cannot have come from WeChat (bad
/// ciphertext, not XML): answered 400. Authentic messages Omnid cannot
/// read (an unknown type) are answered `success` once dead-lettered, since
/// WeChat otherwise tells the customer the account is out of service.
fn from_wechat(code: &str) -> bool {
    !(crate::crypto::CryptoError::CODES.contains(&code)
        || xml::XmlError::CODES.contains(&code)
        || matches!(code, "missing_encrypt" | "ambiguous_envelope"))
}

/// The unionid lookup done while WeChat waits.
#[derive(Debug)]
pub(crate) struct UnionidLookup {
    pub(crate) api: ApiClient,
    pub(crate) state: ChannelState,
    pub(crate) timeout: Duration,
    pub(crate) scope: Option<String>,
}

/// The webhook of one Official Account.
#[derive(Debug)]
pub struct OaWebhook {
    pub(crate) channel_id: String,
    pub(crate) app_id: String,
    pub(crate) keys: Keys,
    pub(crate) unionid_scope: Option<String>,
    pub(crate) lookup: Option<UnionidLookup>,
    pub(crate) metrics: WechatMetrics,
}

#[async_trait]
impl WebhookChannel for OaWebhook {
    fn methods(&self) -> &'static [Method] {
        &[Method::GET, Method::POST]
    }

    fn verifies(&self) -> bool {
        self.keys.token.is_some()
    }

    fn verify(&self, request: &WebhookRequest) -> Result<(), Refusal> {
        let query = CallbackQuery::parse(&request.uri);
        if request.method == Method::POST && query.encrypted() {
            // The content trusted is the ciphertext, so its own signature
            // is what counts (WeChat also sends `signature`).
            let encrypted = self.keys.envelope(&request.body)?;
            self.keys.verify_msg_signature(&query, encrypted)
        } else if request.method == Method::GET && query.msg_signature.is_some() {
            // An encrypted URL check: the echostr is a ciphertext.
            let echostr = query.echostr.as_deref().unwrap_or("");
            self.keys.verify_msg_signature(&query, echostr)
        } else {
            self.keys.verify_signature(&query)
        }
    }

    fn parse(&self, request: &WebhookRequest) -> Result<Parsed, ParseError> {
        let query = CallbackQuery::parse(&request.uri);
        if request.method == Method::GET {
            let echostr = query.echostr.unwrap_or_default();
            let answer = if query.msg_signature.is_some() {
                self.keys.decrypt(&echostr)?
            } else {
                echostr.into_bytes()
            };
            return Ok(Parsed::Answer(callback::text(answer)));
        }
        let fields = if query.encrypted() {
            self.keys.open(&request.body)?
        } else {
            xml::parse(&request.body, &self.keys.limits)
                .map_err(|e| ParseError::new(e.code(), e.to_string()))?
        };
        let cx = OaContext {
            channel_id: &self.channel_id,
            app_id: &self.app_id,
            unionid_scope: self.unionid_scope.as_deref(),
            received_at: omni_proto::timestamp(request.received_at),
        };
        Ok(Parsed::inbound(vec![normalize::normalize(&fields, &cx)?]))
    }

    async fn enrich(
        &self,
        _request: &WebhookRequest,
        mut parsed: Parsed,
    ) -> Result<Parsed, EnrichError> {
        let (Some(lookup), Parsed::Append { events, .. }) = (&self.lookup, &mut parsed) else {
            return Ok(parsed);
        };
        for inbound in events {
            lookup
                .add_unionid(&self.channel_id, &mut inbound.event)
                .await;
        }
        Ok(parsed)
    }

    fn accepted(&self, _event_ids: &[String]) -> WebhookResponse {
        emit!(PushHandled { dead_lettered: false } => &self.metrics);
        callback::success()
    }

    fn invalid(&self, error: &ParseError) -> WebhookResponse {
        emit!(PushHandled { dead_lettered: true } => &self.metrics);
        if from_wechat(error.code) {
            callback::success()
        } else {
            error_response(StatusCode::BAD_REQUEST, error.code, &error.message)
        }
    }
}

impl UnionidLookup {
    /// Adds the sender's unionid, from the cache or `user/info`, unless
    /// the message already names one. Never fails the message.
    async fn add_unionid(&self, channel_id: &str, event: &mut ConversationEvent) {
        let has_unionid = event
            .sender_identities
            .iter()
            .any(|h| h.kind == omni_proto::v1::HandleKind::WechatUnionid as i32);
        let Some(openid) = event.sender.as_ref().map(|s| s.value.clone()) else {
            return;
        };
        if has_unionid {
            return;
        }
        let key = format!("unionid/{openid}");
        let unionid = match self.state.get(&key).await {
            Ok(Some(cached)) => String::from_utf8(cached).ok(),
            Ok(None) => {
                match tokio::time::timeout(self.timeout, self.api.user_unionid(&openid)).await {
                    Ok(Ok(found)) => {
                        // "Has none" is cached too (as empty), so an
                        // account without an Open Platform binding is not
                        // asked about every message.
                        let value = found.clone().unwrap_or_default();
                        let update = StateUpdate {
                            puts: vec![(key, value.into_bytes())],
                            seen: Vec::new(),
                            deletes: Vec::new(),
                        };
                        if let Err(e) = self.state.commit(update).await {
                            tracing::warn!(channel = %channel_id, error = %e, "unionid not cached");
                        }
                        found
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(channel = %channel_id, error = %e, "unionid lookup failed; the message goes in without it");
                        None
                    }
                    Err(_) => {
                        tracing::warn!(channel = %channel_id, timeout_ms = self.timeout.as_millis() as u64, "unionid lookup timed out; the message goes in without it");
                        None
                    }
                }
            }
            Err(e) => {
                tracing::warn!(channel = %channel_id, error = %e, "unionid cache unreadable");
                None
            }
        };
        let Some(unionid) = unionid.filter(|u| !u.is_empty()) else {
            return;
        };
        if let Ok(handle) =
            Handle::provider(HandleKind::WechatUnionid, &unionid, self.scope.as_deref())
        {
            event.sender_identities.push(to_proto(&handle, "", true));
        }
    }
}
