//! What a command id means, on a real nats-server: a refusal decided on a stale
//! cache is checked by the server like any write, every outcome (events, no-op,
//! refusal) is remembered under its command id, and an id reused for another
//! request is refused.

mod common;

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

    let withdrawn = a.execute("acct", &LedgerCommand::Withdraw { amount: 60 }, &meta()).await;
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
    let withdraw = meta();
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
