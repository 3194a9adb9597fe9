//! What a stock gRPC client, a load balancer and a tracer see: health,
//! reflection, metrics, trace continuity, graceful shutdown, and a NATS outage.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use gridwork_eventstore::RecordedCommit;
use gridwork_eventstore::envelope::headers;
use gridwork_proto::gridwork::sample::v1 as pb;
use gridwork_testkit::db::TestDb;
use gridwork_testkit::nats::NatsServer;
use gridwork_testkit::unique_id;
use tokio::sync::Mutex;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const LEDGER: &str = "gridwork.sample.v1.LedgerService";

async fn health(endpoint: &str, service: &str) -> Option<ServingStatus> {
    let channel = Channel::from_shared(endpoint.to_string()).ok()?.connect().await.ok()?;
    let resp = HealthClient::new(channel).check(HealthCheckRequest { service: service.into() }).await.ok()?;
    ServingStatus::try_from(resp.into_inner().status).ok()
}

async fn wait_health(endpoint: &str, service: &str, want: ServingStatus, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = health(endpoint, service).await;
        if got == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "health of {service:?} stayed {got:?}, wanted {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The services a server lists over reflection version `$v` (`v1` or
/// `v1alpha`: the same protocol under two generated packages).
macro_rules! list_services {
    ($v:ident, $endpoint:expr) => {{
        use tonic_reflection::pb::$v::ServerReflectionRequest;
        use tonic_reflection::pb::$v::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$v::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$v::server_reflection_response::MessageResponse;
        let channel = Channel::from_shared($endpoint.to_string()).expect("endpoint").connect().await.expect("connect");
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = ServerReflectionClient::new(channel)
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .expect(concat!(stringify!($v), " reflection"))
            .into_inner();
        let response = responses.message().await.expect("message").expect("one response");
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected {} reflection answer {response:?}", stringify!($v));
        };
        list.service.into_iter().map(|s| s.name).collect::<HashSet<String>>()
    }};
}

#[tokio::test]
async fn health_and_reflection_answer_a_stock_grpc_client() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let t = spawn_ledger(&nats, &db).await;
    let endpoint = t.server.endpoint();
    wait_health(&endpoint, "", ServingStatus::Serving, Duration::from_secs(10)).await;
    wait_health(&endpoint, LEDGER, ServingStatus::Serving, Duration::from_secs(10)).await;

    let names = list_services!(v1, &endpoint);
    assert!(names.contains(LEDGER), "{names:?}");
    assert!(names.contains("grpc.health.v1.Health"), "{names:?}");
    // The same over v1alpha, which many stock clients still speak.
    let names = list_services!(v1alpha, &endpoint);
    assert!(names.contains(LEDGER), "v1alpha: {names:?}");

    // Prometheus metrics are served and carry the kernel's counters.
    let mut client = t.client.clone();
    let account = unique_id("m");
    open(&mut client, &account).await;
    let metrics_addr = t.server.metrics_addr.expect("metrics address");
    let body = http_get(metrics_addr, "/metrics").await;
    assert!(body.contains("eventstore_appends_total"), "{body}");
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test]
async fn a_trace_started_at_an_rpc_continues_in_the_projection_that_applies_its_events() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let t = spawn_ledger(&nats, &db).await;
    let mut client = t.client.clone();
    let account = unique_id("trace");
    open(&mut client, &account).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request =
        tonic::Request::new(pb::DepositRequest { command_id: command_id(), account_id: account.clone(), amount: 3 });
    request.metadata_mut().insert("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01").parse().expect("ascii"));
    let sequence = client.deposit(request).await.expect("deposit").into_inner().position.expect("pos").sequence;

    // The commit carries the trace in its headers...
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let stored = js.get_stream("SAMPLE").await.expect("stream").direct_get(sequence).await.expect("commit");
    let commit = RecordedCommit::from_stream_message(stored).expect("decodes");
    let traceparent = commit.header(headers::TRACEPARENT).expect("traceparent header");
    assert!(traceparent.contains(trace_id), "{traceparent}");
    // ...and the projection applied it inside the same trace.
    let view = t.app.ledgers().account(&account, sequence, Duration::from_secs(10)).await.expect("view");
    assert_eq!(view.last_trace_id, trace_id);
}

#[tokio::test]
async fn shutting_down_turns_health_not_serving_before_the_listener_closes() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    gridwork_testkit::init_tracing();
    let app = gridwork_sample_ledger::App::build(
        &config(&nats.url(), &db.url),
        Arc::new(gridwork_runtime::clock::SystemClock),
    )
    .await
    .expect("build");
    let mut server = app.spawn(Duration::from_secs(2)).await.expect("serve");
    let endpoint = server.endpoint();
    wait_health(&endpoint, "", ServingStatus::Serving, Duration::from_secs(10)).await;
    let channel = Channel::from_shared(endpoint.clone()).expect("endpoint").connect().await.expect("connect");
    server.begin_shutdown();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let status = HealthClient::new(channel.clone()).check(HealthCheckRequest { service: String::new() }).await;
        if status.is_ok_and(|r| r.into_inner().status == ServingStatus::NotServing as i32) {
            break;
        }
        assert!(Instant::now() < deadline, "never went NOT_SERVING during the drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_nats_outage_turns_health_not_serving_and_loses_no_acknowledged_command() {
    let mut nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let t = spawn_ledger(&nats, &db).await;
    let endpoint = t.server.endpoint();
    wait_health(&endpoint, "", ServingStatus::Serving, Duration::from_secs(10)).await;
    let account = unique_id("outage");
    open(&mut t.client.clone(), &account).await;

    // Traffic that keeps going through the outage, remembering what was acknowledged.
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (acked, stop, account, mut client) = (acked.clone(), stop.clone(), account.clone(), t.client.clone());
        tokio::spawn(async move {
            let mut failures = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = command_id();
                let mut request = tonic::Request::new(pb::DepositRequest {
                    command_id: id.clone(),
                    account_id: account.clone(),
                    amount: 1,
                });
                request.set_timeout(Duration::from_secs(3));
                match client.deposit(request).await {
                    Ok(r) => acked.lock().await.push((id, r.into_inner().position.expect("pos").sequence)),
                    Err(_) => failures += 1,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            failures
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.kill();
    wait_health(&endpoint, "", ServingStatus::NotServing, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.restart().await.expect("restart");
    wait_health(&endpoint, "", ServingStatus::Serving, Duration::from_secs(20)).await;
    let before = acked.lock().await.len();
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().await.len() < before + 20 {
        assert!(Instant::now() < deadline, "commands did not resume after reconnecting");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    // Callers may have seen UNAVAILABLE or a timeout during the outage (not
    // acknowledged, so free to retry); what matters is below.
    let _failures = traffic.await.expect("traffic");

    // Every acknowledged command is in the stream, at the sequence it was told.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let stream = js.get_stream("SAMPLE").await.expect("stream");
    let acked = acked.lock().await.clone();
    for (id, sequence) in &acked {
        let commit = RecordedCommit::from_stream_message(
            stream.direct_get(*sequence).await.expect("acknowledged commit is stored"),
        )
        .expect("decodes");
        assert_eq!(commit.command_id(), id);
    }
    // And the read model catches up past the outage.
    let last = acked.last().expect("acked").1;
    let view = t.app.ledgers().account(&account, last, Duration::from_secs(30)).await.expect("read model resumed");
    assert!(view.balance >= acked.len() as i64);
}
