//! The store contract against SQLite files in a temporary directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use omni_threading::{SqliteStore, contract};
use tempfile::TempDir;

/// Fresh database files in one temporary directory.
struct Files {
    dir: TempDir,
    n: AtomicUsize,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
            n: AtomicUsize::new(0),
        }
    }

    fn fresh_path(&self) -> PathBuf {
        let n = self.n.fetch_add(1, Ordering::Relaxed);
        self.dir.path().join(format!("data/threading-{n}.sqlite3"))
    }

    async fn open(&self, path: &Path) -> SqliteStore {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        SqliteStore::open(path).await.expect("open sqlite store")
    }

    async fn fresh(&self) -> SqliteStore {
        self.open(&self.fresh_path()).await
    }
}

macro_rules! single_store_cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let files = Files::new();
            contract::$case(files.fresh().await).await;
        }
    )*};
}

single_store_cases!(
    email_sms_telegram_become_one_customer,
    unverified_claim_is_only_a_suggestion,
    duplicates_are_dropped,
    outbox_publishes_in_order_exactly_once,
    commands_close_and_reopen_conversations,
    commands_link_merge_split_unlink,
    lease_has_one_holder,
    attachment_updates_fill_in_their_message,
    activities_never_open_conversations,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_are_order_independent() {
    let files = Files::new();
    contract::merges_are_order_independent(|| files.fresh()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_workers_keep_sequence_gapless() {
    let files = Files::new();
    let path = files.fresh_path();
    // Two pools on one file: two workers with their own connections.
    contract::concurrent_workers_keep_sequence_gapless(|| files.open(&path)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_equal_one_at_a_time() {
    let files = Files::new();
    contract::batches_equal_one_at_a_time(|| files.fresh()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_reopening() {
    let files = Files::new();
    let path = files.fresh_path();
    contract::state_survives_reopening(|| files.open(&path)).await;
}

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
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    for sql in [
        "INSERT INTO customers (id, merged_into, next_sequence) VALUES ('c-a', NULL, 3), ('c-b', 'c-a', 2)",
        "INSERT INTO identities VALUES ('phone', '', '+14155550134', 'c-a', TRUE)",
        "INSERT INTO processed_events VALUES ('old-1', 'c-a', 'conv-1')",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
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
