//! The store contract against a real PostgreSQL server.
//!
//! The server is `$OMNID_TEST_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/test` (`scripts/lib.sh`'s
//! `ensure_postgres` provides it). Each test works in schemas of its own
//! with random names and drops them afterwards. When no server answers the
//! tests fail, saying so: a silent pass would hide the production backend
//! going untested.

mod support;

use std::future::Future;
use std::str::FromStr as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use omni_threading::{PostgresStore, contract};
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection as _, PgConnection};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn url() -> String {
    std::env::var("OMNID_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// Schemas made for one test, dropped by [`Schemas::drop_all`].
struct Schemas {
    options: PgConnectOptions,
    made: Mutex<Vec<String>>,
}

impl Schemas {
    async fn new() -> Schemas {
        let url = url();
        let options = PgConnectOptions::from_str(&url).expect("OMNID_TEST_POSTGRES_URL parses");
        if let Err(e) = PgConnection::connect_with(&options).await {
            panic!(
                "PostgreSQL is not reachable at {url} ({e}); start one (scripts/lib.sh \
                 ensure_postgres) or set OMNID_TEST_POSTGRES_URL"
            );
        }
        Schemas {
            options,
            made: Mutex::new(Vec::new()),
        }
    }

    async fn admin(&self, sql: String) {
        let mut conn = PgConnection::connect_with(&self.options)
            .await
            .expect("connect");
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .expect("admin statement");
        conn.close().await.ok();
    }

    /// A new empty schema's name.
    async fn create(&self) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "omni_threading_test_{}_{nanos}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.admin(format!("CREATE SCHEMA {name}")).await;
        self.made.lock().unwrap().push(name.clone());
        name
    }

    async fn store(&self, schema: &str) -> PostgresStore {
        let options = self.options.clone().options([("search_path", schema)]);
        PostgresStore::connect(options, 4)
            .await
            .expect("connect store")
    }

    async fn fresh(&self) -> PostgresStore {
        let schema = self.create().await;
        self.store(&schema).await
    }

    async fn drop_all(&self) {
        let made = std::mem::take(&mut *self.made.lock().unwrap());
        for schema in made {
            self.admin(format!("DROP SCHEMA {schema} CASCADE")).await;
        }
    }
}

/// Runs a case, then drops its schemas whether it passed or not.
async fn run<F, Fut>(case: F)
where
    F: FnOnce(std::sync::Arc<Schemas>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let schemas = std::sync::Arc::new(Schemas::new().await);
    let result = tokio::spawn(case(schemas.clone())).await;
    schemas.drop_all().await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

macro_rules! single_store_cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            run(|s| async move { contract::$case(s.fresh().await).await }).await;
        }
    )*};
}

support::with_single_store_cases!(single_store_cases! {});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_are_order_independent() {
    run(|s| async move { contract::merges_are_order_independent(|| s.fresh()).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_workers_keep_sequence_gapless() {
    run(|s| async move {
        let schema = s.create().await;
        // Two pools: two workers with their own connections.
        contract::concurrent_workers_keep_sequence_gapless(|| s.store(&schema)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_equal_one_at_a_time() {
    run(|s| async move { contract::batches_equal_one_at_a_time(|| s.fresh()).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_reopening() {
    run(|s| async move {
        let schema = s.create().await;
        contract::state_survives_reopening(|| s.store(&schema)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_triage_conversations() {
    run(|s| async move { contract::rules_triage_conversations(|| s.fresh()).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triage_survives_reopening() {
    run(|s| async move {
        let schema = s.create().await;
        contract::triage_survives_reopening(|| s.store(&schema)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automated_replies_are_sent_once() {
    run(|s| async move { contract::automated_replies_are_sent_once(|| s.fresh()).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automated_reply_limits_survive_reopening() {
    run(|s| async move {
        let schema = s.create().await;
        contract::automated_reply_limits_survive_reopening(|| s.store(&schema)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sla_timers_escalate_breach_and_stop() {
    run(|s| async move { contract::sla_timers_escalate_breach_and_stop(|| s.fresh()).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sla_timers_survive_reopening() {
    run(|s| async move {
        let schema = s.create().await;
        contract::sla_timers_survive_reopening(|| s.store(&schema)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sla_timers_of_a_customer_created_beside_a_merge_survive_reopening() {
    run(|s| async move {
        let schema = s.create().await;
        contract::sla_timers_of_a_customer_created_beside_a_merge_survive_reopening(|| {
            s.store(&schema)
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_set_by_command_reach_the_rules() {
    run(|s| async move {
        let schema = s.create().await;
        contract::segments_set_by_command_reach_the_rules(|| s.store(&schema)).await;
    })
    .await;
}

/// Not in the single-store list: the embedded store runs it with a
/// snapshot after every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_retention_removes_only_old_published_rows() {
    run(|s| async move {
        contract::timeline_retention_removes_only_old_published_rows(s.fresh().await).await;
    })
    .await;
}
