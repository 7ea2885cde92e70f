//! Which embedded engine should hold the threading store's state at scale?
//!
//! The embedded store's cost per event grows with its file because its
//! lookups and its writes land at random keys: event ids by hash, the
//! customer-group index by hash, the groups by customer. This program
//! replays that access pattern, without the threading logic around it,
//! on three engines with the same memory budget for their caches, and
//! prints the rate, the CPU per event, the bytes written, the disk used
//! and the resident memory as the data grows, then the time a reopen
//! takes. It answers whether a change of engine alone could hold the
//! store's throughput over millions of events, before anyone ports the
//! store to one.
//!
//! Per event, as the store does per event of a batch:
//! - reads at the start of its batch: the event id (a miss unless the
//!   event is a provider's retry), the customer's two handle keys in the
//!   group index, and the customer's group row when the customer is
//!   known;
//! - writes in the batch's one durable transaction: the event id, the
//!   customer's group row (rewritten: about the size of a compressed
//!   group with a few deltas), the two handle keys of a new customer, and
//!   the timeline row (appended at the next sequence number).
//!
//! The stream is deterministic: one new customer per eight events, a
//! fifth of the events for a hot 1% of the customers, 3% retries of a
//! recent event. Values are incompressible, as the store's rows are
//! already compressed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result};
use clap::{Parser, ValueEnum};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Compares embedded engines on the threading store's access pattern")]
struct Args {
    /// Engine to run.
    #[arg(long, value_enum)]
    engine: Engine,
    /// Events to replay.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Events per durable transaction (the worker's poll size).
    #[arg(long, default_value_t = 1024)]
    batch: u64,
    /// Print a line every this many events.
    #[arg(long, default_value_t = 250_000)]
    report: u64,
    /// Cache each engine may use, MiB (the embedded store's page cache is 16).
    #[arg(long, default_value_t = 16)]
    cache_mib: u64,
    /// fjall's memtables, MiB (its default is 64).
    #[arg(long, default_value_t = 16)]
    write_buffer_mib: u64,
    /// fjall's journals before it flushes memtables, MiB (its default is 512).
    #[arg(long, default_value_t = 64)]
    journal_mib: u64,
    /// Directory for the files (a new temporary one by default, removed after).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Group row bytes.
    #[arg(long, default_value_t = 330)]
    group_bytes: usize,
    /// Timeline row bytes.
    #[arg(long, default_value_t = 600)]
    timeline_bytes: usize,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Engine {
    /// SQLite as the embedded store uses it: WAL, synchronous=FULL.
    Sqlite,
    /// fjall: an LSM tree (journal, memtables, sorted runs, Bloom filters).
    Fjall,
    /// redb: a copy-on-write B-tree.
    Redb,
}

/// One batch's reads and writes.
#[derive(Default)]
struct Batch {
    read_ids: Vec<u64>,
    read_keys: Vec<u64>,
    read_groups: Vec<u64>,
    ids: Vec<u64>,
    keys: Vec<(u64, u64)>,
    /// (customer, offset of the value in the pool)
    groups: Vec<(u64, usize)>,
    /// (sequence, offset of the value in the pool)
    timeline: Vec<(u64, usize)>,
}

/// The engine-specific half: a batch's reads, then its writes in one
/// durable commit.
trait Store {
    /// Runs the batch's reads; returns how many found a row.
    fn read(&mut self, batch: &Batch) -> Result<u64>;
    /// Writes the batch in one transaction, durable when it returns.
    fn write(&mut self, batch: &Batch, pool: &Pool) -> Result<()>;
}

/// Incompressible bytes the values are sliced from.
struct Pool {
    bytes: Vec<u8>,
    group: usize,
    timeline: usize,
}

impl Pool {
    fn new(group: usize, timeline: usize) -> Pool {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let bytes = (0..(1 << 20) + group.max(timeline))
            .map(|_| rng.next() as u8)
            .collect();
        Pool {
            bytes,
            group,
            timeline,
        }
    }

    fn group(&self, at: usize) -> &[u8] {
        &self.bytes[at..at + self.group]
    }

    fn timeline(&self, at: usize) -> &[u8] {
        &self.bytes[at..at + self.timeline]
    }
}

/// splitmix64: deterministic, fast, good enough for a workload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A stable 64-bit mix of a number: the stored hash of an id or a key.
fn hash(x: u64, salt: u64) -> u64 {
    Rng(x ^ salt.rotate_left(17)).next()
}

/// The deterministic stream of events, as reads and writes.
struct Stream {
    rng: Rng,
    customers: u64,
    events: u64,
    sequence: u64,
}

impl Stream {
    fn fill(&mut self, batch: &mut Batch, events: u64, pool: &Pool) {
        *batch = Batch::default();
        let range = (pool.bytes.len() - pool.group.max(pool.timeline)) as u64;
        for _ in 0..events {
            self.events += 1;
            // A provider's retry of a recent event: found, nothing written.
            if self.events > 1000 && self.rng.below(100) < 3 {
                let recent = self.events - 1 - self.rng.below(1000);
                batch.read_ids.push(hash(recent, 1));
                continue;
            }
            let id = hash(self.events, 1);
            batch.read_ids.push(id);
            let new = self.customers == 0 || self.rng.below(8) == 0;
            let customer = if new {
                self.customers += 1;
                self.customers
            } else if self.rng.below(5) == 0 {
                1 + self.rng.below(self.customers.div_ceil(100))
            } else {
                1 + self.rng.below(self.customers)
            };
            let handles = [hash(customer, 2), hash(customer, 3)];
            batch.read_keys.extend(handles);
            if new {
                batch.keys.extend(handles.map(|h| (h, customer)));
            } else {
                batch.read_groups.push(customer);
            }
            batch.ids.push(id);
            batch
                .groups
                .push((customer, self.rng.below(range) as usize));
            self.sequence += 1;
            batch
                .timeline
                .push((self.sequence, self.rng.below(range) as usize));
        }
    }
}

struct Sqlite {
    conn: rusqlite::Connection,
}

impl Sqlite {
    fn open(dir: &Path, cache_mib: u64) -> Result<Sqlite> {
        let conn = rusqlite::Connection::open(dir.join("state.sqlite3"))?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
             PRAGMA cache_size = -{}; \
             CREATE TABLE IF NOT EXISTS ids (h INTEGER PRIMARY KEY, v BLOB NOT NULL); \
             CREATE TABLE IF NOT EXISTS keys (h INTEGER PRIMARY KEY, customer INTEGER NOT NULL); \
             CREATE TABLE IF NOT EXISTS groups (customer INTEGER PRIMARY KEY, v BLOB NOT NULL); \
             CREATE TABLE IF NOT EXISTS timeline (id INTEGER PRIMARY KEY, v BLOB NOT NULL);",
            cache_mib * 1024
        ))?;
        Ok(Sqlite { conn })
    }
}

/// SQLite's INTEGER keys are signed: the hash's bits as an i64.
fn signed(h: u64) -> i64 {
    h as i64
}

impl Store for Sqlite {
    fn read(&mut self, batch: &Batch) -> Result<u64> {
        let mut found = 0;
        let mut ids = self.conn.prepare("SELECT v FROM ids WHERE h = ?1")?;
        for &h in &batch.read_ids {
            found += u64::from(ids.exists([signed(h)])?);
        }
        let mut keys = self
            .conn
            .prepare("SELECT customer FROM keys WHERE h = ?1")?;
        for &h in &batch.read_keys {
            found += u64::from(keys.exists([signed(h)])?);
        }
        let mut groups = self
            .conn
            .prepare("SELECT v FROM groups WHERE customer = ?1")?;
        for &c in &batch.read_groups {
            let row: Option<Vec<u8>> = groups
                .query_row([signed(c)], |r| r.get(0))
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(e),
                })?;
            found += u64::from(row.is_some());
        }
        Ok(found)
    }

    fn write(&mut self, batch: &Batch, pool: &Pool) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut ids = tx.prepare("INSERT OR REPLACE INTO ids (h, v) VALUES (?1, ?2)")?;
            for &h in &batch.ids {
                ids.execute(rusqlite::params![signed(h), &h.to_le_bytes()[..]])?;
            }
            let mut keys =
                tx.prepare("INSERT OR REPLACE INTO keys (h, customer) VALUES (?1, ?2)")?;
            for &(h, c) in &batch.keys {
                keys.execute([signed(h), signed(c)])?;
            }
            let mut groups =
                tx.prepare("INSERT OR REPLACE INTO groups (customer, v) VALUES (?1, ?2)")?;
            for &(c, at) in &batch.groups {
                groups.execute(rusqlite::params![signed(c), pool.group(at)])?;
            }
            let mut timeline = tx.prepare("INSERT INTO timeline (id, v) VALUES (?1, ?2)")?;
            for &(id, at) in &batch.timeline {
                timeline.execute(rusqlite::params![signed(id), pool.timeline(at)])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

struct Fjall {
    keyspace: fjall::Keyspace,
    ids: fjall::PartitionHandle,
    keys: fjall::PartitionHandle,
    groups: fjall::PartitionHandle,
    timeline: fjall::PartitionHandle,
}

impl Fjall {
    fn open(dir: &Path, args: &Args) -> Result<Fjall> {
        let keyspace = fjall::Config::new(dir.join("fjall"))
            .cache_size(args.cache_mib << 20)
            .max_write_buffer_size(args.write_buffer_mib.max(1) << 20)
            .max_journaling_size(args.journal_mib.max(24) << 20)
            .open()?;
        let partition =
            |name| keyspace.open_partition(name, fjall::PartitionCreateOptions::default());
        Ok(Fjall {
            ids: partition("ids")?,
            keys: partition("keys")?,
            groups: partition("groups")?,
            timeline: partition("timeline")?,
            keyspace,
        })
    }
}

impl Store for Fjall {
    fn read(&mut self, batch: &Batch) -> Result<u64> {
        let mut found = 0;
        for &h in &batch.read_ids {
            found += u64::from(self.ids.get(h.to_be_bytes())?.is_some());
        }
        for &h in &batch.read_keys {
            found += u64::from(self.keys.get(h.to_be_bytes())?.is_some());
        }
        for &c in &batch.read_groups {
            found += u64::from(self.groups.get(c.to_be_bytes())?.is_some());
        }
        Ok(found)
    }

    fn write(&mut self, batch: &Batch, pool: &Pool) -> Result<()> {
        let mut b = self.keyspace.batch();
        for &h in &batch.ids {
            b.insert(&self.ids, h.to_be_bytes(), h.to_le_bytes());
        }
        for &(h, c) in &batch.keys {
            b.insert(&self.keys, h.to_be_bytes(), c.to_be_bytes());
        }
        for &(c, at) in &batch.groups {
            b.insert(&self.groups, c.to_be_bytes(), pool.group(at));
        }
        for &(id, at) in &batch.timeline {
            b.insert(&self.timeline, id.to_be_bytes(), pool.timeline(at));
        }
        b.commit()?;
        self.keyspace.persist(fjall::PersistMode::SyncAll)?;
        Ok(())
    }
}

const IDS: redb::TableDefinition<'static, u64, &[u8]> = redb::TableDefinition::new("ids");
const KEYS: redb::TableDefinition<'static, u64, u64> = redb::TableDefinition::new("keys");
const GROUPS: redb::TableDefinition<'static, u64, &[u8]> = redb::TableDefinition::new("groups");
const TIMELINE: redb::TableDefinition<'static, u64, &[u8]> = redb::TableDefinition::new("timeline");

struct Redb {
    db: redb::Database,
}

impl Redb {
    fn open(dir: &Path, cache_mib: u64) -> Result<Redb> {
        let db = redb::Builder::new()
            .set_cache_size(usize::try_from(cache_mib << 20)?)
            .create(dir.join("state.redb"))?;
        let tx = db.begin_write()?;
        tx.open_table(IDS)?;
        tx.open_table(KEYS)?;
        tx.open_table(GROUPS)?;
        tx.open_table(TIMELINE)?;
        tx.commit()?;
        Ok(Redb { db })
    }
}

impl Store for Redb {
    fn read(&mut self, batch: &Batch) -> Result<u64> {
        let tx = self.db.begin_read()?;
        let mut found = 0;
        let ids = tx.open_table(IDS)?;
        for &h in &batch.read_ids {
            found += u64::from(ids.get(h)?.is_some());
        }
        let keys = tx.open_table(KEYS)?;
        for &h in &batch.read_keys {
            found += u64::from(keys.get(h)?.is_some());
        }
        let groups = tx.open_table(GROUPS)?;
        for &c in &batch.read_groups {
            found += u64::from(groups.get(c)?.is_some());
        }
        Ok(found)
    }

    fn write(&mut self, batch: &Batch, pool: &Pool) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut ids = tx.open_table(IDS)?;
            for &h in &batch.ids {
                ids.insert(h, &h.to_le_bytes()[..])?;
            }
            let mut keys = tx.open_table(KEYS)?;
            for &(h, c) in &batch.keys {
                keys.insert(h, c)?;
            }
            let mut groups = tx.open_table(GROUPS)?;
            for &(c, at) in &batch.groups {
                groups.insert(c, pool.group(at))?;
            }
            let mut timeline = tx.open_table(TIMELINE)?;
            for &(id, at) in &batch.timeline {
                timeline.insert(id, pool.timeline(at))?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

fn open(args: &Args, dir: &Path) -> Result<Box<dyn Store>> {
    Ok(match args.engine {
        Engine::Sqlite => Box::new(Sqlite::open(dir, args.cache_mib)?),
        Engine::Fjall => Box::new(Fjall::open(dir, args)?),
        Engine::Redb => Box::new(Redb::open(dir, args.cache_mib)?),
    })
}

/// This process's CPU time (all threads, background compaction included),
/// seconds.
fn cpu_secs() -> f64 {
    omni_testkit::cpu::proc_stat(std::process::id()).map_or(0.0, |stat| {
        stat.ticks as f64 / omni_testkit::cpu::TICKS_PER_SEC
    })
}

/// `x` to one decimal, for the printed figures.
fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// A line of a `/proc/self` file, as a number (the first one on it).
fn proc_value(file: &str, name: &str) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Bytes in the files under `dir`.
fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn main() -> Result<()> {
    let args = Args::parse();
    let temp;
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).context("creating --dir")?;
            dir.clone()
        }
        None => {
            temp = tempfile::tempdir().context("creating a temporary directory")?;
            temp.path().to_owned()
        }
    };
    let pool = Pool::new(args.group_bytes, args.timeline_bytes);
    let mut store = open(&args, &dir)?;
    let mut stream = Stream {
        rng: Rng(42),
        customers: 0,
        events: 0,
        sequence: 0,
    };
    let mut batch = Batch::default();
    let (mut mark_at, mut mark_cpu, mut mark_events) = (Instant::now(), cpu_secs(), 0);
    let (started, started_cpu) = (Instant::now(), cpu_secs());
    let mut found = 0;
    while stream.events < args.events {
        let n = args.batch.min(args.events - stream.events);
        stream.fill(&mut batch, n, &pool);
        found += store.read(&batch)?;
        store.write(&batch, &pool)?;
        if stream.events / args.report != (stream.events - n) / args.report
            || stream.events == args.events
        {
            let (secs, cpu) = (mark_at.elapsed().as_secs_f64(), cpu_secs() - mark_cpu);
            let events = stream.events - mark_events;
            println!(
                "{}",
                serde_json::json!({
                    "engine": format!("{:?}", args.engine),
                    "events": stream.events,
                    "interval_events_per_s": (events as f64 / secs).round(),
                    "interval_cpu_us_per_event": round1(cpu * 1e6 / events as f64),
                    "written_bytes": proc_value("/proc/self/io", "wchar:"),
                    "disk_bytes": disk_bytes(&dir),
                    "rss_bytes": proc_value("/proc/self/status", "VmRSS:") * 1024,
                    "found": found,
                })
            );
            (mark_at, mark_cpu, mark_events) = (Instant::now(), cpu_secs(), stream.events);
        }
    }
    let (secs, cpu) = (started.elapsed().as_secs_f64(), cpu_secs() - started_cpu);
    drop(store);
    let reopen = Instant::now();
    let mut store = open(&args, &dir)?;
    stream.fill(&mut batch, 1, &pool);
    store.read(&batch)?;
    println!(
        "{}",
        serde_json::json!({
            "engine": format!("{:?}", args.engine),
            "events": args.events,
            "events_per_s": (args.events as f64 / secs).round(),
            "cpu_us_per_event": round1(cpu * 1e6 / args.events as f64),
            "cpu_secs": round1(cpu),
            "disk_bytes": disk_bytes(&dir),
            "reopen_secs": (reopen.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        })
    );
    Ok(())
}
