//! Routing rules: category and area → first tier and department, and the SLA plan
//! per category and priority. Every decision names the rule that made it, so
//! "why did this go to X" is answerable from the case's own events.

use time::Duration;

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

/// The built-in rulebook's windows, from the service's settings: how long
/// summoned departments have to report for duty, and how long a reporter has
/// to rate a resolution. A published rulebook carries its own.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn area() -> Area {
        Area { district: "d".into(), street: "s".into(), community: "c".into(), grid: "g".into() }
    }

    #[test]
    fn the_most_specific_rule_wins_and_says_why() {
        let mut rules = crate::domain::rulebook::Rules::builtin(&Terms::default()).rules;
        rules.push(Rule { id: "s-parking".into(), area: Some("s".into()), ..rules[6].clone() });
        let r = route(&rules, "parking", &area()).expect("routed");
        assert_eq!(r.rule.id, "s-parking");
        assert_eq!(r.explanation, "rule s-parking: category parking within s");
        let elsewhere = Area { street: "s2".into(), ..area() };
        assert_eq!(route(&rules, "parking", &elsewhere).expect("routed").rule.id, "parking");
        assert_eq!(route(&rules, "something-new", &area()).expect("routed").rule.id, "default");
    }
}
