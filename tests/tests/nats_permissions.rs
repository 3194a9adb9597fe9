//! Issue 10, NATS permissions: against a real nats-server that names its users
//! by nkey (`deploy/nats/permissions.conf`, `gridctl nats-users`), the mesh
//! runs a report to an acknowledged case with each service as its own user and
//! not one permission violation; a service cannot publish into another's
//! stream; a partner bureau cannot read another bureau's feed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use gridwork_auth::nats_users::{NatsUsers, write_users};
use gridwork_e2e::{mesh_with, uuid};
use gridwork_proto::gridwork::dispatch::v1 as pb;
use gridwork_proto::gridwork::intake::v1 as ipb;
use gridwork_testkit::db::TestDb;
use gridwork_testkit::nats::NatsServer;

fn users(dir: &std::path::Path) -> NatsUsers {
    let permissions = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/permissions.conf");
    write_users(dir, &permissions).expect("users")
}

/// Connect as `user`, keeping the server's errors (permission violations).
async fn connect_as(nats: &NatsServer, users: &NatsUsers, user: &str) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let client = async_nats::ConnectOptions::new()
        .nkey(users.seed(user).expect("seed"))
        .custom_inbox_prefix(gridwork_runtime::server::inbox_prefix(user))
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    seen.lock().expect("lock").push(e.to_string());
                }
            }
        })
        .connect(nats.url())
        .await
        .expect("connect");
    (client, errors)
}

async fn violations(errors: &Arc<Mutex<Vec<String>>>, at_least: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = errors.lock().expect("lock").clone();
        if seen.len() >= at_least || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn each_service_runs_as_its_own_nats_user_and_reaches_no_further() {
    let dir = tempfile::tempdir().expect("dir");
    let users = users(dir.path());
    let nats = NatsServer::start_with_users(&users).await.expect("nats with users");
    // Nobody connects without a user.
    assert!(async_nats::connect(nats.url()).await.is_err(), "an anonymous client was let in");

    let seeds = users.clone();
    let mut m = mesh_with(
        (time::macros::datetime!(2026-03-02 10:00 +8).unix_timestamp_nanos() / 1_000_000) as i64,
        nats,
        TestDb::sqlite().expect("db"),
        move |service, nats_url, db_url| gridwork_runtime::CommonConfig {
            nats_nkey_file: Some(seeds.seed_file(service)),
            ..gridwork_testkit::service_config(nats_url, db_url)
        },
    )
    .await;

    // Report → accepted → case opened by dispatch (from INTAKE) → the owner
    // acknowledges → intake follows the case (from DISPATCH).
    let report = gridwork_e2e::hazard_report(ipb::Source::GridWorker, 0.5);
    let id = m.intake.report_incident(report).await.expect("report").into_inner().incident_id;
    m.intake
        .accept_incident(ipb::AcceptIncidentRequest { command_id: uuid(), incident_id: id.clone() })
        .await
        .expect("accept");
    let case = gridwork_e2e::case_when_opened(&mut m.dispatch, &id).await;
    m.dispatch
        .acknowledge_case(pb::AcknowledgeCaseRequest {
            command_id: uuid(),
            case_id: id.clone(),
            acting_as: case.owner.clone(),
        })
        .await
        .expect("acknowledge");
    // Enough commits on the case for dispatch to write its snapshot (every
    // 8 commits) into its bucket.
    for i in 0..10 {
        m.dispatch
            .record_progress(pb::RecordProgressRequest {
                command_id: uuid(),
                case_id: id.clone(),
                acting_as: case.owner.clone(),
                notes: format!("visit {i}"),
            })
            .await
            .expect("progress");
    }
    // Intake follows DISPATCH (its case follower) up to the acknowledgement.
    m.intake_app.case_follower().wait_for_stream_head(Duration::from_secs(15)).await.expect("intake follows DISPATCH");
    m.intake_app.linker().wait_for_stream_head(Duration::from_secs(15)).await.expect("intake's linker");
    assert!(m.nats.log().contains("Server is ready"), "the server's log is read: {}", m.nats.log());
    assert!(
        !m.nats.log().contains("Violation"),
        "the services needed a subject their users may not use:\n{}",
        m.nats.log().lines().filter(|l| l.contains("Violation")).collect::<Vec<_>>().join("\n")
    );

    // What the kernel does on paths the flow above may not reach — a
    // snapshot into the service's bucket, a dead letter — each service's user
    // may do for itself.
    for (service, stream) in [
        (gridwork_grid_registry::SERVICE, "GRID"),
        (gridwork_incident_intake::SERVICE, "INTAKE"),
        (gridwork_dispatch::SERVICE, "DISPATCH"),
    ] {
        let (client, errors) = connect_as(&m.nats, &users, service).await;
        let js = async_nats::jetstream::new(client);
        let bucket = js.get_key_value(format!("SNAPSHOTS_{stream}")).await.expect("its snapshot bucket");
        bucket.put("probe", "snapshot".into()).await.unwrap_or_else(|e| panic!("{service} snapshots: {e}"));
        assert!(bucket.get("probe").await.expect("read back").is_some());
        bucket.purge("probe").await.expect("tidy");
        let own = format!("deadletter.{}.probe", stream.to_lowercase());
        let letter = js.publish(own, "parked".into()).await.expect("dead letter");
        letter.await.unwrap_or_else(|e| panic!("{service} dead-letters: {e}"));
        assert!(errors.lock().expect("lock").is_empty(), "{service}: {:?}", errors.lock());
    }

    // Intake's user cannot write into dispatch's stream, nor delete from it.
    let operator = async_nats::jetstream::new(m.nats.connect().await.expect("operator"));
    let before = operator.get_stream("DISPATCH").await.expect("stream").info().await.expect("info").state.messages;
    let (intake, errors) = connect_as(&m.nats, &users, gridwork_incident_intake::SERVICE).await;
    let js = async_nats::jetstream::new(intake.clone());
    let forged = async {
        let ack = js.publish(format!("dispatch.case.{id}"), "forged".into()).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
            tokio::time::timeout(Duration::from_secs(2), ack).await.map_err(|e| e.to_string())??,
        )
    };
    assert!(forged.await.is_err(), "intake's user published into DISPATCH");
    let forged_letter = async {
        let ack = js.publish("deadletter.dispatch.dispatch_cases", "forged".into()).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
            tokio::time::timeout(Duration::from_secs(2), ack).await.map_err(|e| e.to_string())??,
        )
    };
    assert!(forged_letter.await.is_err(), "intake's user logged a dead letter as dispatch");
    intake.publish("$JS.API.STREAM.PURGE.DISPATCH", "".into()).await.expect("sent (the server refuses it)");
    let seen = violations(&errors, 3).await;
    assert!(
        seen.iter().any(|e| e.contains("Publish") && e.contains("dispatch.case.")),
        "the forged event is refused as a permission violation: {seen:?}"
    );
    assert!(seen.iter().any(|e| e.contains("STREAM.PURGE.DISPATCH")), "{seen:?}");
    let after = operator.get_stream("DISPATCH").await.expect("stream").info().await.expect("info").state.messages;
    assert_eq!(after, before, "DISPATCH changed");
    // The server logs what it refused (what the check above looks for).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !m.nats.log().contains("STREAM.PURGE.DISPATCH") {
        assert!(Instant::now() < deadline, "the refused purge is not in the server's log:\n{}", m.nats.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(m.nats.log().contains("Violation"), "{}", m.nats.log());

    // Dispatch opens reporters' keys but may neither make one nor scrub one.
    let (dispatch, errors) = connect_as(&m.nats, &users, gridwork_dispatch::SERVICE).await;
    let js = async_nats::jetstream::new(dispatch.clone());
    let forged_key = async {
        let ack = js.publish("personal.key.intake.incident.forged", vec![1u8; 33].into()).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
            tokio::time::timeout(Duration::from_secs(2), ack).await.map_err(|e| e.to_string())??,
        )
    };
    assert!(forged_key.await.is_err(), "dispatch's user made a personal-data key");
    dispatch.publish("$JS.API.STREAM.MSG.DELETE.PERSONAL_KEYS", "{\"seq\":1}".into()).await.expect("sent");
    let seen = violations(&errors, 2).await;
    assert!(seen.iter().any(|e| e.contains("personal.key.intake")), "{seen:?}");
    assert!(seen.iter().any(|e| e.contains("STREAM.MSG.DELETE.PERSONAL_KEYS")), "{seen:?}");

    // A bureau reads its own feed, not another bureau's.
    let (police, errors) = connect_as(&m.nats, &users, "police").await;
    let mut own = police.subscribe("feed.police.>").await.expect("its own feed");
    let mut other = police.subscribe("feed.civil-affairs.>").await.expect("sent (the server refuses it)");
    police.flush().await.expect("flush");
    let ops = m.nats.connect().await.expect("operator");
    ops.publish("feed.police.incident.1", "for the police".into()).await.expect("publish");
    ops.publish("feed.civil-affairs.incident.1", "for civil affairs".into()).await.expect("publish");
    ops.flush().await.expect("flush");
    let got = tokio::time::timeout(Duration::from_secs(5), own.next()).await.expect("delivered").expect("message");
    assert_eq!(got.payload.as_ref(), b"for the police");
    let seen = violations(&errors, 1).await;
    assert!(
        seen.iter().any(|e| e.contains("Subscription") && e.contains("feed.civil-affairs")),
        "the other bureau's feed is refused: {seen:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), other.next()).await.map_or(true, |m| m.is_none()),
        "the police read civil affairs' feed"
    );
}
