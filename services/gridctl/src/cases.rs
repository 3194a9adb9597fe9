//! `gridctl cases …`: dispatch's cases.

use std::time::{Duration, Instant};

use gridwork_proto::gridwork::dispatch::v1 as pb;
use gridwork_proto::gridwork::dispatch::v1::dispatch_service_client::DispatchServiceClient;
use tonic::transport::Channel;

use crate::{Cases, RatingArg, SolvedArg, out};

/// Dates and times in the city's time zone (Asia/Shanghai, UTC+8 all year).
fn local(unix_ms: i64) -> String {
    let offset = time::UtcOffset::from_hms(8, 0, 0).unwrap_or(time::UtcOffset::UTC);
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] +08");
    time::OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.to_offset(offset).format(&format).ok())
        .unwrap_or_default()
}

async fn connect(endpoint: &str) -> anyhow::Result<DispatchServiceClient<Channel>> {
    use anyhow::Context as _;
    let channel = Channel::from_shared(endpoint.to_string())?
        .connect()
        .await
        .with_context(|| format!("connecting to dispatch at {endpoint}"))?;
    Ok(DispatchServiceClient::new(channel))
}

/// `grid:hl-s0-c0-g01` → an owner.
fn owner(s: &str) -> anyhow::Result<pb::Owner> {
    let (tier, id) =
        s.split_once(':').ok_or_else(|| anyhow::anyhow!("{s:?}: write TIER:ID, e.g. grid:hl-s0-c0-g01"))?;
    let tier = match tier {
        "grid" => pb::Tier::Grid,
        "community" => pb::Tier::Community,
        "street" => pb::Tier::Street,
        "department" => pb::Tier::Department,
        "centre" => pb::Tier::DispatchCentre,
        other => anyhow::bail!("{other:?}: tier is grid, community, street, department or centre"),
    };
    Ok(pb::Owner { tier: tier as i32, id: id.into() })
}

fn owner_label(o: &Option<pb::Owner>) -> String {
    let o = o.clone().unwrap_or_default();
    let tier = match pb::Tier::try_from(o.tier).unwrap_or(pb::Tier::Unspecified) {
        pb::Tier::Grid => "grid",
        pb::Tier::Community => "community",
        pb::Tier::Street => "street",
        pb::Tier::Department => "department",
        pb::Tier::DispatchCentre => "centre",
        pb::Tier::Unspecified => "?",
    };
    format!("{tier}:{}", o.id)
}

fn summons_label(status: i32) -> &'static str {
    match pb::SummonsStatus::try_from(status).unwrap_or(pb::SummonsStatus::Unspecified) {
        pb::SummonsStatus::Summoned => "summoned",
        pb::SummonsStatus::Reported => "reported for duty",
        pb::SummonsStatus::Completed => "completed",
        pb::SummonsStatus::Released => "released",
        pb::SummonsStatus::Unspecified => "?",
    }
}

fn print_case(c: &pb::Case) {
    out!("case {} {} ({}, {}) owner {}", c.case_id, c.category_code, c.status, c.open311_status, owner_label(&c.owner));
    if let Some(r) = &c.routing {
        out!("  routed by {}", r.explanation);
    }
    let flags: Vec<&str> = [(c.overdue, "OVERDUE"), (c.supervised, "SUPERVISED (督办)")]
        .into_iter()
        .filter_map(|(on, label)| on.then_some(label))
        .collect();
    out!("  round {}, {} breaches {}", c.round, c.breaches, flags.join(" "));
    for d in &c.pending_deadlines {
        out!("  due {:<28} {}", d.id, local(d.due_unix_ms));
    }
    for s in &c.summonses {
        out!("  summons {:<24} {}", s.department, summons_label(s.status));
    }
    for r in &c.ratings {
        out!(
            "  rated round {}: {} ({}) by {} {}",
            r.round,
            match pb::Rating::try_from(r.rating) {
                Ok(pb::Rating::Satisfied) => "satisfied",
                Ok(pb::Rating::BasicallySatisfied) => "basically satisfied",
                _ => "unsatisfied",
            },
            if r.solved == pb::ResolutionAnswer::Solved as i32 { "solved" } else { "not solved" },
            r.by,
            r.comment
        );
    }
    for t in &c.timeline {
        out!("  #{:<6} {} {:<20} {} ({})", t.sequence, local(t.at_unix_ms), t.event_type, t.summary, t.principal);
    }
}

/// Run one `cases` command.
pub async fn run(endpoint: &str, command: Cases) -> anyhow::Result<Result<(), tonic::Status>> {
    let mut c = connect(endpoint).await?;
    let id = || uuid::Uuid::now_v7().to_string();
    Ok(match command {
        Cases::Get { id: case_id } => {
            // A case opens a moment after its incident is accepted: wait briefly.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match c.get_case(pb::GetCaseRequest { case_id: case_id.clone(), min_position: 0 }).await {
                    Ok(r) => {
                        print_case(&r.into_inner().case.unwrap_or_default());
                        break Ok(());
                    }
                    Err(s) if s.code() == tonic::Code::NotFound && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Err(s) => break Err(s),
                }
            }
        }
        Cases::Queue { owner: o } => {
            match c
                .list_work_queue(pb::ListWorkQueueRequest { owner: Some(owner(&o)?), limit: 50, min_position: 0 })
                .await
            {
                Ok(r) => {
                    let cases = r.into_inner().cases;
                    for case in &cases {
                        let next = case.pending_deadlines.first().map(|d| d.id.clone()).unwrap_or_default();
                        out!("{:<38} {:<20} {:<13} next: {next}", case.case_id, case.category_code, case.status);
                    }
                    out!("({} cases)", cases.len());
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        Cases::Ack { id: case_id, acting_as } => {
            let request = pb::AcknowledgeCaseRequest {
                command_id: id(),
                case_id: case_id.clone(),
                acting_as: Some(owner(&acting_as)?),
            };
            let result = c.acknowledge_case(request).await.map(|r| r.into_inner().position);
            settle(&mut c, &case_id, result, "acknowledged").await
        }
        Cases::Resolve { id: case_id, acting_as, notes } => {
            let request = pb::ResolveCaseRequest {
                command_id: id(),
                case_id: case_id.clone(),
                acting_as: Some(owner(&acting_as)?),
                notes,
            };
            let result = c.resolve_case(request).await.map(|r| r.into_inner().position);
            settle(&mut c, &case_id, result, "resolved").await
        }
        Cases::Overdue => match c.list_overdue(pb::ListOverdueRequest { limit: 500, min_position: 0 }).await {
            Ok(r) => {
                let cases = r.into_inner().cases;
                for case in &cases {
                    let owner = owner_label(&case.owner);
                    let mark = if case.supervised { "督办" } else { "" };
                    out!("{:<38} {:<20} {:<28} {mark}", case.case_id, case.category_code, owner);
                }
                out!("({} overdue)", cases.len());
                Ok(())
            }
            Err(e) => Err(e),
        },
        Cases::Summonses { department, all } => {
            let request = pb::ListSummonsesRequest { department, include_finished: all, limit: 500, min_position: 0 };
            match c.list_summonses(request).await {
                Ok(r) => {
                    let summonses = r.into_inner().summonses;
                    for s in &summonses {
                        out!(
                            "{:<38} whistle {} {:<18} report by {}",
                            s.case_id,
                            s.whistle,
                            summons_label(s.status),
                            local(s.report_by_unix_ms)
                        );
                    }
                    out!("({} summonses)", summonses.len());
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        Cases::Rate { id: case_id, rating, solved, comment } => {
            let rating = match rating {
                RatingArg::Satisfied => pb::Rating::Satisfied,
                RatingArg::BasicallySatisfied => pb::Rating::BasicallySatisfied,
                RatingArg::Unsatisfied => pb::Rating::Unsatisfied,
            };
            let request = pb::VerifyCaseRequest {
                command_id: id(),
                case_id: case_id.clone(),
                rating: rating as i32,
                by: "reporter".into(),
                comment,
                solved: match solved {
                    SolvedArg::Yes => pb::ResolutionAnswer::Solved,
                    SolvedArg::No => pb::ResolutionAnswer::NotSolved,
                } as i32,
            };
            match c.verify_case(request).await {
                Ok(r) => {
                    let r = r.into_inner();
                    settle(&mut c, &case_id, Ok(r.position), &r.outcome).await
                }
                Err(e) => Err(e),
            }
        }
    })
}

/// Wait until the read model shows a write, then say what happened.
async fn settle(
    c: &mut DispatchServiceClient<Channel>,
    case_id: &str,
    result: Result<Option<pb::CommitPosition>, tonic::Status>,
    done: &str,
) -> Result<(), tonic::Status> {
    let sequence = result?.unwrap_or_default().sequence;
    c.get_case(pb::GetCaseRequest { case_id: case_id.into(), min_position: sequence }).await?;
    out!("{done} {case_id} (position {sequence})");
    Ok(())
}
