//! Spawning the sample ledger against a private nats-server and a fresh database.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use gridwork_proto::gridwork::sample::v1 as pb;
use gridwork_proto::gridwork::sample::v1::ledger_service_client::LedgerServiceClient;
use gridwork_runtime::clock::SystemClock;
use gridwork_runtime::server::ServerHandle;
use gridwork_sample_ledger::App;
use gridwork_testkit::db::TestDb;
use gridwork_testkit::nats::NatsServer;
use tonic::transport::Channel;

pub type Client = LedgerServiceClient<gridwork_testkit::auth::Authed>;

pub struct TestLedger {
    pub app: App,
    pub server: ServerHandle,
    pub client: Client,
}

pub fn config(nats_url: &str, database_url: &str) -> gridwork_runtime::CommonConfig {
    gridwork_testkit::service_config(nats_url, database_url)
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
    LedgerServiceClient::new(gridwork_testkit::auth::authed(channel))
}

pub fn command_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub async fn open(client: &mut Client, account: &str) -> u64 {
    client
        .open_account(pb::OpenAccountRequest {
            command_id: command_id(),
            account_id: account.into(),
            owner: "Wang".into(),
        })
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

/// The kernel pieces without gRPC: a repository and a read store.
pub struct Kernel {
    pub js: async_nats::jetstream::Context,
    pub repository: gridwork_eventstore::Repository<gridwork_sample_ledger::domain::ledger::Ledger>,
    pub store: gridwork_eventstore::projection::ReadStore,
}

pub async fn kernel(nats: &NatsServer, db: &TestDb) -> Kernel {
    kernel_on(&nats.url(), 1, db).await
}

/// The kernel pieces on the server(s) at `url` (comma-separated for a cluster),
/// with a stream of `replicas` replicas.
pub async fn kernel_on(url: &str, replicas: usize, db: &TestDb) -> Kernel {
    gridwork_testkit::init_tracing();
    let servers: Vec<&str> = url.split(',').collect();
    let client = async_nats::connect(servers.as_slice()).await.expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    let spec = gridwork_eventstore::StreamSpec::events("sample", replicas);
    gridwork_eventstore::ensure_stream(&client, &js, &spec).await.expect("stream");
    let repository = gridwork_eventstore::Repository::new(
        js.clone(),
        &spec.name,
        Some(&spec.snapshot_bucket()),
        gridwork_eventstore::RepositoryOptions::default(),
    )
    .await
    .expect("repository");
    let store = gridwork_eventstore::projection::ReadStore::connect(&db.url).await.expect("read store");
    Kernel { js, repository, store }
}

pub fn meta() -> gridwork_eventstore::CommandMeta {
    gridwork_eventstore::CommandMeta {
        command_id: command_id(),
        principal: "test".into(),
        decided_at_unix_ms: 1_700_000_000_000,
        request_digest: 0,
    }
}

/// Open `accounts` accounts and make `deposits` deposits on each; returns the
/// stream's last sequence.
pub async fn write_history(k: &Kernel, prefix: &str, accounts: usize, deposits: usize) -> u64 {
    use gridwork_sample_ledger::domain::ledger::LedgerCommand;
    let mut last = 0;
    for a in 0..accounts {
        let id = format!("{prefix}-{a}");
        last = k
            .repository
            .execute(&id, &LedgerCommand::Open { owner: format!("owner {a}") }, &meta())
            .await
            .expect("open")
            .sequence;
        for d in 0..deposits {
            let amount = (a * 1000 + d + 1) as i64;
            last =
                k.repository.execute(&id, &LedgerCommand::Deposit { amount }, &meta()).await.expect("deposit").sequence;
        }
    }
    last
}

/// Every row of the accounts table, ordered.
pub async fn dump(store: &gridwork_eventstore::projection::ReadStore) -> Vec<(String, String, i64, i64, i64, String)> {
    sqlx::query_as(
        "SELECT account_id, owner, balance, movements, position, last_trace_id FROM sample_accounts ORDER BY account_id",
    )
    .fetch_all(store.pool())
    .await
    .expect("dump")
}

/// A runner configuration for tests: small batches, short pauses, a commit
/// parked after its second failed attempt.
pub fn quick() -> gridwork_eventstore::projection::RunnerConfig {
    gridwork_eventstore::projection::RunnerConfig {
        batch_size: 7,
        batch_wait: Duration::from_millis(2),
        max_attempts: 2,
        retry_backoff: Duration::from_millis(5),
        max_stall_backoff: Duration::from_millis(100),
        ..gridwork_eventstore::projection::RunnerConfig::new("SAMPLE")
    }
}

/// Metadata of a client's command (a request digest, so refusals and no-ops
/// are stored and remembered like events).
pub fn client_meta() -> gridwork_eventstore::CommandMeta {
    gridwork_eventstore::CommandMeta { request_digest: 7, ..meta() }
}

/// Shrink the `SAMPLE` stream's dedupe window to one second, so that a test
/// can step past it (without re-provisioning, which would restore it).
pub async fn shrink_dedupe_window(js: &async_nats::jetstream::Context) {
    let mut config = js.get_stream("SAMPLE").await.expect("stream").info().await.expect("info").config.clone();
    config.duplicate_window = Duration::from_secs(1);
    js.update_stream(config).await.expect("shrink the dedupe window");
}

/// The `SAMPLE` stream's command index in `k`'s read store, with the default horizon.
pub async fn command_index(k: &Kernel) -> gridwork_eventstore::CommandIndex {
    let horizon = gridwork_eventstore::RepositoryOptions::default().idempotency_horizon;
    gridwork_eventstore::CommandIndex::start(k.js.clone(), "SAMPLE", k.store.clone(), horizon).await.expect("index")
}
