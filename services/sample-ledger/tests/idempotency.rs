//! What a command id means, on a real nats-server: a refusal decided on a stale
//! cache is checked by the server like any write, every outcome (events, no-op,
//! refusal) is remembered under its command id, and an id reused for another
//! request is refused.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use gridwork_eventstore::{CommandMeta, ExecuteError, Repository, RepositoryOptions, StoreError};
use gridwork_sample_ledger::domain::ledger::{Ledger, LedgerCommand, LedgerRejection};
use gridwork_testkit::db::TestDb;
use gridwork_testkit::nats::NatsServer;

async fn replica(k: &Kernel) -> Repository<Ledger> {
    Repository::new(k.js.clone(), "SAMPLE", Some("SNAPSHOTS_SAMPLE"), RepositoryOptions::default())
        .await
        .expect("second replica")
}

/// Replica A has the account warm with a balance of 0; replica B deposits; A
/// is asked to withdraw. Deciding on its cache, A would answer
/// INSUFFICIENT_FUNDS for money that is there.
#[tokio::test]
async fn a_refusal_decided_on_a_stale_cache_is_checked_against_the_stream() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let a = &k.repository;
    let b = replica(&k).await;
    a.execute("acct", &LedgerCommand::Open { owner: "o".into() }, &meta()).await.expect("open");
    assert_eq!(a.load("acct").await.expect("warm").state.balance, 0);
    b.execute("acct", &LedgerCommand::Deposit { amount: 100 }, &meta()).await.expect("deposit on b");

    let client_request = CommandMeta { request_digest: 42, ..meta() };
    let withdrawn = a.execute("acct", &LedgerCommand::Withdraw { amount: 60 }, &client_request).await;
    assert!(withdrawn.is_ok(), "decided again on the current state: {withdrawn:?}");
    assert_eq!(a.load_current("acct").await.expect("load").state.balance, 40);
    assert_eq!(b.load_current("acct").await.expect("load").state.balance, 40, "b's warm copy is brought up to date");
}

/// A refused command is remembered: retried after the money arrived, it is
/// refused again (the client already has its answer), not applied.
#[tokio::test]
async fn a_refused_command_retried_later_is_refused_again_not_applied() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let r = &k.repository;
    r.execute("acct", &LedgerCommand::Open { owner: "o".into() }, &meta()).await.expect("open");
    let withdraw = CommandMeta { request_digest: 42, ..meta() };
    let first = r.execute("acct", &LedgerCommand::Withdraw { amount: 50 }, &withdraw).await;
    assert!(matches!(first, Err(ExecuteError::Rejected(LedgerRejection::InsufficientFunds { .. }))), "{first:?}");
    r.execute("acct", &LedgerCommand::Deposit { amount: 80 }, &meta()).await.expect("deposit");

    // The same replica, another replica with a cold cache, and the same one
    // after its cache is dropped: the same answer each time.
    let other = replica(&k).await;
    for (who, repo) in [("warm", r), ("other replica", &other)] {
        let again = repo.execute("acct", &LedgerCommand::Withdraw { amount: 50 }, &withdraw).await;
        assert_eq!(
            again.err().map(|e| e.to_string()),
            Some(LedgerRejection::InsufficientFunds { balance: 0, requested: 50 }.to_string()),
            "{who}: the original refusal, word for word"
        );
    }
    r.clear_cache();
    let again = r.execute("acct", &LedgerCommand::Withdraw { amount: 50 }, &withdraw).await;
    assert!(matches!(again, Err(ExecuteError::Rejected(_))), "cold: {again:?}");
    assert_eq!(r.load_current("acct").await.expect("load").state.balance, 80, "never withdrawn");
}

/// A command id stands for one request. Sent again with another request, it is
/// refused — not answered with the first request's result, not applied.
#[tokio::test]
async fn a_command_id_reused_for_a_different_request_is_refused() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let r = &k.repository;
    r.execute("acct", &LedgerCommand::Open { owner: "o".into() }, &meta()).await.expect("open");
    let first = CommandMeta { request_digest: 11, ..meta() };
    r.execute("acct", &LedgerCommand::Deposit { amount: 10 }, &first).await.expect("deposit");

    let same = r.execute("acct", &LedgerCommand::Deposit { amount: 10 }, &first).await.expect("retry");
    assert!(same.replayed);
    let reused = CommandMeta { request_digest: 12, ..first.clone() };
    let other = r.execute("acct", &LedgerCommand::Deposit { amount: 99 }, &reused).await;
    assert!(
        matches!(&other, Err(ExecuteError::Store(StoreError::CommandIdReused { command_id })) if *command_id == first.command_id),
        "{other:?}"
    );
    r.clear_cache();
    let other = r.execute("acct", &LedgerCommand::Deposit { amount: 99 }, &reused).await;
    assert!(matches!(other, Err(ExecuteError::Store(StoreError::CommandIdReused { .. }))), "cold: {other:?}");
    assert_eq!(r.load_current("acct").await.expect("load").state.balance, 10);
}

/// Through gRPC: the digest is taken from the request, so a client that reuses
/// an id with another amount gets INVALID_ARGUMENT naming `command_id`.
#[tokio::test]
async fn over_grpc_a_reused_command_id_is_invalid_argument_naming_it() {
    use gridwork_proto::gridwork::sample::v1 as pb;
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let ledger = spawn_ledger(&nats, &db).await;
    let mut client = connect(&ledger.server).await;
    open(&mut client, "acct").await;
    let id = command_id();
    let deposit = |amount| pb::DepositRequest { command_id: id.clone(), account_id: "acct".into(), amount };
    client.deposit(deposit(10)).await.expect("deposit");
    let again = client.deposit(deposit(10)).await.expect("the same request again").into_inner();
    assert_eq!(again.balance, 10);
    assert!(again.position.is_some_and(|p| p.replayed));
    let status = client.deposit(deposit(25)).await.expect_err("another request under the same id");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let details = tonic_types::StatusExt::get_details_bad_request(&status).expect("bad request details");
    assert!(details.field_violations.iter().any(|v| v.field == "command_id"), "{details:?}");
}

fn uuid_v7_at(unix_ms: i64) -> String {
    let ts =
        uuid::Timestamp::from_unix(uuid::NoContext, (unix_ms / 1000) as u64, ((unix_ms % 1000) * 1_000_000) as u32);
    uuid::Uuid::new_v7(ts).to_string()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64
}

/// The hidden horizon, shown: after the server's duplicate window *and* more
/// than the 64 command ids an aggregate remembers, a retry used to be applied
/// again (a double deposit). The stream's command index still knows it.
#[tokio::test]
async fn a_retry_after_the_dedupe_window_and_a_hundred_later_commands_applies_once() {
    use gridwork_proto::gridwork::sample::v1 as pb;
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let first = spawn_ledger(&nats, &db).await;
    shrink_dedupe_window(&js).await;

    let mut c = first.client.clone();
    open(&mut c, "acct").await;
    let request = pb::DepositRequest { command_id: command_id(), account_id: "acct".into(), amount: 7 };
    let original = c.deposit(request.clone()).await.expect("deposit").into_inner();
    for _ in 0..100 {
        deposit(&mut c, "acct", 1).await.expect("later deposit");
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    // A replica started now (without re-provisioning the stream, which would
    // restore the window): no warm cache, the window has passed, and the
    // aggregate's memory holds only the last 64 ids.
    let store = gridwork_eventstore::projection::ReadStore::connect(&db.url).await.expect("store");
    let horizon = RepositoryOptions::default().idempotency_horizon;
    let index = gridwork_eventstore::CommandIndex::start(js.clone(), "SAMPLE", store, horizon).await.expect("index");
    let second =
        Repository::<Ledger>::new(js.clone(), "SAMPLE", Some("SNAPSHOTS_SAMPLE"), RepositoryOptions::default())
            .await
            .expect("replica")
            .with_command_index(index);
    let retry = CommandMeta { command_id: request.command_id.clone(), ..meta() };
    let again = second.execute("acct", &LedgerCommand::Deposit { amount: 7 }, &retry).await.expect("retry");
    assert!(again.replayed, "replayed, not applied: {again:?}");
    assert_eq!(again.sequence, original.position.map_or(0, |p| p.sequence), "the original commit");
    assert_eq!(second.load_current("acct").await.expect("load").state.balance, 107, "seven once, plus a hundred ones");
}

/// The same for a process manager's command: its id is derived from what it
/// reacts to, has no time, and no request digest. Past the window and the
/// remembered ids, the index is asked for it too (before, it was applied again).
#[tokio::test]
async fn a_derived_command_id_past_the_window_and_the_remembered_ids_applies_once() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    shrink_dedupe_window(&k.js).await;
    let r = &k.repository;
    r.execute("acct", &LedgerCommand::Open { owner: "o".into() }, &meta()).await.expect("open");
    let derived = CommandMeta { command_id: "interest:acct:2026-11".into(), ..meta() };
    let first = r.execute("acct", &LedgerCommand::Deposit { amount: 7 }, &derived).await.expect("first");
    for _ in 0..100 {
        r.execute("acct", &LedgerCommand::Deposit { amount: 1 }, &meta()).await.expect("later deposit");
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    let index = command_index(&k).await;
    index.runner().wait_for_stream_head(std::time::Duration::from_secs(30)).await.expect("index built");
    let second = replica(&k).await.with_command_index(index);
    let again = second.execute("acct", &LedgerCommand::Deposit { amount: 7 }, &derived).await.expect("retry");
    assert!(again.replayed, "replayed, not applied: {again:?}");
    assert_eq!(again.sequence, first.sequence, "the original commit");
    assert_eq!(second.load_current("acct").await.expect("load").state.balance, 107, "seven once, plus a hundred ones");
}

/// An index that has not reached the commits an aggregate has forgotten
/// cannot say a command never landed: the command is unavailable (a client or
/// reactor comes again), within a bound, and is never decided unchecked. Here
/// the index is held behind by a write lock on its SQLite file, as a reactor's
/// open transaction holds it; once let go, the retry is answered by the
/// original commit.
#[tokio::test]
async fn a_command_the_lagging_index_cannot_vouch_for_is_unavailable_not_applied() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    shrink_dedupe_window(&k.js).await;
    let index = command_index(&k).await;
    let r = k.repository.clone().with_command_index(index.clone());
    r.execute("acct", &LedgerCommand::Open { owner: "o".into() }, &meta()).await.expect("open");
    index.runner().wait_for_stream_head(std::time::Duration::from_secs(30)).await.expect("index built");

    let mut lock = k.store.pool().begin().await.expect("begin");
    sqlx::query("CREATE TABLE hold_the_write_lock (x INTEGER)").execute(&mut *lock).await.expect("write lock");
    let derived = CommandMeta { command_id: "interest:acct:2026-12".into(), ..meta() };
    let first = r.execute("acct", &LedgerCommand::Deposit { amount: 7 }, &derived).await.expect("first");
    for _ in 0..70 {
        r.execute("acct", &LedgerCommand::Deposit { amount: 1 }, &meta()).await.expect("later deposit");
    }
    // Past the server's window: only the index could know.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let asked = std::time::Instant::now();
    let refused = r.execute("acct", &LedgerCommand::Deposit { amount: 7 }, &derived).await;
    assert!(
        matches!(refused, Err(ExecuteError::Store(StoreError::Unavailable(_)))),
        "the index cannot vouch yet: {refused:?}"
    );
    assert!(asked.elapsed() < std::time::Duration::from_secs(6), "bounded: {:?}", asked.elapsed());
    assert_eq!(r.load_current("acct").await.expect("load").state.balance, 77, "not applied again");

    lock.rollback().await.expect("let go");
    let again = r.execute("acct", &LedgerCommand::Deposit { amount: 7 }, &derived).await.expect("retry");
    assert!(again.replayed, "replayed, not applied: {again:?}");
    assert_eq!(again.sequence, first.sequence);
    assert_eq!(r.load_current("acct").await.expect("load").state.balance, 77, "seven once");
}

/// A process manager working through a backlog dates its command from the
/// commit it reacts to, days ago. The index keeps the id by the server's
/// storage time: pruned by the command's own date (every 1,024 commits), the
/// row went at once, and a re-send after the window was applied again.
#[tokio::test]
async fn a_command_dated_from_an_old_backlog_is_kept_for_the_horizon_from_when_it_was_stored() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    shrink_dedupe_window(&k.js).await;
    let index = command_index(&k).await;
    let r = k.repository.clone().with_command_index(index.clone());
    let today = CommandMeta { decided_at_unix_ms: now_ms(), ..meta() };
    r.execute("acct", &LedgerCommand::Open { owner: "o".into() }, &today).await.expect("open");
    let ten_days_ago = now_ms() - 10 * 24 * 3600 * 1000;
    let backlog = CommandMeta { command_id: "welcome:acct".into(), decided_at_unix_ms: ten_days_ago, ..meta() };
    let first = r.execute("acct", &LedgerCommand::Deposit { amount: 7 }, &backlog).await.expect("first");
    // Past sequence 1,024, where the index prunes.
    for _ in 0..1030 {
        let today = CommandMeta { decided_at_unix_ms: now_ms(), ..meta() };
        r.execute("acct", &LedgerCommand::Deposit { amount: 1 }, &today).await.expect("later deposit");
    }
    index.runner().wait_for_stream_head(std::time::Duration::from_secs(30)).await.expect("index caught up");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let again = r.execute("acct", &LedgerCommand::Deposit { amount: 7 }, &backlog).await.expect("retry");
    assert!(again.replayed, "replayed, not applied: {again:?}");
    assert_eq!(again.sequence, first.sequence);
    assert_eq!(r.load_current("acct").await.expect("load").state.balance, 1037, "seven once");
}

/// Past the horizon nothing can tell a retry from a new command: refused, with
/// the field named, rather than risk applying it twice. An id from the future
/// (a fast client clock) is refused too.
#[tokio::test]
async fn a_command_id_older_than_the_horizon_or_from_the_future_is_refused() {
    use gridwork_proto::gridwork::sample::v1 as pb;
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let ledger = spawn_ledger(&nats, &db).await;
    let mut c = ledger.client.clone();
    open(&mut c, "acct").await;
    let eight_days_ago = now_ms() - 8 * 24 * 3600 * 1000;
    let in_an_hour = now_ms() + 3600 * 1000;
    for (what, id) in [("too old", uuid_v7_at(eight_days_ago)), ("from the future", uuid_v7_at(in_an_hour))] {
        let status = c
            .deposit(pb::DepositRequest { command_id: id, account_id: "acct".into(), amount: 5 })
            .await
            .expect_err(what);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{what}: {status:?}");
        let details = tonic_types::StatusExt::get_details_bad_request(&status).expect("details");
        assert!(details.field_violations.iter().any(|v| v.field == "command_id"), "{what}: {details:?}");
    }
    // Six days old is inside the horizon: a first-time command is applied.
    let six_days_ago = now_ms() - 6 * 24 * 3600 * 1000;
    let ok = c
        .deposit(pb::DepositRequest { command_id: uuid_v7_at(six_days_ago), account_id: "acct".into(), amount: 5 })
        .await
        .expect("inside the horizon")
        .into_inner();
    assert_eq!(ok.balance, 5);
}

/// Within the server's dedupe window and after more commits on the aggregate
/// than it remembers (64), only `Nats-Msg-Id` knows the command landed: the
/// retry must be answered with the original, not applied again. (Remove the
/// header from `envelope::encode_commit` and this applies the deposit twice.)
#[tokio::test]
async fn within_the_dedupe_window_the_server_recognises_a_retry_the_aggregate_has_forgotten() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let r = &k.repository;
    r.execute("acct", &LedgerCommand::Open { owner: "o".into() }, &meta()).await.expect("open");
    let retried = meta();
    let first = r.execute("acct", &LedgerCommand::Deposit { amount: 7 }, &retried).await.expect("first");
    for _ in 0..70 {
        r.execute("acct", &LedgerCommand::Deposit { amount: 1 }, &meta()).await.expect("later deposit");
    }
    let other = replica(&k).await;
    let again = other.execute("acct", &LedgerCommand::Deposit { amount: 7 }, &retried).await.expect("retry");
    assert!(again.replayed, "answered from the original commit");
    assert_eq!(again.sequence, first.sequence);
    assert_eq!(other.load_current("acct").await.expect("load").state.balance, 77, "deposited once");
}

/// A replica of the stream that lacks every commit: a mirror with
/// `mirror_direct` joins the stream's direct-get queue group (as a lagging
/// follower with `allow_direct` does) once it has caught up with what it
/// mirrors — here one marker message and no commit — and then answers every
/// direct get of a commit 404. The server spreads direct gets over the group.
async fn lagging_replica(k: &Kernel) {
    use async_nats::jetstream::stream::{Config, Source};
    k.js.publish("sample.lagging.marker", "m".into()).await.expect("publish").await.expect("ack");
    let mut mirror =
        k.js.create_stream(Config {
            name: "SAMPLE_LAGGING".into(),
            mirror: Some(Source {
                name: "SAMPLE".into(),
                filter_subject: Some("sample.lagging.>".into()),
                ..Default::default()
            }),
            mirror_direct: true,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .expect("mirror");
    for _ in 0..100 {
        if mirror.info().await.expect("info").state.messages == 1 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the mirror never caught up");
}

/// Counts the reads that go to the stream leader (`STREAM.MSG.GET`).
async fn leader_reads(nats: &NatsServer) -> Arc<AtomicUsize> {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let seen = Arc::new(AtomicUsize::new(0));
    let mut sub = client.subscribe("$JS.API.STREAM.MSG.GET.SAMPLE").await.expect("subscribe");
    client.flush().await.expect("flush");
    let counter = seen.clone();
    tokio::spawn(async move {
        let _client = client;
        while futures::StreamExt::next(&mut sub).await.is_some() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    seen
}

/// Finding 5: a retried command is answered from its original commit, read
/// back by sequence. A replica that does not have that commit yet answers the
/// direct get 404; the read must then go to the stream leader, not call the
/// commit missing (before: "corrupt", INTERNAL for a command that succeeded).
#[tokio::test]
async fn a_read_back_from_a_replica_that_lacks_the_commit_asks_the_leader() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let r = &k.repository;
    r.execute("acct", &LedgerCommand::Open { owner: "o".into() }, &client_meta()).await.expect("open");
    let mut sent = Vec::new();
    for amount in 1..=24 {
        let meta = client_meta();
        let outcome = r.execute("acct", &LedgerCommand::Deposit { amount }, &meta).await.expect("deposit");
        sent.push((meta, amount, outcome.sequence));
    }
    lagging_replica(&k).await;
    let leader = leader_reads(&nats).await;
    for (meta, amount, sequence) in &sent {
        let retry = r.execute("acct", &LedgerCommand::Deposit { amount: *amount }, meta).await;
        let outcome = retry.unwrap_or_else(|e| panic!("retry of the deposit at {sequence}: {e:?}"));
        assert!(outcome.replayed && outcome.sequence == *sequence, "{outcome:?}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let leader = leader.load(Ordering::SeqCst);
    assert!(leader > 0, "the lagging replica answered none of the 24 read-backs: the test proves nothing");
}
