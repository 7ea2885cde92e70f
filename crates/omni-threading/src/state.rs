//! The embedded store's threading state in memory: the customer groups
//! in use (`groups.rs` says which, and how they come and go).
//!
//! Why in memory: keeping the state in SQLite tables costs a handful of
//! B-tree pages per event (every lookup key is random: event ids, handles,
//! Message-IDs, conversation ids), and each batch rewrites those pages
//! through the WAL. On the reference VM that caps the embedded store well
//! below its 20,000 events/s target however the SQL is issued
//! (docs/benchmarks.md, "Fourth look"). So the embedded store journals each
//! transaction's [`Write`]s instead (one append per batch, next to the
//! timeline rows it publishes) and keeps the state they add up to here.
//!
//! [`State::apply`] gives each write exactly the effect its SQL has on the
//! PostgreSQL store's tables (see `sql.rs`), and [`State::prefetch`] reads
//! what a batch needs the way that store's prefetch does, so both stores
//! run the same [`Overlay`] and pass the same contract suite.

use std::collections::BTreeSet;

use crate::batch::{Overlay, Wants, Write};
use crate::commands::{CommandLookups, CommandPlan, CommandSnapshot};
use crate::groups::Row;
use crate::ids::{CustomerId, HandleKey};
use crate::logic::{Conversation, HandleOwner};
use crate::sla::{TimerPlan, TimerSnapshot};

/// Maps and sets with a fast hash that is still seeded per process (the
/// keys come from hostile input); the default SipHash was a tenth of the
/// embedded store's time.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type HashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

/// A customer row.
#[derive(Debug, Clone)]
struct Customer {
    merged_into: Option<CustomerId>,
    next_sequence: u64,
    segment: Option<String>,
}

/// The whole threading state, with the reverse indexes a merge or a split
/// needs to move a customer's rows without scanning everything.
#[derive(Debug, Default, Clone)]
pub(crate) struct State {
    /// Event id -> the conversation it went to.
    processed: HashMap<String, String>,
    customers: HashMap<CustomerId, Customer>,
    /// Survivor -> every customer merged into it.
    merged_from: HashMap<CustomerId, BTreeSet<CustomerId>>,
    /// Handle -> (customer as stored, confirmed).
    identities: HashMap<HandleKey, (CustomerId, bool)>,
    handles_of: HashMap<CustomerId, HashSet<HandleKey>>,
    conversations: HashMap<String, Conversation>,
    conversations_of: HashMap<CustomerId, HashSet<String>>,
    /// Message-ID -> (customer, conversation) rows.
    message_refs: HashMap<String, Vec<(CustomerId, String)>>,
    refs_of: HashMap<CustomerId, HashSet<String>>,
    refs_in: HashMap<String, HashSet<String>>,
    /// Handle -> customers it is suggested for, and the reverse.
    suggested: HashMap<HandleKey, BTreeSet<CustomerId>>,
    suggestions_of: HashMap<CustomerId, BTreeSet<HandleKey>>,
    applied_commands: HashSet<String>,
    /// Conversations by the instant their SLA timer fires next, so the
    /// clock finds the due ones without a scan.
    timers: BTreeSet<(i64, String)>,
}

/// Row counts of the state in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateSizes {
    /// Customers, merged ones included.
    pub customers: usize,
    /// Handles linked to a customer.
    pub identities: usize,
    /// Conversations, open and closed.
    pub conversations: usize,
    /// Email Message-IDs remembered for threading replies.
    pub message_ids: usize,
    /// Event ids threaded since the last snapshot (older ones are on
    /// disk only).
    pub recent_event_ids: usize,
}

/// Moves `item` from `from`'s set to `to`'s in a reverse index.
fn reindex<K, T>(index: &mut HashMap<K, HashSet<T>>, from: Option<&K>, to: &K, item: &T)
where
    K: Clone + Eq + std::hash::Hash,
    T: Clone + Eq + std::hash::Hash,
{
    if let Some(from) = from
        && from != to
        && let Some(set) = index.get_mut(from)
    {
        set.remove(item);
        if set.is_empty() {
            index.remove(from);
        }
    }
    index.entry(to.clone()).or_default().insert(item.clone());
}

impl State {
    /// Applies one write as its SQL would (timeline rows live elsewhere).
    pub(crate) fn apply(&mut self, write: &Write) {
        match write {
            // INSERT ... ON CONFLICT (id) DO UPDATE SET next_sequence
            Write::Customer { id, next_sequence } => {
                self.customers
                    .entry(id.clone())
                    .and_modify(|c| c.next_sequence = *next_sequence)
                    .or_insert(Customer {
                        merged_into: None,
                        next_sequence: *next_sequence,
                        segment: None,
                    });
            }
            // UPDATE customers SET segment = $2 WHERE id = $1
            Write::CustomerSegment { id, segment } => {
                if let Some(c) = self.customers.get_mut(id) {
                    c.segment.clone_from(segment);
                }
            }
            // INSERT ... ON CONFLICT (kind, scope, value) DO UPDATE
            Write::Identity {
                key,
                customer,
                confirmed,
            } => {
                let old = self
                    .identities
                    .insert(key.clone(), (customer.clone(), *confirmed));
                reindex(
                    &mut self.handles_of,
                    old.as_ref().map(|(c, _)| c),
                    customer,
                    key,
                );
            }
            // INSERT ... ON CONFLICT (id) DO UPDATE SET customer_id, open,
            // last_activity_ms, tags, priority and the automation facts
            // (the rest is kept).
            Write::Conversation(c) => {
                if let Some(at) = self.conversations.get(&c.id).and_then(|c| c.sla_timer_ms()) {
                    self.timers.remove(&(at, c.id.clone()));
                }
                if let Some(at) = c.sla_timer_ms() {
                    self.timers.insert((at, c.id.clone()));
                }
                let old_customer = match self.conversations.get_mut(&c.id) {
                    Some(old) => {
                        let was = std::mem::replace(&mut old.customer, c.customer.clone());
                        old.open = c.open;
                        old.last_activity_ms = c.last_activity_ms;
                        old.tags.clone_from(&c.tags);
                        old.priority = c.priority;
                        old.last_acknowledgement_ms = c.last_acknowledgement_ms;
                        old.auto_replies.clone_from(&c.auto_replies);
                        old.agent_replied = c.agent_replied;
                        old.awaiting.clone_from(&c.awaiting);
                        Some(was)
                    }
                    None => {
                        self.conversations.insert(c.id.clone(), c.clone());
                        None
                    }
                };
                reindex(
                    &mut self.conversations_of,
                    old_customer.as_ref(),
                    &c.customer,
                    &c.id,
                );
            }
            // INSERT ... ON CONFLICT (message_id, conversation_id) DO NOTHING
            Write::MessageRef {
                message_id,
                customer,
                conversation,
            } => {
                let rows = self.message_refs.entry(message_id.clone()).or_default();
                if !rows.iter().any(|(_, c)| c == conversation) {
                    rows.push((customer.clone(), conversation.clone()));
                    self.refs_of
                        .entry(customer.clone())
                        .or_default()
                        .insert(message_id.clone());
                    self.refs_in
                        .entry(conversation.clone())
                        .or_default()
                        .insert(message_id.clone());
                }
            }
            Write::Processed {
                event_id,
                conversation,
                ..
            } => {
                self.processed
                    .insert(event_id.clone(), conversation.clone());
            }
            Write::Timeline(_) | Write::StoreAttachment { .. } => {}
            Write::Merge { survivor, loser } => self.merge(survivor, loser),
            Write::DeleteSuggestion { customer, key } => self.unsuggest(customer, key),
            // INSERT ... ON CONFLICT DO NOTHING
            Write::InsertSuggestion { customer, key } => {
                self.suggested
                    .entry(key.clone())
                    .or_default()
                    .insert(customer.clone());
                self.suggestions_of
                    .entry(customer.clone())
                    .or_default()
                    .insert(key.clone());
            }
            // UPDATE message_refs SET customer_id = $2
            // WHERE conversation_id = $1 AND customer_id <> $2
            Write::MoveMessageRefs {
                conversation,
                customer,
            } => {
                let ids: Vec<String> = self
                    .refs_in
                    .get(conversation)
                    .map(|ids| ids.iter().cloned().collect())
                    .unwrap_or_default();
                for message_id in ids {
                    let Some(rows) = self.message_refs.get_mut(&message_id) else {
                        continue;
                    };
                    let mut moved = Vec::new();
                    for (owner, conv) in rows.iter_mut() {
                        if conv == conversation && owner != customer {
                            moved.push(std::mem::replace(owner, customer.clone()));
                        }
                    }
                    for old in moved {
                        self.move_ref(&old, customer, &message_id);
                    }
                }
            }
            Write::Command { command_id, .. } => {
                self.applied_commands.insert(command_id.clone());
            }
        }
    }

    /// Keeps `refs_of` right after one row of `message_id` moved from
    /// `from` to `to` (`from` keeps it while another of its rows has it).
    fn move_ref(&mut self, from: &CustomerId, to: &CustomerId, message_id: &str) {
        let still = self
            .message_refs
            .get(message_id)
            .is_some_and(|rows| rows.iter().any(|(c, _)| c == from));
        if !still && let Some(ids) = self.refs_of.get_mut(from) {
            ids.remove(message_id);
            if ids.is_empty() {
                self.refs_of.remove(from);
            }
        }
        self.refs_of
            .entry(to.clone())
            .or_default()
            .insert(message_id.to_owned());
    }

    /// `DELETE FROM suggested_links WHERE customer_id = $1 AND key = ...`
    fn unsuggest(&mut self, customer: &CustomerId, key: &HandleKey) {
        if let Some(set) = self.suggested.get_mut(key) {
            set.remove(customer);
            if set.is_empty() {
                self.suggested.remove(key);
            }
        }
        if let Some(set) = self.suggestions_of.get_mut(customer) {
            set.remove(key);
            if set.is_empty() {
                self.suggestions_of.remove(customer);
            }
        }
    }

    /// The merge statements of `sql.rs`: the loser and every customer
    /// merged into it before now point at the survivor, and the loser's
    /// handles, conversations, Message-IDs and suggestions move to it.
    fn merge(&mut self, survivor: &CustomerId, loser: &CustomerId) {
        // The survivor keeps its segment, or takes the loser's.
        let loser_segment = self.customers.get(loser).and_then(|c| c.segment.clone());
        if let Some(s) = self.customers.get_mut(survivor)
            && s.segment.is_none()
        {
            s.segment = loser_segment;
        }
        let mut losers = self.merged_from.remove(loser).unwrap_or_default();
        losers.insert(loser.clone());
        for id in &losers {
            if let Some(c) = self.customers.get_mut(id) {
                c.merged_into = Some(survivor.clone());
            }
        }
        // Only rows that exist are repointed (an UPDATE matches nothing
        // for an unknown id), but the survivor remembers them all.
        let losers: BTreeSet<CustomerId> = losers
            .into_iter()
            .filter(|id| self.customers.contains_key(id))
            .collect();
        if !losers.is_empty() {
            self.merged_from
                .entry(survivor.clone())
                .or_default()
                .extend(losers);
        }
        for key in self.handles_of.remove(loser).unwrap_or_default() {
            if let Some(owner) = self.identities.get_mut(&key) {
                owner.0 = survivor.clone();
            }
            self.handles_of
                .entry(survivor.clone())
                .or_default()
                .insert(key);
        }
        for id in self.conversations_of.remove(loser).unwrap_or_default() {
            if let Some(c) = self.conversations.get_mut(&id) {
                c.customer = survivor.clone();
            }
            self.conversations_of
                .entry(survivor.clone())
                .or_default()
                .insert(id);
        }
        for message_id in self.refs_of.remove(loser).unwrap_or_default() {
            if let Some(rows) = self.message_refs.get_mut(&message_id) {
                for (owner, _) in rows.iter_mut() {
                    if owner == loser {
                        *owner = survivor.clone();
                    }
                }
            }
            self.refs_of
                .entry(survivor.clone())
                .or_default()
                .insert(message_id);
        }
        // Suggestions are a set per customer: the survivor's copy of one
        // the loser also had is kept once.
        for key in self.suggestions_of.remove(loser).unwrap_or_default() {
            if let Some(set) = self.suggested.get_mut(&key) {
                set.remove(loser);
                set.insert(survivor.clone());
            }
            self.suggestions_of
                .entry(survivor.clone())
                .or_default()
                .insert(key);
        }
    }

    /// The id whose group holds `id`'s rows: its survivor, or itself if
    /// it has no customer row (a handle can name a customer whose row is
    /// written later in the same batch).
    pub(crate) fn group_of(&self, id: &CustomerId) -> CustomerId {
        self.resolve(id).unwrap_or_else(|| id.clone())
    }

    /// A group's customers: the survivor and those merged into it.
    fn members(&self, survivor: &CustomerId) -> Vec<CustomerId> {
        std::iter::once(survivor.clone())
            .chain(
                self.merged_from
                    .get(survivor)
                    .into_iter()
                    .flatten()
                    .cloned(),
            )
            .collect()
    }

    /// Every customer id whose rows `write` changes: those it names and,
    /// for a write that moves a row, the row's owner before it (read
    /// before the write is applied). The embedded store marks their groups
    /// as changed, so it never drops a group from memory whose rows on
    /// disk are out of date.
    pub(crate) fn touched_by(&self, write: &Write, out: &mut Vec<CustomerId>) {
        match write {
            Write::Customer { id, .. } | Write::CustomerSegment { id, .. } => out.push(id.clone()),
            Write::Identity { key, customer, .. } => {
                out.extend(self.identities.get(key).map(|(c, _)| c.clone()));
                out.push(customer.clone());
            }
            Write::Conversation(c) => {
                out.extend(self.conversations.get(&c.id).map(|c| c.customer.clone()));
                out.push(c.customer.clone());
            }
            Write::MessageRef { customer, .. } => out.push(customer.clone()),
            Write::Merge { survivor, loser } => {
                out.push(survivor.clone());
                out.push(loser.clone());
            }
            Write::DeleteSuggestion { customer, .. } | Write::InsertSuggestion { customer, .. } => {
                out.push(customer.clone());
            }
            Write::MoveMessageRefs {
                conversation,
                customer,
            } => {
                for message_id in self.refs_in.get(conversation).into_iter().flatten() {
                    for (owner, conv) in self.message_refs.get(message_id).into_iter().flatten() {
                        if conv == conversation {
                            out.push(owner.clone());
                        }
                    }
                }
                out.push(customer.clone());
            }
            Write::Processed { .. }
            | Write::Timeline(_)
            | Write::StoreAttachment { .. }
            | Write::Command { .. } => {}
        }
    }

    /// Writes that rebuild one group's rows from nothing: what the
    /// embedded store keeps on disk for a group it may drop from memory.
    pub(crate) fn group_writes(&self, survivor: &CustomerId) -> Vec<Write> {
        let members = self.members(survivor);
        let mut writes = Vec::new();
        for id in &members {
            self.row_writes(&Row::Customer(id.clone()), &mut writes);
            if self.customers.get(id).is_some_and(|c| c.segment.is_some()) {
                self.row_writes(&Row::Segment(id.clone()), &mut writes);
            }
        }
        for loser in &members[1..] {
            writes.push(Write::Merge {
                survivor: survivor.clone(),
                loser: loser.clone(),
            });
        }
        for id in &members {
            let rows = (self.handles_of.get(id).into_iter().flatten())
                .map(|key| Row::Identity(key.clone()))
                .chain(
                    (self.conversations_of.get(id).into_iter().flatten())
                        .map(|conv| Row::Conversation(conv.clone())),
                )
                .chain(
                    (self.refs_of.get(id).into_iter().flatten())
                        .map(|message_id| Row::MessageRef(message_id.clone(), id.clone())),
                )
                .chain(
                    (self.suggestions_of.get(id).into_iter().flatten())
                        .map(|key| Row::Suggestion(id.clone(), key.clone())),
                );
            for row in rows {
                self.row_writes(&row, &mut writes);
            }
        }
        writes
    }

    /// The writes that set `row` as it is now (a delete for a suggestion
    /// that went): what a delta appends for it.
    pub(crate) fn row_writes(&self, row: &Row, out: &mut Vec<Write>) {
        match row {
            Row::Customer(id) => out.extend(self.customers.get(id).map(|c| Write::Customer {
                id: id.clone(),
                next_sequence: c.next_sequence,
            })),
            Row::Segment(id) => {
                out.extend(self.customers.get(id).map(|c| Write::CustomerSegment {
                    id: id.clone(),
                    segment: c.segment.clone(),
                }))
            }
            Row::Identity(key) => {
                out.extend(
                    self.identities
                        .get(key)
                        .map(|(customer, confirmed)| Write::Identity {
                            key: key.clone(),
                            customer: customer.clone(),
                            confirmed: *confirmed,
                        }),
                );
            }
            Row::Conversation(id) => {
                out.extend(self.conversations.get(id).cloned().map(Write::Conversation));
            }
            Row::MessageRef(message_id, customer) => {
                for (owner, conversation) in self.message_refs.get(message_id).into_iter().flatten()
                {
                    if owner == customer {
                        out.push(Write::MessageRef {
                            message_id: message_id.clone(),
                            customer: owner.clone(),
                            conversation: conversation.clone(),
                        });
                    }
                }
            }
            Row::Suggestion(customer, key) => {
                let (customer, key) = (customer.clone(), key.clone());
                out.push(
                    if self
                        .suggested
                        .get(&key)
                        .is_some_and(|c| c.contains(&customer))
                    {
                        Write::InsertSuggestion { customer, key }
                    } else {
                        Write::DeleteSuggestion { customer, key }
                    },
                );
            }
        }
    }

    /// Whether one of the group's conversations has an SLA timer: the
    /// clock reads those from memory, so the group stays there.
    pub(crate) fn group_has_timers(&self, survivor: &CustomerId) -> bool {
        self.members(survivor).iter().any(|id| {
            self.conversations_of
                .get(id)
                .into_iter()
                .flatten()
                .any(|conv| {
                    self.conversations
                        .get(conv)
                        .is_some_and(|c| c.sla_timer_ms().is_some())
                })
        })
    }

    /// Drops a group's rows from memory (they are on disk).
    pub(crate) fn evict(&mut self, survivor: &CustomerId) {
        let members = self.members(survivor);
        self.merged_from.remove(survivor);
        for id in &members {
            self.customers.remove(id);
            for key in self.handles_of.remove(id).unwrap_or_default() {
                if self.identities.get(&key).is_some_and(|(c, _)| c == id) {
                    self.identities.remove(&key);
                }
            }
            for conv in self.conversations_of.remove(id).unwrap_or_default() {
                if let Some(c) = self.conversations.remove(&conv)
                    && let Some(at) = c.sla_timer_ms()
                {
                    self.timers.remove(&(at, conv.clone()));
                }
            }
            for message_id in self.refs_of.remove(id).unwrap_or_default() {
                let Some(rows) = self.message_refs.get_mut(&message_id) else {
                    continue;
                };
                rows.retain(|(owner, conv)| {
                    let keep = owner != id;
                    if !keep && let Some(ids) = self.refs_in.get_mut(conv) {
                        ids.remove(&message_id);
                        if ids.is_empty() {
                            self.refs_in.remove(conv);
                        }
                    }
                    keep
                });
                if rows.is_empty() {
                    self.message_refs.remove(&message_id);
                }
            }
            for key in self.suggestions_of.remove(id).unwrap_or_default() {
                if let Some(set) = self.suggested.get_mut(&key) {
                    set.remove(id);
                    if set.is_empty() {
                        self.suggested.remove(&key);
                    }
                }
            }
        }
    }

    /// Every group the state holds rows of, by its id.
    pub(crate) fn all_groups(&self) -> BTreeSet<CustomerId> {
        self.customers
            .keys()
            .chain(self.handles_of.keys())
            .chain(self.conversations_of.keys())
            .chain(self.refs_of.keys())
            .chain(self.suggestions_of.keys())
            .map(|id| self.group_of(id))
            .collect()
    }

    /// Whether the state holds a row for this handle, conversation or
    /// customer: if it does, the group that owns it is in memory.
    pub(crate) fn has_identity(&self, key: &HandleKey) -> bool {
        self.identities.contains_key(key)
    }

    pub(crate) fn has_conversation(&self, id: &str) -> bool {
        self.conversations.contains_key(id)
    }

    pub(crate) fn has_customer(&self, id: &CustomerId) -> bool {
        self.customers.contains_key(id)
    }

    /// Forgets a command id a snapshot moved to the tables.
    pub(crate) fn forget_command(&mut self, command_id: &str) {
        self.applied_commands.remove(command_id);
    }

    /// Forgets the event ids a snapshot moved to the tables: the store
    /// looks ids up there once they are not in memory. The map is freed,
    /// not cleared, so memory between snapshots follows the ids since the
    /// last one, not the most there ever were.
    pub(crate) fn forget_processed(&mut self) {
        self.processed = HashMap::default();
    }

    /// The threaded event ids in memory and their conversations.
    pub(crate) fn processed(&self) -> impl Iterator<Item = (&String, &String)> {
        self.processed.iter()
    }

    /// Whether `event_id` is among the threaded ids still in memory.
    pub(crate) fn has_processed(&self, event_id: &str) -> bool {
        self.processed.contains_key(event_id)
    }

    /// The conversation an event id in memory went to.
    pub(crate) fn processed_conversation(&self, event_id: &str) -> Option<&String> {
        self.processed.get(event_id)
    }

    /// How many rows of each kind the state holds, for the store's
    /// figures.
    pub(crate) fn sizes(&self) -> StateSizes {
        StateSizes {
            customers: self.customers.len(),
            identities: self.identities.len(),
            conversations: self.conversations.len(),
            message_ids: self.message_refs.len(),
            recent_event_ids: self.processed.len(),
        }
    }

    /// A customer's surviving id (`COALESCE(merged_into, id)`); `None` for
    /// an unknown id.
    pub(crate) fn resolve(&self, id: &CustomerId) -> Option<CustomerId> {
        self.customers
            .get(id)
            .map(|c| c.merged_into.clone().unwrap_or_else(|| id.clone()))
    }

    /// The owner of a handle, resolved through merges.
    pub(crate) fn owner(&self, key: &HandleKey) -> Option<HandleOwner> {
        self.identities
            .get(key)
            .map(|(customer, confirmed)| HandleOwner {
                customer: self.resolve(customer).unwrap_or_else(|| customer.clone()),
                confirmed: *confirmed,
            })
    }

    /// Handles suggested for a customer, in key order.
    pub(crate) fn suggestions(&self, customer: &CustomerId) -> Vec<HandleKey> {
        self.suggestions_of
            .get(customer)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The customer ids whose timeline rows belong to `survivor`'s
    /// timeline: itself and every customer merged into it (none if it is
    /// unknown).
    pub(crate) fn timeline_customers(&self, survivor: &CustomerId) -> Vec<CustomerId> {
        if !self.customers.contains_key(survivor) {
            return Vec::new();
        }
        self.members(survivor)
    }

    /// Reads what a batch wanting `wants` can look at into `overlay`, as
    /// the SQL prefetch reads it from the tables.
    pub(crate) fn prefetch(&self, wants: &Wants, overlay: &mut Overlay) {
        for id in &wants.event_ids {
            if let Some(conversation) = self.processed.get(id) {
                overlay.add_processed(id.clone(), conversation.clone());
            }
        }
        for key in &wants.handles {
            if let Some(owner) = self.owner(key) {
                overlay.add_owner(key.clone(), owner);
            }
            for customer in self.suggested.get(key).into_iter().flatten() {
                overlay.add_suggestion(customer.clone(), key.clone());
            }
        }
        for id in overlay.owner_customers() {
            if let Some(c) = self.customers.get(&id) {
                overlay.add_customer(id.clone(), c.next_sequence, c.segment.clone());
            }
            for conv in self.conversations_of.get(&id).into_iter().flatten() {
                let c = &self.conversations[conv];
                if c.open || c.email {
                    overlay.add_conversation(c.clone());
                }
            }
        }
        for message_id in &wants.message_ids {
            for (customer, conversation) in self.message_refs.get(message_id).into_iter().flatten()
            {
                overlay.add_message_ref(message_id.clone(), customer.clone(), conversation.clone());
            }
        }
        for id in overlay.missing_conversations() {
            if let Some(c) = self.conversations.get(&id) {
                overlay.add_conversation(c.clone());
            }
        }
        for id in overlay.missing_customers() {
            if let Some(c) = self.customers.get(&id) {
                overlay.add_customer(id, c.next_sequence, c.segment.clone());
            }
        }
    }

    /// Whether some SLA timer is due at `now_ms`.
    pub(crate) fn has_due_timer(&self, now_ms: i64) -> bool {
        self.timers.first().is_some_and(|(at, _)| *at <= now_ms)
    }

    /// The conversations whose SLA timers are due at `now_ms` (at most
    /// `limit`, earliest first), as the PostgreSQL store's clock reads
    /// them: owners resolved through merges, with their next sequences.
    pub(crate) fn timer_snapshot(&self, now_ms: i64, limit: usize) -> TimerSnapshot {
        let mut snapshot = TimerSnapshot::default();
        for (_, id) in self
            .timers
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .take(limit)
        {
            let Some(c) = self.conversations.get(id) else {
                continue;
            };
            let mut c = c.clone();
            if let Some(survivor) = self.resolve(&c.customer) {
                c.customer = survivor;
            }
            let next = self
                .customers
                .get(&c.customer)
                .map_or(1, |c| c.next_sequence);
            snapshot.next_sequence.insert(c.customer.clone(), next);
            snapshot.conversations.push(c);
        }
        snapshot
    }

    /// What the SQL store's command snapshot reads, from memory.
    pub(crate) fn command_snapshot(&self, lookups: &CommandLookups) -> CommandSnapshot {
        let mut snapshot = CommandSnapshot::default();
        if self.applied_commands.contains(&lookups.command_id) {
            snapshot.already_applied = true;
            return snapshot;
        }
        let mut named = lookups.customers.clone();
        for id in &lookups.conversations {
            if let Some(c) = self.conversations.get(id) {
                named.push(c.customer.clone());
                snapshot.conversations.insert(id.clone(), c.clone());
            }
        }
        for id in named {
            if let Some(survivor) = self.resolve(&id) {
                snapshot.resolved.insert(id, survivor);
            }
        }
        for c in snapshot.conversations.values_mut() {
            if let Some(survivor) = snapshot.resolved.get(&c.customer) {
                c.customer = survivor.clone();
            }
        }
        for key in &lookups.handles {
            if let Some(owner) = self.owner(key) {
                snapshot.owners.insert(key.clone(), owner);
            }
        }
        let survivors: BTreeSet<&CustomerId> = snapshot
            .resolved
            .values()
            .chain(snapshot.owners.values().map(|o| &o.customer))
            .collect();
        let next: Vec<(CustomerId, u64)> = survivors
            .iter()
            .map(|c| {
                let next = self.customers.get(*c).map_or(1, |c| c.next_sequence);
                ((*c).clone(), next)
            })
            .collect();
        let segments: Vec<(CustomerId, String)> = survivors
            .iter()
            .filter_map(|c| Some(((*c).clone(), self.customers.get(*c)?.segment.clone()?)))
            .collect();
        snapshot.next_sequence.extend(next);
        snapshot.segments.extend(segments);
        snapshot
    }
}

/// The writes of the clock's SLA timers, as the SQL store runs them.
pub(crate) fn timer_writes(plan: &TimerPlan) -> Vec<Write> {
    let conversations = plan
        .conversations
        .iter()
        .map(|c| Write::Conversation(c.clone()));
    let timeline = plan
        .timeline
        .iter()
        .map(|entry| Write::Timeline(Box::new(entry.clone())));
    let customers = plan
        .next_sequences
        .iter()
        .map(|(id, next)| Write::Customer {
            id: id.clone(),
            next_sequence: *next,
        });
    conversations.chain(timeline).chain(customers).collect()
}

/// The writes of a command plan, in the order the SQL store's
/// `write_command` runs its statements (timeline entries included).
pub(crate) fn command_writes(
    command_id: &str,
    issued_at_ms: i64,
    plan: &CommandPlan,
) -> Vec<Write> {
    let mut writes = Vec::new();
    for id in &plan.create_customers {
        writes.push(Write::Customer {
            id: id.clone(),
            next_sequence: 1,
        });
    }
    for (survivor, loser) in &plan.merges {
        writes.push(Write::Merge {
            survivor: survivor.clone(),
            loser: loser.clone(),
        });
    }
    for (key, customer, confirmed) in &plan.links {
        writes.push(Write::Identity {
            key: key.clone(),
            customer: customer.clone(),
            confirmed: *confirmed,
        });
        writes.push(Write::DeleteSuggestion {
            customer: customer.clone(),
            key: key.clone(),
        });
    }
    for c in &plan.conversations {
        writes.push(Write::Conversation(c.clone()));
        writes.push(Write::MoveMessageRefs {
            conversation: c.id.clone(),
            customer: c.customer.clone(),
        });
    }
    for (customer, segment) in &plan.segments {
        writes.push(Write::CustomerSegment {
            id: customer.clone(),
            segment: segment.clone(),
        });
    }
    for entry in &plan.timeline {
        writes.push(Write::Timeline(Box::new(entry.clone())));
    }
    for (customer, next) in &plan.next_sequences {
        writes.push(Write::Customer {
            id: customer.clone(),
            next_sequence: *next,
        });
    }
    writes.push(Write::Command {
        command_id: command_id.to_owned(),
        issued_at_ms,
    });
    writes
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn key(value: &str) -> HandleKey {
        HandleKey {
            kind: "phone".into(),
            scope: String::new(),
            value: value.into(),
        }
    }

    pub(crate) fn id(s: &str) -> CustomerId {
        CustomerId::from_string(s.into())
    }

    /// An open email conversation with nothing else set.
    pub(crate) fn conversation(id_: &str, customer: &str) -> Conversation {
        Conversation {
            id: id_.into(),
            customer: id(customer),
            channel_id: "mail".into(),
            thread_key: String::new(),
            email: true,
            subject: "hello".into(),
            open: true,
            last_activity_ms: 1,
            tags: Vec::new(),
            priority: None,
            last_acknowledgement_ms: None,
            auto_replies: Vec::new(),
            agent_replied: false,
            awaiting: None,
        }
    }

    /// Two customers with a handle, a conversation, a Message-ID and a
    /// suggestion each; `b` merged into `a`, which had absorbed `c`.
    fn merged() -> State {
        let mut s = State::default();
        for (c, n) in [("a", "1"), ("b", "2"), ("c", "3")] {
            s.apply(&Write::Customer {
                id: id(c),
                next_sequence: 5,
            });
            s.apply(&Write::Identity {
                key: key(n),
                customer: id(c),
                confirmed: true,
            });
            s.apply(&Write::Conversation(conversation(&format!("conv-{c}"), c)));
            s.apply(&Write::MessageRef {
                message_id: format!("<{c}@x>"),
                customer: id(c),
                conversation: format!("conv-{c}"),
            });
            s.apply(&Write::InsertSuggestion {
                customer: id(c),
                key: key("9"),
            });
        }
        s.apply(&Write::Merge {
            survivor: id("b"),
            loser: id("c"),
        });
        s.apply(&Write::Merge {
            survivor: id("a"),
            loser: id("b"),
        });
        s
    }

    #[test]
    fn a_merge_moves_every_row_and_repoints_earlier_losers() {
        let s = merged();
        for c in ["a", "b", "c"] {
            assert_eq!(s.resolve(&id(c)), Some(id("a")), "{c}");
        }
        for n in ["1", "2", "3"] {
            assert_eq!(s.owner(&key(n)).unwrap().customer, id("a"), "{n}");
        }
        assert_eq!(
            s.timeline_customers(&id("a")),
            vec![id("a"), id("b"), id("c")]
        );
        assert!(s.timeline_customers(&id("zz")).is_empty());
        assert_eq!(s.suggestions(&id("a")), vec![key("9")]);
        assert!(s.suggestions(&id("b")).is_empty());
        assert_eq!(s.conversations_of[&id("a")].len(), 3);
        assert!(s.conversations.values().all(|c| c.customer == id("a")));
        assert!(
            s.message_refs
                .values()
                .flatten()
                .all(|(c, _)| *c == id("a"))
        );
    }

    #[test]
    fn a_split_moves_one_conversation_with_its_message_ids() {
        let mut s = merged();
        let mut moved = conversation("conv-b", "new");
        moved.open = false;
        s.apply(&Write::Customer {
            id: id("new"),
            next_sequence: 1,
        });
        s.apply(&Write::Conversation(moved));
        s.apply(&Write::MoveMessageRefs {
            conversation: "conv-b".into(),
            customer: id("new"),
        });
        let c = &s.conversations["conv-b"];
        assert_eq!(
            (c.customer.clone(), c.open, c.subject.as_str()),
            (id("new"), false, "hello")
        );
        assert_eq!(
            s.message_refs["<b@x>"],
            vec![(id("new"), "conv-b".to_owned())]
        );
        assert!(s.refs_of[&id("new")].contains("<b@x>"));
        assert!(!s.refs_of[&id("a")].contains("<b@x>"));
        assert!(!s.conversations_of[&id("a")].contains("conv-b"));
    }

    /// Every group written out, dropped and read back: the state is as it
    /// was, and dropping one group leaves the others' rows alone.
    #[test]
    fn groups_written_dropped_and_loaded_rebuild_the_state() {
        let mut s = merged();
        s.apply(&Write::Customer {
            id: id("d"),
            next_sequence: 2,
        });
        s.apply(&Write::CustomerSegment {
            id: id("d"),
            segment: Some("vip".into()),
        });
        s.apply(&Write::Conversation(conversation("conv-d", "d")));
        s.apply(&Write::MessageRef {
            message_id: "<a@x>".into(),
            customer: id("d"),
            conversation: "conv-d".into(),
        });
        let groups = s.all_groups();
        assert_eq!(groups, BTreeSet::from([id("a"), id("d")]));
        let dumps: Vec<Vec<Write>> = groups.iter().map(|g| s.group_writes(g)).collect();

        let mut without_d = merged();
        without_d.apply(&Write::Customer {
            id: id("d"),
            next_sequence: 2,
        });
        without_d.evict(&id("d"));
        let mut only_a = State::default();
        dumps[0].iter().for_each(|w| only_a.apply(w));
        assert_eq!(without_d.conversations, only_a.conversations);
        assert_eq!(without_d.message_refs, only_a.message_refs);
        assert_eq!(without_d.sizes(), only_a.sizes());

        let mut back = s.clone();
        for g in &groups {
            back.evict(g);
        }
        assert_eq!(back.sizes(), StateSizes::default());
        assert!(back.message_refs.is_empty() && back.refs_in.is_empty());
        assert!(back.suggested.is_empty() && back.timers.is_empty());
        for dump in &dumps {
            dump.iter().for_each(|w| back.apply(w));
        }
        for c in ["a", "b", "c", "d", "zz"] {
            assert_eq!(back.resolve(&id(c)), s.resolve(&id(c)), "{c}");
            assert_eq!(
                back.timeline_customers(&id(c)),
                s.timeline_customers(&id(c))
            );
        }
        for n in ["1", "2", "3", "9"] {
            assert_eq!(back.owner(&key(n)), s.owner(&key(n)), "{n}");
        }
        assert_eq!(back.conversations, s.conversations);
        assert_eq!(back.conversations_of, s.conversations_of);
        assert_eq!(back.message_refs.len(), s.message_refs.len());
        for (mid, rows) in &s.message_refs {
            let mut a = rows.clone();
            let mut b = back.message_refs[mid].clone();
            a.sort();
            b.sort();
            assert_eq!(a, b, "{mid}");
        }
        assert_eq!(back.refs_of, s.refs_of);
        assert_eq!(back.refs_in, s.refs_in);
        assert_eq!(back.suggestions(&id("a")), s.suggestions(&id("a")));
        assert_eq!(back.customers[&id("d")].segment.as_deref(), Some("vip"));
        assert_eq!(back.sizes(), s.sizes());
    }

    #[test]
    fn writes_survive_the_journal_encoding() {
        let writes = vec![
            Write::Identity {
                key: key("1"),
                customer: id("a"),
                confirmed: false,
            },
            Write::Conversation(conversation("conv", "a")),
            Write::Command {
                command_id: "cmd".into(),
                issued_at_ms: 7,
            },
        ];
        let json = serde_json::to_string(&writes).unwrap();
        let back: Vec<Write> = serde_json::from_str(&json).unwrap();
        let mut a = State::default();
        let mut b = State::default();
        writes.iter().for_each(|w| a.apply(w));
        back.iter().for_each(|w| b.apply(w));
        assert_eq!(a.owner(&key("1")), b.owner(&key("1")));
        assert_eq!(a.conversations, b.conversations);
        assert_eq!(a.applied_commands, b.applied_commands);
    }
}
