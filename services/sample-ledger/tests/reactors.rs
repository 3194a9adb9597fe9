//! Reactors (process managers) on a real nats-server and real databases: a
//! command the store cannot take now stalls the reactor instead of parking the
//! commit, a crash between a command and the stored position sends it again
//! and it lands once, the position survives a restart, and a reactor is never
//! rebuilt.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::*;
use gridwork_eventstore::projection::runner::RunnerError;
use gridwork_eventstore::projection::{ApplyError, ProjectionRunner, RunnerHandle};
use gridwork_eventstore::{CommandMeta, ExecuteError, Reactor, RecordedCommit, Repository, StoreError};
use gridwork_sample_ledger::domain::ledger::{Ledger, LedgerCommand};
use gridwork_sample_ledger::events::LedgerEvent;
use gridwork_testkit::db::TestDb;
use gridwork_testkit::nats::NatsServer;
use sqlx::AnyConnection;

const WAIT: Duration = Duration::from_secs(30);
const WELCOME: i64 = 5;

/// Credits every newly opened account with a welcome deposit. Knobs: while
/// `unavailable`, every command fails as the store being unreachable would;
/// `lose_position` times, the command is sent and then the reaction fails
/// (the process died before its position was stored).
#[derive(Clone)]
struct Welcome {
    accounts: Repository<Ledger>,
    unavailable: Arc<AtomicBool>,
    lose_position: Arc<AtomicU32>,
    /// Set `unavailable` as soon as a position is lost: the reactor stays
    /// down, between its command and its position, until the test lets it on.
    down_after_loss: Arc<AtomicBool>,
    sent: Arc<AtomicU32>,
}

impl Welcome {
    fn new(accounts: Repository<Ledger>) -> Self {
        Self {
            accounts,
            unavailable: Arc::default(),
            lose_position: Arc::default(),
            down_after_loss: Arc::default(),
            sent: Arc::default(),
        }
    }
}

impl Reactor for Welcome {
    fn name(&self) -> &str {
        "welcome"
    }

    async fn react(&self, _tx: &mut AnyConnection, commit: &RecordedCommit) -> Result<(), ApplyError> {
        for event in commit.decode_events::<LedgerEvent>()? {
            let LedgerEvent::Opened { .. } = event else { continue };
            if self.unavailable.load(Ordering::SeqCst) {
                return Err(ApplyError::from_store(StoreError::Unavailable("nats: connection refused".into())));
            }
            let account = commit.aggregate_id();
            let meta = CommandMeta {
                command_id: format!("welcome-{account}"),
                principal: "service:welcome".into(),
                decided_at_unix_ms: commit.body.decided_at_unix_ms,
                request_digest: 0,
            };
            match self.accounts.execute(account, &LedgerCommand::Deposit { amount: WELCOME }, &meta).await {
                Ok(_) => {}
                Err(ExecuteError::Rejected(r)) => return Err(ApplyError::Invalid(r.to_string())),
                Err(ExecuteError::Store(e)) => return Err(ApplyError::from_store(e)),
            }
            self.sent.fetch_add(1, Ordering::SeqCst);
            if self.lose_position.load(Ordering::SeqCst) > 0 {
                self.lose_position.fetch_sub(1, Ordering::SeqCst);
                if self.down_after_loss.load(Ordering::SeqCst) {
                    self.unavailable.store(true, Ordering::SeqCst);
                }
                return Err(ApplyError::Unavailable("the process died before storing its position".into()));
            }
        }
        Ok(())
    }
}

async fn open(k: &Kernel, account: &str) -> u64 {
    k.repository.execute(account, &LedgerCommand::Open { owner: "Zhou".into() }, &meta()).await.expect("open").sequence
}

async fn balance(k: &Kernel, account: &str) -> i64 {
    k.repository.load_current(account).await.expect("load").state.balance
}

async fn start(k: &Kernel, welcome: &Welcome) -> RunnerHandle {
    ProjectionRunner::start_reactor(k.js.clone(), k.store.clone(), welcome.clone(), quick()).await.expect("reactor")
}

/// While the store cannot take its commands the reactor stalls — position
/// held, NOT_SERVING, nothing parked however long it lasts — and once it can,
/// every account gets its welcome exactly once.
#[tokio::test]
async fn a_command_the_store_cannot_take_stalls_and_is_never_parked() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let welcome = Welcome::new(k.repository.clone());
    let reactor = start(&k, &welcome).await;
    let first = open(&k, "a").await;
    reactor.wait_for(first, WAIT).await.expect("reacted");
    welcome.unavailable.store(true, Ordering::SeqCst);
    let mut opened = Vec::new();
    for account in ["b", "c", "d"] {
        opened.push(open(&k, account).await);
    }
    // Far longer than max_attempts × retry_backoff, which would park a poison commit.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert!(reactor.position() < opened[0], "position moved past a commit whose command failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(k.store.stalled().iter().any(|(name, _)| name == "welcome"), "stalled: {:?}", k.store.stalled());
    assert!(reactor.parked().await.expect("parked").is_empty(), "nothing parked");

    welcome.unavailable.store(false, Ordering::SeqCst);
    let last = *opened.last().expect("opened");
    reactor.wait_for(last, WAIT).await.expect("caught up");
    for account in ["a", "b", "c", "d"] {
        assert_eq!(balance(&k, account).await, WELCOME, "{account}");
    }
    assert!(k.store.stalled().is_empty(), "serving again");
}

/// The command landed, the position did not (the process died in between):
/// the commit is reacted to again and the second send is answered by the
/// first's commit — one welcome, not two.
#[tokio::test]
async fn a_reaction_repeated_after_a_lost_position_lands_once() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let welcome = Welcome::new(k.repository.clone());
    welcome.lose_position.store(3, Ordering::SeqCst);
    let reactor = start(&k, &welcome).await;
    let opened = open(&k, "a").await;
    reactor.wait_for(opened, WAIT).await.expect("reacted");
    assert_eq!(welcome.sent.load(Ordering::SeqCst), 4, "sent once and again after each lost position");
    assert_eq!(balance(&k, "a").await, WELCOME, "one welcome");
}

/// The process manager's half of the idempotency horizon. The reactor sends
/// its welcome, dies before storing its position and stays down past the
/// server's duplicate window, while the account takes more commits than it
/// remembers ids of; back, it sends the welcome again under the same derived
/// id (no UUIDv7 time). Only the command index can still tell — and it lives
/// in the reactor's own SQLite file, whose write lock the reactor holds while
/// it sends. Before the index was asked for derived ids, this deposited the
/// welcome twice.
#[tokio::test]
async fn a_reaction_repeated_past_the_dedupe_window_and_the_remembered_ids_lands_once() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    shrink_dedupe_window(&k.js).await;
    let index = command_index(&k).await;
    let accounts = k.repository.clone().with_command_index(index);
    let welcome = Welcome::new(accounts.clone());
    welcome.lose_position.store(1, Ordering::SeqCst);
    welcome.down_after_loss.store(true, Ordering::SeqCst);
    let reactor = start(&k, &welcome).await;

    let opened = open(&k, "a").await;
    let deadline = Instant::now() + WAIT;
    while welcome.sent.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the welcome was never sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..70 {
        accounts.execute("a", &LedgerCommand::Deposit { amount: 1 }, &meta()).await.expect("later deposit");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(reactor.position() < opened, "the position was lost");

    welcome.unavailable.store(false, Ordering::SeqCst);
    reactor.wait_for(opened, WAIT).await.expect("reacted again");
    assert_eq!(welcome.sent.load(Ordering::SeqCst), 2, "sent, and sent again after the lost position");
    assert_eq!(balance(&k, "a").await, WELCOME + 70, "one welcome");
}

/// The position is durable: a restarted reactor does not react again to what
/// it already handled, and picks up what arrived while it was down.
#[tokio::test]
async fn a_restarted_reactor_resumes_after_its_position() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let welcome = Welcome::new(k.repository.clone());
    let reactor = start(&k, &welcome).await;
    reactor.wait_for(open(&k, "a").await, WAIT).await.expect("reacted");
    reactor.stop().await;
    let while_down = open(&k, "b").await;

    let again = Welcome::new(k.repository.clone());
    let reactor = start(&k, &again).await;
    reactor.wait_for(while_down, WAIT).await.expect("caught up");
    // "a" is not reacted to again: the only command sent is b's.
    assert_eq!(again.sent.load(Ordering::SeqCst), 1);
    assert_eq!((balance(&k, "a").await, balance(&k, "b").await), (WELCOME, WELCOME));
}

/// A reactor is never rebuilt: replaying history would send every command
/// again.
#[tokio::test]
async fn a_reactor_is_never_rebuilt() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let welcome = Welcome::new(k.repository.clone());
    let reactor = start(&k, &welcome).await;
    let opened = open(&k, "a").await;
    reactor.wait_for(opened, WAIT).await.expect("reacted");
    let refused = reactor.rebuild().await;
    assert!(matches!(refused, Err(RunnerError::NotRebuildable(_))), "{refused:?}");
    assert_eq!(reactor.position(), opened);
    assert_eq!(welcome.sent.load(Ordering::SeqCst), 1);
}

/// What a failed command means for a reactor: only a command that can never
/// be taken is poison.
#[test]
fn store_failures_are_poison_only_when_no_retry_can_succeed() {
    let poison = [
        StoreError::InvalidCommandId("empty".into()),
        StoreError::TooLarge("2 MiB".into()),
        StoreError::CommandIdReused { command_id: "x".into() },
    ];
    for e in poison {
        assert!(ApplyError::from_store(e).is_poison());
    }
    let environment = [
        StoreError::Unavailable("timeout".into()),
        StoreError::Conflict { subject: "s".into(), attempts: 12 },
        StoreError::Misconfigured("stream not found".into()),
        StoreError::NewerData(gridwork_eventstore::DecodeError::unknown("event", "v9")),
    ];
    for e in environment {
        assert!(!ApplyError::from_store(e).is_poison());
    }
}
