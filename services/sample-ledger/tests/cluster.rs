//! The kernel on a three-node JetStream cluster (R3 streams, three real
//! nats-server processes on loopback): the stream leader killed with SIGKILL
//! under concurrent writes loses no acknowledged command and applies none twice;
//! two writers deciding on the same version across a leader change cannot both
//! win; a projection that lived through the leader change holds the same rows as
//! one built on a single node from the same history.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use common::*;
use gridwork_eventstore::projection::{ProjectionRunner, ReadStore, RunnerConfig};
use gridwork_eventstore::{CommandMeta, ExecuteError, RecordedCommit, Repository, RepositoryOptions, StoreError};
use gridwork_proto::gridwork::eventstore::v1::Outcome;
use gridwork_sample_ledger::domain::ledger::{Ledger, LedgerCommand, LedgerRejection};
use gridwork_sample_ledger::projection::Accounts;
use gridwork_testkit::db::TestDb;
use gridwork_testkit::nats::{NatsCluster, NatsServer};
use tokio::sync::Mutex;

const STREAM: &str = "SAMPLE";

/// A deposit the kernel acknowledged: account, command id, amount, sequence.
type Acknowledged = (String, String, i64, u64);

/// A repository on its own connection to the cluster, as another replica of
/// the service would have.
async fn replica(url: &str) -> Repository<Ledger> {
    let servers: Vec<&str> = url.split(',').collect();
    let client = async_nats::ConnectOptions::new()
        .max_reconnects(None)
        .connect(servers.as_slice())
        .await
        .expect("replica connects");
    Repository::new(async_nats::jetstream::new(client), STREAM, Some("SNAPSHOTS_SAMPLE"), RepositoryOptions::default())
        .await
        .expect("replica repository")
}

/// Execute under one command id until it is acknowledged, as a client retrying
/// an UNAVAILABLE answer would (same id every time). Refusals and other
/// permanent errors are returned.
async fn until_acknowledged(
    repo: &Repository<Ledger>,
    account: &str,
    command: &LedgerCommand,
    meta: &CommandMeta,
) -> Result<u64, ExecuteError<LedgerRejection>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match repo.execute(account, command, meta).await {
            Ok(outcome) => return Ok(outcome.sequence),
            Err(ExecuteError::Store(StoreError::Unavailable(e) | StoreError::Conflict { subject: e, .. }))
                if tokio::time::Instant::now() < deadline =>
            {
                tracing::debug!(error = %e, "retrying under the same command id");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Every message in the stream, in order, read from the leader.
async fn raw_history(js: &async_nats::jetstream::Context) -> Vec<StreamMessage> {
    let mut stream = js.get_stream(STREAM).await.expect("stream");
    let last = stream.info().await.expect("info").state.last_sequence;
    let mut messages = Vec::new();
    for seq in 1..=last {
        messages.push(stream.get_raw_message(seq).await.expect("every sequence is there"));
    }
    messages
}

/// Every commit in the stream, in order.
async fn history(js: &async_nats::jetstream::Context) -> Vec<RecordedCommit> {
    raw_history(js).await.into_iter().map(|m| RecordedCommit::from_stream_message(m).expect("decodes")).collect()
}

/// Sixteen writers deposit into four accounts while the stream's leader is
/// killed with SIGKILL. Every acknowledged deposit is in the stream exactly
/// once, at the sequence it was acknowledged with; balances are the sums of
/// what was acknowledged; a projection that ran through it all equals one built
/// on a single node from a verbatim copy of the stream.
#[tokio::test]
async fn a_leader_killed_under_concurrent_writes_loses_nothing_acknowledged_and_doubles_nothing() {
    let mut cluster = NatsCluster::start().await.expect("cluster");
    let db = TestDb::sqlite().expect("db");
    let k = kernel_on(&cluster.url(), 3, &db).await;
    let accounts: Vec<String> = (0..4).map(|a| format!("acct-{a}")).collect();
    for a in &accounts {
        k.repository.execute(a, &LedgerCommand::Open { owner: a.clone() }, &meta()).await.expect("open");
    }
    let projection = ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, RunnerConfig::new(STREAM))
        .await
        .expect("projection");

    // Writers on four replicas; each deposit has its own amount so a double
    // shows in the balance as well as in the stream.
    let acknowledged: Arc<Mutex<Vec<Acknowledged>>> = Arc::default();
    let replicas = [replica(&cluster.url()).await, replica(&cluster.url()).await];
    let replicas = Arc::new(replicas);
    let mut writers = Vec::new();
    for w in 0..16usize {
        let account = accounts[w % accounts.len()].clone();
        let acknowledged = acknowledged.clone();
        let replicas = replicas.clone();
        writers.push(tokio::spawn(async move {
            for d in 0..12usize {
                let amount = (w * 100 + d + 1) as i64;
                let meta = meta();
                let repo = &replicas[(w + d) % replicas.len()];
                let sequence = until_acknowledged(repo, &account, &LedgerCommand::Deposit { amount }, &meta)
                    .await
                    .unwrap_or_else(|e| panic!("writer {w} deposit {d}: {e}"));
                acknowledged.lock().await.push((account.clone(), meta.command_id.clone(), amount, sequence));
            }
        }));
    }
    // Kill the leader once writes are flowing.
    let flowing = tokio::time::Instant::now() + Duration::from_secs(60);
    while acknowledged.lock().await.len() < 40 {
        assert!(tokio::time::Instant::now() < flowing, "writes flow before the kill");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let leader = cluster.stream_leader(STREAM).await.expect("info").expect("a leader");
    cluster.kill(leader);
    let new_leader =
        cluster.wait_for_leader(STREAM, Some(leader), Duration::from_secs(30)).await.expect("a new leader is elected");
    assert_ne!(new_leader, leader);
    let killed_at = std::time::Instant::now();
    for writer in writers {
        writer.await.expect("writer finished");
    }
    eprintln!("writers finished {:?} after the kill", killed_at.elapsed());
    let acknowledged = acknowledged.lock().await.clone();
    assert_eq!(acknowledged.len(), 16 * 12);

    // Every acknowledged command is in the stream once, where its ack said.
    let raw = raw_history(&k.js).await;
    let commits: Vec<RecordedCommit> =
        raw.iter().cloned().map(|m| RecordedCommit::from_stream_message(m).expect("decodes")).collect();
    let mut by_command: HashMap<&str, Vec<&RecordedCommit>> = HashMap::new();
    for c in &commits {
        if c.outcome() == Outcome::Applied {
            by_command.entry(c.command_id()).or_default().push(c);
        }
    }
    for (account, command_id, _, sequence) in &acknowledged {
        let found = by_command.get(command_id.as_str()).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(found.len(), 1, "command {command_id} on {account} is in the stream exactly once");
        assert_eq!(found[0].sequence, *sequence, "at the sequence its acknowledgement named");
    }
    assert!(by_command.values().all(|c| c.len() == 1), "no command applied twice");
    let mut expected: BTreeMap<&str, i64> = BTreeMap::new();
    for (account, _, amount, _) in &acknowledged {
        *expected.entry(account).or_default() += amount;
    }
    for (account, balance) in &expected {
        let loaded = k.repository.load_current(account).await.expect("load");
        assert_eq!(loaded.state.balance, *balance, "{account}: the sum of what was acknowledged, no more, no less");
    }

    // The projection lived through the leader change: same rows as a single
    // node projecting a verbatim copy of the stream.
    let head = commits.last().expect("commits").sequence;
    projection.wait_for(head, Duration::from_secs(20)).await.expect("projection catches up after the leader change");
    eprintln!("projection caught up {:?} after the kill", killed_at.elapsed());
    let live = dump(&k.store).await;
    let single = TestDb::sqlite().expect("db");
    let copied = single_node_projection_of(&raw, &single).await;
    assert_eq!(live, copied, "the cluster's read model equals a single node's");
    for (account, balance) in &expected {
        let row = live.iter().find(|r| r.0 == *account).expect("row");
        assert_eq!(row.2, *balance);
    }
    projection.stop().await;

    // The killed node comes back and catches up; the stream stays whole.
    cluster.restart(leader).await.expect("restart");
    assert_eq!(history(&k.js).await.len(), commits.len());
}

/// Copy `commits` verbatim (headers and payload, in order) into a stream on a
/// fresh single node, project it, and return the rows.
async fn single_node_projection_of(
    messages: &[StreamMessage],
    db: &TestDb,
) -> Vec<(String, String, i64, i64, i64, String)> {
    let nats = NatsServer::start().await.expect("single node");
    let k = kernel(&nats, db).await;
    for m in messages {
        let ack =
            k.js.publish_with_headers(m.subject.clone(), m.headers.clone(), m.payload.clone())
                .await
                .expect("publish")
                .await
                .expect("ack");
        assert_eq!(ack.sequence, m.sequence, "copied at the same sequence");
    }
    let store = ReadStore::connect(&db.url).await.expect("store");
    let runner = ProjectionRunner::start(k.js.clone(), store.clone(), Accounts, RunnerConfig::new(STREAM))
        .await
        .expect("runner");
    runner.wait_for(messages.last().expect("messages").sequence, Duration::from_secs(30)).await.expect("caught up");
    let rows = dump(&store).await;
    runner.stop().await;
    rows
}

/// Two replicas have the account warm at the same version; the leader dies and
/// both ask, across the election, to withdraw 60 of the 100 there. Both
/// commits carry the same expected subject sequence: exactly one lands, the
/// other is decided again on the new state and refused.
#[tokio::test]
async fn two_writers_with_the_same_expected_sequence_across_a_leader_change_cannot_both_win() {
    let mut cluster = NatsCluster::start().await.expect("cluster");
    let db = TestDb::sqlite().expect("db");
    let k = kernel_on(&cluster.url(), 3, &db).await;
    k.repository.execute("acct", &LedgerCommand::Open { owner: "o".into() }, &meta()).await.expect("open");
    k.repository.execute("acct", &LedgerCommand::Deposit { amount: 100 }, &meta()).await.expect("deposit");
    let a = replica(&cluster.url()).await;
    let b = replica(&cluster.url()).await;
    let version = a.load("acct").await.expect("warm a").sequence;
    assert_eq!(b.load("acct").await.expect("warm b").sequence, version, "both decide on the same version");

    let leader = cluster.stream_leader(STREAM).await.expect("info").expect("leader");
    cluster.kill(leader);
    let withdraw = LedgerCommand::Withdraw { amount: 60 };
    let (ma, mb) = (meta(), meta());
    let (ra, rb) =
        tokio::join!(until_acknowledged(&a, "acct", &withdraw, &ma), until_acknowledged(&b, "acct", &withdraw, &mb));
    let wins = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "exactly one withdrawal wins: a {ra:?}, b {rb:?}");
    let loser = if ra.is_ok() { rb } else { ra };
    assert!(
        matches!(loser, Err(ExecuteError::Rejected(LedgerRejection::InsufficientFunds { balance: 40, requested: 60 }))),
        "the other is refused on the state after the winner: {loser:?}"
    );
    let withdrawals = history(&k.js)
        .await
        .iter()
        .filter(|c| c.outcome() == Outcome::Applied && !c.command_id().is_empty())
        .filter(|c| [&ma.command_id, &mb.command_id].contains(&&c.command_id().to_string()))
        .count();
    assert_eq!(withdrawals, 1, "one withdrawal in the stream");
    assert_eq!(k.repository.load_current("acct").await.expect("load").state.balance, 40);
}

/// A follower is SIGKILLed. The server learns that a node is gone only when
/// its heartbeats have been missing for minutes, and until then places one
/// new R1 consumer in three on the dead peer, where its creation waits out
/// the request timeout (5 s). A projection started then must not wait on
/// it: eight projections started one after another each catch up well
/// inside that timeout (the chance that eight draws all miss the dead peer
/// is 4%; a runner that waited on it fails here nearly always).
#[tokio::test]
async fn projections_started_after_a_follower_died_never_wait_on_the_dead_peer() {
    let mut cluster = NatsCluster::start().await.expect("cluster");
    let db = TestDb::sqlite().expect("db");
    let k = kernel_on(&cluster.url(), 3, &db).await;
    let head = write_history(&k, "f", 2, 3).await;
    // One projection before the kill makes the dead-letter stream: an R3
    // stream made after a peer died may wait out an election (4–9 s) when the
    // dead peer was the one meant to lead it, which is not what this tests.
    let before = ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, RunnerConfig::new(STREAM))
        .await
        .expect("runner");
    before.wait_for(head, Duration::from_secs(20)).await.expect("caught up before the kill");
    before.stop().await;
    let leader = cluster.stream_leader(STREAM).await.expect("info").expect("a leader");
    let meta = cluster.meta_leader().await.expect("jsz").expect("a meta leader");
    // Neither leader: nothing is elected, writes and placement go on as
    // before, only the dead peer is still drawn.
    let follower = (0..3).find(|n| *n != leader && *n != meta).expect("a plain follower");
    cluster.kill(follower);
    // The dead-letter stream's leader may have been the follower: starting
    // a runner asks it about that stream, which waits until it is re-elected.
    cluster.wait_for_leader("DLQ_SAMPLE", Some(follower), Duration::from_secs(30)).await.expect("dead letters led");
    for start in 0..8 {
        let fresh = TestDb::sqlite().expect("db");
        let store = ReadStore::connect(&fresh.url).await.expect("store");
        let began = std::time::Instant::now();
        let runner = ProjectionRunner::start(k.js.clone(), store.clone(), Accounts, RunnerConfig::new(STREAM))
            .await
            .expect("runner");
        eprintln!("projection {start} started in {:?}", began.elapsed());
        runner
            .wait_for(head, Duration::from_millis(4500))
            .await
            .unwrap_or_else(|e| panic!("projection {start} caught up without waiting on the dead peer: {e}"));
        eprintln!("projection {start} caught up in {:?}", began.elapsed());
        runner.stop().await;
    }
}
