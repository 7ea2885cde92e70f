//! Helpdesk commands (close, reopen, link, unlink, merge, split) as a pure
//! function, the same sans-I/O split as [`crate::logic`]: [`command_lookups`]
//! says what state a command touches, a store loads it into a
//! [`CommandSnapshot`] inside its transaction, [`plan_command`] decides,
//! and the store writes the [`CommandPlan`] with its timeline rows.
//!
//! A command is an agent's decision, so it may do what events may not
//! (unlink, split), but it never guesses: a command naming something that
//! does not exist, or a handle someone else owns, is refused with a
//! [`CommandError`] and changes nothing. A command that is already true
//! (closing a closed conversation) changes nothing and succeeds, so
//! helpdesks may retry without reading state first.

use std::collections::{BTreeSet, HashMap};

use omni_proto::v1::{
    ConversationState, ConversationStateChanged, CustomerSegmentChanged, CustomerSplit,
    CustomersMerged, IdentityHandle, IdentityLinkChanged, ThreadingCommand, TimelineEvent,
    threading_command::Command, timeline_event::Entry,
};

use crate::ids::{CustomerId, HandleKey, timeline_entry_id};
use crate::logic::{Conversation, HandleOwner, key_of, timestamp_ms};

/// Why a command is refused. Permanent: the HTTP API answers 4xx, the
/// commands topic consumer dead-letters the record.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// No `command_id` to deduplicate by.
    #[error("command has no command_id")]
    MissingCommandId,
    /// None of the oneof's commands is set (or a newer producer's).
    #[error("command names no action")]
    MissingAction,
    /// A customer id that was never issued.
    #[error("unknown customer {0}")]
    UnknownCustomer(String),
    /// A conversation id that was never issued.
    #[error("unknown conversation {0}")]
    UnknownConversation(String),
    /// A handle that does not normalize.
    #[error("invalid handle: {0}")]
    InvalidHandle(String),
    /// Linking a handle another customer owns would move that customer's
    /// history: merge the customers instead.
    #[error("{handle} belongs to customer {owner}; merge the customers instead")]
    OwnedByOther {
        /// The handle.
        handle: String,
        /// Its owner.
        owner: String,
    },
    /// Unlinking or splitting off a handle the customer does not own.
    #[error("{handle} is not linked to customer {customer}")]
    NotLinked {
        /// The handle.
        handle: String,
        /// The customer named.
        customer: String,
    },
    /// A conversation named in a split that is not the customer's.
    #[error("conversation {conversation} does not belong to customer {customer}")]
    NotCustomersConversation {
        /// The conversation.
        conversation: String,
        /// The customer named.
        customer: String,
    },
    /// A merge of fewer than two ids, or a split moving nothing.
    #[error("{0}")]
    Invalid(&'static str),
    /// A segment name rules could not match reliably.
    #[error("invalid segment {0:?}: at most {MAX_SEGMENT_CHARS} letters, digits, `_`, `-` or `.`")]
    InvalidSegment(String),
}

impl CommandError {
    /// Whether the command names something that does not exist (HTTP 404)
    /// rather than something that conflicts with the state (409) or a
    /// malformed command (400).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            CommandError::UnknownCustomer(_) | CommandError::UnknownConversation(_)
        )
    }

    /// Whether the command conflicts with the current state (HTTP 409).
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            CommandError::OwnedByOther { .. }
                | CommandError::NotLinked { .. }
                | CommandError::NotCustomersConversation { .. }
        )
    }
}

/// What a store must load for a command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandLookups {
    /// The command id, for deduplication.
    pub command_id: String,
    /// Customer ids named (resolve each, lock the survivors).
    pub customers: Vec<CustomerId>,
    /// Conversation ids named (load each; resolve and lock its customer).
    pub conversations: Vec<String>,
    /// Handles named (load each owner).
    pub handles: Vec<HandleKey>,
}

/// The state a command touches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandSnapshot {
    /// The command id was applied before.
    pub already_applied: bool,
    /// Named customer id -> its surviving id (absent: unknown id).
    pub resolved: HashMap<CustomerId, CustomerId>,
    /// Next sequence of every surviving customer involved.
    pub next_sequence: HashMap<CustomerId, u64>,
    /// The named conversations that exist (their `customer` resolved).
    pub conversations: HashMap<String, Conversation>,
    /// Owners of the named handles (resolved).
    pub owners: HashMap<HandleKey, HandleOwner>,
    /// The segment of every surviving customer involved that has one.
    pub segments: HashMap<CustomerId, String>,
}

/// Everything a command changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommandPlan {
    /// Customers to create (split or unlink targets), with no history.
    pub create_customers: Vec<CustomerId>,
    /// `(survivor, loser)` merges, in order.
    pub merges: Vec<(CustomerId, CustomerId)>,
    /// Handles to (re)link: key, owner, confirmed.
    pub links: Vec<(HandleKey, CustomerId, bool)>,
    /// Conversations to write (state or owner changed).
    pub conversations: Vec<Conversation>,
    /// Timeline entries, sequence numbers assigned.
    pub timeline: Vec<TimelineEvent>,
    /// Every customer's next sequence after the plan.
    pub next_sequences: Vec<(CustomerId, u64)>,
    /// Customers whose segment changes: the new one (`None`: none).
    pub segments: Vec<(CustomerId, Option<String>)>,
}

impl CommandPlan {
    /// Whether the command changed nothing (it was already true).
    pub fn is_noop(&self) -> bool {
        self.timeline.is_empty()
    }
}

/// The result of planning a command.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandDecision {
    /// The command id was applied before: nothing changes.
    Duplicate,
    /// Apply this (possibly empty) plan.
    Apply(Box<CommandPlan>),
}

fn action(command: &ThreadingCommand) -> Result<&Command, CommandError> {
    command.command.as_ref().ok_or(CommandError::MissingAction)
}

fn handle_key(handle: Option<&IdentityHandle>) -> Result<HandleKey, CommandError> {
    let handle = handle.ok_or(CommandError::InvalidHandle("no handle given".into()))?;
    key_of(handle).map_err(|e| CommandError::InvalidHandle(error_chain(&e)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What [`plan_command`] needs loaded for `command`.
pub fn command_lookups(command: &ThreadingCommand) -> Result<CommandLookups, CommandError> {
    if command.command_id.is_empty() {
        return Err(CommandError::MissingCommandId);
    }
    let mut lookups = CommandLookups {
        command_id: command.command_id.clone(),
        ..Default::default()
    };
    let customer = |id: &str| CustomerId::from_string(id.to_owned());
    match action(command)? {
        Command::Close(c) => lookups.conversations.push(c.conversation_id.clone()),
        Command::Reopen(c) => lookups.conversations.push(c.conversation_id.clone()),
        Command::Link(c) => {
            lookups.customers.push(customer(&c.customer_id));
            lookups.handles.push(handle_key(c.handle.as_ref())?);
        }
        Command::Unlink(c) => {
            lookups.customers.push(customer(&c.customer_id));
            lookups.handles.push(handle_key(c.handle.as_ref())?);
        }
        Command::Merge(c) => lookups
            .customers
            .extend(c.customer_ids.iter().map(|id| customer(id))),
        Command::SetSegment(c) => {
            check_segment(&c.segment)?;
            lookups.customers.push(customer(&c.customer_id));
        }
        Command::Split(c) => {
            lookups.customers.push(customer(&c.customer_id));
            for handle in &c.handles {
                lookups.handles.push(handle_key(Some(handle))?);
            }
            lookups
                .conversations
                .extend(c.conversation_ids.iter().cloned());
        }
    }
    lookups.handles.sort();
    lookups.handles.dedup();
    lookups.conversations.sort();
    lookups.conversations.dedup();
    Ok(lookups)
}

/// The longest segment name.
pub const MAX_SEGMENT_CHARS: usize = 64;

/// A segment is a short ASCII name (empty: none), so a rule file's
/// `segments = ["vip"]` matches it without normalization surprises.
fn check_segment(segment: &str) -> Result<(), CommandError> {
    let valid = segment.len() <= MAX_SEGMENT_CHARS
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if valid {
        Ok(())
    } else {
        let shown: String = segment.chars().take(MAX_SEGMENT_CHARS + 1).collect();
        Err(CommandError::InvalidSegment(shown))
    }
}

/// Builds the timeline rows of one plan, numbering each customer's rows.
struct Entries<'a> {
    command: &'a ThreadingCommand,
    next: HashMap<CustomerId, u64>,
    rows: Vec<TimelineEvent>,
}

impl Entries<'_> {
    fn push(&mut self, customer: &CustomerId, what: &str, conversation: &str, entry: Entry) {
        let sequence = self.next.entry(customer.clone()).or_insert(1);
        self.rows.push(TimelineEvent {
            timeline_event_id: timeline_entry_id(&self.command.command_id, what),
            customer_id: customer.as_str().to_owned(),
            sequence: *sequence,
            conversation_id: conversation.to_owned(),
            recorded_at: self.command.issued_at,
            entry: Some(entry),
        });
        *sequence += 1;
    }

    fn link(&mut self, customer: &CustomerId, key: &HandleKey, linked: bool, confirmed: bool) {
        let what = format!(
            "{}\u{0}{customer}\u{0}{key}",
            if linked { "link" } else { "unlink" }
        );
        let entry = Entry::Identity(IdentityLinkChanged {
            handle: Some(key.to_proto(confirmed)),
            linked,
            confirmed,
            reason: "command".to_owned(),
            actor: self.command.actor.clone(),
        });
        self.push(customer, &what, "", entry);
    }
}

/// Decides what `command` changes, given the state it touches.
pub fn plan_command(
    command: &ThreadingCommand,
    snapshot: &CommandSnapshot,
) -> Result<CommandDecision, CommandError> {
    if snapshot.already_applied {
        return Ok(CommandDecision::Duplicate);
    }
    let lookups = command_lookups(command)?;
    let resolve = |id: &str| {
        snapshot
            .resolved
            .get(&CustomerId::from_string(id.to_owned()))
            .cloned()
            .ok_or_else(|| CommandError::UnknownCustomer(id.to_owned()))
    };
    let conversation = |id: &str| {
        snapshot
            .conversations
            .get(id)
            .cloned()
            .ok_or_else(|| CommandError::UnknownConversation(id.to_owned()))
    };
    let owned_by = |key: &HandleKey, customer: &CustomerId| -> Result<bool, CommandError> {
        match snapshot.owners.get(key) {
            Some(owner) if owner.customer == *customer => Ok(owner.confirmed),
            _ => Err(CommandError::NotLinked {
                handle: key.to_string(),
                customer: customer.to_string(),
            }),
        }
    };
    // A customer a command creates: its id comes from the command (not a
    // handle, whose id the customer it leaves may already carry).
    let new_customer = || CustomerId::for_command(&command.command_id);

    let mut plan = CommandPlan::default();
    let mut entries = Entries {
        command,
        next: snapshot.next_sequence.clone(),
        rows: Vec::new(),
    };
    let state_change = |state: ConversationState, reason: &str| {
        Entry::Conversation(ConversationStateChanged {
            state: state as i32,
            reason: if reason.is_empty() { "command" } else { reason }.to_owned(),
            actor: command.actor.clone(),
        })
    };
    match action(command)? {
        Command::Close(c) => {
            let mut conv = conversation(&c.conversation_id)?;
            if conv.open {
                conv.open = false;
                // An agent closing it is its answer: no SLA timer runs
                // in a closed conversation.
                conv.awaiting = None;
                let entry = state_change(ConversationState::Closed, &c.reason);
                entries.push(
                    &conv.customer,
                    &format!("close\u{0}{}", conv.id),
                    &conv.id,
                    entry,
                );
                plan.conversations.push(conv);
            }
        }
        Command::Reopen(c) => {
            let mut conv = conversation(&c.conversation_id)?;
            if !conv.open {
                conv.open = true;
                // Idle timeouts count from the reopening, or the next chat
                // message would close it again at once.
                conv.last_activity_ms = conv
                    .last_activity_ms
                    .max(timestamp_ms(command.issued_at.as_ref()));
                let entry = state_change(ConversationState::Open, &c.reason);
                entries.push(
                    &conv.customer,
                    &format!("reopen\u{0}{}", conv.id),
                    &conv.id,
                    entry,
                );
                plan.conversations.push(conv);
            }
        }
        Command::Link(c) => {
            let customer = resolve(&c.customer_id)?;
            let key = &lookups.handles[0];
            match snapshot.owners.get(key) {
                Some(owner) if owner.customer != customer => {
                    return Err(CommandError::OwnedByOther {
                        handle: key.to_string(),
                        owner: owner.customer.to_string(),
                    });
                }
                Some(owner) if owner.confirmed => {}
                _ => {
                    plan.links.push((key.clone(), customer.clone(), true));
                    entries.link(&customer, key, true, true);
                }
            }
        }
        Command::Unlink(c) => {
            let customer = resolve(&c.customer_id)?;
            let key = &lookups.handles[0];
            let confirmed = owned_by(key, &customer)?;
            let target = new_customer();
            plan.create_customers.push(target.clone());
            plan.links.push((key.clone(), target.clone(), confirmed));
            entries.link(&customer, key, false, confirmed);
            entries.link(&target, key, true, confirmed);
        }
        Command::Merge(c) => {
            let ids = c
                .customer_ids
                .iter()
                .map(|id| resolve(id))
                .collect::<Result<BTreeSet<_>, _>>()?;
            if c.customer_ids.len() < 2 {
                return Err(CommandError::Invalid(
                    "merge needs at least two customer ids",
                ));
            }
            // Same rule as automatic merges: the smallest id survives.
            let mut ids = ids.into_iter();
            if let Some(survivor) = ids.next() {
                let losers: Vec<CustomerId> = ids.collect();
                if !losers.is_empty() {
                    plan.merges
                        .extend(losers.iter().map(|l| (survivor.clone(), l.clone())));
                    let entry = Entry::Merged(CustomersMerged {
                        merged_customer_ids: losers.iter().map(|l| l.to_string()).collect(),
                        reason: "command".to_owned(),
                        actor: command.actor.clone(),
                    });
                    entries.push(&survivor, &format!("merge\u{0}{survivor}"), "", entry);
                }
            }
        }
        Command::Split(c) => {
            let customer = resolve(&c.customer_id)?;
            if c.handles.is_empty() && c.conversation_ids.is_empty() {
                return Err(CommandError::Invalid(
                    "split needs at least one handle or conversation to move",
                ));
            }
            let target = new_customer();
            plan.create_customers.push(target.clone());
            let mut handles = Vec::new();
            for key in &lookups.handles {
                let confirmed = owned_by(key, &customer)?;
                plan.links.push((key.clone(), target.clone(), confirmed));
                handles.push(key.to_proto(confirmed));
            }
            for id in &lookups.conversations {
                let mut conv = conversation(id)?;
                if conv.customer != customer {
                    return Err(CommandError::NotCustomersConversation {
                        conversation: id.clone(),
                        customer: customer.to_string(),
                    });
                }
                conv.customer = target.clone();
                plan.conversations.push(conv);
            }
            let split = CustomerSplit {
                from_customer_id: customer.to_string(),
                to_customer_id: target.to_string(),
                handles,
                conversation_ids: lookups.conversations.clone(),
                actor: command.actor.clone(),
            };
            entries.push(&customer, "split\u{0}from", "", Entry::Split(split.clone()));
            entries.push(&target, "split\u{0}to", "", Entry::Split(split));
        }
        Command::SetSegment(c) => {
            let customer = resolve(&c.customer_id)?;
            let previous = snapshot
                .segments
                .get(&customer)
                .cloned()
                .unwrap_or_default();
            // Setting the segment it has is already true: nothing to write.
            if previous != c.segment {
                let entry = Entry::SegmentChanged(CustomerSegmentChanged {
                    segment: c.segment.clone(),
                    previous_segment: previous,
                    actor: command.actor.clone(),
                });
                entries.push(&customer, "segment", "", entry);
                let segment = (!c.segment.is_empty()).then(|| c.segment.clone());
                plan.segments.push((customer, segment));
            }
        }
    }
    let touched: BTreeSet<&str> = entries
        .rows
        .iter()
        .map(|r| r.customer_id.as_str())
        .collect();
    plan.next_sequences = entries
        .next
        .iter()
        .filter(|(c, _)| touched.contains(c.as_str()))
        .map(|(c, n)| (c.clone(), *n))
        .collect();
    plan.next_sequences.sort();
    plan.timeline = entries.rows;
    Ok(CommandDecision::Apply(Box::new(plan)))
}

#[cfg(test)]
mod tests {
    use omni_proto::v1::{HandleKind, LinkIdentity, MergeCustomers};

    use super::*;

    fn merge(id: &str, ids: &[&CustomerId]) -> ThreadingCommand {
        ThreadingCommand {
            command_id: id.to_owned(),
            command: Some(Command::Merge(MergeCustomers {
                customer_ids: ids.iter().map(|c| c.to_string()).collect(),
            })),
            ..Default::default()
        }
    }

    fn snapshot(customers: &[&CustomerId]) -> CommandSnapshot {
        CommandSnapshot {
            resolved: customers
                .iter()
                .map(|c| ((*c).clone(), (*c).clone()))
                .collect(),
            next_sequence: customers.iter().map(|c| ((*c).clone(), 4)).collect(),
            ..Default::default()
        }
    }

    fn applied(decision: CommandDecision) -> CommandPlan {
        match decision {
            CommandDecision::Apply(plan) => *plan,
            CommandDecision::Duplicate => panic!("duplicate"),
        }
    }

    #[test]
    fn merge_survivor_does_not_depend_on_the_order_given() {
        let ids: Vec<CustomerId> = ["a", "b", "c"]
            .iter()
            .map(|n| CustomerId::for_command(n))
            .collect();
        let refs: Vec<&CustomerId> = ids.iter().collect();
        let smallest = ids.iter().min().unwrap().clone();
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
            let given: Vec<&CustomerId> = order.iter().map(|&i| refs[i]).collect();
            let plan = applied(plan_command(&merge("m", &given), &snapshot(&refs)).unwrap());
            assert!(plan.merges.iter().all(|(s, _)| *s == smallest));
            assert_eq!(plan.merges.len(), 2);
            assert_eq!(plan.timeline.len(), 1);
            assert_eq!(plan.timeline[0].sequence, 4, "continues the survivor");
            assert_eq!(plan.next_sequences, [(smallest.clone(), 5)]);
        }
    }

    #[test]
    fn refusals_change_nothing() {
        let a = CustomerId::for_command("a");
        let b = CustomerId::for_command("b");
        let mut no_id = merge("", &[&a, &b]);
        assert!(matches!(
            plan_command(&no_id, &snapshot(&[&a, &b])),
            Err(CommandError::MissingCommandId)
        ));
        no_id.command_id = "m".into();
        no_id.command = None;
        assert!(matches!(
            plan_command(&no_id, &snapshot(&[&a, &b])),
            Err(CommandError::MissingAction)
        ));
        assert!(matches!(
            plan_command(&merge("m", &[&a]), &snapshot(&[&a])),
            Err(CommandError::Invalid(_))
        ));
        assert!(matches!(
            plan_command(&merge("m", &[&a, &b]), &snapshot(&[&a])),
            Err(CommandError::UnknownCustomer(id)) if id == b.as_str()
        ));
        let phone = IdentityHandle {
            kind: HandleKind::Phone as i32,
            value: "+14155550134".into(),
            ..Default::default()
        };
        let link = ThreadingCommand {
            command_id: "l".into(),
            command: Some(Command::Link(LinkIdentity {
                customer_id: a.to_string(),
                handle: Some(phone.clone()),
            })),
            ..Default::default()
        };
        let mut owned = snapshot(&[&a, &b]);
        owned.owners.insert(
            key_of(&phone).unwrap(),
            HandleOwner {
                customer: b.clone(),
                confirmed: true,
            },
        );
        let refused = plan_command(&link, &owned).unwrap_err();
        assert!(refused.is_conflict(), "{refused}");
    }
}
