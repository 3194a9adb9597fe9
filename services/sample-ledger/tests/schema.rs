//! Schema evolution on a real nats-server and real databases: a rolling deploy
//! where the next build of the ledger writes an event type and an event
//! version the current build does not know, and a projection whose tables
//! change shape.
//!
//! The next build is written out below (`next`): it stores deposits at schema
//! version 2 (the amount became a `Money` message) with an upcaster from the
//! stored version 1, and has a new event, `sample.ledger.frozen`.

mod common;

use std::time::Duration;

use common::*;
use gridwork_eventstore::projection::store::{CHECKPOINTS, REBUILDS};
use gridwork_eventstore::projection::{
    ApplyError, Projection, ProjectionRunner, ReadStore, RunnerError, TableDef, Tables, UnknownEvents,
};
use gridwork_eventstore::{
    DomainEvent, ExecuteError, RecordedCommit, Repository, RepositoryOptions, StoreError, decode_stored,
};
use gridwork_sample_ledger::domain::ledger::LedgerCommand;
use gridwork_sample_ledger::events::LedgerEvent;
use gridwork_sample_ledger::projection::{ACCOUNTS, Accounts};
use gridwork_testkit::db::TestDb;
use gridwork_testkit::nats::NatsServer;
use sqlx::AssertSqlSafe;

const WAIT: Duration = Duration::from_secs(30);

/// The next build of the ledger.
mod next {
    use gridwork_eventstore::{Aggregate, DecodeError, DomainEvent, Upcaster};
    use gridwork_proto::gridwork::sample::v1 as pb;
    use gridwork_sample_ledger::domain::ledger::LedgerRejection;
    use prost::Message as _;

    pub const OPENED: &str = "sample.ledger.opened";
    pub const DEPOSITED: &str = "sample.ledger.deposited";
    pub const FROZEN: &str = "sample.ledger.frozen";

    /// Version 2 of `sample.ledger.deposited`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DepositedV2 {
        #[prost(int64, tag = "2")]
        pub balance_after: i64,
        #[prost(message, optional, tag = "3")]
        pub amount: Option<Money>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Money {
        #[prost(int64, tag = "1")]
        pub cents: i64,
        #[prost(string, tag = "2")]
        pub currency: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Frozen {
        #[prost(string, tag = "1")]
        pub reason: String,
    }

    #[derive(Debug, Clone, PartialEq)]
    pub enum Event {
        Opened { owner: String },
        Deposited { cents: i64, currency: String, balance_after: i64 },
        Frozen { reason: String },
    }

    /// v1 stored `amount` as plain cents (field 1); v2 is a `Money` in yuan cents.
    fn deposited_v1_to_v2(v1: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let old = pb::AmountDeposited::decode(v1).map_err(|e| DecodeError::new(DEPOSITED, e))?;
        Ok(DepositedV2 {
            balance_after: old.balance_after,
            amount: Some(Money { cents: old.amount, currency: "CNY".into() }),
        }
        .encode_to_vec())
    }

    static UPCASTERS: [Upcaster; 1] = [Upcaster { event_type: DEPOSITED, from_version: 1, upcast: deposited_v1_to_v2 }];

    impl DomainEvent for Event {
        fn event_type(&self) -> &'static str {
            match self {
                Event::Opened { .. } => OPENED,
                Event::Deposited { .. } => DEPOSITED,
                Event::Frozen { .. } => FROZEN,
            }
        }

        fn schema_version(&self) -> u32 {
            match self {
                Event::Deposited { .. } => 2,
                _ => 1,
            }
        }

        fn encode(&self) -> Vec<u8> {
            match self {
                Event::Opened { owner } => pb::AccountOpened { owner: owner.clone() }.encode_to_vec(),
                Event::Deposited { cents, currency, balance_after } => DepositedV2 {
                    balance_after: *balance_after,
                    amount: Some(Money { cents: *cents, currency: currency.clone() }),
                }
                .encode_to_vec(),
                Event::Frozen { reason } => Frozen { reason: reason.clone() }.encode_to_vec(),
            }
        }

        fn decode(event_type: &str, version: u32, payload: &[u8]) -> Result<Self, DecodeError> {
            let err = |e| DecodeError::new(event_type, e);
            match (event_type, version) {
                (OPENED, 1) => {
                    pb::AccountOpened::decode(payload).map(|e| Event::Opened { owner: e.owner }).map_err(err)
                }
                (DEPOSITED, 2) => DepositedV2::decode(payload)
                    .map(|e| {
                        let amount = e.amount.unwrap_or_default();
                        Event::Deposited {
                            cents: amount.cents,
                            currency: amount.currency,
                            balance_after: e.balance_after,
                        }
                    })
                    .map_err(err),
                (FROZEN, 1) => Frozen::decode(payload).map(|e| Event::Frozen { reason: e.reason }).map_err(err),
                _ => Err(DecodeError::unknown(event_type, format!("version {version} unknown to the next build"))),
            }
        }

        fn upcasters() -> &'static [Upcaster] {
            &UPCASTERS
        }
    }

    #[derive(Debug, Clone, Default)]
    pub struct Ledger {
        pub opened: bool,
        pub frozen: bool,
        pub balance: i64,
    }

    #[derive(Debug)]
    pub enum Command {
        Deposit(i64),
        Freeze(String),
    }

    impl Aggregate for Ledger {
        const CONTEXT: &'static str = "sample";
        const TYPE: &'static str = "ledger";
        const STATE_VERSION: u32 = 2;
        type Command = Command;
        type Event = Event;
        type Rejection = LedgerRejection;

        fn decide(&self, command: &Command) -> Result<Vec<Event>, LedgerRejection> {
            if !self.opened {
                return Err(LedgerRejection::AccountNotOpen);
            }
            Ok(match command {
                Command::Deposit(cents) => vec![Event::Deposited {
                    cents: *cents,
                    currency: "CNY".into(),
                    balance_after: self.balance + cents,
                }],
                Command::Freeze(reason) => vec![Event::Frozen { reason: reason.clone() }],
            })
        }

        fn evolve(mut self, event: &Event) -> Self {
            match event {
                Event::Opened { .. } => self.opened = true,
                Event::Deposited { balance_after, .. } => self.balance = *balance_after,
                Event::Frozen { .. } => self.frozen = true,
            }
            self
        }

        fn encode_state(&self) -> Vec<u8> {
            Vec::new()
        }

        fn decode_state(_: &[u8]) -> Result<Self, DecodeError> {
            Err(DecodeError::new("next ledger state", "not snapshotted"))
        }
    }
}

async fn next_build(k: &Kernel) -> Repository<next::Ledger> {
    Repository::new(k.js.clone(), "SAMPLE", None, RepositoryOptions::default()).await.expect("next build's repository")
}

/// An account opened and given 100 by the current build, then frozen and given
/// 50 (a v2 deposit) by the next: the sequence of the last commit the current
/// build can read, and the head.
async fn written_by_both_builds(k: &Kernel) -> (u64, u64) {
    k.repository.execute("acct", &LedgerCommand::Open { owner: "Wang".into() }, &meta()).await.expect("open");
    let known = k.repository.execute("acct", &LedgerCommand::Deposit { amount: 100 }, &meta()).await.expect("v1");
    let next = next_build(k).await;
    next.execute("acct", &next::Command::Freeze("audit".into()), &meta()).await.expect("freeze");
    let head = next.execute("acct", &next::Command::Deposit(50), &meta()).await.expect("v2").sequence;
    (known.sequence, head)
}

/// The `sample_accounts` projection as the next build has it: the same
/// tables, and it knows frozen accounts and v2 deposits.
struct NextAccounts;

impl Projection for NextAccounts {
    fn name(&self) -> &str {
        "sample_accounts"
    }

    fn tables(&self) -> &'static [TableDef] {
        &[ACCOUNTS]
    }

    async fn apply(
        &self,
        tx: &mut sqlx::AnyConnection,
        tables: Tables,
        commit: &RecordedCommit,
    ) -> Result<(), ApplyError> {
        let table = tables.name(ACCOUNTS.name);
        for event in commit.decode_events::<next::Event>()? {
            match event {
                next::Event::Opened { owner } => {
                    sqlx::query(AssertSqlSafe(format!(
                        "INSERT INTO {table} (account_id, owner, balance, movements, position, last_trace_id) \
                         VALUES ($1, $2, 0, 0, $3, '')"
                    )))
                    .bind(commit.aggregate_id())
                    .bind(owner)
                    .bind(commit.sequence as i64)
                    .execute(&mut *tx)
                    .await?;
                }
                next::Event::Deposited { balance_after, .. } => {
                    balance_moved(&table, balance_after, commit).execute(&mut *tx).await?;
                }
                next::Event::Frozen { .. } => {}
            }
        }
        Ok(())
    }
}

/// The current projection as a reader of another context's stream would be:
/// unknown events skipped.
struct Tolerant;

impl Projection for Tolerant {
    fn name(&self) -> &str {
        "sample_accounts"
    }

    fn tables(&self) -> &'static [TableDef] {
        Accounts.tables()
    }

    fn unknown_events(&self) -> UnknownEvents {
        UnknownEvents::Skip
    }

    async fn apply(
        &self,
        tx: &mut sqlx::AnyConnection,
        tables: Tables,
        commit: &RecordedCommit,
    ) -> Result<(), ApplyError> {
        Accounts.apply(tx, tables, commit).await
    }
}

/// A `deposited` payload exactly as version 1 stored it (amount 100 cents,
/// balance after 100): `08 64 10 64`. Never regenerate it from the code.
const DEPOSITED_V1_FIXTURE: [u8; 4] = [0x08, 0x64, 0x10, 0x64];

#[test]
fn a_stored_v1_event_is_read_by_the_build_that_has_v1_and_upcast_by_the_build_that_has_v2() {
    let current = decode_stored::<LedgerEvent>(next::DEPOSITED, 1, &DEPOSITED_V1_FIXTURE).expect("current build");
    assert_eq!(current, LedgerEvent::Deposited { amount: 100, balance_after: 100 });
    let upcast = decode_stored::<next::Event>(next::DEPOSITED, 1, &DEPOSITED_V1_FIXTURE).expect("next build upcasts");
    assert_eq!(upcast, next::Event::Deposited { cents: 100, currency: "CNY".into(), balance_after: 100 });
    // And the current build does not pretend to read what the next one writes.
    let v2 = upcast.encode();
    let err = decode_stored::<LedgerEvent>(next::DEPOSITED, 2, &v2).expect_err("v2 unknown to the current build");
    assert!(err.newer, "{err}");
}

/// During a rolling deploy the next build writes a `frozen` event and a v2
/// deposit. The next build reads the account's stored v1 deposits through its
/// upcaster; the current build cannot fold the account and says so with a
/// retryable error (UNAVAILABLE), never INTERNAL.
#[tokio::test]
async fn an_account_written_by_a_newer_build_is_unavailable_to_an_older_replica_and_upcast_by_the_newer() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    k.repository.execute("acct", &LedgerCommand::Open { owner: "Wang".into() }, &meta()).await.expect("open");
    k.repository.execute("acct", &LedgerCommand::Deposit { amount: 100 }, &meta()).await.expect("v1 deposit");

    let next = next_build(&k).await;
    assert_eq!(next.load_current("acct").await.expect("next loads v1 history").state.balance, 100);
    next.execute("acct", &next::Command::Deposit(50), &meta()).await.expect("v2 deposit");
    next.execute("acct", &next::Command::Freeze("audit".into()), &meta()).await.expect("freeze");
    let state = next.load_current("acct").await.expect("next loads its own").state;
    assert_eq!((state.balance, state.frozen), (150, true));

    let old = k.repository.load_current("acct").await.expect_err("the current build cannot fold it");
    assert!(matches!(old, StoreError::NewerData(_)), "{old:?}");
    let refused = k.repository.execute("acct", &LedgerCommand::Deposit { amount: 1 }, &meta()).await;
    assert!(matches!(refused, Err(ExecuteError::Store(StoreError::NewerData(_)))), "{refused:?}");
    let status: tonic::Status = gridwork_runtime::status::ServiceError::from(old).into();
    assert_eq!(status.code(), tonic::Code::Unavailable, "a retry can reach an upgraded replica: {status:?}");
}

/// The current build's projection meets the next build's events: it stalls
/// before them (nothing parked, nothing skipped), and once a replica with the
/// next build runs the projection it carries on from exactly there.
#[tokio::test]
async fn a_projection_stalls_at_events_from_a_newer_build_and_the_upgraded_one_carries_on() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let (known, head) = written_by_both_builds(&k).await;

    let current = ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, quick()).await.expect("current");
    current.wait_for(known, WAIT).await.expect("applies what it knows");
    let deadline = tokio::time::Instant::now() + WAIT;
    while k.store.stalled().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the projection says it is stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reason = k.store.stalled()[0].1.clone();
    assert!(reason.contains("upgrade this replica"), "{reason}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(current.position(), known, "nothing skipped");
    assert!(current.parked().await.expect("parked").is_empty(), "nothing parked");
    current.stop().await;

    let store = ReadStore::connect(&db.url).await.expect("upgraded replica's store");
    let upgraded = ProjectionRunner::start(k.js.clone(), store.clone(), NextAccounts, quick()).await.expect("next");
    upgraded.wait_for(head, WAIT).await.expect("the upgraded projection applies the rest");
    let rows = dump(&store).await;
    assert_eq!((rows[0].2, rows[0].3), (150, 2), "balance and movements include the v2 deposit");
    assert!(store.stalled().is_empty());
    upgraded.stop().await;
}

/// A rebuild by the current build meets the next build's commit: it swaps in
/// the tables up to the commit before it (where this build's live runner
/// waits anyway) rather than failing — a schema rebuild that failed there
/// would be started again from zero, over and over. The upgraded replica
/// carries on from there.
#[tokio::test]
async fn a_rebuild_meeting_a_newer_builds_commit_swaps_in_what_this_build_can_read() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let (known, head) = written_by_both_builds(&k).await;

    let current = ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, quick()).await.expect("current");
    current.wait_for(known, WAIT).await.expect("applies what it knows");
    let at = tokio::time::timeout(WAIT, current.rebuild()).await.expect("the rebuild ends").expect("rebuilt");
    assert_eq!(at, known, "swapped in up to the newer build's commit");
    let rows = dump(&k.store).await;
    assert_eq!((rows[0].2, rows[0].3), (100, 1), "the rebuilt tables hold what this build reads");
    assert!(current.parked().await.expect("parked").is_empty(), "nothing parked");
    let rebuilds: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM {REBUILDS}")))
        .fetch_one(k.store.pool())
        .await
        .expect("rebuilds");
    assert_eq!(rebuilds, 0, "the rebuild is over");
    current.stop().await;

    let store = ReadStore::connect(&db.url).await.expect("upgraded replica's store");
    let upgraded = ProjectionRunner::start(k.js.clone(), store.clone(), NextAccounts, quick()).await.expect("next");
    upgraded.wait_for(head, WAIT).await.expect("the upgraded projection applies the rest");
    let rows = dump(&store).await;
    assert_eq!((rows[0].2, rows[0].3), (150, 2));
    upgraded.stop().await;
}

/// An upgraded replica has already moved the live tables past the next
/// build's commit when an operator rebuilds on a replica of the current build
/// (same table version): the shadow set can never catch up to them. The
/// rebuild fails at once with the reason and leaves nothing behind — waiting
/// would hold the claim, and every other rebuild, until the replica is gone.
#[tokio::test]
async fn an_operators_rebuild_behind_live_tables_a_newer_build_moved_on_fails_and_lets_go() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let (_, head) = written_by_both_builds(&k).await;
    let upgraded = ProjectionRunner::start(k.js.clone(), k.store.clone(), NextAccounts, quick()).await.expect("next");
    upgraded.wait_for(head, WAIT).await.expect("the upgraded replica applies all");
    upgraded.stop().await;

    let store = ReadStore::connect(&db.url).await.expect("current replica's store");
    let current = ProjectionRunner::start(k.js.clone(), store.clone(), Accounts, quick()).await.expect("current");
    let refused = tokio::time::timeout(WAIT, current.rebuild()).await.expect("the rebuild answers");
    assert!(matches!(refused, Err(RunnerError::NewerData(_))), "{refused:?}");
    let count = |sql: String| {
        let pool = store.pool().clone();
        async move { sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql)).fetch_one(&pool).await.expect("count") }
    };
    assert_eq!(count(format!("SELECT COUNT(*) FROM {REBUILDS}")).await, 0, "the claim is let go");
    assert_eq!(
        count(format!("SELECT COUNT(*) FROM {CHECKPOINTS} WHERE projection LIKE 'sample_accounts#shadow-%'")).await,
        0,
        "the shadow set is dropped"
    );
    assert_eq!(dump(&store).await[0].2, 150, "the live tables are the upgraded replica's, untouched");
    current.stop().await;
}

/// A projection of another context's stream skips events it does not know and
/// applies the rest.
#[tokio::test]
async fn a_tolerant_projection_skips_unknown_events_and_applies_the_rest() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    for id in ["a", "b"] {
        k.repository.execute(id, &LedgerCommand::Open { owner: id.into() }, &meta()).await.expect("open");
    }
    next_build(&k).await.execute("a", &next::Command::Freeze("audit".into()), &meta()).await.expect("freeze");
    let head = k.repository.execute("b", &LedgerCommand::Deposit { amount: 7 }, &meta()).await.expect("b").sequence;
    let runner = ProjectionRunner::start(k.js.clone(), k.store.clone(), Tolerant, quick()).await.expect("tolerant");
    runner.wait_for(head, WAIT).await.expect("past the unknown event");
    let balances: Vec<(String, i64)> = dump(&k.store).await.into_iter().map(|r| (r.0, r.2)).collect();
    assert_eq!(balances, [("a".to_string(), 0), ("b".to_string(), 7)]);
    assert!(runner.parked().await.expect("parked").is_empty());
    assert!(k.store.stalled().is_empty());
    runner.stop().await;
}

/// `sample_accounts` at version 2: a new column.
const ACCOUNTS_V2: TableDef = TableDef {
    name: "sample_accounts",
    columns: "(account_id TEXT PRIMARY KEY, owner TEXT NOT NULL, balance BIGINT NOT NULL, \
              movements BIGINT NOT NULL, position BIGINT NOT NULL, last_trace_id TEXT NOT NULL, \
              largest_deposit BIGINT NOT NULL)",
    indexes: &["owner"],
};

/// The projection at version 2 (`sloppy`: the same tables, but the version not
/// raised); `pace` slows each commit of a rebuild down, so it can be watched.
struct AccountsV2 {
    version: u32,
    pace: Duration,
}

impl Projection for AccountsV2 {
    fn name(&self) -> &str {
        "sample_accounts"
    }

    fn tables(&self) -> &'static [TableDef] {
        &[ACCOUNTS_V2]
    }

    fn version(&self) -> u32 {
        self.version
    }

    async fn apply(
        &self,
        tx: &mut sqlx::AnyConnection,
        tables: Tables,
        commit: &RecordedCommit,
    ) -> Result<(), ApplyError> {
        let table = tables.name(ACCOUNTS_V2.name);
        if !tables.is_live() {
            tokio::time::sleep(self.pace).await;
        }
        for event in commit.decode_events::<LedgerEvent>()? {
            let statement = match event {
                LedgerEvent::Opened { owner } => sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {table} (account_id, owner, balance, movements, position, last_trace_id, \
                     largest_deposit) VALUES ($1, $2, 0, 0, $3, '', 0)"
                )))
                .bind(commit.aggregate_id().to_string())
                .bind(owner)
                .bind(commit.sequence as i64),
                LedgerEvent::Deposited { amount, balance_after } => sqlx::query(AssertSqlSafe(format!(
                    "UPDATE {table} SET balance = $1, movements = movements + 1, position = $2, \
                     largest_deposit = CASE WHEN largest_deposit > $3 THEN largest_deposit ELSE $3 END \
                     WHERE account_id = $4"
                )))
                .bind(balance_after)
                .bind(commit.sequence as i64)
                .bind(amount)
                .bind(commit.aggregate_id().to_string()),
                LedgerEvent::Withdrawn { balance_after, .. } => balance_moved(&table, balance_after, commit),
            };
            statement.execute(&mut *tx).await?;
        }
        Ok(())
    }
}

/// The statement both test projections run for a movement they keep no more of.
fn balance_moved<'q>(
    table: &str,
    balance_after: i64,
    commit: &RecordedCommit,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE {table} SET balance = $1, movements = movements + 1, position = $2 WHERE account_id = $3"
    )))
    .bind(balance_after)
    .bind(commit.sequence as i64)
    .bind(commit.aggregate_id().to_string())
}

async fn largest_deposits(store: &ReadStore) -> Vec<(String, i64, i64)> {
    sqlx::query_as("SELECT account_id, balance, largest_deposit FROM sample_accounts ORDER BY account_id")
        .fetch_all(store.pool())
        .await
        .expect("version 2 rows")
}

async fn stall_reason(store: &ReadStore) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some((_, reason)) = store.stalled().into_iter().next() {
            return reason;
        }
        assert!(tokio::time::Instant::now() < deadline, "the projection says it is stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A new table definition (a column added, the version raised) is rebuilt
/// into shadow tables and swapped in before anything is applied live; an old
/// replica still running version 1 on the same database stalls instead of
/// writing version-1 rows into version-2 tables; a definition changed without
/// raising the version stalls with a message saying so. Nothing is parked.
async fn table_changes(db: TestDb) {
    let nats = NatsServer::start().await.expect("nats");
    let k = kernel(&nats, &db).await;
    for (id, amounts) in [("a", [5, 9, 2]), ("b", [1, 1, 1])] {
        k.repository.execute(id, &LedgerCommand::Open { owner: id.into() }, &meta()).await.expect("open");
        for amount in amounts {
            k.repository.execute(id, &LedgerCommand::Deposit { amount }, &meta()).await.expect("deposit");
        }
    }
    let mut s = k.js.get_stream("SAMPLE").await.expect("stream");
    let head = s.info().await.expect("info").state.last_sequence;
    let v1 = ProjectionRunner::start(k.js.clone(), k.store.clone(), Accounts, quick()).await.expect("v1");
    v1.wait_for(head, WAIT).await.expect("v1 built");
    v1.stop().await;

    // Version 2 starts on the same database, two replicas at once: one
    // rebuilds, then both carry on. The other waits for that rebuild, and
    // neither may serve the older tables meanwhile — not even the waiting one
    // between its attempts to claim the rebuild.
    let v2_store = ReadStore::connect(&db.url).await.expect("v2 store");
    let twin_store = ReadStore::connect(&db.url).await.expect("twin store");
    let paced = || AccountsV2 { version: 2, pace: Duration::from_millis(100) };
    // Whatever either replica said before the swap, watched from the start.
    let watcher = {
        let (a, b) = (v2_store.clone(), twin_store.clone());
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            let mut said = Vec::new();
            while tokio::time::Instant::now() < deadline {
                said.extend(a.stalled().into_iter().chain(b.stalled()).map(|(_, reason)| reason));
                if sqlx::query("SELECT largest_deposit FROM sample_accounts").fetch_all(a.pool()).await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            said
        })
    };
    let (v2, twin) = tokio::join!(
        ProjectionRunner::start(k.js.clone(), v2_store.clone(), paced(), quick()),
        ProjectionRunner::start(k.js.clone(), twin_store.clone(), paced(), quick()),
    );
    let (v2, twin) = (v2.expect("v2"), twin.expect("twin"));
    let swapped =
        async || sqlx::query("SELECT largest_deposit FROM sample_accounts").fetch_all(v2_store.pool()).await.is_ok();
    // Until the swap, neither serves the older tables.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !swapped().await {
        for (who, store) in [("v2", &v2_store), ("twin", &twin_store)] {
            assert!(
                !store.stalled().is_empty() || swapped().await,
                "{who} serves the older tables while a rebuild runs"
            );
        }
        assert!(tokio::time::Instant::now() < deadline, "the rebuilt tables are swapped in");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The replica that rebuilds read version-1 tables in its start, so it
    // said so from then until its rebuild (paced, ≥ 0.8 s) swapped in. (On a
    // loaded machine the other's start can wait on SQLite's write lock until
    // after the swap, and then has nothing to say.)
    let said = watcher.await.expect("watcher");
    assert!(!said.is_empty(), "the rebuilding replica said it is not serving the older tables");
    assert!(said.iter().all(|r| r.contains("rebuilding its tables")), "{said:?}");
    v2.wait_for(head, WAIT).await.expect("v2 caught up");
    assert_eq!(largest_deposits(&v2_store).await, [("a".to_string(), 16, 9), ("b".to_string(), 3, 1)]);
    // The marker is cleared just after the swap's transaction commits.
    while !v2_store.stalled().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "serving after the swap: {:?}", v2_store.stalled());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(v2.parked().await.expect("parked").is_empty());
    // The twin serves once the tables are version 2's.
    while !twin_store.stalled().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the twin serves after the swap: {:?}", twin_store.stalled());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    twin.stop().await;

    // An old replica (version 1) beside it: it stalls, v2 keeps applying.
    let old_store = ReadStore::connect(&db.url).await.expect("old store");
    let old = ProjectionRunner::start(k.js.clone(), old_store.clone(), Accounts, quick()).await.expect("old");
    let later = k.repository.execute("a", &LedgerCommand::Deposit { amount: 20 }, &meta()).await.expect("deposit");
    v2.wait_for(later.sequence, WAIT).await.expect("v2 applies it");
    let reason = stall_reason(&old_store).await;
    assert!(reason.contains("newer than this build"), "{reason}");
    assert_eq!(largest_deposits(&v2_store).await, [("a".to_string(), 36, 20), ("b".to_string(), 3, 1)]);
    old.stop().await;
    v2.stop().await;

    // Changed tables without a raised version: stall, say why.
    let sloppy_store = ReadStore::connect(&db.url).await.expect("store");
    sqlx::query("UPDATE gridwork_projection_schemas SET hash = 'something else' WHERE projection = 'sample_accounts'")
        .execute(sloppy_store.pool())
        .await
        .expect("pretend the tables were defined otherwise");
    let sloppy = ProjectionRunner::start(
        k.js.clone(),
        sloppy_store.clone(),
        AccountsV2 { version: 2, pace: Duration::ZERO },
        quick(),
    )
    .await
    .expect("sloppy");
    let reason = stall_reason(&sloppy_store).await;
    assert!(reason.contains("raise Projection::version"), "{reason}");
    sloppy.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn a_changed_projection_table_is_rebuilt_not_poisoned_and_an_old_replica_stalls_on_sqlite() {
    table_changes(TestDb::sqlite().expect("db")).await;
}

#[tokio::test]
async fn a_changed_projection_table_is_rebuilt_not_poisoned_and_an_old_replica_stalls_on_postgres() {
    let name = "a_changed_projection_table_is_rebuilt_not_poisoned_and_an_old_replica_stalls_on_postgres";
    let Some(db) = TestDb::postgres(name).await.expect("pg") else { return };
    table_changes(db).await;
}
