//! `make bench` (intake and dispatch): ReportIncident throughput and p99 over gRPC
//! at 64 concurrent clients beside a raw JetStream publish rate measured in the
//! same run, and the latency from a report to the case dispatch opens for it.
//!
//! Environment: BENCH_SECONDS (default 5), BENCH_CASES (default 100).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gridwork_e2e::{STEP, X0, Y0, mesh, uuid};
use gridwork_proto::gridwork::dispatch::v1 as dpb;
use gridwork_proto::gridwork::intake::v1 as pb;
use hdrhistogram::Histogram;
use tokio::sync::Mutex;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn report(i: u64, category: &str) -> pb::ReportIncidentRequest {
    report_at(i, category, (i % 20) as f64 * 0.1, (i / 20 % 20) as f64 * 0.1)
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

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let seconds = env("BENCH_SECONDS", 5);
    // Emergencies at least 110 m apart, so none is a "me too" of another.
    let cases = env("BENCH_CASES", 64).min(64);
    let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let m = mesh(now).await;

    // Report → case on a quiet mesh: emergencies are accepted at once; time until
    // dispatch shows the case.
    let mut latency = Histogram::<u64>::new(3).expect("histogram");
    let (mut intake, mut dispatch) = (m.intake.clone(), m.dispatch.clone());
    for i in 0..cases {
        let t = Instant::now();
        let (x, y) = (0.05 + (i % 8) as f64 * 0.25, 0.05 + (i / 8) as f64 * 0.25);
        let mut request = tonic::Request::new(report_at(i, "fire", x, y));
        request.set_timeout(Duration::from_secs(15));
        let reported =
            intake.report_incident(request).await.unwrap_or_else(|e| panic!("emergency {i}: {e:?}")).into_inner();
        assert!(reported.accepted, "emergency {i} was not accepted at once (a me-too?)");
        let id = reported.incident_id;
        let give_up = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < give_up, "case {id} never opened");
            let mut request = tonic::Request::new(dpb::GetCaseRequest { case_id: id.clone(), ..Default::default() });
            request.set_timeout(Duration::from_secs(5));
            match dispatch.get_case(request).await {
                Ok(_) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
        latency.record(t.elapsed().as_micros() as u64).expect("record");
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

    // ReportIncident over gRPC, 64 concurrent clients.
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3).expect("histogram")));
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let clients: Vec<_> = (0..64u64)
        .map(|c| {
            let (mut client, hist, count) = (m.intake.clone(), hist.clone(), count.clone());
            tokio::spawn(async move {
                let mut i = c * 1_000_000;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let mut request = tonic::Request::new(report(i, "fire-hazard"));
                    request.set_timeout(Duration::from_secs(15));
                    client.report_incident(request).await.expect("report");
                    hist.lock().await.record(t.elapsed().as_micros() as u64).expect("record");
                    count.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("client");
    }
    let reports = count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    let h = hist.lock().await;

    println!("\n== Intake and dispatch over gRPC (one process, one nats-server, SQLite read models) ==");
    println!("raw JetStream publish, 64 writers:       {raw:>9.0} msgs/s (baseline, same run)");
    println!(
        "ReportIncident, 64 concurrent clients:   {reports:>9.0} reports/s  (ratio {:.3})  p50 {:.1} ms  p99 {:.1} ms",
        reports / raw,
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0
    );
    println!(
        "report → case visible in dispatch:      p50 {:.1} ms  p99 {:.1} ms  ({} emergencies, polled every 1 ms)",
        latency.value_at_quantile(0.5) as f64 / 1000.0,
        latency.value_at_quantile(0.99) as f64 / 1000.0,
        latency.len()
    );
}
