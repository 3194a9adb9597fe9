//! Routing rules: category and area → first tier and department, and the SLA plan
//! per category and priority. Every decision names the rule that made it, so
//! "why did this go to X" is answerable from the case's own events.

use time::Duration;

use super::calendar::{Counting, Span};
use super::case::SlaPlan;

/// First rung a rule sends a case to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstTier {
    /// The grid head of the incident's grid.
    Grid,
    /// Its community.
    Community,
    /// Its street.
    Street,
}

/// One routing rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Id, recorded in every case it routes.
    pub id: String,
    /// Category code it applies to (None: any).
    pub category: Option<String>,
    /// Unit id (district, street, community or grid) it applies within (None: anywhere).
    pub area: Option<String>,
    /// First rung.
    pub first_tier: FirstTier,
    /// Functional department above the street.
    pub department: String,
    /// Departments summoned at once for emergencies.
    pub emergency_departments: Vec<String>,
}

/// What routing decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Route<'a> {
    /// The rule.
    pub rule: &'a Rule,
    /// Human-readable why.
    pub explanation: String,
}

/// The incident's placement, district first.
#[derive(Debug, Clone, Default)]
pub struct Area {
    /// District id.
    pub district: String,
    /// Street id.
    pub street: String,
    /// Community id.
    pub community: String,
    /// Grid id.
    pub grid: String,
}

impl Area {
    fn contains(&self, unit: &str) -> bool {
        [&self.district, &self.street, &self.community, &self.grid].iter().any(|u| u.as_str() == unit)
    }
}

/// Pick the most specific matching rule: category and area beat category alone,
/// which beats area alone, which beats the catch-all. Ties go to the first listed.
pub fn route<'a>(rules: &'a [Rule], category: &str, area: &Area) -> Option<Route<'a>> {
    rules
        .iter()
        .filter(|r| r.category.as_deref().is_none_or(|c| c == category))
        .filter(|r| r.area.as_deref().is_none_or(|a| area.contains(a)))
        .enumerate()
        .max_by_key(|(i, r)| (r.category.is_some(), r.area.is_some(), std::cmp::Reverse(*i)))
        .map(|(_, rule)| Route {
            rule,
            explanation: format!(
                "rule {}: {} {}",
                rule.id,
                rule.category.as_deref().map_or("any category".to_string(), |c| format!("category {c}")),
                rule.area.as_deref().map_or("anywhere".to_string(), |a| format!("within {a}"))
            ),
        })
}

/// The default rules: DOMAIN.md's categories to their departments.
pub fn default_rules() -> Vec<Rule> {
    let rule = |id: &str, category: Option<&str>, first_tier, department: &str, emergency: &[&str]| Rule {
        id: id.into(),
        category: category.map(String::from),
        area: None,
        first_tier,
        department: department.into(),
        emergency_departments: emergency.iter().map(|d| d.to_string()).collect(),
    };
    vec![
        rule("default", None, FirstTier::Grid, "", &[]),
        rule("fire", Some("fire"), FirstTier::Street, "fire-brigade", &["fire-brigade", "police", "emergency-medical"]),
        rule("fire-hazard", Some("fire-hazard"), FirstTier::Grid, "fire-brigade", &[]),
        rule("public-safety", Some("public-safety"), FirstTier::Community, "police", &[]),
        rule("neighbour-dispute", Some("neighbour-dispute"), FirstTier::Grid, "justice", &[]),
        rule("property-conflict", Some("property-conflict"), FirstTier::Community, "housing", &[]),
        rule("parking", Some("parking"), FirstTier::Grid, "traffic-police", &[]),
        rule("old-compound-renovation", Some("old-compound-renovation"), FirstTier::Community, "housing", &[]),
        rule("sanitation", Some("sanitation"), FirstTier::Grid, "urban-management", &[]),
        rule("elderly-welfare", Some("elderly-welfare"), FirstTier::Grid, "civil-affairs", &[]),
    ]
}

/// Terms the city sets for every case: how long summoned departments have to
/// report for duty, and how long a reporter has to rate a resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    /// Summons window, counted like the case's own clocks.
    pub summon_within: Duration,
    /// Rating window in calendar days (7 by default): unrated by then, the case
    /// closes "not rated".
    pub rating_window_days: u32,
}

impl Default for Terms {
    fn default() -> Self {
        Self { summon_within: Duration::minutes(30), rating_window_days: 7 }
    }
}

/// Whether a category's clocks keep office time or run round the calendar:
/// risks to people and property do not wait for Monday.
pub fn category_counting(category: &str) -> Counting {
    match category {
        "elderly-welfare" | "public-safety" | "fire-hazard" | "fire" => Counting::Wall,
        _ => Counting::Working,
    }
}

/// The SLA plan for a category and priority: the priority's plan, with the
/// category's own resolve time where it has one (renovation takes weeks; a
/// lonely elder's need, a day), counted as the category says
/// ([`category_counting`]).
pub fn sla_plan_for(category: &str, priority: i32, emergency: bool, terms: &Terms) -> SlaPlan {
    let mut plan = sla_plan(priority, emergency, terms);
    match category {
        _ if emergency => {}
        "old-compound-renovation" => plan.resolve = Span::WorkingDays(20),
        "property-conflict" => plan.resolve = Span::WorkingDays(10),
        "elderly-welfare" => {
            plan.acknowledge = Span::Wall(Duration::hours(1));
            plan.respond = Span::Wall(Duration::hours(4));
            plan.resolve = Span::CalendarDays(1);
        }
        _ => {}
    }
    if category_counting(category) == Counting::Wall {
        plan = plan.round_the_clock();
    }
    plan
}

/// The SLA plan for a priority (gridwork.intake.v1.Priority numbers) and
/// emergency flag: emergencies and urgent cases on the wall clock, the rest in
/// office hours and working days.
pub fn sla_plan(priority: i32, emergency: bool, terms: &Terms) -> SlaPlan {
    let (acknowledge, respond, resolve) = match (emergency, priority) {
        (true, _) => {
            (Span::Wall(Duration::minutes(5)), Span::Wall(Duration::minutes(15)), Span::Wall(Duration::hours(4)))
        }
        (false, 4) => {
            (Span::Wall(Duration::minutes(30)), Span::Wall(Duration::hours(2)), Span::Wall(Duration::hours(24)))
        }
        (false, 3) => {
            (Span::OfficeHours(Duration::hours(2)), Span::OfficeHours(Duration::hours(8)), Span::WorkingDays(3))
        }
        (false, _) => (Span::OfficeHours(Duration::hours(4)), Span::WorkingDays(2), Span::WorkingDays(5)),
    };
    SlaPlan {
        acknowledge,
        respond,
        resolve,
        summons: acknowledge.counting_like(terms.summon_within),
        rate: Span::CalendarDays(terms.rating_window_days),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area() -> Area {
        Area { district: "d".into(), street: "s".into(), community: "c".into(), grid: "g".into() }
    }

    #[test]
    fn the_most_specific_rule_wins_and_says_why() {
        let mut rules = default_rules();
        rules.push(Rule { id: "s-parking".into(), area: Some("s".into()), ..rules[6].clone() });
        let r = route(&rules, "parking", &area()).expect("routed");
        assert_eq!(r.rule.id, "s-parking");
        assert_eq!(r.explanation, "rule s-parking: category parking within s");
        let elsewhere = Area { street: "s2".into(), ..area() };
        assert_eq!(route(&rules, "parking", &elsewhere).expect("routed").rule.id, "parking");
        assert_eq!(route(&rules, "something-new", &area()).expect("routed").rule.id, "default");
    }

    #[test]
    fn some_categories_have_their_own_resolve_time_and_counting() {
        let terms = Terms::default();
        assert_eq!(sla_plan_for("old-compound-renovation", 1, false, &terms).resolve, Span::WorkingDays(20));
        assert_eq!(sla_plan_for("parking", 1, false, &terms), sla_plan(1, false, &terms));
        // An emergency keeps the emergency plan whatever its category.
        assert_eq!(sla_plan_for("old-compound-renovation", 1, true, &terms), sla_plan(1, true, &terms));
        // A lonely elder's need does not wait for Monday.
        let elder = sla_plan_for("elderly-welfare", 2, false, &terms);
        assert_eq!(elder.resolve, Span::CalendarDays(1));
        assert_eq!(elder.summons, Span::Wall(Duration::minutes(30)));
        // A fire hazard keeps its lengths but counts them round the clock.
        let hazard = sla_plan_for("fire-hazard", 2, false, &terms);
        assert_eq!((hazard.acknowledge, hazard.resolve), (Span::Wall(Duration::hours(4)), Span::CalendarDays(5)));
    }

    #[test]
    fn emergencies_run_on_the_wall_clock_and_others_on_working_time() {
        let terms = Terms::default();
        assert_eq!(sla_plan(4, true, &terms).resolve, Span::Wall(Duration::hours(4)));
        assert_eq!(sla_plan(2, false, &terms).resolve, Span::WorkingDays(5));
        // The summons window follows the case's counting.
        assert_eq!(sla_plan(2, false, &terms).summons, Span::OfficeHours(Duration::minutes(30)));
        assert_eq!(sla_plan(4, true, &terms).summons, Span::Wall(Duration::minutes(30)));
        assert_eq!(sla_plan(2, false, &terms).rate, Span::CalendarDays(7));
    }
}
