//! `gridctl rules …` and `gridctl calendar …`: dispatch's rulebook and working
//! calendar.

use crate::caller::Conn;
use gridwork_proto::gridwork::dispatch::v1 as pb;
use gridwork_proto::gridwork::dispatch::v1::rulebook_service_client::RulebookServiceClient;

use crate::json::{from_json, to_json};
use crate::{Calendar, Output, Rules, out};

const RULEBOOK: &str = "gridwork.dispatch.v1.Rulebook";
const YEAR: &str = "gridwork.dispatch.v1.CalendarYear";

async fn connect(endpoint: &str) -> anyhow::Result<RulebookServiceClient<Conn>> {
    Ok(RulebookServiceClient::new(crate::caller::connect(endpoint, "dispatch").await?))
}

fn span(s: &Option<pb::Span>) -> String {
    use pb::span::Length;
    match s.as_ref().and_then(|s| s.length) {
        Some(Length::WallMinutes(m)) => format!("{m} min"),
        Some(Length::OfficeMinutes(m)) => format!("{m} office min"),
        Some(Length::WorkingDays(d)) => format!("{d} working days"),
        Some(Length::CalendarDays(d)) => format!("{d} days"),
        None => "-".into(),
    }
}

fn plan(p: Option<pb::ClockPlan>) -> String {
    let p = p.unwrap_or_default();
    format!("ack {} / respond {} / resolve {}", span(&p.acknowledge), span(&p.respond), span(&p.resolve))
}

fn print_rulebook(book: &pb::Rulebook, current: u32) {
    out!(
        "rulebook version {} ({}){}",
        book.version,
        if book.version == current { "in force" } else { "not in force" },
        if book.note.is_empty() { String::new() } else { format!(": {}", book.note) }
    );
    out!("departments:");
    for d in &book.departments {
        out!("  {:<24} {}", d.code, d.name);
    }
    out!("routing rules (most specific wins):");
    for r in &book.rules {
        let tier = pb::Tier::try_from(r.first_tier).unwrap_or_default().as_str_name().trim_start_matches("TIER_");
        out!(
            "  {:<24} category {:<24} area {:<12} first {:<10} department {:<18} emergency {}",
            r.id,
            if r.category_code.is_empty() { "*" } else { &r.category_code },
            if r.area_id.is_empty() { "*" } else { &r.area_id },
            tier.to_lowercase(),
            if r.department.is_empty() { "-" } else { &r.department },
            r.emergency_departments.join(",")
        );
    }
    let sla = book.sla.clone().unwrap_or_default();
    out!("SLA plans:");
    for p in &sla.priorities {
        out!("  priority {}: {}", p.priority, plan(p.plan));
    }
    out!("  emergency: {}", plan(sla.emergency));
    for c in &sla.categories {
        let counting =
            if c.counting == pb::Counting::RoundTheClock as i32 { "round the clock" } else { "working time" };
        out!(
            "  {:<24} {counting}; ack {} / respond {} / resolve {}",
            c.category_code,
            span(&c.acknowledge),
            span(&c.respond),
            span(&c.resolve)
        );
    }
    out!("  summons window {} min, rating window {} days", sla.summons_minutes, sla.rating_window_days);
}

/// Run one `rules` command.
pub async fn run_rules(endpoint: &str, output: Output, command: Rules) -> anyhow::Result<Result<(), tonic::Status>> {
    let mut c = connect(endpoint).await?;
    Ok(match command {
        Rules::Show { version } => match c.get_rulebook(pb::GetRulebookRequest { version }).await {
            Ok(r) => {
                let r = r.into_inner();
                let book = r.rulebook.unwrap_or_default();
                match output {
                    Output::Json => crate::write_line(format_args!("{}", to_json(&book, RULEBOOK)?)),
                    Output::Text => print_rulebook(&book, r.current_version),
                }
                Ok(())
            }
            Err(s) => Err(s),
        },
        Rules::Publish { file, expected_version, note } => {
            use anyhow::Context as _;
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
            let mut book: pb::Rulebook =
                from_json(&text, RULEBOOK).with_context(|| format!("{file} is not a rulebook in JSON"))?;
            if let Some(note) = note {
                book.note = note;
            }
            let request = pb::PublishRulebookRequest {
                command_id: uuid::Uuid::now_v7().to_string(),
                rulebook: Some(book),
                expected_version,
            };
            c.publish_rulebook(request).await.map(|r| {
                let r = r.into_inner();
                crate::emit(&r, "gridwork.dispatch.v1.PublishRulebookResponse");
                out!("published rulebook version {} (position {})", r.version, r.position.unwrap_or_default().sequence);
            })
        }
    })
}

/// Run one `calendar` command.
pub async fn run_calendar(
    endpoint: &str,
    output: Output,
    command: Calendar,
) -> anyhow::Result<Result<(), tonic::Status>> {
    let mut c = connect(endpoint).await?;
    Ok(match command {
        Calendar::Show { year } => match c.get_calendar_year(pb::GetCalendarYearRequest { year }).await {
            Ok(r) => {
                let y = r.into_inner().year.unwrap_or_default();
                match output {
                    Output::Json => crate::write_line(format_args!("{}", to_json(&y, YEAR)?)),
                    Output::Text => {
                        out!(
                            "{} revision {} ({}){}",
                            y.year,
                            y.revision,
                            if y.complete { "complete" } else { "incomplete" },
                            if y.note.is_empty() { String::new() } else { format!(": {}", y.note) }
                        );
                        out!("  off:  {}", y.holidays.join(" "));
                        out!("  work: {}", y.make_up_workdays.join(" "));
                    }
                }
                Ok(())
            }
            Err(s) => Err(s),
        },
        Calendar::Publish { year, holidays, workdays, complete, note } => {
            let request = pb::PublishCalendarYearRequest {
                command_id: uuid::Uuid::now_v7().to_string(),
                year: Some(pb::CalendarYear {
                    year,
                    holidays,
                    make_up_workdays: workdays,
                    complete,
                    note,
                    ..Default::default()
                }),
            };
            c.publish_calendar_year(request).await.map(|r| {
                let r = r.into_inner();
                crate::emit(&r, "gridwork.dispatch.v1.PublishCalendarYearResponse");
                out!("published {year} revision {} (position {})", r.revision, r.position.unwrap_or_default().sequence);
            })
        }
    })
}
