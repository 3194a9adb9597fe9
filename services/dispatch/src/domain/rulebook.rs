//! The city's dispatch rules as data (subject `dispatch.rulebook.<city>`):
//! departments, routing rules and the SLA policy, published as whole versions,
//! and the working calendar's years. Version 0 is the built-in rulebook a city
//! starts with ([`Rules::builtin`]); a case records the version it was routed
//! under and keeps that version's SLA plan for its whole life, so publishing a
//! new plan never moves an open case's clocks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gridwork_eventstore::{Aggregate, DecodeError};
use gridwork_proto::gridwork::dispatch::v1 as pb;
use prost::Message as _;
use time::{Date, Duration, Weekday};

use super::calendar::{Counting, Span, WorkingCalendar};
use super::case::SlaPlan;
use super::routing::{FirstTier, Rule, Terms};
use crate::events::RulebookEvent;

/// One field problem: the field's path and what is wrong.
pub type Violation = (String, String);

/// The lengths of a case's three clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSpans {
    /// Each owner, to acknowledge.
    pub acknowledge: Span,
    /// The case, to respond.
    pub respond: Span,
    /// The case, to resolve.
    pub resolve: Span,
}

/// A category's adjustments: its counting, and its own lengths where it has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CategoryPlan {
    /// Office time or round the clock.
    pub counting: Counting,
    /// Its own acknowledge length.
    pub acknowledge: Option<Span>,
    /// Its own respond length.
    pub respond: Option<Span>,
    /// Its own resolve length.
    pub resolve: Option<Span>,
}

/// Every clock a case can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaPolicy {
    /// Plans by priority (1-4).
    pub priorities: BTreeMap<i32, ClockSpans>,
    /// The plan for emergencies.
    pub emergency: ClockSpans,
    /// Category adjustments.
    pub categories: BTreeMap<String, CategoryPlan>,
    /// A summoned department's window to report for duty.
    pub summons: Duration,
    /// The reporter's rating window, in calendar days.
    pub rating_window_days: u32,
}

impl SlaPolicy {
    /// The plan for a case: the emergency plan for an emergency whatever its
    /// category; otherwise its priority's plan (the nearest lower priority's,
    /// then the nearest higher's, for a priority without one) with the
    /// category's own lengths and counting.
    pub fn plan_for(&self, category: &str, priority: i32, emergency: bool) -> SlaPlan {
        let spans = if emergency {
            self.emergency
        } else {
            self.priorities
                .range(..=priority)
                .next_back()
                .or_else(|| self.priorities.range(priority..).next())
                .map(|(_, s)| *s)
                .unwrap_or(self.emergency)
        };
        let adjust = (!emergency).then(|| self.categories.get(category)).flatten();
        let mut plan = SlaPlan {
            acknowledge: adjust.and_then(|c| c.acknowledge).unwrap_or(spans.acknowledge),
            respond: adjust.and_then(|c| c.respond).unwrap_or(spans.respond),
            resolve: adjust.and_then(|c| c.resolve).unwrap_or(spans.resolve),
            summons: Span::Wall(self.summons),
            rate: Span::CalendarDays(self.rating_window_days),
        };
        plan.summons = plan.acknowledge.counting_like(self.summons);
        if adjust.is_some_and(|c| c.counting == Counting::Wall) {
            plan = plan.round_the_clock();
        }
        plan
    }
}

/// One version of the rules, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Version (0: built in).
    pub version: u32,
    /// Department names by code.
    pub departments: BTreeMap<String, String>,
    /// Routing rules, in the order published.
    pub rules: Vec<Rule>,
    /// The SLA policy.
    pub sla: SlaPolicy,
    /// As published (with note, time and publisher), for reads.
    pub published: pb::Rulebook,
}

impl Rules {
    /// Whether `code` is one of this version's departments.
    pub fn has_department(&self, code: &str) -> bool {
        self.departments.contains_key(code)
    }

    /// The built-in rulebook: DOMAIN.md's departments, its categories routed to
    /// them, and the hotlines' usual clocks. Its summons and rating windows come
    /// from the service's settings.
    pub fn builtin(terms: &Terms) -> Self {
        use Span::{CalendarDays, OfficeHours, Wall, WorkingDays};
        let departments: BTreeMap<String, String> = [
            ("fire-brigade", "消防救援 Fire and rescue"),
            ("police", "公安 Police"),
            ("emergency-medical", "120 急救 Emergency medical"),
            ("justice", "司法所 Justice and mediation"),
            ("housing", "住建 Housing and construction"),
            ("traffic-police", "交警 Traffic police"),
            ("urban-management", "城管 Urban management"),
            ("civil-affairs", "民政 Civil affairs"),
        ]
        .into_iter()
        .map(|(c, n)| (c.to_string(), n.to_string()))
        .collect();
        let rule = |id: &str, category: Option<&str>, first_tier, department: &str, emergency: &[&str]| Rule {
            id: id.into(),
            category: category.map(String::from),
            area: None,
            first_tier,
            department: department.into(),
            emergency_departments: emergency.iter().map(|d| d.to_string()).collect(),
        };
        // 119, 110 and 120 answer together (三台联动): an emergency category
        // without a rule of its own summons all three.
        let responders = ["fire-brigade", "police", "emergency-medical"];
        let rules = vec![
            rule("default", None, FirstTier::Grid, "", &responders),
            rule("fire", Some("fire"), FirstTier::Street, "fire-brigade", &responders),
            rule("fire-hazard", Some("fire-hazard"), FirstTier::Grid, "fire-brigade", &[]),
            rule("public-safety", Some("public-safety"), FirstTier::Community, "police", &[]),
            rule("neighbour-dispute", Some("neighbour-dispute"), FirstTier::Grid, "justice", &[]),
            rule("property-conflict", Some("property-conflict"), FirstTier::Community, "housing", &[]),
            rule("parking", Some("parking"), FirstTier::Grid, "traffic-police", &[]),
            rule("old-compound-renovation", Some("old-compound-renovation"), FirstTier::Community, "housing", &[]),
            rule("sanitation", Some("sanitation"), FirstTier::Grid, "urban-management", &[]),
            rule("elderly-welfare", Some("elderly-welfare"), FirstTier::Grid, "civil-affairs", &[]),
        ];
        let spans = |acknowledge, respond, resolve| ClockSpans { acknowledge, respond, resolve };
        let h = Duration::hours;
        let m = Duration::minutes;
        let priorities = BTreeMap::from([
            (1, spans(OfficeHours(h(4)), WorkingDays(2), WorkingDays(5))),
            (2, spans(OfficeHours(h(4)), WorkingDays(2), WorkingDays(5))),
            (3, spans(OfficeHours(h(2)), OfficeHours(h(8)), WorkingDays(3))),
            (4, spans(Wall(m(30)), Wall(h(2)), Wall(h(24)))),
        ]);
        let adjust = |counting, acknowledge, respond, resolve| CategoryPlan { counting, acknowledge, respond, resolve };
        // Renovation takes weeks; a lonely elder's need, a day; risks to people
        // and property do not wait for Monday.
        let categories = BTreeMap::from([
            ("old-compound-renovation".to_string(), adjust(Counting::Working, None, None, Some(WorkingDays(20)))),
            ("property-conflict".to_string(), adjust(Counting::Working, None, None, Some(WorkingDays(10)))),
            (
                "elderly-welfare".to_string(),
                adjust(Counting::Wall, Some(Wall(h(1))), Some(Wall(h(4))), Some(CalendarDays(1))),
            ),
            ("public-safety".to_string(), adjust(Counting::Wall, None, None, None)),
            ("fire-hazard".to_string(), adjust(Counting::Wall, None, None, None)),
            ("fire".to_string(), adjust(Counting::Wall, None, None, None)),
        ]);
        let sla = SlaPolicy {
            priorities,
            emergency: spans(Wall(m(5)), Wall(m(15)), Wall(h(4))),
            categories,
            summons: terms.summon_within,
            rating_window_days: terms.rating_window_days,
        };
        let mut rules = Self { version: 0, departments, rules, sla, published: pb::Rulebook::default() };
        rules.published = rules.to_pb();
        rules.published.note = "built in".into();
        rules
    }

    /// The protobuf form (without note, time and publisher).
    pub fn to_pb(&self) -> pb::Rulebook {
        let tier = |t: FirstTier| match t {
            FirstTier::Grid => pb::Tier::Grid,
            FirstTier::Community => pb::Tier::Community,
            FirstTier::Street => pb::Tier::Street,
        } as i32;
        let plan = |s: &ClockSpans| pb::ClockPlan {
            acknowledge: Some(span_pb(s.acknowledge)),
            respond: Some(span_pb(s.respond)),
            resolve: Some(span_pb(s.resolve)),
        };
        pb::Rulebook {
            version: self.version,
            departments: self
                .departments
                .iter()
                .map(|(code, name)| pb::Department { code: code.clone(), name: name.clone() })
                .collect(),
            rules: self
                .rules
                .iter()
                .map(|r| pb::RoutingRule {
                    id: r.id.clone(),
                    category_code: r.category.clone().unwrap_or_default(),
                    area_id: r.area.clone().unwrap_or_default(),
                    first_tier: tier(r.first_tier),
                    department: r.department.clone(),
                    emergency_departments: r.emergency_departments.clone(),
                })
                .collect(),
            sla: Some(pb::SlaPolicy {
                priorities: self
                    .sla
                    .priorities
                    .iter()
                    .map(|(p, s)| pb::PriorityPlan { priority: *p, plan: Some(plan(s)) })
                    .collect(),
                emergency: Some(plan(&self.sla.emergency)),
                categories: self
                    .sla
                    .categories
                    .iter()
                    .map(|(code, c)| pb::CategoryPlan {
                        category_code: code.clone(),
                        counting: match c.counting {
                            Counting::Working => pb::Counting::WorkingTime,
                            Counting::Wall => pb::Counting::RoundTheClock,
                        } as i32,
                        acknowledge: c.acknowledge.map(span_pb),
                        respond: c.respond.map(span_pb),
                        resolve: c.resolve.map(span_pb),
                    })
                    .collect(),
                summons_minutes: self.sla.summons.whole_minutes().clamp(0, i64::from(u32::MAX)) as u32,
                rating_window_days: self.sla.rating_window_days,
            }),
            ..Default::default()
        }
    }
}

fn span_pb(s: Span) -> pb::Span {
    use pb::span::Length;
    let minutes = |d: Duration| d.whole_minutes().clamp(0, i64::from(u32::MAX)) as u32;
    pb::Span {
        length: Some(match s {
            Span::Wall(d) => Length::WallMinutes(minutes(d)),
            Span::OfficeHours(d) => Length::OfficeMinutes(minutes(d)),
            Span::WorkingDays(n) => Length::WorkingDays(n),
            Span::CalendarDays(n) => Length::CalendarDays(n),
        }),
    }
}

/// Longest clock a plan may set: a year.
const MAX_MINUTES: u32 = 366 * 24 * 60;
const MAX_DAYS: u32 = 366;

fn parse_span(problems: &mut Vec<Violation>, at: &str, s: Option<&pb::Span>) -> Option<Span> {
    use pb::span::Length;
    let Some(length) = s.and_then(|s| s.length) else {
        problems.push((at.into(), "must be set (wall_minutes, office_minutes, working_days or calendar_days)".into()));
        return None;
    };
    let (n, max, unit) = match length {
        Length::WallMinutes(n) | Length::OfficeMinutes(n) => (n, MAX_MINUTES, "minutes"),
        Length::WorkingDays(n) | Length::CalendarDays(n) => (n, MAX_DAYS, "days"),
    };
    if n == 0 || n > max {
        problems.push((at.into(), format!("must be 1-{max} {unit}")));
        return None;
    }
    Some(match length {
        Length::WallMinutes(n) => Span::Wall(Duration::minutes(i64::from(n))),
        Length::OfficeMinutes(n) => Span::OfficeHours(Duration::minutes(i64::from(n))),
        Length::WorkingDays(n) => Span::WorkingDays(n),
        Length::CalendarDays(n) => Span::CalendarDays(n),
    })
}

fn parse_plan(problems: &mut Vec<Violation>, at: &str, p: Option<&pb::ClockPlan>) -> Option<ClockSpans> {
    let Some(p) = p else {
        problems.push((at.into(), "must be set".into()));
        return None;
    };
    let acknowledge = parse_span(problems, &format!("{at}.acknowledge"), p.acknowledge.as_ref());
    let respond = parse_span(problems, &format!("{at}.respond"), p.respond.as_ref());
    let resolve = parse_span(problems, &format!("{at}.resolve"), p.resolve.as_ref());
    Some(ClockSpans { acknowledge: acknowledge?, respond: respond?, resolve: resolve? })
}

fn is_code(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Check a whole rulebook before it is published, naming every problem's
/// field under `rulebook.`: codes well formed and unique, every department a
/// rule names is one of the rulebook's, a catch-all rule that summons someone
/// for emergencies (so an emergency category published later in the catalogue
/// is never met by nobody), no two rules for the same category and area, a plan
/// for every priority and for emergencies, windows within bounds.
pub fn check(book: &pb::Rulebook) -> Result<Rules, Vec<Violation>> {
    let mut problems = Vec::new();
    let mut departments = BTreeMap::new();
    if book.departments.is_empty() {
        problems.push(("rulebook.departments".into(), "must hold at least one department".into()));
    }
    for (i, d) in book.departments.iter().enumerate() {
        let at = format!("rulebook.departments[{i}]");
        if !is_code(&d.code) {
            problems.push((format!("{at}.code"), "must be 1-64 of [a-z0-9-]".into()));
        } else if departments.insert(d.code.clone(), d.name.trim().to_string()).is_some() {
            problems.push((format!("{at}.code"), format!("{} appears twice", d.code)));
        }
        if d.name.trim().is_empty() || d.name.chars().count() > 200 {
            problems.push((format!("{at}.name"), "must be 1-200 characters".into()));
        }
    }
    let known = |problems: &mut Vec<Violation>, at: String, code: &str| {
        if !departments.contains_key(code) {
            problems.push((at, format!("{code:?} is not a department of this rulebook")));
        }
    };
    let mut rules = Vec::new();
    let mut ids = BTreeSet::new();
    let mut scopes: BTreeMap<(String, String), usize> = BTreeMap::new();
    if book.rules.is_empty() {
        problems.push(("rulebook.rules".into(), "must hold at least one rule".into()));
    }
    for (i, r) in book.rules.iter().enumerate() {
        let at = format!("rulebook.rules[{i}]");
        if !is_code(&r.id) {
            problems.push((format!("{at}.id"), "must be 1-64 of [a-z0-9-]".into()));
        } else if !ids.insert(r.id.clone()) {
            problems.push((format!("{at}.id"), format!("{} appears twice", r.id)));
        }
        if !r.category_code.is_empty() && !is_code(&r.category_code) {
            problems.push((format!("{at}.category_code"), "must be empty (any) or a category code".into()));
        }
        if !r.area_id.is_empty()
            && let Err(e) = gridwork_eventstore::aggregate::validate_id(&r.area_id)
        {
            problems.push((format!("{at}.area_id"), e));
        }
        if let Some(j) = scopes.insert((r.category_code.clone(), r.area_id.clone()), i) {
            problems.push((at.clone(), format!("routes the same category and area as rules[{j}]")));
        }
        let first_tier = match pb::Tier::try_from(r.first_tier) {
            Ok(pb::Tier::Grid) => Some(FirstTier::Grid),
            Ok(pb::Tier::Community) => Some(FirstTier::Community),
            Ok(pb::Tier::Street) => Some(FirstTier::Street),
            _ => {
                problems.push((format!("{at}.first_tier"), "must be TIER_GRID, TIER_COMMUNITY or TIER_STREET".into()));
                None
            }
        };
        if !r.department.is_empty() {
            known(&mut problems, format!("{at}.department"), &r.department);
        }
        for (j, d) in r.emergency_departments.iter().enumerate() {
            known(&mut problems, format!("{at}.emergency_departments[{j}]"), d);
            if r.emergency_departments[..j].contains(d) {
                problems.push((format!("{at}.emergency_departments[{j}]"), format!("{d} is named twice")));
            }
        }
        if let Some(first_tier) = first_tier {
            rules.push(Rule {
                id: r.id.clone(),
                category: (!r.category_code.is_empty()).then(|| r.category_code.clone()),
                area: (!r.area_id.is_empty()).then(|| r.area_id.clone()),
                first_tier,
                department: r.department.clone(),
                emergency_departments: r.emergency_departments.clone(),
            });
        }
    }
    match book.rules.iter().position(|r| r.category_code.is_empty() && r.area_id.is_empty()) {
        None if !book.rules.is_empty() => problems.push((
            "rulebook.rules".into(),
            "needs a catch-all rule (no category, no area): every case must route somewhere".into(),
        )),
        Some(i) if book.rules[i].emergency_departments.is_empty() => problems.push((
            format!("rulebook.rules[{i}].emergency_departments"),
            "the catch-all rule must summon someone for an emergency (an emergency category without a rule of its \
             own would otherwise summon nobody)"
                .into(),
        )),
        _ => {}
    }
    let sla = check_sla(&mut problems, book.sla.as_ref());
    match sla {
        Some(sla) if problems.is_empty() => {
            Ok(Rules { version: book.version, departments, rules, sla, published: book.clone() })
        }
        _ => Err(problems),
    }
}

fn check_sla(problems: &mut Vec<Violation>, sla: Option<&pb::SlaPolicy>) -> Option<SlaPolicy> {
    let Some(sla) = sla else {
        problems.push(("rulebook.sla".into(), "must be set".into()));
        return None;
    };
    let mut priorities = BTreeMap::new();
    for (i, p) in sla.priorities.iter().enumerate() {
        let at = format!("rulebook.sla.priorities[{i}]");
        if !(1..=4).contains(&p.priority) {
            problems.push((format!("{at}.priority"), "must be 1 (low) to 4 (urgent)".into()));
        } else if priorities.contains_key(&p.priority) {
            problems.push((format!("{at}.priority"), format!("priority {} has two plans", p.priority)));
        }
        if let Some(spans) = parse_plan(problems, &format!("{at}.plan"), p.plan.as_ref()) {
            priorities.entry(p.priority).or_insert(spans);
        }
    }
    let missing: Vec<String> = (1..=4).filter(|p| !priorities.contains_key(p)).map(|p| p.to_string()).collect();
    if !missing.is_empty() {
        problems.push(("rulebook.sla.priorities".into(), format!("needs a plan for priority {}", missing.join(", "))));
    }
    let emergency = parse_plan(problems, "rulebook.sla.emergency", sla.emergency.as_ref());
    let mut categories = BTreeMap::new();
    for (i, c) in sla.categories.iter().enumerate() {
        let at = format!("rulebook.sla.categories[{i}]");
        if !is_code(&c.category_code) {
            problems.push((format!("{at}.category_code"), "must be a category code".into()));
        } else if categories.contains_key(&c.category_code) {
            problems.push((format!("{at}.category_code"), format!("{} appears twice", c.category_code)));
        }
        let counting = match pb::Counting::try_from(c.counting) {
            Ok(pb::Counting::RoundTheClock) => Counting::Wall,
            Ok(_) => Counting::Working,
            Err(_) => {
                problems.push((format!("{at}.counting"), format!("{} is not a counting", c.counting)));
                Counting::Working
            }
        };
        let mut optional =
            |field: &str, s: Option<&pb::Span>| s.and_then(|s| parse_span(problems, &format!("{at}.{field}"), Some(s)));
        let plan = CategoryPlan {
            counting,
            acknowledge: optional("acknowledge", c.acknowledge.as_ref()),
            respond: optional("respond", c.respond.as_ref()),
            resolve: optional("resolve", c.resolve.as_ref()),
        };
        categories.entry(c.category_code.clone()).or_insert(plan);
    }
    if !(1..=1440).contains(&sla.summons_minutes) {
        problems.push(("rulebook.sla.summons_minutes".into(), "must be 1-1440".into()));
    }
    if !(1..=60).contains(&sla.rating_window_days) {
        problems.push(("rulebook.sla.rating_window_days".into(), "must be 1-60".into()));
    }
    Some(SlaPolicy {
        priorities,
        emergency: emergency?,
        categories,
        summons: Duration::minutes(i64::from(sla.summons_minutes)),
        rating_window_days: sla.rating_window_days,
    })
}

/// One year of the calendar, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarYear {
    /// The year.
    pub year: i32,
    /// Public holidays.
    pub holidays: BTreeSet<Date>,
    /// Make-up working days.
    pub workdays: BTreeSet<Date>,
    /// Every day of the year's arrangement is entered.
    pub complete: bool,
}

fn day(s: &str) -> Option<Date> {
    Date::parse(s.trim(), &time::format_description::well_known::Iso8601::DATE).ok()
}

/// Check a calendar year, naming each bad date under `year.`: dates in the
/// year, none both a holiday and a working day, make-up working days on a
/// weekend (a weekday is a working day already).
pub fn check_year(y: &pb::CalendarYear) -> Result<CalendarYear, Vec<Violation>> {
    let mut problems = Vec::new();
    if !(2000..=2100).contains(&y.year) {
        problems.push(("year.year".into(), "must be 2000-2100".into()));
    }
    let mut dates = |field: &str, list: &[String]| {
        let mut out = BTreeSet::new();
        for (i, s) in list.iter().enumerate() {
            let at = format!("year.{field}[{i}]");
            match day(s) {
                None => problems.push((at, format!("{s:?} is not a date YYYY-MM-DD"))),
                Some(d) if d.year() != y.year => problems.push((at, format!("{s} is not in {}", y.year))),
                Some(d) if !out.insert(d) => problems.push((at, format!("{s} appears twice"))),
                Some(d)
                    if field == "make_up_workdays" && !matches!(d.weekday(), Weekday::Saturday | Weekday::Sunday) =>
                {
                    problems.push((at, format!("{s} is a {}: a weekday is a working day already", d.weekday())))
                }
                Some(_) => {}
            }
        }
        out
    };
    let holidays = dates("holidays", &y.holidays);
    let workdays = dates("make_up_workdays", &y.make_up_workdays);
    for d in holidays.intersection(&workdays) {
        problems.push(("year.make_up_workdays".into(), format!("{d} is also a holiday")));
    }
    // A year replaces the shipped one whole: one said to be complete with no
    // holiday would make every statutory holiday a working day.
    if y.complete && holidays.is_empty() {
        problems.push(("year.holidays".into(), "a complete year lists its public holidays".into()));
    }
    if problems.is_empty() {
        Ok(CalendarYear { year: y.year, holidays, workdays, complete: y.complete })
    } else {
        Err(problems)
    }
}

impl CalendarYear {
    /// The year as `calendar` has it.
    pub fn from_calendar(calendar: &WorkingCalendar, year: i32) -> Self {
        let of_year = |s: &BTreeSet<Date>| s.iter().filter(|d| d.year() == year).copied().collect();
        Self {
            year,
            holidays: of_year(&calendar.holidays),
            workdays: of_year(&calendar.workdays),
            complete: calendar.complete_years.contains(&year),
        }
    }

    /// The protobuf form.
    pub fn to_pb(&self, revision: u32, note: &str) -> pb::CalendarYear {
        let iso = |d: &Date| format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day());
        pb::CalendarYear {
            year: self.year,
            holidays: self.holidays.iter().map(iso).collect(),
            make_up_workdays: self.workdays.iter().map(iso).collect(),
            complete: self.complete,
            revision,
            note: note.into(),
        }
    }
}

/// `base` with each published year replacing that year's dates.
pub fn calendar_with(
    base: &WorkingCalendar,
    years: &BTreeMap<i32, (CalendarYear, pb::CalendarYear)>,
) -> WorkingCalendar {
    let mut calendar = base.clone();
    for (year, (y, _)) in years {
        calendar.holidays.retain(|d| d.year() != *year);
        calendar.workdays.retain(|d| d.year() != *year);
        calendar.holidays.extend(y.holidays.iter().copied());
        calendar.workdays.extend(y.workdays.iter().copied());
        if y.complete {
            calendar.complete_years.insert(*year);
        } else {
            calendar.complete_years.remove(year);
        }
    }
    calendar
}

/// The rulebook aggregate: every published version and calendar year.
#[derive(Debug, Clone, Default)]
pub struct Rulebook {
    /// Published versions by number (shared: a load copies pointers).
    pub versions: BTreeMap<u32, Arc<Rules>>,
    /// The highest number ever published, readable by this build or not: the
    /// next version is one more, so no number is given twice.
    pub highest: u32,
    /// Published calendar years, checked and as published.
    pub years: BTreeMap<i32, (CalendarYear, pb::CalendarYear)>,
}

/// Commands on the rulebook.
#[derive(Debug, Clone)]
pub enum RulebookCommand {
    /// Publish a new version (already checked with [`check`]).
    Publish {
        /// The content.
        rules: Box<Rules>,
        /// The version the publisher edited.
        expected_version: u32,
        /// When.
        at_unix_ms: i64,
        /// Who.
        by: String,
        /// Why.
        note: String,
    },
    /// Set one calendar year (already checked with [`check_year`]).
    PublishYear {
        /// The year.
        year: CalendarYear,
        /// Why.
        note: String,
        /// When.
        at_unix_ms: i64,
    },
}

/// Rules a rulebook command can break.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum RulebookRejection {
    /// Someone published since the publisher read the rulebook.
    #[error("the rulebook is at version {current}, not {expected}: read it again and publish over that")]
    StaleVersion {
        /// What the caller edited.
        expected: u32,
        /// What is in force.
        current: u32,
    },
    /// The new version equals the one in force.
    #[error("the rulebook is unchanged from version {0}")]
    Unchanged(u32),
    /// The year equals its current revision.
    #[error("calendar year {0} is unchanged")]
    YearUnchanged(i32),
}

impl Rulebook {
    /// The version in force: the latest published, if any.
    pub fn latest(&self) -> Option<&Arc<Rules>> {
        self.versions.values().next_back()
    }

    /// The number of the last version published (0: none, the built-in one
    /// is in force).
    pub fn current_version(&self) -> u32 {
        self.highest
    }
}

fn content(p: &pb::Rulebook) -> pb::Rulebook {
    pb::Rulebook { version: 0, note: String::new(), published_at_unix_ms: 0, published_by: String::new(), ..p.clone() }
}

impl Aggregate for Rulebook {
    const CONTEXT: &'static str = "dispatch";
    const TYPE: &'static str = "rulebook";
    const STATE_VERSION: u32 = 1;
    type Command = RulebookCommand;
    type Event = RulebookEvent;
    type Rejection = RulebookRejection;

    fn decide(&self, command: &RulebookCommand) -> Result<Vec<RulebookEvent>, RulebookRejection> {
        match command {
            RulebookCommand::Publish { rules, expected_version, at_unix_ms, by, note } => {
                let current = self.current_version();
                if *expected_version != current {
                    return Err(RulebookRejection::StaleVersion { expected: *expected_version, current });
                }
                let mut published = content(&rules.to_pb());
                if self.latest().is_some_and(|l| content(&l.published) == published) {
                    return Err(RulebookRejection::Unchanged(current));
                }
                published.version = current + 1;
                published.note = note.clone();
                published.published_at_unix_ms = *at_unix_ms;
                published.published_by = by.clone();
                Ok(vec![RulebookEvent::Published(pb::RulebookPublished { rulebook: Some(published) })])
            }
            RulebookCommand::PublishYear { year, note, at_unix_ms } => {
                let revision = match self.years.get(&year.year) {
                    Some((y, _)) if y == year => return Err(RulebookRejection::YearUnchanged(year.year)),
                    Some((_, p)) => p.revision + 1,
                    None => 1,
                };
                Ok(vec![RulebookEvent::CalendarYearPublished(pb::CalendarYearPublished {
                    year: Some(year.to_pb(revision, note)),
                    at_unix_ms: *at_unix_ms,
                })])
            }
        }
    }

    fn evolve(mut self, event: &RulebookEvent) -> Self {
        match event {
            RulebookEvent::Published(e) => {
                let published = e.rulebook.clone().unwrap_or_default();
                self.highest = self.highest.max(published.version);
                // Checked before it was published; a version a later build reads
                // differently keeps its place in the numbering but is not used.
                if let Ok(rules) = check(&published) {
                    self.versions.insert(published.version, Arc::new(rules));
                }
            }
            RulebookEvent::CalendarYearPublished(e) => {
                let published = e.year.clone().unwrap_or_default();
                if let Ok(year) = check_year(&published) {
                    self.years.insert(year.year, (year, published));
                }
            }
        }
        self
    }

    fn encode_state(&self) -> Vec<u8> {
        pb::RulebookState {
            versions: self.versions.values().map(|r| r.published.clone()).collect(),
            years: self.years.values().map(|(_, p)| p.clone()).collect(),
            highest: self.highest,
        }
        .encode_to_vec()
    }

    fn decode_state(bytes: &[u8]) -> Result<Self, DecodeError> {
        let state = pb::RulebookState::decode(bytes).map_err(|e| DecodeError::new("rulebook state", e))?;
        let mut book = Rulebook { highest: state.highest, ..Rulebook::default() };
        for v in state.versions {
            book = book.evolve(&RulebookEvent::Published(pb::RulebookPublished { rulebook: Some(v) }));
        }
        for y in state.years {
            book = book.evolve(&RulebookEvent::CalendarYearPublished(pb::CalendarYearPublished {
                year: Some(y),
                at_unix_ms: 0,
            }));
        }
        Ok(book)
    }
}

#[cfg(test)]
mod tests {
    use gridwork_eventstore::testing::given;

    use super::*;

    fn builtin() -> Rules {
        Rules::builtin(&Terms::default())
    }

    fn fields(p: Vec<Violation>) -> Vec<String> {
        p.into_iter().map(|(f, _)| f).collect()
    }

    fn publish(rules: Rules, expected_version: u32) -> RulebookCommand {
        RulebookCommand::Publish {
            rules: Box::new(rules),
            expected_version,
            at_unix_ms: 1_000,
            by: "user:admin".into(),
            note: "n".into(),
        }
    }

    fn published(rules: &Rules, version: u32) -> RulebookEvent {
        let mut p = rules.to_pb();
        p.version = version;
        p.note = "n".into();
        p.published_at_unix_ms = 1_000;
        p.published_by = "user:admin".into();
        RulebookEvent::Published(pb::RulebookPublished { rulebook: Some(p) })
    }

    #[test]
    fn the_built_in_rulebook_passes_its_own_checks_and_round_trips() {
        let b = builtin();
        let checked = check(&b.to_pb()).expect("the built-in rulebook is well formed");
        assert_eq!((checked.departments, checked.rules, checked.sla), (b.departments, b.rules, b.sla));
    }

    #[test]
    fn the_built_in_plans_are_the_hotlines_usual_clocks() {
        let sla = builtin().sla;
        assert_eq!(sla.plan_for("old-compound-renovation", 1, false).resolve, Span::WorkingDays(20));
        assert_eq!(sla.plan_for("parking", 2, false).resolve, Span::WorkingDays(5));
        // An emergency keeps the emergency plan whatever its category.
        assert_eq!(sla.plan_for("old-compound-renovation", 1, true).resolve, Span::Wall(Duration::hours(4)));
        // A lonely elder's need does not wait for Monday.
        let elder = sla.plan_for("elderly-welfare", 2, false);
        assert_eq!(elder.resolve, Span::CalendarDays(1));
        assert_eq!(elder.summons, Span::Wall(Duration::minutes(30)));
        // A fire hazard keeps its lengths but counts them round the clock.
        let hazard = sla.plan_for("fire-hazard", 2, false);
        assert_eq!((hazard.acknowledge, hazard.resolve), (Span::Wall(Duration::hours(4)), Span::CalendarDays(5)));
        // The summons window follows the case's counting; the rating window is days.
        assert_eq!(sla.plan_for("parking", 2, false).summons, Span::OfficeHours(Duration::minutes(30)));
        assert_eq!(sla.plan_for("parking", 2, false).rate, Span::CalendarDays(7));
        // A priority without a plan of its own takes the nearest lower one's.
        assert_eq!(sla.plan_for("parking", 9, false), sla.plan_for("parking", 4, false));
        assert_eq!(sla.plan_for("parking", 0, false), sla.plan_for("parking", 1, false));
    }

    #[test]
    fn a_rulebook_naming_a_department_it_does_not_have_is_refused_naming_each_place() {
        let mut p = builtin().to_pb();
        p.rules[2].department = "fire-brigde".into();
        p.rules[1].emergency_departments.push("police".into());
        p.rules[3].first_tier = pb::Tier::Department as i32;
        p.departments.push(pb::Department { code: "police".into(), name: "again".into() });
        let problems = fields(check(&p).expect_err("malformed"));
        assert_eq!(
            problems,
            [
                "rulebook.departments[8].code",
                "rulebook.rules[1].emergency_departments[3]",
                "rulebook.rules[2].department",
                "rulebook.rules[3].first_tier",
            ]
        );
    }

    #[test]
    fn a_rulebook_without_a_catch_all_that_summons_for_emergencies_is_refused() {
        let mut p = builtin().to_pb();
        p.rules[0].emergency_departments.clear();
        assert_eq!(fields(check(&p).expect_err("refused")), ["rulebook.rules[0].emergency_departments"]);
        p.rules.remove(0);
        assert_eq!(fields(check(&p).expect_err("refused")), ["rulebook.rules"]);
        let mut twice = builtin().to_pb();
        twice.rules.push(pb::RoutingRule { id: "again".into(), ..twice.rules[4].clone() });
        assert_eq!(fields(check(&twice).expect_err("refused")), ["rulebook.rules[10]"]);
    }

    #[test]
    fn an_sla_policy_needs_every_priority_and_sane_lengths() {
        let mut p = builtin().to_pb();
        let sla = p.sla.as_mut().expect("set");
        sla.priorities.remove(3);
        sla.priorities[0].plan.as_mut().expect("set").resolve = Some(pb::Span { length: None });
        sla.emergency.as_mut().expect("set").acknowledge =
            Some(pb::Span { length: Some(pb::span::Length::WallMinutes(0)) });
        sla.categories[0].counting = 9;
        sla.summons_minutes = 0;
        sla.rating_window_days = 400;
        assert_eq!(
            fields(check(&p).expect_err("refused")),
            [
                "rulebook.sla.priorities[0].plan.resolve",
                "rulebook.sla.priorities",
                "rulebook.sla.emergency.acknowledge",
                "rulebook.sla.categories[0].counting",
                "rulebook.sla.summons_minutes",
                "rulebook.sla.rating_window_days",
            ]
        );
    }

    #[test]
    fn versions_count_from_one_over_the_version_the_publisher_read() {
        let b = builtin();
        given::<Rulebook>([]).when(publish(b.clone(), 0)).then_expect_events([published(&b, 1)]);
        let mut changed = b.clone();
        changed.sla.rating_window_days = 10;
        given::<Rulebook>([published(&b, 1)])
            .when(publish(changed.clone(), 1))
            .then_expect_events([published(&changed, 2)]);
        let state = given::<Rulebook>([published(&b, 1), published(&changed, 2)]).state().clone();
        assert_eq!(state.current_version(), 2);
        assert_eq!(state.versions[&1].sla.rating_window_days, 7);
        let round_trip = Rulebook::decode_state(&state.encode_state()).expect("decodes");
        assert_eq!(round_trip.versions, state.versions);
    }

    #[test]
    fn publishing_over_a_version_someone_else_replaced_is_refused() {
        let b = builtin();
        given::<Rulebook>([published(&b, 1)])
            .when(publish(b.clone(), 0))
            .then_expect_error(RulebookRejection::StaleVersion { expected: 0, current: 1 });
    }

    #[test]
    fn an_unchanged_rulebook_is_not_republished() {
        let b = builtin();
        given::<Rulebook>([published(&b, 1)])
            .when(publish(b.clone(), 1))
            .then_expect_error(RulebookRejection::Unchanged(1));
        // As read back (`rules show --output json`): version, note and
        // publisher are not content.
        let mut read_back = check(&{
            let mut p = b.to_pb();
            p.version = 1;
            p.note = "n".into();
            p
        })
        .expect("well formed");
        read_back.version = 1;
        given::<Rulebook>([published(&b, 1)])
            .when(publish(read_back, 1))
            .then_expect_error(RulebookRejection::Unchanged(1));
    }

    #[test]
    fn a_version_this_build_cannot_read_keeps_its_number() {
        let b = builtin();
        let mut unreadable = b.to_pb();
        unreadable.version = 2;
        unreadable.rules.clear();
        let history =
            [published(&b, 1), RulebookEvent::Published(pb::RulebookPublished { rulebook: Some(unreadable) })];
        let state = given::<Rulebook>(history.clone()).state().clone();
        assert_eq!((state.current_version(), state.versions.len()), (2, 1));
        let mut next = b.clone();
        next.sla.rating_window_days = 9;
        given::<Rulebook>(history).when(publish(next.clone(), 2)).then_expect_events([published(&next, 3)]);
        assert_eq!(Rulebook::decode_state(&state.encode_state()).expect("decodes").highest, 2);
    }

    #[test]
    fn a_calendar_year_replaces_that_years_days_and_counts_revisions() {
        let y = pb::CalendarYear {
            year: 2027,
            holidays: vec!["2027-02-05".into(), "2027-02-08".into()],
            make_up_workdays: vec!["2027-02-20".into()],
            complete: true,
            ..Default::default()
        };
        let year = check_year(&y).expect("well formed");
        let command = RulebookCommand::PublishYear { year: year.clone(), note: "notice".into(), at_unix_ms: 5 };
        let first = RulebookEvent::CalendarYearPublished(pb::CalendarYearPublished {
            year: Some(year.to_pb(1, "notice")),
            at_unix_ms: 5,
        });
        given::<Rulebook>([]).when(command.clone()).then_expect_events([first.clone()]);
        given::<Rulebook>([first.clone()]).when(command).then_expect_error(RulebookRejection::YearUnchanged(2027));
        let state = given::<Rulebook>([first]).state().clone();
        let calendar = calendar_with(&WorkingCalendar::china(), &state.years);
        assert!(calendar.complete_years.contains(&2027));
        assert!(!calendar.is_working_day(time::macros::date!(2027 - 02 - 08)));
        assert!(calendar.is_working_day(time::macros::date!(2027 - 02 - 20)));
        // The shipped 2027 days the year did not list are gone; 2026 is untouched.
        assert!(calendar.is_working_day(time::macros::date!(2027 - 10 - 01)));
        assert!(!calendar.is_working_day(time::macros::date!(2026 - 10 - 01)));
    }

    #[test]
    fn a_malformed_calendar_year_is_refused_naming_each_date() {
        let y = pb::CalendarYear {
            year: 2027,
            holidays: vec!["2027-02-30".into(), "2026-10-01".into(), "2027-05-01".into()],
            make_up_workdays: vec!["2027-02-17".into(), "2027-05-01".into()],
            ..Default::default()
        };
        assert_eq!(
            fields(check_year(&y).expect_err("refused")),
            [
                "year.holidays[0]",
                "year.holidays[1]",
                "year.make_up_workdays[0]",
                // 2027-05-01 is a Saturday, but also a holiday.
                "year.make_up_workdays",
            ]
        );
    }
}
