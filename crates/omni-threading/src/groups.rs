//! The embedded store's bounded memory: its threading state is kept on
//! disk one customer group at a time (a surviving customer with those
//! merged into it, their handles, conversations, Message-IDs and
//! suggestions), and memory holds the groups in use.
//!
//! A group is the unit because every decision reads and changes whole
//! customers: a merge moves all of a loser's rows, a reply looks up the
//! conversation of a Message-ID and then that customer's other
//! conversations. Loading whole groups keeps the in-memory [`State`] and
//! its reverse indexes exactly as correct as when everything was in
//! memory, and lets the same [`State`] code decide.
//!
//! On disk a group is one row (its rows as [`Write`]s) plus one index row
//! per key that can lead to it (a handle, a Message-ID, a conversation
//! id, a customer id). The index only says which groups to load: what is
//! then decided is read from memory, so a stale index row (a handle that
//! has since moved to another group) costs a useless load, never a wrong
//! answer. What keeps it right is one rule: a group that changed since it
//! was last written stays in memory (and so is never loaded over), and
//! every group a write touches, before and after, counts as changed
//! ([`State::touched_by`]).
//!
//! This module holds the pure part: the index keys and the choice of what
//! to drop; `sqlite.rs` does the reads and writes.

use std::collections::BTreeSet;

use crate::batch::{Overlay, Wants, Write};
use crate::commands::CommandLookups;
use crate::ids::{CustomerId, HandleKey};
use crate::state::{HashMap, HashSet, State};

/// Separates the parts of an index key. A part containing it can make two
/// keys equal, which only loads a group that is not needed.
const SEP: char = '\u{1f}';

/// The index key of a customer id (any member of a group).
pub(crate) fn customer_key(id: &CustomerId) -> String {
    format!("u{SEP}{id}")
}

/// The index key of a handle's owner.
pub(crate) fn handle_key(key: &HandleKey) -> String {
    format!("h{SEP}{}{SEP}{}{SEP}{}", key.kind, key.scope, key.value)
}

/// The index key of the customers a handle is suggested for.
pub(crate) fn suggestion_key(key: &HandleKey) -> String {
    format!("s{SEP}{}{SEP}{}{SEP}{}", key.kind, key.scope, key.value)
}

/// The index key of a conversation.
pub(crate) fn conversation_key(id: &str) -> String {
    format!("c{SEP}{id}")
}

/// The index key of an email Message-ID.
pub(crate) fn message_key(id: &str) -> String {
    format!("m{SEP}{id}")
}

/// The index key every group with an SLA timer is listed under: the clock
/// reads timers from memory, so opening the store loads those groups.
pub(crate) const TIMERS_KEY: &str = "t";

/// The index keys that lead to `survivor`'s group, from its rebuilding
/// writes.
pub(crate) fn keys_of_group(survivor: &CustomerId, writes: &[Write]) -> BTreeSet<String> {
    let mut keys = BTreeSet::from([customer_key(survivor)]);
    for write in writes {
        match write {
            Write::Customer { id, .. } => {
                keys.insert(customer_key(id));
            }
            Write::Identity { key, .. } => {
                keys.insert(handle_key(key));
            }
            Write::Conversation(c) => {
                keys.insert(conversation_key(&c.id));
            }
            Write::MessageRef { message_id, .. } => {
                keys.insert(message_key(message_id));
            }
            Write::InsertSuggestion { key, .. } => {
                keys.insert(suggestion_key(key));
            }
            _ => {}
        }
    }
    keys
}

/// The index keys a batch's lookups need whose groups may be on disk only.
/// Suggestions and Message-IDs are always looked up: several groups can
/// hold one, and memory may hold only some of them.
pub(crate) fn keys_for_batch(
    state: &State,
    wants: &Wants,
    conversations: &[String],
) -> Vec<String> {
    let mut keys = Vec::new();
    for key in &wants.handles {
        if !state.has_identity(key) {
            keys.push(handle_key(key));
        }
        keys.push(suggestion_key(key));
    }
    keys.extend(wants.message_ids.iter().map(|id| message_key(id)));
    keys.extend(
        conversations
            .iter()
            .filter(|c| !state.has_conversation(c))
            .map(|c| conversation_key(c)),
    );
    keys
}

/// The index keys of what a batch's first read named but memory lacks:
/// conversations of Message-IDs and event ids, and their customers.
pub(crate) fn keys_for_overlay(state: &State, overlay: &Overlay) -> Vec<String> {
    let conversations = overlay
        .missing_conversations()
        .into_iter()
        .filter(|c| !state.has_conversation(c))
        .map(|c| conversation_key(&c));
    let customers = overlay
        .missing_customers()
        .into_iter()
        .filter(|c| !state.has_customer(c))
        .map(|c| customer_key(&c));
    conversations.chain(customers).collect()
}

/// The index keys a command's lookups need.
pub(crate) fn keys_for_command(state: &State, lookups: &CommandLookups) -> Vec<String> {
    let customers = lookups
        .customers
        .iter()
        .filter(|c| !state.has_customer(c))
        .map(customer_key);
    let conversations = lookups
        .conversations
        .iter()
        .filter(|c| !state.has_conversation(c))
        .map(|c| conversation_key(c));
    let handles = lookups
        .handles
        .iter()
        .filter(|k| !state.has_identity(k))
        .map(handle_key);
    customers.chain(conversations).chain(handles).collect()
}

/// The index keys of the groups a journal row's writes change that memory
/// may lack, so they are loaded before the row is applied (opening the
/// store, or another process's rows). Only what a write changes counts:
/// the customers it names, the old owner of a handle it moves (`h`) and
/// of a conversation it moves or whose Message-IDs it moves (`c`); keys
/// memory already holds are left out.
pub(crate) fn keys_of_writes(state: &State, writes: &[Write]) -> Vec<String> {
    let mut keys = Vec::new();
    let customer = |id: &CustomerId, keys: &mut Vec<String>| {
        if !state.has_customer(id) {
            keys.push(customer_key(id));
        }
    };
    for write in writes {
        match write {
            Write::Customer { id, .. } | Write::CustomerSegment { id, .. } => {
                customer(id, &mut keys);
            }
            Write::Identity {
                key, customer: c, ..
            } => {
                if !state.has_identity(key) {
                    keys.push(handle_key(key));
                }
                customer(c, &mut keys);
            }
            Write::Conversation(c) => {
                if !state.has_conversation(&c.id) {
                    keys.push(conversation_key(&c.id));
                }
                customer(&c.customer, &mut keys);
            }
            Write::MoveMessageRefs {
                conversation,
                customer: c,
            } => {
                if !state.has_conversation(conversation) {
                    keys.push(conversation_key(conversation));
                }
                customer(c, &mut keys);
            }
            Write::MessageRef { customer: c, .. }
            | Write::DeleteSuggestion { customer: c, .. }
            | Write::InsertSuggestion { customer: c, .. } => customer(c, &mut keys),
            Write::Merge { survivor, loser } => {
                customer(survivor, &mut keys);
                customer(loser, &mut keys);
            }
            Write::Processed { .. }
            | Write::Command { .. }
            | Write::Timeline(_)
            | Write::StoreAttachment { .. } => {}
        }
    }
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Which groups memory holds, how recently each was used and how large
/// it is on disk, and which changed since they were last written.
#[derive(Debug, Default)]
pub(crate) struct GroupCache {
    /// Group id -> (last use, bytes on disk; 0 until first written).
    loaded: HashMap<CustomerId, (u64, u64)>,
    /// Customer ids whose rows changed since the last snapshot (mapped to
    /// their groups when it runs: merges may still move them).
    changed: HashSet<CustomerId>,
    clock: u64,
    /// Bytes on disk of the groups in `loaded`.
    bytes: u64,
}

impl GroupCache {
    /// Whether `group` is in memory.
    pub(crate) fn holds(&self, group: &CustomerId) -> bool {
        self.loaded.contains_key(group)
    }

    /// Records a group loaded from disk (`bytes` long there).
    pub(crate) fn loaded(&mut self, group: CustomerId, bytes: u64) {
        self.clock += 1;
        let old = self.loaded.insert(group, (self.clock, bytes));
        self.bytes = self.bytes + bytes - old.map_or(0, |(_, b)| b);
    }

    /// Records that these customers' rows changed (and their groups were
    /// used).
    pub(crate) fn changed(&mut self, state: &State, ids: impl IntoIterator<Item = CustomerId>) {
        self.clock += 1;
        for id in ids {
            let group = state.group_of(&id);
            match self.loaded.get_mut(&group) {
                Some(entry) => entry.0 = self.clock,
                None => {
                    self.loaded.insert(group, (self.clock, 0));
                }
            }
            self.changed.insert(id);
        }
    }

    /// Marks every group of `state` as changed (an upgrade from the
    /// format that kept everything in memory).
    pub(crate) fn all_changed(&mut self, state: &State) {
        let groups = state.all_groups();
        self.changed(state, groups);
    }

    /// The snapshot's work: the groups to write (by id) and the ids that
    /// no longer head a group (merged away), whose rows on disk go.
    pub(crate) fn to_write(&self, state: &State) -> (BTreeSet<CustomerId>, BTreeSet<CustomerId>) {
        let groups: BTreeSet<CustomerId> =
            self.changed.iter().map(|id| state.group_of(id)).collect();
        let gone = self
            .changed
            .iter()
            .filter(|id| !groups.contains(*id))
            .cloned()
            .collect();
        (groups, gone)
    }

    /// After a snapshot wrote `written` (id, bytes): nothing is changed
    /// any more, and entries of ids merged away are dropped.
    pub(crate) fn written(&mut self, state: &State, written: &[(CustomerId, u64)]) {
        for id in self.changed.drain() {
            if state.group_of(&id) != id
                && let Some((_, bytes)) = self.loaded.remove(&id)
            {
                self.bytes -= bytes;
            }
        }
        for (group, bytes) in written {
            let entry = self.loaded.entry(group.clone()).or_insert((self.clock, 0));
            self.bytes = self.bytes + bytes - entry.1;
            entry.1 = *bytes;
        }
    }

    /// Drops least recently used groups from `state` until the groups in
    /// memory are at most `budget` bytes on disk, keeping changed ones and
    /// those with SLA timers. Returns how many went.
    pub(crate) fn shrink(&mut self, state: &mut State, budget: u64) -> usize {
        if self.bytes <= budget {
            return 0;
        }
        let mut by_age: Vec<(u64, CustomerId)> = self
            .loaded
            .iter()
            .map(|(group, (used, _))| (*used, group.clone()))
            .collect();
        by_age.sort_unstable();
        let (changed, _) = self.to_write(state);
        let mut dropped = 0;
        for (_, group) in by_age {
            if self.bytes <= budget {
                break;
            }
            if changed.contains(&group) || state.group_has_timers(&group) {
                continue;
            }
            if let Some((_, bytes)) = self.loaded.remove(&group) {
                self.bytes -= bytes;
            }
            state.evict(&group);
            dropped += 1;
        }
        dropped
    }

    /// Customers changed since the last snapshot.
    pub(crate) fn changed_count(&self) -> usize {
        self.changed.len()
    }

    /// Groups and their bytes on disk, for operators.
    pub(crate) fn size(&self) -> (usize, u64) {
        (self.loaded.len(), self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logic::{AwaitingResponse, Conversation};

    fn id(s: &str) -> CustomerId {
        CustomerId::from_string(s.into())
    }

    fn customer(state: &mut State, cache: &mut GroupCache, name: &str, awaiting: bool) {
        let writes = vec![
            Write::Customer {
                id: id(name),
                next_sequence: 2,
            },
            Write::Conversation(Conversation {
                id: format!("conv-{name}"),
                customer: id(name),
                channel_id: "sms".into(),
                thread_key: String::new(),
                email: false,
                subject: String::new(),
                open: true,
                last_activity_ms: 1,
                tags: Vec::new(),
                priority: None,
                last_acknowledgement_ms: None,
                auto_replies: Vec::new(),
                agent_replied: false,
                awaiting: awaiting.then(|| AwaitingResponse {
                    event_id: "ev".into(),
                    since_ms: 0,
                    first: true,
                    priority: omni_rules::Priority::P3,
                    rule_set: "default".into(),
                    target_ms: 60_000,
                    due_ms: 60_000,
                    escalate_at_ms: 60_000,
                    escalated: false,
                    breached: false,
                }),
            }),
        ];
        let mut touched = Vec::new();
        for write in &writes {
            state.touched_by(write, &mut touched);
            state.apply(write);
        }
        cache.changed(state, touched);
    }

    /// After a snapshot the least recently used groups go first, down to
    /// the budget; a group with a running SLA timer and one changed since
    /// the snapshot stay whatever their age.
    #[test]
    fn shrinking_drops_the_oldest_clean_groups_without_timers() {
        let mut state = State::default();
        let mut cache = GroupCache::default();
        for (name, timer) in [("a", false), ("b", true), ("c", false), ("d", false)] {
            customer(&mut state, &mut cache, name, timer);
        }
        let (groups, gone) = cache.to_write(&state);
        assert_eq!(groups.len(), 4);
        assert!(gone.is_empty());
        let written: Vec<(CustomerId, u64)> = groups.into_iter().map(|g| (g, 100)).collect();
        cache.written(&state, &written);
        assert_eq!(cache.size(), (4, 400));
        // `a` changes again after the snapshot; `c` is used again (a
        // lookup loaded it).
        customer(&mut state, &mut cache, "a", false);
        cache.loaded(id("c"), 100);

        // Oldest first: `b` has a timer, so `d` goes, and that is enough.
        assert_eq!(cache.shrink(&mut state, 300), 1);
        assert!(!cache.holds(&id("d")) && !state.has_customer(&id("d")));
        assert!(!state.has_conversation("conv-d"));
        assert!(cache.holds(&id("c")), "used since");
        // Down to nothing: only what must stay does.
        assert_eq!(cache.shrink(&mut state, 0), 1);
        assert!(cache.holds(&id("a")), "changed since the snapshot");
        assert!(cache.holds(&id("b")), "has a timer");
        assert!(!cache.holds(&id("c")) && !state.has_customer(&id("c")));
        assert!(state.has_customer(&id("a")) && state.has_conversation("conv-b"));
        assert_eq!(cache.size(), (2, 200));
    }

    /// A merge writes the survivor's group and deletes the loser's.
    #[test]
    fn a_merged_group_is_written_under_its_survivor() {
        let mut state = State::default();
        let mut cache = GroupCache::default();
        customer(&mut state, &mut cache, "a", false);
        customer(&mut state, &mut cache, "b", false);
        let merge = Write::Merge {
            survivor: id("a"),
            loser: id("b"),
        };
        let mut touched = Vec::new();
        state.touched_by(&merge, &mut touched);
        state.apply(&merge);
        cache.changed(&state, touched);
        let (groups, gone) = cache.to_write(&state);
        assert_eq!(groups, BTreeSet::from([id("a")]));
        assert_eq!(gone, BTreeSet::from([id("b")]));
        let writes = state.group_writes(&id("a"));
        let keys = keys_of_group(&id("a"), &writes);
        for key in [
            customer_key(&id("a")),
            customer_key(&id("b")),
            conversation_key("conv-a"),
            conversation_key("conv-b"),
        ] {
            assert!(keys.contains(&key), "{key}");
        }
        cache.written(&state, &[(id("a"), 300)]);
        assert!(cache.holds(&id("a")) && !cache.holds(&id("b")));
        assert_eq!(cache.size(), (1, 300));
    }
}
