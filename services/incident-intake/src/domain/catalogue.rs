//! The versioned service catalogue (in the spirit of Open311 service
//! definitions): categories with a code, name, group, default priority, an
//! emergency flag and typed extra attributes. A report is validated against one
//! version; errors name the attribute (`attributes.<code>`).

use std::collections::{BTreeMap, BTreeSet};

use gridwork_proto::gridwork::intake::v1 as pb;

/// One field problem: the field's path and what is wrong.
pub type Violation = (String, String);

/// One published version of the catalogue.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CatalogueVersion {
    /// Version number (1, 2, …).
    pub version: u32,
    /// Categories by code.
    pub categories: BTreeMap<String, pb::Category>,
}

/// Check a whole catalogue before it is published: codes unique and well formed,
/// attribute types set, list attributes with values, priorities set.
pub fn check_definition(categories: &[pb::Category]) -> Result<(), Vec<Violation>> {
    let mut problems = Vec::new();
    let mut codes = BTreeSet::new();
    if categories.is_empty() {
        problems.push(("categories".into(), "must hold at least one category".into()));
    }
    for (i, c) in categories.iter().enumerate() {
        let at = format!("categories[{i}]");
        if !is_code(&c.code) {
            problems.push((format!("{at}.code"), "must be 1-64 of [a-z0-9-]".into()));
        } else if !codes.insert(c.code.clone()) {
            problems.push((format!("{at}.code"), format!("{} appears twice", c.code)));
        }
        if c.name.trim().is_empty() {
            problems.push((format!("{at}.name"), "must not be empty".into()));
        }
        if pb::Priority::try_from(c.default_priority).unwrap_or(pb::Priority::Unspecified) == pb::Priority::Unspecified
        {
            problems.push((format!("{at}.default_priority"), "must be set".into()));
        }
        match pb::DuplicatePolicy::try_from(c.duplicate_policy) {
            Err(_) => {
                problems.push((format!("{at}.duplicate_policy"), format!("{} is not a policy", c.duplicate_policy)))
            }
            Ok(pb::DuplicatePolicy::AutoLink) if c.emergency => problems.push((
                format!("{at}.duplicate_policy"),
                "an emergency is never linked automatically (a second fire nearby may be a second fire): use SUGGEST"
                    .into(),
            )),
            Ok(pb::DuplicatePolicy::Unspecified) => problems.push((
                format!("{at}.duplicate_policy"),
                "must be set: AUTO_LINK (reports about a place), SUGGEST or NEVER (reports about people)".into(),
            )),
            Ok(_) => {}
        }
        let mut attribute_codes = BTreeSet::new();
        for (j, a) in c.attributes.iter().enumerate() {
            let at = format!("{at}.attributes[{j}]");
            if !is_code(&a.code) || !attribute_codes.insert(a.code.clone()) {
                problems.push((format!("{at}.code"), "must be a unique code of [a-z0-9-]".into()));
            }
            match pb::AttributeType::try_from(a.r#type).unwrap_or(pb::AttributeType::Unspecified) {
                pb::AttributeType::Unspecified => problems.push((format!("{at}.type"), "must be set".into())),
                pb::AttributeType::SingleValueList | pb::AttributeType::MultiValueList
                    if a.allowed_values.is_empty() =>
                {
                    problems.push((format!("{at}.allowed_values"), "a list attribute needs values".into()))
                }
                _ => {}
            }
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems) }
}

fn is_code(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl CatalogueVersion {
    /// The category for `code`, or a violation on `category_code`.
    pub fn category(&self, code: &str) -> Result<&pb::Category, Violation> {
        self.categories
            .get(code)
            .ok_or_else(|| ("category_code".into(), format!("{code:?} is not in catalogue version {}", self.version)))
    }

    /// Validate a report's attributes against its category: every required
    /// attribute present, no unknown or repeated ones, each of the right type, list
    /// values from the allowed list.
    pub fn check_attributes(&self, category: &pb::Category, values: &[pb::AttributeValue]) -> Vec<Violation> {
        use pb::attribute_value::Value;
        let mut problems = Vec::new();
        let defs: BTreeMap<&str, &pb::AttributeDef> =
            category.attributes.iter().map(|a| (a.code.as_str(), a)).collect();
        let mut seen = BTreeSet::new();
        for v in values {
            let field = format!("attributes.{}", v.code);
            let Some(def) = defs.get(v.code.as_str()) else {
                problems.push((field, format!("is not an attribute of {}", category.code)));
                continue;
            };
            if !seen.insert(v.code.as_str()) {
                problems.push((field, "is given twice".into()));
                continue;
            }
            let kind = pb::AttributeType::try_from(def.r#type).unwrap_or(pb::AttributeType::Unspecified);
            let problem = match (kind, &v.value) {
                (_, None) => Some("has no value".to_string()),
                (pb::AttributeType::String, Some(Value::Text(t))) if t.chars().count() > 200 => {
                    Some("must be at most 200 characters".into())
                }
                (pb::AttributeType::Text, Some(Value::Text(t))) if t.chars().count() > 4000 => {
                    Some("must be at most 4000 characters".into())
                }
                (pb::AttributeType::String | pb::AttributeType::Text, Some(Value::Text(t))) if t.trim().is_empty() => {
                    Some("must not be empty".into())
                }
                (pb::AttributeType::String | pb::AttributeType::Text, Some(Value::Text(_))) => None,
                (pb::AttributeType::Number, Some(Value::Number(n))) if !n.is_finite() => {
                    Some("must be a finite number".into())
                }
                (pb::AttributeType::Number, Some(Value::Number(_))) => None,
                (pb::AttributeType::Datetime, Some(Value::DatetimeUnixMs(_))) => None,
                (pb::AttributeType::SingleValueList, Some(Value::Selected(s))) if s.values.len() != 1 => {
                    Some("must have exactly one value".into())
                }
                (pb::AttributeType::MultiValueList, Some(Value::Selected(s))) if s.values.is_empty() => {
                    Some("must have at least one value".into())
                }
                (pb::AttributeType::SingleValueList | pb::AttributeType::MultiValueList, Some(Value::Selected(s))) => s
                    .values
                    .iter()
                    .find(|x| !def.allowed_values.contains(x))
                    .map(|x| format!("{x:?} is not one of {:?}", def.allowed_values)),
                (k, Some(_)) => Some(format!("must be a {}", type_name(k))),
            };
            if let Some(p) = problem {
                problems.push((field, p));
            }
        }
        for def in &category.attributes {
            if def.required && !seen.contains(def.code.as_str()) {
                problems.push((format!("attributes.{}", def.code), "is required".into()));
            }
        }
        problems
    }
}

fn type_name(k: pb::AttributeType) -> &'static str {
    match k {
        pb::AttributeType::String => "string",
        pb::AttributeType::Number => "number",
        pb::AttributeType::Datetime => "datetime",
        pb::AttributeType::Text => "text",
        pb::AttributeType::SingleValueList => "single value from the list",
        pb::AttributeType::MultiValueList => "list of values",
        pb::AttributeType::Unspecified => "value",
    }
}

/// The catalogue a new city starts with: DOMAIN.md's typical categories.
pub fn default_categories() -> Vec<pb::Category> {
    use pb::AttributeType as T;
    use pb::DuplicatePolicy as D;
    use pb::Priority as P;
    let attr = |code: &str, name: &str, t: T, required: bool, values: &[&str]| pb::AttributeDef {
        code: code.into(),
        name: name.into(),
        r#type: t as i32,
        required,
        allowed_values: values.iter().map(|v| v.to_string()).collect(),
    };
    // Reports about a place (a hazard, a bin, a parked car) are linked to an
    // open one nearby; reports about people (a dispute, an elderly
    // resident's needs) never are, and an emergency or a public-safety
    // report is only suggested to a person as possibly the same.
    let policy = |code: &str, emergency: bool| match code {
        "neighbour-dispute" | "elderly-welfare" => D::Never,
        "public-safety" | "property-conflict" => D::Suggest,
        _ if emergency => D::Suggest,
        _ => D::AutoLink,
    };
    let cat =
        |code: &str, name: &str, group: &str, p: P, emergency: bool, attributes: Vec<pb::AttributeDef>| pb::Category {
            code: code.into(),
            name: name.into(),
            group: group.into(),
            default_priority: p as i32,
            emergency,
            attributes,
            duplicate_policy: policy(code, emergency) as i32,
        };
    vec![
        cat(
            "fire",
            "火情 Fire",
            "public safety",
            P::Urgent,
            true,
            vec![attr("people-trapped", "People trapped", T::SingleValueList, true, &["yes", "no", "unknown"])],
        ),
        cat(
            "fire-hazard",
            "消防隐患 Fire hazard",
            "public safety",
            P::High,
            false,
            vec![
                attr(
                    "hazard",
                    "Hazard",
                    T::MultiValueList,
                    true,
                    &["blocked-exit", "e-bike-charging-indoors", "stacked-goods", "wiring", "other"],
                ),
                attr("site", "Site", T::String, false, &[]),
            ],
        ),
        cat("public-safety", "治安 Public safety", "public safety", P::High, false, vec![]),
        cat(
            "neighbour-dispute",
            "邻里纠纷 Neighbour dispute",
            "disputes",
            P::Normal,
            false,
            vec![attr("households", "Households involved", T::Number, false, &[])],
        ),
        cat("property-conflict", "物业矛盾 Property management conflict", "disputes", P::Normal, false, vec![]),
        cat(
            "parking",
            "停车 Parking",
            "public order",
            P::Low,
            false,
            vec![attr("observed-at", "Observed at", T::Datetime, false, &[])],
        ),
        cat("old-compound-renovation", "老旧小区改造 Old-compound renovation", "livelihood", P::Low, false, vec![]),
        cat("sanitation", "环境卫生 Sanitation", "environment", P::Normal, false, vec![]),
        cat(
            "elderly-welfare",
            "老人关爱 Elderly and welfare needs",
            "welfare",
            P::High,
            false,
            vec![
                attr("living-alone", "Living alone", T::SingleValueList, false, &["yes", "no"]),
                attr("needs", "Needs", T::Text, false, &[]),
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::attribute_value::Value;

    fn v1() -> CatalogueVersion {
        CatalogueVersion {
            version: 1,
            categories: default_categories().into_iter().map(|c| (c.code.clone(), c)).collect(),
        }
    }

    fn value(code: &str, v: Value) -> pb::AttributeValue {
        pb::AttributeValue { code: code.into(), value: Some(v) }
    }

    fn fields(p: Vec<Violation>) -> Vec<String> {
        p.into_iter().map(|(f, _)| f).collect()
    }

    #[test]
    fn the_default_catalogue_is_well_formed() {
        assert_eq!(check_definition(&default_categories()), Ok(()));
    }

    #[test]
    fn a_malformed_catalogue_is_refused_naming_each_place() {
        let mut cats = default_categories();
        cats[1].code = "fire".into();
        cats[2].attributes.push(pb::AttributeDef {
            code: "x".into(),
            r#type: pb::AttributeType::SingleValueList as i32,
            ..Default::default()
        });
        let problems = fields(check_definition(&cats).expect_err("malformed"));
        assert_eq!(problems, ["categories[1].code", "categories[2].attributes[0].allowed_values"]);
    }

    #[test]
    fn an_emergency_cannot_be_linked_automatically_nor_a_policy_be_unknown() {
        let mut cats = default_categories();
        cats[0].duplicate_policy = pb::DuplicatePolicy::AutoLink as i32;
        cats[1].duplicate_policy = 42;
        cats[2].duplicate_policy = pb::DuplicatePolicy::Unspecified as i32;
        let problems = fields(check_definition(&cats).expect_err("malformed"));
        assert_eq!(
            problems,
            ["categories[0].duplicate_policy", "categories[1].duplicate_policy", "categories[2].duplicate_policy"]
        );
        let policy = |code: &str| v1().category(code).expect("exists").duplicate_policy;
        assert_eq!(policy("elderly-welfare"), pb::DuplicatePolicy::Never as i32);
        assert_eq!(policy("fire"), pb::DuplicatePolicy::Suggest as i32);
        assert_eq!(policy("sanitation"), pb::DuplicatePolicy::AutoLink as i32);
    }

    #[test]
    fn valid_attributes_pass() {
        let c = v1();
        let cat = c.category("fire-hazard").expect("exists").clone();
        let ok = c.check_attributes(
            &cat,
            &[
                value(
                    "hazard",
                    Value::Selected(pb::SelectedValues { values: vec!["wiring".into(), "stacked-goods".into()] }),
                ),
                value("site", Value::Text("Building 3".into())),
            ],
        );
        assert!(ok.is_empty(), "{ok:?}");
    }

    #[test]
    fn attribute_errors_name_the_attribute() {
        let c = v1();
        let cat = c.category("fire-hazard").expect("exists").clone();
        let problems =
            c.check_attributes(&cat, &[value("site", Value::Number(3.0)), value("colour", Value::Text("red".into()))]);
        assert_eq!(fields(problems), ["attributes.site", "attributes.colour", "attributes.hazard"]);
        let problems = c.check_attributes(
            &cat,
            &[value("hazard", Value::Selected(pb::SelectedValues { values: vec!["ghosts".into()] }))],
        );
        assert_eq!(problems.len(), 1);
        assert!(problems[0].1.contains("ghosts"), "{problems:?}");
        let fire = c.category("fire").expect("exists").clone();
        let two = Value::Selected(pb::SelectedValues { values: vec!["yes".into(), "no".into()] });
        assert_eq!(fields(c.check_attributes(&fire, &[value("people-trapped", two)])), ["attributes.people-trapped"]);
        let parking = c.category("parking").expect("exists").clone();
        assert_eq!(
            fields(c.check_attributes(&parking, &[value("observed-at", Value::Text("noon".into()))])),
            ["attributes.observed-at"]
        );
    }

    #[test]
    fn an_unknown_category_names_the_field_and_the_version() {
        let (field, message) = v1().category("ufo").expect_err("unknown");
        assert_eq!(field, "category_code");
        assert!(message.contains("version 1"));
    }
}

/// The catalogue aggregate (subject `intake.catalogue.<city>`): every version
/// ever published, so reports can name the version they were checked against.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalogue {
    /// Versions by number, each shared: every report reads one, none copies it.
    pub versions: BTreeMap<u32, std::sync::Arc<CatalogueVersion>>,
}

/// Commands on the catalogue.
#[derive(Debug, Clone)]
pub enum CatalogueCommand {
    /// Publish a new version holding exactly these categories.
    Publish {
        /// The categories (already checked with [`check_definition`]).
        categories: Vec<pb::Category>,
    },
}

/// Rules a catalogue command can break (none beyond input checks today).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum CatalogueRejection {
    /// The new version equals the latest one.
    #[error("the catalogue is unchanged from version {0}")]
    Unchanged(u32),
}

impl Catalogue {
    /// The latest version, if any.
    pub fn latest(&self) -> Option<&std::sync::Arc<CatalogueVersion>> {
        self.versions.values().next_back()
    }

    /// Version `v`, or the latest for 0.
    pub fn version(&self, v: u32) -> Option<&std::sync::Arc<CatalogueVersion>> {
        if v == 0 { self.latest() } else { self.versions.get(&v) }
    }
}

impl gridwork_eventstore::Aggregate for Catalogue {
    const CONTEXT: &'static str = "intake";
    const TYPE: &'static str = "catalogue";
    const STATE_VERSION: u32 = 1;
    type Command = CatalogueCommand;
    type Event = crate::events::CatalogueEvent;
    type Rejection = CatalogueRejection;

    fn decide(&self, command: &CatalogueCommand) -> Result<Vec<Self::Event>, CatalogueRejection> {
        let CatalogueCommand::Publish { categories } = command;
        let latest = self.latest();
        if let Some(l) = latest
            && l.categories.values().cloned().collect::<Vec<_>>() == sorted(categories)
        {
            return Err(CatalogueRejection::Unchanged(l.version));
        }
        let version = latest.map_or(1, |l| l.version + 1);
        Ok(vec![crate::events::CatalogueEvent::VersionPublished(pb::CatalogueVersionPublished {
            version,
            categories: sorted(categories),
        })])
    }

    fn evolve(mut self, event: &Self::Event) -> Self {
        let crate::events::CatalogueEvent::VersionPublished(e) = event;
        self.versions.insert(
            e.version,
            std::sync::Arc::new(CatalogueVersion {
                version: e.version,
                categories: e.categories.iter().map(|c| (c.code.clone(), c.clone())).collect(),
            }),
        );
        self
    }

    fn encode_state(&self) -> Vec<u8> {
        use prost::Message as _;
        let mut out = Vec::new();
        for v in self.versions.values() {
            let e = pb::CatalogueVersionPublished {
                version: v.version,
                categories: v.categories.values().cloned().collect(),
            };
            out.extend(e.encode_length_delimited_to_vec());
        }
        out
    }

    fn decode_state(mut bytes: &[u8]) -> Result<Self, gridwork_eventstore::DecodeError> {
        use prost::Message as _;
        let mut state = Catalogue::default();
        while !bytes.is_empty() {
            let e = pb::CatalogueVersionPublished::decode_length_delimited(&mut bytes)
                .map_err(|e| gridwork_eventstore::DecodeError::new("catalogue state", e))?;
            state = state.evolve(&crate::events::CatalogueEvent::VersionPublished(e));
        }
        Ok(state)
    }
}

fn sorted(categories: &[pb::Category]) -> Vec<pb::Category> {
    let mut v = categories.to_vec();
    v.sort_by(|a, b| a.code.cmp(&b.code));
    v
}

#[cfg(test)]
mod aggregate_tests {
    use gridwork_eventstore::Aggregate as _;
    use gridwork_eventstore::testing::given;

    use super::*;
    use crate::events::CatalogueEvent;

    fn published(version: u32, categories: Vec<pb::Category>) -> CatalogueEvent {
        CatalogueEvent::VersionPublished(pb::CatalogueVersionPublished { version, categories: sorted(&categories) })
    }

    #[test]
    fn versions_are_numbered_from_one_and_kept() {
        let v1 = default_categories();
        given::<Catalogue>([])
            .when(CatalogueCommand::Publish { categories: v1.clone() })
            .then_expect_events([published(1, v1.clone())]);
        let mut v2 = v1.clone();
        v2.pop();
        given::<Catalogue>([published(1, v1.clone())])
            .when(CatalogueCommand::Publish { categories: v2.clone() })
            .then_expect_events([published(2, v2.clone())]);
        let state = given::<Catalogue>([published(1, v1.clone()), published(2, v2)]).state().clone();
        assert_eq!(state.version(0).map(|v| v.version), Some(2));
        assert_eq!(state.version(1).map(|v| v.categories.len()), Some(v1.len()));
        assert_eq!(Catalogue::decode_state(&state.encode_state()).expect("decodes"), state);
    }

    #[test]
    fn an_unchanged_catalogue_is_not_republished() {
        let v1 = default_categories();
        given::<Catalogue>([published(1, v1.clone())])
            .when(CatalogueCommand::Publish { categories: v1 })
            .then_expect_error(CatalogueRejection::Unchanged(1));
    }
}
