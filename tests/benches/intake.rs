//! `make bench` (intake and dispatch): ReportIncident throughput and p99 over gRPC
//! at 64 concurrent clients beside the kernel's own 64-writer append rate (the
//! issue's baseline) and a raw JetStream publish rate, both measured in the
//! same run on the same nats-server, and the latency from a report to the case
//! dispatch opens for it, on a quiet mesh and under that load.
//!
//! The load is a city's: reports spread over the 256 grids of a district (each
//! grid and category is one duplicate zone, decided in turn), nine spots per
//! grid more than 100 m apart, so a spot's later reports are "me too"s. A
//! second figure puts every report in one grid (one zone: the worst case).
//!
//! Environment: BENCH_SECONDS (default 5), BENCH_CASES (default 64).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gridwork_e2e::{STEP, X0, Y0, cells, mesh, uuid};
use gridwork_proto::gridwork::dispatch::v1 as dpb;
use gridwork_proto::gridwork::grid::v1 as gpb;
use gridwork_proto::gridwork::intake::v1 as pb;
use hdrhistogram::Histogram;
use tokio::sync::Mutex;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn report_at(_i: u64, category: &str, x: f64, y: f64) -> pb::ReportIncidentRequest {
    let selected = |v: &str| pb::attribute_value::Value::Selected(pb::SelectedValues { values: vec![v.into()] });
    let attributes = match category {
        "fire" => vec![pb::AttributeValue { code: "people-trapped".into(), value: Some(selected("no")) }],
        _ => vec![pb::AttributeValue { code: "hazard".into(), value: Some(selected("wiring")) }],
    };
    pb::ReportIncidentRequest {
        command_id: uuid(),
        source: pb::Source::Resident as i32,
        category_code: category.into(),
        location: Some(pb::report_incident_request::Location::Point(pb::GeoPoint {
            lat: Y0 + y * STEP,
            lon: X0 + x * STEP,
        })),
        description: "bench".into(),
        attributes,
        ..Default::default()
    }
}

/// The bench district: 16 × 16 one-cell grids east of the test tree.
const BENCH_X: f64 = 8.0;
const SIDE: u64 = 16;

/// Register district `bd` > street `bs` > community `bc` > grids `bg-X-Y`.
async fn register_bench_district(m: &mut gridwork_e2e::Mesh) -> u64 {
    let side = SIDE as f64;
    let mut units = vec![
        ("bd".to_string(), String::new(), gpb::UnitKind::District, cells(BENCH_X, 0.0, side, side)),
        ("bs".into(), "bd".into(), gpb::UnitKind::Street, cells(BENCH_X, 0.0, side, side)),
        ("bc".into(), "bs".into(), gpb::UnitKind::Community, cells(BENCH_X, 0.0, side, side)),
    ];
    for gx in 0..SIDE {
        for gy in 0..SIDE {
            let boundary = cells(BENCH_X + gx as f64 + 0.001, gy as f64 + 0.001, 0.998, 0.998);
            units.push((format!("bg-{gx}-{gy}"), "bc".into(), gpb::UnitKind::Grid, boundary));
        }
    }
    let mut last = 0;
    for (unit_id, parent_id, kind, boundary_geojson) in units {
        let request = gpb::RegisterUnitRequest {
            command_id: uuid(),
            name: unit_id.clone(),
            unit_id,
            parent_id,
            kind: kind as i32,
            boundary_geojson,
            special_site: 0,
        };
        let position = m.registry.register_unit(request).await.expect("register").into_inner().position;
        last = position.map_or(last, |p| p.sequence);
    }
    last
}

/// Spot `i` of the spread load: grid `i mod 256`, then one of nine spots in
/// it (0.3 cells, ~135 m, apart).
fn spread(i: u64) -> (f64, f64) {
    let grid = i % (SIDE * SIDE);
    let spot = (i / (SIDE * SIDE)) % 9;
    let (gx, gy) = ((grid % SIDE) as f64, (grid / SIDE) as f64);
    (BENCH_X + gx + 0.2 + (spot % 3) as f64 * 0.3, gy + 0.2 + (spot / 3) as f64 * 0.3)
}

/// Spot `i` in the test tree's one grid (the hot spot).
fn hot(i: u64) -> (f64, f64) {
    ((i % 20) as f64 * 0.1, (i / 20 % 20) as f64 * 0.1)
}

/// An emergency in the test tree's grid `g` (which has a head): its case
/// opens at once.
async fn report_to_case(
    intake: &mut pb::intake_service_client::IntakeServiceClient<gridwork_testkit::auth::Authed>,
    dispatch: &mut dpb::dispatch_service_client::DispatchServiceClient<gridwork_testkit::auth::Authed>,
    i: u64,
) -> Duration {
    let t = Instant::now();
    let (x, y) = (0.05 + (i % 8) as f64 * 0.25, 0.05 + (i / 8 % 8) as f64 * 0.25);
    let mut request = tonic::Request::new(report_at(i, "fire", x, y));
    request.set_timeout(Duration::from_secs(15));
    let reported =
        intake.report_incident(request).await.unwrap_or_else(|e| panic!("emergency {i}: {e:?}")).into_inner();
    assert!(reported.accepted, "emergency {i} was not dispatched at once");
    let id = reported.incident_id;
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < give_up, "case {id} never opened");
        let mut request = tonic::Request::new(dpb::GetCaseRequest { case_id: id.clone(), ..Default::default() });
        request.set_timeout(Duration::from_secs(5));
        match dispatch.get_case(request).await {
            Ok(_) => return t.elapsed(),
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// The kernel's own append rate at 64 writers, each on an aggregate of its
/// own (the sample ledger's deposits), on the mesh's nats-server: what the
/// issue measures ReportIncident against.
async fn kernel_append_rate(url: &str, seconds: u64) -> f64 {
    use gridwork_eventstore::{CommandMeta, Repository, RepositoryOptions, StreamSpec, ensure_stream};
    use gridwork_sample_ledger::domain::ledger::{Ledger, LedgerCommand};
    let client = async_nats::connect(url).await.expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    let spec = StreamSpec::events("sample", 1);
    ensure_stream(&client, &js, &spec).await.expect("stream");
    let bucket = spec.snapshot_bucket();
    let repo = Repository::<Ledger>::new(js, &spec.name, Some(bucket.as_str()), RepositoryOptions::default())
        .await
        .expect("repository");
    let meta =
        || CommandMeta { command_id: uuid(), principal: "bench".into(), decided_at_unix_ms: 0, request_digest: 0 };
    for w in 0..64 {
        repo.execute(&format!("w{w}"), &LedgerCommand::Open { owner: "bench".into() }, &meta()).await.expect("open");
    }
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let writers: Vec<_> = (0..64)
        .map(|w| {
            let (repo, count) = (repo.clone(), count.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    repo.execute(&format!("w{w}"), &LedgerCommand::Deposit { amount: 1 }, &meta())
                        .await
                        .expect("deposit");
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

struct Load {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    me_too: u64,
}

/// 64 clients reporting fire hazards at `spot(i)` for `seconds`.
async fn load(m: &gridwork_e2e::Mesh, seconds: u64, first: u64, spot: fn(u64) -> (f64, f64)) -> Load {
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3).expect("histogram")));
    let (count, me_too) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let clients: Vec<_> = (0..64u64)
        .map(|c| {
            let (mut client, hist, count, me_too) = (m.intake.clone(), hist.clone(), count.clone(), me_too.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    // Clients interleave over the spots: client c's n-th report.
                    let i = first + n * 64 + c;
                    let (x, y) = spot(i);
                    let t = Instant::now();
                    let mut request = tonic::Request::new(report_at(i, "fire-hazard", x, y));
                    request.set_timeout(Duration::from_secs(15));
                    let r = client.report_incident(request).await.expect("report").into_inner();
                    hist.lock().await.record(t.elapsed().as_micros() as u64).expect("record");
                    count.fetch_add(1, Ordering::Relaxed);
                    if !r.duplicate_of.is_empty() {
                        me_too.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("client");
    }
    let rate = count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    let h = hist.lock().await;
    Load {
        rate,
        p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        me_too: me_too.load(Ordering::Relaxed),
    }
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let seconds = env("BENCH_SECONDS", 5);
    let cases = env("BENCH_CASES", 64).min(64);
    let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let mut m = mesh(now).await;
    let last = register_bench_district(&mut m).await;
    m.intake_app.intake().grid().wait_for(last, Duration::from_secs(30)).await.expect("intake's grid copy");

    // Report → case on a quiet mesh.
    let mut quiet = Histogram::<u64>::new(3).expect("histogram");
    let (mut intake, mut dispatch) = (m.intake.clone(), m.dispatch.clone());
    for i in 0..cases {
        quiet.record(report_to_case(&mut intake, &mut dispatch, i).await.as_micros() as u64).expect("record");
    }

    // Baseline: raw JetStream publish + ack at 64 writers, same server, same run.
    let js = async_nats::jetstream::new(async_nats::connect(m.nats.url()).await.expect("connect"));
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.>".into()],
        ..Default::default()
    })
    .await
    .expect("bench stream");
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let writers: Vec<_> = (0..64)
        .map(|w| {
            let (js, count) = (js.clone(), count.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    js.publish(format!("bench.w{w}"), vec![b'x'; 300].into())
                        .await
                        .expect("publish")
                        .await
                        .expect("ack");
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    let raw = count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    let kernel = kernel_append_rate(&m.nats.url(), seconds).await;

    // The spread load, with emergencies reported beside it: report → case
    // under load.
    let under_load = {
        let (mut intake, mut dispatch) = (m.intake.clone(), m.dispatch.clone());
        tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            let stop = Instant::now() + Duration::from_secs(seconds);
            let mut i = 64;
            while Instant::now() < stop {
                h.record(report_to_case(&mut intake, &mut dispatch, i).await.as_micros() as u64).expect("record");
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            h
        })
    };
    let spread_load = load(&m, seconds, 0, spread).await;
    let under_load = under_load.await.expect("emergencies");
    let hot_load = load(&m, seconds, 10_000_000, hot).await;

    println!("\n== Intake and dispatch over gRPC (one process, one nats-server, SQLite read models) ==");
    println!("raw JetStream publish, 64 writers:       {raw:>9.0} msgs/s");
    println!("kernel append (execute), 64 writers:     {kernel:>9.0} commits/s (baseline, same run and server)");
    for (what, l) in [("spread over 256 grids", &spread_load), ("all in one grid (hot)", &hot_load)] {
        println!(
            "ReportIncident, 64 clients, {what}: {:>7.0} reports/s  (ratio to the kernel {:.3}; target 0.3)  \
             p50 {:.1} ms  p99 {:.1} ms  ({} me-toos)",
            l.rate,
            l.rate / kernel,
            l.p50_ms,
            l.p99_ms,
            l.me_too
        );
    }
    for (what, h) in [("quiet", &quiet), ("under the spread load", &under_load)] {
        println!(
            "report → case visible in dispatch, {what}: p50 {:.1} ms  p99 {:.1} ms  ({} emergencies, polled every 1 ms)",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.len()
        );
    }
}
