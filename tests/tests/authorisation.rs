//! Issue 10, authorisation: one table (`gridwork_auth::policy`) names the
//! permission every RPC needs and the roles that hold it. Against the live
//! services, for every RPC: a caller holding every role but those is refused
//! `PERMISSION_DENIED` naming the permission, writing nothing; a caller holding
//! just one of them gets past the check. The table and the services' RPCs are
//! the same set.

use std::time::Duration;

use gridwork_auth::policy::{self, roles};
use gridwork_testkit::auth::bearer;
use prost::Message as _;
use tonic::Code;
use tonic::transport::Channel;

/// Every RPC of every Gridwork service in the descriptor set.
fn served_rpcs() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(gridwork_proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let mut rpcs = Vec::new();
    for file in set.file {
        let package = file.package().to_string();
        if !package.starts_with("gridwork.") {
            continue;
        }
        for service in &file.service {
            for method in &service.method {
                rpcs.push(format!("/{package}.{}/{}", service.name(), method.name()));
            }
        }
    }
    rpcs.sort();
    rpcs
}

#[test]
fn the_table_names_exactly_the_rpcs_the_services_serve() {
    let mut table: Vec<String> = policy::RPCS.iter().map(|(p, _)| p.to_string()).collect();
    table.sort();
    assert_eq!(table, served_rpcs(), "crates/auth/src/policy.rs RPCS and the .proto services differ");
}

/// Call `path` with an empty message as whoever `token` says.
async fn call(channel: &Channel, path: &'static str, token: &str) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(());
    request.metadata_mut().insert("authorization", bearer(token));
    request.set_timeout(Duration::from_secs(10));
    let codec: tonic_prost::ProstCodec<(), ()> = tonic_prost::ProstCodec::default();
    grpc.unary(request, http::uri::PathAndQuery::from_static(path), codec).await.map(|_| ())
}

#[tokio::test]
async fn every_rpc_refuses_a_caller_without_its_permission_and_admits_one_with_it() {
    let m = gridwork_e2e::mesh(1_795_312_800_000).await;
    let services = gridwork_e2e::EveryService::start(&m).await;
    let channel_for = |path: &str| services.channel_for(path);
    let js = async_nats::jetstream::new(async_nats::connect(m.nats.url()).await.expect("nats"));
    let before = gridwork_e2e::stream_messages(&js).await;
    for (path, permission) in policy::RPCS {
        let others: Vec<String> = roles::ALL
            .iter()
            .filter(|r| !permission.roles.contains(r))
            .map(|r| gridwork_testkit::auth::grant_for(r))
            .collect();
        let others: Vec<&str> = others.iter().map(String::as_str).collect();
        let refused = call(channel_for(path), path, &gridwork_testkit::auth::token("outsider", &others)).await;
        let status = refused.expect_err(path);
        assert_eq!(status.code(), Code::PermissionDenied, "{path}: {status:?}");
        assert!(status.message().contains(permission.name), "{path}: {status:?}");
        for role in permission.roles {
            assert!(status.message().contains(role), "{path} refusal names {role}: {status:?}");
        }
    }
    assert_eq!(gridwork_e2e::stream_messages(&js).await, before, "a refused call wrote something");
    for (path, permission) in policy::RPCS {
        for role in permission.roles.iter() {
            let token = gridwork_testkit::auth::token("insider", &[&gridwork_testkit::auth::grant_for(role)]);
            if let Err(status) = call(channel_for(path), path, &token).await {
                assert!(
                    !matches!(status.code(), Code::PermissionDenied | Code::Unauthenticated | Code::Unimplemented),
                    "{path} as {role}: {status:?}"
                );
            }
        }
    }
}
