//! The threading decision as a pure function: given an inbound event and
//! the slice of state it touches ([`Snapshot`]), compute everything that
//! changes ([`Plan`]).
//!
//! No I/O happens here (the sans-I/O split Tansu uses between protocol and
//! transport), so every rule is unit tested without a database, and both
//! stores run exactly the same decisions: a store only loads the snapshot
//! inside its transaction, calls [`plan`], and writes the plan back.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use omni_model::proto::kind_from_proto;
use omni_model::{Handle, HandleKind};
use omni_proto::v1::{
    Attachment, AttachmentStoredEntry, ChannelKind, ConversationEvent, ConversationState,
    ConversationStateChanged, CustomersMerged, Direction, EventKind, IdentityHandle,
    IdentityLinkChanged, MessageEntry, TimelineEvent, timeline_event::Entry,
};

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
}

impl Default for ThreadingConfig {
    fn default() -> Self {
        ThreadingConfig {
            subject_window: Duration::from_secs(7 * 24 * 3600),
            default_idle_timeout: Duration::from_secs(24 * 3600),
            idle_timeouts: HashMap::new(),
            trusted_claim_channels: HashSet::new(),
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

    // Conversation.
    let hints = event.threading.clone().unwrap_or_default();
    let mine = |c: &&Conversation| cluster.contains(&c.customer);
    let find = |id: &str| {
        snapshot
            .conversations
            .iter()
            .filter(mine)
            .find(|c| c.id == id)
    };
    let email = !is_chat_like(event.channel_kind);
    let thread_key = if email {
        String::new()
    } else {
        hints.provider_chat_id.clone()
    };
    let mut writes: Vec<Conversation> = Vec::new();
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
            chosen = snapshot
                .conversations
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
        if let Some(open) = snapshot
            .conversations
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
        },
    };
    if !conversation.open {
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
    let other_open: Vec<String> = if opened {
        let closed: HashSet<&str> = writes.iter().map(|c| c.id.as_str()).collect();
        let mut ids: Vec<String> = snapshot
            .conversations
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
    let conversation_id = conversation.id.clone();
    push(
        event.event_id.clone(),
        &conversation_id,
        Entry::Message(MessageEntry {
            event: Some(event.clone()),
            opened_conversation: opened,
            other_open_conversation_ids: other_open,
        }),
        &mut timeline,
    );
    writes.push(conversation);

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
    })))
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
}
