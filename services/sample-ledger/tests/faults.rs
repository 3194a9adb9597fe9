//! The projection runner under faults, on a real nats-server and real databases:
//! a database outage is never parked as poison, a burst of "poison" stalls, a
//! parked aggregate's later commits wait behind it and replay in order once,
//! rebuilds race neither live runners nor each other, and the position never
//! moves back when NATS restarts.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use common::*;
use gridwork_eventstore::RecordedCommit;
use gridwork_eventstore::envelope::headers;
use gridwork_eventstore::projection::runner::RunnerError;
use gridwork_eventstore::projection::{
    ApplyError, ProjectionRunner, ReadStore, RunnerConfig, RunnerHandle, TableDef, Tables,
};
use gridwork_sample_ledger::domain::ledger::LedgerCommand;
use gridwork_sample_ledger::events::LedgerEvent;
use gridwork_sample_ledger::projection::Accounts;
use gridwork_testkit::db::TestDb;
use gridwork_testkit::nats::NatsServer;
use sqlx::AnyConnection;

const WAIT: Duration = Duration::from_secs(60);

/// The accounts projection with a switchable bug: while `buggy`, a deposit of
/// exactly 13 is refused as invalid (a poison commit until the "fix").
#[derive(Clone)]
struct Buggy {
    buggy: Arc<AtomicBool>,
}

impl gridwork_eventstore::projection::Projection for Buggy {
    fn name(&self) -> &str {
        Accounts.name()
    }
    fn tables(&self) -> &'static [TableDef] {
        Accounts.tables()
    }
    async fn apply(&self, tx: &mut AnyConnection, tables: Tables, commit: &RecordedCommit) -> Result<(), ApplyError> {
        let unlucky = commit
            .decode_events::<LedgerEvent>()?
            .iter()
            .any(|e| matches!(e, LedgerEvent::Deposited { amount: 13, .. }));
        if unlucky && self.buggy.load(Ordering::SeqCst) {
            return Err(ApplyError::Invalid("the projection cannot handle 13".into()));
        }
        Accounts.apply(tx, tables, commit).await
    }
}

async fn deposit_raw(k: &Kernel, account: &str, amount: i64) -> u64 {
    k.repository.execute(account, &LedgerCommand::Deposit { amount }, &meta()).await.expect("deposit").sequence
}

async fn open_raw(k: &Kernel, account: &str) -> u64 {
    k.repository.execute(account, &LedgerCommand::Open { owner: "o".into() }, &meta()).await.expect("open").sequence
}

async fn dead_letters(k: &Kernel) -> u64 {
    let mut dlq = k.js.get_stream("DLQ_SAMPLE").await.expect("dlq");
    dlq.info().await.expect("info").state.messages
}

/// Rows as the stream says they should be: the balance from the aggregate, the
/// movements from the number of commits on its subject (less the opening).
async fn expected_rows(k: &Kernel, ids: &[String]) -> Vec<(String, i64, i64)> {
    use futures::TryStreamExt as _;
    let stream = k.js.get_stream("SAMPLE").await.expect("stream");
    let counts: std::collections::HashMap<String, usize> =
        stream.info_with_subjects("sample.ledger.>").await.expect("subjects").try_collect().await.expect("counts");
    let mut out = Vec::new();
    for id in ids {
        let loaded = k.repository.load_cold(id).await.expect("load");
        let commits = counts.get(&format!("sample.ledger.{id}")).copied().unwrap_or(0) as i64;
        out.push((id.clone(), loaded.state.balance, commits - 1));
    }
    out.sort();
    out
}

async fn rows(store: &ReadStore) -> Vec<(String, i64, i64)> {
    dump(store).await.into_iter().map(|r| (r.0, r.2, r.3)).collect()
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The table disappears under the runner (a migration gone wrong, a restore in
/// progress): "no such table" is the environment, not the commits' fault.
#[tokio::test]
async fn a_missing_table_stalls_the_projection_and_parks_nothing_until_it_is_back() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let handle = ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, quick()).await.expect("start");
    let before = write_history(&k, "acct", 3, 2).await;
    handle.wait_for(before, WAIT).await.expect("caught up");

    sqlx::query("ALTER TABLE sample_accounts RENAME TO sample_accounts_away")
        .execute(k.store.pool())
        .await
        .expect("hide");
    let last = write_history(&k, "late", 3, 3).await;
    wait_until("the projection reports a stall", async || !k.store.stalled().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(handle.position(), before, "the position never moves past a commit it could not apply");
    assert_eq!(k.store.position("sample_accounts").await.expect("position"), before);
    assert_eq!(dead_letters(&k).await, 0, "nothing parked");
    assert!(handle.parked().await.expect("parked").is_empty(), "nothing parked");

    sqlx::query("ALTER TABLE sample_accounts_away RENAME TO sample_accounts")
        .execute(k.store.pool())
        .await
        .expect("back");
    handle.wait_for(last, WAIT).await.expect("resumes once the table is back");
    wait_until("the stall clears", async || k.store.stalled().is_empty()).await;
    let ids: Vec<String> = (0..3).map(|a| format!("acct-{a}")).chain((0..3).map(|a| format!("late-{a}"))).collect();
    assert_eq!(rows(&k.store).await, expected_rows(&k, &ids).await, "every commit applied exactly once");
    handle.stop().await;
}

/// Make the PostgreSQL database at `url` read-only (or writable again) and end
/// its sessions, as a failover to a standby would.
async fn set_read_only(url: &str, on: bool) {
    use sqlx::Connection as _;
    let mut admin = sqlx::PgConnection::connect(url).await.expect("admin");
    let name: (String,) = sqlx::query_as("SELECT current_database()").fetch_one(&mut admin).await.expect("name");
    let value = if on { "on" } else { "off" };
    // This session itself starts read-only once the database is.
    sqlx::query("SET default_transaction_read_only = off").execute(&mut admin).await.expect("session");
    sqlx::query(sqlx::AssertSqlSafe(format!("ALTER DATABASE {} SET default_transaction_read_only = {value}", name.0)))
        .execute(&mut admin)
        .await
        .expect("alter");
    // Existing sessions keep their setting: end them, as a failover would.
    end_other_sessions(&mut admin).await;
}

/// End every session of `admin`'s database but its own; returns how many.
async fn end_other_sessions(admin: &mut sqlx::PgConnection) -> usize {
    let ended: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(admin)
    .await
    .expect("terminate");
    ended.len()
}

/// A failover leaves the database read-only (SQLSTATE 25006) for a while.
#[tokio::test]
async fn a_read_only_postgres_stalls_the_projection_and_parks_nothing() {
    let Some(db) = TestDb::postgres("a_read_only_postgres_stalls_the_projection_and_parks_nothing").await.expect("pg")
    else {
        return;
    };
    let nats = NatsServer::start().await.expect("nats");
    let k = kernel(&nats, &db).await;
    let handle = ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, quick()).await.expect("start");
    let before = write_history(&k, "acct", 2, 2).await;
    handle.wait_for(before, WAIT).await.expect("caught up");

    set_read_only(&db.url, true).await;
    let last = write_history(&k, "late", 2, 3).await;
    wait_until("the projection reports a stall", async || !k.store.stalled().is_empty()).await;
    let reason = k.store.stalled().into_iter().map(|(_, r)| r).collect::<Vec<_>>().join(" ");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(k.store.position("sample_accounts").await.expect("position"), before);
    assert_eq!(dead_letters(&k).await, 0, "read-only is not poison ({reason})");

    set_read_only(&db.url, false).await;
    handle.wait_for(last, WAIT).await.expect("resumes after the failover");
    let ids: Vec<String> = (0..2).map(|a| format!("acct-{a}")).chain((0..2).map(|a| format!("late-{a}"))).collect();
    assert_eq!(rows(&k.store).await, expected_rows(&k, &ids).await);
    handle.stop().await;
    db.cleanup().await;
}

/// A read-only error raised by the read model's own statement inside `apply`
/// (a standby refusing a write halfway through a batch), after the checkpoint
/// was locked: the error reaches the poison policy, which must call it the
/// environment.
#[tokio::test]
async fn a_read_only_error_inside_apply_stalls_the_projection_and_parks_nothing() {
    let name = "a_read_only_error_inside_apply_stalls_the_projection_and_parks_nothing";
    let Some(db) = TestDb::postgres(name).await.expect("pg") else { return };
    let nats = NatsServer::start().await.expect("nats");
    let k = kernel(&nats, &db).await;
    let handle = ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, quick()).await.expect("start");
    let before = write_history(&k, "acct", 2, 2).await;
    handle.wait_for(before, WAIT).await.expect("caught up");

    for statement in [
        "CREATE FUNCTION refuse_writes() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         RAISE EXCEPTION 'cannot execute UPDATE in a read-only transaction' USING ERRCODE = '25006'; END $$",
        "CREATE TRIGGER refuse_writes BEFORE INSERT OR UPDATE ON sample_accounts \
         FOR EACH ROW EXECUTE FUNCTION refuse_writes()",
    ] {
        sqlx::query(statement).execute(k.store.pool()).await.expect("trigger");
    }
    let last = write_history(&k, "late", 2, 3).await;
    wait_until("the projection reports a stall", async || !k.store.stalled().is_empty()).await;
    let reason = k.store.stalled().into_iter().map(|(_, r)| r).collect::<Vec<_>>().join(" ");
    assert!(reason.contains("read-only"), "stalled on the statement inside apply: {reason}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(k.store.position("sample_accounts").await.expect("position"), before);
    assert_eq!(dead_letters(&k).await, 0, "read-only is not poison");

    sqlx::query("DROP TRIGGER refuse_writes ON sample_accounts").execute(k.store.pool()).await.expect("drop");
    handle.wait_for(last, WAIT).await.expect("resumes");
    let ids: Vec<String> = (0..2).map(|a| format!("acct-{a}")).chain((0..2).map(|a| format!("late-{a}"))).collect();
    assert_eq!(rows(&k.store).await, expected_rows(&k, &ids).await);
    handle.stop().await;
    db.cleanup().await;
}

/// Another session holds the read model's table locked (a long migration, a
/// vacuum full): the projection's statement hits `lock_timeout` (SQLSTATE 55P03)
/// inside `apply`. That is the environment, not the commit.
#[tokio::test]
async fn a_lock_timeout_inside_apply_stalls_the_projection_and_parks_nothing() {
    use sqlx::Connection as _;
    let Some(db) =
        TestDb::postgres("a_lock_timeout_inside_apply_stalls_the_projection_and_parks_nothing").await.expect("pg")
    else {
        return;
    };
    let mut admin = sqlx::PgConnection::connect(&db.url).await.expect("admin");
    let name: (String,) = sqlx::query_as("SELECT current_database()").fetch_one(&mut admin).await.expect("name");
    sqlx::query(sqlx::AssertSqlSafe(format!("ALTER DATABASE {} SET lock_timeout = '200ms'", name.0)))
        .execute(&mut admin)
        .await
        .expect("lock_timeout");
    let nats = NatsServer::start().await.expect("nats");
    let k = kernel(&nats, &db).await;
    let handle = ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, quick()).await.expect("start");
    let before = write_history(&k, "acct", 2, 2).await;
    handle.wait_for(before, WAIT).await.expect("caught up");

    let mut blocker = admin.begin().await.expect("begin");
    sqlx::query("LOCK TABLE sample_accounts IN ACCESS EXCLUSIVE MODE").execute(&mut *blocker).await.expect("lock");
    let last = write_history(&k, "late", 2, 4).await;
    wait_until("the projection reports a stall", async || !k.store.stalled().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(k.store.position("sample_accounts").await.expect("position"), before);
    assert_eq!(dead_letters(&k).await, 0, "a lock timeout is not poison");
    blocker.rollback().await.expect("release");

    handle.wait_for(last, WAIT).await.expect("resumes once the lock is released");
    let ids: Vec<String> = (0..2).map(|a| format!("acct-{a}")).chain((0..2).map(|a| format!("late-{a}"))).collect();
    assert_eq!(rows(&k.store).await, expected_rows(&k, &ids).await);
    handle.stop().await;
    drop(admin);
    db.cleanup().await;
}

/// The service a stalled projection belongs to reports NOT_SERVING, and
/// SERVING again once it has caught up.
#[tokio::test]
async fn a_stalled_projection_makes_the_service_not_serving() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let t = spawn_ledger(&nats, &db).await;
    let mut client = t.client.clone();
    let channel = tonic::transport::Channel::from_shared(t.server.endpoint()).expect("endpoint").connect_lazy();
    let status = async || {
        let r = HealthClient::new(channel.clone()).check(HealthCheckRequest { service: String::new() }).await;
        r.ok().map(|r| r.into_inner().status())
    };
    open(&mut client, "acc").await;
    wait_until("SERVING", async || status().await == Some(ServingStatus::Serving)).await;

    let store = ReadStore::connect(&db.url).await.expect("second connection");
    sqlx::query("ALTER TABLE sample_accounts RENAME TO hidden").execute(store.pool()).await.expect("hide");
    let written = deposit(&mut client, "acc", 7).await.expect("the command is accepted: the stream is fine");
    wait_until("NOT_SERVING", async || status().await == Some(ServingStatus::NotServing)).await;

    sqlx::query("ALTER TABLE hidden RENAME TO sample_accounts").execute(store.pool()).await.expect("back");
    wait_until("SERVING again", async || status().await == Some(ServingStatus::Serving)).await;
    let view = client
        .get_account(gridwork_proto::gridwork::sample::v1::GetAccountRequest {
            account_id: "acc".into(),
            min_position: written.position.expect("position").sequence,
        })
        .await
        .expect("read")
        .into_inner();
    assert_eq!(view.balance, 7);
}

/// Many different commits failing at once is the environment, whatever the
/// error says: the runner parks up to the limit, then stalls.
#[tokio::test]
async fn a_burst_of_poison_across_different_commits_stalls_instead_of_parking_them_all() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let buggy = Buggy { buggy: Arc::new(AtomicBool::new(true)) };
    let config = RunnerConfig { poison_burst_limit: 2, ..quick() };
    let handle = ProjectionRunner::start(k.js.clone(), k.store.clone(), buggy.clone(), config).await.expect("start");
    let mut ids = Vec::new();
    let mut unlucky = Vec::new();
    for i in 0..5 {
        let id = format!("a{i}");
        open_raw(&k, &id).await;
        unlucky.push(deposit_raw(&k, &id, 13).await);
        ids.push(id);
    }
    wait_until("the burst stalls the runner", async || !k.store.stalled().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let parked = handle.parked().await.expect("parked");
    assert_eq!(parked.len(), 2, "parks up to the limit, then stalls: {parked:?}");
    assert_eq!(
        k.store.position("sample_accounts").await.expect("position"),
        unlucky[2] - 1,
        "stalled just before the third failing commit"
    );

    // The "poison" was the code: fixed, the runner carries on by itself.
    buggy.buggy.store(false, Ordering::SeqCst);
    let mut s = k.js.get_stream("SAMPLE").await.expect("stream");
    let last = s.info().await.expect("info").state.last_sequence;
    handle.wait_for(last, WAIT).await.expect("moves on once the cause is gone");
    assert!(k.store.stalled().is_empty());
    assert_eq!(handle.parked().await.expect("parked").len(), 2, "what was parked stays parked until replayed");
    let report = handle.replay_parked().await.expect("replay");
    assert_eq!((report.applied, report.still_failing), (2, 0));
    assert_eq!(rows(&k.store).await, expected_rows(&k, &ids).await);
    handle.stop().await;
}

/// A new read model over a long history passes a minute of live commits in a
/// moment: poison spread over that history is poison, not a burst, and must not
/// stall it for good. (Only parkings within the span of commits count.)
#[tokio::test]
async fn a_new_read_model_catches_up_through_poison_spread_over_the_history() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    open_raw(&k, "filler").await;
    let mut ids = vec!["filler".to_string()];
    for i in 0..6 {
        let id = format!("a{i}");
        open_raw(&k, &id).await;
        deposit_raw(&k, &id, 13).await; // poison to the buggy build
        for _ in 0..12 {
            deposit_raw(&k, "filler", 1).await;
        }
        ids.push(id);
    }
    let mut s = k.js.get_stream("SAMPLE").await.expect("stream");
    let last = s.info().await.expect("info").state.last_sequence;

    let buggy = Buggy { buggy: Arc::new(AtomicBool::new(true)) };
    let config = RunnerConfig { poison_burst_limit: 2, poison_burst_span: 10, ..quick() };
    let handle = ProjectionRunner::start(k.js.clone(), k.store.clone(), buggy.clone(), config).await.expect("start");
    handle.wait_for(last, WAIT).await.expect("catches up through all six, within a second");
    assert_eq!(handle.parked().await.expect("parked").len(), 6);
    assert!(k.store.stalled().is_empty());
    buggy.buggy.store(false, Ordering::SeqCst);
    assert_eq!(handle.replay_parked().await.expect("replay").applied, 6);
    assert_eq!(rows(&k.store).await, expected_rows(&k, &ids).await);
    handle.stop().await;
}

/// A poison commit parks its aggregate: later commits of the same subject wait
/// behind it (applying them would build on a state the read model never
/// reached), other aggregates carry on; replay applies them in stream order,
/// exactly once, and a rebuild afterwards agrees.
#[tokio::test]
async fn a_parked_aggregate_waits_behind_its_poison_commit_and_replays_in_order_once() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let buggy = Buggy { buggy: Arc::new(AtomicBool::new(true)) };
    let handle = ProjectionRunner::start(k.js.clone(), k.store.clone(), buggy.clone(), quick()).await.expect("start");

    open_raw(&k, "a").await;
    open_raw(&k, "b").await;
    let poison = deposit_raw(&k, "a", 13).await;
    let behind_1 = deposit_raw(&k, "a", 5).await;
    deposit_raw(&k, "b", 4).await;
    let behind_2 = deposit_raw(&k, "a", 2).await;
    // Bytes that are no commit at all, on a third subject.
    let mut h = HeaderMap::new();
    h.insert(headers::EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
    let garbage =
        k.js.publish_with_headers("sample.ledger.garbage", h, b"\xff not protobuf".as_ref().into())
            .await
            .expect("publish")
            .await
            .expect("ack")
            .sequence;
    let last = deposit_raw(&k, "b", 6).await;
    handle.wait_for(last, WAIT).await.expect("the projection moves on");

    let parked = handle.parked().await.expect("parked");
    let summary: Vec<(u64, &str, Option<u64>)> =
        parked.iter().map(|p| (p.sequence, p.subject.as_str(), p.blocked_by)).collect();
    assert_eq!(
        summary,
        [
            (poison, "sample.ledger.a", None),
            (behind_1, "sample.ledger.a", Some(poison)),
            (behind_2, "sample.ledger.a", Some(poison)),
            (garbage, "sample.ledger.garbage", None),
        ]
    );
    assert_eq!(parked[0].attempts, 2, "retried max_attempts times");
    assert_eq!(parked[3].attempts, 1, "undecodable bytes are not retried");
    assert_eq!(dead_letters(&k).await, 4, "each parking is logged for alerting");
    let now = rows(&k.store).await;
    assert_eq!(now, [("a".to_string(), 0, 0), ("b".to_string(), 10, 2)], "a stopped at its poison commit");

    // Still broken: replay applies nothing and keeps the order.
    let report = handle.replay_parked().await.expect("replay");
    assert_eq!((report.applied, report.still_failing), (0, 4));

    // Fixed: replay applies a's three commits in order, once; garbage stays.
    buggy.buggy.store(false, Ordering::SeqCst);
    let report = handle.replay_parked().await.expect("replay");
    assert_eq!((report.applied, report.still_failing), (3, 1));
    let again = handle.replay_parked().await.expect("replay again");
    assert_eq!((again.applied, again.still_failing), (0, 1), "replaying twice applies once");
    let ids = ["a".to_string(), "b".to_string()];
    assert_eq!(rows(&k.store).await, expected_rows(&k, &ids).await);

    // A later commit of a now applies directly, and a rebuild agrees.
    let later = deposit_raw(&k, "a", 1).await;
    handle.wait_for(later, WAIT).await.expect("applied");
    handle.rebuild().await.expect("rebuild");
    assert_eq!(rows(&k.store).await, expected_rows(&k, &ids).await, "the rebuild does not undo the replay");
    let left: Vec<u64> = handle.parked().await.expect("parked").iter().map(|p| p.sequence).collect();
    assert_eq!(left, [garbage]);
    handle.stop().await;
}

async fn rebuild_beside_a_live_runner_loses_nothing(db: TestDb) {
    let nats = NatsServer::start().await.expect("nats");
    let k = kernel(&nats, &db).await;
    let ids: Vec<String> = (0..6).map(|a| format!("acct-{a}")).collect();
    write_history(&k, "acct", 6, 5).await;
    // Two replicas of one service on one database.
    let a = ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, quick()).await.expect("a");
    let b = ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, quick()).await.expect("b");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, ids) = (stop.clone(), ids.clone());
        let repository = k.repository.clone();
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = &ids[i % ids.len()];
                repository.execute(id, &LedgerCommand::Deposit { amount: 1 }, &meta()).await.expect("deposit");
                i += 1;
                // A steady flow, not a flood: each rebuild replays the whole
                // stream, so an unthrottled writer (thousands a second) made
                // every rebuild longer than the last.
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    // Rebuild through a while writes flow and b applies them.
    for _ in 0..4 {
        a.rebuild().await.expect("rebuild");
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    let mut s = k.js.get_stream("SAMPLE").await.expect("stream");
    let last = s.info().await.expect("info").state.last_sequence;
    a.wait_for(last, WAIT).await.expect("a");
    b.wait_for(last, WAIT).await.expect("b");
    assert_eq!(rows(&k.store).await, expected_rows(&k, &ids).await, "no commit lost or doubled by the swaps");
    a.stop().await;
    b.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn a_rebuild_beside_a_second_live_runner_loses_no_commit_on_sqlite() {
    rebuild_beside_a_live_runner_loses_nothing(TestDb::sqlite().expect("db")).await;
}

#[tokio::test]
async fn a_rebuild_beside_a_second_live_runner_loses_no_commit_on_postgres() {
    let name = "a_rebuild_beside_a_second_live_runner_loses_no_commit_on_postgres";
    let Some(db) = TestDb::postgres(name).await.expect("pg") else { return };
    rebuild_beside_a_live_runner_loses_nothing(db).await;
}

#[tokio::test]
async fn of_two_concurrent_rebuilds_of_one_projection_one_is_refused_and_the_other_is_right_on_sqlite() {
    concurrent_rebuilds(TestDb::sqlite().expect("db")).await;
}

/// On PostgreSQL the claim must lock the owner row itself: the write lock that
/// serialises SQLite does not exist there.
#[tokio::test]
async fn of_two_concurrent_rebuilds_of_one_projection_one_is_refused_and_the_other_is_right_on_postgres() {
    let name = "of_two_concurrent_rebuilds_on_postgres";
    let Some(db) = TestDb::postgres(name).await.expect("pg") else { return };
    concurrent_rebuilds(db).await;
}

async fn concurrent_rebuilds(db: TestDb) {
    let nats = NatsServer::start().await.expect("nats");
    let k = kernel(&nats, &db).await;
    let last = write_history(&k, "acct", 5, 40).await;
    let a = ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, quick()).await.expect("a");
    let b = ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, quick()).await.expect("b");
    a.wait_for(last, WAIT).await.expect("a");
    for round in 0..3 {
        // Racing claims: one wins and the other is refused, or (when the first
        // finished before the second asked) both run in turn. Never anything
        // else — a lost claim, a dropped shadow table, wrong rows.
        let (ra, rb) = tokio::join!(a.rebuild(), b.rebuild());
        let refused = [&ra, &rb].iter().filter(|r| matches!(r, Err(RunnerError::RebuildRunning))).count();
        let done = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert!(done >= 1 && done + refused == 2, "round {round}: one rebuild at a time: {ra:?} {rb:?}");
    }
    // A claim held by a live rebuild elsewhere (fresh heartbeat): both refused.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
    sqlx::query(
        "INSERT INTO gridwork_projection_rebuilds (projection, owner, tag, heartbeat_ms) VALUES ($1, 'elsewhere', 'x', $2) \
         ON CONFLICT (projection) DO UPDATE SET owner = 'elsewhere', tag = 'x', heartbeat_ms = $2",
    )
    .bind("sample_accounts")
    .bind(now)
    .execute(k.store.pool())
    .await
    .expect("claim held elsewhere");
    for (who, r) in [("a", a.rebuild().await), ("b", b.rebuild().await)] {
        assert!(matches!(r, Err(RunnerError::RebuildRunning)), "{who} is refused while another rebuild runs: {r:?}");
    }
    sqlx::query("DELETE FROM gridwork_projection_rebuilds").execute(k.store.pool()).await.expect("released");
    let ids: Vec<String> = (0..5).map(|a| format!("acct-{a}")).collect();
    assert_eq!(rows(&k.store).await, expected_rows(&k, &ids).await);
    // No shadow tables are left behind.
    let listing = if k.store.backend().name() == "sqlite" {
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%shadow%'"
    } else {
        "SELECT CAST(tablename AS TEXT) FROM pg_tables WHERE tablename LIKE '%shadow%'"
    };
    let tables: Vec<(String,)> = sqlx::query_as(listing).fetch_all(k.store.pool()).await.expect("tables");
    assert!(tables.is_empty(), "left behind: {tables:?}");
    a.stop().await;
    b.stop().await;
    db.cleanup().await;
}

/// A claim left by a rebuild elsewhere is not judged dead by its heartbeat's
/// wall-clock age (after a database outage a live owner's heartbeat is just
/// as old, and replicas' clocks differ): only once this runner has seen it
/// unchanged for `rebuild_stale_after`, a new heartbeat starting the watch again.
#[tokio::test]
async fn a_rebuild_claim_is_taken_over_only_after_it_was_watched_unchanged() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let last = write_history(&k, "acct", 3, 5).await;
    let config = RunnerConfig { rebuild_stale_after: Duration::from_millis(600), ..quick() };
    let a = ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, config).await.expect("a");
    a.wait_for(last, WAIT).await.expect("a");
    let set_heartbeat = async |ms: i64| {
        sqlx::query(
            "INSERT INTO gridwork_projection_rebuilds (projection, owner, tag, heartbeat_ms)              VALUES ('sample_accounts', 'elsewhere', 'x', $1)              ON CONFLICT (projection) DO UPDATE SET owner = 'elsewhere', tag = 'x', heartbeat_ms = $1",
        )
        .bind(ms)
        .execute(k.store.pool())
        .await
        .expect("claim held elsewhere");
    };
    let refused = |r: &Result<_, RunnerError>| matches!(r, Err(RunnerError::RebuildRunning));
    // A heartbeat from 1970 by the wall clock, first seen now.
    set_heartbeat(1).await;
    let r = a.rebuild().await;
    assert!(refused(&r), "first sight of an old heartbeat: refused, {r:?}");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let r = a.rebuild().await;
    assert!(refused(&r), "watched for less than rebuild_stale_after: refused, {r:?}");
    // The owner heartbeats (it was only cut off): the watch starts again.
    set_heartbeat(2).await;
    let r = a.rebuild().await;
    assert!(refused(&r), "a new heartbeat: refused, {r:?}");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let r = a.rebuild().await;
    assert!(refused(&r), "the new heartbeat seen unchanged for 350 ms: refused, {r:?}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    a.rebuild().await.expect("unchanged for longer than rebuild_stale_after: taken over");
    let ids: Vec<String> = (0..3).map(|a| format!("acct-{a}")).collect();
    assert_eq!(rows(&k.store).await, expected_rows(&k, &ids).await);
    a.stop().await;
}

/// A rebuild meets again every commit the live tables parked. Those are known
/// poison, not an outage: a history with more of them than the burst limit
/// still rebuilds, and the rebuild does not trip the live runner's breaker.
#[tokio::test]
async fn a_rebuild_through_more_known_poison_than_the_burst_limit_completes() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let buggy = Buggy { buggy: Arc::new(AtomicBool::new(true)) };
    let config = RunnerConfig { poison_burst_limit: 2, poison_burst_window: Duration::from_millis(300), ..quick() };
    let handle = ProjectionRunner::start(k.js.clone(), k.store.clone(), buggy.clone(), config).await.expect("start");
    let mut ids = Vec::new();
    for i in 0..6 {
        let id = format!("a{i}");
        open_raw(&k, &id).await;
        let unlucky = deposit_raw(&k, &id, 13).await;
        // Spaced out: each is poison on its own, not a burst.
        handle.wait_for(unlucky, WAIT).await.expect("parked");
        tokio::time::sleep(Duration::from_millis(350)).await;
        ids.push(id);
    }
    assert_eq!(handle.parked().await.expect("parked").len(), 6);
    assert!(k.store.stalled().is_empty());

    let swapped = handle.rebuild().await.expect("a rebuild through known poison completes");
    assert_eq!(handle.parked().await.expect("parked").len(), 6, "the rebuild parked the same commits");
    // The live runner still parks a new poison commit on its own.
    open_raw(&k, "late").await;
    let late = deposit_raw(&k, "late", 13).await;
    assert!(late > swapped);
    handle.wait_for(late, WAIT).await.expect("the live runner is not tripped");
    assert_eq!(handle.parked().await.expect("parked").len(), 7);
    assert!(k.store.stalled().is_empty());

    buggy.buggy.store(false, Ordering::SeqCst);
    assert_eq!(handle.replay_parked().await.expect("replay").applied, 7);
    ids.push("late".into());
    assert_eq!(rows(&k.store).await, expected_rows(&k, &ids).await);
    handle.stop().await;
}

/// The runner's stall report ends with the runner, however it ends: a stopped
/// or crashed runner never keeps its service NOT_SERVING.
#[tokio::test]
async fn a_stall_report_ends_when_its_runner_stops_or_dies() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let before = write_history(&k, "acct", 1, 1).await;
    let first = ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, quick()).await.expect("start");
    first.wait_for(before, WAIT).await.expect("caught up");
    sqlx::query("ALTER TABLE sample_accounts RENAME TO sample_accounts_away")
        .execute(k.store.pool())
        .await
        .expect("hide");
    write_history(&k, "late", 1, 1).await;
    wait_until("the first runner stalls", async || !k.store.stalled().is_empty()).await;
    first.stop().await;
    assert!(k.store.stalled().is_empty(), "a stopped runner reports no stall");

    sqlx::query("ALTER TABLE sample_accounts_away RENAME TO sample_accounts_gone")
        .execute(k.store.pool())
        .await
        .expect("hide");
    // Started without the table it makes it; hide it again to stall.
    let second = ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, quick()).await.expect("start");
    sqlx::query("DROP TABLE sample_accounts").execute(k.store.pool()).await.expect("drop");
    wait_until("the second runner stalls", async || !k.store.stalled().is_empty()).await;
    second.abort();
    wait_until("a killed runner's report ends", async || k.store.stalled().is_empty()).await;
}

/// A runner stalled on a batch that another replica then applied has nothing
/// left to apply, so no batch ever comes to prove the database works: it must
/// find out by itself and report SERVING again.
#[tokio::test]
async fn a_stalled_runner_whose_work_another_replica_did_stops_reporting_a_stall() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let broken = Broken { broken: Arc::new(AtomicBool::new(true)) };
    let a = ProjectionRunner::start(k.js.clone(), k.store.clone(), broken.clone(), quick()).await.expect("a");
    let last = write_history(&k, "acct", 2, 3).await;
    wait_until("replica a stalls", async || !k.store.stalled().is_empty()).await;
    let b = ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, quick()).await.expect("b");
    b.wait_for(last, WAIT).await.expect("replica b applies everything");
    // Replica a's own database access is still "broken" for applying, but it
    // has nothing to apply: it is current, not stalled.
    wait_until("replica a sees it is current", async || k.store.stalled().is_empty()).await;
    a.wait_for(last, WAIT).await.expect("a reports b's position");
    let ids: Vec<String> = (0..2).map(|a| format!("acct-{a}")).collect();
    assert_eq!(rows(&k.store).await, expected_rows(&k, &ids).await);
    a.stop().await;
    b.stop().await;
}

/// The accounts projection whose every apply fails as the environment would
/// (a pool timeout) while `broken`.
#[derive(Clone)]
struct Broken {
    broken: Arc<AtomicBool>,
}

impl gridwork_eventstore::projection::Projection for Broken {
    fn name(&self) -> &str {
        Accounts.name()
    }
    fn tables(&self) -> &'static [TableDef] {
        Accounts.tables()
    }
    async fn apply(&self, tx: &mut AnyConnection, tables: Tables, commit: &RecordedCommit) -> Result<(), ApplyError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(ApplyError::Db(sqlx::Error::PoolTimedOut));
        }
        Accounts.apply(tx, tables, commit).await
    }
}

/// The source streams deny deletes, so a hole in one cannot happen by accident;
/// a stream set up without that protection (here: a copy of `SAMPLE` sourced
/// into `HOLEY`) can have one. The runner does not skip it: it stalls at the
/// commit before it, says which one is missing, and applies nothing past it.
#[tokio::test]
async fn a_commit_missing_from_the_stream_stalls_the_runner_instead_of_being_skipped() {
    use async_nats::jetstream::stream;
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let last = write_history(&k, "acct", 2, 4).await;
    let mut holey =
        k.js.create_stream(stream::Config {
            name: "HOLEY".into(),
            sources: Some(vec![stream::Source { name: "SAMPLE".into(), ..Default::default() }]),
            ..Default::default()
        })
        .await
        .expect("holey");
    wait_until("the copy is complete", async || holey.info().await.expect("info").state.last_sequence == last).await;
    let hole = 4;
    assert!(holey.delete_message(hole).await.expect("delete"));

    let config = RunnerConfig { stream: "HOLEY".into(), ..quick() };
    let handle = ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, config).await.expect("start");
    wait_until("the runner stalls on the hole", async || !k.store.stalled().is_empty()).await;
    let reason = k.store.stalled().into_iter().map(|(_, r)| r).collect::<Vec<_>>().join(" ");
    assert!(reason.contains(&format!("commit {hole} is missing")), "{reason}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(k.store.position("sample_accounts").await.expect("position"), hole - 1);
    assert_eq!(handle.position(), hole - 1);
    handle.stop().await;
}

/// After a NATS restart the client's ordered consumer may start over from the
/// stream's first message; the runner must notice and never report a position
/// lower than one it reported before.
#[tokio::test]
async fn the_position_never_moves_back_when_nats_restarts_under_the_runner() {
    let mut nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let first_runner = ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, quick()).await.expect("start");
    let first = write_history(&k, "acct", 4, 30).await;
    first_runner.wait_for(first, WAIT).await.expect("caught up");
    first_runner.stop().await;
    // A runner (re)started at its stored position, idle: its ordered consumer
    // has delivered nothing yet, which is when async-nats recreates it from the
    // stream's first message after the server comes back.
    let handle: Arc<RunnerHandle> =
        Arc::new(ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, quick()).await.expect("start"));
    assert_eq!(handle.position(), first);

    let lowest_after_peak = Arc::new(AtomicU64::new(u64::MAX));
    let watcher = {
        let (handle, lowest) = (handle.clone(), lowest_after_peak.clone());
        tokio::spawn(async move {
            let mut peak = 0;
            loop {
                let p = handle.position();
                if p < peak {
                    lowest.fetch_min(p, Ordering::SeqCst);
                }
                peak = peak.max(p);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    nats.restart().await.expect("restart");
    let last = write_history(&k, "late", 2, 10).await;
    handle.wait_for(last, WAIT).await.expect("caught up after the restart");
    tokio::time::sleep(Duration::from_millis(300)).await;
    watcher.abort();
    assert_eq!(lowest_after_peak.load(Ordering::SeqCst), u64::MAX, "the reported position went backwards");
    let ids: Vec<String> = (0..4).map(|a| format!("acct-{a}")).chain((0..2).map(|a| format!("late-{a}"))).collect();
    assert_eq!(rows(&k.store).await, expected_rows(&k, &ids).await);
}

/// The accounts projection, slow on the live tables only: the live runner lags
/// while a rebuild's replay races ahead of it.
#[derive(Clone)]
struct SlowLive;

impl gridwork_eventstore::projection::Projection for SlowLive {
    fn name(&self) -> &str {
        Accounts.name()
    }
    fn tables(&self) -> &'static [TableDef] {
        Accounts.tables()
    }
    async fn apply(&self, tx: &mut AnyConnection, tables: Tables, commit: &RecordedCommit) -> Result<(), ApplyError> {
        if tables.is_live() {
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        Accounts.apply(tx, tables, commit).await
    }
}

#[tokio::test]
async fn a_rebuild_that_runs_ahead_of_a_lagging_live_runner_swaps_in_without_applying_anything_twice_on_sqlite() {
    rebuild_ahead_of_live(TestDb::sqlite().expect("db")).await;
}

/// On PostgreSQL the two writers do not share one lock, so the rebuild really
/// runs ahead of the live runner.
#[tokio::test]
async fn a_rebuild_that_runs_ahead_of_a_lagging_live_runner_swaps_in_without_applying_anything_twice_on_postgres() {
    let name = "a_rebuild_that_runs_ahead_of_a_lagging_live_runner_on_postgres";
    let Some(db) = TestDb::postgres(name).await.expect("pg") else { return };
    rebuild_ahead_of_live(db).await;
}

async fn rebuild_ahead_of_live(db: TestDb) {
    let nats = NatsServer::start().await.expect("nats");
    let k = kernel(&nats, &db).await;
    let last = write_history(&k, "acct", 6, 40).await;
    let handle = ProjectionRunner::start(k.js.clone(), k.store.clone(), SlowLive, quick()).await.expect("start");
    // 240 commits at 3 ms each: the live runner is far behind when the rebuild
    // starts, and the rebuild's replay (not slowed) reaches the head first.
    let live_before = handle.position();
    assert!(live_before < last / 2, "the live runner lags ({live_before} of {last})");
    let swapped_at = handle.rebuild().await.expect("rebuild");
    assert_eq!(swapped_at, last, "the swap takes the shadow set's further position");
    handle.wait_for(last, WAIT).await.expect("caught up");
    assert!(handle.parked().await.expect("parked").is_empty(), "nothing applied twice, nothing parked");
    let ids: Vec<String> = (0..6).map(|a| format!("acct-{a}")).collect();
    assert_eq!(rows(&k.store).await, expected_rows(&k, &ids).await);
    handle.stop().await;
    db.cleanup().await;
}

/// The accounts projection, slow on a rebuild's shadow tables only: a rebuild
/// takes long enough to be interrupted.
#[derive(Clone)]
struct SlowShadow;

impl gridwork_eventstore::projection::Projection for SlowShadow {
    fn name(&self) -> &str {
        Accounts.name()
    }
    fn tables(&self) -> &'static [TableDef] {
        Accounts.tables()
    }
    async fn apply(&self, tx: &mut AnyConnection, tables: Tables, commit: &RecordedCommit) -> Result<(), ApplyError> {
        if !tables.is_live() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Accounts.apply(tx, tables, commit).await
    }
}

/// A rebuild under way when its environment fails — `fault` starts at once and
/// must end on its own — carries on from where it was and swaps in the right
/// rows; before, the failure threw the shadow set away.
async fn rebuild_rides_out(k: &Kernel, fault: impl AsyncFnOnce()) {
    let ids: Vec<String> = (0..6).map(|a| format!("acct-{a}")).collect();
    let last = write_history(k, "acct", 6, 40).await;
    // Small pulls: the rebuild's feed goes back to the server all along, not
    // only at its start (by default one pull holds this whole history).
    let config = RunnerConfig { fetch_batch: 16, ..quick() };
    let handle =
        Arc::new(ProjectionRunner::start(k.js.clone(), k.store.clone(), SlowShadow, config).await.expect("start"));
    handle.wait_for(last, WAIT).await.expect("caught up");
    let rebuild = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.rebuild().await })
    };
    // 246 commits at 10 ms each: the replay is a fifth of the way in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!rebuild.is_finished(), "the rebuild is still replaying when the fault comes");
    fault().await;
    let later = deposit_raw(k, "acct-0", 7).await;
    let swapped_at = rebuild.await.expect("task").expect("the rebuild rides the fault out");
    assert!(swapped_at >= last, "swapped at {swapped_at}");
    handle.wait_for(later, WAIT).await.expect("caught up");
    assert!(handle.parked().await.expect("parked").is_empty(), "nothing parked");
    assert_eq!(dead_letters(k).await, 0);
    assert_eq!(rows(&k.store).await, expected_rows(k, &ids).await);
    Arc::into_inner(handle).expect("one handle").stop().await;
}

#[tokio::test]
async fn a_rebuild_rides_out_a_nats_restart_without_starting_over() {
    let mut nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    rebuild_rides_out(&k, async || nats.restart().await.expect("restart")).await;
}

/// The database turns read-only under the replay (a failover) and back.
#[tokio::test]
async fn a_rebuild_rides_out_a_read_only_postgres_without_starting_over() {
    let name = "a_rebuild_rides_out_a_read_only_postgres_without_starting_over";
    let Some(db) = TestDb::postgres(name).await.expect("pg") else { return };
    let nats = NatsServer::start().await.expect("nats");
    let k = kernel(&nats, &db).await;
    let failover = async || {
        set_read_only(&db.url, true).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        set_read_only(&db.url, false).await;
    };
    rebuild_rides_out(&k, failover).await;
    db.cleanup().await;
}

/// A database restart or failover ends the pool's idle connections. The first
/// batch after a quiet spell must get a live connection, not fail on a dead
/// one and report an outage that is already over (NOT_SERVING for a backoff).
#[tokio::test]
async fn connections_that_died_while_idle_are_replaced_without_reporting_a_stall() {
    let name = "connections_that_died_while_idle_are_replaced_without_reporting_a_stall";
    let Some(db) = TestDb::postgres(name).await.expect("pg") else { return };
    let nats = NatsServer::start().await.expect("nats");
    let k = kernel(&nats, &db).await;
    // A stall, if one is reported, lasts a second: long enough to be seen.
    let config =
        RunnerConfig { retry_backoff: Duration::from_secs(1), max_stall_backoff: Duration::from_secs(1), ..quick() };
    let handle = ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, config).await.expect("start");
    let before = write_history(&k, "acct", 2, 2).await;
    handle.wait_for(before, WAIT).await.expect("caught up");
    {
        use sqlx::Connection as _;
        let mut admin = sqlx::PgConnection::connect(&db.url).await.expect("admin");
        assert!(end_other_sessions(&mut admin).await > 0, "the pool had connections to end");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stalled = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (store, stalled) = (k.store.clone(), stalled.clone());
        tokio::spawn(async move {
            loop {
                if !store.stalled().is_empty() {
                    stalled.store(true, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let last = write_history(&k, "late", 2, 3).await;
    handle.wait_for(last, WAIT).await.expect("applied");
    watcher.abort();
    assert!(!stalled.load(Ordering::SeqCst), "a dead idle connection was reported as an outage");
    let ids: Vec<String> = (0..2).map(|a| format!("acct-{a}")).chain((0..2).map(|a| format!("late-{a}"))).collect();
    assert_eq!(rows(&k.store).await, expected_rows(&k, &ids).await);
    handle.stop().await;
    db.cleanup().await;
}
