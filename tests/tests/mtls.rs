//! Issue 10, mTLS: a service given a certificate, its key and a client CA
//! (`TLS_CERT_FILE`, `TLS_KEY_FILE`, `TLS_CLIENT_CA_FILE`) speaks TLS only and
//! serves only callers presenting a certificate that CA signed — then, as
//! always, a bearer token. Certificates are made here, for this test.

use std::sync::Arc;
use std::time::Duration;

use gridwork_proto::gridwork::grid::v1 as gpb;
use gridwork_proto::gridwork::grid::v1::grid_registry_service_client::GridRegistryServiceClient;
use gridwork_runtime::clock::ManualClock;
use gridwork_testkit::auth::authed;
use gridwork_testkit::db::TestDb;
use gridwork_testkit::nats::NatsServer;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A certificate authority of the mesh.
fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
}

/// A certificate `ca` signs for `names`, for a server or a client: (PEM
/// certificate, PEM key).
fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, ca).expect("signed");
    (cert.pem(), key.serialize_pem())
}

async fn connect(addr: std::net::SocketAddr, tls: Option<ClientTlsConfig>) -> Result<Channel, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Channel::from_shared(format!("{scheme}://localhost:{}", addr.port()))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    endpoint.connect().await.map_err(|e| format!("{e:?}"))
}

async fn list(channel: Channel) -> Result<(), tonic::Status> {
    let mut client = GridRegistryServiceClient::new(authed(channel));
    client.list_children(gpb::ListChildrenRequest { parent_id: String::new(), min_position: 0 }).await.map(|_| ())
}

#[tokio::test]
async fn a_service_with_a_client_ca_serves_only_callers_with_its_certificates() {
    gridwork_testkit::init_tracing();
    let mesh_ca = authority("gridwork mesh CA");
    let other_ca = authority("somebody else's CA");
    let (server_cert, server_key) = leaf(&mesh_ca, &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = leaf(&mesh_ca, &["gridctl"], ExtendedKeyUsagePurpose::ClientAuth);
    let (stranger_cert, stranger_key) = leaf(&other_ca, &["gridctl"], ExtendedKeyUsagePurpose::ClientAuth);
    let dir = tempfile::tempdir().expect("dir");
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write");
        path
    };
    let tls = gridwork_runtime::config::TlsConfig {
        tls_cert_file: Some(write("server.pem", &server_cert)),
        tls_key_file: Some(write("server.key", &server_key)),
        tls_client_ca_file: Some(write("ca.pem", &mesh_ca.pem())),
    };

    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let config = gridwork_runtime::CommonConfig { tls, ..gridwork_testkit::service_config(&nats.url(), &db.url) };
    let app = gridwork_grid_registry::App::build(&config, Arc::new(ManualClock::at(1_795_312_800_000)))
        .await
        .expect("registry");
    let server = app.spawn(Duration::from_millis(50)).await.expect("serve");
    let ca = Certificate::from_pem(mesh_ca.pem());
    let trusting = || ClientTlsConfig::new().ca_certificate(ca.clone()).domain_name("localhost");

    // No certificate, a stranger's certificate, or no TLS at all: no call.
    let refused = [
        ("no client certificate", Some(trusting())),
        ("another CA's certificate", Some(trusting().identity(Identity::from_pem(&stranger_cert, &stranger_key)))),
        ("plaintext", None),
    ];
    for (what, tls) in refused {
        let answered = match connect(server.addr, tls).await {
            Err(_) => false,
            Ok(channel) => list(channel).await.is_ok(),
        };
        assert!(!answered, "{what}: the service answered");
    }

    // The mesh's own certificate: served (and the refusals did not hurt it).
    let channel = connect(server.addr, Some(trusting().identity(Identity::from_pem(&client_cert, &client_key))))
        .await
        .expect("mTLS handshake");
    list(channel.clone()).await.expect("served over mTLS");
    // TLS does not replace the token: without one, still UNAUTHENTICATED.
    let status = GridRegistryServiceClient::new(channel)
        .list_children(gpb::ListChildrenRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}

/// The services' only link to each other is NATS: with `NATS_TLS_CA`,
/// `NATS_TLS_CERT` and `NATS_TLS_KEY` a service reaches a nats-server that
/// requires client certificates (mTLS); without its certificate it does not
/// start, and nothing of it reaches the server in plaintext.
#[tokio::test]
async fn a_service_reaches_nats_over_mtls_and_not_without_its_certificate() {
    gridwork_testkit::init_tracing();
    let ca = authority("gridwork mesh CA");
    let stranger_ca = authority("somebody else's CA");
    let (server_cert, server_key) = leaf(&ca, &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = leaf(&ca, &["grid-registry"], ExtendedKeyUsagePurpose::ClientAuth);
    let (stranger_cert, stranger_key) = leaf(&stranger_ca, &["grid-registry"], ExtendedKeyUsagePurpose::ClientAuth);
    let dir = tempfile::tempdir().expect("dir");
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write");
        path
    };
    let ca_file = write("ca.pem", &ca.pem());
    let nats = NatsServer::start_with_tls(
        ca_file.clone(),
        (write("nats.pem", &server_cert), write("nats.key", &server_key)),
        (write("client.pem", &client_cert), write("client.key", &client_key)),
    )
    .await
    .expect("nats with mTLS");
    let url = nats.url().replace("nats://127.0.0.1", "tls://localhost");
    let build = |cert: Option<(std::path::PathBuf, std::path::PathBuf)>, within: Duration| {
        let db = TestDb::sqlite().expect("db");
        let config = gridwork_runtime::CommonConfig {
            nats_tls_ca: Some(ca_file.clone()),
            nats_tls_cert: cert.as_ref().map(|c| c.0.clone()),
            nats_tls_key: cert.map(|c| c.1),
            ..gridwork_testkit::service_config(&url, &db.url)
        };
        async move {
            let built = tokio::time::timeout(
                within,
                gridwork_grid_registry::App::build(&config, Arc::new(ManualClock::at(1_795_312_800_000))),
            )
            .await;
            (built, db)
        }
    };
    // Without a certificate, or with another CA's: no service.
    for cert in [None, Some((write("s.pem", &stranger_cert), write("s.key", &stranger_key)))] {
        // (It keeps retrying the handshake; five seconds of refusals is enough.)
        let (built, _db) = build(cert.clone(), Duration::from_secs(5)).await;
        assert!(!matches!(built, Ok(Ok(_))), "started without the mesh's certificate ({cert:?})");
    }
    // With its certificate: it provisions its stream over mTLS and serves.
    let client = (dir.path().join("client.pem"), dir.path().join("client.key"));
    let (built, _db) = build(Some(client), Duration::from_secs(30)).await;
    let app = built.expect("in time").expect("registry over mTLS");
    let js = async_nats::jetstream::new(nats.connect().await.expect("harness"));
    assert!(js.get_stream("GRID").await.is_ok(), "the registry made its stream over mTLS");
    drop(app);
}
