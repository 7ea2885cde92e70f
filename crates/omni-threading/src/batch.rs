//! What a store needs to thread a batch of events in one transaction with
//! a handful of statements instead of a dozen per event.
//!
//! The store reads, in a few bulk queries at the start of the batch, every
//! row any event of the batch can look at (see [`Wants`]) into an
//! [`Overlay`]. Each event's [`Snapshot`] is then built from the overlay
//! exactly as [`load_snapshot`](crate::sql) would build it from the
//! database, and its plan is applied to the overlay (so later events see
//! it) and recorded as [`Write`]s. At the end the store replays the writes
//! in order, folding runs of independent row writes into multi-row
//! statements; merges and suggestion changes, whose effect depends on
//! what is already in the tables, are executed in their place, after
//! everything before them.
//!
//! Why the overlay is complete: a snapshot only reads rows keyed by the
//! event's own handles, event ids, Message-IDs and edited event id (all
//! prefetched for the whole batch), the customers owning those handles
//! (prefetched, or created in the batch), their open or email
//! conversations (prefetched by customer, or written in the batch), and
//! conversations named by those Message-IDs or edits (prefetched by id).
//! A merge only moves rows between customers that are already in the
//! overlay, and the overlay applies it to its own rows as the SQL does.

use std::collections::BTreeSet;

use omni_proto::v1::{Attachment, TimelineEvent, timeline_event::Entry};

use crate::error::ThreadingError;
use crate::ids::{CustomerId, HandleKey};
use crate::logic::{
    Conversation, Decision, HandleOwner, InboundEvent, Lookups, Plan, Snapshot, ThreadingConfig,
};
use crate::state::{HashMap, HashSet};
use crate::store::Outcome;

/// The keys a batch reads, for the bulk prefetch.
#[derive(Debug, Default)]
pub(crate) struct Wants {
    /// Event ids of the batch and of the messages it edits.
    pub event_ids: Vec<String>,
    /// Every handle of every event.
    pub handles: Vec<HandleKey>,
    /// Every Message-ID the events refer to.
    pub message_ids: Vec<String>,
}

impl Wants {
    pub(crate) fn of<'a>(lookups: impl IntoIterator<Item = &'a Lookups>) -> Wants {
        let mut event_ids = BTreeSet::new();
        let mut handles = BTreeSet::new();
        let mut message_ids = BTreeSet::new();
        for l in lookups {
            event_ids.insert(l.event_id.clone());
            event_ids.extend(l.edits_event_id.iter().cloned());
            handles.extend(l.handles.iter().cloned());
            message_ids.extend(l.message_ids.iter().cloned());
        }
        Wants {
            event_ids: event_ids.into_iter().collect(),
            handles: handles.into_iter().collect(),
            message_ids: message_ids.into_iter().collect(),
        }
    }
}

/// Row counts of the multi-row writes, largest first. A run of rows goes
/// out as the fewest statements of these sizes (a power-of-two split), so
/// a connection sees at most eight shapes of each statement and SQLite
/// (and PostgreSQL) prepare each shape once and reuse it, instead of
/// compiling a new statement of a new length for every batch.
const ROW_CHUNKS: [usize; 8] = [128, 64, 32, 16, 8, 4, 2, 1];

/// `rows` split into [`ROW_CHUNKS`]-sized runs, in order.
pub(crate) fn row_chunks<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        let size = ROW_CHUNKS.into_iter().find(|&size| size <= rest.len())?;
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        Some(chunk)
    })
}

/// Lengths of the key lists of the bulk reads. A shorter list is padded by
/// repeating its last key, so each read has three shapes (prepared once,
/// see [`ROW_CHUNKS`]); a repeated key changes no result (`IN` is a set
/// test, and the key joins feed maps and sets).
const KEY_CHUNKS: [usize; 3] = [8, 32, 128];

/// `keys` split into lists of [`KEY_CHUNKS`] lengths, padded with repeats.
pub(crate) fn key_chunks<T>(keys: &[T]) -> Vec<Vec<&T>> {
    let largest = KEY_CHUNKS[KEY_CHUNKS.len() - 1];
    keys.chunks(largest)
        .map(|chunk| {
            let size = KEY_CHUNKS
                .into_iter()
                .find(|&size| size >= chunk.len())
                .unwrap_or(largest);
            let mut list: Vec<&T> = chunk.iter().collect();
            if let Some(last) = chunk.last() {
                list.resize(size, last);
            }
            list
        })
        .collect()
}

/// One write of a plan, in plan order: a row change with the semantics of
/// the SQL that writes it, so the embedded store can journal writes and
/// apply them to its in-memory [`crate::state::State`] with the same
/// effect the PostgreSQL store's statements have on its tables.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) enum Write {
    /// Insert the customer or set its next sequence.
    Customer { id: CustomerId, next_sequence: u64 },
    /// Link a handle (insert or move).
    Identity {
        key: HandleKey,
        customer: CustomerId,
        confirmed: bool,
    },
    /// Insert or update a conversation.
    Conversation(Conversation),
    /// Record an email Message-ID.
    MessageRef {
        message_id: String,
        customer: CustomerId,
        conversation: String,
    },
    /// Record the event as threaded.
    Processed {
        event_id: String,
        customer: CustomerId,
        conversation: String,
    },
    /// Append a timeline row to the outbox (a table of its own, never
    /// journaled).
    #[serde(skip)]
    Timeline(Box<TimelineEvent>),
    /// Merge `loser` into `survivor` (moves rows the overlay never saw).
    Merge {
        survivor: CustomerId,
        loser: CustomerId,
    },
    /// Drop a suggestion that became a link.
    DeleteSuggestion {
        customer: CustomerId,
        key: HandleKey,
    },
    /// Record a suggestion.
    InsertSuggestion {
        customer: CustomerId,
        key: HandleKey,
    },
    /// Give a conversation's Message-IDs to its new owner (a split), so
    /// replies keep threading into it.
    MoveMessageRefs {
        conversation: String,
        customer: CustomerId,
    },
    /// Set (or clear) a customer's segment (a helpdesk command).
    CustomerSegment {
        id: CustomerId,
        segment: Option<String>,
    },
    /// Record a helpdesk command as applied.
    Command {
        command_id: String,
        issued_at_ms: i64,
    },
    /// Fill the timeline row of message `message_event_id` in with a
    /// stored file (its row is among `customers`' rows; the stores add
    /// the customers merged into them). A timeline write, never
    /// journaled.
    #[serde(skip)]
    StoreAttachment {
        customers: Vec<CustomerId>,
        message_event_id: String,
        index: u32,
        attachment: Box<Attachment>,
    },
}

impl Write {
    /// Whether the write's effect depends on rows outside its own key, so
    /// everything before it must be in the tables first.
    pub(crate) fn is_barrier(&self) -> bool {
        matches!(
            self,
            Write::Merge { .. }
                | Write::DeleteSuggestion { .. }
                | Write::InsertSuggestion { .. }
                | Write::MoveMessageRefs { .. }
                | Write::Command { .. }
                | Write::CustomerSegment { .. }
                // The message's row may be in the same batch: written first.
                | Write::StoreAttachment { .. }
        )
    }
}

/// The batch's view of the state: what the prefetch read, with the
/// batch's own plans applied.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    /// Event id -> conversation, for threaded events among the wanted ids.
    processed: HashMap<String, String>,
    /// Handle -> owner (resolved through merges); absent: no owner.
    owners: HashMap<HandleKey, HandleOwner>,
    /// Next sequence of every customer the batch can read.
    next_sequence: HashMap<CustomerId, u64>,
    /// Segments of those customers that have one.
    segments: HashMap<CustomerId, String>,
    /// Conversations by id.
    conversations: HashMap<String, Conversation>,
    /// Conversation ids per customer.
    by_customer: HashMap<CustomerId, BTreeSet<String>>,
    /// Message-ID -> (customer, conversation) rows, in read order.
    message_refs: HashMap<String, Vec<(CustomerId, String)>>,
    /// Suggestions of the batch's handles.
    suggestions: HashSet<(CustomerId, HandleKey)>,
    /// Writes of the plans applied so far, in order.
    writes: Vec<Write>,
}

impl Overlay {
    pub(crate) fn add_processed(&mut self, event_id: String, conversation: String) {
        self.processed.insert(event_id, conversation);
    }

    pub(crate) fn add_owner(&mut self, key: HandleKey, owner: HandleOwner) {
        self.owners.insert(key, owner);
    }

    /// Customers owning a prefetched handle, whose row and conversations
    /// the prefetch reads next.
    pub(crate) fn owner_customers(&self) -> Vec<CustomerId> {
        let set: BTreeSet<&CustomerId> = self.owners.values().map(|o| &o.customer).collect();
        set.into_iter().cloned().collect()
    }

    pub(crate) fn add_customer(
        &mut self,
        id: CustomerId,
        next_sequence: u64,
        segment: Option<String>,
    ) {
        if let Some(segment) = segment {
            self.segments.insert(id.clone(), segment);
        }
        self.next_sequence.insert(id, next_sequence);
    }

    pub(crate) fn add_conversation(&mut self, conversation: Conversation) {
        self.by_customer
            .entry(conversation.customer.clone())
            .or_default()
            .insert(conversation.id.clone());
        self.conversations
            .insert(conversation.id.clone(), conversation);
    }

    pub(crate) fn add_message_ref(
        &mut self,
        message_id: String,
        customer: CustomerId,
        conversation: String,
    ) {
        self.message_refs
            .entry(message_id)
            .or_default()
            .push((customer, conversation));
    }

    pub(crate) fn add_suggestion(&mut self, customer: CustomerId, key: HandleKey) {
        self.suggestions.insert((customer, key));
    }

    /// Conversation ids the message refs and edits name that the prefetch
    /// has not read yet.
    pub(crate) fn missing_conversations(&self) -> Vec<String> {
        let named = self
            .message_refs
            .values()
            .flatten()
            .map(|(_, c)| c)
            .chain(self.processed.values());
        let missing: BTreeSet<&String> = named
            .filter(|c| !self.conversations.contains_key(*c))
            .collect();
        missing.into_iter().cloned().collect()
    }

    /// Customers of conversations that threaded events went to (an
    /// attachment update's message) whose next sequence the prefetch has
    /// not read: the update goes on that customer's timeline.
    pub(crate) fn missing_customers(&self) -> Vec<CustomerId> {
        let missing: BTreeSet<&CustomerId> = self
            .processed
            .values()
            .filter_map(|c| self.conversations.get(c))
            .map(|c| &c.customer)
            .filter(|c| !self.next_sequence.contains_key(*c))
            .collect();
        missing.into_iter().cloned().collect()
    }

    /// The snapshot `load_snapshot` would read for `lookups` now.
    pub(crate) fn snapshot(&self, lookups: &Lookups) -> Snapshot {
        let mut snapshot = Snapshot::default();
        if self.processed.contains_key(&lookups.event_id) {
            snapshot.already_processed = true;
            return snapshot;
        }
        for key in &lookups.handles {
            if let Some(owner) = self.owners.get(key) {
                snapshot.owners.insert(key.clone(), owner.clone());
            }
        }
        let customers: BTreeSet<&CustomerId> =
            snapshot.owners.values().map(|o| &o.customer).collect();
        for customer in customers {
            let next = self.next_sequence.get(customer).copied().unwrap_or(1);
            snapshot.next_sequence.insert(customer.clone(), next);
            if let Some(segment) = self.segments.get(customer) {
                snapshot.segments.insert(customer.clone(), segment.clone());
            }
            for id in self.by_customer.get(customer).into_iter().flatten() {
                let c = &self.conversations[id];
                if c.open || (c.email && c.subject == lookups.subject && !c.subject.is_empty()) {
                    snapshot.conversations.push(c.clone());
                }
            }
            for message_id in &lookups.message_ids {
                let found = self
                    .message_refs
                    .get(message_id)
                    .into_iter()
                    .flatten()
                    .find(|(owner, _)| owner == customer);
                if let Some((_, conversation)) = found {
                    snapshot
                        .message_refs
                        .insert(message_id.clone(), conversation.clone());
                }
            }
        }
        let mut wanted: Vec<String> = snapshot.message_refs.values().cloned().collect();
        if let Some(edited) = &lookups.edits_event_id
            && let Some(conversation) = self.processed.get(edited)
        {
            snapshot.edited_conversation = Some(conversation.clone());
            wanted.push(conversation.clone());
        }
        for id in wanted {
            if !snapshot.conversations.iter().any(|c| c.id == id)
                && let Some(c) = self.conversations.get(&id)
            {
                snapshot.conversations.push(c.clone());
            }
        }
        if let Some(edited) = &snapshot.edited_conversation
            && let Some(c) = self.conversations.get(edited)
            && let Some(next) = self.next_sequence.get(&c.customer)
        {
            snapshot
                .next_sequence
                .entry(c.customer.clone())
                .or_insert(*next);
        }
        snapshot
    }

    /// Applies `plan` (threading `event_id`) as `write` in the SQL store
    /// does, and records its writes; the plan's timeline entries move into
    /// them (not copied: each carries the whole event).
    pub(crate) fn apply(&mut self, event_id: &str, mut plan: Plan) -> Outcome {
        let timeline = std::mem::take(&mut plan.timeline);
        let sequences = (
            timeline.first().map_or(0, |t| t.sequence),
            timeline.last().map_or(0, |t| t.sequence),
        );
        let survivor = &plan.customer;
        if plan.create_customer {
            self.next_sequence.insert(survivor.clone(), 1);
        }
        for loser in &plan.merged {
            self.merge(survivor, loser);
        }
        for (key, confirmed) in &plan.links {
            self.owners.insert(
                key.clone(),
                HandleOwner {
                    customer: survivor.clone(),
                    confirmed: *confirmed,
                },
            );
            self.writes.push(Write::Identity {
                key: key.clone(),
                customer: survivor.clone(),
                confirmed: *confirmed,
            });
            // The overlay holds every suggestion of the batch's handles,
            // so a delete that would find nothing is skipped.
            if self.suggestions.remove(&(survivor.clone(), key.clone())) {
                self.writes.push(Write::DeleteSuggestion {
                    customer: survivor.clone(),
                    key: key.clone(),
                });
            }
        }
        for key in &plan.suggestions {
            if self.suggestions.insert((survivor.clone(), key.clone())) {
                self.writes.push(Write::InsertSuggestion {
                    customer: survivor.clone(),
                    key: key.clone(),
                });
            }
        }
        for c in &plan.conversations {
            let merged = match self.conversations.get(&c.id) {
                // ON CONFLICT keeps the stored channel, key, kind, subject.
                Some(old) => Conversation {
                    customer: c.customer.clone(),
                    open: c.open,
                    last_activity_ms: c.last_activity_ms,
                    tags: c.tags.clone(),
                    priority: c.priority,
                    last_acknowledgement_ms: c.last_acknowledgement_ms,
                    auto_replies: c.auto_replies.clone(),
                    agent_replied: c.agent_replied,
                    awaiting: c.awaiting.clone(),
                    ..old.clone()
                },
                None => c.clone(),
            };
            if let Some(old) = self.conversations.get(&c.id)
                && old.customer != merged.customer
                && let Some(ids) = self.by_customer.get_mut(&old.customer)
            {
                ids.remove(&c.id);
            }
            self.add_conversation(merged.clone());
            self.writes.push(Write::Conversation(merged));
        }
        if let Some(message_id) = &plan.message_id {
            let rows = self.message_refs.entry(message_id.clone()).or_default();
            // ON CONFLICT (message_id, conversation_id) DO NOTHING.
            if !rows.iter().any(|(_, c)| *c == plan.conversation_id) {
                rows.push((survivor.clone(), plan.conversation_id.clone()));
                self.writes.push(Write::MessageRef {
                    message_id: message_id.clone(),
                    customer: survivor.clone(),
                    conversation: plan.conversation_id.clone(),
                });
            }
        }
        self.processed
            .insert(event_id.to_owned(), plan.conversation_id.clone());
        self.writes.push(Write::Processed {
            event_id: event_id.to_owned(),
            customer: survivor.clone(),
            conversation: plan.conversation_id.clone(),
        });
        let mut stored = None;
        for entry in timeline {
            if let Some(Entry::AttachmentStored(update)) = &entry.entry
                && let Some(attachment) = &update.attachment
            {
                stored = Some(Write::StoreAttachment {
                    customers: vec![survivor.clone()],
                    message_event_id: update.message_event_id.clone(),
                    index: update.attachment_index,
                    attachment: Box::new(attachment.clone()),
                });
            }
            self.writes.push(Write::Timeline(Box::new(entry)));
        }
        self.writes.extend(stored);
        self.next_sequence
            .insert(survivor.clone(), plan.next_sequence);
        self.writes.push(Write::Customer {
            id: survivor.clone(),
            next_sequence: plan.next_sequence,
        });
        Outcome::Threaded {
            customer_id: plan.customer,
            conversation_id: plan.conversation_id,
            sequences,
        }
    }

    /// What the merge statements do, to the overlay's own rows.
    fn merge(&mut self, survivor: &CustomerId, loser: &CustomerId) {
        self.writes.push(Write::Merge {
            survivor: survivor.clone(),
            loser: loser.clone(),
        });
        self.next_sequence.remove(loser);
        // The survivor keeps its segment, or takes the loser's.
        if let Some(segment) = self.segments.remove(loser) {
            self.segments.entry(survivor.clone()).or_insert(segment);
        }
        for owner in self.owners.values_mut() {
            if owner.customer == *loser {
                owner.customer = survivor.clone();
            }
        }
        if let Some(ids) = self.by_customer.remove(loser) {
            for id in &ids {
                if let Some(c) = self.conversations.get_mut(id) {
                    c.customer = survivor.clone();
                }
            }
            self.by_customer
                .entry(survivor.clone())
                .or_default()
                .extend(ids);
        }
        for rows in self.message_refs.values_mut() {
            for (owner, _) in rows.iter_mut() {
                if owner == loser {
                    *owner = survivor.clone();
                }
            }
        }
        let moved: Vec<HandleKey> = self
            .suggestions
            .iter()
            .filter(|(c, _)| c == loser)
            .map(|(_, k)| k.clone())
            .collect();
        for key in moved {
            self.suggestions.remove(&(loser.clone(), key.clone()));
            self.suggestions.insert((survivor.clone(), key));
        }
    }

    /// The recorded writes, in order.
    pub(crate) fn into_writes(self) -> Vec<Write> {
        self.writes
    }

    /// The writes recorded since the last call, in order (the overlay
    /// keeps its rows, so later plans still see them).
    pub(crate) fn take_writes(&mut self) -> Vec<Write> {
        std::mem::take(&mut self.writes)
    }
}

/// Plans `inputs` in order against `overlay` (prefetched for them),
/// applying each plan to it so later events see earlier ones: the part of
/// a batch both stores share. One result per input; the writes collect
/// in the overlay.
pub(crate) fn plan_batch(
    config: &ThreadingConfig,
    inputs: &[InboundEvent],
    lookups: Vec<Result<Lookups, ThreadingError>>,
    overlay: &mut Overlay,
) -> Vec<Result<Outcome, ThreadingError>> {
    inputs
        .iter()
        .zip(lookups)
        .map(|(input, lookups)| {
            let lookups = lookups?;
            let snapshot = overlay.snapshot(&lookups);
            Ok(
                match crate::logic::plan_with(config, input, &lookups, &snapshot)? {
                    Decision::Duplicate => Outcome::Duplicate,
                    Decision::Threaded(plan) => overlay.apply(&input.event.event_id, *plan),
                },
            )
        })
        .collect()
}

/// A run of row writes between two barriers, grouped by table. Upserts
/// keep each key's last value (a multi-row upsert may not touch a row
/// twice); outbox rows keep their order.
#[derive(Debug, Default)]
pub(crate) struct Run {
    pub customers: Vec<(CustomerId, u64)>,
    pub identities: Vec<(HandleKey, (CustomerId, bool))>,
    pub conversations: Vec<Conversation>,
    pub message_refs: Vec<(String, CustomerId, String)>,
    pub processed: Vec<(String, CustomerId, String)>,
    pub timeline: Vec<TimelineEvent>,
    /// Row of each upserted key in its table.
    customer_rows: HashMap<CustomerId, usize>,
    identity_rows: HashMap<HandleKey, usize>,
    conversation_rows: HashMap<String, usize>,
}

impl Run {
    pub(crate) fn push(&mut self, write: Write) {
        fn upsert<K: Clone + Eq + std::hash::Hash, V>(
            rows: &mut Vec<(K, V)>,
            index: &mut HashMap<K, usize>,
            key: K,
            value: V,
        ) {
            match index.get(&key) {
                Some(&i) => rows[i].1 = value,
                None => {
                    index.insert(key.clone(), rows.len());
                    rows.push((key, value));
                }
            }
        }
        match write {
            Write::Customer { id, next_sequence } => {
                upsert(
                    &mut self.customers,
                    &mut self.customer_rows,
                    id,
                    next_sequence,
                );
            }
            Write::Identity {
                key,
                customer,
                confirmed,
            } => upsert(
                &mut self.identities,
                &mut self.identity_rows,
                key,
                (customer, confirmed),
            ),
            Write::Conversation(c) => match self.conversation_rows.get(&c.id) {
                Some(&i) => self.conversations[i] = c,
                None => {
                    self.conversation_rows
                        .insert(c.id.clone(), self.conversations.len());
                    self.conversations.push(c);
                }
            },
            Write::MessageRef {
                message_id,
                customer,
                conversation,
            } => self.message_refs.push((message_id, customer, conversation)),
            Write::Processed {
                event_id,
                customer,
                conversation,
            } => self.processed.push((event_id, customer, conversation)),
            Write::Timeline(entry) => self.timeline.push(*entry),
            Write::Merge { .. }
            | Write::DeleteSuggestion { .. }
            | Write::InsertSuggestion { .. }
            | Write::MoveMessageRefs { .. }
            | Write::Command { .. }
            | Write::CustomerSegment { .. }
            | Write::StoreAttachment { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{key_chunks, row_chunks};

    #[test]
    fn row_chunks_cover_the_rows_in_order_with_few_shapes() {
        for n in [0, 1, 2, 3, 7, 8, 127, 128, 129, 250, 256, 300, 1000] {
            let rows: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = row_chunks(&rows).collect();
            assert_eq!(chunks.concat(), rows, "{n} rows");
            assert!(
                chunks
                    .iter()
                    .all(|c| c.len().is_power_of_two() && c.len() <= 128),
                "{n} rows"
            );
            // Largest first, each smaller size at most once.
            let tail: Vec<usize> = chunks
                .iter()
                .map(|c| c.len())
                .filter(|&l| l < 128)
                .collect();
            assert!(tail.windows(2).all(|w| w[0] > w[1]), "{n} rows: {tail:?}");
        }
    }

    #[test]
    fn key_chunks_pad_with_the_last_key_to_three_lengths() {
        for n in [0, 1, 5, 8, 9, 32, 33, 128, 129, 300] {
            let keys: Vec<usize> = (0..n).collect();
            let chunks = key_chunks(&keys);
            let mut seen = Vec::new();
            for chunk in &chunks {
                assert!([8, 32, 128].contains(&chunk.len()), "{n} keys");
                // Padding only repeats the chunk's own last key.
                let mut distinct: Vec<usize> = chunk.iter().map(|&&k| k).collect();
                distinct.dedup();
                seen.extend(distinct);
            }
            assert_eq!(seen, keys, "{n} keys");
        }
    }
}
