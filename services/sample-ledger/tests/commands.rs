//! Commands through gRPC on a real nats-server: concurrency, idempotency,
//! multi-event commits, bad input.

mod common;

use std::collections::HashSet;

use common::*;
use futures::future::join_all;
use gridwork_eventstore::envelope::headers;
use gridwork_proto::gridwork::sample::v1 as pb;
use gridwork_testkit::db::TestDb;
use gridwork_testkit::nats::NatsServer;
use gridwork_testkit::unique_id;
use tonic::Code;
use tonic_types::StatusExt as _;

async fn stream_commits(nats: &NatsServer, subject: &str) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("SAMPLE").await.expect("stream");
    let last = stream.info().await.expect("info").state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = stream.direct_get(seq).await
            && m.subject.as_str() == subject
        {
            out.push(m);
        }
    }
    out
}

/// The commits among `commits` that carry events (a refusal or a no-op is
/// stored too, with none).
fn with_events(commits: &[async_nats::jetstream::message::StreamMessage]) -> usize {
    commits
        .iter()
        .filter(|m| {
            let c = gridwork_eventstore::RecordedCommit::from_stream_message((*m).clone()).expect("commit");
            !c.body.events.is_empty()
        })
        .count()
}

#[tokio::test]
async fn fifty_concurrent_conflicting_commands_lose_no_update() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    // Five service replicas on one stream: conflicts are decided by the server.
    let mut replicas = Vec::new();
    for _ in 0..5 {
        replicas.push(spawn_ledger(&nats, &db).await);
    }
    let account = unique_id("acct");
    open(&mut replicas[0].client.clone(), &account).await;

    let calls = (0..50).map(|i| {
        let mut client = replicas[i % 5].client.clone();
        let account = account.clone();
        async move { deposit(&mut client, &account, (i as i64) + 1).await }
    });
    let results = join_all(calls).await;

    let mut accepted = 0i64;
    let mut accepted_sequences = HashSet::new();
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(resp) => {
                accepted += (i as i64) + 1;
                accepted_sequences.insert(resp.position.as_ref().expect("position").sequence);
            }
            Err(status) => assert_eq!(status.code(), Code::Aborted, "losers are told ABORTED, got {status:?}"),
        }
    }
    assert!(!accepted_sequences.is_empty(), "some commands must win");

    let commits = stream_commits(&nats, &format!("sample.ledger.{account}")).await;
    // One open plus exactly the accepted deposits, nothing more, nothing less.
    assert_eq!(commits.len(), 1 + accepted_sequences.len());
    let stored: HashSet<u64> = commits.iter().skip(1).map(|m| m.sequence).collect();
    assert_eq!(stored, accepted_sequences);

    // Every success is reflected in the state any replica loads, and in the read model.
    let balance = deposit(&mut replicas[3].client.clone(), &account, 1).await.expect("deposit").balance;
    assert_eq!(balance, accepted + 1);
    let last = commits.last().expect("commits").sequence + 1;
    let view = replicas[0]
        .client
        .clone()
        .get_account(pb::GetAccountRequest { account_id: account.clone(), min_position: last })
        .await
        .expect("read")
        .into_inner();
    assert_eq!(view.balance, accepted + 1);
}

#[tokio::test]
async fn two_concurrent_opens_of_a_new_account_create_it_once() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let a = spawn_ledger(&nats, &db).await;
    let b = spawn_ledger(&nats, &db).await;
    for _ in 0..10 {
        let account = unique_id("new");
        let req = |c: &Client| {
            let mut c = c.clone();
            let account = account.clone();
            async move {
                c.open_account(pb::OpenAccountRequest {
                    command_id: command_id(),
                    account_id: account,
                    owner: "A".into(),
                })
                .await
            }
        };
        let (ra, rb) = tokio::join!(req(&a.client), req(&b.client));
        let oks = [ra.is_ok(), rb.is_ok()].iter().filter(|x| **x).count();
        assert_eq!(oks, 1, "exactly one open wins: {ra:?} {rb:?}");
        let loser = ra.err().or(rb.err()).expect("one loser");
        assert_eq!(loser.code(), Code::FailedPrecondition);
        let commits = stream_commits(&nats, &format!("sample.ledger.{account}")).await;
        assert_eq!(with_events(&commits), 1, "one open");
    }
}

#[tokio::test]
async fn a_retried_command_applies_once_and_answers_the_same_within_the_dedupe_window() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let t = spawn_ledger(&nats, &db).await;
    let mut client = t.client.clone();
    let account = unique_id("acct");
    open(&mut client, &account).await;
    let id = command_id();
    let req = pb::DepositRequest { command_id: id.clone(), account_id: account.clone(), amount: 7 };
    let first = client.deposit(req.clone()).await.expect("first").into_inner();
    deposit(&mut client, &account, 100).await.expect("another deposit in between");
    // A fresh replica has no warm cache: it finds the duplicate through the server.
    let other = spawn_ledger(&nats, &db).await;
    let again = other.client.clone().deposit(req.clone()).await.expect("retry").into_inner();
    assert_eq!(again.balance, first.balance, "same answer");
    assert_eq!(again.position.as_ref().map(|p| p.sequence), first.position.as_ref().map(|p| p.sequence));
    assert!(again.position.expect("pos").replayed);
    assert_eq!(stream_commits(&nats, &format!("sample.ledger.{account}")).await.len(), 3);
}

#[tokio::test]
async fn a_retried_command_applies_once_after_the_dedupe_window() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let t = spawn_ledger(&nats, &db).await;
    // Shrink the server's dedupe window to 1 s and let it pass.
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("SAMPLE").await.expect("stream");
    let mut cfg = stream.info().await.expect("info").config.clone();
    cfg.duplicate_window = std::time::Duration::from_secs(1);
    js.update_stream(cfg).await.expect("update");

    let mut client = t.client.clone();
    let account = unique_id("acct");
    open(&mut client, &account).await;
    let req = pb::DepositRequest { command_id: command_id(), account_id: account.clone(), amount: 9 };
    let first = client.deposit(req.clone()).await.expect("first").into_inner();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;

    // Cold replica: the aggregate's remembered command ids catch it.
    let other = spawn_ledger(&nats, &db).await;
    let again = other.client.clone().deposit(req.clone()).await.expect("retry").into_inner();
    assert_eq!(again.balance, first.balance);
    assert_eq!(again.position.as_ref().map(|p| p.sequence), first.position.as_ref().map(|p| p.sequence));
    // Warm replica too.
    let again_warm = client.deposit(req).await.expect("retry").into_inner();
    assert_eq!(again_warm.balance, first.balance);
    assert_eq!(stream_commits(&nats, &format!("sample.ledger.{account}")).await.len(), 2);
}

#[tokio::test]
async fn a_multi_event_command_lands_as_one_commit() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let t = spawn_ledger(&nats, &db).await;
    let mut client = t.client.clone();
    let account = unique_id("acct");
    open(&mut client, &account).await;
    let resp = client
        .post_entries(pb::PostEntriesRequest {
            command_id: command_id(),
            account_id: account.clone(),
            amounts: vec![50, -20, 5],
        })
        .await
        .expect("post")
        .into_inner();
    assert_eq!(resp.event_count, 3);
    assert_eq!(resp.balance, 35);
    let commits = stream_commits(&nats, &format!("sample.ledger.{account}")).await;
    assert_eq!(commits.len(), 2, "open + one commit holding all three events");
    let commit = gridwork_eventstore::RecordedCommit::from_stream_message(commits[1].clone()).expect("decodes");
    assert_eq!(commit.body.events.len(), 3);
    assert_eq!(commit.header(headers::CE_TYPE), Some(headers::COMMIT_TYPE));
    assert_eq!(commit.header(headers::CE_SPECVERSION), Some("1.0"));
    assert_eq!(commit.principal(), "tester", "the verified token's subject");
    // Nothing the body holds is repeated in a header: each costs every reader.
    // (The direct get that read it adds Nats-Sequence, -Stream, -Subject and
    // -Time-Stamp to its reply; they are not stored.)
    let answered = ["Nats-Sequence", "Nats-Stream", "Nats-Subject", "Nats-Time-Stamp"];
    let mut names: Vec<&str> = commit
        .headers
        .iter()
        .map(|(n, _)| AsRef::<str>::as_ref(n))
        .filter(|n: &&str| !n.starts_with("trace") && !answered.contains(n))
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "Gridwork-Schema-Version",
            "Nats-Expected-Last-Subject-Sequence",
            "Nats-Msg-Id",
            "ce-id",
            "ce-source",
            "ce-specversion",
            "ce-time",
            "ce-type",
        ],
        "the stored headers, besides the trace context"
    );
    assert_eq!(commit.previous, commits[0].sequence, "back-pointer stored with the message");
    // The CloudEvents id is unique per commit whatever the command id: the
    // server admits one commit per subject after a given sequence.
    let ce_id = format!("sample.ledger.{account}@{}", commits[0].sequence);
    assert_eq!(commit.header(headers::CE_ID), Some(ce_id.as_str()));

    // A refused multi-event command writes no event at all: only its refusal.
    let err = client
        .post_entries(pb::PostEntriesRequest {
            command_id: command_id(),
            account_id: account.clone(),
            amounts: vec![10, -1000],
        })
        .await
        .expect_err("insufficient funds");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let commits = stream_commits(&nats, &format!("sample.ledger.{account}")).await;
    assert_eq!(with_events(&commits), 2);
    let refusal = gridwork_eventstore::RecordedCommit::from_stream_message(commits[2].clone()).expect("decodes");
    assert_eq!(refusal.header(headers::CE_TYPE), Some(headers::REJECTED_TYPE));
    assert!(refusal.body.rejection.contains("InsufficientFunds"), "{}", refusal.body.rejection);
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_each_field_and_writes_nothing() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let t = spawn_ledger(&nats, &db).await;
    let mut client = t.client.clone();
    let fields = |s: &tonic::Status| -> Vec<String> {
        s.get_error_details()
            .bad_request()
            .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
            .unwrap_or_default()
    };
    let e = client
        .deposit(pb::DepositRequest { command_id: "nope".into(), account_id: "a.b".into(), amount: -3 })
        .await
        .expect_err("invalid");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(fields(&e), ["command_id", "account_id", "amount"]);
    let e = client
        .open_account(pb::OpenAccountRequest { command_id: command_id(), account_id: "ok".into(), owner: "  ".into() })
        .await
        .expect_err("invalid");
    assert_eq!(fields(&e), ["owner"]);
    let e = client
        .post_entries(pb::PostEntriesRequest { command_id: command_id(), account_id: "ok".into(), amounts: vec![1, 0] })
        .await
        .expect_err("invalid");
    assert_eq!(fields(&e), ["amounts[1]"]);
    let e = client
        .post_entries(pb::PostEntriesRequest { command_id: command_id(), account_id: "ok".into(), amounts: vec![] })
        .await
        .expect_err("invalid");
    assert_eq!(fields(&e), ["amounts"]);
    let e = deposit(&mut client, "never-opened", 5).await.expect_err("not open");
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = client
        .get_account(pb::GetAccountRequest { account_id: "nobody".into(), min_position: 0 })
        .await
        .expect_err("missing");
    assert_eq!(e.code(), Code::NotFound);

    assert!(stream_commits(&nats, "sample.ledger.ok").await.is_empty(), "invalid input writes nothing");
    let refused = stream_commits(&nats, "sample.ledger.never-opened").await;
    assert_eq!((refused.len(), with_events(&refused)), (1, 0), "the refusal is stored, without events");
}

/// A commit the stream can never accept is the caller's to change, not a
/// reason to retry: INVALID_ARGUMENT, not UNAVAILABLE. A sealed stream is an
/// operator's problem: INTERNAL.
#[tokio::test]
async fn a_commit_that_can_never_be_stored_is_not_answered_unavailable() {
    use gridwork_eventstore::StoreError;
    use gridwork_eventstore::error::ExecuteError;
    use gridwork_sample_ledger::domain::ledger::LedgerCommand;

    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let k = kernel(&nats, &db).await;
    let mut config = k.js.get_stream("SAMPLE").await.expect("stream").info().await.expect("info").config.clone();
    config.max_message_size = 1200;
    k.js.update_stream(config.clone()).await.expect("limit message size");

    let big = LedgerCommand::Open { owner: "x".repeat(1500) };
    let err = k.repository.execute("big", &big, &meta()).await.expect_err("too large");
    let ExecuteError::Store(err @ StoreError::TooLarge(_)) = err else { panic!("wanted TooLarge, got {err:?}") };
    let status = tonic::Status::from(gridwork_runtime::status::ServiceError::from(err));
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    k.repository.execute("small", &LedgerCommand::Open { owner: "x".into() }, &meta()).await.expect("fits");

    config.sealed = true;
    k.js.update_stream(config).await.expect("seal");
    let err =
        k.repository.execute("later", &LedgerCommand::Open { owner: "y".into() }, &meta()).await.expect_err("sealed");
    assert!(matches!(err, ExecuteError::Store(StoreError::Misconfigured(_))), "{err:?}");
}
