//! SLA timers as pure functions: starting the clock when a customer
//! message awaits an answer, stopping it when an agent answers, and the
//! escalation and breach entries when it runs out.
//!
//! A timer is state of its conversation ([`AwaitingResponse`]), and it
//! fires at event times, never at "now" as such: whatever notices first
//! that a deadline passed writes the same entry, with the deadline as its
//! time. [`crate::plan_with`] fires the due timers of the customer's
//! conversations before it places the customer's next event (a later
//! event proves the time has passed), and the daemon's clock fires the
//! rest through [`crate::ThreadingStore::fire_sla_timers`] once threading
//! has caught up with the inbound stream. Both place the entry before the
//! customer's first event after the deadline, so replaying the inbound
//! topic into an empty store writes the same timeline.

use std::collections::HashMap;

use omni_proto::v1::{
    ConversationEvent, SlaAnswered, SlaBreached, SlaEscalated, SlaResponse, SlaTimer,
    TimelineEvent, timeline_event::Entry,
};
use omni_rules::Priority;

use crate::ids::{CustomerId, timeline_entry_id};
use crate::logic::{AwaitingResponse, Conversation, priority_to_proto};

/// One fired timer: its entry, the instant it fell due, and its id.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fired {
    pub(crate) id: String,
    pub(crate) at_ms: i64,
    pub(crate) entry: Entry,
}

/// The timer as the stream shows it.
fn timer_of(conversation: &Conversation, awaiting: &AwaitingResponse) -> SlaTimer {
    SlaTimer {
        event_id: awaiting.event_id.clone(),
        response: if awaiting.first {
            SlaResponse::First
        } else {
            SlaResponse::Next
        } as i32,
        target_ms: awaiting.target_ms,
        awaiting_since: Some(timestamp(awaiting.since_ms)),
        due_at: Some(timestamp(awaiting.due_ms)),
        rule_set: awaiting.rule_set.clone(),
        channel_id: conversation.channel_id.clone(),
    }
}

/// A protobuf timestamp of UTC milliseconds.
pub(crate) fn timestamp(ms: i64) -> omni_proto::Timestamp {
    omni_proto::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// The priority one step more urgent (P1 stays P1).
fn raised(priority: Priority) -> Priority {
    match priority {
        Priority::P1 | Priority::P2 => Priority::P1,
        Priority::P3 => Priority::P2,
        Priority::P4 => Priority::P3,
    }
}

/// Fires `conversation`'s timers that are due at `now_ms`, in the order
/// they fell due (the escalation, then the breach), updating it.
pub(crate) fn fire(conversation: &mut Conversation, now_ms: i64) -> Vec<Fired> {
    let mut fired = Vec::new();
    while let Some(at_ms) = conversation.sla_timer_ms().filter(|&t| t <= now_ms) {
        let Some(mut awaiting) = conversation.awaiting.take() else {
            break;
        };
        let timer = timer_of(conversation, &awaiting);
        let current = conversation.priority.unwrap_or(awaiting.priority);
        if !awaiting.escalated && awaiting.escalate_at_ms < awaiting.due_ms {
            awaiting.escalated = true;
            let priority = raised(current);
            conversation.priority = Some(priority);
            fired.push(Fired {
                id: timeline_entry_id(
                    &awaiting.event_id,
                    &format!("sla-escalated\u{0}{}", conversation.id),
                ),
                at_ms,
                entry: Entry::SlaEscalated(SlaEscalated {
                    timer: Some(timer),
                    previous_priority: priority_to_proto(current) as i32,
                    priority: priority_to_proto(priority) as i32,
                }),
            });
        } else {
            awaiting.breached = true;
            fired.push(Fired {
                id: timeline_entry_id(
                    &awaiting.event_id,
                    &format!("sla-breached\u{0}{}", conversation.id),
                ),
                at_ms: awaiting.due_ms,
                entry: Entry::SlaBreached(SlaBreached {
                    timer: Some(timer),
                    priority: priority_to_proto(current) as i32,
                }),
            });
        }
        conversation.awaiting = Some(awaiting);
    }
    fired
}

/// Starts (or brings forward) the conversation's timer for a customer
/// message the rules gave `deadline`. The clock runs from the oldest
/// unanswered message: a later message does not restart it, and one that
/// raises the priority only brings the deadline forward. After a breach
/// nothing changes until an agent answers.
pub(crate) fn start(
    conversation: &mut Conversation,
    event_id: &str,
    now_ms: i64,
    rule_set: &str,
    deadline: &omni_rules::SlaDeadline,
) {
    let fresh = || AwaitingResponse {
        event_id: event_id.to_owned(),
        since_ms: now_ms,
        first: deadline.kind == omni_rules::ResponseKind::First,
        priority: deadline.priority,
        rule_set: rule_set.to_owned(),
        target_ms: deadline.target_ms,
        due_ms: deadline.due_ms,
        escalate_at_ms: deadline.escalate_at_ms,
        escalated: false,
        breached: false,
    };
    match &mut conversation.awaiting {
        None => conversation.awaiting = Some(fresh()),
        Some(awaiting) if !awaiting.breached && deadline.due_ms < awaiting.due_ms => {
            awaiting.priority = deadline.priority;
            awaiting.target_ms = deadline.target_ms;
            awaiting.due_ms = deadline.due_ms;
            awaiting.escalate_at_ms = deadline.escalate_at_ms.max(awaiting.since_ms);
            rule_set.clone_into(&mut awaiting.rule_set);
        }
        Some(_) => {}
    }
}

/// Whether `event` is an agent's answer: a reply the channel accepted (the
/// dispatcher's `SENT` status) or the business's own message echoed by
/// the channel, and not an automation's.
pub(crate) fn is_agent_answer(event: &ConversationEvent) -> bool {
    use omni_proto::v1::{DeliveryState, Direction, EventKind};
    if event.direction != Direction::Outbound as i32 || crate::logic::is_automated(event) {
        return false;
    }
    event.kind == EventKind::Message as i32
        || (event.kind == EventKind::DeliveryStatus as i32
            && event
                .delivery
                .as_ref()
                .is_some_and(|d| d.state == DeliveryState::Sent as i32))
}

/// Stops the conversation's timer for an agent's answer at `now_ms`; the
/// entry to write after the answer's own, if a timer was running.
pub(crate) fn answer(
    conversation: &mut Conversation,
    answer_event_id: &str,
    now_ms: i64,
) -> Option<Fired> {
    conversation.agent_replied = true;
    let awaiting = conversation.awaiting.take()?;
    let priority = conversation.priority.unwrap_or(awaiting.priority);
    Some(Fired {
        id: timeline_entry_id(
            &awaiting.event_id,
            &format!("sla-answered\u{0}{}", conversation.id),
        ),
        at_ms: now_ms,
        entry: Entry::SlaAnswered(SlaAnswered {
            timer: Some(timer_of(conversation, &awaiting)),
            priority: priority_to_proto(priority) as i32,
            answer_event_id: answer_event_id.to_owned(),
            response_ms: now_ms.saturating_sub(awaiting.since_ms).max(0),
            in_time: !awaiting.breached && now_ms <= awaiting.due_ms,
        }),
    })
}

/// Conversations whose timers are due, as a store loads them for the
/// clock: their `customer` already the surviving id, with every such
/// customer's next sequence number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimerSnapshot {
    /// The conversations, in the order their timers fell due.
    pub conversations: Vec<Conversation>,
    /// Next sequence number of each (surviving) customer.
    pub next_sequence: HashMap<CustomerId, u64>,
}

/// What firing the due timers changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TimerPlan {
    /// The conversations with their timers moved on.
    pub conversations: Vec<Conversation>,
    /// The entries, sequence numbers assigned; per customer in the order
    /// their timers fell due.
    pub timeline: Vec<TimelineEvent>,
    /// Every customer's next sequence after the plan.
    pub next_sequences: Vec<(CustomerId, u64)>,
}

/// Fires every timer of `snapshot` due at `now_ms`.
pub fn plan_timers(snapshot: &TimerSnapshot, now_ms: i64) -> TimerPlan {
    let mut plan = TimerPlan::default();
    let mut fired: Vec<(CustomerId, String, Fired)> = Vec::new();
    for conversation in &snapshot.conversations {
        let mut conversation = conversation.clone();
        let entries = fire(&mut conversation, now_ms);
        if entries.is_empty() {
            continue;
        }
        for entry in entries {
            fired.push((
                conversation.customer.clone(),
                conversation.id.clone(),
                entry,
            ));
        }
        plan.conversations.push(conversation);
    }
    fired.sort_by(|a, b| (&a.0, a.2.at_ms, &a.1).cmp(&(&b.0, b.2.at_ms, &b.1)));
    let mut next: HashMap<CustomerId, u64> = HashMap::new();
    for (customer, conversation_id, fired) in fired {
        let sequence = next
            .entry(customer.clone())
            .or_insert_with(|| snapshot.next_sequence.get(&customer).copied().unwrap_or(1));
        plan.timeline.push(TimelineEvent {
            timeline_event_id: fired.id,
            customer_id: customer.as_str().to_owned(),
            sequence: *sequence,
            conversation_id,
            recorded_at: Some(timestamp(fired.at_ms)),
            entry: Some(fired.entry),
        });
        *sequence += 1;
    }
    let mut next: Vec<(CustomerId, u64)> = next.into_iter().collect();
    next.sort();
    plan.next_sequences = next;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use omni_rules::{ResponseKind, SlaDeadline};

    fn conversation() -> Conversation {
        Conversation {
            id: "conv".into(),
            customer: CustomerId::from_string("cust".into()),
            channel_id: "sms".into(),
            thread_key: String::new(),
            email: false,
            subject: String::new(),
            open: true,
            last_activity_ms: 0,
            tags: Vec::new(),
            priority: Some(Priority::P3),
            last_acknowledgement_ms: None,
            auto_replies: Vec::new(),
            agent_replied: false,
            awaiting: None,
        }
    }

    fn deadline(priority: Priority, at: i64, target: i64, margin: i64) -> SlaDeadline {
        SlaDeadline::calendar(ResponseKind::First, priority, at, target, margin)
    }

    #[test]
    fn later_messages_only_bring_the_deadline_forward() {
        let mut c = conversation();
        start(
            &mut c,
            "m1",
            0,
            "set",
            &deadline(Priority::P3, 0, 3_600_000, 0),
        );
        // A calmer or later deadline changes nothing: the clock runs from
        // the oldest unanswered message.
        start(
            &mut c,
            "m2",
            60_000,
            "set",
            &deadline(Priority::P3, 60_000, 3_600_000, 0),
        );
        let awaiting = c.awaiting.clone().unwrap();
        assert_eq!(
            (awaiting.event_id.as_str(), awaiting.due_ms),
            ("m1", 3_600_000)
        );
        // A refund at +10 min: P1's 15 minutes from then.
        start(
            &mut c,
            "m3",
            600_000,
            "set",
            &deadline(Priority::P1, 600_000, 900_000, 300_000),
        );
        let awaiting = c.awaiting.clone().unwrap();
        assert_eq!(awaiting.event_id, "m1", "still the oldest message");
        assert_eq!(awaiting.since_ms, 0);
        assert_eq!(
            (awaiting.due_ms, awaiting.escalate_at_ms),
            (1_500_000, 1_200_000)
        );
        assert_eq!(awaiting.priority, Priority::P1);
    }

    #[test]
    fn timers_fire_once_in_order_and_an_answer_stops_them() {
        let mut c = conversation();
        start(
            &mut c,
            "m1",
            0,
            "set",
            &deadline(Priority::P3, 0, 3_600_000, 900_000),
        );
        assert_eq!(c.sla_timer_ms(), Some(2_700_000));
        assert!(fire(&mut c, 2_699_999).is_empty());
        // Noticed late: both at once, each at its own instant.
        let fired = fire(&mut c, 4_000_000);
        let at: Vec<i64> = fired.iter().map(|f| f.at_ms).collect();
        assert_eq!(at, [2_700_000, 3_600_000]);
        assert!(matches!(fired[0].entry, Entry::SlaEscalated(_)));
        assert!(matches!(fired[1].entry, Entry::SlaBreached(_)));
        assert_eq!(c.priority, Some(Priority::P2), "escalated one step");
        assert_eq!(c.sla_timer_ms(), None);
        assert!(fire(&mut c, 9_000_000).is_empty(), "once");
        // After a breach a new message does not restart the timer.
        start(
            &mut c,
            "m2",
            5_000_000,
            "set",
            &deadline(Priority::P1, 5_000_000, 60_000, 0),
        );
        assert_eq!(c.awaiting.as_ref().unwrap().event_id, "m1");
        let Some(Fired {
            entry: Entry::SlaAnswered(answered),
            ..
        }) = answer(&mut c, "reply", 6_000_000)
        else {
            panic!("an answer entry");
        };
        assert!(!answered.in_time);
        assert_eq!(answered.response_ms, 6_000_000);
        assert!(c.agent_replied && c.awaiting.is_none());
        assert_eq!(
            answer(&mut c, "reply-2", 6_100_000),
            None,
            "nothing awaited"
        );
    }

    #[test]
    fn a_deadline_without_a_margin_only_breaches() {
        let mut c = conversation();
        start(&mut c, "m1", 0, "set", &deadline(Priority::P3, 0, 1_000, 0));
        assert_eq!(
            c.sla_timer_ms(),
            Some(1_001),
            "the deadline itself is in time"
        );
        let fired = fire(&mut c, 1_001);
        assert_eq!(fired.len(), 1);
        assert!(matches!(fired[0].entry, Entry::SlaBreached(_)));
        assert_eq!(c.priority, Some(Priority::P3));
    }
}
