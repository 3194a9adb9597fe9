//! `gridctl seed-demo`: the demo district onto the registry, its staff dated
//! from today in the city's time zone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use gridwork_demo::{self as demo, DemoHead, DemoRole, DemoUnit, Layout};
use gridwork_proto::gridwork::grid::v1 as pb;
use time::Date;
use tokio::sync::Semaphore;

use crate::units::Registry;
use crate::{command_id, out};

/// Today in the city's time zone (Asia/Shanghai, UTC+8 all year).
fn city_today() -> Date {
    let offset = time::UtcOffset::from_hms(8, 0, 0).unwrap_or(time::UtcOffset::UTC);
    time::OffsetDateTime::now_utc().to_offset(offset).date()
}

pub async fn seed_demo(registry: Registry) -> Result<(), tonic::Status> {
    let started = Instant::now();
    let today = city_today();
    let units = demo::district(Layout::default());
    let mut by_depth: BTreeMap<u8, BTreeMap<String, Vec<DemoUnit>>> = BTreeMap::new();
    for u in &units {
        by_depth.entry(u.kind.depth()).or_default().entry(u.parent_id.clone()).or_default().push(u.clone());
    }
    let permits = Arc::new(Semaphore::new(24));
    let mut registered = 0usize;
    for (_, groups) in by_depth {
        let mut tasks = Vec::new();
        for (_, group) in groups {
            let (mut client, permits) = (registry.clone(), permits.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = permits.acquire_owned().await.map_err(|_| tonic::Status::cancelled("stopped"))?;
                let mut n = 0usize;
                for u in group {
                    // Every write's command id is the unit's own, so a unit
                    // seeded again after a refusal writes nothing twice.
                    let mut waited = std::time::Duration::ZERO;
                    loop {
                        match seed_unit(&mut client, &u, today).await {
                            Err(s) if s.code() == tonic::Code::ResourceExhausted && waited < MAX_BACKOFF => {
                                let wait = retry_after(&s);
                                waited += wait;
                                tokio::time::sleep(wait).await;
                            }
                            other => break other?,
                        }
                    }
                    n += 1;
                }
                Ok::<usize, tonic::Status>(n)
            }));
        }
        for t in tasks {
            registered += t.await.map_err(|e| tonic::Status::internal(e.to_string()))??;
        }
    }
    out!(
        "seeded {registered} units of the demo district (staff dated from {today}) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Already there (a second run): fine.
fn tolerate_existing(r: Result<(), tonic::Status>) -> Result<(), tonic::Status> {
    match r {
        Err(s) if s.code() == tonic::Code::FailedPrecondition && s.message().contains("already") => Ok(()),
        other => other,
    }
}

/// The longest the seed waits, in all, on a unit the registry's write rate
/// holds back (the caller's `WRITE_RATE_PER_SECOND`).
const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(600);

/// How long a RESOURCE_EXHAUSTED asks the caller to wait (its RetryInfo), 1 s
/// if it does not say.
fn retry_after(status: &tonic::Status) -> std::time::Duration {
    use tonic_types::StatusExt as _;
    status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .unwrap_or(std::time::Duration::from_secs(1))
        .clamp(std::time::Duration::from_millis(10), std::time::Duration::from_secs(30))
}

async fn seed_unit(client: &mut Registry, u: &DemoUnit, today: Date) -> Result<(), tonic::Status> {
    tolerate_existing(
        client
            .register_unit(pb::RegisterUnitRequest {
                command_id: command_id(&["register", &u.id]),
                unit_id: u.id.clone(),
                parent_id: u.parent_id.clone(),
                kind: u.kind.to_proto() as i32,
                name: u.name.clone(),
                boundary_geojson: u.boundary_geojson.clone(),
                special_site: u.special_site,
            })
            .await
            .map(|_| ()),
    )?;
    // The position of this unit's last write, so the reads below see it.
    let mut seen = 0;
    if let Some(households) = u.households {
        let r = client
            .set_households(pb::SetHouseholdsRequest {
                command_id: command_id(&["households", &u.id]),
                unit_id: u.id.clone(),
                households,
            })
            .await?;
        seen = r.into_inner().position.unwrap_or_default().sequence;
    }
    let Some(staff) = demo::staff(u, today) else { return Ok(()) };
    if let Some(head) = &staff.head {
        seed_head(client, u, head, today, seen).await?;
    }
    if let Some((name, secretary)) = staff.party_branch {
        client
            .set_party_branch(pb::SetPartyBranchRequest {
                command_id: command_id(&["party", &u.id]),
                unit_id: u.id.clone(),
                name,
                kind: pb::PartyOrgKind::Branch as i32,
                secretary,
            })
            .await?;
    }
    for w in staff.workers {
        let role = match w.role {
            DemoRole::FullTime => pb::WorkerRole::FullTime,
            DemoRole::RiderInformant => pb::WorkerRole::RiderInformant,
            DemoRole::RetiredPartyMember => pb::WorkerRole::RetiredPartyMember,
        };
        tolerate_existing(
            client
                .add_worker(pb::AddWorkerRequest {
                    command_id: command_id(&["worker", &u.id, &w.person_id]),
                    unit_id: u.id.clone(),
                    person_id: w.person_id,
                    name: w.name,
                    role: role as i32,
                })
                .await
                .map(|_| ()),
        )?;
    }
    Ok(())
}

/// Appoint the demo head only in a unit that has never had one: a later seed
/// leaves operators' appointments, vacancies and replacements alone, and only
/// renews the demo head's own certificate if it has run out (an earlier seed's).
async fn seed_head(
    client: &mut Registry,
    u: &DemoUnit,
    head: &DemoHead,
    today: Date,
    seen: u64,
) -> Result<(), tonic::Status> {
    let expires_on = head.expires_on.to_string();
    let certificate = pb::Certificate {
        number: head.certificate_number.clone(),
        issuer: head.issuer.clone(),
        expires_on: expires_on.clone(),
    };
    let terms = client
        .list_head_history(pb::ListHeadHistoryRequest { unit_id: u.id.clone(), min_position: seen })
        .await?
        .into_inner()
        .terms;
    match terms.first() {
        None => client
            .appoint_head(pb::AppointHeadRequest {
                command_id: command_id(&["head", &u.id, &expires_on]),
                unit_id: u.id.clone(),
                person_id: head.person_id.clone(),
                name: head.name.clone(),
                certificate: Some(certificate),
                // Only where no head has ever been: nobody is replaced.
                replacing_reason: String::new(),
            })
            .await
            .map(|_| ()),
        Some(t)
            if t.left_on.is_empty()
                && t.person_id == head.person_id
                && t.certificate.as_ref().is_some_and(|c| c.expires_on < today.to_string()) =>
        {
            client
                .renew_head_certificate(pb::RenewHeadCertificateRequest {
                    command_id: command_id(&["renew", &u.id, &expires_on]),
                    unit_id: u.id.clone(),
                    person_id: head.person_id.clone(),
                    certificate: Some(certificate),
                })
                .await
                .map(|_| ())
        }
        Some(_) => Ok(()),
    }
}
