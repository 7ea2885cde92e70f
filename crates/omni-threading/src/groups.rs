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
//! A group is stored as a base row and delta rows: a snapshot appends a
//! changed group's new writes as a delta and writes it whole only when it
//! must ([`GroupCache`] says when), so a snapshot costs what changed, not
//! the customer's history. Each row is the JSON of its writes compressed
//! with zstd: the JSON repeats field names and ids, and a compressed row
//! is about 40% of its size. Rows of earlier versions, plain JSON text,
//! still load.
//!
//! This module holds the pure part: the index keys, the row codec and the
//! choice of what to drop; `sqlite.rs` does the reads and writes.

use std::collections::BTreeSet;

use crate::batch::{Overlay, Wants, Write};
use crate::commands::CommandLookups;
use crate::error::GroupCodecError;
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

/// Where a zstd frame starts; a row of an earlier version is JSON text
/// and starts with `[`.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// zstd's fastest level: a snapshot compresses every changed group, and
/// higher levels gain little on rows this small.
const ZSTD_LEVEL: i32 = 1;

/// The largest group a row may unpack to: far beyond any real customer,
/// so a damaged row fails to decode instead of exhausting memory.
const MAX_GROUP_BYTES: u64 = 256 << 20;

/// Encodes and decodes group rows, reusing zstd's contexts: making one
/// per row cost more than the compression itself.
pub(crate) struct GroupCodec {
    compressor: zstd::bulk::Compressor<'static>,
    decompressor: zstd::bulk::Decompressor<'static>,
}

impl GroupCodec {
    pub(crate) fn new() -> Result<GroupCodec, GroupCodecError> {
        Ok(GroupCodec {
            compressor: zstd::bulk::Compressor::new(ZSTD_LEVEL)?,
            decompressor: zstd::bulk::Decompressor::new()?,
        })
    }

    /// A row of `writes`, and the size of their JSON: what the cache
    /// counts, as it follows what the group costs in memory better than
    /// the compressed size.
    pub(crate) fn encode(&mut self, writes: &[Write]) -> Result<(Vec<u8>, u64), GroupCodecError> {
        let json = serde_json::to_vec(writes)?;
        let row = self.compressor.compress(&json)?;
        Ok((row, json.len() as u64))
    }

    /// The writes of a row, and the size of their JSON.
    pub(crate) fn decode(&mut self, row: &[u8]) -> Result<(Vec<Write>, u64), GroupCodecError> {
        if !row.starts_with(&ZSTD_MAGIC) {
            return Ok((serde_json::from_slice(row)?, row.len() as u64));
        }
        let size = zstd::zstd_safe::get_frame_content_size(row)
            .ok()
            .flatten()
            .filter(|&size| size <= MAX_GROUP_BYTES)
            .ok_or_else(|| std::io::Error::other("no frame size, or too large"))?;
        let json = self.decompressor.decompress(row, size as usize)?;
        Ok((serde_json::from_slice(&json)?, json.len() as u64))
    }
}

/// Turns an index key into the integer the file stores: SipHash-2-4 with
/// the file's own random seed. Index keys come from hostile input (email
/// addresses, Message-IDs), and a key that many groups share would make
/// every lookup of it load them all; without the seed no one can choose
/// keys that collide. A collision by chance, like a stale index row, costs
/// a useless load, never a wrong answer.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct KeyHasher {
    seed: [u8; 16],
}

impl KeyHasher {
    pub(crate) fn new(seed: [u8; 16]) -> KeyHasher {
        KeyHasher { seed }
    }

    /// The stored form of `key`: stable across versions and platforms
    /// for one seed, as it is on disk.
    pub(crate) fn key(&self, key: &str) -> i64 {
        let hash = siphasher::sip::SipHasher24::new_with_key(&self.seed).hash(key.as_bytes());
        i64::from_ne_bytes(hash.to_ne_bytes())
    }
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

/// A group's rows on disk, in bytes of JSON: a base row and the delta
/// rows appended after it, and where the base row is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct OnDisk {
    /// The base row's rowid, which the index stores for the group; 0
    /// when the group is not on disk yet.
    pub(crate) row: i64,
    /// The base row; 0 when the group is not on disk yet.
    pub(crate) base: u64,
    /// The delta rows together.
    pub(crate) deltas: u64,
    /// How many delta rows there are.
    pub(crate) parts: u32,
}

impl OnDisk {
    /// What the cache counts for the group: memory follows the rows it
    /// was built from.
    fn bytes(self) -> u64 {
        self.base + self.deltas
    }
}

/// Delta rows a group may have before it is written whole again: loading
/// reads every one.
pub(crate) const MAX_PARTS: u32 = 16;

/// A changed group, how the snapshot writes it, and its rows on disk.
pub(crate) type GroupWrite = (CustomerId, GroupPlan, OnDisk);

/// How a snapshot writes a changed group.
#[derive(Debug)]
pub(crate) enum GroupPlan {
    /// The whole group as one base row (its delta rows go).
    Whole,
    /// Only the rows changed since it was last written, as they are now,
    /// in one more delta row.
    Delta(Vec<Write>),
}

/// A row of a group that a write changed in place. A delta names rows,
/// not the writes that changed them: a regular customer's conversation
/// changed by a thousand messages between two snapshots is one row in
/// memory and in the delta. Ordered so customers come first, as in a
/// whole group's writes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Row {
    Customer(CustomerId),
    Segment(CustomerId),
    Identity(HandleKey),
    Conversation(String),
    MessageRef(String, CustomerId),
    Suggestion(CustomerId, HandleKey),
}

/// Whether a delta of `delta` bytes should instead be folded into a new
/// base row: once the deltas outgrow the base, rewriting the base costs
/// less than it saves, so a busy group is written whole about once per
/// doubling of what it holds (amortized, each byte of history is written
/// a constant number of times, not once per snapshot).
pub(crate) fn fold_deltas(disk: OnDisk, delta: u64) -> bool {
    disk.parts >= MAX_PARTS || disk.deltas + delta > disk.base
}

/// The row `write` changes in place, for a write a snapshot can append as
/// a delta. The others (a merge, a split's moved Message-IDs) move rows
/// between groups, so the groups they touch are written whole.
fn row_of(write: &Write) -> Option<Row> {
    Some(match write {
        Write::Customer { id, .. } => Row::Customer(id.clone()),
        Write::CustomerSegment { id, .. } => Row::Segment(id.clone()),
        Write::Identity { key, .. } => Row::Identity(key.clone()),
        Write::Conversation(c) => Row::Conversation(c.id.clone()),
        Write::MessageRef {
            message_id,
            customer,
            ..
        } => Row::MessageRef(message_id.clone(), customer.clone()),
        Write::InsertSuggestion { customer, key } | Write::DeleteSuggestion { customer, key } => {
            Row::Suggestion(customer.clone(), key.clone())
        }
        _ => return None,
    })
}

/// Which groups memory holds, how recently each was used and what each
/// has on disk, and what changed since they were last written.
///
/// A snapshot writes a changed group whole only when it must: when it is
/// new, when a write moved rows between it and another group, or when its
/// deltas outgrew its base. Otherwise it appends the writes since the
/// last snapshot, so a customer with a long history costs what its new
/// messages cost, not its history, at each snapshot.
#[derive(Debug, Default)]
pub(crate) struct GroupCache {
    /// Group id -> (last use, rows on disk).
    loaded: HashMap<CustomerId, (u64, OnDisk)>,
    /// Customer ids whose rows changed since the last snapshot (mapped to
    /// their groups when it runs: merges may still move them).
    changed: HashSet<CustomerId>,
    /// Customer ids whose groups must be written whole.
    whole: HashSet<CustomerId>,
    /// Group id (when the write was applied) -> the rows changed in place
    /// since the last snapshot.
    deltas: HashMap<CustomerId, BTreeSet<Row>>,
    clock: u64,
    /// Bytes on disk of the groups in `loaded`.
    bytes: u64,
}

impl GroupCache {
    /// Whether `group` is in memory.
    pub(crate) fn holds(&self, group: &CustomerId) -> bool {
        self.loaded.contains_key(group)
    }

    /// Records a group loaded from disk.
    pub(crate) fn loaded(&mut self, group: CustomerId, disk: OnDisk) {
        self.clock += 1;
        let old = self.loaded.insert(group, (self.clock, disk));
        self.bytes = self.bytes + disk.bytes() - old.map_or(0, |(_, d)| d.bytes());
    }

    /// Records `write`, just applied to `state`, which changed the rows of
    /// the customers `touched` (and used their groups).
    pub(crate) fn changed(&mut self, state: &State, write: &Write, touched: Vec<CustomerId>) {
        self.clock += 1;
        let mut groups = Vec::with_capacity(touched.len());
        for id in &touched {
            let group = state.group_of(id);
            match self.loaded.get_mut(&group) {
                Some(entry) => entry.0 = self.clock,
                None => {
                    self.loaded
                        .insert(group.clone(), (self.clock, OnDisk::default()));
                }
            }
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
        match (groups.as_slice(), row_of(write)) {
            ([group], Some(row)) => {
                self.deltas.entry(group.clone()).or_default().insert(row);
            }
            ([], _) => {}
            _ => self.whole.extend(touched.iter().cloned()),
        }
        self.changed.extend(touched);
    }

    /// Marks every group of `state` as changed, to be written whole (an
    /// upgrade from the format that kept everything in memory).
    pub(crate) fn all_changed(&mut self, state: &State) {
        let groups = state.all_groups();
        self.whole.extend(groups.iter().cloned());
        self.clock += 1;
        for group in &groups {
            self.loaded
                .entry(group.clone())
                .or_insert((self.clock, OnDisk::default()));
        }
        self.changed.extend(groups);
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

    /// How the snapshot writes each group of [`Self::to_write`], with what
    /// it has on disk now, in group order; and the ids merged away.
    pub(crate) fn plans(&self, state: &State) -> (Vec<GroupWrite>, BTreeSet<CustomerId>) {
        let whole: HashSet<CustomerId> = self.whole.iter().map(|id| state.group_of(id)).collect();
        let (groups, gone) = self.to_write(state);
        let plans = groups
            .into_iter()
            .map(|group| {
                let disk = self.loaded.get(&group).map(|(_, d)| *d).unwrap_or_default();
                let plan = match self.deltas.get(&group) {
                    Some(rows) if disk.row > 0 && disk.base > 0 && !whole.contains(&group) => {
                        let mut writes = Vec::with_capacity(rows.len());
                        for row in rows {
                            state.row_writes(row, &mut writes);
                        }
                        GroupPlan::Delta(writes)
                    }
                    _ => GroupPlan::Whole,
                };
                (group, plan, disk)
            })
            .collect();
        (plans, gone)
    }

    /// After a snapshot wrote `written` (id, rows on disk now): nothing is
    /// changed any more, and entries of ids merged away are dropped.
    pub(crate) fn written(&mut self, state: &State, written: &[(CustomerId, OnDisk)]) {
        for id in self.changed.drain() {
            if state.group_of(&id) != id
                && let Some((_, disk)) = self.loaded.remove(&id)
            {
                self.bytes -= disk.bytes();
            }
        }
        self.whole.clear();
        self.deltas.clear();
        for (group, disk) in written {
            let entry = self
                .loaded
                .entry(group.clone())
                .or_insert((self.clock, OnDisk::default()));
            self.bytes = self.bytes + disk.bytes() - entry.1.bytes();
            entry.1 = *disk;
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
            if let Some((_, disk)) = self.loaded.remove(&group) {
                self.bytes -= disk.bytes();
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
    use crate::logic::AwaitingResponse;
    use crate::state::tests::{conversation, id};

    fn customer(state: &mut State, cache: &mut GroupCache, name: &str, awaiting: bool) {
        let mut conversation = conversation(&format!("conv-{name}"), name);
        conversation.awaiting = awaiting.then(|| AwaitingResponse {
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
        });
        let writes = vec![
            Write::Customer {
                id: id(name),
                next_sequence: 2,
            },
            Write::Conversation(conversation),
        ];
        for write in &writes {
            apply(state, cache, write);
        }
    }

    fn apply(state: &mut State, cache: &mut GroupCache, write: &Write) {
        let mut touched = Vec::new();
        state.touched_by(write, &mut touched);
        state.apply(write);
        cache.changed(state, write, touched);
    }

    /// The stored index keys are SipHash-2-4, checked against the
    /// reference vectors of its paper (key 00..0f, messages 00..n-1), so
    /// the form on disk cannot drift.
    #[test]
    fn index_keys_are_siphash_2_4() {
        let hasher = KeyHasher::new(std::array::from_fn(|i| i as u8));
        let message = |n: u8| String::from_utf8((0..n).collect()).unwrap();
        for (n, expected) in [
            (0, 0x726f_db47_dd0e_0e31_u64),
            (1, 0x74f8_39c5_93dc_67fd),
            (15, 0xa129_ca61_49be_45e5),
        ] {
            assert_eq!(
                hasher.key(&message(n)).cast_unsigned(),
                expected,
                "{n} bytes"
            );
        }
        let other = KeyHasher::new([7; 16]);
        assert_ne!(
            other.key("m\u{1f}a@b"),
            hasher.key("m\u{1f}a@b"),
            "the seed counts"
        );
    }

    fn base(bytes: u64) -> OnDisk {
        OnDisk {
            row: 1,
            base: bytes,
            ..OnDisk::default()
        }
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
        let written: Vec<(CustomerId, OnDisk)> =
            groups.into_iter().map(|g| (g, base(100))).collect();
        cache.written(&state, &written);
        assert_eq!(cache.size(), (4, 400));
        // `a` changes again after the snapshot; `c` is used again (a
        // lookup loaded it).
        customer(&mut state, &mut cache, "a", false);
        cache.loaded(id("c"), base(100));

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

    /// A group on disk gets only its new writes as a delta; a new group, and
    /// both groups of a write that moves rows between them, are written
    /// whole; deltas are folded once they outgrow the base row.
    #[test]
    fn changed_groups_are_appended_to_unless_rows_moved() {
        let mut state = State::default();
        let mut cache = GroupCache::default();
        customer(&mut state, &mut cache, "a", false);
        customer(&mut state, &mut cache, "b", false);
        let (plans, _) = cache.plans(&state);
        assert!(
            plans
                .iter()
                .all(|(_, plan, _)| matches!(plan, GroupPlan::Whole)),
            "new groups are written whole"
        );
        cache.written(&state, &[(id("a"), base(100)), (id("b"), base(100))]);

        let reference = Write::MessageRef {
            message_id: "m1@x".into(),
            customer: id("a"),
            conversation: "conv-a".into(),
        };
        apply(&mut state, &mut cache, &reference);
        let (plans, _) = cache.plans(&state);
        let [(group, GroupPlan::Delta(writes), disk)] = plans.as_slice() else {
            panic!("one delta: {plans:?}");
        };
        assert_eq!((group, writes.len(), *disk), (&id("a"), 1, base(100)));
        let disk = *disk;
        assert!(!fold_deltas(disk, 60));
        assert!(fold_deltas(disk, 101), "deltas larger than the base");
        let parts = OnDisk {
            row: 1,
            base: 1000,
            deltas: 10,
            parts: MAX_PARTS,
        };
        assert!(fold_deltas(parts, 1), "too many deltas");
        // However often a row changes, the delta holds it once, as it is.
        let conversation = state
            .group_writes(&id("a"))
            .into_iter()
            .find_map(|w| match w {
                Write::Conversation(c) => Some(c),
                _ => None,
            });
        let mut conversation = conversation.expect("a's conversation");
        for at in 2..100 {
            conversation.last_activity_ms = at;
            apply(
                &mut state,
                &mut cache,
                &Write::Conversation(conversation.clone()),
            );
        }
        let (plans, _) = cache.plans(&state);
        let [(_, GroupPlan::Delta(writes), _)] = plans.as_slice() else {
            panic!("one delta: {plans:?}");
        };
        assert_eq!(writes.len(), 2, "{writes:?}");
        assert!(
            writes
                .iter()
                .any(|w| matches!(w, Write::Conversation(c) if c.last_activity_ms == 99))
        );
        cache.written(
            &state,
            &[(
                id("a"),
                OnDisk {
                    row: 1,
                    base: 100,
                    deltas: 60,
                    parts: 1,
                },
            )],
        );
        assert_eq!(cache.size(), (2, 260));

        // `b`'s handle moves to `a`: both are written whole.
        let key = HandleKey {
            kind: "phone".into(),
            scope: String::new(),
            value: "+15555550100".into(),
        };
        for write in [
            Write::Identity {
                key: key.clone(),
                customer: id("b"),
                confirmed: true,
            },
            Write::Identity {
                key,
                customer: id("a"),
                confirmed: true,
            },
        ] {
            apply(&mut state, &mut cache, &write);
        }
        let (plans, _) = cache.plans(&state);
        assert_eq!(plans.len(), 2);
        assert!(
            plans
                .iter()
                .all(|(_, plan, _)| matches!(plan, GroupPlan::Whole)),
            "{plans:?}"
        );
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
        apply(&mut state, &mut cache, &merge);
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
        cache.written(&state, &[(id("a"), base(300))]);
        assert!(cache.holds(&id("a")) && !cache.holds(&id("b")));
        assert_eq!(cache.size(), (1, 300));
    }
}
