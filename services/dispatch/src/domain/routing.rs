//! Routing rules: category and area → first tier and department, and the SLA plan
//! per category and priority. Every decision names the rule that made it, so
//! "why did this go to X" is answerable from the case's own events.

use time::Duration;

use super::calendar::Counting;
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

/// The SLA plan for a category and priority: the priority's plan, with the
/// category's own resolve time where it has one (renovation takes weeks; a
/// lonely elder's need, a day).
pub fn sla_plan_for(category: &str, priority: i32, emergency: bool) -> SlaPlan {
    let mut plan = sla_plan(priority, emergency);
    match category {
        "old-compound-renovation" => plan.resolve = Duration::days(20),
        "property-conflict" => plan.resolve = plan.resolve.max(Duration::hours(80)),
        "elderly-welfare" if !emergency => plan.resolve = plan.resolve.min(Duration::hours(8)),
        _ => {}
    }
    plan
}

/// The SLA plan for a priority (gridwork.intake.v1.Priority numbers) and
/// emergency flag.
pub fn sla_plan(priority: i32, emergency: bool) -> SlaPlan {
    let (ack, respond, resolve, counting) = match (emergency, priority) {
        (true, _) => (Duration::minutes(5), Duration::minutes(15), Duration::hours(4), Counting::Wall),
        (false, 4) => (Duration::minutes(30), Duration::hours(2), Duration::hours(24), Counting::Wall),
        (false, 3) => (Duration::hours(2), Duration::hours(8), Duration::hours(24), Counting::Working),
        (false, _) => (Duration::hours(4), Duration::hours(16), Duration::hours(40), Counting::Working),
    };
    SlaPlan { acknowledge: ack, respond, resolve, counting }
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
    fn some_categories_have_their_own_resolve_time() {
        assert_eq!(sla_plan_for("old-compound-renovation", 1, false).resolve, Duration::days(20));
        assert_eq!(sla_plan_for("elderly-welfare", 3, false).resolve, Duration::hours(8));
        assert_eq!(sla_plan_for("parking", 1, false), sla_plan(1, false));
    }

    #[test]
    fn emergencies_run_on_the_wall_clock_and_others_on_working_time() {
        assert_eq!(sla_plan(4, true).counting, Counting::Wall);
        assert_eq!(sla_plan(2, false).counting, Counting::Working);
        assert!(sla_plan(4, false).acknowledge < sla_plan(2, false).acknowledge);
    }
}
