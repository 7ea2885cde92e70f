//! Threading throughput: realistic inbound events threaded into a fresh
//! [`SqliteStore`] and a fresh [`PostgresStore`], and the time to rebuild
//! the state from a replay of the inbound topic. See docs/benchmarks.md
//! ("Threading"); `scripts/bench-threading` installs what is missing and
//! runs this.
//!
//! ```sh
//! cargo bench -p omni-threading --bench threading -- [--events 100000]
//!     [--batch 256] [--single 2000] [--replay 1000000] [--pg-events 20000]
//!     [--pg-replay 100000] [--backend sqlite|postgres|both] [--dir DIR]
//!     [--keep true]
//! ```
//!
//! One JSON line per measurement on stdout, progress on stderr. Each
//! measurement starts from an empty store (a new SQLite file in `--dir` or
//! a temporary directory; a new PostgreSQL schema with a random name,
//! dropped afterwards) and feeds it the same deterministic event stream:
//!
//! - customers: one per eight events; one in five events goes to a "hot"
//!   1% of them, the rest spread evenly;
//! - 40% email (a third start a thread, the rest reply to the customer's
//!   previous message by In-Reply-To/References; unverified senders, as
//!   email is; the subject fallback applies), 25% SMS, 15% Telegram (one
//!   in ten shares its own phone contact: a verified cross-channel link,
//!   often a merge with the customer's SMS identity), 10% WhatsApp (which
//!   proves the E.164 number: SMS and WhatsApp meet), 7% web chat (three
//!   in ten type an email into the form: only a suggestion), 3% exact
//!   duplicates of one of the last 1,024 events (provider retries; some
//!   land in the same batch as their original);
//! - event time advances 2 s per event, so a customer's chats go idle
//!   (24 h) and reopen as a real history would;
//! - a 200-byte text body.
//!
//! `single` threads with one transaction per event ([`ThreadingStore::thread`],
//! what the worker did before batches); `batch` with
//! [`ThreadingStore::thread_batch`] and the worker's poll size; `replay`
//! is the batch path over a long stream (rebuilding the state from the
//! start of `omni.inbound.v1`). Only the store calls are timed; generating
//! the events is not.

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use omni_proto::Timestamp;
use omni_proto::v1::{
    ChannelKind, Content, ConversationEvent, Direction, EventKind, HandleKind, IdentityHandle,
    ThreadingHints,
};
use omni_threading::ThreadingStore;
use omni_threading::{
    InboundEvent, Outcome, PostgresStore, SqliteOptions, SqliteStore, ThreadingConfig,
};
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection as _, PgConnection};

/// The daemon's allocator (`omnid`'s main), so the figures are the daemon's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
usage: cargo bench -p omni-threading --bench threading -- [options]
  --events N       events per batch-throughput run, embedded (100000)
  --batch N        events per thread_batch call, as the worker polls (256)
  --single N       events for the one-transaction-per-event runs (2000)
  --replay N       events of the embedded replay rebuild, 0 to skip (1000000)
  --pg-events N    events per batch-throughput run, PostgreSQL (20000)
  --pg-replay N    events of the PostgreSQL replay rebuild, 0 to skip (100000)
  --backend B      sqlite, postgres or both (both)
  --dir DIR        where the SQLite files go (a temporary directory)
  --keep true      keep the SQLite files (with --dir) to inspect them
  --cache-mib N    customer state the embedded store keeps in memory, MiB
                   of JSON (16); a large value keeps all of it
environment: OMNID_TEST_POSTGRES_URL (postgres://postgres@127.0.0.1:5432/test)";

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Seconds since the epoch the stream starts at.
const T0: i64 = 1_700_000_000;

#[derive(Debug)]
struct Options {
    events: usize,
    batch: usize,
    single: usize,
    replay: usize,
    pg_events: usize,
    pg_replay: usize,
    sqlite: bool,
    postgres: bool,
    dir: Option<PathBuf>,
    keep: bool,
    /// The embedded store's cache of customer state (MiB of group JSON).
    cache_mib: u64,
}

impl Options {
    fn parse() -> Result<Options, String> {
        let mut o = Options {
            events: 100_000,
            batch: 256,
            single: 2_000,
            replay: 1_000_000,
            pg_events: 20_000,
            pg_replay: 100_000,
            sqlite: true,
            postgres: true,
            dir: None,
            keep: false,
            cache_mib: omni_threading::DEFAULT_CACHE_BYTES >> 20,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            // cargo bench passes --bench to harness=false targets.
            if arg == "--bench" {
                continue;
            }
            if arg == "--help" || arg == "-h" {
                return Err(String::new());
            }
            let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
            let number = || {
                value
                    .replace('_', "")
                    .parse::<usize>()
                    .map_err(|_| format!("{arg}: not a number: {value}"))
            };
            match arg.as_str() {
                "--events" => o.events = number()?,
                "--batch" => o.batch = number()?.max(1),
                "--single" => o.single = number()?,
                "--replay" => o.replay = number()?,
                "--pg-events" => o.pg_events = number()?,
                "--pg-replay" => o.pg_replay = number()?,
                "--dir" => o.dir = Some(PathBuf::from(value)),
                "--cache-mib" => o.cache_mib = number()? as u64,
                "--keep" => {
                    o.keep = value
                        .parse()
                        .map_err(|_| format!("--keep: true or false, not {value}"))?;
                }
                "--backend" => {
                    (o.sqlite, o.postgres) = match value.as_str() {
                        "sqlite" => (true, false),
                        "postgres" => (false, true),
                        "both" => (true, true),
                        _ => {
                            return Err(format!(
                                "--backend: sqlite, postgres or both, not {value}"
                            ));
                        }
                    }
                }
                _ => return Err(format!("unknown option {arg}")),
            }
        }
        Ok(o)
    }
}

/// A small deterministic generator (xorshift64*): the same stream on
/// every run and machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn percent(&mut self) -> u64 {
        self.below(100)
    }
}

/// The deterministic inbound stream.
struct Stream {
    rng: Rng,
    customers: u64,
    n: u64,
    /// Per customer: the number of its latest email, for replies.
    last_email: Vec<Option<u64>>,
    /// The latest events, to repeat as provider retries.
    recent: Vec<InboundEvent>,
}

impl Stream {
    fn new(total: usize) -> Stream {
        let customers = (total as u64 / 8).max(100);
        Stream {
            rng: Rng(0x9e37_79b9_7f4a_7c15),
            customers,
            n: 0,
            last_email: vec![None; customers as usize],
            recent: Vec::with_capacity(1024),
        }
    }

    fn handle(kind: HandleKind, value: String, scope: &str, verified: bool) -> IdentityHandle {
        IdentityHandle {
            kind: kind as i32,
            value,
            scope: scope.to_owned(),
            display_name: String::new(),
            verified,
        }
    }

    fn phone(customer: u64) -> String {
        format!("+1415{}", 2_000_000 + customer % 7_000_000)
    }

    fn next_event(&mut self) -> InboundEvent {
        if !self.recent.is_empty() && self.rng.percent() < 3 {
            let i = self.rng.below(self.recent.len() as u64) as usize;
            return self.recent[i].clone();
        }
        let n = self.n;
        self.n += 1;
        let customer = if self.rng.percent() < 20 {
            self.rng.below(self.customers / 100 + 1)
        } else {
            self.rng.below(self.customers)
        };
        let at = T0 + 2 * n as i64;
        let roll = self.rng.percent();
        let mut claims = Vec::new();
        let mut hints = ThreadingHints::default();
        let (channel_id, kind, sender) = if roll < 40 {
            let c = customer as usize;
            let message_id = format!("m{n}@c{customer}.example.com");
            let subject = format!("Order {}", customer * 7 + (n % 3));
            if let Some(previous) = self.last_email[c].filter(|_| self.rng.percent() >= 33) {
                let parent = format!("m{previous}@c{customer}.example.com");
                hints.in_reply_to = vec![parent.clone()];
                hints.references = vec![parent];
            }
            hints.message_id = message_id;
            hints.normalized_subject = subject;
            self.last_email[c] = Some(n);
            let from = format!("customer{customer}@example.com");
            (
                "mail",
                ChannelKind::Email,
                Self::handle(HandleKind::Email, from, "", false),
            )
        } else if roll < 65 {
            hints.provider_chat_id = Self::phone(customer);
            (
                "sms",
                ChannelKind::Sms,
                Self::handle(HandleKind::Phone, Self::phone(customer), "", true),
            )
        } else if roll < 80 {
            if self.rng.percent() < 10 {
                claims.push(Self::handle(
                    HandleKind::Phone,
                    Self::phone(customer),
                    "",
                    true,
                ));
            }
            hints.provider_chat_id = format!("{}", 500_000_000 + customer);
            (
                "telegram",
                ChannelKind::Telegram,
                Self::handle(
                    HandleKind::TelegramUser,
                    format!("{}", 500_000_000 + customer),
                    "",
                    true,
                ),
            )
        } else if roll < 90 {
            let wa = Self::phone(customer).trim_start_matches('+').to_owned();
            hints.provider_chat_id = wa.clone();
            (
                "whatsapp",
                ChannelKind::Whatsapp,
                Self::handle(HandleKind::Whatsapp, wa, "", true),
            )
        } else {
            if self.rng.percent() < 30 {
                claims.push(Self::handle(
                    HandleKind::Email,
                    format!("customer{customer}@example.com"),
                    "",
                    false,
                ));
            }
            let visitor = format!("v-{customer}");
            hints.provider_chat_id = visitor.clone();
            (
                "web",
                ChannelKind::Chat,
                Self::handle(HandleKind::ChatVisitor, visitor, "web", true),
            )
        };
        let provider_message_id = format!("p{n}");
        let time = Some(Timestamp {
            seconds: at,
            nanos: 0,
        });
        let event = ConversationEvent {
            event_id: omni_model::event_id(channel_id, &provider_message_id).to_string(),
            channel_id: channel_id.to_owned(),
            channel_kind: kind as i32,
            direction: Direction::Inbound as i32,
            kind: EventKind::Message as i32,
            sender: Some(sender),
            provider_message_id,
            received_at: time,
            ingested_at: time,
            content: Some(Content {
                text: format!(
                    "{:0<200}",
                    format!("Hello, this is message {n} about my order; ")
                ),
                ..Default::default()
            }),
            threading: Some(hints),
            sender_identities: claims.clone(),
            ..Default::default()
        };
        let input = InboundEvent { event, claims };
        if self.recent.len() < 1024 {
            self.recent.push(input.clone());
        } else {
            let i = (n % 1024) as usize;
            self.recent[i] = input.clone();
        }
        input
    }

    fn take(&mut self, count: usize) -> Vec<InboundEvent> {
        (0..count).map(|_| self.next_event()).collect()
    }
}

/// What a run did.
#[derive(Debug, Default)]
struct Tally {
    threaded: u64,
    duplicates: u64,
    refused: u64,
    store_time: Duration,
    /// CPU time of the whole process over the run (all threads, user and
    /// system, event generation included): on a busy machine it moves
    /// less than the wall-clock rate.
    cpu: Duration,
    /// Bytes the process handed to `write`/`pwrite` over the run (WAL
    /// frames and checkpoints, for SQLite).
    written: u64,
}

/// The process's CPU time and bytes written so far (Linux `/proc`; zero
/// elsewhere).
fn usage() -> (Duration, u64) {
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // Fields after the parenthesized command name; utime and
            // stime are the 14th and 15th fields, in clock ticks (100/s).
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split(' ').collect();
            let ticks =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some(Duration::from_millis(ticks * 10))
        })
        .unwrap_or_default();
    let written = std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("wchar: "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);
    (cpu, written)
}

/// The process's resident anonymous memory now (`RssAnon`: heap, page
/// caches; not the database file's memory-mapped pages), 0 if unknown.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let kb = status.lines().find_map(|l| l.strip_prefix("RssAnon:"))?;
            kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

impl Tally {
    fn add(&mut self, outcome: &Result<Outcome, omni_threading::ThreadingError>) {
        match outcome {
            Ok(Outcome::Threaded { .. }) => self.threaded += 1,
            Ok(Outcome::Duplicate) => self.duplicates += 1,
            Err(_) => self.refused += 1,
        }
    }
}

/// Threads `total` events of a fresh stream into `store`: with
/// `thread_batch` in batches of `batch`, or one `thread` per event when
/// `batch` is 0.
async fn run<S: ThreadingStore>(store: &S, total: usize, batch: usize) -> Tally {
    let config = ThreadingConfig::default();
    let mut stream = Stream::new(total);
    let mut tally = Tally::default();
    let (cpu, written) = usage();
    let mut done = 0;
    let mut report = Instant::now();
    while done < total {
        let size = batch.max(1).min(total - done);
        let inputs = stream.take(size);
        let started = Instant::now();
        if batch == 0 {
            for input in &inputs {
                let outcome = match store.thread(&config, input).await {
                    Ok(outcome) => Ok(outcome),
                    Err(omni_threading::StoreError::Threading { source, .. }) => Err(source),
                    Err(e) => panic!("threading failed: {e}"),
                };
                tally.add(&outcome);
            }
        } else {
            let outcomes = store
                .thread_batch(&config, &inputs)
                .await
                .expect("threading batch failed");
            for outcome in &outcomes {
                tally.add(outcome);
            }
        }
        tally.store_time += started.elapsed();
        done += size;
        if report.elapsed() > Duration::from_secs(10) {
            report = Instant::now();
            eprintln!(
                "  {done}/{total} events, {:.0}/s so far",
                done as f64 / tally.store_time.as_secs_f64()
            );
        }
    }
    let (cpu_after, written_after) = usage();
    tally.cpu = cpu_after.saturating_sub(cpu);
    tally.written = written_after.saturating_sub(written);
    tally
}

fn print(backend: &str, mode: &str, events: usize, batch: usize, tally: &Tally, extra: &str) {
    let secs = tally.store_time.as_secs_f64();
    println!(
        "{{\"measurement\":\"threading\",\"backend\":\"{backend}\",\"mode\":\"{mode}\",\
         \"events\":{events},\"batch\":{batch},\"threaded\":{},\"duplicates\":{},\
         \"refused\":{},\"secs\":{secs:.3},\"events_per_sec\":{:.0},\"cpu_secs\":{:.2},\
         \"written_bytes\":{}{extra}}}",
        tally.threaded,
        tally.duplicates,
        tally.refused,
        events as f64 / secs,
        tally.cpu.as_secs_f64(),
        tally.written,
    );
}

async fn sqlite(options: &Options, dir: &std::path::Path) {
    let runs = [
        ("single", options.single, 0),
        ("batch", options.events, options.batch),
        ("replay", options.replay, options.batch),
    ];
    for (i, (mode, events, batch)) in runs.into_iter().enumerate() {
        if events == 0 {
            continue;
        }
        let path = dir.join(format!("threading-{i}-{mode}.sqlite3"));
        let store_options = SqliteOptions {
            cache_bytes: options.cache_mib << 20,
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open_with(&path, store_options.clone())
            .await
            .expect("open sqlite store");
        eprintln!(
            "sqlite {mode}: {events} events, batch {batch}, cache {} MiB",
            options.cache_mib
        );
        let tally = run(&store, events, batch).await;
        // The embedded store holds its state in memory: what the process
        // holds with it, and how long opening the file (loading the state
        // back from its journal) takes.
        let rss = resident_bytes();
        let stats = store.stats().await.expect("store figures");
        store.close().await;
        drop(store);
        let started = Instant::now();
        let reopened = SqliteStore::open_with(&path, store_options)
            .await
            .expect("reopen sqlite store");
        let reopen = started.elapsed().as_secs_f64();
        reopened.close().await;
        drop(reopened);
        let size = ["", "-wal"]
            .iter()
            .filter_map(|suffix| {
                std::fs::metadata(format!("{}{suffix}", path.display()))
                    .ok()
                    .map(|m| m.len())
            })
            .sum::<u64>();
        print(
            "sqlite",
            mode,
            events,
            batch,
            &tally,
            &format!(
                ",\"db_bytes\":{size},\"anon_rss_bytes\":{rss},\"reopen_secs\":{reopen:.3},\
                 \"cache_mib\":{},\"customers_in_memory\":{},\"groups_in_memory\":{},\
                 \"group_bytes_in_memory\":{}",
                options.cache_mib,
                stats.memory.customers,
                stats.groups_in_memory,
                stats.group_bytes_in_memory,
            ),
        );
        if !options.keep {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
        }
    }
}

async fn admin(options: &PgConnectOptions, sql: String) {
    let mut conn = PgConnection::connect_with(options)
        .await
        .expect("connect to postgres");
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .expect("admin statement");
    conn.close().await.ok();
}

async fn postgres(options: &Options) {
    let url = std::env::var("OMNID_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_PG_URL.into());
    let admin_options = PgConnectOptions::from_str(&url).expect("OMNID_TEST_POSTGRES_URL parses");
    if let Err(e) = PgConnection::connect_with(&admin_options).await {
        panic!("PostgreSQL is not reachable at {url} ({e}); set OMNID_TEST_POSTGRES_URL");
    }
    let runs = [
        ("single", options.single, 0),
        ("batch", options.pg_events, options.batch),
        ("replay", options.pg_replay, options.batch),
    ];
    for (mode, events, batch) in runs {
        if events == 0 {
            continue;
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let schema = format!("omni_threading_bench_{}_{nanos}", std::process::id());
        admin(&admin_options, format!("CREATE SCHEMA {schema}")).await;
        let store = PostgresStore::connect(
            admin_options
                .clone()
                .options([("search_path", schema.as_str())]),
            4,
        )
        .await
        .expect("connect store");
        eprintln!("postgres {mode}: {events} events, batch {batch}");
        // Dropped even if the run panics.
        let result = tokio::spawn({
            let store = store.clone();
            async move { run(&store, events, batch).await }
        })
        .await;
        store.close().await;
        admin(&admin_options, format!("DROP SCHEMA {schema} CASCADE")).await;
        match result {
            Ok(tally) => print("postgres", mode, events, batch, &tally, ""),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

fn main() -> ExitCode {
    let options = match Options::parse() {
        Ok(options) => options,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            eprintln!("{USAGE}");
            return if message.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        if options.sqlite {
            let temp = tempfile::tempdir().expect("temporary directory");
            let dir = options
                .dir
                .clone()
                .unwrap_or_else(|| temp.path().to_owned());
            std::fs::create_dir_all(&dir).expect("create --dir");
            sqlite(&options, &dir).await;
        }
        if options.postgres {
            postgres(&options).await;
        }
    });
    ExitCode::SUCCESS
}
