//! `gridctl cases …`: dispatch's cases.

use std::time::{Duration, Instant};

use crate::caller::Conn;
use gridwork_proto::gridwork::dispatch::v1 as pb;
use gridwork_proto::gridwork::dispatch::v1::dispatch_service_client::DispatchServiceClient;

use crate::{Cases, RatingArg, SolvedArg, out};

/// Dates and times in the city's time zone (Asia/Shanghai, UTC+8 all year).
pub(crate) fn local(unix_ms: i64) -> String {
    let offset = time::UtcOffset::from_hms(8, 0, 0).unwrap_or(time::UtcOffset::UTC);
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] +08");
    time::OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.to_offset(offset).format(&format).ok())
        .unwrap_or_default()
}

async fn connect(endpoint: &str) -> anyhow::Result<DispatchServiceClient<Conn>> {
    Ok(DispatchServiceClient::new(crate::caller::connect(endpoint, "dispatch").await?))
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

/// `HL-20261123-0042` rather than an id.
fn is_case_number(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 3
        && parts[1].len() == 8
        && parts[1].bytes().all(|b| b.is_ascii_digit())
        && !parts[2].is_empty()
        && parts[2].bytes().all(|b| b.is_ascii_digit())
}

/// Midnight starting `day` (YYYY-MM-DD) in the city, as Unix ms.
fn city_midnight(day: &str) -> anyhow::Result<i64> {
    let date = time::Date::parse(day, &time::format_description::well_known::Iso8601::DATE)
        .map_err(|_| anyhow::anyhow!("{day:?}: write a day as YYYY-MM-DD"))?;
    let offset = time::UtcOffset::from_hms(8, 0, 0).unwrap_or(time::UtcOffset::UTC);
    Ok((date.midnight().assume_offset(offset).unix_timestamp_nanos() / 1_000_000) as i64)
}

fn print_case(c: &pb::Case) {
    out!(
        "case {} ({}) {} ({}, {}) owner {}",
        c.case_number,
        c.case_id,
        c.category_code,
        c.status,
        c.open311_status,
        owner_label(&c.owner)
    );
    if let Some(r) = &c.routing {
        out!("  routed by {}", r.explanation);
    }
    if !c.possibly_same_as.is_empty() {
        out!("  possibly the same as {} (a dispatcher merges it or not: cases merge)", c.possibly_same_as);
    }
    if !c.merged_into.is_empty() {
        out!("  merged into {}", c.merged_into);
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
    for r in &c.linked_reports {
        out!("  another report {} ({}): {}", r.report_id, r.source, r.description);
        for a in &r.attributes {
            out!("    {a}");
        }
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
                let request = if is_case_number(&case_id) {
                    pb::GetCaseRequest { case_number: case_id.clone(), ..Default::default() }
                } else {
                    pb::GetCaseRequest { case_id: case_id.clone(), ..Default::default() }
                };
                match c.get_case(request).await {
                    Ok(r) => {
                        let case = r.into_inner().case.unwrap_or_default();
                        crate::emit(&case, CASE);
                        print_case(&case);
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
            let owner = owner(&o)?;
            let mut shown = 0;
            let mut page_token = String::new();
            loop {
                let request =
                    pb::ListWorkQueueRequest { owner: Some(owner.clone()), limit: 200, min_position: 0, page_token };
                let page = match c.list_work_queue(request).await {
                    Ok(r) => r.into_inner(),
                    Err(e) => return Ok(Err(e)),
                };
                for case in &page.cases {
                    crate::emit(case, CASE);
                    let next = case.pending_deadlines.first().map(|d| d.id.clone()).unwrap_or_default();
                    out!("{:<18} {:<20} {:<13} next: {next}", case.case_number, case.category_code, case.status);
                }
                shown += page.cases.len();
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            out!("({shown} cases)");
            Ok(())
        }
        Cases::List { area, statuses, category, from, until, limit } => {
            let opened_from_unix_ms = from.as_deref().map(city_midnight).transpose()?.unwrap_or(0);
            let opened_before_unix_ms = until.as_deref().map(city_midnight).transpose()?.map_or(0, |t| t + 86_400_000);
            let mut shown = 0;
            let mut page_token = String::new();
            loop {
                let request = pb::ListCasesRequest {
                    area_id: area.clone(),
                    statuses: statuses.clone(),
                    category_code: category.clone(),
                    opened_from_unix_ms,
                    opened_before_unix_ms,
                    page_size: 200,
                    page_token,
                    min_position: 0,
                };
                let page = match c.list_cases(request).await {
                    Ok(r) => r.into_inner(),
                    Err(e) => return Ok(Err(e)),
                };
                for case in &page.cases {
                    if shown == limit {
                        out!("(first {limit} shown; --limit for more)");
                        return Ok(Ok(()));
                    }
                    crate::emit(case, CASE);
                    out!(
                        "{:<18} {} {:<20} {:<13} {:<28} {}",
                        case.case_number,
                        local(case.opened_at_unix_ms),
                        case.category_code,
                        case.status,
                        owner_label(&case.owner),
                        if case.overdue { "OVERDUE" } else { "" }
                    );
                    shown += 1;
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            out!("({shown} cases)");
            Ok(())
        }
        Cases::Ack { id: case_id, acting_as } => {
            let request = pb::AcknowledgeCaseRequest {
                command_id: id(),
                case_id: case_id.clone(),
                acting_as: Some(owner(&acting_as)?),
            };
            let result = c.acknowledge_case(request).await.map(|r| r.into_inner());
            answered(
                &mut c,
                &case_id,
                result,
                "gridwork.dispatch.v1.AcknowledgeCaseResponse",
                |r| r.position,
                "acknowledged",
            )
            .await
        }
        Cases::Resolve { id: case_id, acting_as, notes } => {
            let request = pb::ResolveCaseRequest {
                command_id: id(),
                case_id: case_id.clone(),
                acting_as: Some(owner(&acting_as)?),
                notes,
            };
            let result = c.resolve_case(request).await.map(|r| r.into_inner());
            answered(&mut c, &case_id, result, "gridwork.dispatch.v1.ResolveCaseResponse", |r| r.position, "resolved")
                .await
        }
        Cases::Overdue { area } => {
            let mut shown = 0;
            let mut page_token = String::new();
            loop {
                let request = pb::ListOverdueRequest { limit: 200, min_position: 0, page_token, area_id: area.clone() };
                let page = match c.list_overdue(request).await {
                    Ok(r) => r.into_inner(),
                    Err(e) => return Ok(Err(e)),
                };
                for case in &page.cases {
                    crate::emit(case, CASE);
                    let owner = owner_label(&case.owner);
                    let mark = if case.supervised { "督办" } else { "" };
                    out!("{:<18} {:<20} {:<28} {mark}", case.case_number, case.category_code, owner);
                }
                shown += page.cases.len();
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            out!("({shown} overdue)");
            Ok(())
        }
        Cases::Summonses { department, all } => {
            let (mut shown, mut page_token) = (0usize, String::new());
            loop {
                let request = pb::ListSummonsesRequest {
                    department: department.clone(),
                    include_finished: all,
                    limit: 500,
                    min_position: 0,
                    page_token,
                };
                let page = match c.list_summonses(request).await {
                    Ok(r) => r.into_inner(),
                    Err(e) => return Ok(Err(e)),
                };
                for s in &page.summonses {
                    crate::emit(s, "gridwork.dispatch.v1.Summons");
                    out!(
                        "{:<38} whistle {} {:<18} report by {}",
                        s.case_id,
                        s.whistle,
                        summons_label(s.status),
                        local(s.report_by_unix_ms)
                    );
                }
                shown += page.summonses.len();
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            out!("({shown} summonses)");
            Ok(())
        }
        Cases::Progress { id: case_id, acting_as, notes } => {
            let request = pb::RecordProgressRequest {
                command_id: id(),
                case_id: case_id.clone(),
                acting_as: Some(owner(&acting_as)?),
                notes,
            };
            let result = c.record_progress(request).await.map(|r| r.into_inner());
            answered(
                &mut c,
                &case_id,
                result,
                "gridwork.dispatch.v1.RecordProgressResponse",
                |r| r.position,
                "progress recorded on",
            )
            .await
        }
        Cases::HandBack { id: case_id, acting_as, reason } => {
            let request = pb::HandBackCaseRequest {
                command_id: id(),
                case_id: case_id.clone(),
                acting_as: Some(owner(&acting_as)?),
                reason,
            };
            let result = c.hand_back_case(request).await.map(|r| r.into_inner());
            answered(
                &mut c,
                &case_id,
                result,
                "gridwork.dispatch.v1.HandBackCaseResponse",
                |r| r.position,
                "handed back to the dispatch centre",
            )
            .await
        }
        Cases::Assign { id: case_id, from, to } => {
            let request = pb::AssignCaseRequest {
                command_id: id(),
                case_id: case_id.clone(),
                expected_owner: Some(owner(&from)?),
                to: Some(owner(&to)?),
            };
            let result = c.assign_case(request).await.map(|r| r.into_inner());
            answered(
                &mut c,
                &case_id,
                result,
                "gridwork.dispatch.v1.AssignCaseResponse",
                |r| r.position,
                &format!("assigned to {to}:"),
            )
            .await
        }
        Cases::Whistle { id: case_id, acting_as, departments } => {
            let request = pb::BlowWhistleRequest {
                command_id: id(),
                case_id: case_id.clone(),
                acting_as: Some(owner(&acting_as)?),
                departments: departments.clone(),
            };
            let result = c.blow_whistle(request).await.map(|r| r.into_inner());
            let done = format!("summoned {} to", departments.join(", "));
            answered(&mut c, &case_id, result, "gridwork.dispatch.v1.BlowWhistleResponse", |r| r.position, &done).await
        }
        Cases::ReportForDuty { id: case_id, department } => {
            let request =
                pb::ReportForDutyRequest { command_id: id(), case_id: case_id.clone(), department: department.clone() };
            let result = c.report_for_duty(request).await.map(|r| r.into_inner());
            let done = format!("{department} reported for duty on");
            answered(&mut c, &case_id, result, "gridwork.dispatch.v1.ReportForDutyResponse", |r| r.position, &done)
                .await
        }
        Cases::SummonsProgress { id: case_id, department, notes } => {
            let request = pb::RecordSummonsProgressRequest {
                command_id: id(),
                case_id: case_id.clone(),
                department: department.clone(),
                notes,
            };
            let result = c.record_summons_progress(request).await.map(|r| r.into_inner());
            let done = format!("{department} recorded progress on");
            answered(
                &mut c,
                &case_id,
                result,
                "gridwork.dispatch.v1.RecordSummonsProgressResponse",
                |r| r.position,
                &done,
            )
            .await
        }
        Cases::CompleteSummons { id: case_id, department, notes } => {
            let request = pb::CompleteSummonsRequest {
                command_id: id(),
                case_id: case_id.clone(),
                department: department.clone(),
                notes,
            };
            let result = c.complete_summons(request).await.map(|r| r.into_inner());
            let done = format!("{department} completed its part of");
            answered(&mut c, &case_id, result, "gridwork.dispatch.v1.CompleteSummonsResponse", |r| r.position, &done)
                .await
        }
        Cases::ReleaseSummons { id: case_id, acting_as, department, reason } => {
            let request = pb::ReleaseSummonsRequest {
                command_id: id(),
                case_id: case_id.clone(),
                acting_as: Some(owner(&acting_as)?),
                department: department.clone(),
                reason,
            };
            let result = c.release_summons(request).await.map(|r| r.into_inner());
            answered(
                &mut c,
                &case_id,
                result,
                "gridwork.dispatch.v1.ReleaseSummonsResponse",
                |r| r.position,
                &format!("released {department} from"),
            )
            .await
        }
        Cases::Merge { id: case_id, into, reason } => {
            let request =
                pb::MergeCaseRequest { command_id: id(), case_id: case_id.clone(), into_case_id: into.clone(), reason };
            c.merge_case(request).await.map(|r| {
                crate::emit(r.get_ref(), "gridwork.dispatch.v1.MergeCaseResponse");
                out!("{case_id} merged into {into}: closed")
            })
        }
        Cases::Rate { id: case_id, rating, solved, comment, by } => {
            let rating = match rating {
                RatingArg::Satisfied => pb::Rating::Satisfied,
                RatingArg::BasicallySatisfied => pb::Rating::BasicallySatisfied,
                RatingArg::Unsatisfied => pb::Rating::Unsatisfied,
            };
            let request = pb::VerifyCaseRequest {
                command_id: id(),
                case_id: case_id.clone(),
                rating: rating as i32,
                by,
                comment,
                solved: match solved {
                    SolvedArg::Yes => pb::ResolutionAnswer::Solved,
                    SolvedArg::No => pb::ResolutionAnswer::NotSolved,
                } as i32,
            };
            match c.verify_case(request).await {
                Ok(r) => {
                    let r = r.into_inner();
                    crate::emit(&r, "gridwork.dispatch.v1.VerifyCaseResponse");
                    settle(&mut c, &case_id, Ok(r.position), &r.outcome).await
                }
                Err(e) => Err(e),
            }
        }
    })
}

/// The full name of a case message.
const CASE: &str = "gridwork.dispatch.v1.Case";

/// A command's answer (of message type `response`): printed
/// under `--output json`, then [`settle`]d.
async fn answered<R: prost::Message>(
    c: &mut DispatchServiceClient<Conn>,
    case_id: &str,
    result: Result<R, tonic::Status>,
    response: &str,
    position: impl FnOnce(&R) -> Option<pb::CommitPosition>,
    done: &str,
) -> Result<(), tonic::Status> {
    let r = result?;
    crate::emit(&r, response);
    settle(c, case_id, Ok(position(&r)), done).await
}

/// Wait until the read model shows a write, then say what happened.
async fn settle(
    c: &mut DispatchServiceClient<Conn>,
    case_id: &str,
    result: Result<Option<pb::CommitPosition>, tonic::Status>,
    done: &str,
) -> Result<(), tonic::Status> {
    let sequence = result?.unwrap_or_default().sequence;
    c.get_case(pb::GetCaseRequest { case_id: case_id.into(), min_position: sequence, ..Default::default() }).await?;
    out!("{done} {case_id} (position {sequence})");
    Ok(())
}
