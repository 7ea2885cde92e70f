//! The threading decision as a pure function: given an inbound event and
//! the slice of state it touches ([`Snapshot`]), compute everything that
//! changes ([`Plan`]).
//!
//! No I/O happens here (the sans-I/O split Tansu uses between protocol and
//! transport), so every rule is unit tested without a database, and both
//! stores run exactly the same decisions: a store only loads the snapshot
//! inside its transaction, calls [`plan`], and writes the plan back.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use omni_model::proto::kind_from_proto;
use omni_model::{Handle, HandleKind};
use omni_proto::v1::{
    Attachment, AttachmentStoredEntry, AutomatedReply, AutomatedReplyKind, ChannelKind, Content,
    ConversationEvent, ConversationState, ConversationStateChanged, ConversationTriaged,
    CustomersMerged, Direction, EventKind, IdentityHandle, IdentityLinkChanged, MessageEntry,
    ThreadingHints, TimelineEvent, timeline_event::Entry,
};
use omni_rules::{Priority, RuleBook};

use crate::error::ThreadingError;
use crate::ids::{CustomerId, HandleKey, conversation_id, timeline_entry_id};

/// How threading behaves; the daemon builds it from `config/omnid.toml`
/// and the channel files.
#[derive(Debug, Clone)]
pub struct ThreadingConfig {
    /// How far apart two emails with the same normalized subject (and no
    /// Message-ID link) may be and still share a conversation. Bounded,
    /// because "Order question" next year is a new issue.
    pub subject_window: Duration,
    /// How long a chat-like conversation may be idle before the next
    /// message opens a new one, unless the channel has its own timeout.
    pub default_idle_timeout: Duration,
    /// Per channel id idle timeouts (SMS threads live longer than web
    /// chats).
    pub idle_timeouts: HashMap<String, Duration>,
    /// Channel ids whose unverified claims are trusted as if verified (a
    /// form behind the business's own login). Empty by default: trusting a
    /// claim lets whoever typed it read that customer's history.
    pub trusted_claim_channels: HashSet<String>,
    /// The customer-service rules (`config/rules/`). Each inbound customer
    /// message on a channel a rule set covers is evaluated while it is
    /// threaded, and its conversation's tags and priority follow (tags add
    /// up, the priority only rises). The default, empty book covers no
    /// channel: threading then writes exactly what it writes without
    /// rules. Shared, because the daemon swaps whole books on reload and
    /// hands each batch the book of the moment.
    pub rules: Arc<RuleBook>,
}

impl Default for ThreadingConfig {
    fn default() -> Self {
        ThreadingConfig {
            subject_window: Duration::from_secs(7 * 24 * 3600),
            default_idle_timeout: Duration::from_secs(24 * 3600),
            idle_timeouts: HashMap::new(),
            trusted_claim_channels: HashSet::new(),
            rules: Arc::default(),
        }
    }
}

impl ThreadingConfig {
    fn idle_timeout_ms(&self, channel_id: &str) -> i64 {
        let timeout = self
            .idle_timeouts
            .get(channel_id)
            .copied()
            .unwrap_or(self.default_idle_timeout);
        i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX)
    }
}

/// One inbound record to thread: the event, plus further handles the
/// channel reported for the same person.
///
/// `ConversationEvent` carries only `sender` and `recipients`, so a
/// Telegram contact shared by its owner or an email typed into a chat form
/// has no field yet; the worker passes such handles as `claims` (see the
/// proposed additive `sender_identities` field). Each claim's `verified`
/// says whether the channel proved it.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundEvent {
    /// The event as read from `omni.inbound.v1`.
    pub event: ConversationEvent,
    /// Other handles of the same person.
    pub claims: Vec<IdentityHandle>,
}

impl InboundEvent {
    /// An event without extra claims.
    pub fn new(event: ConversationEvent) -> InboundEvent {
        InboundEvent {
            event,
            claims: Vec::new(),
        }
    }
}

/// Who owns a handle now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandleOwner {
    /// The owning customer (already resolved through merges).
    pub customer: CustomerId,
    /// Whether the link was proven (false for a customer created from an
    /// unverified sender, such as an email `From`).
    pub confirmed: bool,
}

/// A conversation as the logic needs it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Conversation {
    /// Its id.
    pub id: String,
    /// The customer it belongs to.
    pub customer: CustomerId,
    /// The channel instance it started on.
    pub channel_id: String,
    /// For chat-like channels the provider's chat id; empty for email.
    pub thread_key: String,
    /// Whether it is an email thread (threaded by Message-ID and subject).
    pub email: bool,
    /// Normalized subject of its first email.
    pub subject: String,
    /// Open or closed.
    pub open: bool,
    /// Time of its latest message, in ms since the epoch (event time).
    pub last_activity_ms: i64,
    /// Tags the customer-service rules gave it, in the order first given
    /// (without duplicates, compared without regard to ASCII case). Only
    /// ever grows. Absent from journals written before rules ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The most urgent priority the rules gave any of its messages; `None`
    /// until a rule set covered one. Only ever rises.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "priority_text"
    )]
    pub priority: Option<Priority>,
    /// When the rules last sent this conversation an acknowledgement or an
    /// auto-reply, which stands in for one (the customer message's event
    /// time): `rate_limits.acknowledgement_window`
    /// counts from it, and `customer_acknowledgements` counts the
    /// customer's conversations acknowledged within `customer_window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_acknowledgement_ms: Option<i64>,
    /// The latest keyword auto-replies sent in this conversation, oldest
    /// first, at most [`MAX_RECENT_AUTO_REPLIES`]: the same template is not
    /// sent again within `rate_limits.auto_reply_window`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auto_replies: Vec<SentAutoReply>,
    /// Whether an agent (not an automation) has answered in it: the
    /// customer's next message then gets the `next_response` target.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub agent_replied: bool,
    /// The oldest customer message no agent has answered yet, with its SLA
    /// deadline; `None` when every message is answered or no rule set
    /// gives the conversation a target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awaiting: Option<AwaitingResponse>,
}

/// A customer message awaiting an agent's answer, and where its SLA timer
/// stands. Times are event times (UTC milliseconds), so a replay fires
/// the timer at the same point of the timeline.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AwaitingResponse {
    /// The customer message's event id.
    pub event_id: String,
    /// When it was received.
    pub since_ms: i64,
    /// Whether it awaits the conversation's first answer.
    pub first: bool,
    /// The priority whose target the deadline is.
    #[serde(with = "priority_text::required")]
    pub priority: Priority,
    /// The rule set the target came from.
    pub rule_set: String,
    /// The target, in milliseconds of SLA time.
    pub target_ms: i64,
    /// When the answer is due (an answer at this instant is in time).
    pub due_ms: i64,
    /// When to escalate; equal to `due_ms` when there is no margin.
    pub escalate_at_ms: i64,
    /// The escalation was written.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub escalated: bool,
    /// The breach was written: the timer waits only for the answer now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub breached: bool,
}

impl AwaitingResponse {
    /// When its timer fires next: the escalation, then the first instant
    /// past the deadline; `None` once breached.
    pub fn next_timer_ms(&self) -> Option<i64> {
        if !self.escalated && self.escalate_at_ms < self.due_ms {
            Some(self.escalate_at_ms)
        } else if !self.breached {
            Some(self.due_ms.saturating_add(1))
        } else {
            None
        }
    }
}

impl Conversation {
    /// When its SLA timer fires next, if it has one.
    pub fn sla_timer_ms(&self) -> Option<i64> {
        self.awaiting.as_ref()?.next_timer_ms()
    }
}

/// How many auto-replies a conversation remembers. A window's worth in
/// practice (an auto-reply window is an hour by default, and one message
/// gets at most one), while the row stays small.
pub const MAX_RECENT_AUTO_REPLIES: usize = 16;

/// A keyword auto-reply sent in a conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SentAutoReply {
    /// The template sent.
    pub template: String,
    /// The customer message's event time, in ms since the epoch.
    pub at_ms: i64,
}

/// A conversation's priority in the embedded store's journal: its rule
/// file name (`"P1"`), which stays stable whatever the enum's layout.
mod priority_text {
    use omni_rules::Priority;
    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer>(
        priority: &Option<Priority>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match priority {
            Some(p) => serializer.serialize_some(p.as_str()),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Priority>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| Priority::parse(&text).map_err(D::Error::custom))
            .transpose()
    }

    /// The same for a priority that is always there.
    pub(super) mod required {
        use omni_rules::Priority;
        use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

        pub(in super::super) fn serialize<S: Serializer>(
            priority: &Priority,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            serializer.serialize_str(priority.as_str())
        }

        pub(in super::super) fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Priority, D::Error> {
            Priority::parse(&String::deserialize(deserializer)?).map_err(D::Error::custom)
        }
    }
}

/// The state an event touches, loaded by a store inside its transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The event id was threaded before.
    pub already_processed: bool,
    /// Owners of the event's handles (those without an owner are absent).
    pub owners: HashMap<HandleKey, HandleOwner>,
    /// Next sequence number of every owning customer.
    pub next_sequence: HashMap<CustomerId, u64>,
    /// The owning customers' open conversations, plus any conversation
    /// named by `message_refs` or `edited_conversation`, plus email
    /// conversations with the event's normalized subject.
    pub conversations: Vec<Conversation>,
    /// Email Message-IDs (from the event's In-Reply-To and References)
    /// already placed in one of the owning customers' conversations.
    pub message_refs: HashMap<String, String>,
    /// For an edit: the conversation of the edited event.
    pub edited_conversation: Option<String>,
    /// Segments of the owning customers that have one (set by helpdesk
    /// commands).
    pub segments: HashMap<CustomerId, String>,
}

/// What the store must query to build a [`Snapshot`], derived from the
/// event alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookups {
    /// The event id, for deduplication.
    pub event_id: String,
    /// Every handle whose owner matters, the sender's (or for an outbound
    /// message the recipient's) first.
    pub handles: Vec<HandleKey>,
    /// The event's claims, normalized, with whether the channel proved
    /// each (before channel trust): what [`plan_with`] reuses instead of
    /// normalizing every handle again.
    pub claims: Vec<(HandleKey, bool)>,
    /// Message-IDs to look up.
    pub message_ids: Vec<String>,
    /// Normalized subject for the fallback (empty: none).
    pub subject: String,
    /// Event id of the edited message, if this is an edit, or of the
    /// message an attachment update fills in.
    pub edits_event_id: Option<String>,
}

/// A conversation row to insert or update.
pub type ConversationWrite = Conversation;

/// Everything that changes when an event is threaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The customer the event belongs to after this plan.
    pub customer: CustomerId,
    /// True when `customer` does not exist yet.
    pub create_customer: bool,
    /// Customers merged into `customer` (in id order).
    pub merged: Vec<CustomerId>,
    /// Handles to link to `customer` (insert or move), with confirmation.
    pub links: Vec<(HandleKey, bool)>,
    /// Handles recorded as suggested links of `customer`.
    pub suggestions: Vec<HandleKey>,
    /// Conversations to insert or update.
    pub conversations: Vec<ConversationWrite>,
    /// Email Message-ID of this event, to record in the conversation.
    pub message_id: Option<String>,
    /// The conversation the message was placed in.
    pub conversation_id: String,
    /// Timeline entries in order, sequence numbers assigned.
    pub timeline: Vec<TimelineEvent>,
    /// The customer's next sequence number after this plan.
    pub next_sequence: u64,
    /// What the customer-service rules decided about the message: `None`
    /// unless it is an inbound customer message on a channel a rule set
    /// covers. Its tags and priority are already in `conversations` (and
    /// a `triaged` entry in `timeline` when they changed); the rest
    /// (acknowledgement, auto-reply, SLA deadline) is for the caller.
    pub automation: Option<omni_rules::Decision>,
}

/// The result of threading one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The event id was seen before: nothing changes.
    Duplicate,
    /// The event was threaded.
    Threaded(Box<Plan>),
}

/// Channels whose messages continue the open conversation.
fn is_chat_like(kind: i32) -> bool {
    !matches!(ChannelKind::try_from(kind), Ok(ChannelKind::Email))
}

/// The normalized handle of a proto handle.
pub(crate) fn key_of(handle: &IdentityHandle) -> Result<HandleKey, ThreadingError> {
    let kind =
        kind_from_proto(handle.kind).ok_or(ThreadingError::UnknownHandleKind(handle.kind))?;
    let scope = (!handle.scope.is_empty()).then_some(handle.scope.as_str());
    let normalized = Handle::provider(kind, &handle.value, scope).map_err(|source| {
        ThreadingError::InvalidHandle {
            kind: kind.as_str(),
            source,
        }
    })?;
    Ok(HandleKey::from_handle(&normalized))
}

/// The handle that says who the customer is: the sender of an inbound
/// message, the first recipient of an outbound one.
fn customer_handle(event: &ConversationEvent) -> Result<&IdentityHandle, ThreadingError> {
    let handle = match Direction::try_from(event.direction) {
        Ok(Direction::Outbound) => event.recipients.first(),
        _ => event.sender.as_ref(),
    };
    handle.ok_or(ThreadingError::MissingCustomerHandle)
}

/// The event's claims, normalized, each with whether the channel proved
/// it, including those a channel implies: a WhatsApp id is a phone number
/// WhatsApp verified by SMS, so it proves the E.164 number (which is how
/// SMS and WhatsApp of one person meet).
fn claims_of(input: &InboundEvent, primary: &IdentityHandle) -> Vec<(HandleKey, bool)> {
    let mut claims = Vec::new();
    let implied = |h: &IdentityHandle, claims: &mut Vec<(HandleKey, bool)>| {
        if kind_from_proto(h.kind) == Some(HandleKind::Whatsapp)
            && let Ok(phone) = Handle::phone(&format!("+{}", h.value), None)
        {
            claims.push((HandleKey::from_handle(&phone), h.verified));
        }
    };
    implied(primary, &mut claims);
    for claim in &input.claims {
        // A claim that cannot be normalized is ignored rather than failing
        // the message: the message itself is fine.
        if let Ok(key) = key_of(claim) {
            claims.push((key, claim.verified));
            implied(claim, &mut claims);
        }
    }
    claims
}

/// What [`plan`] needs looked up for `input`.
pub fn lookups(input: &InboundEvent) -> Result<Lookups, ThreadingError> {
    let event = &input.event;
    if event.kind == EventKind::AttachmentStored as i32 {
        // Its message says who and where; nothing else is looked up.
        let update = event
            .attachment_stored
            .as_ref()
            .ok_or(ThreadingError::MissingAttachmentUpdate)?;
        return Ok(Lookups {
            event_id: event.event_id.clone(),
            handles: Vec::new(),
            claims: Vec::new(),
            message_ids: Vec::new(),
            subject: String::new(),
            edits_event_id: Some(update.message_event_id.clone()),
        });
    }
    let primary = customer_handle(event)?;
    let mut handles = vec![key_of(primary)?];
    let claims = claims_of(input, primary);
    for (key, _) in &claims {
        if !handles.contains(key) {
            handles.push(key.clone());
        }
    }
    let hints = event.threading.clone().unwrap_or_default();
    let mut message_ids: Vec<String> = hints.in_reply_to.clone();
    message_ids.extend(hints.references.iter().cloned());
    let edits_event_id = (event.kind == EventKind::Edit as i32 && !hints.edits_event_id.is_empty())
        .then(|| hints.edits_event_id.clone());
    Ok(Lookups {
        event_id: event.event_id.clone(),
        handles,
        claims,
        message_ids,
        subject: hints.normalized_subject,
        edits_event_id,
    })
}

/// The event's time in ms since the epoch, from the provider's receipt
/// time (the sender's clock may be wrong), else our ingest time. Event time,
/// never the wall clock, drives idle timeouts, so a replay decides the same.
pub fn event_time_ms(event: &ConversationEvent) -> i64 {
    timestamp_ms(
        event
            .received_at
            .as_ref()
            .or(event.ingested_at.as_ref())
            .or(event.sent_at.as_ref()),
    )
}

/// Milliseconds since the epoch of a protobuf timestamp (0 when unset).
pub(crate) fn timestamp_ms(t: Option<&omni_proto::Timestamp>) -> i64 {
    t.map_or(0, |t| {
        t.seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(t.nanos / 1_000_000))
    })
}

/// Decides how `input` is threaded, given the state it touches.
pub fn plan(
    config: &ThreadingConfig,
    input: &InboundEvent,
    snapshot: &Snapshot,
) -> Result<Decision, ThreadingError> {
    plan_with(config, input, &lookups(input)?, snapshot)
}

/// [`plan`] with the event's [`lookups`] already worked out (as a store
/// has them): normalizing handles, phone numbers above all, is the
/// costliest part of threading an event, so it is done once.
pub fn plan_with(
    config: &ThreadingConfig,
    input: &InboundEvent,
    lookups: &Lookups,
    snapshot: &Snapshot,
) -> Result<Decision, ThreadingError> {
    if snapshot.already_processed {
        return Ok(Decision::Duplicate);
    }
    let event = &input.event;
    if event.event_id.is_empty() {
        return Err(ThreadingError::MissingEventId);
    }
    if event.kind == EventKind::AttachmentStored as i32 {
        return plan_attachment(event, snapshot);
    }
    let now = event_time_ms(event);
    let trusted = config.trusted_claim_channels.contains(&event.channel_id);
    let primary_handle = customer_handle(event)?;
    let primary = lookups
        .handles
        .first()
        .cloned()
        .ok_or(ThreadingError::MissingCustomerHandle)?;
    let primary_proven = primary_handle.verified || trusted;

    // Identity: the anchor group is what this event proves to be one
    // person. An unproven sender proves nothing, so then it is the sender
    // alone and every claim is only a suggestion.
    let mut anchors: Vec<(HandleKey, bool)> = vec![(primary.clone(), primary_proven)];
    let mut suggestions = Vec::new();
    for (key, proven) in &lookups.claims {
        if anchors.iter().any(|(k, _)| k == key) || suggestions.contains(key) {
            continue;
        }
        if (*proven || trusted) && primary_proven {
            anchors.push((key.clone(), true));
        } else {
            suggestions.push(key.clone());
        }
    }
    let owners: BTreeSet<CustomerId> = anchors
        .iter()
        .filter_map(|(k, _)| snapshot.owners.get(k).map(|o| o.customer.clone()))
        .collect();
    // The survivor is the smallest id derived from any handle of the
    // cluster, so the same set of handles always ends under the same id.
    let survivor = anchors
        .iter()
        .filter(|(k, _)| !snapshot.owners.contains_key(k))
        .map(|(k, _)| CustomerId::for_handle(k))
        .chain(owners.iter().cloned())
        .min()
        .unwrap_or_else(|| CustomerId::for_handle(&primary));
    let create_customer = !owners.contains(&survivor);
    let merged: Vec<CustomerId> = owners.iter().filter(|c| **c != survivor).cloned().collect();
    let cluster: BTreeSet<&CustomerId> = owners.iter().chain([&survivor]).collect();

    let mut links = Vec::new();
    for (key, proven) in &anchors {
        match snapshot.owners.get(key) {
            None => links.push((key.clone(), *proven)),
            Some(owner) if *proven && !owner.confirmed => links.push((key.clone(), true)),
            Some(_) => {}
        }
    }
    // A suggestion already owned by the cluster is no news.
    suggestions.retain(|k| {
        snapshot
            .owners
            .get(k)
            .is_none_or(|o| !cluster.contains(&o.customer))
    });

    let mut sequence = snapshot.next_sequence.get(&survivor).copied().unwrap_or(1);
    let recorded_at = event.ingested_at.or(event.received_at);
    let mut timeline = Vec::new();
    let mut push = |id: String, conversation: &str, entry: Entry, timeline: &mut Vec<_>| {
        timeline.push(TimelineEvent {
            timeline_event_id: id,
            customer_id: survivor.as_str().to_owned(),
            sequence,
            conversation_id: conversation.to_owned(),
            recorded_at,
            entry: Some(entry),
        });
        sequence += 1;
    };

    if !merged.is_empty() {
        push(
            timeline_entry_id(&event.event_id, &format!("merge\u{0}{survivor}")),
            "",
            Entry::Merged(CustomersMerged {
                merged_customer_ids: merged.iter().map(|c| c.as_str().to_owned()).collect(),
                reason: "verified_handle".to_owned(),
                actor: String::new(),
            }),
            &mut timeline,
        );
    }
    for (key, confirmed) in &links {
        push(
            timeline_entry_id(&event.event_id, &format!("link\u{0}{key}")),
            "",
            Entry::Identity(IdentityLinkChanged {
                handle: Some(key.to_proto(*confirmed)),
                linked: true,
                confirmed: *confirmed,
                ..Default::default()
            }),
            &mut timeline,
        );
    }
    for key in &suggestions {
        push(
            timeline_entry_id(&event.event_id, &format!("suggest\u{0}{key}")),
            "",
            Entry::Identity(IdentityLinkChanged {
                handle: Some(key.to_proto(false)),
                linked: true,
                confirmed: false,
                ..Default::default()
            }),
            &mut timeline,
        );
    }

    // SLA timers of the customer's conversations that fell due before
    // this event: written first, at their own times, as the daemon's
    // clock writes them when it notices first (see `sla`).
    let mut writes: Vec<Conversation> = Vec::new();
    let mut fired_conversations: Vec<Conversation>;
    let due = |c: &Conversation| {
        cluster.contains(&c.customer) && c.sla_timer_ms().is_some_and(|t| t <= now)
    };
    let conversations: &[Conversation] = if snapshot.conversations.iter().any(due) {
        let mut fired = Vec::new();
        fired_conversations = snapshot.conversations.clone();
        for c in fired_conversations.iter_mut().filter(|c| due(c)) {
            fired.extend(
                crate::sla::fire(c, now)
                    .into_iter()
                    .map(|f| (f.at_ms, c.id.clone(), f)),
            );
            writes.push(c.clone());
        }
        fired.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        for (at_ms, conversation_id, fired) in fired {
            push(fired.id, &conversation_id, fired.entry, &mut timeline);
            if let Some(last) = timeline.last_mut() {
                last.recorded_at = Some(crate::sla::timestamp(at_ms));
            }
        }
        &fired_conversations
    } else {
        &snapshot.conversations
    };

    // Conversation.
    let hints = event.threading.clone().unwrap_or_default();
    let mine = |c: &&Conversation| cluster.contains(&c.customer);
    let find = |id: &str| conversations.iter().filter(mine).find(|c| c.id == id);
    let email = !is_chat_like(event.channel_kind);
    let thread_key = if email {
        String::new()
    } else {
        hints.provider_chat_id.clone()
    };
    let mut chosen: Option<Conversation> = snapshot
        .edited_conversation
        .as_deref()
        .and_then(find)
        .cloned();
    if chosen.is_none() && email {
        chosen = hints
            .in_reply_to
            .iter()
            .chain(hints.references.iter().rev())
            .filter_map(|id| snapshot.message_refs.get(id))
            .find_map(|conv| find(conv))
            .cloned();
        if chosen.is_none() && !hints.normalized_subject.is_empty() {
            let window = i64::try_from(config.subject_window.as_millis()).unwrap_or(i64::MAX);
            chosen = conversations
                .iter()
                .filter(mine)
                .filter(|c| c.email && c.subject == hints.normalized_subject)
                .filter(|c| (now - c.last_activity_ms).abs() <= window)
                .max_by(|a, b| (a.last_activity_ms, &a.id).cmp(&(b.last_activity_ms, &b.id)))
                .cloned();
        }
    }
    if chosen.is_none() && !email {
        let timeout = config.idle_timeout_ms(&event.channel_id);
        if let Some(open) = conversations
            .iter()
            .filter(mine)
            .filter(|c| {
                c.open && !c.email && c.channel_id == event.channel_id && c.thread_key == thread_key
            })
            .max_by(|a, b| (a.last_activity_ms, &a.id).cmp(&(b.last_activity_ms, &b.id)))
        {
            if now.saturating_sub(open.last_activity_ms) <= timeout {
                chosen = Some(open.clone());
            } else {
                let mut closed = open.clone();
                closed.open = false;
                // Closing stops its SLA timer (those already due fired
                // above).
                closed.awaiting = None;
                closed.customer = survivor.clone();
                push(
                    timeline_entry_id(&event.event_id, &format!("close\u{0}{}", closed.id)),
                    &closed.id,
                    Entry::Conversation(ConversationStateChanged {
                        state: ConversationState::Closed as i32,
                        reason: "idle_timeout".to_owned(),
                        actor: String::new(),
                    }),
                    &mut timeline,
                );
                writes.push(closed);
            }
        }
    }
    // An activity (a follow, a menu tap, a session notice) belongs in the
    // open conversation when there is one, but never opens, reopens or
    // prolongs one: a stream of location reports must not keep a
    // conversation open for ever, nor an unfollow open a new one.
    if event.kind == EventKind::Activity as i32 {
        let conversation_id = chosen.filter(|c| c.open).map(|c| c.id).unwrap_or_default();
        keep_last_writes(&mut writes);
        push(
            event.event_id.clone(),
            &conversation_id,
            Entry::Message(MessageEntry {
                event: Some(event.clone()),
                opened_conversation: false,
                other_open_conversation_ids: Vec::new(),
            }),
            &mut timeline,
        );
        return Ok(Decision::Threaded(Box::new(Plan {
            customer: survivor,
            create_customer,
            merged,
            links,
            suggestions,
            conversations: writes,
            message_id: None,
            conversation_id,
            timeline,
            next_sequence: sequence,
            automation: None,
        })));
    }
    let opened = chosen.is_none();
    let mut conversation = match chosen {
        Some(c) => c,
        None => Conversation {
            id: conversation_id(&event.event_id),
            customer: survivor.clone(),
            channel_id: event.channel_id.clone(),
            thread_key,
            email,
            subject: hints.normalized_subject.clone(),
            open: true,
            last_activity_ms: now,
            tags: Vec::new(),
            priority: None,
            last_acknowledgement_ms: None,
            auto_replies: Vec::new(),
            agent_replied: false,
            awaiting: None,
        },
    };
    let reopened = !conversation.open;
    if reopened {
        conversation.open = true;
        push(
            timeline_entry_id(&event.event_id, &format!("reopen\u{0}{}", conversation.id)),
            &conversation.id,
            Entry::Conversation(ConversationStateChanged {
                state: ConversationState::Open as i32,
                reason: "new_message".to_owned(),
                actor: String::new(),
            }),
            &mut timeline,
        );
    }
    conversation.customer = survivor.clone();
    conversation.last_activity_ms = conversation.last_activity_ms.max(now);
    // The rules only look at what a customer wrote: not at our replies
    // or their statuses, edits (the original was evaluated), file updates
    // or activities; and only where a rule set covers the channel, so an
    // empty book costs nothing.
    let channel_kind = ChannelKind::try_from(event.channel_kind).unwrap_or_default();
    let rules_apply = is_customer_message(event)
        && config
            .rules
            .rule_set_for(&event.channel_id, channel_kind)
            .is_some();
    let other_open: Vec<String> = if opened || rules_apply {
        let closed: HashSet<&str> = writes.iter().map(|c| c.id.as_str()).collect();
        let mut ids: Vec<String> = conversations
            .iter()
            .filter(mine)
            .filter(|c| c.open && c.id != conversation.id && !closed.contains(c.id.as_str()))
            .map(|c| c.id.clone())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    } else {
        Vec::new()
    };
    let (automation, triaged) = if rules_apply {
        let state = if opened {
            omni_rules::ConversationState::New
        } else if reopened {
            omni_rules::ConversationState::Reopened
        } else {
            omni_rules::ConversationState::Ongoing
        };
        let other_open = u32::try_from(other_open.len()).unwrap_or(u32::MAX);
        // The customer's acknowledged conversations among those loaded
        // (this one as it stands before the message), once each.
        let acknowledged: HashMap<&str, i64> = conversations
            .iter()
            .filter(mine)
            .filter(|c| c.id != conversation.id)
            .chain([&conversation])
            .filter_map(|c| Some((c.id.as_str(), c.last_acknowledgement_ms?)))
            .collect();
        let mut customer_acknowledgements: Vec<i64> = acknowledged.into_values().collect();
        customer_acknowledgements.sort_unstable();
        // The survivor's segment, or (merging now) a merged customer's,
        // as the merge keeps it.
        let segment = snapshot
            .segments
            .get(&survivor)
            .or_else(|| cluster.iter().find_map(|c| snapshot.segments.get(*c)))
            .map(String::as_str);
        let decision = evaluate_message(
            &config.rules,
            event,
            &conversation,
            state,
            other_open,
            &customer_acknowledgements,
            segment,
        );
        let triaged = triage(&mut conversation, &event.event_id, &decision);
        (Some(decision), triaged)
    } else {
        (None, None)
    };
    let replies = automation
        .as_ref()
        .map(|decision| record_replies(&mut conversation, event, decision, now))
        .unwrap_or_default();
    if let Some(decision) = &automation
        && let (Some(deadline), Some(rule_set)) = (&decision.sla, &decision.rule_set)
    {
        crate::sla::start(&mut conversation, &event.event_id, now, rule_set, deadline);
    }
    let answered = if crate::sla::is_agent_answer(event) {
        crate::sla::answer(&mut conversation, &event.event_id, now)
    } else {
        None
    };
    let conversation_id = conversation.id.clone();
    push(
        event.event_id.clone(),
        &conversation_id,
        Entry::Message(MessageEntry {
            event: Some(event.clone()),
            opened_conversation: opened,
            other_open_conversation_ids: if opened { other_open } else { Vec::new() },
        }),
        &mut timeline,
    );
    if let Some(triaged) = triaged {
        push(
            timeline_entry_id(&event.event_id, &format!("triage\u{0}{conversation_id}")),
            &conversation_id,
            Entry::Triaged(triaged),
            &mut timeline,
        );
    }
    for (name, reply) in replies {
        push(
            timeline_entry_id(&event.event_id, &format!("automated-reply\u{0}{name}")),
            &conversation_id,
            Entry::AutomatedReply(reply),
            &mut timeline,
        );
    }
    if let Some(answered) = answered {
        push(answered.id, &conversation_id, answered.entry, &mut timeline);
    }
    writes.push(conversation);
    keep_last_writes(&mut writes);

    Ok(Decision::Threaded(Box::new(Plan {
        customer: survivor,
        create_customer,
        merged,
        links,
        suggestions,
        conversations: writes,
        message_id: (email && !hints.message_id.is_empty()).then(|| hints.message_id.clone()),
        conversation_id,
        timeline,
        next_sequence: sequence,
        automation,
    })))
}

/// Drops all but the last write of each conversation (a timer fired in
/// one, then the event changed it again): a store writes each row once
/// per plan.
fn keep_last_writes(writes: &mut Vec<Conversation>) {
    if writes.len() < 2 {
        return;
    }
    let mut seen = HashSet::new();
    let mut kept: Vec<Conversation> = writes
        .drain(..)
        .rev()
        .filter(|c| seen.insert(c.id.clone()))
        .collect();
    kept.reverse();
    *writes = kept;
}

/// Whether the customer-service rules look at `event`: a new message from
/// the customer.
fn is_customer_message(event: &ConversationEvent) -> bool {
    event.kind == EventKind::Message as i32 && event.direction == Direction::Inbound as i32
}

/// Keys of `provider_metadata` the email channel sets to `"true"` for mail
/// a machine sent (an automatic reply, a bounce, bulk mail; from the
/// `Auto-Submitted`, `Precedence`, `List-Id`, ... headers).
/// `auto_acknowledgement` is what our own automated replies carry (and
/// what another Omnid, or a helpdesk marking its automatic answers, sends):
/// answering one could start a loop between two automations.
const AUTOMATED_KEYS: [&str; 4] = ["auto_reply", "bounce", "bulk", "auto_acknowledgement"];

/// Whether the event says a machine sent it.
pub(crate) fn is_automated(event: &ConversationEvent) -> bool {
    AUTOMATED_KEYS.iter().any(|key| {
        event
            .provider_metadata
            .get(*key)
            .is_some_and(|v| v == "true")
    })
}

/// Evaluates the rules for an inbound customer message placed in
/// `conversation`. The text matched is the subject (if any) and what the
/// customer wrote this time, without the quoted earlier messages: a
/// keyword deep in a quoted thread is not what they ask now.
fn evaluate_message(
    rules: &RuleBook,
    event: &ConversationEvent,
    conversation: &Conversation,
    state: omni_rules::ConversationState,
    other_open_conversations: u32,
    customer_acknowledgements_ms: &[i64],
    customer_segment: Option<&str>,
) -> omni_rules::Decision {
    let content = event.content.as_ref();
    let body = content.map_or("", |c| {
        if c.new_text.is_empty() {
            &c.text
        } else {
            &c.new_text
        }
    });
    let subject = content.map_or("", |c| c.subject.as_str());
    let with_subject;
    let text = if subject.is_empty() {
        body
    } else {
        with_subject = format!("{subject}\n{body}");
        &with_subject
    };
    rules.evaluate(&omni_rules::Facts {
        channel_id: &event.channel_id,
        channel_kind: ChannelKind::try_from(event.channel_kind).unwrap_or_default(),
        conversation_ref: &conversation.id,
        // `{customer_name}` in templates: the name the channel gave the
        // sender (an email's display name, a Telegram user's name).
        customer_name: event
            .sender
            .as_ref()
            .map(|sender| sender.display_name.as_str())
            .filter(|name| !name.is_empty()),
        conversation: state,
        customer_segment,
        other_open_conversations,
        event_time_ms: event_time_ms(event),
        text,
        // What the channel says (Telegram's `language_code`, a page's
        // `lang`) beats detection from the text.
        language_hint: (!event.language.is_empty()).then_some(event.language.as_str()),
        automated: is_automated(event),
        last_acknowledgement_ms: conversation.last_acknowledgement_ms,
        agent_has_replied: conversation.agent_replied,
        conversation_priority: conversation.priority,
        customer_acknowledgements_ms,
        recent_auto_replies: &conversation
            .auto_replies
            .iter()
            .map(|sent| omni_rules::SentAutoReply {
                template: sent.template.clone(),
                at_ms: sent.at_ms,
            })
            .collect::<Vec<_>>(),
        ..omni_rules::Facts::default()
    })
}

/// The replies `decision` sends, as timeline entries (the acknowledgement,
/// then the auto-reply; the engine sends at most one of them), each with
/// the name its ids derive from; records them on `conversation` so the
/// rate limits see them.
fn record_replies(
    conversation: &mut Conversation,
    event: &ConversationEvent,
    decision: &omni_rules::Decision,
    now_ms: i64,
) -> Vec<(&'static str, AutomatedReply)> {
    let mut replies = Vec::new();
    if let Some(reply) = decision.acknowledgement.reply() {
        conversation.last_acknowledgement_ms = Some(now_ms);
        replies.push((
            "acknowledgement",
            automated_reply(event, AutomatedReplyKind::Acknowledgement, reply),
        ));
    }
    if let Some(reply) = decision.auto_reply.reply() {
        // It stands in for the acknowledgement (the engine sends none
        // beside it), for the rate limits too: the customer's next
        // message within the window is not acknowledged on top.
        conversation.last_acknowledgement_ms = Some(now_ms);
        conversation.auto_replies.push(SentAutoReply {
            template: reply.template.clone(),
            at_ms: now_ms,
        });
        let excess = conversation
            .auto_replies
            .len()
            .saturating_sub(MAX_RECENT_AUTO_REPLIES);
        conversation.auto_replies.drain(..excess);
        replies.push((
            "auto-reply",
            automated_reply(event, AutomatedReplyKind::AutoReply, reply),
        ));
    }
    replies
}

/// The name of a reply kind in ids (`provider_message_id`, entry ids).
fn reply_kind_name(kind: AutomatedReplyKind) -> &'static str {
    match kind {
        AutomatedReplyKind::AutoReply => "auto-reply",
        AutomatedReplyKind::Acknowledgement | AutomatedReplyKind::Unspecified => "acknowledgement",
    }
}

/// The timeline entry of an automatic reply to `trigger`, with the
/// outbound message to send. Everything in it derives from the trigger and
/// the reply (times are the trigger's event time), so a replay builds the
/// same bytes and the same outbound event id, which the outbound
/// dispatcher sends once.
fn automated_reply(
    trigger: &ConversationEvent,
    kind: AutomatedReplyKind,
    reply: &omni_rules::Reply,
) -> AutomatedReply {
    let provider_message_id = format!(
        "automation/{}/{}/{}",
        reply_kind_name(kind),
        reply.rule,
        trigger.event_id
    );
    let email = trigger.channel_kind == ChannelKind::Email as i32;
    let hints = trigger.threading.clone().unwrap_or_default();
    let subject = trigger.content.as_ref().map_or("", |c| c.subject.trim());
    let subject = if !email || subject.is_empty() {
        String::new()
    } else if subject
        .get(..3)
        .is_some_and(|re| re.eq_ignore_ascii_case("re:"))
    {
        subject.to_owned()
    } else {
        format!("Re: {subject}")
    };
    let threading = if email {
        let mut references = hints.references.clone();
        let mut in_reply_to = Vec::new();
        if !hints.message_id.is_empty() {
            in_reply_to.push(hints.message_id.clone());
            references.push(hints.message_id.clone());
        }
        ThreadingHints {
            in_reply_to,
            references,
            normalized_subject: hints.normalized_subject.clone(),
            ..Default::default()
        }
    } else {
        // Chat channels answer in the chat the customer wrote in.
        ThreadingHints {
            provider_chat_id: hints.provider_chat_id.clone(),
            ..Default::default()
        }
    };
    let time = trigger
        .received_at
        .or(trigger.ingested_at)
        .or(trigger.sent_at);
    let outbound = ConversationEvent {
        event_id: omni_model::event_id(&trigger.channel_id, &provider_message_id).to_string(),
        channel_id: trigger.channel_id.clone(),
        channel_kind: trigger.channel_kind,
        direction: Direction::Outbound as i32,
        kind: EventKind::Message as i32,
        provider_message_id,
        recipients: trigger.sender.clone().into_iter().collect(),
        content: Some(Content {
            text: reply.text.clone(),
            subject,
            ..Default::default()
        }),
        threading: Some(threading),
        provider_metadata: [
            ("auto_acknowledgement".to_owned(), "true".to_owned()),
            ("automation_rule".to_owned(), reply.rule.clone()),
        ]
        .into(),
        language: reply.language.as_str().to_owned(),
        sent_at: time,
        ingested_at: time,
        ..Default::default()
    };
    AutomatedReply {
        event_id: trigger.event_id.clone(),
        kind: kind as i32,
        rule: reply.rule.clone(),
        template: reply.template.clone(),
        language: reply.language.as_str().to_owned(),
        outbound: Some(outbound),
    }
}

/// Applies a decision's tags and priority to `conversation`: tags add up
/// (the conversation's first, then new ones in the rules' order) and the
/// priority only rises (the more urgent of the two). The entry to write
/// when either changed; `None` when no rule set covered the message or
/// nothing changed.
fn triage(
    conversation: &mut Conversation,
    event_id: &str,
    decision: &omni_rules::Decision,
) -> Option<ConversationTriaged> {
    let rule_set = decision.rule_set.as_ref()?;
    let mut changed = false;
    for tag in &decision.tags {
        if !conversation
            .tags
            .iter()
            .any(|t| t.eq_ignore_ascii_case(tag))
        {
            conversation.tags.push(tag.clone());
            changed = true;
        }
    }
    let priority = conversation
        .priority
        .map_or(decision.priority, |p| p.most_urgent(decision.priority));
    if conversation.priority != Some(priority) {
        conversation.priority = Some(priority);
        changed = true;
    }
    changed.then(|| ConversationTriaged {
        event_id: event_id.to_owned(),
        tags: conversation.tags.clone(),
        priority: priority_to_proto(priority) as i32,
        rule_set: rule_set.clone(),
        matched_rules: decision.matched_rules.clone(),
        language: decision.language.as_str().to_owned(),
    })
}

/// A rules priority as the stream's enum.
pub(crate) fn priority_to_proto(priority: Priority) -> omni_proto::v1::Priority {
    match priority {
        Priority::P1 => omni_proto::v1::Priority::P1,
        Priority::P2 => omni_proto::v1::Priority::P2,
        Priority::P3 => omni_proto::v1::Priority::P3,
        Priority::P4 => omni_proto::v1::Priority::P4,
    }
}

/// Places an attachment update in its message's conversation, on the
/// timeline of the customer that conversation belongs to now: one entry,
/// and no other change (the conversation's activity time stays, so a
/// slow download never keeps a chat open). The store also rewrites the
/// message's own entry ([`apply_stored_attachment`]).
fn plan_attachment(
    event: &ConversationEvent,
    snapshot: &Snapshot,
) -> Result<Decision, ThreadingError> {
    let update = event
        .attachment_stored
        .clone()
        .ok_or(ThreadingError::MissingAttachmentUpdate)?;
    let conversation = snapshot
        .edited_conversation
        .as_deref()
        .and_then(|id| snapshot.conversations.iter().find(|c| c.id == id))
        .ok_or_else(|| ThreadingError::UnthreadedMessage(update.message_event_id.clone()))?;
    let customer = conversation.customer.clone();
    let sequence = snapshot.next_sequence.get(&customer).copied().unwrap_or(1);
    let entry = TimelineEvent {
        timeline_event_id: event.event_id.clone(),
        customer_id: customer.as_str().to_owned(),
        sequence,
        conversation_id: conversation.id.clone(),
        recorded_at: event.ingested_at.or(event.received_at),
        entry: Some(Entry::AttachmentStored(AttachmentStoredEntry {
            message_event_id: update.message_event_id,
            attachment_index: update.attachment_index,
            attachment: update.attachment,
            error: update.error,
        })),
    };
    Ok(Decision::Threaded(Box::new(Plan {
        customer,
        create_customer: false,
        merged: Vec::new(),
        links: Vec::new(),
        suggestions: Vec::new(),
        conversations: Vec::new(),
        message_id: None,
        conversation_id: conversation.id.clone(),
        timeline: vec![entry],
        next_sequence: sequence + 1,
        automation: None,
    })))
}

/// Fills a message's timeline entry in with a stored file: attachment
/// `index` takes the file's `uri`, `sha256` and `size`, and its media type
/// when the update names one; its name stays. False when nothing changed
/// (not a message, no such attachment, or applied before), so applying an
/// update twice writes nothing.
pub fn apply_stored_attachment(entry: &mut TimelineEvent, index: u32, stored: &Attachment) -> bool {
    let Some(Entry::Message(message)) = &mut entry.entry else {
        return false;
    };
    let Some(attachment) = message
        .event
        .as_mut()
        .and_then(|e| e.content.as_mut())
        .and_then(|c| c.attachments.get_mut(index as usize))
    else {
        return false;
    };
    let mut filled = attachment.clone();
    filled.uri.clone_from(&stored.uri);
    filled.sha256.clone_from(&stored.sha256);
    filled.size = stored.size;
    if !stored.media_type.is_empty() {
        filled.media_type.clone_from(&stored.media_type);
    }
    if *attachment == filled {
        return false;
    }
    *attachment = filled;
    true
}

#[cfg(test)]
mod tests {
    use omni_proto::Timestamp;
    use omni_proto::v1::{HandleKind as P, ThreadingHints};

    use super::*;

    fn event(id: &str, kind: ChannelKind, sender: IdentityHandle, at: i64) -> ConversationEvent {
        let time = Some(Timestamp {
            seconds: at,
            nanos: 0,
        });
        ConversationEvent {
            event_id: id.into(),
            channel_id: "ch".into(),
            channel_kind: kind as i32,
            direction: Direction::Inbound as i32,
            kind: EventKind::Message as i32,
            sender: Some(sender),
            received_at: time,
            ingested_at: time,
            ..Default::default()
        }
    }

    fn phone(verified: bool) -> IdentityHandle {
        IdentityHandle {
            kind: P::Phone as i32,
            value: "+14155550134".into(),
            verified,
            ..Default::default()
        }
    }

    fn threaded(decision: Decision) -> Plan {
        match decision {
            Decision::Threaded(plan) => *plan,
            Decision::Duplicate => panic!("duplicate"),
        }
    }

    /// A snapshot in which `plan`'s writes are committed.
    fn after(plan: &Plan, handle: &HandleKey) -> Snapshot {
        Snapshot {
            owners: [(
                handle.clone(),
                HandleOwner {
                    customer: plan.customer.clone(),
                    confirmed: true,
                },
            )]
            .into(),
            next_sequence: [(plan.customer.clone(), plan.next_sequence)].into(),
            conversations: plan.conversations.clone(),
            ..Default::default()
        }
    }

    #[test]
    fn chat_continues_until_idle() {
        let config = ThreadingConfig {
            idle_timeouts: [("ch".to_owned(), Duration::from_secs(60))].into(),
            ..Default::default()
        };
        let first = InboundEvent::new(event("a", ChannelKind::Sms, phone(true), 0));
        let p1 = threaded(plan(&config, &first, &Snapshot::default()).unwrap());
        assert!(p1.create_customer);
        let key = lookups(&first).unwrap().handles[0].clone();
        let second = InboundEvent::new(event("b", ChannelKind::Sms, phone(true), 30));
        let p2 = threaded(plan(&config, &second, &after(&p1, &key)).unwrap());
        assert_eq!(p2.conversation_id, p1.conversation_id, "within the timeout");
        assert_eq!(p2.timeline[0].sequence, p1.next_sequence);
        let third = InboundEvent::new(event("c", ChannelKind::Sms, phone(true), 200));
        let p3 = threaded(plan(&config, &third, &after(&p2, &key)).unwrap());
        assert_ne!(p3.conversation_id, p1.conversation_id, "idle: a new one");
        assert!(matches!(
            &p3.timeline[0].entry,
            Some(Entry::Conversation(c)) if c.reason == "idle_timeout"
        ));
    }

    #[test]
    fn email_threads_by_reference_and_flags_other_open_conversations() {
        let config = ThreadingConfig::default();
        let sender = IdentityHandle {
            kind: P::Email as i32,
            value: "ana@example.com".into(),
            ..Default::default()
        };
        let mut first = event("a", ChannelKind::Email, sender.clone(), 0);
        first.threading = Some(ThreadingHints {
            message_id: "m1@x".into(),
            normalized_subject: "Refund".into(),
            ..Default::default()
        });
        let first = InboundEvent::new(first);
        let p1 = threaded(plan(&config, &first, &Snapshot::default()).unwrap());
        assert_eq!(p1.message_id.as_deref(), Some("m1@x"));
        let key = lookups(&first).unwrap().handles[0].clone();

        let mut reply = event("b", ChannelKind::Email, sender.clone(), 100);
        reply.threading = Some(ThreadingHints {
            in_reply_to: vec!["m1@x".into()],
            normalized_subject: "Something else".into(),
            ..Default::default()
        });
        let mut snapshot = after(&p1, &key);
        snapshot
            .message_refs
            .insert("m1@x".into(), p1.conversation_id.clone());
        let p2 = threaded(plan(&config, &InboundEvent::new(reply), &snapshot).unwrap());
        assert_eq!(p2.conversation_id, p1.conversation_id);

        // A new subject outside any thread opens a second conversation and
        // names the first, still open.
        let mut other = event("c", ChannelKind::Email, sender, 200);
        other.threading = Some(ThreadingHints {
            normalized_subject: "New topic".into(),
            ..Default::default()
        });
        let p3 = threaded(plan(&config, &InboundEvent::new(other), &after(&p2, &key)).unwrap());
        assert_ne!(p3.conversation_id, p1.conversation_id);
        let Some(Entry::Message(m)) = &p3.timeline[0].entry else {
            panic!("message entry")
        };
        assert!(m.opened_conversation);
        assert_eq!(
            m.other_open_conversation_ids,
            std::slice::from_ref(&p1.conversation_id)
        );
    }

    #[test]
    fn subject_fallback_is_bounded_by_the_window() {
        let config = ThreadingConfig::default();
        let sender = IdentityHandle {
            kind: P::Email as i32,
            value: "ana@example.com".into(),
            ..Default::default()
        };
        let with_subject = |id: &str, at: i64| {
            let mut e = event(id, ChannelKind::Email, sender.clone(), at);
            e.threading = Some(ThreadingHints {
                normalized_subject: "Refund".into(),
                ..Default::default()
            });
            InboundEvent::new(e)
        };
        let first = with_subject("a", 0);
        let p1 = threaded(plan(&config, &first, &Snapshot::default()).unwrap());
        let key = lookups(&first).unwrap().handles[0].clone();
        let near = threaded(plan(&config, &with_subject("b", 3600), &after(&p1, &key)).unwrap());
        assert_eq!(near.conversation_id, p1.conversation_id);
        let far = with_subject("c", 30 * 24 * 3600);
        let far = threaded(plan(&config, &far, &after(&p1, &key)).unwrap());
        assert_ne!(far.conversation_id, p1.conversation_id);
    }

    #[test]
    fn whatsapp_proves_the_phone_number() {
        let wa = IdentityHandle {
            kind: P::Whatsapp as i32,
            value: "14155550134".into(),
            verified: true,
            ..Default::default()
        };
        let input = InboundEvent::new(event("a", ChannelKind::Whatsapp, wa, 0));
        let p = threaded(plan(&ThreadingConfig::default(), &input, &Snapshot::default()).unwrap());
        assert!(
            p.links
                .iter()
                .any(|(k, confirmed)| k.kind == "phone" && k.value == "+14155550134" && *confirmed)
        );
    }

    #[test]
    fn duplicates_and_bad_input() {
        let input = InboundEvent::new(event("a", ChannelKind::Sms, phone(true), 0));
        let seen = Snapshot {
            already_processed: true,
            ..Default::default()
        };
        assert_eq!(
            plan(&ThreadingConfig::default(), &input, &seen).unwrap(),
            Decision::Duplicate
        );
        let mut no_sender = input.clone();
        no_sender.event.sender = None;
        assert!(matches!(
            plan(
                &ThreadingConfig::default(),
                &no_sender,
                &Snapshot::default()
            ),
            Err(ThreadingError::MissingCustomerHandle)
        ));
    }

    /// A rule set for the SMS channel `ch` only: refunds (in Arabic with
    /// any attached prefix, or English) are P1, a new conversation while
    /// another is open is P2, anything else the default P3.
    fn rules() -> Arc<RuleBook> {
        let book = RuleBook::compile([(
            "support.toml",
            r#"
            name = "support"
            time_zone = "Asia/Riyadh"
            default_language = "ar"
            default_priority = "P3"
            channels = ["ch"]
            [[rules]]
            name = "refund"
            match.keywords = ["*استرداد", "refund*"]
            actions.tags = ["refund"]
            actions.priority = "P1"
            [[rules]]
            name = "returning-open-issue"
            match.conversation = ["new"]
            match.other_open_conversations = true
            actions.tags = ["returning-open"]
            actions.priority = "P2"
            [[rules]]
            name = "reopened"
            match.conversation = ["reopened"]
            actions.tags = ["Reopened"]
            [[rules]]
            name = "slow"
            match.keywords = ["slow", "refund*"]
            actions.tags = ["REFUND", "slow"]
            actions.priority = "P4"
            "#,
        )])
        .unwrap();
        Arc::new(book)
    }

    fn with_rules() -> ThreadingConfig {
        ThreadingConfig {
            rules: rules(),
            ..Default::default()
        }
    }

    fn saying(mut event: ConversationEvent, text: &str) -> ConversationEvent {
        event.content = Some(omni_proto::v1::Content {
            text: text.into(),
            ..Default::default()
        });
        event
    }

    fn triaged_entries(plan: &Plan) -> Vec<(&TimelineEvent, &ConversationTriaged)> {
        plan.timeline
            .iter()
            .filter_map(|t| match &t.entry {
                Some(Entry::Triaged(triaged)) => Some((t, triaged)),
                _ => None,
            })
            .collect()
    }

    fn conversation_in(plan: &Plan) -> &Conversation {
        plan.conversations
            .iter()
            .find(|c| c.id == plan.conversation_id)
            .expect("the message's conversation is written")
    }

    #[test]
    fn rules_tag_and_raise_priority_and_never_lower_it() {
        let config = with_rules();
        // Alef with hamza, diacritics, tatweel and Arabic-Indic digits.
        let refund = "أُرِيدُ الإسْتِرْدَادَ لطلبيّة رقم ١٢٣";
        let first = InboundEvent::new(saying(event("a", ChannelKind::Sms, phone(true), 0), refund));
        let p1 = threaded(plan(&config, &first, &Snapshot::default()).unwrap());
        let [(entry, triaged)] = triaged_entries(&p1)[..] else {
            panic!("one triaged entry: {:?}", p1.timeline)
        };
        // A new customer: its link, the message, then the triage.
        let [.., message, last] = &p1.timeline[..] else {
            panic!("{:?}", p1.timeline)
        };
        assert!(matches!(message.entry, Some(Entry::Message(_))));
        assert_eq!(last, entry, "right after the message");
        assert_eq!(entry.sequence, message.sequence + 1);
        assert_eq!(entry.conversation_id, p1.conversation_id);
        assert_eq!(
            entry.timeline_event_id,
            timeline_entry_id("a", &format!("triage\u{0}{}", p1.conversation_id))
        );
        assert_eq!(triaged.event_id, "a");
        assert_eq!(triaged.tags, ["refund"]);
        assert_eq!(triaged.priority, omni_proto::v1::Priority::P1 as i32);
        assert_eq!(triaged.rule_set, "support");
        assert_eq!(triaged.matched_rules, ["refund"]);
        assert_eq!(triaged.language, "ar");
        let conversation = conversation_in(&p1);
        assert_eq!(conversation.tags, ["refund"]);
        assert_eq!(conversation.priority, Some(Priority::P1));
        let automation = p1.automation.as_ref().expect("the decision");
        assert_eq!(automation.priority, Priority::P1);

        // Nothing matches: the default P3 does not lower P1, no entry.
        let key = lookups(&first).unwrap().handles[0].clone();
        let second = saying(event("b", ChannelKind::Sms, phone(true), 30), "شكرا");
        let p2 = threaded(plan(&config, &InboundEvent::new(second), &after(&p1, &key)).unwrap());
        assert!(triaged_entries(&p2).is_empty(), "{:?}", p2.timeline);
        assert_eq!(p2.timeline.len(), 1, "the message alone");
        assert_eq!(conversation_in(&p2).priority, Some(Priority::P1));
        assert_eq!(conversation_in(&p2).tags, ["refund"]);
        assert_eq!(p2.automation.as_ref().unwrap().priority, Priority::P3);

        // A new tag is added after the others; P4 does not lower P1.
        let third = saying(event("c", ChannelKind::Sms, phone(true), 60), "slow!");
        let p3 = threaded(plan(&config, &InboundEvent::new(third), &after(&p2, &key)).unwrap());
        let [(_, triaged)] = triaged_entries(&p3)[..] else {
            panic!("one triaged entry: {:?}", p3.timeline)
        };
        assert_eq!(triaged.tags, ["refund", "slow"]);
        assert_eq!(triaged.priority, omni_proto::v1::Priority::P1 as i32);
        assert_eq!(triaged.matched_rules, ["slow"]);

        // The same tags again, in another case, are no news.
        let fourth = saying(
            event("d", ChannelKind::Sms, phone(true), 90),
            "Refund, SLOW",
        );
        let p4 = threaded(plan(&config, &InboundEvent::new(fourth), &after(&p3, &key)).unwrap());
        assert_eq!(
            p4.automation.as_ref().unwrap().matched_rules,
            ["refund", "slow"]
        );
        assert!(triaged_entries(&p4).is_empty(), "{:?}", p4.timeline);
    }

    #[test]
    fn a_new_conversation_gets_the_default_priority_and_the_open_ones_count() {
        let config = ThreadingConfig {
            idle_timeouts: [("ch".to_owned(), Duration::from_secs(60))].into(),
            ..with_rules()
        };
        let first = InboundEvent::new(saying(event("a", ChannelKind::Sms, phone(true), 0), "hi"));
        let p1 = threaded(plan(&config, &first, &Snapshot::default()).unwrap());
        let [(_, triaged)] = triaged_entries(&p1)[..] else {
            panic!("one triaged entry: {:?}", p1.timeline)
        };
        assert!(triaged.tags.is_empty());
        assert!(triaged.matched_rules.is_empty());
        assert_eq!(triaged.priority, omni_proto::v1::Priority::P3 as i32);

        // Another conversation of the customer is open (on an email
        // channel): the next one counts it.
        let key = lookups(&first).unwrap().handles[0].clone();
        let mut snapshot = after(&p1, &key);
        snapshot.conversations.push(Conversation {
            id: "mail-conv".into(),
            customer: p1.customer.clone(),
            channel_id: "mail".into(),
            thread_key: String::new(),
            email: true,
            subject: "x".into(),
            open: true,
            last_activity_ms: 0,
            tags: Vec::new(),
            priority: None,
            last_acknowledgement_ms: None,
            auto_replies: Vec::new(),
            agent_replied: false,
            awaiting: None,
        });
        // Idle past the timeout: the chat conversation closes and a new
        // one opens; the closed one does not count, the email one does.
        let later = saying(
            event("b", ChannelKind::Sms, phone(true), 500),
            "hello again",
        );
        let p2 = threaded(plan(&config, &InboundEvent::new(later), &snapshot).unwrap());
        assert_ne!(p2.conversation_id, p1.conversation_id);
        let [(_, triaged)] = triaged_entries(&p2)[..] else {
            panic!("one triaged entry: {:?}", p2.timeline)
        };
        assert_eq!(triaged.tags, ["returning-open"]);
        assert_eq!(triaged.matched_rules, ["returning-open-issue"]);
        assert_eq!(triaged.priority, omni_proto::v1::Priority::P2 as i32);
    }

    #[test]
    fn a_reopened_email_conversation_is_evaluated_as_reopened() {
        let config = with_rules();
        let sender = IdentityHandle {
            kind: P::Email as i32,
            value: "ana@example.com".into(),
            ..Default::default()
        };
        let mut reply = saying(event("b", ChannelKind::Email, sender, 100), "hello");
        reply.threading = Some(ThreadingHints {
            in_reply_to: vec!["m1@x".into()],
            ..Default::default()
        });
        let reply = InboundEvent::new(reply);
        let key = lookups(&reply).unwrap().handles[0].clone();
        let customer = CustomerId::for_handle(&key);
        let closed = Conversation {
            id: "conv".into(),
            customer: customer.clone(),
            channel_id: "ch".into(),
            thread_key: String::new(),
            email: true,
            subject: String::new(),
            open: false,
            last_activity_ms: 0,
            tags: vec!["reopened".into()],
            priority: Some(Priority::P2),
            last_acknowledgement_ms: None,
            auto_replies: Vec::new(),
            agent_replied: false,
            awaiting: None,
        };
        let snapshot = Snapshot {
            owners: [(
                key,
                HandleOwner {
                    customer: customer.clone(),
                    confirmed: false,
                },
            )]
            .into(),
            next_sequence: [(customer, 5)].into(),
            conversations: vec![closed],
            message_refs: [("m1@x".to_owned(), "conv".to_owned())].into(),
            ..Default::default()
        };
        let p = threaded(plan(&config, &reply, &snapshot).unwrap());
        assert_eq!(p.conversation_id, "conv");
        assert!(matches!(
            p.automation.as_ref().map(|d| d.matched_rules.as_slice()),
            Some([rule]) if rule == "reopened"
        ));
        // "Reopened" is the tag it had (ASCII case aside), P3 is below
        // P2: nothing changes.
        assert!(triaged_entries(&p).is_empty(), "{:?}", p.timeline);
        assert_eq!(conversation_in(&p).tags, ["reopened"]);
        assert_eq!(conversation_in(&p).priority, Some(Priority::P2));
    }

    #[test]
    fn only_inbound_customer_messages_on_covered_channels_are_evaluated() {
        let config = with_rules();
        let refund = |id: &str, channel: &str| {
            let mut e = saying(event(id, ChannelKind::Sms, phone(true), 0), "refund now");
            e.channel_id = channel.into();
            e
        };
        let mut outbound = refund("out", "ch");
        outbound.direction = Direction::Outbound as i32;
        outbound.recipients = vec![phone(true)];
        let mut edit = refund("edit", "ch");
        edit.kind = EventKind::Edit as i32;
        let mut activity = refund("act", "ch");
        activity.kind = EventKind::Activity as i32;
        let mut status = refund("status", "ch");
        status.kind = EventKind::DeliveryStatus as i32;
        for e in [
            outbound,
            edit,
            activity,
            status,
            refund("elsewhere", "other"),
        ] {
            let input = InboundEvent::new(e);
            let with = threaded(plan(&config, &input, &Snapshot::default()).unwrap());
            let without =
                threaded(plan(&ThreadingConfig::default(), &input, &Snapshot::default()).unwrap());
            assert_eq!(with, without, "{}", input.event.event_id);
            assert!(with.automation.is_none());
            assert!(
                with.conversations
                    .iter()
                    .all(|c| c.tags.is_empty() && c.priority.is_none())
            );
        }
    }

    #[test]
    fn the_channel_language_hint_and_email_classification_reach_the_rules() {
        let config = with_rules();
        let mut e = saying(
            event("a", ChannelKind::Sms, phone(true), 0),
            "refund please",
        );
        e.language = "fa-IR".into();
        e.provider_metadata
            .insert("auto_reply".into(), "true".into());
        let p = threaded(plan(&config, &InboundEvent::new(e), &Snapshot::default()).unwrap());
        let [(_, triaged)] = triaged_entries(&p)[..] else {
            panic!("one triaged entry: {:?}", p.timeline)
        };
        assert_eq!(triaged.language, "fa");
        let automation = p.automation.as_ref().unwrap();
        assert_eq!(
            automation.auto_reply,
            omni_rules::ReplyDecision::Skip(omni_rules::SkipReason::Automated)
        );
        // Automated or not, a refund is tagged: tags say what it is about.
        assert_eq!(triaged.tags, ["refund", "slow"]);
    }

    #[test]
    fn conversations_of_older_journals_decode_without_rules_state() {
        let old = concat!(
            r#"{"id":"c","customer":"x","channel_id":"ch","thread_key":"","#,
            r#""email":false,"subject":"","open":true,"last_activity_ms":5}"#
        );
        let c: Conversation = serde_json::from_str(old).unwrap();
        assert!(c.tags.is_empty());
        assert_eq!(c.priority, None);
        // Without rules state a conversation serializes as before.
        assert_eq!(serde_json::to_string(&c).unwrap(), old);
        let triaged = Conversation {
            tags: vec!["refund".into()],
            priority: Some(Priority::P1),
            ..c
        };
        let json = serde_json::to_string(&triaged).unwrap();
        assert!(
            json.ends_with(r#""tags":["refund"],"priority":"P1"}"#),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<Conversation>(&json).unwrap(),
            triaged
        );
        let bad = json.replace("P1", "P7");
        assert!(serde_json::from_str::<Conversation>(&bad).is_err());
        let replied = Conversation {
            last_acknowledgement_ms: Some(7),
            auto_replies: vec![SentAutoReply {
                template: "shipping".into(),
                at_ms: 9,
            }],
            ..triaged
        };
        let json = serde_json::to_string(&replied).unwrap();
        assert!(
            json.ends_with(
                r#""last_acknowledgement_ms":7,"auto_replies":[{"template":"shipping","at_ms":9}]}"#
            ),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<Conversation>(&json).unwrap(),
            replied
        );
    }

    /// A conversation remembers its last [`MAX_RECENT_AUTO_REPLIES`]
    /// auto-replies, and an auto-reply counts as its acknowledgement.
    #[test]
    fn auto_replies_are_remembered_up_to_the_limit() {
        let config = ThreadingConfig {
            rules: Arc::new(
                RuleBook::compile([(
                    "r.toml",
                    r#"
                    name = "r"
                    time_zone = "UTC"
                    default_language = "en"
                    channels = ["ch"]
                    [rate_limits]
                    auto_reply_window = "1m"
                    [templates.t]
                    en = "answer"
                    [[rules]]
                    name = "q"
                    match.keywords = ["question"]
                    actions.auto_reply = "t"
                    "#,
                )])
                .unwrap(),
            ),
            idle_timeouts: [("ch".to_owned(), Duration::from_secs(365 * 24 * 3600))].into(),
            ..Default::default()
        };
        let first = InboundEvent::new(saying(
            event("e0", ChannelKind::Sms, phone(true), 0),
            "question",
        ));
        let key = lookups(&first).unwrap().handles[0].clone();
        let mut p = threaded(plan(&config, &first, &Snapshot::default()).unwrap());
        for i in 1..=20 {
            // Two minutes apart: past the auto-reply window each time.
            let next = saying(
                event(&format!("e{i}"), ChannelKind::Sms, phone(true), i * 120),
                "question",
            );
            p = threaded(plan(&config, &InboundEvent::new(next), &after(&p, &key)).unwrap());
            assert!(
                p.timeline
                    .iter()
                    .any(|t| matches!(t.entry, Some(Entry::AutomatedReply(_)))),
                "message {i} answered"
            );
        }
        let conversation = conversation_in(&p);
        assert_eq!(conversation.auto_replies.len(), MAX_RECENT_AUTO_REPLIES);
        assert_eq!(
            conversation.auto_replies.last().unwrap().at_ms,
            20 * 120 * 1000
        );
        assert_eq!(conversation.auto_replies[0].at_ms, 5 * 120 * 1000);
        assert_eq!(conversation.last_acknowledgement_ms, Some(20 * 120 * 1000));
        // Within the window: not again.
        let soon = saying(
            event("e-soon", ChannelKind::Sms, phone(true), 20 * 120 + 30),
            "question",
        );
        let p = threaded(plan(&config, &InboundEvent::new(soon), &after(&p, &key)).unwrap());
        assert_eq!(p.timeline.len(), 1, "the message alone: {:?}", p.timeline);
    }

    /// Templates address the customer by the name the channel gave the
    /// sender, and fall back when it gave none.
    #[test]
    fn replies_address_the_customer_by_name() {
        let config = ThreadingConfig {
            rules: Arc::new(
                RuleBook::compile([(
                    "r.toml",
                    r#"
                    name = "r"
                    time_zone = "UTC"
                    default_language = "en"
                    channels = ["ch"]
                    [templates.received]
                    en = "Hi {customer_name|there}, we got it"
                    [[rules]]
                    name = "ack"
                    match.conversation = ["new"]
                    actions.acknowledge = "received"
                    "#,
                )])
                .unwrap(),
            ),
            ..Default::default()
        };
        let reply_text = |display_name: &str| {
            let mut sender = phone(true);
            sender.display_name = display_name.into();
            let input = InboundEvent::new(saying(event("n", ChannelKind::Sms, sender, 0), "hello"));
            let p = threaded(plan(&config, &input, &Snapshot::default()).unwrap());
            p.timeline
                .iter()
                .find_map(|t| match &t.entry {
                    Some(Entry::AutomatedReply(reply)) => Some(
                        reply
                            .outbound
                            .as_ref()
                            .unwrap()
                            .content
                            .as_ref()
                            .unwrap()
                            .text
                            .clone(),
                    ),
                    _ => None,
                })
                .expect("an acknowledgement")
        };
        assert_eq!(reply_text("Ana Lima"), "Hi Ana Lima, we got it");
        assert_eq!(reply_text(""), "Hi there, we got it");
    }
}
