//! The grid registry over gRPC, on a real nats-server and SQLite (and PostgreSQL
//! for the rebuild check).

use std::sync::Arc;
use std::time::Duration;

use gridwork_eventstore::projection::{ProjectionRunner, ReadStore, RunnerConfig};
use gridwork_geo::polygon_geojson;
use gridwork_grid_registry::App;
use gridwork_proto::gridwork::grid::v1 as pb;
use gridwork_proto::gridwork::grid::v1::grid_registry_service_client::GridRegistryServiceClient;
use gridwork_runtime::clock::ManualClock;
use gridwork_runtime::server::ServerHandle;
use gridwork_testkit::db::TestDb;
use gridwork_testkit::nats::NatsServer;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

type Client = GridRegistryServiceClient<gridwork_testkit::auth::Authed>;

/// 2026-03-01T00:00:00Z.
const MARCH_1: i64 = 1_772_323_200_000;
const DAY_MS: i64 = 86_400_000;
const X0: f64 = 115.03;
const Y0: f64 = 35.76;
const STEP: f64 = 0.005;

struct Registry {
    _app: App,
    _server: ServerHandle,
    client: Client,
    clock: ManualClock,
}

async fn spawn(nats: &NatsServer, db: &TestDb) -> Registry {
    gridwork_testkit::init_tracing();
    let clock = ManualClock::at(MARCH_1);
    let app = App::build(&gridwork_testkit::service_config(&nats.url(), &db.url), Arc::new(clock.clone()))
        .await
        .expect("registry builds");
    let server = app.spawn(Duration::from_millis(100)).await.expect("serves");
    let channel = Channel::from_shared(server.endpoint()).expect("endpoint").connect().await.expect("connect");
    Registry {
        _app: app,
        _server: server,
        client: GridRegistryServiceClient::new(gridwork_testkit::auth::authed(channel)),
        clock,
    }
}

fn id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A square in cell coordinates (STEP degrees per cell) from the origin.
fn cells(x: f64, y: f64, w: f64, h: f64) -> String {
    let (x, y, w, h) = (X0 + x * STEP, Y0 + y * STEP, w * STEP, h * STEP);
    polygon_geojson(&[(x, y), (x + w, y), (x + w, y + h), (x, y + h)])
}

fn point(x: f64, y: f64) -> pb::LocateRequest {
    pb::LocateRequest { lon: X0 + x * STEP, lat: Y0 + y * STEP, min_position: 0 }
}

fn register(unit: &str, parent: &str, kind: pb::UnitKind, boundary: String) -> pb::RegisterUnitRequest {
    pb::RegisterUnitRequest {
        command_id: id(),
        unit_id: unit.into(),
        parent_id: parent.into(),
        kind: kind as i32,
        name: format!("{unit} name"),
        boundary_geojson: boundary,
        special_site: 0,
    }
}

/// District d (0..4), street s, community c, grid g (0..2), micro-grids m1 (0..1 × 0..1), m2 (1..2 × 0..1).
async fn seed(client: &mut Client) -> u64 {
    use pb::UnitKind::*;
    let mut last = 0;
    for r in [
        register("d", "", District, cells(0.0, 0.0, 4.0, 4.0)),
        register("s", "d", Street, cells(0.0, 0.0, 4.0, 4.0)),
        register("c", "s", Community, cells(0.0, 0.0, 4.0, 4.0)),
        register("g", "c", Grid, cells(0.0, 0.0, 2.0, 2.0)),
        register("m1", "g", MicroGrid, cells(0.0, 0.0, 1.0, 1.0)),
        register("m2", "g", MicroGrid, cells(1.0, 0.0, 1.0, 1.0)),
    ] {
        last = client.register_unit(r).await.expect("register").into_inner().position.expect("pos").sequence;
    }
    last
}

fn fields(s: &tonic::Status) -> Vec<String> {
    s.get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// Commits in `GRID` that carry events. A refusal is stored too (with no
/// events, so that a retry is refused the same way), but changes nothing.
async fn stream_messages(nats: &NatsServer) -> u64 {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let mut stream = js.get_stream("GRID").await.expect("stream");
    let last = stream.info().await.expect("info").state.last_sequence;
    let mut with_events = 0;
    for seq in 1..=last {
        let m = stream.get_raw_message(seq).await.expect("message");
        let commit = gridwork_eventstore::RecordedCommit::from_stream_message(m).expect("commit");
        if !commit.body.events.is_empty() {
            with_events += 1;
        }
    }
    with_events
}

async fn path(client: &mut Client, req: pb::LocateRequest) -> Vec<String> {
    client.locate(req).await.expect("locate").into_inner().path.into_iter().map(|p| p.unit_id).collect()
}

#[tokio::test]
async fn bad_input_on_every_grid_rpc_is_refused_naming_the_field_or_unit_and_writes_nothing() {
    use pb::UnitKind::*;
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let mut r = spawn(&nats, &db).await;
    let c = &mut r.client;
    seed(c).await;
    let before = stream_messages(&nats).await;

    // Missing and malformed fields: INVALID_ARGUMENT naming each.
    let e = c.register_unit(pb::RegisterUnitRequest::default()).await.expect_err("empty");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(fields(&e), ["command_id", "unit_id", "kind", "name", "boundary_geojson"]);
    let open_ring =
        r#"{"type":"Polygon","coordinates":[[[115.03,35.76],[115.04,35.76],[115.04,35.77],[115.03,35.77]]]}"#;
    let e = c.register_unit(register("m3", "g", MicroGrid, open_ring.into())).await.expect_err("open ring");
    assert_eq!(fields(&e), ["boundary_geojson"]);
    assert!(e.message().contains("not closed"), "{}", e.message());
    let bow_tie = polygon_geojson(&[(115.03, 35.76), (115.04, 35.77), (115.04, 35.76), (115.03, 35.77)]);
    let e = c.register_unit(register("m3", "g", MicroGrid, bow_tie)).await.expect_err("invalid geometry");
    assert_eq!(fields(&e), ["boundary_geojson"]);
    let e =
        c.register_unit(register("g2", "", Grid, cells(2.0, 2.0, 1.0, 1.0))).await.expect_err("grid without parent");
    assert_eq!(fields(&e), ["parent_id"]);
    let mut special = register("sg", "c", SpecialGrid, cells(2.0, 2.0, 1.0, 1.0));
    special.special_site = 0;
    assert_eq!(fields(&c.register_unit(special).await.expect_err("site")), ["special_site"]);

    // Broken rules: FAILED_PRECONDITION naming the unit.
    let e = c.register_unit(register("m3", "g", MicroGrid, cells(0.5, 0.5, 1.0, 1.0))).await.expect_err("overlap");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("m3") && e.message().contains("overlaps") && e.message().contains("m1"),
        "{}",
        e.message()
    );
    let e = c.register_unit(register("m3", "g", MicroGrid, cells(1.5, 1.5, 1.0, 1.0))).await.expect_err("outside");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("not inside its parent g"), "{}", e.message());
    let e = c.register_unit(register("m3", "nope", MicroGrid, cells(0.0, 1.0, 1.0, 1.0))).await.expect_err("parent");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("parent_id"), "{}", e.message());
    let e = c.register_unit(register("x", "g", Community, cells(0.0, 1.0, 1.0, 1.0))).await.expect_err("level");
    assert!(e.message().contains("cannot be registered under g"), "{}", e.message());
    let e = c.register_unit(register("m1", "g", MicroGrid, cells(0.0, 1.0, 1.0, 1.0))).await.expect_err("dup");
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = c
        .redraw_boundary(pb::RedrawBoundaryRequest {
            command_id: id(),
            unit_id: "m1".into(),
            boundary_geojson: cells(0.0, 0.0, 1.5, 1.0),
        })
        .await
        .expect_err("redraw overlaps m2");
    assert!(e.message().contains("overlaps its sibling m2"), "{}", e.message());
    let e = c
        .redraw_boundary(pb::RedrawBoundaryRequest {
            command_id: id(),
            unit_id: "g".into(),
            boundary_geojson: cells(0.0, 0.0, 1.0, 1.0),
        })
        .await
        .expect_err("redraw strands m2");
    assert!(e.message().contains("leave m2 outside"), "{}", e.message());

    // Staff.
    let head = |expires: &str| pb::AppointHeadRequest {
        command_id: id(),
        unit_id: "g".into(),
        person_id: "p1".into(),
        name: "Li Hua".into(),
        certificate: Some(pb::Certificate {
            number: "HL-001".into(),
            issuer: "Huolong".into(),
            expires_on: expires.into(),
        }),
        replacing_reason: String::new(),
    };
    let e = c.appoint_head(head("2026-02-28")).await.expect_err("expired");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("certificate.expires_on"), "{}", e.message());
    let e = c.appoint_head(head("28/02/2026")).await.expect_err("bad date");
    assert_eq!(fields(&e), ["certificate.expires_on"]);
    let e = c
        .appoint_head(pb::AppointHeadRequest { certificate: None, ..head("2027-01-01") })
        .await
        .expect_err("no certificate");
    assert_eq!(fields(&e), ["certificate"]);
    let e = c
        .add_worker(pb::AddWorkerRequest {
            command_id: id(),
            unit_id: "g".into(),
            person_id: "w".into(),
            name: "".into(),
            role: 0,
        })
        .await
        .expect_err("worker");
    assert_eq!(fields(&e), ["name", "role"]);
    let e = c
        .add_worker(pb::AddWorkerRequest {
            command_id: id(),
            unit_id: "s".into(),
            person_id: "w".into(),
            name: "W".into(),
            role: 1,
        })
        .await
        .expect_err("street staff");
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = c
        .dismiss_worker(pb::DismissWorkerRequest {
            command_id: id(),
            unit_id: "g".into(),
            person_id: "w".into(),
            reason: " ".into(),
        })
        .await
        .expect_err("reason");
    assert_eq!(fields(&e), ["reason"]);
    let e = c
        .dismiss_worker(pb::DismissWorkerRequest {
            command_id: id(),
            unit_id: "g".into(),
            person_id: "ghost".into(),
            reason: "r".into(),
        })
        .await
        .expect_err("not a worker");
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = c
        .set_households(pb::SetHouseholdsRequest { command_id: id(), unit_id: "nowhere".into(), households: 5 })
        .await
        .expect_err("unknown unit");
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .set_households(pb::SetHouseholdsRequest { command_id: id(), unit_id: "g".into(), households: 2_000_000 })
        .await
        .expect_err("too many");
    assert_eq!(fields(&e), ["households"]);
    let e = c
        .set_party_branch(pb::SetPartyBranchRequest {
            command_id: id(),
            unit_id: "g".into(),
            name: "B".into(),
            kind: 0,
            secretary: "S".into(),
        })
        .await
        .expect_err("party kind");
    assert_eq!(fields(&e), ["kind"]);
    let e = c.locate(pb::LocateRequest { lat: 91.0, lon: f64::NAN, min_position: 0 }).await.expect_err("locate");
    assert_eq!(fields(&e), ["lat", "lon"]);
    let e = c
        .search_units(pb::SearchUnitsRequest { query: "".into(), kind: 99, limit: 9999, ..Default::default() })
        .await
        .expect_err("search");
    assert_eq!(fields(&e), ["query", "limit", "kind"]);

    assert_eq!(stream_messages(&nats).await, before, "no events written");
}

#[tokio::test]
async fn locate_answers_inside_on_the_edge_outside_and_after_a_redraw() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let mut r = spawn(&nats, &db).await;
    let c = &mut r.client;
    let seeded = seed(c).await;
    // Read your writes: the first lookup waits for the last registration.
    assert_eq!(
        path(c, pb::LocateRequest { min_position: seeded, ..point(0.5, 0.5) }).await,
        ["d", "s", "c", "g", "m1"]
    );
    assert_eq!(path(c, point(1.5, 0.5)).await, ["d", "s", "c", "g", "m2"]);
    assert_eq!(path(c, point(1.0, 0.5)).await, ["d", "s", "c", "g", "m1"], "shared edge: the smaller id");
    assert_eq!(path(c, point(0.0, 0.0)).await, ["d", "s", "c", "g", "m1"], "outer corner is on the edge");
    assert_eq!(path(c, point(1.5, 1.5)).await, ["d", "s", "c", "g"], "in the grid, in no micro-grid");
    assert_eq!(path(c, point(3.0, 3.0)).await, ["d", "s", "c"]);
    assert!(path(c, point(9.0, 9.0)).await.is_empty(), "outside the district");

    // Redraw m2 to cover the grid's top half as well; the answer follows at once.
    let redrawn = c
        .redraw_boundary(pb::RedrawBoundaryRequest {
            command_id: id(),
            unit_id: "m2".into(),
            boundary_geojson: polygon_geojson(&[
                (X0 + STEP, Y0),
                (X0 + 2.0 * STEP, Y0),
                (X0 + 2.0 * STEP, Y0 + 2.0 * STEP),
                (X0, Y0 + 2.0 * STEP),
                (X0, Y0 + STEP),
                (X0 + STEP, Y0 + STEP),
            ]),
        })
        .await
        .expect("redraw");
    let after =
        pb::LocateRequest { min_position: redrawn.into_inner().position.expect("pos").sequence, ..point(1.5, 1.5) };
    assert_eq!(path(c, after).await, ["d", "s", "c", "g", "m2"]);
    assert_eq!(path(c, point(0.5, 1.5)).await, ["d", "s", "c", "g", "m2"]);
    assert_eq!(path(c, point(0.5, 0.5)).await, ["d", "s", "c", "g", "m1"]);
}

async fn unit(c: &mut Client, unit_id: &str, min_position: u64) -> pb::Unit {
    c.get_unit(pb::GetUnitRequest { unit_id: unit_id.into(), min_position })
        .await
        .expect("get")
        .into_inner()
        .unit
        .expect("unit")
}

#[tokio::test]
async fn dismissing_a_worker_keeps_the_history_and_a_head_with_an_expired_certificate_is_flagged() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let mut r = spawn(&nats, &db).await;
    let c = &mut r.client;
    seed(c).await;

    let g = unit(c, "g", 0).await;
    assert!(g.needs_head);
    assert_eq!(g.needs_head_reason, "no head in post");
    c.appoint_head(pb::AppointHeadRequest {
        command_id: id(),
        unit_id: "g".into(),
        person_id: "p1".into(),
        name: "Li Hua".into(),
        certificate: Some(pb::Certificate {
            number: "HL-001".into(),
            issuer: "Huolong".into(),
            expires_on: "2026-03-10".into(),
        }),
        replacing_reason: String::new(),
    })
    .await
    .expect("appoint");
    for (person, role) in [("w1", pb::WorkerRole::FullTime), ("w2", pb::WorkerRole::RiderInformant)] {
        c.add_worker(pb::AddWorkerRequest {
            command_id: id(),
            unit_id: "g".into(),
            person_id: person.into(),
            name: person.into(),
            role: role as i32,
        })
        .await
        .expect("add");
    }
    r.clock.advance_ms(3 * DAY_MS);
    let dismissed = c
        .dismiss_worker(pb::DismissWorkerRequest {
            command_id: id(),
            unit_id: "g".into(),
            person_id: "w1".into(),
            reason: "ineffective".into(),
        })
        .await
        .expect("dismiss")
        .into_inner()
        .position
        .expect("pos")
        .sequence;
    // Re-enrolled later: a second membership, the first one kept.
    c.add_worker(pb::AddWorkerRequest {
        command_id: id(),
        unit_id: "g".into(),
        person_id: "w1".into(),
        name: "w1".into(),
        role: 2,
    })
    .await
    .expect("re-add");

    let g = unit(c, "g", dismissed + 1).await;
    assert!(!g.needs_head, "{}", g.needs_head_reason);
    assert_eq!(g.head.as_ref().map(|h| h.person_id.as_str()), Some("p1"));
    let current: Vec<_> = g.current_workers.iter().map(|w| (w.person_id.as_str(), w.role)).collect();
    assert_eq!(current, [("w2", 5), ("w1", 2)]);
    assert_eq!(g.past_workers.len(), 1);
    let past = &g.past_workers[0];
    assert_eq!((past.person_id.as_str(), past.dismissal_reason.as_str()), ("w1", "ineffective"));
    assert_eq!((past.joined_on.as_str(), past.left_on.as_str()), ("2026-03-01", "2026-03-04"));

    // Ten days on, the certificate has expired: the grid needs a head.
    r.clock.advance_ms(7 * DAY_MS);
    let g = unit(c, "g", 0).await;
    assert!(g.needs_head);
    assert!(g.needs_head_reason.contains("HL-001 of head Li Hua expired on 2026-03-10"), "{}", g.needs_head_reason);
}

fn appoint(unit: &str, person: &str, expires: &str) -> pb::AppointHeadRequest {
    pb::AppointHeadRequest {
        command_id: id(),
        unit_id: unit.into(),
        person_id: person.into(),
        name: format!("{person} name"),
        certificate: Some(pb::Certificate {
            number: format!("HL-{person}"),
            issuer: "Huolong".into(),
            expires_on: expires.into(),
        }),
        replacing_reason: String::new(),
    }
}

fn renew(unit: &str, person: &str, expires: &str) -> pb::RenewHeadCertificateRequest {
    pb::RenewHeadCertificateRequest {
        command_id: id(),
        unit_id: unit.into(),
        person_id: person.into(),
        certificate: Some(pb::Certificate {
            number: format!("HL-{person}-r"),
            issuer: "Huolong".into(),
            expires_on: expires.into(),
        }),
    }
}

fn vacate(unit: &str, person: &str, departure: pb::HeadDeparture) -> pb::VacateHeadRequest {
    pb::VacateHeadRequest {
        command_id: id(),
        unit_id: unit.into(),
        person_id: person.into(),
        departure: departure as i32,
        note: "repeated complaints from residents".into(),
    }
}

/// The rule a FAILED_PRECONDITION names.
fn rule(e: &tonic::Status) -> String {
    e.get_error_details()
        .precondition_failure()
        .and_then(|p| p.violations.first().map(|v| v.r#type.clone()))
        .unwrap_or_else(|| format!("{:?}: {}", e.code(), e.message()))
}

async fn needing(c: &mut Client, under: &str, within: u32, page_size: u32) -> Vec<(String, pb::HeadNeed)> {
    let (mut all, mut token) = (Vec::new(), String::new());
    loop {
        let page = c
            .list_units_needing_head(pb::ListUnitsNeedingHeadRequest {
                under_unit_id: under.into(),
                expiring_within_days: within,
                page_size,
                page_token: token,
                min_position: 0,
            })
            .await
            .expect("needing")
            .into_inner();
        all.extend(
            page.units.iter().map(|n| {
                (n.unit.as_ref().expect("unit").unit_id.clone(), pb::HeadNeed::try_from(n.need).expect("need"))
            }),
        );
        if page.next_page_token.is_empty() {
            return all;
        }
        token = page.next_page_token;
    }
}

async fn history(c: &mut Client, unit: &str, min_position: u64) -> Vec<pb::HeadTerm> {
    c.list_head_history(pb::ListHeadHistoryRequest { unit_id: unit.into(), min_position })
        .await
        .expect("history")
        .into_inner()
        .terms
}

/// The position a head command's answer carries.
fn at(position: Option<pb::CommitPosition>) -> u64 {
    position.expect("position").sequence
}

#[tokio::test]
async fn a_head_is_renewed_replaced_and_vacated_with_every_term_kept() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let mut r = spawn(&nats, &db).await;
    let c = &mut r.client;
    seed(c).await;

    c.appoint_head(appoint("g", "p1", "2026-03-10")).await.expect("appoint");
    // Appointing the head in post again is not how a certificate is renewed.
    let e = c.appoint_head(appoint("g", "p1", "2027-03-10")).await.expect_err("already head");
    assert_eq!((e.code(), rule(&e).as_str()), (Code::FailedPrecondition, "ALREADY_HEAD"), "{e:?}");

    // Renewal: the head in post only, running later than the certificate it renews.
    let e = c.renew_head_certificate(renew("g", "p1", "2026-03-05")).await.expect_err("earlier");
    assert_eq!(rule(&e), "RENEWAL_NOT_LATER", "{e:?}");
    let e = c.renew_head_certificate(renew("g", "p9", "2027-03-10")).await.expect_err("not the head");
    assert_eq!(rule(&e), "NOT_THE_HEAD", "{e:?}");
    let e = c
        .renew_head_certificate(pb::RenewHeadCertificateRequest { certificate: None, ..renew("g", "p1", "x") })
        .await
        .expect_err("no certificate");
    assert_eq!(fields(&e), ["certificate"]);
    r.clock.advance_ms(DAY_MS);
    let renewed =
        at(c.renew_head_certificate(renew("g", "p1", "2027-03-10")).await.expect("renew").into_inner().position);
    let g = unit(c, "g", renewed).await;
    let head = g.head.expect("head in post");
    assert_eq!((head.person_id.as_str(), head.appointed_on.as_str()), ("p1", "2026-03-01"), "the term goes on");
    assert_eq!(head.certificate.expect("cert").expires_on, "2027-03-10");
    let terms = history(c, "g", renewed).await;
    assert_eq!(terms.len(), 1, "a renewal is not a new term: {terms:?}");
    assert_eq!(terms[0].renewals, 1);

    // Replacement: only with a reason (an appointment decided on a vacancy
    // someone has since filled is refused, not a silent replacement); the old
    // term ends as replaced, on the city's date, with the reason.
    r.clock.advance_ms(DAY_MS);
    let e = c.appoint_head(appoint("g", "p2", "2027-06-01")).await.expect_err("a head is in post");
    assert_eq!(rule(&e), "HEAD_IN_POST", "{e:?}");
    assert_eq!(history(c, "g", 0).await.len(), 1, "nothing written");
    let e = c
        .appoint_head(pb::AppointHeadRequest { replacing_reason: "x".repeat(501), ..appoint("g", "p2", "2027-06-01") })
        .await
        .expect_err("too long");
    assert_eq!(fields(&e), ["replacing_reason"]);
    let request = pb::AppointHeadRequest {
        replacing_reason: "moved to the street office".into(),
        ..appoint("g", "p2", "2027-06-01")
    };
    let replaced = at(c.appoint_head(request).await.expect("replace").into_inner().position);
    let terms = history(c, "g", replaced).await;
    let summary: Vec<_> = terms.iter().map(|t| (t.person_id.as_str(), t.left_on.as_str(), t.departure)).collect();
    assert_eq!(summary, [("p2", "", 0), ("p1", "2026-03-03", pb::HeadDeparture::Replaced as i32)]);
    assert!(terms[1].note.contains("replaced by p2 name") && terms[1].note.contains("moved to the street office"));

    // Vacating: the head in post, with a reason; REPLACED is not a reason to give.
    let e = c.vacate_head(vacate("g", "p1", pb::HeadDeparture::Dismissed)).await.expect_err("p1 left");
    assert_eq!(rule(&e), "NOT_THE_HEAD", "{e:?}");
    let e = c.vacate_head(vacate("g", "p2", pb::HeadDeparture::Replaced)).await.expect_err("replaced");
    assert_eq!(fields(&e), ["departure"]);
    let e = c
        .vacate_head(pb::VacateHeadRequest { note: " ".into(), ..vacate("g", "p2", pb::HeadDeparture::Unspecified) })
        .await
        .expect_err("no note, no departure");
    assert_eq!(fields(&e), ["note", "departure"]);
    let vacated =
        at(c.vacate_head(vacate("g", "p2", pb::HeadDeparture::Dismissed)).await.expect("vacate").into_inner().position);
    let g = unit(c, "g", vacated).await;
    assert!(g.head.is_none() && g.needs_head, "{g:?}");
    assert_eq!(g.needs_head_reason, "no head in post");
    let terms = history(c, "g", vacated).await;
    assert_eq!(terms[0].departure, pb::HeadDeparture::Dismissed as i32);
    assert_eq!(terms[0].note, "repeated complaints from residents");
    let e = c.vacate_head(vacate("g", "p2", pb::HeadDeparture::Dismissed)).await.expect_err("vacant");
    assert_eq!(rule(&e), "NO_HEAD", "{e:?}");
    let e = c.list_head_history(pb::ListHeadHistoryRequest { unit_id: "nope".into(), min_position: 0 }).await;
    assert_eq!(e.expect_err("unknown").code(), Code::NotFound);
}

#[tokio::test]
async fn units_needing_a_head_are_listed_by_subtree_in_pages_on_the_citys_date() {
    use pb::HeadNeed::{CertificateExpired, CertificateExpiring, Vacant};
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let mut r = spawn(&nats, &db).await;
    let c = &mut r.client;
    let seeded = seed(c).await;
    let _ = unit(c, "m2", seeded).await;

    // Nothing appointed: the grid and both micro-grids (streets and
    // communities have no heads of this kind).
    let all_vacant = vec![("g".to_string(), Vacant), ("m1".to_string(), Vacant), ("m2".to_string(), Vacant)];
    assert_eq!(needing(c, "d", 0, 100).await, all_vacant);
    assert_eq!(needing(c, "d", 0, 1).await, all_vacant, "one per page, every page followed");
    assert_eq!(needing(c, "m2", 0, 100).await, [("m2".to_string(), Vacant)], "the root itself is listed");

    c.appoint_head(appoint("g", "p1", "2027-03-01")).await.expect("appoint");
    c.appoint_head(appoint("m1", "p2", "2026-03-11")).await.expect("appoint");
    let last = at(c.appoint_head(appoint("m2", "p3", "2026-03-31")).await.expect("appoint").into_inner().position);
    let _ = unit(c, "m2", last).await;
    assert_eq!(needing(c, "c", 0, 100).await, []);
    assert_eq!(needing(c, "c", 10, 100).await, [("m1".to_string(), CertificateExpiring)]);
    assert_eq!(
        needing(c, "c", 30, 100).await,
        [("m1".to_string(), CertificateExpiring), ("m2".to_string(), CertificateExpiring)]
    );

    // 2026-03-11 16:30 UTC is already 2026-03-12 in the city: p2's
    // certificate (last day 03-11) has run out there, though not yet in UTC.
    r.clock.advance_ms(10 * DAY_MS + 16 * 3_600_000 + 30 * 60_000);
    assert_eq!(needing(c, "d", 0, 100).await, [("m1".to_string(), CertificateExpired)]);
    assert!(unit(c, "m1", 0).await.needs_head);

    let e = c
        .list_units_needing_head(pb::ListUnitsNeedingHeadRequest {
            under_unit_id: "a.b".into(),
            expiring_within_days: 400,
            page_size: 501,
            page_token: "bad token".into(),
            min_position: 0,
        })
        .await
        .expect_err("bad input");
    assert_eq!(fields(&e), ["under_unit_id", "expiring_within_days", "page_size", "page_token"]);
    let e = c
        .list_units_needing_head(pb::ListUnitsNeedingHeadRequest { under_unit_id: "zz".into(), ..Default::default() })
        .await;
    assert_eq!(e.expect_err("unknown").code(), Code::NotFound);
}

#[tokio::test]
async fn households_are_flagged_against_their_bands_and_units_can_be_listed_and_searched() {
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let mut r = spawn(&nats, &db).await;
    let c = &mut r.client;
    seed(c).await;
    let set = |unit: &str, households| pb::SetHouseholdsRequest { command_id: id(), unit_id: unit.into(), households };
    let band = c.set_households(set("g", 280)).await.expect("set").into_inner().band;
    assert_eq!(band, pb::HouseholdBand::Below as i32, "accepted but flagged");
    let last = c.set_households(set("m1", 64)).await.expect("set").into_inner().position.expect("pos").sequence;
    assert_eq!(unit(c, "g", last).await.household_band, pb::HouseholdBand::Below as i32);
    assert_eq!(unit(c, "m1", last).await.household_band, pb::HouseholdBand::Within as i32);

    let children = c
        .list_children(pb::ListChildrenRequest { parent_id: "g".into(), min_position: 0 })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(children.units.iter().map(|u| u.unit_id.as_str()).collect::<Vec<_>>(), ["m1", "m2"]);
    assert_eq!(children.units[0].ancestor_ids, ["d", "s", "c", "g"]);
    let districts = c.list_children(pb::ListChildrenRequest::default()).await.expect("list").into_inner();
    assert_eq!(districts.units.len(), 1);
    let found = c
        .search_units(pb::SearchUnitsRequest {
            query: "M1 NA".into(),
            kind: pb::UnitKind::MicroGrid as i32,
            ..Default::default()
        })
        .await
        .expect("search")
        .into_inner();
    assert_eq!(found.units.iter().map(|u| u.unit_id.as_str()).collect::<Vec<_>>(), ["m1"]);
    // Paged one at a time: every unit named like "m…", in order, none twice;
    // a token asked back with another query is refused.
    let all = c
        .search_units(pb::SearchUnitsRequest { query: "m".into(), limit: 500, ..Default::default() })
        .await
        .expect("search")
        .into_inner();
    assert!(all.units.len() >= 2 && all.next_page_token.is_empty(), "{:?}", all.units);
    let (mut seen, mut token) = (Vec::new(), String::new());
    loop {
        let page = c
            .search_units(pb::SearchUnitsRequest {
                query: "m".into(),
                limit: 1,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        seen.extend(page.units.into_iter().map(|u| u.unit_id));
        assert!(seen.len() <= all.units.len(), "pages repeat units: {seen:?}");
        if page.next_page_token.is_empty() {
            break;
        }
        let e = c
            .search_units(pb::SearchUnitsRequest {
                query: "g".into(),
                limit: 1,
                page_token: page.next_page_token.clone(),
                ..Default::default()
            })
            .await
            .expect_err("another query's token");
        assert_eq!(fields(&e), ["page_token"]);
        token = page.next_page_token;
    }
    assert_eq!(seen, all.units.iter().map(|u| u.unit_id.clone()).collect::<Vec<_>>());
}

type HeadTermDump = (String, String, String, Option<String>, i64, String, String, i64);

async fn dump(
    store: &ReadStore,
) -> (
    Vec<(String, String, i64, String, String, Option<i64>, Option<String>)>,
    Vec<(String, String, i64, String, Option<String>)>,
    Vec<HeadTermDump>,
) {
    let units = sqlx::query_as(
        "SELECT unit_id, parent_id, kind, boundary_geojson, ancestors, households, head_person_id FROM grid_units ORDER BY unit_id",
    )
    .fetch_all(store.pool())
    .await
    .expect("units");
    let staff = sqlx::query_as(
        "SELECT unit_id, person_id, role, joined_on, dismissal_reason FROM grid_staff ORDER BY unit_id, person_id, joined_position",
    )
    .fetch_all(store.pool())
    .await
    .expect("staff");
    let terms = sqlx::query_as(
        "SELECT unit_id, person_id, appointed_on, left_on, departure, note, cert_expires_on, renewals \
         FROM grid_head_terms ORDER BY unit_id, appointed_position",
    )
    .fetch_all(store.pool())
    .await
    .expect("terms");
    (units, staff, terms)
}

async fn rebuilt_read_model_equals_the_live_one(db: TestDb, fresh: TestDb) {
    let nats = NatsServer::start().await.expect("nats");
    let mut r = spawn(&nats, &db).await;
    let c = &mut r.client;
    seed(c).await;
    c.add_worker(pb::AddWorkerRequest {
        command_id: id(),
        unit_id: "m1".into(),
        person_id: "w1".into(),
        name: "W".into(),
        role: 5,
    })
    .await
    .expect("add");
    c.dismiss_worker(pb::DismissWorkerRequest {
        command_id: id(),
        unit_id: "m1".into(),
        person_id: "w1".into(),
        reason: "moved".into(),
    })
    .await
    .expect("dismiss");
    c.appoint_head(appoint("m1", "p1", "2027-01-01")).await.expect("appoint");
    c.renew_head_certificate(renew("m1", "p1", "2028-01-01")).await.expect("renew");
    let replace = pb::AppointHeadRequest { replacing_reason: "p1 retired".into(), ..appoint("m1", "p2", "2027-06-01") };
    c.appoint_head(replace).await.expect("replace");
    c.vacate_head(vacate("m1", "p2", pb::HeadDeparture::Resigned)).await.expect("vacate");
    c.appoint_head(appoint("m2", "p3", "2027-06-01")).await.expect("appoint");
    let last = c
        .set_households(pb::SetHouseholdsRequest { command_id: id(), unit_id: "m2".into(), households: 66 })
        .await
        .expect("set")
        .into_inner()
        .position
        .expect("pos")
        .sequence;
    let store = ReadStore::connect(&db.url).await.expect("store");
    let live_handle = r._app.registry().projection();
    live_handle.wait_for(last, Duration::from_secs(10)).await.expect("live");
    let before = dump(&store).await;
    live_handle.rebuild().await.expect("rebuild");
    assert_eq!(dump(&store).await, before, "rebuilt equals live");

    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let other = ReadStore::connect(&fresh.url).await.expect("fresh");
    let reference = ProjectionRunner::start(
        js,
        other.clone(),
        gridwork_grid_registry::projection::Registry,
        RunnerConfig::new("GRID"),
    )
    .await
    .expect("runner");
    reference.wait_for(last, Duration::from_secs(10)).await.expect("reference");
    assert_eq!(dump(&other).await, before, "built from zero elsewhere equals live");
    assert_eq!(before.0.len(), 6);
    assert_eq!(before.1.len(), 1);
    assert_eq!(before.2.len(), 3, "{:?}", before.2);
    reference.stop().await;
    db.cleanup().await;
    fresh.cleanup().await;
}

#[tokio::test]
async fn the_read_model_rebuilt_from_zero_equals_the_live_one_on_sqlite() {
    rebuilt_read_model_equals_the_live_one(TestDb::sqlite().expect("db"), TestDb::sqlite().expect("db")).await;
}

#[tokio::test]
async fn the_read_model_rebuilt_from_zero_equals_the_live_one_on_postgres() {
    let name = "the_read_model_rebuilt_from_zero_equals_the_live_one_on_postgres";
    let (Some(db), Some(fresh)) =
        (TestDb::postgres(name).await.expect("pg"), TestDb::postgres(name).await.expect("pg"))
    else {
        return;
    };
    rebuilt_read_model_equals_the_live_one(db, fresh).await;
}
