//! The store contract: what every [`ThreadingStore`] must do, written once
//! and run against SQLite and PostgreSQL (see `tests/`).
//!
//! Each case is a public async function taking a factory for fresh, empty
//! stores on one database (the concurrency case opens two, with separate
//! connections), so a backend's test file runs them one `#[tokio::test]`
//! each. They panic on failure, like any test, and need a multi-threaded
//! Tokio runtime.

use std::future::Future;

use omni_proto::Timestamp;
use omni_proto::v1::{
    Attachment, AttachmentStored, ChannelKind, CloseConversation, Content, ConversationEvent,
    ConversationState, ConversationTriaged, Direction, EventKind, HandleKind, IdentityHandle,
    LinkIdentity, MergeCustomers, Priority, ReopenConversation, SplitCustomer, ThreadingCommand,
    ThreadingHints, TimelineEvent, UnlinkIdentity, threading_command::Command,
    timeline_event::Entry,
};

use crate::{
    CommandError, CommandOutcome, CustomerId, HandleKey, InboundEvent, OutboxRow, Outcome,
    StoreError, ThreadingConfig, ThreadingError, ThreadingStore,
};

/// Seconds since the epoch the sample events start at.
const T0: i64 = 1_700_000_000;

fn handle(kind: HandleKind, value: &str, scope: &str, verified: bool) -> IdentityHandle {
    IdentityHandle {
        kind: kind as i32,
        value: value.to_owned(),
        scope: scope.to_owned(),
        display_name: String::new(),
        verified,
    }
}

/// An inbound message from `sender` on a channel of `kind`, `at` seconds
/// after [`T0`].
pub fn message(
    event_id: &str,
    channel_id: &str,
    kind: ChannelKind,
    sender: IdentityHandle,
    at: i64,
) -> ConversationEvent {
    let time = Timestamp {
        seconds: T0 + at,
        nanos: 0,
    };
    ConversationEvent {
        event_id: event_id.to_owned(),
        channel_id: channel_id.to_owned(),
        channel_kind: kind as i32,
        direction: Direction::Inbound as i32,
        kind: EventKind::Message as i32,
        sender: Some(sender),
        provider_message_id: event_id.to_owned(),
        received_at: Some(time),
        ingested_at: Some(time),
        ..Default::default()
    }
}

fn email_from(event_id: &str, address: &str, message_id: &str, at: i64) -> ConversationEvent {
    let mut event = message(
        event_id,
        "mail",
        ChannelKind::Email,
        handle(HandleKind::Email, address, "", false),
        at,
    );
    event.threading = Some(ThreadingHints {
        message_id: message_id.to_owned(),
        normalized_subject: "Order 7781".to_owned(),
        ..Default::default()
    });
    event
}

fn sms_from(event_id: &str, phone: &str, at: i64) -> ConversationEvent {
    message(
        event_id,
        "sms",
        ChannelKind::Sms,
        handle(HandleKind::Phone, phone, "", true),
        at,
    )
}

fn telegram_from(event_id: &str, user: &str, at: i64) -> ConversationEvent {
    message(
        event_id,
        "tg",
        ChannelKind::Telegram,
        handle(HandleKind::TelegramUser, user, "", true),
        at,
    )
}

fn key(kind: &str, value: &str) -> HandleKey {
    HandleKey {
        kind: kind.to_owned(),
        scope: String::new(),
        value: value.to_owned(),
    }
}

async fn thread<S: ThreadingStore>(store: &S, input: InboundEvent) -> Outcome {
    store
        .thread(&ThreadingConfig::default(), &input)
        .await
        .expect("thread event")
}

fn customer_of(outcome: &Outcome) -> CustomerId {
    match outcome {
        Outcome::Threaded { customer_id, .. } => customer_id.clone(),
        Outcome::Duplicate => panic!("unexpected duplicate"),
    }
}

/// Every unpublished outbox row, oldest first.
pub async fn drain<S: ThreadingStore>(store: &S) -> Vec<OutboxRow> {
    let mut rows = Vec::new();
    let mut after = 0;
    loop {
        let page = store.pending_outbox(after, 100).await.expect("read outbox");
        let Some(last) = page.last() else { break };
        after = last.id;
        rows.extend(page);
    }
    rows
}

/// Asserts a customer's own rows are numbered 1..=n without gaps.
fn assert_gapless(rows: &[OutboxRow], customer: &CustomerId) -> usize {
    let seqs: Vec<u64> = rows
        .iter()
        .filter(|r| r.event.customer_id == customer.as_str())
        .map(|r| r.event.sequence)
        .collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "sequence of {customer}");
    seqs.len()
}

fn messages(rows: &[OutboxRow]) -> Vec<String> {
    rows.iter()
        .filter_map(|r| match &r.event.entry {
            Some(Entry::Message(m)) => m.event.as_ref().map(|e| e.event_id.clone()),
            _ => None,
        })
        .collect()
}

/// Email, then SMS, then Telegram from a user who shares their own contact
/// (proving the phone) and whose channel proves the email: one customer,
/// one timeline, every message in order, sequences 1..n.
pub async fn email_sms_telegram_become_one_customer<S: ThreadingStore>(store: S) {
    let email = thread(
        &store,
        InboundEvent::new(email_from("e1", "ana@example.com", "m1@x", 0)),
    )
    .await;
    let sms = thread(
        &store,
        InboundEvent::new(sms_from("e2", "+14155550134", 60)),
    )
    .await;
    assert_ne!(
        customer_of(&email),
        customer_of(&sms),
        "nothing links them yet"
    );
    let mut tg = InboundEvent::new(telegram_from("e3", "777", 120));
    tg.claims = vec![
        handle(HandleKind::Phone, "+14155550134", "", true),
        handle(HandleKind::Email, "ana@example.com", "", true),
    ];
    let survivor = customer_of(&thread(&store, tg).await);

    for (kind, value) in [
        ("email", "ana@example.com"),
        ("phone", "+14155550134"),
        ("telegram", "777"),
    ] {
        let identity = store.identity(&key(kind, value)).await.unwrap().unwrap();
        assert_eq!(identity.customer_id, survivor, "{kind} handle");
    }
    for old in [customer_of(&email), customer_of(&sms)] {
        assert_eq!(
            store.resolve_customer(&old).await.unwrap(),
            Some(survivor.clone())
        );
    }
    let page = store.timeline(&survivor, None, 100).await.unwrap();
    assert_eq!(page.customer_id, survivor);
    assert_eq!(messages(&page.entries), ["e1", "e2", "e3"]);
    assert!(assert_gapless(&page.entries, &survivor) >= 2);
    assert!(
        page.entries
            .iter()
            .any(|r| matches!(&r.event.entry, Some(Entry::Merged(_)))),
        "a merge entry is emitted"
    );
    // Paging returns the same rows.
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store.timeline(&survivor, after, 2).await.unwrap();
        paged.extend(page.entries);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(
        paged,
        store.timeline(&survivor, None, 100).await.unwrap().entries
    );
}

/// An email typed into a chat form is a claim: the visitor gets their own
/// customer and a suggestion, and the email's owner sees nothing new.
pub async fn unverified_claim_is_only_a_suggestion<S: ThreadingStore>(store: S) {
    let owner = customer_of(
        &thread(
            &store,
            InboundEvent::new(email_from("e1", "ana@example.com", "m1@x", 0)),
        )
        .await,
    );
    let before = store.timeline(&owner, None, 100).await.unwrap().entries;
    let mut chat = InboundEvent::new(message(
        "e2",
        "web",
        ChannelKind::Chat,
        handle(HandleKind::ChatVisitor, "v-42", "web", true),
        60,
    ));
    chat.claims = vec![handle(HandleKind::Email, "ana@example.com", "", false)];
    let visitor = customer_of(&thread(&store, chat).await);
    assert_ne!(visitor, owner);
    let identity = store
        .identity(&key("email", "ana@example.com"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        identity.customer_id, owner,
        "the claim did not move the handle"
    );
    assert_eq!(
        store.suggestions(&visitor).await.unwrap(),
        [key("email", "ana@example.com")]
    );
    assert_eq!(
        store.timeline(&owner, None, 100).await.unwrap().entries,
        before
    );
    let visitor_rows = store.timeline(&visitor, None, 100).await.unwrap().entries;
    assert!(visitor_rows.iter().any(|r| matches!(
        &r.event.entry,
        Some(Entry::Identity(link)) if !link.confirmed
    )));
}

/// The same evidence in every order ends in the same customer id, the same
/// handle ownership, and old ids resolving to it.
pub async fn merges_are_order_independent<S, F, Fut>(make: F)
where
    S: ThreadingStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let link = || {
        let mut tg = InboundEvent::new(telegram_from("e3", "777", 120));
        tg.claims = vec![handle(HandleKind::Phone, "+14155550134", "", true)];
        tg
    };
    let events = [
        InboundEvent::new(sms_from("e1", "+14155550134", 0)),
        InboundEvent::new(telegram_from("e2", "777", 60)),
        link(),
    ];
    let orders: [[usize; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    let mut results = Vec::new();
    for order in orders {
        let store = make().await;
        let mut seen = Vec::new();
        for i in order {
            seen.push(customer_of(&thread(&store, events[i].clone()).await));
        }
        let phone = store
            .identity(&key("phone", "+14155550134"))
            .await
            .unwrap()
            .unwrap();
        let tg = store
            .identity(&key("telegram", "777"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(phone.customer_id, tg.customer_id, "order {order:?}");
        for id in seen {
            assert_eq!(
                store.resolve_customer(&id).await.unwrap(),
                Some(phone.customer_id.clone()),
                "order {order:?}"
            );
        }
        let rows = store.timeline(&phone.customer_id, None, 100).await.unwrap();
        assert_eq!(messages(&rows.entries).len(), 3, "order {order:?}");
        assert_gapless(&rows.entries, &phone.customer_id);
        results.push(phone.customer_id);
    }
    results.dedup();
    assert_eq!(
        results.len(),
        1,
        "same survivor in every order: {results:?}"
    );
}

/// A redelivered event id adds nothing.
pub async fn duplicates_are_dropped<S: ThreadingStore>(store: S) {
    let first = thread(&store, InboundEvent::new(sms_from("e1", "+14155550134", 0))).await;
    let rows = drain(&store).await;
    assert_eq!(
        thread(&store, InboundEvent::new(sms_from("e1", "+14155550134", 5))).await,
        Outcome::Duplicate
    );
    assert_eq!(drain(&store).await, rows);
    let page = store
        .timeline(&customer_of(&first), None, 100)
        .await
        .unwrap();
    assert_eq!(messages(&page.entries), ["e1"]);
}

/// Marking more rows than one statement takes marks exactly those rows:
/// the relay marks a whole round (1,024 rows) at once.
pub async fn marking_published_spans_statements<S: ThreadingStore>(store: S) {
    let config = crate::ThreadingConfig::default();
    let events: Vec<InboundEvent> = (0..2_500i64)
        .map(|i| {
            InboundEvent::new(sms_from(
                &format!("m{i}"),
                &format!("+1415555{:04}", i % 40),
                i * 10,
            ))
        })
        .collect();
    for chunk in events.chunks(1_000) {
        for result in store.thread_batch(&config, chunk).await.expect("batch") {
            result.expect("threaded");
        }
    }
    let rows = store.pending_outbox(0, 3_000).await.unwrap();
    // A message entry each, and the conversations' own entries.
    assert!(rows.len() > 2_500, "{} rows", rows.len());
    // Every other row, 1,250 ids in one call: several statements.
    let (marked, left): (Vec<_>, Vec<_>) = rows.iter().partition(|r| r.id % 2 == 0);
    let ids: Vec<i64> = marked.iter().map(|r| r.id).collect();
    store.mark_published(&ids).await.unwrap();
    let pending: Vec<i64> = store
        .pending_outbox(0, 3_000)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(pending, left.iter().map(|r| r.id).collect::<Vec<_>>());
    store.mark_published(&pending).await.unwrap();
    assert!(store.pending_outbox(0, 10).await.unwrap().is_empty());
}

/// The relay sees every row once, in order, and published rows stay
/// readable through the timeline.
pub async fn outbox_publishes_in_order_exactly_once<S: ThreadingStore>(store: S) {
    for i in 0..5 {
        thread(
            &store,
            InboundEvent::new(sms_from(&format!("e{i}"), "+14155550134", i * 10)),
        )
        .await;
    }
    let mut published = Vec::new();
    loop {
        let batch = store.pending_outbox(0, 2).await.unwrap();
        if batch.is_empty() {
            break;
        }
        let ids: Vec<i64> = batch.iter().map(|r| r.id).collect();
        store.mark_published(&ids).await.unwrap();
        published.extend(batch);
    }
    let ids: Vec<i64> = published.iter().map(|r| r.id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "in order, none twice");
    assert_eq!(messages(&published), ["e0", "e1", "e2", "e3", "e4"]);
    assert!(store.pending_outbox(0, 10).await.unwrap().is_empty());
    let customer = CustomerId::from_string(published[0].event.customer_id.clone());
    assert_eq!(
        store.timeline(&customer, None, 100).await.unwrap().entries,
        published
    );
}

/// Two workers with their own connections threading the same customer at
/// once still produce one gapless sequence.
pub async fn concurrent_workers_keep_sequence_gapless<S, F, Fut>(make: F)
where
    S: ThreadingStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    const PER_WORKER: i64 = 30;
    let stores = [make().await, make().await];
    let mut tasks = Vec::new();
    for (w, store) in stores.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_WORKER {
                let event = sms_from(&format!("w{w}-{i}"), "+14155550134", i);
                thread(&store, InboundEvent::new(event)).await;
            }
            store
        }));
    }
    let mut stores = Vec::new();
    for task in tasks {
        stores.push(task.await.expect("worker"));
    }
    let store = &stores[0];
    let customer = store
        .identity(&key("phone", "+14155550134"))
        .await
        .unwrap()
        .unwrap()
        .customer_id;
    let rows = drain(store).await;
    assert_eq!(messages(&rows).len(), 2 * PER_WORKER as usize);
    assert_gapless(&rows, &customer);
}

/// A scripted stream touching every rule: new customers, chat threads
/// that go idle, email threads by reference and by subject, a proven
/// cross-channel link that merges two customers, unproven claims that
/// become suggestions and later links, edits, duplicates (some within
/// reach of one batch), and events the logic refuses.
fn mixed_stream() -> Vec<InboundEvent> {
    let mut events = Vec::new();
    let email = |id: &str, from: &str, message_id: &str, reply_to: &str, subject: &str, at| {
        let mut e = email_from(id, from, message_id, at);
        let hints = e.threading.get_or_insert_with(Default::default);
        hints.normalized_subject = subject.to_owned();
        if !reply_to.is_empty() {
            hints.in_reply_to = vec![reply_to.to_owned()];
            hints.references = vec![reply_to.to_owned()];
        }
        InboundEvent::new(e)
    };
    let e1 = email("b1", "ana@example.com", "m1@x", "", "Refund", 0);
    let e2 = email("b2", "bo@example.com", "m2@x", "", "Login", 10);
    let e3 = email("b3", "ana@example.com", "m3@x", "m1@x", "Other", 20);
    let e4 = email("b4", "ana@example.com", "m4@x", "", "Refund", 30);
    events.extend([e1.clone(), e2, e3, e4]);
    events.push(InboundEvent::new(sms_from("b5", "+14155550134", 40)));
    events.push(InboundEvent::new(sms_from("b6", "+14155550134", 50)));
    events.push(e1.clone());
    // A web chat visitor claims ana's email without proof: a suggestion.
    let mut chat = InboundEvent::new(message(
        "b7",
        "web",
        ChannelKind::Chat,
        handle(HandleKind::ChatVisitor, "v-1", "web", true),
        60,
    ));
    chat.claims = vec![handle(HandleKind::Email, "ana@example.com", "", false)];
    events.push(chat);
    events.push(InboundEvent::new(telegram_from("b8", "777", 70)));
    // Telegram shares its phone contact: proven, merges tg and sms.
    let mut tg = InboundEvent::new(telegram_from("b9", "777", 80));
    tg.claims = vec![handle(HandleKind::Phone, "+14155550134", "", true)];
    events.push(tg.clone());
    events.push(InboundEvent::new(sms_from("b10", "+14155550134", 90)));
    // ...and then proves ana's email too: a second merge.
    let mut tg2 = InboundEvent::new(telegram_from("b11", "777", 100));
    tg2.claims = vec![handle(HandleKind::Email, "ana@example.com", "", true)];
    events.push(tg2);
    events.push(tg);
    // Idle for two days: the chat closes and a new one opens.
    events.push(InboundEvent::new(sms_from(
        "b12",
        "+14155550134",
        2 * 86_400,
    )));
    events.push(email(
        "b13",
        "ana@example.com",
        "m13@x",
        "m3@x",
        "Refund",
        2 * 86_400 + 5,
    ));
    // An edit of an earlier message.
    let mut edit = sms_from("b14", "+14155550134", 2 * 86_400 + 10);
    edit.kind = EventKind::Edit as i32;
    edit.threading = Some(ThreadingHints {
        edits_event_id: "b10".to_owned(),
        ..Default::default()
    });
    events.push(InboundEvent::new(edit));
    // Refused: no sender; an unknown handle kind.
    let mut anonymous = sms_from("b15", "+14155550134", 2 * 86_400 + 20);
    anonymous.sender = None;
    events.push(InboundEvent::new(anonymous));
    let mut unknown = sms_from("b16", "+14155550134", 2 * 86_400 + 30);
    if let Some(sender) = unknown.sender.as_mut() {
        sender.kind = 999;
    }
    events.push(InboundEvent::new(unknown));
    // WhatsApp proves a new number's phone, then an SMS from it.
    let wa = message(
        "b17",
        "wa",
        ChannelKind::Whatsapp,
        handle(HandleKind::Whatsapp, "14155550199", "", true),
        2 * 86_400 + 40,
    );
    events.push(InboundEvent::new(wa));
    events.push(InboundEvent::new(sms_from(
        "b18",
        "+14155550199",
        2 * 86_400 + 50,
    )));
    events.push(email(
        "b19",
        "bo@example.com",
        "m19@x",
        "m2@x",
        "Login",
        2 * 86_400 + 60,
    ));
    // The chat visitor proves the email after all (verified this time).
    let mut proven = InboundEvent::new(message(
        "b20",
        "web",
        ChannelKind::Chat,
        handle(HandleKind::ChatVisitor, "v-1", "web", true),
        2 * 86_400 + 70,
    ));
    proven.claims = vec![handle(HandleKind::Email, "bo@example.com", "", true)];
    events.push(proven);
    events.push(e1);
    events
}

/// Everything a reader can see of a store after `events`: the outbox in
/// order (ids aside, which a database may skip) and every handle's owner.
async fn observe<S: ThreadingStore>(store: &S, events: &[InboundEvent]) -> Vec<String> {
    let mut seen: Vec<String> = drain(store)
        .await
        .into_iter()
        .map(|r| format!("{:?}", r.event))
        .collect();
    let mut handles = std::collections::BTreeSet::new();
    for input in events {
        if let Ok(lookups) = crate::lookups(input) {
            handles.extend(lookups.handles);
        }
    }
    for key in handles {
        let identity = store.identity(&key).await.expect("identity");
        let suggestions = match &identity {
            Some(i) => store
                .suggestions(&i.customer_id)
                .await
                .expect("suggestions"),
            None => Vec::new(),
        };
        seen.push(format!("{key}: {identity:?} {suggestions:?}"));
    }
    seen
}

/// `thread_batch` in batches of any size leaves exactly the state that
/// threading the same events one at a time leaves, with the same
/// outcomes: each event sees what the earlier ones in its batch wrote.
pub async fn batches_equal_one_at_a_time<S, F, Fut>(make: F)
where
    S: ThreadingStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let config = ThreadingConfig::default();
    let events = mixed_stream();
    let single = make().await;
    let mut expected_outcomes = Vec::new();
    for input in &events {
        expected_outcomes.push(match single.thread(&config, input).await {
            Ok(outcome) => Some(outcome),
            Err(crate::StoreError::Threading { .. }) => None,
            Err(e) => panic!("thread: {e}"),
        });
    }
    let expected = observe(&single, &events).await;
    assert!(
        expected_outcomes.iter().any(Option::is_none)
            && expected_outcomes.contains(&Some(Outcome::Duplicate)),
        "the stream has refusals and duplicates"
    );
    for size in [1, 2, 3, 5, 8, events.len()] {
        let store = make().await;
        let mut outcomes = Vec::new();
        for chunk in events.chunks(size) {
            let results = store.thread_batch(&config, chunk).await.expect("batch");
            assert_eq!(results.len(), chunk.len());
            outcomes.extend(results.into_iter().map(Result::ok));
        }
        assert_eq!(outcomes, expected_outcomes, "outcomes, batches of {size}");
        assert_eq!(
            observe(&store, &events).await,
            expected,
            "state, batches of {size}"
        );
        // Replaying the stream in one batch changes nothing.
        let again = store.thread_batch(&config, &events).await.expect("batch");
        assert!(
            again
                .iter()
                .all(|r| matches!(r, Ok(Outcome::Duplicate) | Err(_))),
            "replay, batches of {size}"
        );
        assert_eq!(observe(&store, &events).await, expected, "after replay");
    }

    // A batch longer than a store's internal parts (the embedded store
    // plans and writes 128 events at a time): the same stream twenty
    // times over, under new event ids, so the same people write again.
    let long: Vec<InboundEvent> = (0..20)
        .flat_map(|round| {
            mixed_stream().into_iter().map(move |mut input| {
                input.event.event_id = format!("{}-r{round}", input.event.event_id);
                input
            })
        })
        .collect();
    let single = make().await;
    let mut expected_outcomes = Vec::new();
    for input in &long {
        expected_outcomes.push(single.thread(&config, input).await.ok());
    }
    let expected = observe(&single, &long).await;
    let store = make().await;
    let outcomes: Vec<_> = store
        .thread_batch(&config, &long)
        .await
        .expect("long batch")
        .into_iter()
        .map(Result::ok)
        .collect();
    assert_eq!(outcomes, expected_outcomes, "outcomes, one long batch");
    assert_eq!(
        observe(&store, &long).await,
        expected,
        "state, one long batch"
    );
}

fn command(id: &str, at: i64, action: Command) -> ThreadingCommand {
    ThreadingCommand {
        command_id: id.to_owned(),
        actor: "agent-7".to_owned(),
        issued_at: Some(Timestamp {
            seconds: T0 + at,
            nanos: 0,
        }),
        command: Some(action),
    }
}

async fn apply<S: ThreadingStore>(store: &S, command: ThreadingCommand) -> CommandOutcome {
    store.apply_command(&command).await.expect("apply command")
}

async fn refused<S: ThreadingStore>(store: &S, command: ThreadingCommand) -> CommandError {
    match store.apply_command(&command).await {
        Err(StoreError::Command { source, .. }) => source,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn conversation_of(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Threaded {
            conversation_id, ..
        } => conversation_id.clone(),
        Outcome::Duplicate => panic!("unexpected duplicate"),
    }
}

/// What a store knows outlives it: a store opened again on the same data
/// (after a restart or a crash) finds the same owners and merges, drops a
/// replayed event and a repeated command as duplicates, keeps a closed
/// conversation closed, and continues each customer's sequence without a
/// gap.
pub async fn state_survives_reopening<S, F, Fut>(open: F)
where
    S: ThreadingStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let sms = || InboundEvent::new(sms_from("r1", "+14155550134", 0));
    let first = open().await;
    let chat = thread(&first, sms()).await;
    let sms_customer = customer_of(&chat);
    let mail = thread(
        &first,
        InboundEvent::new(email_from("r2", "ana@example.com", "<r2@x>", 10)),
    )
    .await;
    let mail_customer = customer_of(&mail);
    let merge = command(
        "r-merge",
        20,
        Command::Merge(MergeCustomers {
            customer_ids: vec![sms_customer.to_string(), mail_customer.to_string()],
        }),
    );
    let close = command(
        "r-close",
        30,
        Command::Close(CloseConversation {
            conversation_id: conversation_of(&chat),
            reason: String::new(),
        }),
    );
    assert!(matches!(
        apply(&first, merge.clone()).await,
        CommandOutcome::Applied(_)
    ));
    assert!(matches!(
        apply(&first, close.clone()).await,
        CommandOutcome::Applied(_)
    ));
    let survivor = sms_customer.clone().min(mail_customer.clone());
    drop(first);

    let second = open().await;
    for handle in [
        key("phone", "+14155550134"),
        key("email", "ana@example.com"),
    ] {
        let owner = second.identity(&handle).await.unwrap().expect("owner");
        assert_eq!(owner.customer_id, survivor, "{handle:?}");
    }
    for id in [&sms_customer, &mail_customer] {
        assert_eq!(
            second.resolve_customer(id).await.unwrap().as_ref(),
            Some(&survivor)
        );
    }
    assert_eq!(thread(&second, sms()).await, Outcome::Duplicate);
    assert_eq!(apply(&second, merge).await, CommandOutcome::Duplicate);
    assert_eq!(apply(&second, close).await, CommandOutcome::Duplicate);
    // The chat was closed: the next text starts a new conversation.
    let next = thread(
        &second,
        InboundEvent::new(sms_from("r3", "+14155550134", 40)),
    )
    .await;
    assert_eq!(customer_of(&next), survivor);
    assert_ne!(conversation_of(&next), conversation_of(&chat));
    let rows = drain(&second).await;
    assert_eq!(messages(&rows), ["r1", "r2", "r3"]);
    assert_gapless(&rows, &survivor);
    let page = second.timeline(&mail_customer, None, 100).await.unwrap();
    assert_eq!(page.customer_id, survivor);
    assert_eq!(
        page.entries.len(),
        rows.len(),
        "the merged timeline is whole"
    );
}

/// Close and reopen from a helpdesk: a closed chat conversation is not
/// continued, a reopened one is; a repeated command id applies once, a
/// command that is already true changes nothing, an unknown conversation
/// is refused.
pub async fn commands_close_and_reopen_conversations<S: ThreadingStore>(store: S) {
    let first = thread(&store, InboundEvent::new(sms_from("e1", "+14155550134", 0))).await;
    let customer = customer_of(&first);
    let conversation = conversation_of(&first);
    let close = || {
        command(
            "c1",
            30,
            Command::Close(CloseConversation {
                conversation_id: conversation.clone(),
                reason: "resolved".to_owned(),
            }),
        )
    };
    let CommandOutcome::Applied(entries) = apply(&store, close()).await else {
        panic!("close applied")
    };
    assert!(matches!(
        entries.as_slice(),
        [e] if e.customer_id == customer.as_str() && e.conversation_id == conversation
            && matches!(&e.entry, Some(Entry::Conversation(c))
                if c.state == ConversationState::Closed as i32 && c.reason == "resolved" && c.actor == "agent-7")
    ));
    assert_eq!(apply(&store, close()).await, CommandOutcome::Duplicate);
    let mut again = close();
    again.command_id = "c2".to_owned();
    assert_eq!(
        apply(&store, again).await,
        CommandOutcome::Applied(Vec::new()),
        "closing a closed conversation changes nothing"
    );

    // Within the idle timeout, but closed: a new conversation.
    let second = thread(
        &store,
        InboundEvent::new(sms_from("e2", "+14155550134", 60)),
    )
    .await;
    assert_ne!(conversation_of(&second), conversation);

    // Reopen the first (closing the second): messages continue it again.
    for (id, at, action) in [
        (
            "c3",
            90,
            Command::Close(CloseConversation {
                conversation_id: conversation_of(&second),
                reason: String::new(),
            }),
        ),
        (
            "c4",
            100,
            Command::Reopen(ReopenConversation {
                conversation_id: conversation.clone(),
                reason: String::new(),
            }),
        ),
    ] {
        let CommandOutcome::Applied(entries) = apply(&store, command(id, at, action)).await else {
            panic!("{id} applied")
        };
        assert_eq!(entries.len(), 1, "{id}");
    }
    let third = thread(
        &store,
        InboundEvent::new(sms_from("e3", "+14155550134", 120)),
    )
    .await;
    assert_eq!(conversation_of(&third), conversation);

    let unknown = refused(
        &store,
        command(
            "c5",
            130,
            Command::Close(CloseConversation {
                conversation_id: "no-such-conversation".to_owned(),
                reason: String::new(),
            }),
        ),
    )
    .await;
    assert!(unknown.is_not_found(), "{unknown}");
    let mut nameless = command("", 130, Command::Reopen(ReopenConversation::default()));
    nameless.command_id.clear();
    assert!(matches!(
        refused(&store, nameless).await,
        CommandError::MissingCommandId
    ));

    let rows = drain(&store).await;
    assert_gapless(&rows, &customer);
    let closes = rows
        .iter()
        .filter(
            |r| matches!(&r.event.entry, Some(Entry::Conversation(c)) if c.reason == "resolved"),
        )
        .count();
    assert_eq!(closes, 1, "the repeated command wrote nothing");
}

/// Link, merge, split and unlink from a helpdesk: each moves exactly what
/// it names, later messages follow the handles, refusals change nothing,
/// and every customer's sequence stays gapless.
pub async fn commands_link_merge_split_unlink<S: ThreadingStore>(store: S) {
    let email = thread(
        &store,
        InboundEvent::new(email_from("e1", "ana@example.com", "m1@x", 0)),
    )
    .await;
    let sms = thread(
        &store,
        InboundEvent::new(sms_from("e2", "+14155550134", 10)),
    )
    .await;
    let (a, p) = (customer_of(&email), customer_of(&sms));
    assert_ne!(a, p);

    // Merge, ids in either order: the smaller survives, as automatic
    // merges do.
    let merge = |id: &str, ids: [&CustomerId; 2]| {
        command(
            id,
            20,
            Command::Merge(MergeCustomers {
                customer_ids: ids.iter().map(|c| c.to_string()).collect(),
            }),
        )
    };
    let survivor = a.clone().min(p.clone());
    let CommandOutcome::Applied(entries) = apply(&store, merge("m1", [&p, &a])).await else {
        panic!("merge applied")
    };
    assert!(matches!(
        entries.as_slice(),
        [e] if e.customer_id == survivor.as_str() && matches!(&e.entry, Some(Entry::Merged(m))
            if m.reason == "command" && m.merged_customer_ids == [a.clone().max(p.clone()).to_string()])
    ));
    for id in [&a, &p] {
        assert_eq!(
            store.resolve_customer(id).await.unwrap(),
            Some(survivor.clone())
        );
    }
    assert_eq!(
        apply(&store, merge("m2", [&a, &p])).await,
        CommandOutcome::Applied(Vec::new()),
        "already one customer"
    );

    // Link a handle nobody owns: confirmed, and a suggestion of it is gone.
    let tg = handle(HandleKind::TelegramUser, "777", "", false);
    apply(
        &store,
        command(
            "l1",
            30,
            Command::Link(LinkIdentity {
                customer_id: a.to_string(),
                handle: Some(tg.clone()),
            }),
        ),
    )
    .await;
    let owner = store
        .identity(&key("telegram", "777"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (owner.customer_id, owner.confirmed),
        (survivor.clone(), true)
    );

    // Split the phone and its conversation off: its next SMS goes to the
    // new customer and continues the moved conversation.
    let split = command(
        "s1",
        40,
        Command::Split(SplitCustomer {
            customer_id: survivor.to_string(),
            handles: vec![handle(HandleKind::Phone, "+14155550134", "", true)],
            conversation_ids: vec![conversation_of(&sms)],
        }),
    );
    let CommandOutcome::Applied(entries) = apply(&store, split).await else {
        panic!("split applied")
    };
    let [from, to] = entries.as_slice() else {
        panic!("two split entries: {entries:?}")
    };
    assert_eq!(from.customer_id, survivor.as_str());
    let split_off = CustomerId::from_string(to.customer_id.clone());
    assert_eq!(to.sequence, 1, "the new customer's timeline starts here");
    assert!(matches!(&to.entry, Some(Entry::Split(s)) if s.from_customer_id == survivor.as_str()));
    let next = thread(
        &store,
        InboundEvent::new(sms_from("e3", "+14155550134", 50)),
    )
    .await;
    assert_eq!(customer_of(&next), split_off);
    assert_eq!(conversation_of(&next), conversation_of(&sms));
    let email_again = thread(
        &store,
        InboundEvent::new(email_from("e4", "ana@example.com", "m2@x", 60)),
    )
    .await;
    assert_eq!(customer_of(&email_again), survivor, "the email stayed");

    // Linking a handle someone else owns is refused: merge instead.
    let conflict = refused(
        &store,
        command(
            "l2",
            70,
            Command::Link(LinkIdentity {
                customer_id: survivor.to_string(),
                handle: Some(handle(HandleKind::Phone, "+14155550134", "", true)),
            }),
        ),
    )
    .await;
    assert!(conflict.is_conflict(), "{conflict}");

    // Unlink the phone: it moves to a new, empty customer.
    let CommandOutcome::Applied(entries) = apply(
        &store,
        command(
            "u1",
            80,
            Command::Unlink(UnlinkIdentity {
                customer_id: split_off.to_string(),
                handle: Some(handle(HandleKind::Phone, "+1 415 555 0134", "", true)),
            }),
        ),
    )
    .await
    else {
        panic!("unlink applied")
    };
    assert!(matches!(
        entries.as_slice(),
        [gone, new] if gone.customer_id == split_off.as_str()
            && matches!(&gone.entry, Some(Entry::Identity(l)) if !l.linked)
            && new.customer_id != split_off.as_str() && new.sequence == 1
    ));
    let moved = store
        .identity(&key("phone", "+14155550134"))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(moved.customer_id, split_off);
    let not_linked = refused(
        &store,
        command(
            "u2",
            90,
            Command::Unlink(UnlinkIdentity {
                customer_id: split_off.to_string(),
                handle: Some(handle(HandleKind::Phone, "+14155550134", "", true)),
            }),
        ),
    )
    .await;
    assert!(not_linked.is_conflict(), "{not_linked}");
    let unknown = refused(
        &store,
        command(
            "l3",
            90,
            Command::Link(LinkIdentity {
                customer_id: CustomerId::for_command("never").to_string(),
                handle: Some(tg),
            }),
        ),
    )
    .await;
    assert!(unknown.is_not_found(), "{unknown}");

    let rows = drain(&store).await;
    for customer in [&a, &p, &split_off, &moved.customer_id] {
        assert_gapless(&rows, customer);
    }
}

/// The relay lease: one holder at a time, renewable by its holder, taken
/// over only after it expires or is released.
pub async fn lease_has_one_holder<S: ThreadingStore>(store: S) {
    let take = |holder: &'static str, now: i64| {
        let store = &store;
        async move {
            store
                .acquire_lease("timeline-relay", holder, now, 1_000)
                .await
                .expect("acquire lease")
        }
    };
    assert!(take("a", 0).await);
    assert!(!take("b", 500).await, "a holds it");
    assert!(take("a", 600).await, "the holder renews");
    assert!(!take("b", 1_500).await, "renewed until 1600");
    assert!(take("b", 1_700).await, "expired: b takes over");
    assert!(!take("a", 1_700).await, "b holds it now");
    store.release_lease("timeline-relay", "a").await.unwrap();
    assert!(!take("a", 1_800).await, "only the holder releases");
    store.release_lease("timeline-relay", "b").await.unwrap();
    assert!(take("a", 1_800).await, "released: free at once");
}

/// A Telegram message with two photos, announced by the provider's file
/// ids (not downloaded yet).
fn photos_from(event_id: &str, user: &str, at: i64) -> ConversationEvent {
    let mut event = telegram_from(event_id, user, at);
    let announced = |name: &str, file_id: &str| Attachment {
        name: name.to_owned(),
        media_type: "image/jpeg".to_owned(),
        size: 0,
        sha256: String::new(),
        uri: format!("tg-file:{file_id}"),
    };
    event.content = Some(Content {
        text: "the broken part".to_owned(),
        attachments: vec![
            announced("front.jpg", "AgAD-front"),
            announced("back.jpg", "AgAD-back"),
        ],
        ..Default::default()
    });
    event
}

/// The file stored for an attachment: `name` empty, as the media worker
/// sends it.
fn stored_file(byte: u8) -> Attachment {
    let sha256 = hex_of(byte);
    Attachment {
        name: String::new(),
        media_type: String::new(),
        size: 1024,
        uri: format!("omni-att://sha256/{sha256}"),
        sha256,
    }
}

fn hex_of(byte: u8) -> String {
    format!("{byte:02x}").repeat(32)
}

/// The update saying attachment `index` of `message` was stored (or, with
/// `file` unset, given up).
fn attachment_stored(
    event_id: &str,
    message: &ConversationEvent,
    index: u32,
    file: Option<Attachment>,
    at: i64,
) -> ConversationEvent {
    let time = Timestamp {
        seconds: T0 + at,
        nanos: 0,
    };
    ConversationEvent {
        event_id: event_id.to_owned(),
        channel_id: message.channel_id.clone(),
        channel_kind: message.channel_kind,
        direction: Direction::Inbound as i32,
        kind: EventKind::AttachmentStored as i32,
        sender: message.sender.clone(),
        ingested_at: Some(time),
        attachment_stored: Some(AttachmentStored {
            message_event_id: message.event_id.clone(),
            attachment_index: index,
            error: if file.is_none() {
                "404 file not found".to_owned()
            } else {
                String::new()
            },
            attachment: file,
        }),
        ..Default::default()
    }
}

/// The attachments of message `event_id` as a customer's timeline shows
/// them.
async fn attachments_of<S: ThreadingStore>(
    store: &S,
    customer: &CustomerId,
    event_id: &str,
) -> Vec<Attachment> {
    let page = store.timeline(customer, None, 100).await.expect("timeline");
    page.entries
        .iter()
        .find_map(|row| match &row.event.entry {
            Some(Entry::Message(m)) if row.event.timeline_event_id == event_id => m
                .event
                .as_ref()
                .and_then(|e| e.content.as_ref())
                .map(|c| c.attachments.clone()),
            _ => None,
        })
        .expect("the message is on the timeline")
}

/// A message's files follow it: the attachment-stored update fills the
/// message's attachment in (the stored file, the message's name) on the
/// timeline, adds an entry saying so in the message's conversation, and
/// applying it again changes nothing; an update threaded in one batch with
/// its message (a replay) does the same; a given-up download leaves the
/// provider's reference; an update of a message never threaded is
/// refused (dead-lettered by the worker), writing nothing.
pub async fn attachment_updates_fill_in_their_message<S: ThreadingStore>(store: S) {
    let config = ThreadingConfig::default();
    let photos = photos_from("ph-1", "7001", 0);
    let first = thread(&store, InboundEvent::new(photos.clone())).await;
    let customer = customer_of(&first);
    let Outcome::Threaded { sequences, .. } = &first else {
        unreachable!()
    };
    let update = attachment_stored("st-1", &photos, 1, Some(stored_file(0xab)), 30);
    assert_eq!(
        thread(&store, InboundEvent::new(update.clone())).await,
        Outcome::Threaded {
            customer_id: customer.clone(),
            conversation_id: conversation_of(&first),
            sequences: (sequences.1 + 1, sequences.1 + 1),
        }
    );
    let attachments = attachments_of(&store, &customer, "ph-1").await;
    assert_eq!(
        attachments[1],
        Attachment {
            name: "back.jpg".to_owned(),
            media_type: "image/jpeg".to_owned(),
            ..stored_file(0xab)
        },
        "the stored file, under the message's name and type"
    );
    assert_eq!(
        attachments[0].uri, "tg-file:AgAD-front",
        "the other is untouched"
    );

    let before = store.timeline(&customer, None, 100).await.unwrap();
    let last = before.entries.last().expect("entries");
    assert_eq!(last.event.timeline_event_id, "st-1");
    assert_eq!(last.event.conversation_id, conversation_of(&first));
    let Some(Entry::AttachmentStored(entry)) = &last.event.entry else {
        panic!("an attachment-stored entry: {last:?}")
    };
    assert_eq!(
        (entry.message_event_id.as_str(), entry.attachment_index),
        ("ph-1", 1)
    );
    assert_eq!(entry.attachment, Some(stored_file(0xab)));

    // Applying the same update twice changes nothing.
    assert_eq!(
        thread(&store, InboundEvent::new(update.clone())).await,
        Outcome::Duplicate
    );
    assert_eq!(store.timeline(&customer, None, 100).await.unwrap(), before);
    let rows = drain(&store).await;
    assert_gapless(&rows, &customer);
    assert_eq!(
        rows.iter()
            .filter(|r| matches!(&r.event.entry, Some(Entry::AttachmentStored(_))))
            .count(),
        1
    );

    // A replay threads a message and its update in one batch.
    let replayed = photos_from("ph-2", "7002", 100);
    let update = attachment_stored("st-2", &replayed, 0, Some(stored_file(0xcd)), 130);
    let given_up = attachment_stored("st-3", &replayed, 1, None, 140);
    let outcomes = store
        .thread_batch(
            &config,
            &[
                InboundEvent::new(replayed.clone()),
                InboundEvent::new(update.clone()),
                InboundEvent::new(update),
                InboundEvent::new(given_up),
            ],
        )
        .await
        .expect("batch");
    let outcomes: Vec<Outcome> = outcomes.into_iter().map(|o| o.expect("threaded")).collect();
    let second = customer_of(&outcomes[0]);
    assert!(matches!(outcomes[1], Outcome::Threaded { .. }));
    assert_eq!(outcomes[2], Outcome::Duplicate);
    assert!(matches!(outcomes[3], Outcome::Threaded { .. }));
    let attachments = attachments_of(&store, &second, "ph-2").await;
    assert_eq!(
        attachments[0].uri,
        format!("omni-att://sha256/{}", hex_of(0xcd))
    );
    assert_eq!(attachments[0].name, "front.jpg");
    assert_eq!(
        attachments[1].uri, "tg-file:AgAD-back",
        "a given-up download keeps the provider's reference"
    );
    let page = store.timeline(&second, None, 100).await.unwrap();
    let Some(Entry::AttachmentStored(entry)) = &page.entries.last().unwrap().event.entry else {
        panic!("the given-up update is on the timeline")
    };
    assert_eq!(
        (entry.attachment.as_ref(), entry.error.as_str()),
        (None, "404 file not found")
    );

    // An update whose message was never threaded is refused.
    let orphan = attachment_stored(
        "st-4",
        &photos_from("never-threaded", "7003", 200),
        0,
        Some(stored_file(0xef)),
        230,
    );
    let outcomes = store
        .thread_batch(&config, &[InboundEvent::new(orphan)])
        .await
        .expect("batch");
    assert!(
        matches!(
            outcomes.as_slice(),
            [Err(ThreadingError::UnthreadedMessage(id))] if id == "never-threaded"
        ),
        "{outcomes:?}"
    );
    assert!(drain(&store).await.len() == rows.len() + page.entries.len());
}

/// A WeChat activity from `openid` (a follow, a menu tap), `at` seconds
/// after [`T0`].
fn wechat_activity(event_id: &str, openid: &str, name: &str, at: i64) -> ConversationEvent {
    let mut event = message(
        event_id,
        "wx",
        ChannelKind::Wechat,
        handle(HandleKind::WechatOpenid, openid, "wx1234567890abcdef", true),
        at,
    );
    event.kind = EventKind::Activity as i32;
    event.activity = Some(omni_proto::v1::Activity {
        name: name.to_owned(),
        ..Default::default()
    });
    event
}

/// Activities are on the timeline, in the open conversation when there is
/// one, but never open, reopen or prolong a conversation: a follow alone
/// opens nothing, a menu tap during a chat lands in it, and after the idle
/// timeout the next message opens a new conversation however many
/// activities came in between.
pub async fn activities_never_open_conversations<S: ThreadingStore>(store: S) {
    let openid = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o";
    let wechat_message = |id: &str, at: i64| {
        message(
            id,
            "wx",
            ChannelKind::Wechat,
            handle(HandleKind::WechatOpenid, openid, "wx1234567890abcdef", true),
            at,
        )
    };
    let idle = i64::try_from(ThreadingConfig::default().default_idle_timeout.as_secs()).unwrap();
    let follow = thread(
        &store,
        InboundEvent::new(wechat_activity("a1", openid, "subscribe", 0)),
    )
    .await;
    let customer = customer_of(&follow);
    thread(&store, InboundEvent::new(wechat_message("m1", 10))).await;
    thread(
        &store,
        InboundEvent::new(wechat_activity("a2", openid, "menu_click", 20)),
    )
    .await;
    // Location reports keep coming, but the conversation idles out.
    thread(
        &store,
        InboundEvent::new(wechat_activity("a3", openid, "location_report", 20 + idle)),
    )
    .await;
    thread(&store, InboundEvent::new(wechat_message("m2", 30 + idle))).await;

    let rows = drain(&store).await;
    assert_gapless(&rows, &customer);
    let placed: Vec<(String, String, bool)> = rows
        .iter()
        .filter_map(|r| match &r.event.entry {
            Some(Entry::Message(m)) => m.event.as_ref().map(|e| {
                (
                    e.event_id.clone(),
                    r.event.conversation_id.clone(),
                    m.opened_conversation,
                )
            }),
            _ => None,
        })
        .collect();
    let ids: Vec<&str> = placed.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids, ["a1", "m1", "a2", "a3", "m2"]);
    let (_, a1, a1_opened) = &placed[0];
    let (_, m1, m1_opened) = &placed[1];
    let (_, a2, _) = &placed[2];
    let (_, a3, a3_opened) = &placed[3];
    let (_, m2, m2_opened) = &placed[4];
    assert!(a1.is_empty() && !a1_opened, "a follow opens nothing");
    assert!(!m1.is_empty() && *m1_opened, "the first message opens one");
    assert_eq!(a2, m1, "a menu tap during the chat is in it");
    assert!(
        a3.is_empty() && !a3_opened,
        "an idle conversation is not prolonged"
    );
    assert!(
        *m2_opened && m2 != m1,
        "the next message opens a new conversation"
    );
}

/// A rule set covering the SMS channels `sms` and `sms-2`: refund requests
/// are P1, a new conversation while another is open P2, urgent ones P2,
/// anything else P3.
fn triage_config() -> ThreadingConfig {
    let book = omni_rules::RuleBook::compile([(
        "support.toml",
        r#"
        name = "support"
        time_zone = "Asia/Riyadh"
        default_language = "ar"
        default_priority = "P3"
        channels = ["sms", "sms-2"]
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
        name = "urgent"
        match.keywords = ["urgent"]
        actions.tags = ["urgent"]
        actions.priority = "P2"
        "#,
    )])
    .expect("rule book compiles");
    ThreadingConfig {
        rules: std::sync::Arc::new(book),
        ..ThreadingConfig::default()
    }
}

/// A text message from the customer's phone on SMS channel `channel`.
fn text_from(event_id: &str, channel: &str, text: &str, at: i64) -> InboundEvent {
    let mut event = message(
        event_id,
        channel,
        ChannelKind::Sms,
        handle(HandleKind::Phone, "+14155550134", "", true),
        at,
    );
    event.content = Some(Content {
        text: text.to_owned(),
        ..Default::default()
    });
    InboundEvent::new(event)
}

/// A refund request in Arabic as customers type it: alef with hamza
/// below, diacritics, a tatweel, Arabic-Indic digits, and the article
/// attached to the keyword.
const ARABIC_REFUND: &str = "أُرِيدُ الإسْتِرْدَادَ للطلبيّة رقم ١٢٣ مـــن فضلك";

/// The triage stream: one customer, two open conversations (one per SMS
/// channel), and messages that change their tags and priority or not.
/// The `triaged` entries it must write are in [`TRIAGED`].
fn triage_stream() -> Vec<InboundEvent> {
    vec![
        // Opens the first conversation: the default priority.
        text_from("tr-1", "sms", "Hello, my parcel is late", 0),
        // Opens a second one while the first is open.
        text_from("tr-2", "sms-2", ARABIC_REFUND, 60),
        // Matches nothing.
        text_from("tr-3", "sms-2", "شكرا", 120),
        // A provider's retry.
        text_from("tr-2", "sms-2", ARABIC_REFUND, 60),
        // A new tag; P2 does not lower P1.
        text_from("tr-4", "sms-2", "urgent please", 180),
        // Raises the first conversation from P3 to P2.
        text_from("tr-5", "sms", "urgent, where is it?", 240),
        // Nothing new for either conversation: their tags and priority
        // were stored.
        text_from("tr-6", "sms-2", "urgent: refund!", 300),
        text_from("tr-7", "sms", "URGENT", 360),
    ]
}

/// The `triaged` entries of [`triage_stream`]: event id, tags, priority.
const TRIAGED: [(&str, &[&str], Priority); 4] = [
    ("tr-1", &[], Priority::P3),
    ("tr-2", &["refund", "returning-open"], Priority::P1),
    (
        "tr-4",
        &["refund", "returning-open", "urgent"],
        Priority::P1,
    ),
    ("tr-5", &["urgent"], Priority::P2),
];

fn triaged_of(rows: &[OutboxRow]) -> Vec<(&TimelineEvent, &ConversationTriaged)> {
    rows.iter()
        .filter_map(|r| match &r.event.entry {
            Some(Entry::Triaged(t)) => Some((&r.event, t)),
            _ => None,
        })
        .collect()
}

/// Asserts the `triaged` entries of `rows` are those of [`TRIAGED`], each
/// right after its message, in its conversation.
fn assert_triaged(rows: &[OutboxRow]) {
    let triaged = triaged_of(rows);
    let summary: Vec<(&str, Vec<&str>, i32)> = triaged
        .iter()
        .map(|(_, t)| {
            (
                t.event_id.as_str(),
                t.tags.iter().map(String::as_str).collect(),
                t.priority,
            )
        })
        .collect();
    let expected: Vec<(&str, Vec<&str>, i32)> = TRIAGED
        .iter()
        .map(|(id, tags, priority)| (*id, tags.to_vec(), *priority as i32))
        .collect();
    assert_eq!(summary, expected, "triaged entries");
    for (entry, t) in triaged {
        let at = rows
            .iter()
            .position(|r| r.event == *entry)
            .expect("entry in rows");
        let before = &rows[at.checked_sub(1).expect("an entry before")].event;
        assert_eq!(before.timeline_event_id, t.event_id, "the message first");
        assert_eq!(before.sequence + 1, entry.sequence);
        assert_eq!(before.conversation_id, entry.conversation_id);
        assert_eq!(
            entry.timeline_event_id,
            crate::ids::timeline_entry_id(
                &t.event_id,
                &format!("triage\u{0}{}", entry.conversation_id)
            )
        );
        assert_eq!(t.rule_set, "support");
    }
}

/// Customer-service rules on the timeline: an Arabic refund request
/// (letter variants and diacritics folded) from a customer with another
/// open conversation is tagged and made P1 in a `triaged` entry right
/// after the message; a message that changes nothing and a retried event
/// write none; later matches add their tags to the stored ones and raise
/// but never lower the priority; the timeline query shows the entries;
/// and replaying the stream into an empty store (in one batch) writes
/// identical entries, ids included.
pub async fn rules_triage_conversations<S, F, Fut>(make: F)
where
    S: ThreadingStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let config = triage_config();
    let events = triage_stream();
    let store = make().await;
    let mut outcomes = Vec::new();
    for input in &events {
        outcomes.push(store.thread(&config, input).await.expect("thread event"));
    }
    assert_eq!(outcomes[3], Outcome::Duplicate, "the retry");
    let customer = customer_of(&outcomes[0]);
    let first_conversation = conversation_of(&outcomes[0]);
    let refund_conversation = conversation_of(&outcomes[1]);
    assert_ne!(first_conversation, refund_conversation);
    for (i, conversation) in [
        (2, &refund_conversation),
        (4, &refund_conversation),
        (5, &first_conversation),
        (6, &refund_conversation),
        (7, &first_conversation),
    ] {
        assert_eq!(&conversation_of(&outcomes[i]), conversation, "event {i}");
    }

    let rows = drain(&store).await;
    assert_gapless(&rows, &customer);
    assert_eq!(
        messages(&rows),
        ["tr-1", "tr-2", "tr-3", "tr-4", "tr-5", "tr-6", "tr-7"]
    );
    assert_triaged(&rows);
    let triaged = triaged_of(&rows);
    let (refund_entry, refund) = triaged[1];
    assert_eq!(refund_entry.conversation_id, refund_conversation);
    assert_eq!(refund.matched_rules, ["refund", "returning-open-issue"]);
    assert_eq!(refund.language, "ar");
    let (_, urgent) = triaged[2];
    assert_eq!(urgent.matched_rules, ["urgent"]);

    let page = store
        .timeline(&customer, None, 100)
        .await
        .expect("timeline");
    assert_eq!(page.entries, rows, "the query shows the same entries");

    assert_replay_identical(make().await, &config, &events, &outcomes, rows).await;
}

/// A conversation's tags and priority outlive the store: threaded half
/// before a restart and half after, the stream writes the same `triaged`
/// entries (after the restart, a message that adds nothing writes none,
/// and a new match adds to the stored tags).
pub async fn triage_survives_reopening<S, F, Fut>(open: F)
where
    S: ThreadingStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let config = triage_config();
    let events = triage_stream();
    let first = open().await;
    for input in &events[..2] {
        first.thread(&config, input).await.expect("thread event");
    }
    drop(first);
    let second = open().await;
    for input in &events[2..] {
        second.thread(&config, input).await.expect("thread event");
    }
    assert_triaged(&drain(&second).await);
}

/// A rule book that acknowledges every customer message on SMS and email
/// (once per conversation within 12 h) in Persian, Chinese or English,
/// and answers shipping questions with a keyword auto-reply.
fn replies_config() -> ThreadingConfig {
    let book = omni_rules::RuleBook::compile([(
        "replies.toml",
        r#"
        name = "replies"
        time_zone = "UTC"
        default_language = "en"
        channel_kinds = ["sms", "email"]
        [rate_limits]
        acknowledgement_window = "12h"
        auto_reply_window = "1h"
        [templates.received]
        fa = "پیام شما رسید؛ به زودی پاسخ می‌دهیم."
        zh = "我们已收到您的消息，会尽快回复。"
        en = "We got your message and will answer soon."
        [templates.shipping]
        fa = "سفارش‌ها ظرف دو روز ارسال می‌شوند."
        en = "Orders ship within two days."
        [[rules]]
        name = "shipping-question"
        match.keywords = ["shipping"]
        actions.auto_reply = "shipping"
        [[rules]]
        name = "acknowledge"
        actions.acknowledge = "received"
        "#,
    )])
    .expect("rule book compiles");
    ThreadingConfig {
        rules: std::sync::Arc::new(book),
        ..ThreadingConfig::default()
    }
}

fn sms_saying(event_id: &str, phone: &str, text: &str, at: i64) -> ConversationEvent {
    let mut event = sms_from(event_id, phone, at);
    event.content = Some(Content {
        text: text.to_owned(),
        ..Default::default()
    });
    event
}

/// The replies stream: see [`automated_replies_are_sent_once`].
fn replies_stream() -> Vec<InboundEvent> {
    let mut mail = email_from("ar-mail", "ana@example.com", "m-1@mail.example", 40);
    mail.content = Some(Content {
        subject: "Order 7781".to_owned(),
        text: "Where is my order?".to_owned(),
        ..Default::default()
    });
    let mut bounce = email_from("ar-bounce", "mailer@example.net", "m-2@mail.example", 50);
    bounce.content = mail.content.clone();
    bounce
        .provider_metadata
        .insert("auto_reply".to_owned(), "true".to_owned());
    let mut ours = sms_saying("ar-echo", "+14155550104", "We got your message", 60);
    ours.provider_metadata
        .insert("auto_acknowledgement".to_owned(), "true".to_owned());
    [
        sms_saying("ar-fa", "+14155550101", "سلام، پیام من را دریافت کردید؟", 0),
        sms_saying("ar-fa-2", "+14155550101", "ممنون", 30),
        sms_saying("ar-zh", "+14155550102", "你好，我的订单在哪里？", 10),
        sms_saying("ar-ship", "+14155550103", "how much is shipping?", 20),
        sms_saying("ar-fa", "+14155550101", "سلام، پیام من را دریافت کردید؟", 0),
        mail,
        bounce,
        ours,
    ]
    .into_iter()
    .map(InboundEvent::new)
    .collect()
}

fn automated_replies_of(
    rows: &[OutboxRow],
) -> Vec<(&TimelineEvent, &omni_proto::v1::AutomatedReply)> {
    rows.iter()
        .filter_map(|r| match &r.event.entry {
            Some(Entry::AutomatedReply(reply)) => Some((&r.event, reply)),
            _ => None,
        })
        .collect()
}

/// Asserts the `automated_reply` entries of [`replies_stream`]: who got
/// which reply, in which language, with which outbound message, each
/// entry right after its message's entries.
fn assert_automated_replies(rows: &[OutboxRow]) {
    use omni_proto::v1::AutomatedReplyKind as Kind;
    let replies = automated_replies_of(rows);
    let summary: Vec<(&str, i32, &str, &str, &str)> = replies
        .iter()
        .map(|(_, r)| {
            (
                r.event_id.as_str(),
                r.kind,
                r.rule.as_str(),
                r.template.as_str(),
                r.language.as_str(),
            )
        })
        .collect();
    let ack = Kind::Acknowledgement as i32;
    assert_eq!(
        summary,
        [
            ("ar-fa", ack, "acknowledge", "received", "fa"),
            ("ar-zh", ack, "acknowledge", "received", "zh"),
            (
                "ar-ship",
                Kind::AutoReply as i32,
                "shipping-question",
                "shipping",
                "en"
            ),
            ("ar-mail", ack, "acknowledge", "received", "en"),
        ],
        "automated replies"
    );
    let texts = [
        "پیام شما رسید؛ به زودی پاسخ می‌دهیم.",
        "我们已收到您的消息，会尽快回复。",
        "Orders ship within two days.",
        "We got your message and will answer soon.",
    ];
    for ((entry, reply), text) in replies.iter().zip(texts) {
        let at = rows
            .iter()
            .position(|r| r.event == **entry)
            .expect("entry in rows");
        let message_at = rows
            .iter()
            .position(|r| r.event.timeline_event_id == reply.event_id)
            .expect("the message's entry");
        assert!(message_at < at);
        for between in &rows[message_at + 1..at] {
            assert!(
                matches!(between.event.entry, Some(Entry::Triaged(_))),
                "only the triage between the message and its reply"
            );
        }
        assert_eq!(rows[at - 1].event.sequence + 1, entry.sequence);
        assert_eq!(
            rows[message_at].event.conversation_id,
            entry.conversation_id
        );
        let kind = if reply.kind == ack {
            "acknowledgement"
        } else {
            "auto-reply"
        };
        assert_eq!(
            entry.timeline_event_id,
            crate::ids::timeline_entry_id(&reply.event_id, &format!("automated-reply\u{0}{kind}"))
        );
        let trigger = trigger_of(rows, &reply.event_id);
        let outbound = reply.outbound.as_ref().expect("the outbound message");
        let key = format!("automation/{kind}/{}/{}", reply.rule, reply.event_id);
        assert_eq!(outbound.provider_message_id, key);
        assert_eq!(
            outbound.event_id,
            omni_model::event_id(&trigger.channel_id, &key).to_string()
        );
        assert_eq!(outbound.direction, Direction::Outbound as i32);
        assert_eq!(outbound.kind, EventKind::Message as i32);
        assert_eq!(outbound.channel_id, trigger.channel_id);
        assert_eq!(outbound.channel_kind, trigger.channel_kind);
        assert_eq!(outbound.recipients, [trigger.sender.clone().unwrap()]);
        let content = outbound.content.as_ref().expect("content");
        assert_eq!(content.text, text);
        assert_eq!(outbound.language, reply.language);
        assert_eq!(outbound.provider_metadata["auto_acknowledgement"], "true");
        assert_eq!(outbound.provider_metadata["automation_rule"], reply.rule);
        assert_eq!(outbound.ingested_at, trigger.received_at);
        if trigger.channel_kind == ChannelKind::Email as i32 {
            assert_eq!(content.subject, "Re: Order 7781");
            let threading = outbound.threading.as_ref().expect("threading");
            assert_eq!(threading.in_reply_to, ["m-1@mail.example"]);
            assert_eq!(threading.references, ["m-1@mail.example"]);
        } else {
            assert_eq!(content.subject, "");
        }
    }
}

/// The customer message `event_id` as its timeline entry has it.
fn trigger_of<'a>(rows: &'a [OutboxRow], event_id: &str) -> &'a ConversationEvent {
    rows.iter()
        .find_map(|r| match &r.event.entry {
            Some(Entry::Message(m)) if r.event.timeline_event_id == event_id => m.event.as_ref(),
            _ => None,
        })
        .expect("the message's entry")
}

/// Acknowledgements and keyword auto-replies on the timeline, with the
/// message to send: a new conversation gets one acknowledgement in the
/// customer's language (Persian, Chinese; the default, English, for an
/// English email, with a `Re:` subject and the email's Message-ID as
/// In-Reply-To); a second message within the acknowledgement window gets
/// none; a keyword question gets the auto-reply instead of the
/// acknowledgement; a retried event, a mail marked as an automatic reply
/// and a message carrying `auto_acknowledgement` get none; and replaying
/// the stream into an empty store (in one batch) writes identical entries
/// and outbound event ids.
pub async fn automated_replies_are_sent_once<S, F, Fut>(make: F)
where
    S: ThreadingStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let config = replies_config();
    let events = replies_stream();
    let store = make().await;
    let mut outcomes = Vec::new();
    for input in &events {
        outcomes.push(store.thread(&config, input).await.expect("thread event"));
    }
    assert_eq!(outcomes[4], Outcome::Duplicate, "the retry");
    assert_eq!(
        conversation_of(&outcomes[0]),
        conversation_of(&outcomes[1]),
        "the second message continues the conversation"
    );
    let rows = drain(&store).await;
    assert_automated_replies(&rows);

    // Outbound messages included: they are part of the entries.
    assert_replay_identical(make().await, &config, &events, &outcomes, rows).await;
}

/// Threads `events` into the empty store `replay` in one batch and checks
/// it gives `outcomes` and writes `rows`' entries, ids and all: what the
/// rules decide depends on the stream alone, never on when it is threaded.
async fn assert_replay_identical<S: ThreadingStore>(
    replay: S,
    config: &ThreadingConfig,
    events: &[InboundEvent],
    outcomes: &[Outcome],
    rows: Vec<OutboxRow>,
) {
    let replayed: Vec<Outcome> = replay
        .thread_batch(config, events)
        .await
        .expect("replay batch")
        .into_iter()
        .map(|r| r.expect("replayed event"))
        .collect();
    assert_eq!(replayed, outcomes, "the same outcomes");
    let entries = |rows: Vec<OutboxRow>| -> Vec<TimelineEvent> {
        rows.into_iter().map(|r| r.event).collect()
    };
    assert_eq!(
        entries(drain(&replay).await),
        entries(rows),
        "a replay writes identical entries"
    );
}

/// What the rate limits need outlives the store: a conversation
/// acknowledged before a restart is not acknowledged again within the
/// window after it, and an auto-reply is not repeated within its window.
pub async fn automated_reply_limits_survive_reopening<S, F, Fut>(open: F)
where
    S: ThreadingStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let config = replies_config();
    let first = open().await;
    for input in [
        sms_saying("lr-1", "+14155550201", "hello", 0),
        sms_saying("lr-2", "+14155550202", "shipping?", 0),
    ] {
        first
            .thread(&config, &InboundEvent::new(input))
            .await
            .expect("thread event");
    }
    assert_eq!(automated_replies_of(&drain(&first).await).len(), 2);
    drop(first);
    let second = open().await;
    let before = drain(&second).await.len();
    for input in [
        sms_saying("lr-3", "+14155550201", "hello again", 60),
        sms_saying("lr-4", "+14155550202", "shipping, again?", 60),
    ] {
        second
            .thread(&config, &InboundEvent::new(input))
            .await
            .expect("thread event");
    }
    let rows = drain(&second).await;
    assert!(rows.len() > before, "the messages are threaded");
    assert_eq!(
        automated_replies_of(&rows).len(),
        2,
        "no new reply after the restart: {:?}",
        automated_replies_of(&rows)
    );
}

/// SMS rules with SLA targets on the calendar: P3 (the default) answers
/// within an hour, escalating 15 minutes before; a refund is P1 (15
/// minutes, escalating 5 minutes before).
fn sla_config() -> ThreadingConfig {
    let book = omni_rules::RuleBook::compile([(
        "sla.toml",
        r#"
        name = "sla"
        time_zone = "UTC"
        default_language = "en"
        default_priority = "P3"
        channel_kinds = ["sms"]
        [sla.p1]
        first_response = "15m"
        next_response = "30m"
        escalate_before = "5m"
        [sla.p2]
        first_response = "30m"
        next_response = "1h"
        [sla.p3]
        first_response = "1h"
        next_response = "2h"
        escalate_before = "15m"
        [[rules]]
        name = "refund"
        match.keywords = ["refund"]
        actions.priority = "P1"
        actions.tags = ["refund"]
        "#,
    )])
    .expect("rule book compiles");
    ThreadingConfig {
        rules: std::sync::Arc::new(book),
        ..ThreadingConfig::default()
    }
}

/// An agent's reply to `phone`, as the outbound dispatcher reports it once
/// the provider accepted it, `at` seconds after [`T0`].
fn agent_reply_to(event_id: &str, phone: &str, at: i64) -> InboundEvent {
    let mut event = sms_from(event_id, phone, at);
    event.direction = Direction::Outbound as i32;
    event.kind = EventKind::DeliveryStatus as i32;
    event.recipients = event.sender.take().into_iter().collect();
    event.received_at = None;
    event.delivery = Some(omni_proto::v1::DeliveryStatus {
        outbound_event_id: format!("out-{event_id}"),
        state: omni_proto::v1::DeliveryState::Sent as i32,
        ..Default::default()
    });
    InboundEvent::new(event)
}

/// The SLA entries of `rows` as `(customer, kind, awaited event, at
/// seconds after T0)`, in outbox order.
fn sla_entries(rows: &[OutboxRow]) -> Vec<(String, &'static str, String, i64)> {
    rows.iter()
        .filter_map(|r| {
            let (kind, timer) = match &r.event.entry {
                Some(Entry::SlaEscalated(e)) => ("escalated", e.timer.as_ref()),
                Some(Entry::SlaBreached(b)) => ("breached", b.timer.as_ref()),
                Some(Entry::SlaAnswered(a)) => ("answered", a.timer.as_ref()),
                _ => return None,
            };
            let at = r.event.recorded_at.as_ref().map_or(0, |t| t.seconds - T0);
            Some((
                r.event.customer_id.clone(),
                kind,
                timer.expect("timer").event_id.clone(),
                at,
            ))
        })
        .collect()
}

/// Rows grouped per customer in sequence order: what a replay must
/// reproduce (customers' timelines interleave in the outbox as the clock
/// and the events came, which a replay cannot).
fn per_customer(rows: Vec<OutboxRow>) -> Vec<TimelineEvent> {
    let mut entries: Vec<TimelineEvent> = rows.into_iter().map(|r| r.event).collect();
    entries.sort_by(|a, b| (&a.customer_id, a.sequence).cmp(&(&b.customer_id, b.sequence)));
    entries
}

/// SLA timers: an unanswered P3 message escalates to P2 when its deadline
/// nears and is breached when it passes, whether the daemon's clock or the
/// customer's next message notices first; an agent's answer in time stops
/// the clock without a breach, one after it is recorded as late; a refund
/// (P1) escalates and breaches on its own shorter targets; the next
/// message after an answer gets the next-response target. Replaying the
/// stream into an empty store, with the clock only at the end, writes the
/// same timelines.
pub async fn sla_timers_escalate_breach_and_stop<S, F, Fut>(make: F)
where
    S: ThreadingStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let config = sla_config();
    let ms = |at: i64| (T0 + at) * 1000;
    let (ana, bo, cy) = ("+14155550301", "+14155550302", "+14155550303");
    let say = |id: &str, phone: &str, text: &str, at: i64| {
        InboundEvent::new(sms_saying(id, phone, text, at))
    };
    let store = make().await;
    let mut events = Vec::new();
    let mut outcomes = Vec::new();
    let mut step = async |store: &S, input: InboundEvent| {
        outcomes.push(store.thread(&config, &input).await.expect("thread event"));
        events.push(input);
    };
    step(
        &store,
        say("sla-ana-1", ana, "hello, where is my parcel?", 0),
    )
    .await;
    step(&store, say("sla-bo-1", bo, "hi, a question", 0)).await;
    step(&store, say("sla-cy-1", cy, "I want a refund", 0)).await;
    step(&store, agent_reply_to("sla-bo-answer", bo, 600)).await;
    // The clock at +1000 s: Cy's refund escalated at +600 and is late
    // since +900; Ana's escalation is due at +2700 only.
    let fired = store.fire_sla_timers(ms(1000), 100).await.expect("timers");
    assert_eq!(fired.len(), 2, "{fired:?}");
    assert_eq!(
        store.fire_sla_timers(ms(1000), 100).await.expect("timers"),
        Vec::new(),
        "a timer fires once"
    );
    // Ana writes again at +3000: her escalation (+2700) is written before
    // the message, by the threading of the message itself.
    step(&store, say("sla-ana-2", ana, "hello?", 3000)).await;
    let fired = store.fire_sla_timers(ms(5000), 100).await.expect("timers");
    assert_eq!(fired.len(), 1, "Ana's breach: {fired:?}");
    step(&store, agent_reply_to("sla-ana-answer", ana, 6000)).await;
    step(
        &store,
        say("sla-ana-3", ana, "thanks, one more thing", 7000),
    )
    .await;
    // Far later: Ana's next response (P2 after the escalation: 1 h) is
    // late too; Bo's answered conversation has no timer.
    store
        .fire_sla_timers(ms(100_000), 100)
        .await
        .expect("timers");
    let rows = drain(&store).await;

    let customer = |i: usize| customer_of(&outcomes[i]).as_str().to_owned();
    let (ana_id, bo_id, cy_id) = (customer(0), customer(1), customer(2));
    for c in [&ana_id, &bo_id, &cy_id] {
        assert_gapless(&rows, &CustomerId::from_string(c.clone()));
    }
    let entry = |c: &str, kind: &'static str, event: &str, at: i64| {
        (c.to_owned(), kind, event.to_owned(), at)
    };
    assert_eq!(
        sla_entries(&rows),
        vec![
            entry(&bo_id, "answered", "sla-bo-1", 600),
            entry(&cy_id, "escalated", "sla-cy-1", 600),
            entry(&cy_id, "breached", "sla-cy-1", 900),
            entry(&ana_id, "escalated", "sla-ana-1", 2700),
            entry(&ana_id, "breached", "sla-ana-1", 3600),
            entry(&ana_id, "answered", "sla-ana-1", 6000),
            entry(&ana_id, "breached", "sla-ana-3", 7000 + 3600),
        ],
    );
    let of = |id: &str| -> Vec<&TimelineEvent> {
        rows.iter()
            .map(|r| &r.event)
            .filter(|e| e.customer_id == id)
            .collect()
    };
    // Bo: answered in time, after 10 minutes.
    let bo_answer = of(&bo_id)
        .into_iter()
        .find_map(|e| match &e.entry {
            Some(Entry::SlaAnswered(a)) => Some(a.clone()),
            _ => None,
        })
        .expect("Bo's answer");
    assert!(bo_answer.in_time);
    assert_eq!(bo_answer.response_ms, 600_000);
    assert_eq!(bo_answer.answer_event_id, "sla-bo-answer");
    let timer = bo_answer.timer.expect("timer");
    assert_eq!(timer.response, omni_proto::v1::SlaResponse::First as i32);
    assert_eq!(timer.target_ms, 3_600_000);
    assert_eq!(timer.channel_id, "sms");
    // Ana: escalated P3 -> P2, breached, answered late (100 minutes);
    // her next message awaits the next response on P2's target.
    let ana_rows = of(&ana_id);
    let escalations: Vec<(i32, i32)> = ana_rows
        .iter()
        .filter_map(|e| match &e.entry {
            Some(Entry::SlaEscalated(x)) => Some((x.previous_priority, x.priority)),
            _ => None,
        })
        .collect();
    assert_eq!(
        escalations,
        vec![(Priority::P3 as i32, Priority::P2 as i32)],
        "P2's next response has no escalation margin"
    );
    let position = |id: &str| {
        ana_rows
            .iter()
            .position(|e| e.timeline_event_id == id)
            .expect(id)
    };
    assert!(
        position(&crate::ids::timeline_entry_id(
            "sla-ana-1",
            &format!("sla-escalated\u{0}{}", conversation_of(&outcomes[0]))
        )) < position("sla-ana-2"),
        "the escalation comes before the message that noticed it"
    );
    let late = ana_rows
        .iter()
        .find_map(|e| match &e.entry {
            Some(Entry::SlaAnswered(a)) => Some(a.clone()),
            _ => None,
        })
        .expect("Ana's answer");
    assert!(!late.in_time);
    assert_eq!(late.response_ms, 6_000_000);
    let next = ana_rows
        .iter()
        .rev()
        .find_map(|e| match &e.entry {
            Some(Entry::SlaBreached(b)) => b.timer.clone(),
            _ => None,
        })
        .expect("the next response's breach");
    assert_eq!(next.response, omni_proto::v1::SlaResponse::Next as i32);
    assert_eq!(next.target_ms, 3_600_000, "P2's next response");

    // A replay, with the clock only at the end, writes the same timelines.
    let replay = make().await;
    let replayed: Vec<Outcome> = replay
        .thread_batch(&config, &events)
        .await
        .expect("replay batch")
        .into_iter()
        .map(|r| r.expect("replayed event"))
        .collect();
    // The same customers and conversations; the rows each event wrote
    // differ where the clock wrote a timer's entry live and the next event
    // writes it on the replay.
    let placed = |outcomes: &[Outcome]| -> Vec<(CustomerId, String)> {
        outcomes
            .iter()
            .map(|o| (customer_of(o), conversation_of(o)))
            .collect()
    };
    assert_eq!(placed(&replayed), placed(&outcomes), "the same placement");
    replay
        .fire_sla_timers(ms(100_000), 100)
        .await
        .expect("timers");
    assert_eq!(
        per_customer(drain(&replay).await),
        per_customer(rows),
        "a replay writes identical timelines"
    );
}

/// A running SLA timer outlives the store: reopened, the clock still
/// fires it, once; closing a conversation stops its timer.
pub async fn sla_timers_survive_reopening<S, F, Fut>(open: F)
where
    S: ThreadingStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let config = sla_config();
    let first = open().await;
    first
        .thread(
            &config,
            &InboundEvent::new(sms_saying("sr-1", "+14155550401", "hello", 0)),
        )
        .await
        .expect("thread event");
    let closed = first
        .thread(
            &config,
            &InboundEvent::new(sms_saying("sr-2", "+14155550402", "hello", 0)),
        )
        .await
        .expect("thread event");
    apply(
        &first,
        command(
            "sr-close",
            60,
            Command::Close(CloseConversation {
                conversation_id: conversation_of(&closed),
                reason: "solved".to_owned(),
            }),
        ),
    )
    .await;
    drain(&first).await;
    drop(first);
    let second = open().await;
    let before = drain(&second).await.len();
    let fired = second
        .fire_sla_timers((T0 + 10_000) * 1000, 100)
        .await
        .expect("timers");
    assert_eq!(
        fired
            .iter()
            .map(|e| match &e.entry {
                Some(Entry::SlaEscalated(x)) => x.timer.as_ref().map(|t| t.event_id.as_str()),
                Some(Entry::SlaBreached(x)) => x.timer.as_ref().map(|t| t.event_id.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>(),
        vec![Some("sr-1"), Some("sr-1")],
        "the open conversation's escalation and breach, not the closed one's"
    );
    assert_eq!(drain(&second).await.len(), before + 2);
    assert!(
        second
            .fire_sla_timers((T0 + 20_000) * 1000, 100)
            .await
            .expect("timers")
            .is_empty()
    );
}

/// One batch merges a customer away and creates another, who is left
/// waiting for a reply: after reopening, the new customer's SLA timer
/// still fires. (The embedded store may give the new customer the place
/// on disk the merged-away one held; its list of customers with timers
/// must end up naming the new one.)
pub async fn sla_timers_of_a_customer_created_beside_a_merge_survive_reopening<S, F, Fut>(open: F)
where
    S: ThreadingStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let config = sla_config();
    // The survivor first, so the customer merged away is the newer one.
    let mut phones = ["+14155550501", "+14155550502"];
    phones.sort_by_key(|phone| CustomerId::for_handle(&key("phone", phone)));
    let [survivor, merged] = phones;
    let first = open().await;
    for (n, phone) in phones.iter().enumerate() {
        first
            .thread(
                &config,
                &InboundEvent::new(sms_saying(&format!("sm-{n}"), phone, "hello", 0)),
            )
            .await
            .expect("thread event");
    }
    let mut link = InboundEvent::new(sms_saying("sm-link", survivor, "me again", 30));
    link.claims = vec![handle(HandleKind::Phone, merged, "", true)];
    let newcomer = InboundEvent::new(sms_saying("sm-new", "+14155550503", "hello", 30));
    for outcome in first
        .thread_batch(&config, &[link, newcomer])
        .await
        .expect("thread batch")
    {
        outcome.expect("thread event");
    }
    let owner = first
        .identity(&key("phone", merged))
        .await
        .expect("identity")
        .expect("owned");
    assert_eq!(
        owner.customer_id,
        CustomerId::for_handle(&key("phone", survivor)),
        "the second customer is merged away"
    );
    drain(&first).await;
    drop(first);
    let second = open().await;
    let fired = second
        .fire_sla_timers((T0 + 10_000) * 1000, 100)
        .await
        .expect("timers");
    let newcomer: Vec<_> = fired
        .iter()
        .filter(|e| match &e.entry {
            Some(Entry::SlaEscalated(x)) => {
                x.timer.as_ref().is_some_and(|t| t.event_id == "sm-new")
            }
            Some(Entry::SlaBreached(x)) => x.timer.as_ref().is_some_and(|t| t.event_id == "sm-new"),
            _ => false,
        })
        .collect();
    assert_eq!(newcomer.len(), 2, "the newcomer's escalation and breach");
}

/// SMS rules tagging and raising customers of the `vip` segment.
fn segment_config() -> ThreadingConfig {
    let book = omni_rules::RuleBook::compile([(
        "segments.toml",
        r#"
        name = "segments"
        time_zone = "UTC"
        default_language = "en"
        channel_kinds = ["sms"]
        [[rules]]
        name = "vip"
        match.segments = ["VIP"]
        actions.tags = ["vip"]
        actions.priority = "P2"
        "#,
    )])
    .expect("rule book compiles");
    ThreadingConfig {
        rules: std::sync::Arc::new(book),
        ..ThreadingConfig::default()
    }
}

fn set_segment(id: &str, customer: &CustomerId, segment: &str, at: i64) -> ThreadingCommand {
    command(
        id,
        at,
        Command::SetSegment(omni_proto::v1::SetCustomerSegment {
            customer_id: customer.as_str().to_owned(),
            segment: segment.to_owned(),
        }),
    )
}

/// A helpdesk puts a customer in a segment: a customer-level entry says
/// so, the rules see it from the customer's next message on (also after
/// the store is reopened), setting it again changes nothing, a name rules
/// could not match reliably is refused, and clearing it is recorded too.
pub async fn segments_set_by_command_reach_the_rules<S, F, Fut>(open: F)
where
    S: ThreadingStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let config = segment_config();
    let phone = "+14155550501";
    let triaged = |rows: &[OutboxRow]| -> Vec<(Vec<String>, i32)> {
        triaged_of(rows)
            .into_iter()
            .map(|(_, t)| (t.tags.clone(), t.priority))
            .collect()
    };
    let store = open().await;
    let first = store
        .thread(
            &config,
            &InboundEvent::new(sms_saying("sg-1", phone, "hello", 0)),
        )
        .await
        .expect("thread event");
    let customer = customer_of(&first);
    assert_eq!(
        triaged(&drain(&store).await),
        vec![(Vec::new(), Priority::P3 as i32)],
        "no segment yet"
    );
    let CommandOutcome::Applied(entries) =
        apply(&store, set_segment("sg-set", &customer, "vip", 10)).await
    else {
        panic!("applied");
    };
    assert_eq!(entries.len(), 1);
    let Some(Entry::SegmentChanged(changed)) = &entries[0].entry else {
        panic!("a segment entry: {entries:?}");
    };
    assert_eq!(
        (changed.segment.as_str(), changed.previous_segment.as_str()),
        ("vip", "")
    );
    assert_eq!(entries[0].conversation_id, "", "customer-level");
    assert_eq!(
        apply(&store, set_segment("sg-again", &customer, "vip", 20)).await,
        CommandOutcome::Applied(Vec::new()),
        "already true"
    );
    assert!(matches!(
        refused(
            &store,
            set_segment("sg-bad", &customer, "very important!", 30)
        )
        .await,
        CommandError::InvalidSegment(_)
    ));
    drain(&store).await;
    drop(store);

    let store = open().await;
    let before = drain(&store).await.len();
    // The batch path (what the daemon's worker calls) reads it too.
    store
        .thread_batch(
            &config,
            &[InboundEvent::new(sms_saying(
                "sg-2",
                phone,
                "hello again",
                60,
            ))],
        )
        .await
        .expect("thread batch")
        .pop()
        .expect("one outcome")
        .expect("threaded");
    let rows = drain(&store).await;
    assert_eq!(
        triaged(&rows[before..]),
        vec![(vec!["vip".to_owned()], Priority::P2 as i32)],
        "the rules see the segment after a restart"
    );
    let CommandOutcome::Applied(entries) =
        apply(&store, set_segment("sg-clear", &customer, "", 90)).await
    else {
        panic!("applied");
    };
    let Some(Entry::SegmentChanged(changed)) = &entries[0].entry else {
        panic!("a segment entry: {entries:?}");
    };
    assert_eq!(
        (changed.segment.as_str(), changed.previous_segment.as_str()),
        ("", "vip")
    );
}

/// All of a customer's timeline, page by page.
async fn whole_timeline<S: ThreadingStore>(store: &S, customer: &CustomerId) -> Vec<OutboxRow> {
    let mut rows = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .timeline(customer, after, 2)
            .await
            .expect("read timeline");
        rows.extend(page.entries);
        match page.next {
            Some(next) => after = Some(next),
            None => return rows,
        }
    }
}

/// Publishes `rows` as the relay does.
async fn publish<S: ThreadingStore>(store: &S, rows: &[OutboxRow]) {
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    store.mark_published(&ids).await.expect("mark published");
}

/// Timeline retention removes the published rows recorded before the
/// cutoff, oldest first, and nothing else: an unpublished row stays
/// however old (the relay must see every row), as does every newer row.
/// The customer's timeline then starts at the first row kept, and
/// threading goes on with the next sequence numbers.
///
/// On the embedded store, rows only go once a snapshot has indexed them
/// on disk: run it with a snapshot after every write.
pub async fn timeline_retention_removes_only_old_published_rows<S: ThreadingStore>(store: S) {
    let (ana, bo) = ("+14155550134", "+14155550199");
    let first = thread(&store, InboundEvent::new(sms_from("a0", ana, 0))).await;
    let bo_first = thread(&store, InboundEvent::new(sms_from("b0", bo, 5))).await;
    thread(&store, InboundEvent::new(sms_from("a1", ana, 10))).await;
    let (ana_id, bo_id) = (customer_of(&first), customer_of(&bo_first));
    let old = drain(&store).await;
    let (ana_old, bo_old): (Vec<OutboxRow>, Vec<OutboxRow>) = old
        .into_iter()
        .partition(|r| r.event.customer_id == ana_id.as_str());
    assert!(ana_old.len() >= 2 && !bo_old.is_empty());
    publish(&store, &ana_old).await;
    thread(&store, InboundEvent::new(sms_from("a2", ana, 1_000))).await;
    let ana_new = drain(&store)
        .await
        .into_iter()
        .filter(|r| r.event.customer_id == ana_id.as_str())
        .collect::<Vec<_>>();
    assert_eq!(messages(&ana_new), ["a2"]);
    publish(&store, &ana_new).await;

    let cutoff_ms = (T0 + 500) * 1000;
    for row in ana_old.iter().chain(&bo_old) {
        let at = row.event.recorded_at.as_ref().expect("recorded_at");
        assert!(at.seconds < T0 + 500, "an old row: {row:?}");
    }
    // Windows of two rows: several transactions.
    let removed = store.prune_timeline(cutoff_ms, 2).await.expect("prune");
    assert_eq!(removed, ana_old.len() as u64, "ana's published old rows");
    assert_eq!(store.prune_timeline(cutoff_ms, 2).await.unwrap(), 0);

    assert_eq!(
        drain(&store).await,
        bo_old,
        "unpublished rows stay for the relay"
    );
    assert_eq!(
        whole_timeline(&store, &bo_id).await,
        bo_old,
        "old but unpublished"
    );
    let kept = whole_timeline(&store, &ana_id).await;
    assert_eq!(kept, ana_new, "the timeline starts at the first row kept");
    assert_eq!(
        store.timeline(&ana_id, None, 1).await.unwrap().entries,
        ana_new[..1]
    );

    // Threading goes on where the sequences were.
    let next = ana_new.last().unwrap().event.sequence + 1;
    match thread(&store, InboundEvent::new(sms_from("a3", ana, 1_010))).await {
        Outcome::Threaded { sequences, .. } => assert_eq!(sequences, (next, next)),
        Outcome::Duplicate => panic!("a new event is not a duplicate"),
    }

    // Once published, the old rows go too, and the customer's next entry
    // still follows its last one.
    publish(&store, &bo_old).await;
    assert_eq!(
        store.prune_timeline(cutoff_ms, 1_000).await.unwrap(),
        bo_old.len() as u64
    );
    assert!(whole_timeline(&store, &bo_id).await.is_empty());
    let next = bo_old.last().unwrap().event.sequence + 1;
    match thread(&store, InboundEvent::new(sms_from("b1", bo, 1_020))).await {
        Outcome::Threaded { sequences, .. } => assert_eq!(sequences, (next, next)),
        Outcome::Duplicate => panic!("a new event is not a duplicate"),
    }
    let bo_now = whole_timeline(&store, &bo_id).await;
    assert_eq!(messages(&bo_now), ["b1"]);
    assert_eq!(
        messages(&whole_timeline(&store, &ana_id).await),
        ["a2", "a3"]
    );
}
