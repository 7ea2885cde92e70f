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
