//! The HTTP surface: webhooks, the outbound API, the threading query API,
//! health, metrics. Handlers stay small; the channel's own
//! [`WebhookHandler`] does the work.

use std::{
    net::SocketAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use axum::{
    Extension, Router,
    body::Body,
    extract::{ConnectInfo, Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{any, delete, get, post, put},
};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use metrics_exporter_prometheus::PrometheusHandle;
use omni_connector::{
    SendError, WebhookRequest,
    webhook::{error_response, unavailable_response},
};
use omni_proto::v1::{ConversationEvent, threading_command::Command};
use omni_telemetry::emit;

use omni_threading::ThreadingStore;
use tracing::Instrument as _;

use crate::{
    auth::{ApiToken, unauthorized},
    channels::{ChannelSet, LiveChannels, Webhook},
    events::{
        CommandMetrics, OutboundRequestHandled, OutboundRequestMetrics, OutboundRequestOutcome,
        WebhookTooLarge,
    },
    listener::{Admission, BodyRefusal, Exhausted},
    sink::LogSink,
    supervisor::{ChannelHealth, Health, RunState},
    traces,
};

/// What the `/v1/` API needs, installed on the [`AppState`] when
/// `http.api_token` is set.
#[derive(Debug)]
pub(crate) struct OutboundApi {
    pub token: ApiToken,
    /// Where `POST /v1/outbound` appends.
    pub sink: LogSink,
    pub metrics: OutboundRequestMetrics,
}

impl OutboundApi {
    pub(crate) fn new(token: ApiToken, sink: LogSink) -> Self {
        Self {
            token,
            sink,
            metrics: OutboundRequestMetrics::register(),
        }
    }
}

/// Shared by every request.
#[derive(Clone)]
pub(crate) struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    channels: LiveChannels,
    max_body_bytes: usize,
    public_base_url: Option<String>,
    ready: AtomicBool,
    prometheus: Option<PrometheusHandle>,
    /// What each channel's connector loop is doing.
    health: Health,
    /// Set when `http.api_token` is configured.
    outbound_api: OnceLock<OutboundApi>,
    /// The threading store, read by the query API and changed by the
    /// commands API.
    threading: OnceLock<Arc<dyn ThreadingStore>>,
    /// `omnid_threading_commands_total{source="http"}`.
    command_metrics: CommandMetrics,
}

impl AppState {
    pub(crate) fn new(
        channels: ChannelSet,
        max_body_bytes: usize,
        public_base_url: Option<String>,
        prometheus: Option<PrometheusHandle>,
        health: Health,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                channels: LiveChannels::new(channels),
                max_body_bytes,
                public_base_url: public_base_url.map(|u| u.trim_end_matches('/').to_owned()),
                ready: AtomicBool::new(false),
                prometheus,
                health,
                outbound_api: OnceLock::new(),
                threading: OnceLock::new(),
                command_metrics: CommandMetrics::register("http"),
            }),
        }
    }

    pub(crate) fn channels(&self) -> Arc<ChannelSet> {
        self.inner.channels.get()
    }

    /// The same channels, for the daemon's other parts.
    pub(crate) fn live_channels(&self) -> LiveChannels {
        self.inner.channels.clone()
    }

    pub(crate) fn replace_channels(&self, channels: ChannelSet) {
        self.inner.channels.replace(channels);
    }

    /// Turns on `POST /v1/outbound` (once; later calls are ignored).
    pub(crate) fn enable_outbound_api(&self, api: OutboundApi) {
        let _ = self.inner.outbound_api.set(api);
    }

    /// Turns on the query and commands API over `store` (it still needs
    /// `http.api_token`).
    pub(crate) fn enable_threading_api(&self, store: Arc<dyn ThreadingStore>) {
        let _ = self.inner.threading.set(store);
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::SeqCst);
    }

    fn webhook(&self, channel_id: &str) -> Option<Webhook> {
        self.channels()
            .get(channel_id)
            .and_then(|c| c.webhook.clone())
    }
}

pub(crate) fn router(state: AppState, request_timeout: Duration) -> Router {
    Router::new()
        .route("/webhooks/{channel_id}", any(webhook))
        .route("/channels/{channel_id}/{*rest}", any(channel_route))
        .route("/v1/outbound", post(submit_outbound))
        .route(
            "/v1/customers/{customer_id}/timeline",
            get(customer_timeline),
        )
        .route("/v1/identities/{kind}/{value}", get(identity))
        .route("/v1/commands", post(command))
        .route(
            "/v1/conversations/{conversation_id}/close",
            post(close_conversation),
        )
        .route(
            "/v1/conversations/{conversation_id}/reopen",
            post(reopen_conversation),
        )
        .route(
            "/v1/customers/{customer_id}/identities",
            post(link_identity),
        )
        .route(
            "/v1/customers/{customer_id}/identities/{kind}/{value}",
            delete(unlink_identity),
        )
        .route("/v1/customers/{customer_id}/merge", post(merge_customers))
        .route("/v1/customers/{customer_id}/split", post(split_customer))
        .route("/v1/customers/{customer_id}/segment", put(set_segment))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .with_state(state)
}

/// A channel's own endpoints ([`omni_connector::Connector::routes`]): the
/// request goes to the channel's router with the path below
/// `/channels/{channel_id}`, query kept. The router was built with the
/// channel and is looked up per request, so a reloaded channel serves its
/// new routes at once.
async fn channel_route(
    State(state): State<AppState>,
    Path((channel_id, rest)): Path<(String, String)>,
    request: axum::extract::Request,
) -> Response {
    use tower::ServiceExt as _;
    let Some(routes) = state
        .channels()
        .get(&channel_id)
        .and_then(|c| c.routes.clone())
    else {
        return into_axum(error_response(
            StatusCode::NOT_FOUND,
            "unknown_channel",
            "no channel with its own endpoints has this id",
        ));
    };
    let (mut parts, body) = request.into_parts();
    let path = match parts.uri.query() {
        Some(query) => format!("/{rest}?{query}"),
        None => format!("/{rest}"),
    };
    let Ok(uri) = path.parse() else {
        return into_axum(error_response(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            "the path is not a valid URI",
        ));
    };
    parts.uri = uri;
    match routes
        .oneshot(axum::extract::Request::from_parts(parts, body))
        .await
    {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

fn into_axum(response: omni_connector::WebhookResponse) -> Response {
    response.map(Body::from)
}

async fn webhook(
    State(state): State<AppState>,
    Path(channel_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(admission): Extension<Arc<Admission>>,
    request: axum::extract::Request,
) -> Response {
    let span = traces::webhook(request.method(), &channel_id, request.headers());
    let response = receive(state, channel_id, peer, admission, request)
        .instrument(span.clone())
        .await;
    traces::answered(&span, response.status());
    response
}

async fn receive(
    state: AppState,
    channel_id: String,
    peer: SocketAddr,
    admission: Arc<Admission>,
    request: axum::extract::Request,
) -> Response {
    let received_at = SystemTime::now();
    let (
        http::request::Parts {
            method,
            uri,
            headers,
            ..
        },
        body,
    ) = request.into_parts();
    let Some(Webhook { handler, limits }) = state.webhook(&channel_id) else {
        return into_axum(error_response(
            StatusCode::NOT_FOUND,
            "unknown_channel",
            "no webhook channel with this id",
        ));
    };
    let max = state.inner.max_body_bytes;
    let too_large = || {
        emit!(WebhookTooLarge { max_body_bytes: max } => &limits);
        // The rest of the body is not read, so the connection cannot be
        // reused.
        closing(into_axum(error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than {max} bytes"),
        )))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return too_large();
    }
    let declared = declared.and_then(|len| usize::try_from(len).ok());
    // The body is read, under the unauthenticated-bytes budget, before the
    // channel can check its signature; the bytes stay reserved until the
    // channel has answered.
    let (body, reservation) = match admission.read_body(peer.ip(), body, declared, max).await {
        Ok(read) => read,
        Err(BodyRefusal::TooLarge) => return too_large(),
        Err(BodyRefusal::Exhausted(Exhausted::Peer)) => {
            let mut response = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "too many request bodies from this address are being read; retry later",
            );
            if let Ok(value) = http::HeaderValue::from_str(&RETRY_AFTER.as_secs().to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return closing(into_axum(response));
        }
        Err(BodyRefusal::Exhausted(Exhausted::Total)) => {
            return closing(into_axum(unavailable_response(
                "overloaded",
                "too many request bodies are being read; retry later",
                RETRY_AFTER,
            )));
        }
        Err(BodyRefusal::TimedOut) => {
            return closing(into_axum(error_response(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body did not arrive in time",
            )));
        }
        Err(BodyRefusal::Unreadable(error)) => {
            return into_axum(error_response(
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                format!("cannot read body: {error}"),
            ));
        }
    };
    let public_url = state.inner.public_base_url.as_ref().map(|base| {
        format!(
            "{base}{}",
            uri.path_and_query().map_or("", |pq| pq.as_str())
        )
    });
    let request = WebhookRequest {
        method,
        uri,
        headers,
        body,
        received_at,
        public_url,
    };
    let response = into_axum(handler.handle(request).await);
    drop(reservation);
    response
}

/// Asks hyper to close the connection after `response`: the rest of an
/// unread body is not worth reading, and a client refused for its slowness
/// or for load should not keep the connection.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    response
}

/// How long a client should wait before retrying after a 503.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// `POST /v1/outbound`: a reply for a channel to send, as the protobuf JSON
/// form of a `ConversationEvent`, authenticated by the daemon's bearer
/// token. Answers 202 once the message is durable on the outbound topic;
/// the dispatcher sends it and reports a delivery status. Traced as an
/// `api.request`, so the append and the delivery continue its trace.
async fn submit_outbound(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let span = traces::api_request(&http::Method::POST, "/v1/outbound", &headers);
    let response = outbound_request(state, headers, body)
        .instrument(span.clone())
        .await;
    traces::answered(&span, response.status());
    response
}

async fn outbound_request(state: AppState, headers: HeaderMap, body: Body) -> Response {
    // Without a token the API does not exist (404), so an unconfigured
    // daemon does not even advertise it.
    let Some(api) = state.inner.outbound_api.get() else {
        return into_axum(error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "the outbound api is off; set http.api_token to enable it",
        ));
    };
    let finish = |outcome: OutboundRequestOutcome, channel: &str, detail: &str, response| {
        emit!(OutboundRequestHandled {
            outcome,
            channel,
            detail,
        } => &api.metrics);
        into_axum(response)
    };
    if let Err(detail) = api.token.authorize(&headers) {
        return finish(
            OutboundRequestOutcome::Unauthorized,
            "",
            detail,
            unauthorized(),
        );
    }
    let max = state.inner.max_body_bytes;
    let too_large = || {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than {max} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        // The body is not read, so the connection cannot be reused.
        return closing(finish(
            OutboundRequestOutcome::TooLarge,
            "",
            "",
            too_large(),
        ));
    }
    let body = match Limited::new(body, max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            return closing(finish(
                OutboundRequestOutcome::TooLarge,
                "",
                "",
                too_large(),
            ));
        }
        Err(error) => {
            let message = format!("cannot read body: {error}");
            let response = error_response(StatusCode::BAD_REQUEST, "unreadable_body", &message);
            return finish(OutboundRequestOutcome::Invalid, "", &message, response);
        }
    };
    let event: ConversationEvent = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(error) => {
            let message = format!("not a ConversationEvent in protobuf json: {error}");
            let response = error_response(StatusCode::BAD_REQUEST, "invalid_json", &message);
            return finish(OutboundRequestOutcome::Invalid, "", &message, response);
        }
    };
    let channel_id = event.channel_id.clone();
    let event = match crate::outbound::prepare(event, &state.channels(), SystemTime::now()) {
        Ok(event) => event,
        Err(refusal) => {
            let outcome = if refusal.code == "unknown_channel" {
                OutboundRequestOutcome::UnknownChannel
            } else {
                OutboundRequestOutcome::Invalid
            };
            let response = error_response(refusal.status, refusal.code, &refusal.message);
            return finish(outcome, &channel_id, &refusal.message, response);
        }
    };
    let event_id = event.event_id.clone();
    match api.sink.submit_outbound(event).await {
        Ok(_) => {
            let response = omni_connector::webhook::json_response(
                StatusCode::ACCEPTED,
                &serde_json::json!({ "event_id": event_id }),
            );
            finish(
                OutboundRequestOutcome::Accepted,
                &channel_id,
                &event_id,
                response,
            )
        }
        Err(error) => {
            let code = match error {
                SendError::Overloaded => "overloaded",
                SendError::Closed | SendError::Failed(_) => "unavailable",
            };
            let response = unavailable_response(code, &error, RETRY_AFTER);
            finish(
                OutboundRequestOutcome::Unavailable,
                &channel_id,
                &error.to_string(),
                response,
            )
        }
    }
}

/// The store for a query request, once its bearer token checks out.
fn query_store(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Arc<dyn ThreadingStore>, Box<Response>> {
    let (Some(api), Some(store)) = (state.inner.outbound_api.get(), state.inner.threading.get())
    else {
        return Err(Box::new(into_axum(error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "the query api is off; set http.api_token to enable it",
        ))));
    };
    if let Err(detail) = api.token.authorize(headers) {
        tracing::warn!(detail, "query request refused");
        return Err(Box::new(into_axum(unauthorized())));
    }
    Ok(store.clone())
}

fn store_failed(error: &omni_threading::StoreError) -> Response {
    tracing::error!(error = %error, "threading store query failed");
    into_axum(unavailable_response("unavailable", error, RETRY_AFTER))
}

/// Largest and default page of `GET /v1/customers/{id}/timeline`.
const MAX_TIMELINE_PAGE: u32 = 1000;
const DEFAULT_TIMELINE_PAGE: u32 = 100;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TimelineQuery {
    /// The `next_after` of the previous page.
    after: Option<i64>,
    limit: Option<u32>,
}

/// `GET /v1/customers/{customer_id}/timeline?after=&limit=`: a page of the
/// customer's timeline, oldest first. A merged id reads the survivor's
/// timeline and says so (`merged`, `requested_customer_id`).
async fn customer_timeline(
    State(state): State<AppState>,
    Path(customer_id): Path<String>,
    query: Result<Query<TimelineQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let store = match query_store(&state, &headers) {
        Ok(store) => store,
        Err(response) => return *response,
    };
    let Ok(Query(query)) = query else {
        return into_axum(error_response(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "after must be an integer cursor and limit an integer",
        ));
    };
    let limit = query
        .limit
        .unwrap_or(DEFAULT_TIMELINE_PAGE)
        .clamp(1, MAX_TIMELINE_PAGE);
    let requested = omni_threading::CustomerId::from_string(customer_id);
    let resolved = match store.resolve_customer(&requested).await {
        Ok(Some(resolved)) => resolved,
        Ok(None) => {
            return into_axum(error_response(
                StatusCode::NOT_FOUND,
                "unknown_customer",
                "no customer with this id",
            ));
        }
        Err(error) => return store_failed(&error),
    };
    let page = match store.timeline(&resolved, query.after, limit).await {
        Ok(page) => page,
        Err(error) => return store_failed(&error),
    };
    let entries: Vec<_> = page
        .entries
        .iter()
        .map(crate::threading::entry_json)
        .collect();
    axum::Json(serde_json::json!({
        "customer_id": page.customer_id.as_str(),
        "requested_customer_id": requested.as_str(),
        "merged": page.customer_id != requested,
        "entries": entries,
        "next_after": page.next,
    }))
    .into_response()
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityQuery {
    /// The channel id of channel-local kinds (`external`, `chat_visitor`).
    scope: Option<String>,
}

/// `GET /v1/identities/{kind}/{value}[?scope=]`: the customer a handle
/// belongs to, whether the link is confirmed, and the handles suggested
/// (claimed but unproven) for that customer.
async fn identity(
    State(state): State<AppState>,
    Path((kind, value)): Path<(String, String)>,
    query: Result<Query<IdentityQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let store = match query_store(&state, &headers) {
        Ok(store) => store,
        Err(response) => return *response,
    };
    let Ok(Query(query)) = query else {
        return into_axum(error_response(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "the only query parameter is scope",
        ));
    };
    let key = match crate::threading::handle_key(&kind, &value, query.scope.as_deref()) {
        Ok(key) => key,
        Err(reason) => {
            return into_axum(error_response(
                StatusCode::BAD_REQUEST,
                "invalid_handle",
                reason,
            ));
        }
    };
    let record = match store.identity(&key).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            return into_axum(error_response(
                StatusCode::NOT_FOUND,
                "unknown_identity",
                "no customer has this handle",
            ));
        }
        Err(error) => return store_failed(&error),
    };
    let suggestions = match store.suggestions(&record.customer_id).await {
        Ok(suggestions) => suggestions,
        Err(error) => return store_failed(&error),
    };
    axum::Json(serde_json::json!({
        "handle": crate::threading::handle_json(&key),
        "customer_id": record.customer_id.as_str(),
        "confirmed": record.confirmed,
        "suggestions": suggestions.iter().map(crate::threading::handle_json).collect::<Vec<_>>(),
    }))
    .into_response()
}

/// Applies a helpdesk command for an HTTP request (bearer token checked
/// first) and answers with what it did: 200 with the timeline entries it
/// wrote (none when it was already true, or a repeat of an applied command
/// id), 404 for unknown ids, 409 for a conflict with the state, 400 for a
/// malformed command, 503 when the store fails (retry with the same
/// `Idempotency-Key`).
async fn run_command(
    state: &AppState,
    headers: &HeaderMap,
    action: omni_proto::v1::threading_command::Command,
    actor: Option<String>,
) -> Response {
    let command = omni_proto::v1::ThreadingCommand {
        command_id: String::new(),
        actor: actor.unwrap_or_default(),
        issued_at: None,
        command: Some(action),
    };
    apply_command(state, headers, command).await
}

async fn apply_command(
    state: &AppState,
    headers: &HeaderMap,
    mut command: omni_proto::v1::ThreadingCommand,
) -> Response {
    let store = match query_store(state, headers) {
        Ok(store) => store,
        Err(response) => return *response,
    };
    if let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.trim().is_empty())
    {
        command.command_id = key.trim().to_owned();
    }
    if command.command_id.is_empty() {
        // Without a key, every request is a new command.
        command.command_id = uuid::Uuid::new_v4().to_string();
    }
    if command.issued_at.is_none() {
        command.issued_at = Some(omni_proto::timestamp(SystemTime::now()));
    }
    let metrics = &state.inner.command_metrics;
    let (outcome, entries) = match crate::commands::apply(store.as_ref(), &command, metrics).await {
        Ok(omni_threading::CommandOutcome::Duplicate) => ("duplicate", Vec::new()),
        Ok(omni_threading::CommandOutcome::Applied(entries)) if entries.is_empty() => {
            ("unchanged", entries)
        }
        Ok(omni_threading::CommandOutcome::Applied(entries)) => ("applied", entries),
        Err(omni_threading::StoreError::Command { source, .. }) => {
            let (status, code) = if source.is_not_found() {
                (StatusCode::NOT_FOUND, "not_found")
            } else if source.is_conflict() {
                (StatusCode::CONFLICT, "conflict")
            } else {
                (StatusCode::BAD_REQUEST, "invalid_command")
            };
            return into_axum(error_response(status, code, source.to_string()));
        }
        Err(error) => return store_failed(&error),
    };
    axum::Json(serde_json::json!({
        "command_id": command.command_id,
        "action": crate::commands::action_name(&command),
        "outcome": outcome,
        "entries": entries,
    }))
    .into_response()
}

/// A JSON request body of an API route; an empty body reads as
/// `T::default()`, and a bad one is answered 400 `invalid_json`. The bearer
/// token is checked before the body is read, so an unauthenticated client
/// cannot make the daemon buffer anything.
struct JsonBody<T>(T);

impl<T: serde::de::DeserializeOwned + Default> axum::extract::FromRequest<AppState>
    for JsonBody<T>
{
    type Rejection = Response;

    async fn from_request(
        request: axum::extract::Request,
        state: &AppState,
    ) -> Result<Self, Response> {
        if let Some(api) = state.inner.outbound_api.get()
            && let Err(detail) = api.token.authorize(request.headers())
        {
            tracing::warn!(detail, "api request refused");
            return Err(closing(into_axum(unauthorized())));
        }
        let body = Bytes::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(T::default()));
        }
        serde_json::from_slice(&body).map(JsonBody).map_err(|e| {
            into_axum(error_response(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                e.to_string(),
            ))
        })
    }
}

/// `POST /v1/commands`: a `ThreadingCommand` in the protobuf JSON mapping,
/// exactly as on the commands topic.
async fn command(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(command): JsonBody<omni_proto::v1::ThreadingCommand>,
) -> Response {
    apply_command(&state, &headers, command).await
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StateChangeBody {
    /// For the timeline entry (`resolved`, `spam`); `command` if absent.
    reason: Option<String>,
    actor: Option<String>,
}

/// `POST /v1/conversations/{id}/close`.
async fn close_conversation(
    State(state): State<AppState>,
    Path(conversation_id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<StateChangeBody>,
) -> Response {
    let action = Command::Close(omni_proto::v1::CloseConversation {
        conversation_id,
        reason: body.reason.unwrap_or_default(),
    });
    run_command(&state, &headers, action, body.actor).await
}

/// `POST /v1/conversations/{id}/reopen`.
async fn reopen_conversation(
    State(state): State<AppState>,
    Path(conversation_id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<StateChangeBody>,
) -> Response {
    let action = Command::Reopen(omni_proto::v1::ReopenConversation {
        conversation_id,
        reason: body.reason.unwrap_or_default(),
    });
    run_command(&state, &headers, action, body.actor).await
}

/// A handle as the commands API takes it (kinds by wire name, as in
/// `GET /v1/identities/{kind}/{value}`).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HandleBody {
    kind: String,
    value: String,
    scope: Option<String>,
}

/// The normalized proto handle; on refusal, the 400 answer (boxed: a
/// response is large).
fn proto_handle(handle: &HandleBody) -> Result<omni_proto::v1::IdentityHandle, Box<Response>> {
    crate::threading::handle_key(&handle.kind, &handle.value, handle.scope.as_deref())
        .map(|key| key.to_proto(true))
        .map_err(|reason| {
            Box::new(into_axum(error_response(
                StatusCode::BAD_REQUEST,
                "invalid_handle",
                reason,
            )))
        })
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkBody {
    #[serde(flatten)]
    handle: HandleBody,
    actor: Option<String>,
}

/// `POST /v1/customers/{id}/identities`: link a handle (confirmed).
async fn link_identity(
    State(state): State<AppState>,
    Path(customer_id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<LinkBody>,
) -> Response {
    let handle = match proto_handle(&body.handle) {
        Ok(handle) => handle,
        Err(response) => return *response,
    };
    let action = Command::Link(omni_proto::v1::LinkIdentity {
        customer_id,
        handle: Some(handle),
    });
    run_command(&state, &headers, action, body.actor).await
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UnlinkQuery {
    scope: Option<String>,
    actor: Option<String>,
}

/// `DELETE /v1/customers/{id}/identities/{kind}/{value}[?scope=&actor=]`:
/// move the handle to a new, empty customer.
async fn unlink_identity(
    State(state): State<AppState>,
    Path((customer_id, kind, value)): Path<(String, String, String)>,
    query: Result<Query<UnlinkQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let Ok(Query(query)) = query else {
        return into_axum(error_response(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "the query parameters are scope and actor",
        ));
    };
    let handle = match proto_handle(&HandleBody {
        kind,
        value,
        scope: query.scope,
    }) {
        Ok(handle) => handle,
        Err(response) => return *response,
    };
    let action = Command::Unlink(omni_proto::v1::UnlinkIdentity {
        customer_id,
        handle: Some(handle),
    });
    run_command(&state, &headers, action, query.actor).await
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MergeBody {
    /// The customers to merge with the one in the path.
    customer_ids: Vec<String>,
    actor: Option<String>,
}

/// `POST /v1/customers/{id}/merge`: merge the listed customers with this
/// one (the smallest id survives, as for automatic merges).
async fn merge_customers(
    State(state): State<AppState>,
    Path(customer_id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<MergeBody>,
) -> Response {
    let mut customer_ids = vec![customer_id];
    customer_ids.extend(body.customer_ids);
    let action = Command::Merge(omni_proto::v1::MergeCustomers { customer_ids });
    run_command(&state, &headers, action, body.actor).await
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SegmentBody {
    /// The segment; empty takes the customer out of theirs.
    segment: String,
    actor: Option<String>,
}

/// `PUT /v1/customers/{id}/segment`: put the customer in a segment, which
/// the customer-service rules match from their next message on.
async fn set_segment(
    State(state): State<AppState>,
    Path(customer_id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<SegmentBody>,
) -> Response {
    let action = Command::SetSegment(omni_proto::v1::SetCustomerSegment {
        customer_id,
        segment: body.segment,
    });
    run_command(&state, &headers, action, body.actor).await
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitBody {
    #[serde(default)]
    handles: Vec<HandleBody>,
    #[serde(default)]
    conversation_ids: Vec<String>,
    actor: Option<String>,
}

/// `POST /v1/customers/{id}/split`: move handles and conversations to a
/// new customer.
async fn split_customer(
    State(state): State<AppState>,
    Path(customer_id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<SplitBody>,
) -> Response {
    let handles = match body.handles.iter().map(proto_handle).collect() {
        Ok(handles) => handles,
        Err(response) => return *response,
    };
    let action = Command::Split(omni_proto::v1::SplitCustomer {
        customer_id,
        handles,
        conversation_ids: body.conversation_ids,
    });
    run_command(&state, &headers, action, body.actor).await
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> Response {
    let (ready, report) = readiness(
        state.inner.ready.load(Ordering::SeqCst),
        &state.channels(),
        &state.inner.health.snapshot(),
    );
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report)).into_response()
}

/// `/readyz`'s report: ready while the daemon serves and every channel's
/// loop is up, so a load balancer or an alert can tell which channel is
/// failing.
fn readiness(
    serving: bool,
    channels: &ChannelSet,
    health: &std::collections::HashMap<String, ChannelHealth>,
) -> (bool, serde_json::Value) {
    let mut all_up = true;
    let report: serde_json::Map<String, serde_json::Value> = channels
        .values()
        .map(|channel| {
            let health = health.get(&channel.id).unwrap_or(&ChannelHealth::STARTING);
            all_up &= health.state == RunState::Up;
            let entry = serde_json::json!({
                "kind": channel.kind,
                "state": health.state,
                "error": health.error,
                "restarts": health.restarts,
            });
            (channel.id.clone(), entry)
        })
        .collect();
    let ready = serving && all_up;
    (
        ready,
        serde_json::json!({ "ready": ready, "channels": report }),
    )
}

async fn metrics(State(state): State<AppState>) -> Response {
    match &state.inner.prometheus {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::outbound::fixtures::{channel, channels};

    fn health(state: RunState, error: Option<&str>, restarts: u64) -> ChannelHealth {
        ChannelHealth {
            state,
            error: error.map(str::to_owned),
            restarts,
        }
    }

    #[test]
    fn readiness_reports_every_channel_and_needs_all_of_them_up() {
        let channels = channels();
        let all_up = HashMap::from([
            ("support-mail".to_owned(), health(RunState::Up, None, 0)),
            ("shop-api".to_owned(), health(RunState::Up, None, 0)),
        ]);
        let (ready, report) = readiness(true, &channels, &all_up);
        assert!(ready);
        assert_eq!(
            report,
            serde_json::json!({
                "ready": true,
                "channels": {
                    "support-mail": { "kind": "email", "state": "up", "error": null, "restarts": 0 },
                    "shop-api": { "kind": "api", "state": "up", "error": null, "restarts": 0 },
                },
            })
        );
        // Not while starting or shutting down.
        assert!(!readiness(false, &channels, &all_up).0);

        let mut one_down = all_up.clone();
        one_down.insert(
            "support-mail".to_owned(),
            health(RunState::Down, Some("imap login refused"), 3),
        );
        let (ready, report) = readiness(true, &channels, &one_down);
        assert!(!ready);
        assert_eq!(report["ready"], false);
        assert_eq!(
            report["channels"]["support-mail"],
            serde_json::json!({ "kind": "email", "state": "down", "error": "imap login refused", "restarts": 3 })
        );
        assert_eq!(report["channels"]["shop-api"]["state"], "up");

        // A channel whose loop has not started yet is not up.
        let mut more = channels.clone();
        more.insert(
            "new-mail".to_owned(),
            channel(
                "new-mail",
                "email",
                channels["support-mail"].connector.clone(),
            ),
        );
        let (ready, report) = readiness(true, &more, &all_up);
        assert!(!ready);
        assert_eq!(report["channels"]["new-mail"]["state"], "starting");
    }
}

#[cfg(test)]
mod api_auth_tests {
    use std::time::Duration;

    use tower::ServiceExt as _;

    use super::*;
    use crate::{settings::Topics, sink::Encoding, supervisor::Health};

    /// An API route refuses a request without the token before reading
    /// its body: the body here never ends, so reading it would hang.
    #[tokio::test]
    async fn api_routes_check_the_token_before_reading_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let log = omni_log::SqliteLog::open(
            &dir.path().join("events.sqlite3"),
            omni_log::SqliteLogConfig {
                max_batch: 16,
                queue_capacity: 16,
            },
        )
        .unwrap();
        let sink = LogSink::new(Arc::new(log), Topics::new("omni."), Encoding::Protobuf);
        let state = AppState::new(
            ChannelSet::new(),
            1024 * 1024,
            None,
            None,
            Health::default(),
        );
        let file = dir.path().join("token");
        std::fs::write(&file, "t0ken").unwrap();
        let secret = omni_connector::SecretRef::File(file).resolve().unwrap();
        state.enable_outbound_api(OutboundApi::new(ApiToken::new(&secret), sink));
        let app = router(state, Duration::from_secs(30));
        for path in ["/v1/commands", "/v1/customers/c-1/merge"] {
            let endless =
                Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
            let request = axum::http::Request::post(path)
                .header("content-type", "application/json")
                .header("content-length", "1048576")
                .body(endless)
                .unwrap();
            let response =
                tokio::time::timeout(Duration::from_secs(5), app.clone().oneshot(request))
                    .await
                    .expect("answered without reading the body")
                    .unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
            assert_eq!(response.headers()[header::CONNECTION], "close");
        }
    }
}
