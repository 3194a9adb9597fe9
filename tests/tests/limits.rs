//! Issue 10, request limits: a principal past its write burst is refused
//! `RESOURCE_EXHAUSTED` before any handler runs (nothing written) while
//! another principal and its own reads go on; a request message larger than
//! the service accepts is refused `RESOURCE_EXHAUSTED` too.

use std::time::Duration;

use gridwork_e2e::{mesh_with, stream_messages, uuid};
use gridwork_proto::gridwork::grid::v1 as gpb;
use gridwork_proto::gridwork::intake::v1 as ipb;
use gridwork_proto::gridwork::intake::v1::intake_service_client::IntakeServiceClient;
use gridwork_testkit::auth::authed_as;
use gridwork_testkit::db::TestDb;
use gridwork_testkit::nats::NatsServer;
use tonic::Code;
use tonic::transport::Channel;

fn report() -> ipb::ReportIncidentRequest {
    gridwork_e2e::hazard_report(ipb::Source::Hotline, 0.5)
}

#[tokio::test]
async fn a_principal_past_its_write_burst_and_an_oversized_request_are_refused_and_write_nothing() {
    let nats = NatsServer::start().await.expect("nats");
    let mut m = mesh_with(
        (time::macros::datetime!(2026-03-02 10:00 +8).unix_timestamp_nanos() / 1_000_000) as i64,
        nats,
        TestDb::sqlite().expect("db"),
        |service, nats_url, db_url| gridwork_runtime::CommonConfig {
            limits: if service == gridwork_incident_intake::SERVICE {
                // One write a minute once the burst of 5 is spent: the test
                // is over long before a token comes back.
                gridwork_runtime::limits::LimitsConfig {
                    write_rate_per_second: 1.0 / 60.0,
                    write_burst: 5,
                    ..Default::default()
                }
            } else {
                gridwork_runtime::limits::LimitsConfig { max_request_bytes: 64 * 1024, ..Default::default() }
            },
            ..gridwork_testkit::service_config(nats_url, db_url)
        },
    )
    .await;
    let channel = Channel::from_shared(m.intake_endpoint()).expect("endpoint").connect().await.expect("connect");
    let mut first = IntakeServiceClient::new(authed_as(channel.clone(), "hotline-1", &["hotline"]));
    let mut second = IntakeServiceClient::new(authed_as(channel, "hotline-2", &["hotline"]));
    for i in 0..5 {
        first.report_incident(report()).await.unwrap_or_else(|e| panic!("write {i} within the burst: {e:?}"));
    }
    // Quiet: the linker has linked the five as one problem's reports.
    let quiet = std::time::Duration::from_secs(15);
    m.intake_app.linker().wait_for_stream_head(quiet).await.expect("linker");
    let js = async_nats::jetstream::new(async_nats::connect(m.nats.url()).await.expect("nats"));
    let before = stream_messages(&js).await;
    let sixth = report();
    let refused = first.report_incident(sixth.clone()).await.expect_err("past the burst");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("hotline-1") && refused.message().contains("retry in"), "{refused:?}");
    {
        use tonic_types::StatusExt as _;
        let retry = refused.get_details_retry_info().expect("RetryInfo");
        assert!(retry.retry_delay.is_some_and(|d| d > Duration::from_secs(30)), "{retry:?}");
    }
    m.intake_app.linker().wait_for_stream_head(quiet).await.expect("linker");
    assert_eq!(stream_messages(&js).await, before, "a refused write wrote something");
    let missing = m
        .intake
        .get_incident(ipb::GetIncidentRequest { incident_id: sixth.command_id.clone(), min_position: 0 })
        .await
        .expect_err("the refused report is nowhere");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    // Reads are not writes; another call-taker has a bucket of its own.
    first.list_incidents(ipb::ListIncidentsRequest::default()).await.expect("reads go on");
    second.report_incident(report()).await.expect("another principal");

    // A boundary of ~100 KiB, past the service's 64 KiB: refused whole.
    m.intake_app.linker().wait_for_stream_head(quiet).await.expect("linker");
    let before = stream_messages(&js).await;
    let huge = m
        .registry
        .register_unit(gpb::RegisterUnitRequest {
            command_id: uuid(),
            unit_id: "big".into(),
            parent_id: "d".into(),
            kind: gpb::UnitKind::Street as i32,
            name: "big".into(),
            boundary_geojson: format!("{} {}", gridwork_e2e::cells(0.0, 0.0, 1.0, 1.0), " ".repeat(100 * 1024)),
            special_site: 0,
        })
        .await
        .expect_err("too large");
    assert_eq!(huge.code(), Code::ResourceExhausted, "{huge:?}");
    assert!(huge.message().contains("MAX_REQUEST_BYTES"), "{huge:?}");
    assert_eq!(stream_messages(&js).await, before, "the oversized request wrote something");
}
