//! The projection runner on a real nats-server, on SQLite and PostgreSQL:
//! exactly-once effects across crashes, rebuild equality, read-your-writes.
//! Faults (outages, poison, rebuild races, NATS restarts) are in `faults.rs`.

mod common;

use std::time::Duration;

use common::*;
use gridwork_eventstore::projection::{ProjectionRunner, RunnerConfig};
use gridwork_proto::gridwork::sample::v1 as pb;
use gridwork_sample_ledger::domain::ledger::LedgerCommand;
use gridwork_sample_ledger::projection::Accounts;
use gridwork_testkit::db::TestDb;
use gridwork_testkit::nats::NatsServer;
use rand::Rng as _;

const WAIT: Duration = Duration::from_secs(60);

fn small_batches() -> RunnerConfig {
    RunnerConfig { batch_size: 7, batch_wait: Duration::from_millis(2), ..RunnerConfig::new("SAMPLE") }
}

/// Expected rows straight from the aggregates, for comparison.
async fn expected(k: &Kernel, prefix: &str, accounts: usize) -> Vec<(String, i64, i64)> {
    let mut out = Vec::new();
    for a in 0..accounts {
        let id = format!("{prefix}-{a}");
        let loaded = k.repository.load_cold(&id).await.expect("load");
        out.push((id, loaded.state.balance, loaded.recent.len() as i64 - 1));
    }
    out.sort();
    out
}

async fn killed_projection_applies_every_commit_exactly_once(db: TestDb) {
    let nats = NatsServer::start().await.expect("nats");
    let k = kernel(&nats, &db).await;
    let last = write_history(&k, "acct", 12, 40).await;

    // Start and kill the runner at random moments — mid-transaction, between a
    // commit and the position update, between batches — many times.
    let mut rng = rand::rng();
    for _ in 0..25 {
        let handle =
            ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, small_batches()).await.expect("start");
        tokio::time::sleep(Duration::from_millis(rng.random_range(1..25))).await;
        handle.abort();
    }
    let handle =
        ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, small_batches()).await.expect("start");
    handle.wait_for(last, WAIT).await.expect("caught up");

    let rows = dump(&k.store).await;
    let got: Vec<(String, i64, i64)> = rows.iter().map(|r| (r.0.clone(), r.2, r.3)).collect();
    // `movements` is incremented, not set: any commit applied twice shows here.
    assert_eq!(got, expected(&k, "acct", 12).await);
    let total_movements: i64 = rows.iter().map(|r| r.3).sum();
    assert_eq!(total_movements, 12 * 40);
    assert_eq!(k.store.position("sample_accounts").await.expect("position"), last);
    handle.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn a_killed_projection_applies_every_commit_exactly_once_on_sqlite() {
    killed_projection_applies_every_commit_exactly_once(TestDb::sqlite().expect("db")).await;
}

#[tokio::test]
async fn a_killed_projection_applies_every_commit_exactly_once_on_postgres() {
    let Some(db) =
        TestDb::postgres("a_killed_projection_applies_every_commit_exactly_once_on_postgres").await.expect("pg")
    else {
        return;
    };
    killed_projection_applies_every_commit_exactly_once(db).await;
}

async fn rebuilt_projection_equals_the_live_one(db: TestDb, fresh: TestDb) {
    let nats = NatsServer::start().await.expect("nats");
    let k = kernel(&nats, &db).await;
    write_history(&k, "acct", 10, 30).await;
    let live = ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, small_batches()).await.expect("start");

    // Rebuild while commands keep landing.
    let writer = {
        let repository = k.repository.clone();
        tokio::spawn(async move {
            let mut last = 0;
            for i in 0..150 {
                let id = format!("acct-{}", i % 10);
                last = repository
                    .execute(&id, &LedgerCommand::Deposit { amount: 3 }, &meta())
                    .await
                    .expect("deposit")
                    .sequence;
            }
            last
        })
    };
    let swapped_at = live.rebuild().await.expect("rebuild");
    let last = writer.await.expect("writer");
    assert!(swapped_at > 0);
    live.wait_for(last, WAIT).await.expect("caught up");

    // An independent projection from zero into another database.
    let other = gridwork_eventstore::projection::ReadStore::connect(&fresh.url).await.expect("fresh store");
    let reference = ProjectionRunner::start(k.js.clone(), other.clone(), Accounts, RunnerConfig::new("SAMPLE"))
        .await
        .expect("start");
    reference.wait_for(last, WAIT).await.expect("caught up");

    let rebuilt = dump(&k.store).await;
    assert_eq!(rebuilt.len(), 10);
    assert_eq!(rebuilt, dump(&other).await);
    // The shadow set is gone, and a second rebuild works too.
    live.rebuild().await.expect("second rebuild");
    assert_eq!(dump(&k.store).await, dump(&other).await);
    live.stop().await;
    reference.stop().await;
    db.cleanup().await;
    fresh.cleanup().await;
}

#[tokio::test]
async fn a_rebuilt_projection_equals_the_live_one_on_sqlite() {
    rebuilt_projection_equals_the_live_one(TestDb::sqlite().expect("db"), TestDb::sqlite().expect("db")).await;
}

#[tokio::test]
async fn a_rebuilt_projection_equals_the_live_one_on_postgres() {
    let name = "a_rebuilt_projection_equals_the_live_one_on_postgres";
    let (Some(db), Some(fresh)) =
        (TestDb::postgres(name).await.expect("pg"), TestDb::postgres(name).await.expect("pg"))
    else {
        return;
    };
    rebuilt_projection_equals_the_live_one(db, fresh).await;
}

#[tokio::test]
async fn a_read_with_min_position_sees_the_write_it_follows() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let t = spawn_ledger(&nats, &db).await;
    let mut client = t.client.clone();
    let account = gridwork_testkit::unique_id("ryw");
    open(&mut client, &account).await;
    for i in 1..=20 {
        let resp = deposit(&mut client, &account, 1).await.expect("deposit");
        let view = client
            .get_account(pb::GetAccountRequest {
                account_id: account.clone(),
                min_position: resp.position.expect("position").sequence,
            })
            .await
            .expect("read")
            .into_inner();
        assert_eq!(view.balance, i, "the read reflects the write it follows");
    }
    // A position beyond the stream's head is no write's: refused at once,
    // naming the field, not waited on until the deadline.
    let mut request = tonic::Request::new(pb::GetAccountRequest { account_id: account, min_position: 1_000_000 });
    request.set_timeout(Duration::from_secs(30));
    let asked = std::time::Instant::now();
    let err = client.get_account(request).await.expect_err("cannot reach");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("min_position"), "{err:?}");
    assert!(asked.elapsed() < Duration::from_secs(5), "answered at once, not at the deadline");
}

async fn two_runners_share_one_database(db: TestDb) {
    let nats = NatsServer::start().await.expect("nats");
    let k = kernel(&nats, &db).await;
    let last = write_history(&k, "acct", 8, 30).await;
    // Two replicas of one service, one projection, one database.
    let a = ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, small_batches()).await.expect("a");
    let b = ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, small_batches()).await.expect("b");
    a.wait_for(last, WAIT).await.expect("a caught up");
    b.wait_for(last, WAIT).await.expect("b caught up");
    let rows = dump(&k.store).await;
    let got: Vec<(String, i64, i64)> = rows.iter().map(|r| (r.0.clone(), r.2, r.3)).collect();
    assert_eq!(got, expected(&k, "acct", 8).await, "every commit applied exactly once");
    let mut dlq = k.js.get_stream("DLQ_SAMPLE").await.expect("dlq");
    let dlq = dlq.info().await.expect("info").state.messages;
    assert_eq!(dlq, 0, "nothing parked by the contention");
    a.stop().await;
    b.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn two_runners_of_one_projection_on_one_sqlite_database_apply_each_commit_once() {
    two_runners_share_one_database(TestDb::sqlite().expect("db")).await;
}

#[tokio::test]
async fn two_runners_of_one_projection_on_one_postgres_database_apply_each_commit_once() {
    let Some(db) = TestDb::postgres("two_runners_of_one_projection_on_one_postgres_database_apply_each_commit_once")
        .await
        .expect("pg")
    else {
        return;
    };
    two_runners_share_one_database(db).await;
}

/// `Accounts` with the kernel's default batch apply: every commit through
/// `apply`, one statement per event.
struct OneByOne;

impl gridwork_eventstore::projection::Projection for OneByOne {
    fn name(&self) -> &str {
        Accounts.name()
    }
    fn tables(&self) -> &'static [gridwork_eventstore::projection::TableDef] {
        Accounts.tables()
    }
    async fn apply(
        &self,
        tx: &mut sqlx::AnyConnection,
        tables: gridwork_eventstore::projection::Tables,
        commit: &gridwork_eventstore::RecordedCommit,
    ) -> Result<(), gridwork_eventstore::projection::ApplyError> {
        Accounts.apply(tx, tables, commit).await
    }
}

/// A deposit on an account that was never opened, published as a commit
/// (no aggregate would decide it): poison for the accounts read model.
async fn ghost_deposit(k: &Kernel) -> u64 {
    use gridwork_eventstore::envelope::{Decision, encode_commit};
    use gridwork_sample_ledger::domain::ledger::Ledger;
    use gridwork_sample_ledger::events::LedgerEvent;
    let events = [LedgerEvent::Deposited { amount: 7, balance_after: 7 }];
    let (headers, body) = encode_commit::<Ledger>("ghost", 0, &meta(), Decision::Events(&events));
    k.js.publish_with_headers("sample.ledger.ghost", headers, body).await.expect("publish").await.expect("ack").sequence
}

/// The accounts projection folds each batch in memory and writes one upsert
/// per batch; the rows must be exactly those of applying every commit on its
/// own (refusals and no-ops included), and a poison commit inside a batch is
/// found and parked alone.
async fn a_batch_leaves_the_rows_of_one_commit_at_a_time(db: TestDb, fresh: TestDb) {
    let nats = NatsServer::start().await.expect("nats");
    let k = kernel(&nats, &db).await;
    write_history(&k, "acct", 20, 12).await;
    // An owner an array literal must quote and escape (PostgreSQL's batch
    // goes as one array per column).
    let awkward = LedgerCommand::Open { owner: r#"Lü "Big" \ {Wang}, NULL"#.into() };
    k.repository.execute("acct-awkward", &awkward, &common::client_meta()).await.expect("open");
    let ghost = ghost_deposit(&k).await;
    let mut rng = rand::rng();
    let mut last = 0;
    for _ in 0..400 {
        let id = format!("acct-{}", rng.random_range(0..20));
        let command = match rng.random_range(0..3) {
            0 => LedgerCommand::Withdraw { amount: rng.random_range(1..40_000) }, // some refused
            1 => LedgerCommand::Open { owner: "again".into() },                   // refused
            _ => LedgerCommand::Deposit { amount: rng.random_range(1..100) },
        };
        last = match k.repository.execute(&id, &command, &common::client_meta()).await {
            Ok(outcome) => outcome.sequence.max(last),
            Err(_) => last,
        };
    }
    let head = k.repository.load_current("acct-0").await.expect("load").sequence.max(last).max(ghost);
    let big = RunnerConfig { batch_size: 500, batch_wait: Duration::from_millis(50), ..quick() };
    let batched = ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, big.clone()).await.expect("start");
    let other = gridwork_eventstore::projection::ReadStore::connect(&fresh.url).await.expect("fresh store");
    // And with a read-ahead budget smaller than any batch: each goes through alone.
    let starved = RunnerConfig { read_ahead_bytes: 1, ..big };
    let single = ProjectionRunner::start(k.js.clone(), other.clone(), OneByOne, starved).await.expect("start");
    let mut stream = k.js.get_stream("SAMPLE").await.expect("stream");
    let end = stream.info().await.expect("info").state.last_sequence.max(head);
    batched.wait_for(end, WAIT).await.expect("batched caught up");
    single.wait_for(end, WAIT).await.expect("one by one caught up");

    let rows = dump(&k.store).await;
    assert_eq!(rows.len(), 21);
    assert!(rows.iter().any(|r| r.1 == r#"Lü "Big" \ {Wang}, NULL"#), "the owner as written: {rows:?}");
    assert_eq!(rows, dump(&other).await, "the same rows, batched or one at a time");
    let parked: Vec<u64> = batched.parked().await.expect("parked").iter().map(|p| p.sequence).collect();
    assert_eq!(parked, vec![ghost], "only the poison commit is parked");
    batched.stop().await;
    single.stop().await;
    db.cleanup().await;
    fresh.cleanup().await;
}

#[tokio::test]
async fn a_batch_leaves_the_rows_of_one_commit_at_a_time_on_sqlite() {
    a_batch_leaves_the_rows_of_one_commit_at_a_time(TestDb::sqlite().expect("db"), TestDb::sqlite().expect("db")).await;
}

#[tokio::test]
async fn a_batch_leaves_the_rows_of_one_commit_at_a_time_on_postgres() {
    let name = "a_batch_leaves_the_rows_of_one_commit_at_a_time_on_postgres";
    let (Some(db), Some(fresh)) =
        (TestDb::postgres(name).await.expect("pg"), TestDb::postgres(name).await.expect("pg"))
    else {
        return;
    };
    a_batch_leaves_the_rows_of_one_commit_at_a_time(db, fresh).await;
}

/// A batch written as PostgreSQL arrays reads back exactly: quotes,
/// backslashes, braces, commas, the word NULL, empty strings and NULLs. (A
/// malformed literal would only show as a batch falling back to one commit
/// at a time, so the literals are checked against the server directly.)
#[tokio::test]
async fn array_literals_round_trip_through_postgres() {
    let Some(db) = TestDb::postgres("array_literals_round_trip_through_postgres").await.expect("pg") else {
        return;
    };
    let store = gridwork_eventstore::projection::ReadStore::connect(&db.url).await.expect("store");
    let values = [Some(r#"Lü "Big" \ {Wang}, NULL"#), None, Some(""), Some("NULL"), Some(r#"\\""#), Some("网格 ,}{")];
    let literal = gridwork_eventstore::projection::pg_array::text(values);
    let back: Vec<(Option<String>,)> =
        sqlx::query_as("SELECT v FROM UNNEST($1::text[]) WITH ORDINALITY AS t(v, n) ORDER BY n")
            .bind(literal)
            .fetch_all(store.pool())
            .await
            .expect("unnest");
    let back: Vec<Option<String>> = back.into_iter().map(|(v,)| v).collect();
    assert_eq!(back, values.map(|v| v.map(str::to_string)).to_vec());
    let numbers = gridwork_eventstore::projection::pg_array::bigint([i64::MIN, 0, i64::MAX]);
    let back: Vec<(i64,)> = sqlx::query_as("SELECT v FROM UNNEST($1::bigint[]) WITH ORDINALITY AS t(v, n) ORDER BY n")
        .bind(numbers)
        .fetch_all(store.pool())
        .await
        .expect("unnest");
    assert_eq!(back, vec![(i64::MIN,), (0,), (i64::MAX,)]);
    db.cleanup().await;
}
