//! Spawning the sample ledger against a private nats-server and a fresh database.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use gridwork_proto::gridwork::sample::v1 as pb;
use gridwork_proto::gridwork::sample::v1::ledger_service_client::LedgerServiceClient;
use gridwork_runtime::CommonConfig;
use gridwork_runtime::clock::SystemClock;
use gridwork_runtime::config::LogFormat;
use gridwork_runtime::server::ServerHandle;
use gridwork_sample_ledger::App;
use gridwork_testkit::db::TestDb;
use gridwork_testkit::nats::NatsServer;
use tonic::transport::Channel;

pub type Client = LedgerServiceClient<Channel>;

pub struct TestLedger {
    pub app: App,
    pub server: ServerHandle,
    pub client: Client,
}

pub fn config(nats_url: &str, database_url: &str) -> CommonConfig {
    CommonConfig {
        nats_url: nats_url.into(),
        database_url: Some(database_url.into()),
        grpc_addr: "127.0.0.1:0".parse().expect("addr"),
        metrics_addr: "127.0.0.1:0".parse().expect("addr"),
        log_format: LogFormat::Pretty,
        stream_replicas: 1,
        drain_seconds: 0,
    }
}

/// Build and serve the ledger on port 0.
pub async fn spawn_ledger(nats: &NatsServer, db: &TestDb) -> TestLedger {
    gridwork_testkit::init_tracing();
    let app = App::build(&config(&nats.url(), &db.url), Arc::new(SystemClock)).await.expect("ledger builds");
    let server = app.spawn(Duration::from_millis(200)).await.expect("ledger serves");
    let client = connect(&server).await;
    TestLedger { app, server, client }
}

pub async fn connect(server: &ServerHandle) -> Client {
    let channel = Channel::from_shared(server.endpoint()).expect("endpoint").connect().await.expect("connects");
    LedgerServiceClient::new(channel)
}

pub fn command_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub async fn open(client: &mut Client, account: &str) -> u64 {
    client
        .open_account(pb::OpenAccountRequest { command_id: command_id(), account_id: account.into(), owner: "Wang".into() })
        .await
        .expect("opens")
        .into_inner()
        .position
        .expect("position")
        .sequence
}

pub async fn deposit(client: &mut Client, account: &str, amount: i64) -> Result<pb::DepositResponse, tonic::Status> {
    client
        .deposit(pb::DepositRequest { command_id: command_id(), account_id: account.into(), amount })
        .await
        .map(|r| r.into_inner())
}
