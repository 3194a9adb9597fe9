//! Cold loads stay short whatever state the snapshot is in: stale, from another
//! state version, off the subject's chain, or impossible to write. Each test
//! counts the requests the load sends to the events stream (a plain NATS
//! subscriber on the JetStream API sees every one) and checks the state against
//! what was written.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::kv;
use common::*;
use futures::StreamExt as _;
use gridwork_eventstore::{Aggregate as _, Repository, RepositoryOptions};
use gridwork_proto::gridwork::eventstore::v1 as pb;
use gridwork_sample_ledger::domain::ledger::{Ledger, LedgerCommand};
use gridwork_testkit::db::TestDb;
use gridwork_testkit::nats::NatsServer;
use prost::Message as _;

const BUCKET: &str = "SNAPSHOTS_SAMPLE";

/// A snapshot every `snapshot_every` commits, however close together.
fn options(snapshot_every: u32) -> RepositoryOptions {
    RepositoryOptions {
        snapshot_every,
        snapshot_spread: 0,
        snapshot_every_dense: snapshot_every,
        ..RepositoryOptions::default()
    }
}

async fn repository(k: &Kernel, bucket: &str, options: RepositoryOptions) -> Repository<Ledger> {
    Repository::new(k.js.clone(), "SAMPLE", Some(bucket), options).await.expect("repository")
}

/// Open `id` and deposit 1, 2, … `deposits`; returns the balance.
async fn history(r: &Repository<Ledger>, id: &str, deposits: i64) -> i64 {
    r.execute(id, &LedgerCommand::Open { owner: "Zhao".into() }, &meta()).await.expect("open");
    for amount in 1..=deposits {
        r.execute(id, &LedgerCommand::Deposit { amount }, &meta()).await.expect("deposit");
    }
    deposits * (deposits + 1) / 2
}

/// Counts requests to the events stream (direct gets of any kind, leader gets)
/// while it lives; snapshot reads go to the KV bucket's own stream and are not
/// counted.
struct Requests {
    client: async_nats::Client,
    seen: Arc<AtomicUsize>,
}

impl Requests {
    async fn watch(nats: &NatsServer) -> Self {
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let seen = Arc::new(AtomicUsize::new(0));
        for subject in ["$JS.API.DIRECT.GET.SAMPLE", "$JS.API.DIRECT.GET.SAMPLE.>", "$JS.API.STREAM.MSG.GET.SAMPLE"] {
            let mut sub = client.subscribe(subject).await.expect("subscribe");
            let seen = seen.clone();
            tokio::spawn(async move {
                while sub.next().await.is_some() {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        client.flush().await.expect("flush");
        Self { client, seen }
    }

    /// Requests seen since the last call.
    async fn take(&self) -> usize {
        self.client.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(150)).await;
        self.seen.swap(0, Ordering::SeqCst)
    }
}

async fn snapshot_of(k: &Kernel, bucket: &str, id: &str) -> Option<pb::Snapshot> {
    let store = k.js.get_key_value(bucket).await.expect("bucket");
    let bytes = store.get(format!("ledger.{id}")).await.expect("kv get")?;
    Some(pb::Snapshot::decode(bytes.as_ref()).expect("snapshot decodes"))
}

async fn wait_for_snapshot_at(k: &Kernel, id: &str, sequence: u64) -> pb::Snapshot {
    for _ in 0..50 {
        if let Some(s) = snapshot_of(k, BUCKET, id).await
            && s.sequence == sequence
            && s.schema_version == Ledger::STATE_VERSION
        {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no snapshot of {id} at {sequence}: {:?}", snapshot_of(k, BUCKET, id).await.map(|s| s.sequence));
}

async fn put_snapshot(k: &Kernel, id: &str, snapshot: pb::Snapshot) {
    let store = k.js.get_key_value(BUCKET).await.expect("bucket");
    store.put(format!("ledger.{id}"), snapshot.encode_to_vec().into()).await.expect("put");
}

/// Snapshots follow what a cold load would cost: a hot aggregate's commits,
/// side by side in the stream, are read cheaply in one batch and snapshotted
/// only every `snapshot_every_dense`; an aggregate whose commits lie far apart
/// (other traffic between them) is snapshotted every `snapshot_every`.
#[tokio::test]
async fn snapshots_are_written_by_how_far_apart_the_commits_lie() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let r = repository(&k, BUCKET, cost_policy()).await;

    // Hot: 20 commits in a row span 20 messages — no snapshot yet.
    history(&r, "hot", 19).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(snapshot_of(&k, BUCKET, "hot").await.map(|s| s.sequence), None, "close commits: no snapshot");
    // The 32nd commit, however close, is snapshotted.
    for amount in 20..=31 {
        r.execute("hot", &LedgerCommand::Deposit { amount }, &meta()).await.expect("deposit");
    }
    let head = r.load_current("hot").await.expect("load").sequence;
    wait_for_snapshot_at(&k, "hot", head).await;

    // Sparse: 100 other messages between commits; the 4th spans 300 > 200.
    let mut sparse_head = 0;
    for n in 0..4 {
        for f in 0..100 {
            k.js.publish(format!("sample.filler.f{f}"), "x".into()).await.expect("publish").await.expect("ack");
        }
        let command = match n {
            0 => LedgerCommand::Open { owner: "Qian".into() },
            _ => LedgerCommand::Deposit { amount: n },
        };
        sparse_head = r.execute("sparse", &command, &meta()).await.expect("execute").sequence;
        if n == 2 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(snapshot_of(&k, BUCKET, "sparse").await.map(|s| s.sequence), None, "3 commits: too few");
        }
    }
    let snapshot = wait_for_snapshot_at(&k, "sparse", sparse_head).await;
    // Command ids as 16-byte tags, and a client's UUID id also as its string,
    // which builds from before tags read.
    assert_eq!(snapshot.recent_commands.len(), 4);
    for recent in &snapshot.recent_commands {
        let tag = gridwork_eventstore::CommandTag::of(&recent.command_id);
        assert!(uuid::Uuid::parse_str(&recent.command_id).is_ok(), "{recent:?}");
        assert_eq!(recent.tag, tag.to_bytes().to_vec());
    }
    // Either way the next cold load is one request: the snapshot is current.
    let requests = Requests::watch(&nats).await;
    let cold = repository(&k, BUCKET, cost_policy()).await;
    for (id, balance) in [("hot", (1..=31).sum::<i64>()), ("sparse", 6)] {
        assert_eq!(cold.load_cold(id).await.expect("cold load").state.balance, balance);
    }
    assert_eq!(requests.take().await, 2, "one request per cold load");
}

/// An aggregate written rarely — each commit far from the one before it in
/// the stream — is snapshotted at every second such commit past its snapshot,
/// so that its cold load is always the last commit and the snapshot read
/// together: one request to the stream, never a second for the commits after
/// an older snapshot. One commit past a snapshot needs no new one (the head
/// points back at it), so the rule costs a put per two commits, not per
/// commit. Close commits keep the count rules.
#[tokio::test]
async fn a_rarely_written_aggregate_is_snapshotted_every_second_far_commit_and_loads_in_one_request() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let policy = RepositoryOptions { snapshot_gap: 50, ..cost_policy() };
    let r = repository(&k, BUCKET, policy.clone()).await;
    let filler = |n: usize| {
        let js = k.js.clone();
        async move {
            for f in 0..n {
                js.publish(format!("sample.filler.f{f}"), "x".into()).await.expect("publish").await.expect("ack");
            }
        }
    };
    let requests = Requests::watch(&nats).await;
    let cold_load = async |balance: i64| {
        let cold = repository(&k, BUCKET, policy.clone()).await;
        requests.take().await;
        assert_eq!(cold.load_cold("rare").await.expect("cold load").state.balance, balance);
        assert_eq!(requests.take().await, 1, "the last commit only: the snapshot is at it or at its predecessor");
    };
    // Two commits side by side: the count rules, and too few for them.
    r.execute("rare", &LedgerCommand::Open { owner: "Sun".into() }, &meta()).await.expect("open");
    r.execute("rare", &LedgerCommand::Deposit { amount: 1 }, &meta()).await.expect("deposit");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(snapshot_of(&k, BUCKET, "rare").await.map(|s| s.sequence), None, "close commits: no snapshot");
    // Far after the two: snapshotted at once.
    filler(60).await;
    let first = r.execute("rare", &LedgerCommand::Deposit { amount: 2 }, &meta()).await.expect("deposit").sequence;
    wait_for_snapshot_at(&k, "rare", first).await;
    cold_load(3).await;
    let mut balance = 3;
    for amount in 3..=6 {
        filler(60).await;
        let head = r.execute("rare", &LedgerCommand::Deposit { amount }, &meta()).await.expect("deposit").sequence;
        balance += amount;
        if amount % 2 == 1 {
            // The first far commit past the snapshot: no put.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let at = snapshot_of(&k, BUCKET, "rare").await.map(|s| s.sequence);
            assert!(at.is_some_and(|at| at < head), "one commit past the snapshot: none written at {head}");
        } else {
            wait_for_snapshot_at(&k, "rare", head).await;
        }
        cold_load(balance).await;
    }
}

/// Every 4 commits spread over more than 200 messages, else every 32.
fn cost_policy() -> RepositoryOptions {
    RepositoryOptions {
        snapshot_every: 4,
        snapshot_spread: 200,
        snapshot_every_dense: 32,
        ..RepositoryOptions::default()
    }
}

/// A snapshot 600 commits behind the head (writers that never snapshot) costs
/// the first cold load a couple of batched reads, not 600 round trips, and
/// that load leaves a current snapshot behind for the next one.
#[tokio::test]
async fn a_stale_snapshot_costs_one_short_load_and_is_replaced() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let snapshotting = repository(&k, BUCKET, options(8)).await;
    let mut balance = history(&snapshotting, "acct", 9).await;
    let stale = wait_for_snapshot_at(&k, "acct", 8).await;
    let never = repository(&k, BUCKET, options(0)).await;
    for amount in 1..=600 {
        never.execute("acct", &LedgerCommand::Deposit { amount }, &meta()).await.expect("deposit");
        balance += amount;
    }
    let head = never.load_current("acct").await.expect("load").sequence;
    assert_eq!(snapshot_of(&k, BUCKET, "acct").await.map(|s| s.sequence), Some(stale.sequence), "still stale");

    let requests = Requests::watch(&nats).await;
    let cold = repository(&k, BUCKET, options(8)).await;
    let loaded = cold.load_cold("acct").await.expect("cold load");
    assert_eq!((loaded.state.balance, loaded.sequence), (balance, head));
    let sent = requests.take().await;
    assert!(sent <= 3, "600 commits behind the snapshot: {sent} requests (the last commit, then batches)");

    wait_for_snapshot_at(&k, "acct", head).await;
    let again = repository(&k, BUCKET, options(8)).await.load_cold("acct").await.expect("second cold load");
    assert_eq!((again.state.balance, again.sequence), (balance, head));
    assert_eq!(requests.take().await, 1, "the snapshot is current: only the last commit is read");
}

/// A warm state far behind the head (another replica wrote 1,200 commits) is
/// brought up from the newer snapshot, not read forwards commit by commit.
#[tokio::test]
async fn a_warm_state_far_behind_catches_up_from_the_newer_snapshot() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let a = repository(&k, BUCKET, options(8)).await;
    let mut balance = history(&a, "acct", 2).await;
    assert_eq!(a.load("acct").await.expect("warm").state.balance, balance);
    let b = repository(&k, BUCKET, options(8)).await;
    for amount in 1..=1200 {
        b.execute("acct", &LedgerCommand::Deposit { amount }, &meta()).await.expect("deposit on b");
        balance += amount;
    }
    let head = b.load("acct").await.expect("b").sequence;
    wait_for_snapshot_at(&k, "acct", head - head % 8).await;

    let requests = Requests::watch(&nats).await;
    let current = a.load_current("acct").await.expect("refresh");
    assert_eq!((current.state.balance, current.sequence), (balance, head));
    let sent = requests.take().await;
    assert!(sent <= 3, "1,200 commits behind: {sent} requests (head, one batch, then from the snapshot)");
}

/// A snapshot written by another build (another state version), or one whose
/// sequence is not on the subject's chain (another account's commit, a
/// sequence past the head of a recreated stream), is never trusted.
#[tokio::test]
async fn snapshots_from_another_version_or_off_the_chain_are_ignored() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let never = repository(&k, BUCKET, options(0)).await;
    let mut balance = 0;
    for amount in 1..=20 {
        if amount == 1 {
            never.execute("acct", &LedgerCommand::Open { owner: "Qian".into() }, &meta()).await.expect("open");
            never.execute("other", &LedgerCommand::Open { owner: "Sun".into() }, &meta()).await.expect("open");
        }
        never.execute("acct", &LedgerCommand::Deposit { amount }, &meta()).await.expect("deposit");
        never.execute("other", &LedgerCommand::Deposit { amount: 1000 }, &meta()).await.expect("deposit");
        balance += amount;
    }
    let head = never.load_current("acct").await.expect("head").sequence;
    let other_commit = never.load_current("other").await.expect("other").sequence - 4;
    let bogus = Ledger { balance: 1_000_000, ..Ledger::default() }.encode_state();

    let cases = [
        ("a newer state version", Ledger::STATE_VERSION + 1, head),
        ("another account's commit", Ledger::STATE_VERSION, other_commit),
        ("a sequence past the head", Ledger::STATE_VERSION, head + 1000),
    ];
    for (what, schema_version, sequence) in cases {
        put_snapshot(&k, "acct", pb::Snapshot { sequence, schema_version, state: bogus.clone(), ..Default::default() })
            .await;
        let loaded = repository(&k, BUCKET, options(8)).await.load_cold("acct").await.expect("cold load");
        assert_eq!((loaded.state.balance, loaded.sequence), (balance, head), "{what}");
        // The long load replaced it with this build's snapshot at the head.
        let replaced = wait_for_snapshot_at(&k, "acct", head).await;
        assert_eq!(Ledger::decode_state(&replaced.state).expect("decodes").balance, balance, "{what}");
    }
}

/// A snapshot off the chain of an aggregate longer than one batch (its
/// sequence another account's commit near the head): the load starts again
/// from the first commit and must not jump back to that snapshot — neither
/// cold, nor from a warm state far behind.
#[tokio::test]
async fn an_off_chain_snapshot_of_a_long_history_is_dropped_once() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let never = repository(&k, BUCKET, options(0)).await;
    never.execute("acct", &LedgerCommand::Open { owner: "Wu".into() }, &meta()).await.expect("open");
    never.execute("other", &LedgerCommand::Open { owner: "Zheng".into() }, &meta()).await.expect("open");
    let warm = repository(&k, BUCKET, options(0)).await;
    assert_eq!(warm.load("acct").await.expect("warm").state.balance, 0);
    let mut balance = 0;
    for amount in 1..=600 {
        never.execute("acct", &LedgerCommand::Deposit { amount }, &meta()).await.expect("deposit");
        never.execute("other", &LedgerCommand::Deposit { amount: 1 }, &meta()).await.expect("deposit");
        balance += amount;
    }
    let head = never.load_current("acct").await.expect("head").sequence;
    let bogus = Ledger { opened: true, balance: 1_000_000, ..Ledger::default() }.encode_state();
    let near_head = never.load_current("other").await.expect("other").sequence - 20;
    put_snapshot(
        &k,
        "acct",
        pb::Snapshot { sequence: near_head, schema_version: Ledger::STATE_VERSION, state: bogus, ..Default::default() },
    )
    .await;

    let within = Duration::from_secs(10);
    let cold = repository(&k, BUCKET, options(0)).await;
    let loaded = tokio::time::timeout(within, cold.load_cold("acct")).await.expect("the cold load ends").expect("load");
    assert_eq!((loaded.state.balance, loaded.sequence), (balance, head), "cold");
    let current =
        tokio::time::timeout(within, warm.load_current("acct")).await.expect("the refresh ends").expect("refresh");
    assert_eq!((current.state.balance, current.sequence), (balance, head), "warm, far behind");
}

/// A bucket whose values are capped below any snapshot (16 bytes): no
/// snapshot is tried (each would be a refused write), and every cold load
/// folds the whole history, still in a few batched reads.
#[tokio::test]
async fn without_snapshots_a_long_history_loads_in_batches() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    k.js.create_key_value(kv::Config { bucket: "TINY".into(), max_value_size: 16, ..Default::default() })
        .await
        .expect("tiny bucket");
    let watcher = async_nats::connect(nats.url()).await.expect("connect");
    let mut puts = watcher.subscribe("$KV.TINY.>").await.expect("subscribe");
    watcher.flush().await.expect("flush");
    let r = repository(&k, "TINY", options(8)).await;
    let balance = history(&r, "acct", 1100).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(snapshot_of(&k, "TINY", "acct").await.is_none(), "no snapshot was written");
    let tried = tokio::time::timeout(Duration::from_millis(300), puts.next()).await;
    assert!(tried.is_err(), "a snapshot larger than the bucket's max value size was sent: {tried:?}");

    let requests = Requests::watch(&nats).await;
    let loaded = repository(&k, "TINY", options(8)).await.load_cold("acct").await.expect("cold load");
    assert_eq!(loaded.state.balance, balance);
    let sent = requests.take().await;
    assert!(sent <= 4, "1,101 commits without a snapshot: {sent} requests (the last commit, then 3 batches)");
}

/// The warm cache holds what its byte budget allows, however many aggregates
/// pass through it.
#[tokio::test]
async fn the_warm_cache_is_bounded_by_bytes() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let budget = 8 * 1024;
    let r = repository(&k, BUCKET, RepositoryOptions { cache_bytes: budget, ..options(8) }).await;
    for a in 0..300 {
        let id = format!("acct-{a}");
        r.execute(&id, &LedgerCommand::Open { owner: "x".repeat(200) }, &meta()).await.expect("open");
    }
    let weight = r.cache_weight();
    assert!(weight <= budget, "{weight} bytes warm, budget {budget}");
    assert!(weight > budget / 4, "the cache is used: {weight} bytes");
    // Everything evicted still loads.
    assert_eq!(r.load("acct-0").await.expect("load").state.owner, "x".repeat(200));
}

/// The stream went back under a running replica (recreated, restored from an
/// older backup): the replica's warm state lies past the leader's head. The
/// first conflict replaces it with the leader's, older or not, instead of
/// keeping the "newer" one and failing every command with a conflict.
#[tokio::test]
async fn a_warm_state_past_the_leaders_head_is_replaced_at_the_first_conflict() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let warm = repository(&k, BUCKET, options(1000)).await;
    history(&warm, "acct", 20).await;
    assert_eq!(warm.load("acct").await.expect("warm").sequence, 21);

    // The stream is recreated and another replica writes a shorter history.
    k.js.delete_stream("SAMPLE").await.expect("delete stream");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let spec = gridwork_eventstore::StreamSpec::events("sample", 1);
    gridwork_eventstore::ensure_stream(&client, &k.js, &spec).await.expect("stream again");
    let other = repository(&k, BUCKET, options(1000)).await;
    let balance = history(&other, "acct", 3).await;

    let landed = warm.execute("acct", &LedgerCommand::Deposit { amount: 100 }, &meta()).await.expect("deposit");
    assert_eq!(landed.sequence, 5, "decided on the leader's history, not the cached one");
    let current = warm.load("acct").await.expect("load");
    assert_eq!((current.sequence, current.state.balance), (5, balance + 100));
}

/// A process manager's refusal is not stored (it is decided afresh when
/// sent again), so the server never checks it: it is decided again on the
/// leader's head before it is given. Here a replica's warm copy predates
/// another replica's deposit.
#[tokio::test]
async fn a_process_managers_refusal_is_checked_against_the_leader() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let a = repository(&k, BUCKET, options(1000)).await;
    let b = repository(&k, BUCKET, options(1000)).await;
    a.execute("acct", &LedgerCommand::Open { owner: "Sun".into() }, &meta()).await.expect("open");
    assert_eq!(a.load("acct").await.expect("warm").state.balance, 0);
    b.execute("acct", &LedgerCommand::Deposit { amount: 100 }, &meta()).await.expect("deposit on b");

    // `meta()` carries no request digest: a process manager's command.
    let withdrawn = a.execute("acct", &LedgerCommand::Withdraw { amount: 60 }, &meta()).await;
    let withdrawn = withdrawn.expect("decided on the leader's head, where the deposit is");
    assert_eq!(withdrawn.sequence, 3);
    assert_eq!(a.load("acct").await.expect("load").state.balance, 40);
}
