//! `make bench`: the kernel's figures, each beside a baseline measured in the
//! same run on the same private nats-server / database.
//!
//! 1. Append rate: kernel `execute` vs a raw JetStream publish-and-await-ack, at
//!    1 and 64 concurrent writers.
//! 2. Cold load of a 20-event aggregate in a stream of >= 1 M messages (p50/p99),
//!    with KV snapshots and with the bare back-pointer walk; beside it, a single
//!    direct get and the subject scan the design avoids.
//! 3. Projection catch-up on SQLite and PostgreSQL vs a raw batched insert.
//!
//! Environment: BENCH_FILL (messages in the big stream, default 1_000_000),
//! BENCH_SECONDS (per throughput run, default 3), BENCH_ONLY (append, cold or
//! catchup: one part), BENCH_APPEND_VARIANT (raw, checked, encoded or kernel:
//! that one alone at 64 writers, for a profiler), GRIDWORK_TEST_POSTGRES_URL.

use std::sync::Arc;

use futures::StreamExt as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gridwork_eventstore::envelope::{Decision, encode_commit};
use gridwork_eventstore::projection::{ProjectionRunner, ReadStore, RunnerConfig};
use gridwork_eventstore::{CommandMeta, Repository, RepositoryOptions, StreamSpec, ensure_stream};
use gridwork_sample_ledger::domain::ledger::{Ledger, LedgerCommand};
use gridwork_sample_ledger::events::LedgerEvent;
use gridwork_sample_ledger::projection::Accounts;
use gridwork_testkit::db::TestDb;
use gridwork_testkit::nats::{NatsCluster, NatsServer};
use hdrhistogram::Histogram;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn meta() -> CommandMeta {
    CommandMeta {
        command_id: uuid::Uuid::now_v7().to_string(),
        principal: "bench".into(),
        decided_at_unix_ms: 0,
        request_digest: 0,
    }
}

struct Setup {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    spec: StreamSpec,
}

async fn setup(nats: &NatsServer) -> Setup {
    setup_on(&nats.url(), 1).await
}

/// The stream (and snapshot bucket) with `replicas` replicas on the server(s)
/// at `url` (comma-separated for a cluster).
async fn setup_on(url: &str, replicas: usize) -> Setup {
    let servers: Vec<&str> = url.split(',').collect();
    let client = async_nats::connect(servers.as_slice()).await.expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    let spec = StreamSpec::events("sample", replicas);
    ensure_stream(&client, &js, &spec).await.expect("stream");
    Setup { client, js, spec }
}

async fn repository(s: &Setup, snapshots: bool) -> Repository<Ledger> {
    let bucket = s.spec.snapshot_bucket();
    Repository::new(s.js.clone(), &s.spec.name, snapshots.then_some(bucket.as_str()), RepositoryOptions::default())
        .await
        .expect("repository")
}

/// Run `writers` tasks for `seconds`, each calling `op(writer)` in a loop; ops/s.
async fn rate<F, Fut>(writers: usize, seconds: u64, op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (op, count) = (op.clone(), count.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    op(w).await;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// One append variant on a fresh nats-server of its own: each starts with an
/// empty store and dedupe map (a server that already holds the previous
/// variant's message ids, within the duplicate window, is slower for the next).
async fn append_rate(variant: &str, writers: usize, seconds: u64) -> f64 {
    let nats = NatsServer::start().await.expect("nats");
    let s = setup(&nats).await;
    let last: Arc<Vec<AtomicU64>> = Arc::new((0..writers).map(|_| AtomicU64::new(0)).collect());
    let js = s.js.clone();
    match variant {
        "raw" => {
            rate(writers, seconds, move |w| {
                let js = js.clone();
                async move {
                    js.publish(format!("sample.raw.w{w}"), "x".repeat(120).into())
                        .await
                        .expect("publish")
                        .await
                        .expect("ack");
                }
            })
            .await
        }
        // The same publish carrying the two headers the kernel needs (dedupe id
        // and expected last subject sequence): what the server's checks cost.
        "checked" => {
            rate(writers, seconds, move |w| {
                let (js, last) = (js.clone(), last.clone());
                async move {
                    let mut h = async_nats::HeaderMap::new();
                    h.insert("Nats-Msg-Id", uuid::Uuid::now_v7().to_string().as_str());
                    h.insert(
                        "Nats-Expected-Last-Subject-Sequence",
                        last[w].load(Ordering::Relaxed).to_string().as_str(),
                    );
                    publish_after(&js, &last[w], format!("sample.checked.w{w}"), h, "x".repeat(120).into()).await;
                }
            })
            .await
        }
        // The kernel's encoded commit (every header it writes, and its body),
        // published raw: the server's share of the kernel's cost.
        "encoded" => {
            rate(writers, seconds, move |w| {
                let (js, last) = (js.clone(), last.clone());
                async move {
                    let id = format!("w{w}");
                    let events = [LedgerEvent::Deposited { amount: 1, balance_after: 1 }];
                    let (h, body) = encode_commit::<Ledger>(
                        &id,
                        last[w].load(Ordering::Relaxed),
                        &meta(),
                        Decision::Events(&events),
                    );
                    publish_after(&js, &last[w], format!("sample.ledger.{id}"), h, body).await;
                }
            })
            .await
        }
        _ => {
            let repo = repository(&s, true).await;
            for w in 0..writers {
                repo.execute(&format!("w{w}"), &LedgerCommand::Open { owner: "bench".into() }, &meta())
                    .await
                    .expect("open");
            }
            rate(writers, seconds, move |w| {
                let r = repo.clone();
                async move {
                    r.execute(&format!("w{w}"), &LedgerCommand::Deposit { amount: 1 }, &meta()).await.expect("deposit");
                }
            })
            .await
        }
    }
}

/// Publish and await the ack; `last` becomes the subject's new sequence (what
/// the next message's expected-last-subject-sequence header names).
async fn publish_after(
    js: &async_nats::jetstream::Context,
    last: &AtomicU64,
    subject: String,
    headers: async_nats::HeaderMap,
    body: bytes::Bytes,
) {
    let ack = js.publish_with_headers(subject, headers, body).await.expect("publish").await.expect("ack");
    last.store(ack.sequence, Ordering::Relaxed);
}

async fn append_rates(seconds: u64) {
    println!("\n== Append rate (commits/s), each on a fresh nats-server on a temp store, {seconds} s per run ==");
    println!(
        "   ratio = kernel / a raw publish with the same two headers (Nats-Msg-Id, expected last subject sequence)"
    );
    println!("   target at 64 writers: >= 0.75");
    println!(
        "   (raw + commit = the kernel's whole encoded commit, headers and body, published raw: the server's share)"
    );
    println!(
        "{:>8} {:>12} {:>16} {:>14} {:>12} {:>8}",
        "writers", "raw publish", "raw + 2 headers", "raw + commit", "kernel", "ratio"
    );
    if let Ok(variant) = std::env::var("BENCH_APPEND_VARIANT") {
        // Profiling one variant: `perf record` sees nothing else.
        let rate = append_rate(&variant, 64, seconds).await;
        println!("{variant} at 64 writers: {rate:.0} commits/s");
        return;
    }
    for writers in [1usize, 64] {
        let raw = append_rate("raw", writers, seconds).await;
        let checked = append_rate("checked", writers, seconds).await;
        let encoded = append_rate("encoded", writers, seconds).await;
        let kernel = append_rate("kernel", writers, seconds).await;
        println!("{writers:>8} {raw:>12.0} {checked:>16.0} {encoded:>14.0} {kernel:>12.0} {:>8.2}", kernel / checked);
    }
}

fn percentiles(h: &Histogram<u64>) -> String {
    format!(
        "p50 {:>7.3} ms  p99 {:>7.3} ms  (n={})",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.len()
    )
}

/// Cold loads on a single node and on a three-node cluster (R3 stream and
/// snapshot bucket; reads answered by any replica).
async fn cold_loads(fill: u64) {
    let nats = NatsServer::start().await.expect("nats");
    println!("\n== Cold load, single node ==");
    cold_loads_on(&setup(&nats).await, fill).await;
    drop(nats);
    let cluster = NatsCluster::start().await.expect("cluster");
    println!("\n== Cold load, three-node cluster on loopback, R3 ==");
    cold_loads_on(&setup_on(&cluster.url(), 3).await, fill).await;
}

async fn cold_loads_on(s: &Setup, fill: u64) {
    let repo = repository(s, true).await;
    let bare = repository(s, false).await;
    let aggregates = 1000usize;
    let rounds = 20usize; // open + 19 deposits = 20 events, 20 commits each
    let filler_per_round = fill / rounds as u64;
    println!("   a 20-event aggregate, {aggregates} aggregates spread through the stream");
    let started = Instant::now();
    let payload: bytes::Bytes = vec![b'f'; 100].into();
    for round in 0..rounds {
        let command = if round == 0 {
            LedgerCommand::Open { owner: "bench".into() }
        } else {
            LedgerCommand::Deposit { amount: 1 }
        };
        futures::stream::iter(0..aggregates)
            .for_each_concurrent(64, |a| {
                let (repo, command) = (repo.clone(), command.clone());
                async move {
                    repo.execute(&format!("agg{a}"), &command, &meta()).await.expect("execute");
                }
            })
            .await;
        // Unrelated traffic between this aggregate's commits, pipelined.
        let mut acks = Vec::with_capacity(4096);
        for i in 0..filler_per_round {
            acks.push(s.js.publish(format!("sample.filler.f{}", i % 50_000), payload.clone()).await.expect("publish"));
            if acks.len() == 4096 {
                for ack in acks.drain(..) {
                    ack.await.expect("ack");
                }
            }
        }
        for ack in acks.drain(..) {
            ack.await.expect("ack");
        }
    }
    let mut stream = s.js.get_stream(&s.spec.name).await.expect("stream");
    let messages = stream.info().await.expect("info").state.messages;
    println!("stream holds {messages} messages (filled in {:.1} s)", started.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_millis(500)).await; // let snapshot writes land

    let mut with_snapshots = Histogram::<u64>::new(3).expect("histogram");
    let mut walk_only = Histogram::<u64>::new(3).expect("histogram");
    let mut one_get = Histogram::<u64>::new(3).expect("histogram");
    for a in 0..aggregates {
        let id = format!("agg{a}");
        let t = Instant::now();
        let loaded = repo.load_cold(&id).await.expect("load");
        with_snapshots.record(t.elapsed().as_micros() as u64).expect("record");
        assert_eq!(loaded.state.balance, (rounds - 1) as i64);
        let t = Instant::now();
        let loaded = bare.load_cold(&id).await.expect("load");
        walk_only.record(t.elapsed().as_micros() as u64).expect("record");
        assert_eq!(loaded.state.balance, (rounds - 1) as i64);
        let t = Instant::now();
        stream.direct_get_last_for_subject(format!("sample.ledger.{id}")).await.expect("get");
        one_get.record(t.elapsed().as_micros() as u64).expect("record");
    }
    // The path the design avoids: scanning by subject (20 "next by subject" gets).
    let mut scan = Histogram::<u64>::new(3).expect("histogram");
    for a in 0..50 {
        let subject = format!("sample.ledger.agg{a}");
        let t = Instant::now();
        let mut seq = 1;
        for _ in 0..rounds {
            let m = stream.direct_get_next_for_subject(&subject, Some(seq)).await.expect("next");
            seq = m.sequence + 1;
        }
        scan.record(t.elapsed().as_micros() as u64).expect("record");
    }
    println!("kernel cold load, KV snapshot + back-pointers  {}   (target p50 <= 1 ms)", percentiles(&with_snapshots));
    println!("kernel cold load, no snapshot (batched read)   {}", percentiles(&walk_only));
    println!("baseline: one direct get (last by subject)     {}", percentiles(&one_get));
    println!("avoided:  20 next-by-subject gets (scans)      {}", percentiles(&scan));
}

/// Baseline, in the same run on the same database: as many rows as the stream
/// holds commits, written 500 per transaction — on PostgreSQL as one UNNEST
/// insert per transaction through the native driver (what a batched projection
/// could at best do), on SQLite as single-row statements (SQLite has no round
/// trips). Rows per second.
async fn raw_insert_rate(label: &str, url: &str, store: &ReadStore, rows: u64, run: &str) -> f64 {
    let table = format!("bench_raw_{run}");
    let ddl = format!("CREATE TABLE {table} (id TEXT PRIMARY KEY, n BIGINT NOT NULL)");
    let ids: Vec<String> = (0..rows).map(|i| format!("row{i}")).collect();
    if label == "postgres" {
        let pg = sqlx::postgres::PgPool::connect(url).await.expect("native postgres");
        sqlx::query(sqlx::AssertSqlSafe(ddl)).execute(&pg).await.expect("ddl");
        let insert = format!("INSERT INTO {table} (id, n) SELECT * FROM UNNEST($1::text[], $2::bigint[])");
        let started = Instant::now();
        for (c, chunk) in ids.chunks(500).enumerate() {
            let ns: Vec<i64> = (0..chunk.len() as i64).map(|i| c as i64 * 500 + i).collect();
            let mut tx = pg.begin().await.expect("begin");
            sqlx::query(sqlx::AssertSqlSafe(insert.as_str()))
                .bind(chunk)
                .bind(&ns)
                .execute(&mut *tx)
                .await
                .expect("unnest insert");
            tx.commit().await.expect("commit");
        }
        let rate = rows as f64 / started.elapsed().as_secs_f64();
        pg.close().await;
        rate
    } else {
        sqlx::query(sqlx::AssertSqlSafe(ddl)).execute(store.pool()).await.expect("ddl");
        let insert = format!("INSERT INTO {table} (id, n) VALUES ($1, $2)");
        let started = Instant::now();
        for (c, chunk) in ids.chunks(500).enumerate() {
            let mut tx = store.pool().begin().await.expect("begin");
            for (i, id) in chunk.iter().enumerate() {
                sqlx::query(sqlx::AssertSqlSafe(insert.as_str()))
                    .bind(id)
                    .bind((c * 500 + i) as i64)
                    .execute(&mut *tx)
                    .await
                    .expect("insert");
            }
            tx.commit().await.expect("commit");
        }
        rows as f64 / started.elapsed().as_secs_f64()
    }
}

async fn catch_up(label: &str, db: TestDb, commits: usize) {
    let nats = NatsServer::start().await.expect("nats");
    let s = setup(&nats).await;
    let repo = repository(&s, true).await;
    let accounts = 500usize;
    let writers: Vec<_> = (0..accounts)
        .map(|a| {
            let repo = repo.clone();
            tokio::spawn(async move {
                let id = format!("acct{a}");
                repo.execute(&id, &LedgerCommand::Open { owner: "bench".into() }, &meta()).await.expect("open");
                for _ in 1..commits / accounts {
                    repo.execute(&id, &LedgerCommand::Deposit { amount: 1 }, &meta()).await.expect("deposit");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    let mut stream = s.js.get_stream(&s.spec.name).await.expect("stream");
    let last = stream.info().await.expect("info").state.last_sequence;

    let store = ReadStore::connect(&db.url).await.expect("store");
    // The baseline runs before the projection and again after it, and the
    // faster run counts: the machine's neighbours must not flatter the ratio.
    let before = raw_insert_rate(label, &db.url, &store, last, "before").await;
    if std::env::var("BENCH_MARK").is_ok() {
        eprintln!("catching up on {label}");
    }
    let started = Instant::now();
    let handle = ProjectionRunner::start(s.js.clone(), store.clone(), Accounts, RunnerConfig::new(&s.spec.name))
        .await
        .expect("runner");
    let start_ms = started.elapsed().as_secs_f64() * 1000.0;
    handle.wait_for(last, Duration::from_secs(600)).await.expect("caught up");
    let projection_rate = last as f64 / started.elapsed().as_secs_f64();
    handle.stop().await;
    // The ceiling the runner works under: the same stream read by a bare
    // consumer like the runner's, messages counted and dropped.
    let started = Instant::now();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            memory_storage: true,
            ..Default::default()
        })
        .await
        .expect("pull consumer");
    let mut messages =
        consumer.stream().max_messages_per_batch(4096).max_bytes_per_batch(8 << 20).messages().await.expect("messages");
    let mut read = 0u64;
    while read < last {
        futures::StreamExt::next(&mut messages).await.expect("message").expect("ok");
        read += 1;
    }
    let consumer_rate = last as f64 / started.elapsed().as_secs_f64();
    drop(messages);
    // What the runner read through before: async-nats' ordered consumer
    // (500 messages per pull, whatever it is asked).
    let started = Instant::now();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut read = 0u64;
    while read < last {
        futures::StreamExt::next(&mut messages).await.expect("message").expect("ok");
        read += 1;
    }
    let ordered_rate = last as f64 / started.elapsed().as_secs_f64();
    drop(messages);

    let raw_rate = before.max(raw_insert_rate(label, &db.url, &store, last, "after").await);
    let baseline = if label == "postgres" { "UNNEST, native driver" } else { "single-row inserts" };
    println!(
        "{label:>10} {last:>10} {projection_rate:>16.0} {raw_rate:>16.0} {:>8.2}   (baseline: {baseline}, the faster of \
         a run before and one after; bare reader (the runner's pull consumer) {consumer_rate:.0}/s, \
         ordered consumer {ordered_rate:.0}/s; runner start {start_ms:.0} ms)",
        projection_rate / raw_rate
    );
    drop(s.client);
    db.cleanup().await;
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` compatibility
    }
    let seconds = env_u64("BENCH_SECONDS", 3);
    let fill = env_u64("BENCH_FILL", 1_000_000);
    // BENCH_ONLY=append|cold|catchup runs one part (profiling); default all.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let run = |part: &str| only.is_empty() || only == part;
    if run("append") {
        append_rates(seconds).await;
    }
    if run("cold") {
        cold_loads(fill).await;
    }
    if !run("catchup") {
        return;
    }
    println!("\n== Projection catch-up (commits/s) vs a raw insert of as many rows (rows/s), 500 per transaction ==");
    println!("   targets: PostgreSQL >= 50,000 commits/s and >= 0.5 of UNNEST; SQLite >= 1.0 of single-row inserts");
    println!("{:>10} {:>10} {:>16} {:>16} {:>8}", "store", "commits", "projection", "raw insert", "ratio");
    let commits = env_u64("BENCH_CATCHUP", 200_000) as usize;
    catch_up("sqlite", TestDb::sqlite().expect("sqlite"), commits).await;
    match TestDb::postgres("bench: projection catch-up on PostgreSQL").await {
        Ok(Some(db)) => catch_up("postgres", db, commits).await,
        Ok(None) => println!("{:>10} skipped: set GRIDWORK_TEST_POSTGRES_URL", "postgres"),
        Err(e) => println!("{:>10} skipped: {e}", "postgres"),
    }
}
