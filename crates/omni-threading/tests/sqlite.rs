//! The store contract against SQLite files in a temporary directory.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use std::time::Duration;

use omni_threading::{SnapshotLimits, SqliteOptions, SqliteStore, contract};
use tempfile::TempDir;

/// Fresh database files in one temporary directory, opened with
/// `options`.
struct Files {
    dir: TempDir,
    n: AtomicUsize,
    options: SqliteOptions,
}

/// Options that snapshot after every write and then drop every customer
/// group from memory, so every lookup of an earlier event id, handle,
/// Message-ID or conversation goes to disk.
fn snapshot_always() -> SqliteOptions {
    SqliteOptions {
        snapshots: SnapshotLimits {
            events: 0,
            changed_customers: 0,
            journal_rows: 0,
            interval: Duration::ZERO,
        },
        cache_bytes: 0,
        ..SqliteOptions::default()
    }
}

/// A plain connection pool on the store's file, for writing what another
/// process or an earlier version would have left there.
async fn raw_pool(path: &Path) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect(&format!("sqlite:{}", path.display()))
        .await
        .unwrap()
}

impl Files {
    fn new() -> Files {
        Files::with(SqliteOptions::default())
    }

    fn with(options: SqliteOptions) -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
            n: AtomicUsize::new(0),
            options,
        }
    }

    fn fresh_path(&self) -> PathBuf {
        let n = self.n.fetch_add(1, Ordering::Relaxed);
        self.dir.path().join(format!("data/threading-{n}.sqlite3"))
    }

    async fn open(&self, path: &Path) -> SqliteStore {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        SqliteStore::open_with(path, self.options.clone())
            .await
            .expect("open sqlite store")
    }

    async fn fresh(&self) -> SqliteStore {
        self.open(&self.fresh_path()).await
    }
}

macro_rules! single_store_cases {
    ($options:expr; $($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let files = Files::with($options);
            contract::$case(files.fresh().await).await;
        }
    )*};
}

/// The contract, once as the daemon runs the store (snapshots now and
/// then: most lookups hit memory) and once with a snapshot after every
/// write (every lookup of an earlier write goes to the tables).
macro_rules! contract_cases {
    ($module:ident, $options:expr) => {
        mod $module {
            use super::*;

            crate::support::with_single_store_cases!(single_store_cases! { $options; });

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn merges_are_order_independent() {
                let files = Files::with($options);
                contract::merges_are_order_independent(|| files.fresh()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_workers_keep_sequence_gapless() {
                let files = Files::with($options);
                let path = files.fresh_path();
                // Two pools on one file: two workers with their own connections.
                contract::concurrent_workers_keep_sequence_gapless(|| files.open(&path)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn batches_equal_one_at_a_time() {
                let files = Files::with($options);
                contract::batches_equal_one_at_a_time(|| files.fresh()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn state_survives_reopening() {
                let files = Files::with($options);
                let path = files.fresh_path();
                contract::state_survives_reopening(|| files.open(&path)).await;
            }
        }
    };
}

contract_cases!(journaled, SqliteOptions::default());
contract_cases!(snapshotted, snapshot_always());

/// A file an older version wrote, with the state in its tables and no
/// journal, opens with that state: owners, merges, threaded event ids and
/// each customer's next sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_tables_of_an_older_version_load() {
    use omni_proto::v1::{ChannelKind, HandleKind, IdentityHandle};
    use omni_threading::ThreadingStore as _;
    use omni_threading::{CustomerId, HandleKey, InboundEvent, Outcome, ThreadingConfig};

    let files = Files::new();
    let path = files.fresh_path();
    files.open(&path).await.close().await;
    let pool = raw_pool(&path).await;
    for sql in [
        "INSERT INTO customers (id, merged_into, next_sequence) VALUES ('c-a', NULL, 3), ('c-b', 'c-a', 2)",
        "INSERT INTO identities VALUES ('phone', '', '+14155550134', 'c-a', TRUE)",
        "INSERT INTO processed_events (event_id, customer_id, conversation_id) VALUES ('old-1', 'c-a', 'conv-1')",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    // As an earlier version left it: the state not yet in groups.
    sqlx::query("UPDATE state_snapshot SET grouped = 0")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let store = files.open(&path).await;
    let phone = HandleKey {
        kind: "phone".into(),
        scope: String::new(),
        value: "+14155550134".into(),
    };
    let owner = store.identity(&phone).await.unwrap().expect("owner");
    assert_eq!((owner.customer_id.as_str(), owner.confirmed), ("c-a", true));
    let merged = CustomerId::from_string("c-b".into());
    assert_eq!(
        store
            .resolve_customer(&merged)
            .await
            .unwrap()
            .unwrap()
            .as_str(),
        "c-a"
    );
    let sms = |id: &str| {
        let sender = IdentityHandle {
            kind: HandleKind::Phone as i32,
            value: "+14155550134".into(),
            verified: true,
            ..Default::default()
        };
        InboundEvent::new(contract::message(id, "sms", ChannelKind::Sms, sender, 0))
    };
    let config = ThreadingConfig::default();
    assert_eq!(
        store.thread(&config, &sms("old-1")).await.unwrap(),
        Outcome::Duplicate
    );
    match store.thread(&config, &sms("new-1")).await.unwrap() {
        Outcome::Threaded {
            customer_id,
            sequences,
            ..
        } => assert_eq!((customer_id.as_str(), sequences), ("c-a", (3, 3))),
        Outcome::Duplicate => panic!("a new event is not a duplicate"),
    }
}

fn api_message(id: &str, sender: &str, seconds: i64) -> omni_threading::InboundEvent {
    use omni_proto::v1::{ChannelKind, HandleKind, IdentityHandle};
    let sender = IdentityHandle {
        kind: HandleKind::External as i32,
        scope: "api".into(),
        value: sender.into(),
        verified: true,
        ..Default::default()
    };
    omni_threading::InboundEvent::new(contract::message(
        id,
        "api",
        ChannelKind::Api,
        sender,
        seconds,
    ))
}

/// A store that keeps no customer group in memory after a snapshot, on a
/// fresh file, which has threaded forty API messages (returned), from
/// `customer-0` to `customer-3` in turn, in one batch.
async fn four_customers_without_a_cache() -> (
    Files,
    PathBuf,
    SqliteStore,
    Vec<omni_threading::InboundEvent>,
) {
    use omni_threading::{ThreadingConfig, ThreadingStore as _};

    let files = Files::with(SqliteOptions {
        cache_bytes: 0,
        ..SqliteOptions::default()
    });
    let path = files.fresh_path();
    let store = files.open(&path).await;
    let events: Vec<_> = (0..40)
        .map(|n| api_message(&format!("ev-{n}"), &format!("customer-{}", n % 4), n))
        .collect();
    store
        .thread_batch(&ThreadingConfig::default(), &events)
        .await
        .unwrap();
    (files, path, store, events)
}

/// After a snapshot the threaded ids are on disk only: memory holds none,
/// before and after reopening, and a retry of each is still a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_ids_leave_memory_and_still_deduplicate() {
    use omni_threading::{Outcome, ThreadingConfig, ThreadingStore as _};

    let files = Files::new();
    let path = files.fresh_path();
    let store = files.open(&path).await;
    let config = ThreadingConfig::default();
    let events: Vec<_> = (0..300)
        .map(|n| api_message(&format!("ev-{n}"), &format!("customer-{}", n % 7), n))
        .collect();
    for chunk in events.chunks(64) {
        store.thread_batch(&config, chunk).await.unwrap();
    }
    let before = store.stats().await.unwrap();
    assert_eq!(before.memory.recent_event_ids, 300);
    store.snapshot().await.unwrap();
    let after = store.stats().await.unwrap();
    assert_eq!(after.memory.recent_event_ids, 0);
    assert_eq!(after.event_ids_on_disk, 300);
    assert_eq!(after.memory.customers, 7, "customers stay in memory");
    for outcome in store.thread_batch(&config, &events[..100]).await.unwrap() {
        assert_eq!(outcome.unwrap(), Outcome::Duplicate);
    }
    store.close().await;

    let store = files.open(&path).await;
    assert_eq!(store.stats().await.unwrap().memory.recent_event_ids, 0);
    for outcome in store.thread_batch(&config, &events[200..]).await.unwrap() {
        assert_eq!(outcome.unwrap(), Outcome::Duplicate);
    }
    // Per-customer order carries on where it was: 43 messages and the
    // opening of their conversation.
    match store
        .thread(&config, &api_message("ev-new", "customer-0", 1_000))
        .await
        .unwrap()
    {
        Outcome::Threaded { sequences, .. } => assert_eq!(sequences.0, 45),
        Outcome::Duplicate => panic!("a new event is not a duplicate"),
    }
}

/// Ids older than the window are pruned, oldest first, and only those: a
/// retry that late is threaded again (the window is what bounds the
/// table), one within the window is still a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_older_than_the_window_are_pruned() {
    use omni_threading::{Outcome, ThreadingConfig, ThreadingStore as _};

    let files = Files::new();
    let store = files.fresh().await;
    let config = ThreadingConfig::default();
    let old: Vec<_> = (0..50)
        .map(|n| api_message(&format!("old-{n}"), "customer-a", n))
        .collect();
    store.thread_batch(&config, &old).await.unwrap();
    store.snapshot().await.unwrap();
    let cut = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 1;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let recent: Vec<_> = (0..20)
        .map(|n| api_message(&format!("recent-{n}"), "customer-a", 100 + n))
        .collect();
    store.thread_batch(&config, &recent).await.unwrap();
    store.snapshot().await.unwrap();

    assert_eq!(store.prune_event_ids(cut).await.unwrap(), 50);
    assert_eq!(store.stats().await.unwrap().event_ids_on_disk, 20);
    assert_eq!(store.prune_event_ids(cut).await.unwrap(), 0);
    assert_eq!(
        store.thread(&config, &recent[3]).await.unwrap(),
        Outcome::Duplicate
    );
    assert!(matches!(
        store.thread(&config, &old[3]).await.unwrap(),
        Outcome::Threaded { .. }
    ));
}

/// Ids on disk are found by a hash, then compared whole: a row whose hash
/// matches an id but whose id differs does not make that id a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_whose_hash_matches_another_is_not_a_duplicate() {
    use omni_threading::{Outcome, ThreadingConfig, ThreadingStore as _};

    let files = Files::new();
    let path = files.fresh_path();
    let store = files.open(&path).await;
    let config = ThreadingConfig::default();
    let first = api_message("ev-a", "customer-a", 0);
    store.thread(&config, &first).await.unwrap();
    store.snapshot().await.unwrap();
    assert_eq!(
        store.thread(&config, &first).await.unwrap(),
        Outcome::Duplicate,
        "found on disk by its hash"
    );
    // The row keeps ev-a's hash but names another id: as if that id had
    // the same hash.
    let pool = raw_pool(&path).await;
    let changed = sqlx::query("UPDATE threaded_events SET event_id = 'ev-other'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(changed.rows_affected(), 1);
    pool.close().await;
    assert!(matches!(
        store.thread(&config, &first).await.unwrap(),
        Outcome::Threaded { .. }
    ));
}

/// Ids a version before `threaded_events` put on disk still deduplicate,
/// and are pruned with the window like the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_an_earlier_version_kept_are_found_until_pruned() {
    use omni_threading::{Outcome, ThreadingConfig, ThreadingStore as _};

    let files = Files::new();
    let path = files.fresh_path();
    files.open(&path).await.close().await;
    let pool = raw_pool(&path).await;
    // Threaded just now: the store's own pruning, with its window of
    // days, leaves it alone.
    let threaded_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    sqlx::query(
        "INSERT INTO processed_events (event_id, customer_id, conversation_id, threaded_ms) \
         VALUES ('old-1', '', 'conv-1', $1)",
    )
    .bind(threaded_ms)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("UPDATE state_snapshot SET event_ids = 1")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let store = files.open(&path).await;
    let config = ThreadingConfig::default();
    let old = api_message("old-1", "customer-a", 0);
    assert_eq!(
        store.thread(&config, &old).await.unwrap(),
        Outcome::Duplicate
    );
    store.snapshot().await.unwrap();
    assert_eq!(store.prune_event_ids(threaded_ms + 1).await.unwrap(), 1);
    assert_eq!(store.stats().await.unwrap().event_ids_on_disk, 0);
    assert!(matches!(
        store.thread(&config, &old).await.unwrap(),
        Outcome::Threaded { .. }
    ));
}

/// A customer's timeline reads the same whether its rows are indexed in
/// memory, on disk, or some of each: every row once, in order, page by
/// page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_pages_span_the_snapshot() {
    use omni_threading::{Outcome, ThreadingConfig, ThreadingStore as _};

    let files = Files::new();
    let store = files.fresh().await;
    let config = ThreadingConfig::default();
    let mut customer = None;
    for n in 0..23 {
        if n == 10 || n == 17 {
            store.snapshot().await.unwrap();
        }
        // Another customer's rows between, so ids are not contiguous.
        store
            .thread(&config, &api_message(&format!("other-{n}"), "other", n))
            .await
            .unwrap();
        if let Outcome::Threaded { customer_id, .. } = store
            .thread(&config, &api_message(&format!("mine-{n}"), "me", n))
            .await
            .unwrap()
        {
            customer = Some(customer_id);
        }
    }
    let customer = customer.unwrap();
    let mut after = None;
    let mut sequences = Vec::new();
    loop {
        let page = store.timeline(&customer, after, 4).await.unwrap();
        assert!(page.entries.len() <= 4);
        for row in &page.entries {
            assert_eq!(row.event.customer_id, customer.as_str());
            sequences.push(row.event.sequence);
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let expected: Vec<u64> = (1..=sequences.len() as u64).collect();
    assert_eq!(sequences, expected);
    assert!(sequences.len() >= 23, "{} rows", sequences.len());
}

/// A snapshot folds the journal into the customer groups on disk and
/// deletes it, then drops the groups from memory beyond the cache: a
/// store on the same file that missed it reloads, later lookups load the
/// groups back, and one opened on it has the same customers, order and
/// duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_groups_leave_memory_and_come_back() {
    use omni_threading::{Outcome, ThreadingConfig, ThreadingStore as _};

    let options = SqliteOptions {
        cache_bytes: 0,
        ..SqliteOptions::default()
    };
    let files = Files::with(options);
    let path = files.fresh_path();
    let store = files.open(&path).await;
    let other = files.open(&path).await;
    let config = ThreadingConfig::default();
    // Thirty customers write a lot of journal (one row per batch of 4).
    let events: Vec<_> = (0..600)
        .map(|n| api_message(&format!("ev-{n}"), &format!("customer-{}", n % 30), n))
        .collect();
    for chunk in events.chunks(4) {
        store.thread_batch(&config, chunk).await.unwrap();
    }
    let before = store.stats().await.unwrap();
    assert_eq!(before.journal_rows, 150);
    assert_eq!(before.memory.customers, 30);
    store.snapshot().await.unwrap();
    let after = store.stats().await.unwrap();
    assert_eq!(after.journal_rows, 0, "the journal is folded in");
    assert_eq!(after.memory.customers, 0, "every group left memory");
    assert_eq!(after.memory.identities, 0);
    assert_eq!(after.memory.conversations, 0);
    assert_eq!(after.groups_in_memory, 0);
    // Loaded back for a lookup: the customer's own group only.
    match store
        .thread(&config, &api_message("ev-back", "customer-1", 1_000))
        .await
        .unwrap()
    {
        Outcome::Threaded { sequences, .. } => assert_eq!(sequences.0, 22),
        Outcome::Duplicate => panic!("a new event is not a duplicate"),
    }
    let back = store.stats().await.unwrap();
    assert_eq!((back.memory.customers, back.groups_in_memory), (1, 1));
    // The store that missed the snapshot reloads, and goes on where the
    // other left off.
    match other
        .thread(&config, &api_message("ev-new", "customer-0", 1_000))
        .await
        .unwrap()
    {
        Outcome::Threaded { sequences, .. } => assert_eq!(sequences.0, 22),
        Outcome::Duplicate => panic!("a new event is not a duplicate"),
    }
    store.close().await;
    other.close().await;
    let store = files.open(&path).await;
    for outcome in store.thread_batch(&config, &events[..50]).await.unwrap() {
        assert_eq!(outcome.unwrap(), Outcome::Duplicate);
    }
    match store
        .thread(&config, &api_message("ev-newer", "customer-0", 1_001))
        .await
        .unwrap()
    {
        Outcome::Threaded { sequences, .. } => assert_eq!(sequences.0, 23),
        Outcome::Duplicate => panic!("a new event is not a duplicate"),
    }
}

/// An email customer who replies forty times, with a snapshot after each
/// reply and nothing kept in memory: each snapshot appends the reply as a
/// delta row instead of rewriting the customer's history, the deltas are
/// folded into a new base row once they outgrow it, and every reply is
/// still found by its In-Reply-To, whether its Message-ID is in the base
/// row or a delta, before and after reopening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_group_grows_by_deltas_and_is_folded() {
    use omni_proto::v1::{ChannelKind, HandleKind, IdentityHandle, ThreadingHints};
    use omni_threading::{Outcome, ThreadingConfig, ThreadingStore as _};
    use sqlx::Connection as _;

    let email = |n: u32| {
        let sender = IdentityHandle {
            kind: HandleKind::Email as i32,
            value: "ana@example.com".into(),
            ..Default::default()
        };
        let mut event = contract::message(
            &format!("ev-{n}"),
            "mail",
            ChannelKind::Email,
            sender,
            i64::from(n),
        );
        event.threading = Some(ThreadingHints {
            message_id: format!("m{n}@mail.example"),
            in_reply_to: (n > 0)
                .then(|| format!("m{}@mail.example", n - 1))
                .into_iter()
                .collect(),
            // A subject of its own each time: only the Message-ID can
            // thread the reply.
            normalized_subject: format!("subject {n}"),
            ..Default::default()
        });
        omni_threading::InboundEvent::new(event)
    };
    let files = Files::with(snapshot_always());
    let path = files.fresh_path();
    let store = files.open(&path).await;
    let config = ThreadingConfig::default();
    let mut file = sqlx::SqliteConnection::connect(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    let mut first = None;
    let mut most_deltas = 0;
    let mut folds = 0;
    let mut previous = 0;
    for n in 0..40 {
        let Outcome::Threaded {
            conversation_id, ..
        } = store.thread(&config, &email(n)).await.unwrap()
        else {
            panic!("a new event is not a duplicate");
        };
        assert_eq!(
            &conversation_id,
            first.get_or_insert_with(|| conversation_id.clone()),
            "reply {n} threads by its In-Reply-To"
        );
        let (groups, deltas): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM state_groups), \
                    (SELECT COUNT(*) FROM state_group_deltas)",
        )
        .fetch_one(&mut file)
        .await
        .unwrap();
        assert_eq!(groups, 1, "one customer, one base row");
        if deltas < previous {
            folds += 1;
        }
        most_deltas = most_deltas.max(deltas);
        previous = deltas;
    }
    assert!(most_deltas >= 2, "replies were appended ({most_deltas})");
    assert!(most_deltas <= 16, "at most 16 deltas ({most_deltas})");
    assert!(folds >= 1, "the deltas were folded into the base row");
    file.close().await.unwrap();
    store.close().await;
    let store = files.open(&path).await;
    for n in [0, 39] {
        assert_eq!(
            store.thread(&config, &email(n)).await.unwrap(),
            Outcome::Duplicate
        );
    }
    match store.thread(&config, &email(40)).await.unwrap() {
        Outcome::Threaded {
            conversation_id,
            sequences,
            ..
        } => {
            assert_eq!(Some(conversation_id), first);
            assert_eq!(sequences.0, 42, "the sequence goes on");
        }
        Outcome::Duplicate => panic!("a new event is not a duplicate"),
    }
}

/// The rules' tags and priority, as the daemon runs the store and with a
/// snapshot after every write (every customer group then read from disk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_triage_conversations() {
    for options in [SqliteOptions::default(), snapshot_always()] {
        let files = Files::with(options);
        contract::rules_triage_conversations(|| files.fresh()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triage_survives_reopening() {
    for options in [SqliteOptions::default(), snapshot_always()] {
        let files = Files::with(options);
        let path = files.fresh_path();
        contract::triage_survives_reopening(|| files.open(&path)).await;
    }
}

/// Acknowledgements and auto-replies, as the daemon runs the store and
/// with a snapshot (and a journal rewritten as a dump) after every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automated_replies_are_sent_once() {
    for options in [SqliteOptions::default(), snapshot_always()] {
        let files = Files::with(options);
        contract::automated_replies_are_sent_once(|| files.fresh()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automated_reply_limits_survive_reopening() {
    for options in [SqliteOptions::default(), snapshot_always()] {
        let files = Files::with(options);
        let path = files.fresh_path();
        contract::automated_reply_limits_survive_reopening(|| files.open(&path)).await;
    }
}

/// SLA timers, as the daemon runs the store and with a snapshot (and a
/// journal rewritten as a dump) after every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sla_timers_escalate_breach_and_stop() {
    for options in [SqliteOptions::default(), snapshot_always()] {
        let files = Files::with(options);
        contract::sla_timers_escalate_breach_and_stop(|| files.fresh()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sla_timers_survive_reopening() {
    for options in [SqliteOptions::default(), snapshot_always()] {
        let files = Files::with(options);
        let path = files.fresh_path();
        contract::sla_timers_survive_reopening(|| files.open(&path)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sla_timers_of_a_customer_created_beside_a_merge_survive_reopening() {
    for options in [SqliteOptions::default(), snapshot_always()] {
        let files = Files::with(options);
        let path = files.fresh_path();
        contract::sla_timers_of_a_customer_created_beside_a_merge_survive_reopening(|| {
            files.open(&path)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_set_by_command_reach_the_rules() {
    for options in [SqliteOptions::default(), snapshot_always()] {
        let files = Files::with(options);
        let path = files.fresh_path();
        contract::segments_set_by_command_reach_the_rules(|| files.open(&path)).await;
    }
}

/// Timeline retention, with a snapshot after every write so each row is
/// indexed on disk (and may go) as soon as it is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_retention_removes_only_old_published_rows() {
    let files = Files::with(snapshot_always());
    contract::timeline_retention_removes_only_old_published_rows(files.fresh().await).await;
}

/// Rows after the last snapshot are indexed in memory only, so retention
/// leaves them until a snapshot has indexed them on disk; rows an older
/// version wrote (no time of their own) count from the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_retention_waits_for_the_snapshot_and_counts_old_rows_from_the_upgrade() {
    use omni_threading::{ThreadingConfig, ThreadingStore as _};

    let files = Files::new();
    let path = files.fresh_path();
    let store = files.open(&path).await;
    let config = ThreadingConfig::default();
    let events: Vec<_> = (0..10)
        .map(|n| api_message(&format!("ev-{n}"), &format!("customer-{}", n % 3), n))
        .collect();
    store.thread_batch(&config, &events).await.unwrap();
    let rows = contract::drain(&store).await;
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    store.mark_published(&ids).await.unwrap();
    let far_future = i64::MAX;
    assert_eq!(
        store.prune_timeline(far_future, 4).await.unwrap(),
        0,
        "not indexed on disk yet"
    );
    store.snapshot().await.unwrap();

    // As an older version wrote them: no time, and an upgrade an hour ago.
    let pool = raw_pool(&path).await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let upgraded = now_ms - 3_600_000;
    sqlx::query("UPDATE timeline SET recorded_ms = NULL")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE timeline_upgrade SET upgraded_ms = $1")
        .bind(upgraded)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(store.prune_timeline(upgraded, 4).await.unwrap(), 0);
    assert_eq!(
        store.prune_timeline(upgraded + 1, 4).await.unwrap(),
        rows.len() as u64
    );
    let (left, indexed): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM timeline), (SELECT COUNT(*) FROM timeline_by_customer)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((left, indexed), (0, 0), "rows and their index rows went");
    pool.close().await;

    // The store goes on, and so does each customer's order.
    let next = api_message("ev-next", "customer-0", 100);
    match store.thread(&config, &next).await.unwrap() {
        omni_threading::Outcome::Threaded { sequences, .. } => assert_eq!(sequences.0, 6),
        omni_threading::Outcome::Duplicate => panic!("a new event is not a duplicate"),
    }
    store.close().await;
    let store = files.open(&path).await;
    let customer = match store
        .thread(&config, &api_message("ev-last", "customer-0", 101))
        .await
    {
        Ok(omni_threading::Outcome::Threaded {
            customer_id,
            sequences,
            ..
        }) => {
            assert_eq!(sequences.0, 7);
            customer_id
        }
        other => panic!("threaded: {other:?}"),
    };
    let page = store.timeline(&customer, None, 10).await.unwrap();
    let sequences: Vec<u64> = page.entries.iter().map(|r| r.event.sequence).collect();
    assert_eq!(sequences, [6, 7]);
}

/// A file whose state an earlier version kept in its journal (no customer
/// groups yet) opens with that state, and its first snapshot writes the
/// groups: after it, with nothing left in memory, the customers carry on
/// where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_of_an_earlier_version_becomes_groups() {
    use omni_threading::{Outcome, ThreadingConfig, ThreadingStore as _};

    let (files, path, store, events) = four_customers_without_a_cache().await;
    let config = ThreadingConfig::default();
    store.close().await;
    let pool = raw_pool(&path).await;
    let groups: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM state_groups")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(groups, 0, "no snapshot ran yet");
    sqlx::query("UPDATE state_snapshot SET grouped = 0")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let store = files.open(&path).await;
    assert_eq!(store.stats().await.unwrap().memory.customers, 4);
    store.snapshot().await.unwrap();
    let after = store.stats().await.unwrap();
    assert_eq!((after.memory.customers, after.journal_rows), (0, 0));
    for outcome in store.thread_batch(&config, &events[..8]).await.unwrap() {
        assert_eq!(outcome.unwrap(), Outcome::Duplicate);
    }
    match store
        .thread(&config, &api_message("ev-new", "customer-3", 100))
        .await
        .unwrap()
    {
        // Ten messages and the conversation's opening before it.
        Outcome::Threaded { sequences, .. } => assert_eq!(sequences.0, 12),
        Outcome::Duplicate => panic!("a new event is not a duplicate"),
    }
}

/// A file whose group index an earlier version wrote as text
/// (`state_keys`) is converted when the store opens it, also when an
/// earlier conversion was stopped midway (some keys moved, the rest not):
/// every key still leads to its group, rows of groups merged away are
/// left behind, and the old table goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_index_of_an_earlier_version_is_converted() {
    use omni_threading::{HandleKey, Outcome, ThreadingConfig, ThreadingStore as _};

    let (files, path, store, _) = four_customers_without_a_cache().await;
    let config = ThreadingConfig::default();
    store.snapshot().await.unwrap();
    let handle = |n: usize| HandleKey {
        kind: "external".into(),
        scope: "api".into(),
        value: format!("customer-{n}"),
    };
    let mut owners = Vec::new();
    for n in 0..4 {
        let owner = store.identity(&handle(n)).await.unwrap().unwrap();
        owners.push(owner.customer_id.to_string());
    }
    store.close().await;

    // Customers 0 and 1 as a stopped conversion left them (moved); 2 and
    // 3 as the earlier version kept them: their id and handle as text,
    // beside a row of a group since merged away.
    let pool = raw_pool(&path).await;
    sqlx::query(
        "DELETE FROM group_keys WHERE grp IN \
         (SELECT rowid FROM state_groups WHERE survivor IN ($1, $2))",
    )
    .bind(&owners[2])
    .bind(&owners[3])
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "CREATE TABLE state_keys (key TEXT NOT NULL, survivor TEXT NOT NULL, \
         PRIMARY KEY (key, survivor)) WITHOUT ROWID",
    )
    .execute(&pool)
    .await
    .unwrap();
    for (n, owner) in owners.iter().enumerate().skip(2) {
        for key in [
            format!("u\u{1f}{owner}"),
            format!("h\u{1f}external\u{1f}api\u{1f}customer-{n}"),
        ] {
            sqlx::query("INSERT INTO state_keys (key, survivor) VALUES ($1, $2)")
                .bind(key)
                .bind(owner)
                .execute(&pool)
                .await
                .unwrap();
        }
    }
    sqlx::query("INSERT INTO state_keys (key, survivor) VALUES ('u\u{1f}gone', 'gone')")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let store = files.open(&path).await;
    let pool = raw_pool(&path).await;
    let old: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE name = 'state_keys'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(old, 0, "the old table is dropped");
    let moved: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM group_keys WHERE grp IN \
         (SELECT rowid FROM state_groups WHERE survivor IN ($1, $2))",
    )
    .bind(&owners[2])
    .bind(&owners[3])
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        moved, 4,
        "two keys of each group left, none of the gone one"
    );
    pool.close().await;
    // Nothing is in memory: each customer's handle is found through the
    // index, so the new message joins its existing timeline.
    assert_eq!(store.stats().await.unwrap().memory.customers, 0);
    for (n, expected) in owners.iter().enumerate() {
        let event = api_message(&format!("ev-new-{n}"), &format!("customer-{n}"), 100);
        match store.thread(&config, &event).await.unwrap() {
            // Ten messages and the conversation's opening before it.
            Outcome::Threaded { sequences, .. } => assert_eq!(sequences.0, 12, "customer {n}"),
            Outcome::Duplicate => panic!("a new event is not a duplicate"),
        }
        let owner = store.identity(&handle(n)).await.unwrap().unwrap();
        assert_eq!(&owner.customer_id.to_string(), expected);
    }
}

/// A group written whole loses every delta row it had on disk, also those
/// another process appended after this one loaded it: loading the group
/// applies its deltas after its base, so an older delta left behind would
/// take its rows back to older values (a customer's next sequence among
/// them, and so two timeline entries with one sequence).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_written_whole_drops_deltas_another_process_appended() {
    use omni_proto::v1::{HandleKind, IdentityHandle};
    use omni_threading::{CustomerId, HandleKey, Outcome, ThreadingConfig, ThreadingStore as _};

    let files = Files::new();
    let path = files.fresh_path();
    let store = files.open(&path).await;
    let config = ThreadingConfig::default();
    // The survivor of the merge below is the customer with the smaller id.
    let id = |name: &str| {
        CustomerId::for_handle(&HandleKey {
            kind: "external".into(),
            scope: "api".into(),
            value: name.into(),
        })
    };
    let mut names = ["customer-x", "customer-z"];
    names.sort_by_key(|name| id(name));
    let [survivor, merged] = names;
    for (n, name) in names.iter().enumerate() {
        store
            .thread(&config, &api_message(&format!("ev-{n}"), name, n as i64))
            .await
            .unwrap();
    }
    store.snapshot().await.unwrap();
    let sequence = |outcome: Outcome| match outcome {
        Outcome::Threaded { sequences, .. } => sequences.0,
        Outcome::Duplicate => panic!("a new event is not a duplicate"),
    };
    let second = api_message("ev-2", survivor, 10);
    assert_eq!(sequence(store.thread(&config, &second).await.unwrap()), 3);

    // Another process appends a delta row to the survivor's group: its
    // rows as the last snapshot left them.
    let pool = raw_pool(&path).await;
    sqlx::query(
        "INSERT INTO state_group_deltas (survivor, writes) \
         SELECT survivor, writes FROM state_groups WHERE survivor = $1",
    )
    .bind(id(survivor).as_str())
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    // A merge: the survivor's group is written whole at the next snapshot.
    let mut link = api_message("ev-3", survivor, 20);
    link.claims = vec![IdentityHandle {
        kind: HandleKind::External as i32,
        scope: "api".into(),
        value: merged.into(),
        verified: true,
        ..Default::default()
    }];
    store.thread(&config, &link).await.unwrap();
    store.snapshot().await.unwrap();
    store.close().await;

    let store = files.open(&path).await;
    let next = sequence(
        store
            .thread(&config, &api_message("ev-4", survivor, 30))
            .await
            .unwrap(),
    );
    let rows = store.timeline(&id(survivor), None, 100).await.unwrap();
    // Sequences count per customer id (the merged one's rows keep theirs).
    let mut sequences: Vec<(String, u64)> = rows
        .entries
        .iter()
        .map(|r| (r.event.customer_id.clone(), r.event.sequence))
        .collect();
    sequences.sort_unstable();
    let len = sequences.len();
    sequences.dedup();
    assert_eq!(sequences.len(), len, "no sequence twice: {sequences:?}");
    let own = sequences
        .iter()
        .filter(|(customer, _)| *customer == id(survivor).as_str())
        .map(|&(_, sequence)| sequence)
        .max();
    assert_eq!(Some(next), own);
}
