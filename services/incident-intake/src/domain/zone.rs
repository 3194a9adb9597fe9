//! The duplicate zone (subject `intake.zone.<grid>_<category>`): where "is this
//! report a 'me too'?" is decided, one report at a time.
//!
//! Every report of a category that is compared (its duplicate policy is not
//! NEVER) is placed in the zone of its grid and category *before* its incident
//! is written, and the placement is a commit under the zone's expected
//! sequence. Two reports at the same spot at the same moment therefore cannot
//! both find the zone empty: the second one's commit is refused by the server,
//! the zone is reloaded with the first in it, and the second is decided again
//! as its "me too". The decision reads the zone's own state, current by
//! construction, never a read model.
//!
//! The zone keeps the incidents a later report may be near: each original with
//! where it is and when a report was last placed on it (itself or a linked
//! "me too": a problem that keeps drawing reports stays matchable). Entries
//! older than the window are dropped as reports arrive; so are incidents the
//! application found finished (their case resolved or closed, rejected,
//! merged) or never written, which it says in the command.

use std::collections::BTreeSet;

use gridwork_eventstore::{Aggregate, DecodeError, DomainEvent};
use gridwork_proto::gridwork::intake::v1 as pb;
use prost::Message as _;

/// Great-circle distance in metres.
pub fn haversine_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6_371_000.0 * a.sqrt().asin()
}

/// An address as a comparison key: the SHA-256 (first 16 bytes, hex) of its
/// [`normalise_address`] form, so that the zone's events, which are not
/// sealed, never carry a home address in plain (the key compares; it does
/// not read back). An empty address has an empty key.
pub fn address_key(text: &str) -> String {
    let normal = normalise_address(text);
    if normal.is_empty() {
        return normal;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, normal.as_bytes());
    digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// An address as compared: case, spacing and punctuation do not make two
/// addresses different ("3 Xinhua Rd, Bldg 2" = "3 xinhua rd bldg 2").
pub fn normalise_address(text: &str) -> String {
    let mut key = String::with_capacity(text.len());
    for word in
        text.split(|c: char| c.is_whitespace() || (c.is_ascii_punctuation() && c != '-') || "，。、；：".contains(c))
    {
        if word.is_empty() {
            continue;
        }
        if !key.is_empty() {
            key.push(' ');
        }
        key.extend(word.chars().flat_map(char::to_lowercase));
    }
    key
}

/// The zone id of a grid and a category: `<grid>_<category>` (a category code
/// has no `_`), or, when that is too long for a subject token, the grid's
/// prefix and a hash of both.
pub fn zone_id(grid_id: &str, category_code: &str) -> String {
    let id = format!("{grid_id}_{category_code}");
    if id.len() <= 128 {
        return id;
    }
    // FNV-1a: stable across builds and platforms (std's hasher is not).
    let hash = gridwork_eventstore::envelope::request_digest(id.as_bytes());
    let prefix: String = grid_id.chars().take(100).collect();
    format!("{prefix}_h{hash:016x}")
}

/// One incident a later report may be near.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Incident id.
    pub incident_id: String,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Normalised address ("" when placed by coordinates).
    pub address_key: String,
    /// When it was placed.
    pub placed_at_unix_ms: i64,
    /// When a report was last placed on it.
    pub last_report_at_unix_ms: i64,
}

/// A zone's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Zone {
    /// Incidents a later report may be near, in placement order.
    pub entries: Vec<Entry>,
}

/// What is compared, and how, for one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// A report near an open incident is linked to it.
    AutoLink,
    /// A report near an open incident is an incident of its own, flagged.
    Suggest,
}

/// Where a report is, as the zone compares it.
#[derive(Debug, Clone, PartialEq)]
pub struct Spot {
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Normalised address ("" when placed by coordinates).
    pub address_key: String,
}

/// How near counts as the same place, and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reach {
    /// Metres.
    pub radius_m: f64,
    /// A report matches an entry whose last report is at most this old.
    pub window_ms: i64,
}

/// Commands on a zone.
#[derive(Debug, Clone)]
pub enum ZoneCommand {
    /// Place a new report.
    Place {
        /// The report's incident id.
        incident_id: String,
        /// Where.
        spot: Spot,
        /// When it was reported.
        at_unix_ms: i64,
        /// Link or flag.
        policy: Policy,
        /// Radius and window.
        reach: Reach,
        /// Entries the application found finished or never written: not
        /// offered, and dropped.
        finished: BTreeSet<String>,
        /// Entries the application saw but did not check (beyond the
        /// nearest open one, or beyond how many it looks at): not offered.
        /// An entry it never saw (placed since, by another replica) is
        /// offered: it was reported moments ago.
        unchecked: BTreeSet<String>,
    },
}

/// A zone refuses nothing: every report has a place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ZoneRejection {}

/// Something that happened in a zone.
#[derive(Debug, Clone, PartialEq)]
pub enum ZoneEvent {
    /// `intake.zone.report_placed`.
    ReportPlaced(pb::ReportPlaced),
}

/// `intake.zone.report_placed`.
pub const REPORT_PLACED: &str = "intake.zone.report_placed";

impl DomainEvent for ZoneEvent {
    fn event_type(&self) -> &'static str {
        REPORT_PLACED
    }

    fn encode(&self) -> Vec<u8> {
        let ZoneEvent::ReportPlaced(e) = self;
        e.encode_to_vec()
    }

    fn decode(event_type: &str, schema_version: u32, payload: &[u8]) -> Result<Self, DecodeError> {
        if event_type != REPORT_PLACED || schema_version != 1 {
            return Err(DecodeError::unknown(
                event_type,
                format!("an event type or version ({schema_version}) this build does not know"),
            ));
        }
        pb::ReportPlaced::decode(payload).map(ZoneEvent::ReportPlaced).map_err(|e| DecodeError::new(event_type, e))
    }
}

impl Zone {
    /// The entries a report at `spot` at `at` would be compared with, nearest
    /// first, with their distance. A report placed by address matches only
    /// the same address (every such report sits on its unit's interior
    /// point, so distance says nothing); one placed by coordinates matches
    /// only reports placed by coordinates within the radius.
    pub fn candidates(&self, spot: &Spot, at_unix_ms: i64, reach: Reach) -> Vec<(&Entry, f64)> {
        let mut found: Vec<(&Entry, f64)> = self
            .entries
            .iter()
            .filter(|e| e.last_report_at_unix_ms >= at_unix_ms - reach.window_ms)
            .filter_map(|e| {
                if spot.address_key.is_empty() != e.address_key.is_empty() {
                    return None;
                }
                if !spot.address_key.is_empty() {
                    return (spot.address_key == e.address_key).then_some((e, 0.0));
                }
                let d = haversine_m(spot.lat, spot.lon, e.lat, e.lon);
                (d <= reach.radius_m).then_some((e, d))
            })
            .collect();
        found.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.placed_at_unix_ms.cmp(&b.0.placed_at_unix_ms)));
        found
    }
}

impl Aggregate for Zone {
    const CONTEXT: &'static str = "intake";
    const TYPE: &'static str = "zone";
    const STATE_VERSION: u32 = 1;
    type Command = ZoneCommand;
    type Event = ZoneEvent;
    type Rejection = ZoneRejection;

    fn decide(&self, command: &ZoneCommand) -> Result<Vec<ZoneEvent>, ZoneRejection> {
        let ZoneCommand::Place { incident_id, spot, at_unix_ms, policy, reach, finished, unchecked } = command;
        let near = self.candidates(spot, *at_unix_ms, *reach).into_iter().find(|(e, _)| {
            !finished.contains(&e.incident_id) && !unchecked.contains(&e.incident_id) && e.incident_id != *incident_id
        });
        let forget =
            self.entries.iter().filter(|e| finished.contains(&e.incident_id)).map(|e| e.incident_id.clone()).collect();
        Ok(vec![ZoneEvent::ReportPlaced(pb::ReportPlaced {
            incident_id: incident_id.clone(),
            lat: spot.lat,
            lon: spot.lon,
            address_key: spot.address_key.clone(),
            at_unix_ms: *at_unix_ms,
            near_incident_id: near.map(|(e, _)| e.incident_id.clone()).unwrap_or_default(),
            distance_m: near.map_or(0.0, |(_, d)| d),
            linked: near.is_some() && *policy == Policy::AutoLink,
            forget,
            horizon_ms: reach.window_ms,
        })])
    }

    fn evolve(mut self, event: &ZoneEvent) -> Self {
        let ZoneEvent::ReportPlaced(e) = event;
        self.entries.retain(|x| !e.forget.contains(&x.incident_id));
        if e.linked {
            if let Some(original) = self.entries.iter_mut().find(|x| x.incident_id == e.near_incident_id) {
                original.last_report_at_unix_ms = original.last_report_at_unix_ms.max(e.at_unix_ms);
            }
        } else if !self.entries.iter().any(|x| x.incident_id == e.incident_id) {
            self.entries.push(Entry {
                incident_id: e.incident_id.clone(),
                lat: e.lat,
                lon: e.lon,
                address_key: e.address_key.clone(),
                placed_at_unix_ms: e.at_unix_ms,
                last_report_at_unix_ms: e.at_unix_ms,
            });
        }
        let oldest = e.at_unix_ms.saturating_sub(e.horizon_ms);
        self.entries.retain(|x| x.last_report_at_unix_ms >= oldest);
        self
    }

    fn encode_state(&self) -> Vec<u8> {
        pb::ZoneState {
            entries: self
                .entries
                .iter()
                .map(|e| pb::ZoneEntry {
                    incident_id: e.incident_id.clone(),
                    lat: e.lat,
                    lon: e.lon,
                    address_key: e.address_key.clone(),
                    placed_at_unix_ms: e.placed_at_unix_ms,
                    last_report_at_unix_ms: e.last_report_at_unix_ms,
                })
                .collect(),
        }
        .encode_to_vec()
    }

    fn decode_state(bytes: &[u8]) -> Result<Self, DecodeError> {
        let s = pb::ZoneState::decode(bytes).map_err(|e| DecodeError::new("zone state", e))?;
        Ok(Self {
            entries: s
                .entries
                .into_iter()
                .map(|e| Entry {
                    incident_id: e.incident_id,
                    lat: e.lat,
                    lon: e.lon,
                    address_key: e.address_key,
                    placed_at_unix_ms: e.placed_at_unix_ms,
                    last_report_at_unix_ms: e.last_report_at_unix_ms,
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use gridwork_eventstore::testing::given;

    use super::*;

    const HOUR: i64 = 3_600_000;
    const REACH: Reach = Reach { radius_m: 100.0, window_ms: 24 * HOUR };

    fn at(lat: f64, lon: f64) -> Spot {
        Spot { lat, lon, address_key: String::new() }
    }

    fn door(text: &str) -> Spot {
        Spot { lat: 35.0, lon: 115.0, address_key: address_key(text) }
    }

    fn place(id: &str, spot: Spot, at_unix_ms: i64, policy: Policy) -> ZoneCommand {
        ZoneCommand::Place {
            incident_id: id.into(),
            spot,
            at_unix_ms,
            policy,
            reach: REACH,
            finished: BTreeSet::new(),
            unchecked: BTreeSet::new(),
        }
    }

    fn placed(events: &[ZoneEvent]) -> &pb::ReportPlaced {
        let [ZoneEvent::ReportPlaced(e)] = events else { panic!("{events:?}") };
        e
    }

    fn history(commands: &[ZoneCommand]) -> Vec<ZoneEvent> {
        let mut zone = Zone::default();
        let mut events = Vec::new();
        for c in commands {
            let Ok(decided) = zone.decide(c);
            zone = zone.fold(&decided);
            events.extend(decided);
        }
        events
    }

    #[test]
    fn the_first_report_is_an_original_and_the_next_one_nearby_is_linked_to_it() {
        let first = history(&[place("a", at(35.0, 115.0), 0, Policy::AutoLink)]);
        given::<Zone>(first.clone()).when(place("b", at(35.0002, 115.0), HOUR, Policy::AutoLink)).then_with(|events| {
            let e = placed(events);
            assert_eq!((e.near_incident_id.as_str(), e.linked), ("a", true));
            assert!((e.distance_m - 22.2).abs() < 0.5, "{}", e.distance_m);
        });
        let zone = Zone::default().fold(&first);
        assert_eq!(zone.entries.len(), 1);
    }

    #[test]
    fn under_suggest_a_report_nearby_is_flagged_and_becomes_an_incident_of_its_own() {
        let events = history(&[
            place("a", at(35.0, 115.0), 0, Policy::Suggest),
            place("b", at(35.0001, 115.0), 1, Policy::Suggest),
        ]);
        let e = placed(&events[1..]);
        assert_eq!((e.near_incident_id.as_str(), e.linked), ("a", false));
        let zone = Zone::default().fold(&events);
        assert_eq!(zone.entries.iter().map(|e| e.incident_id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn a_report_beyond_the_radius_or_the_window_is_an_original() {
        let first = history(&[place("a", at(35.0, 115.0), 0, Policy::AutoLink)]);
        // 0.002° of latitude ≈ 222 m.
        given::<Zone>(first.clone())
            .when(place("far", at(35.002, 115.0), HOUR, Policy::AutoLink))
            .then_with(|events| assert_eq!(placed(events).near_incident_id, ""));
        given::<Zone>(first.clone())
            .when(place("late", at(35.0, 115.0), 25 * HOUR, Policy::AutoLink))
            .then_with(|events| assert_eq!(placed(events).near_incident_id, ""));
    }

    #[test]
    fn the_window_counts_from_the_latest_report_placed_on_an_incident() {
        let events = history(&[
            place("a", at(35.0, 115.0), 0, Policy::AutoLink),
            place("b", at(35.0, 115.0), 20 * HOUR, Policy::AutoLink),
        ]);
        given::<Zone>(events.clone())
            .when(place("c", at(35.0, 115.0), 40 * HOUR, Policy::AutoLink))
            .then_with(|e| assert_eq!(placed(e).near_incident_id, "a"));
    }

    #[test]
    fn reports_placed_by_address_match_only_the_same_address() {
        let first = history(&[place("a", door("3 Xinhua Rd, Bldg 2"), 0, Policy::AutoLink)]);
        given::<Zone>(first.clone())
            .when(place("b", door("3 xinhua rd  bldg 2"), 1, Policy::AutoLink))
            .then_with(|e| assert_eq!(placed(e).near_incident_id, "a"));
        // The same interior point, another door.
        given::<Zone>(first.clone())
            .when(place("c", door("5 Xinhua Rd"), 1, Policy::AutoLink))
            .then_with(|e| assert_eq!(placed(e).near_incident_id, ""));
        // Coordinates on that point are not the address either.
        given::<Zone>(first.clone())
            .when(place("d", at(35.0, 115.0), 1, Policy::AutoLink))
            .then_with(|e| assert_eq!(placed(e).near_incident_id, ""));
    }

    #[test]
    fn a_finished_incident_is_not_offered_and_is_forgotten() {
        let first = history(&[place("a", at(35.0, 115.0), 0, Policy::AutoLink)]);
        let mut command = place("b", at(35.0, 115.0), 1, Policy::AutoLink);
        let ZoneCommand::Place { finished, .. } = &mut command;
        finished.insert("a".into());
        given::<Zone>(first.clone()).when(command).then_with(|events| {
            let e = placed(events);
            assert_eq!((e.near_incident_id.as_str(), e.forget.clone()), ("", vec!["a".to_string()]));
            let zone = Zone::default().fold(&first).fold(events);
            assert_eq!(zone.entries.iter().map(|e| e.incident_id.as_str()).collect::<Vec<_>>(), ["b"]);
        });
    }

    #[test]
    fn an_entry_seen_but_not_checked_is_not_offered_and_one_placed_since_is() {
        let first = history(&[
            place("a", at(35.0, 115.0), 0, Policy::AutoLink),
            place("b", at(35.0005, 115.0), 1, Policy::Suggest),
        ]);
        let mut command = place("c", at(35.0, 115.0), 2, Policy::AutoLink);
        let ZoneCommand::Place { unchecked, .. } = &mut command;
        unchecked.insert("a".into());
        // "a" is nearer but unchecked: "b" is offered.
        given::<Zone>(first.clone()).when(command).then_with(|e| assert_eq!(placed(e).near_incident_id, "b"));
        // A report is never offered itself (a retried placement).
        given::<Zone>(first)
            .when(place("a", at(35.0, 115.0), 2, Policy::AutoLink))
            .then_with(|e| assert_eq!(placed(e).near_incident_id, "b"));
    }

    #[test]
    fn a_linked_report_adds_no_entry_and_an_entry_is_never_added_twice() {
        let events = history(&[
            place("a", at(35.0, 115.0), 0, Policy::AutoLink),
            place("b", at(35.0, 115.0), 1, Policy::AutoLink),
        ]);
        let zone = Zone::default().fold(&events);
        assert_eq!(zone.entries.iter().map(|e| e.incident_id.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(zone.entries[0].last_report_at_unix_ms, 1);
        let again = zone.clone().fold(&events[..1]);
        assert_eq!(again.entries.len(), 1, "a redelivered placement adds nothing");
    }

    #[test]
    fn entries_older_than_the_window_are_dropped_as_reports_arrive() {
        let events = history(&[
            place("a", at(35.0, 115.0), 0, Policy::AutoLink),
            place("b", at(36.0, 115.0), 30 * HOUR, Policy::AutoLink),
        ]);
        let zone = Zone::default().fold(&events);
        assert_eq!(zone.entries.iter().map(|e| e.incident_id.as_str()).collect::<Vec<_>>(), ["b"]);
        assert_eq!(Zone::decode_state(&zone.encode_state()).expect("decodes"), zone);
    }

    #[test]
    fn haversine_measures_about_111_km_per_degree_of_latitude() {
        let d = haversine_m(35.0, 115.0, 36.0, 115.0);
        assert!((d - 111_195.0).abs() < 100.0, "{d}");
        assert!(haversine_m(35.76, 115.03, 35.76, 115.03) < 1e-6);
    }

    #[test]
    fn addresses_compare_without_case_spacing_or_punctuation_and_long_zone_ids_fit_a_subject() {
        assert_eq!(normalise_address("  3 Xinhua Rd., Bldg 2 "), "3 xinhua rd bldg 2");
        assert_eq!(normalise_address("新华路3号，2栋"), "新华路3号 2栋");
        assert_eq!(address_key("  3 Xinhua Rd., Bldg 2 "), address_key("3 xinhua rd bldg 2"));
        assert_ne!(address_key("3 Xinhua Rd, Bldg 2"), address_key("3 Xinhua Rd, Bldg 3"));
        assert!(!address_key("3 Xinhua Rd").contains("xinhua"), "never the address in plain");
        assert_eq!(address_key(" , "), "");
        assert_eq!(zone_id("g-1", "fire"), "g-1_fire");
        let long = zone_id(&"g".repeat(120), "fire-hazard");
        assert!(long.len() <= 128 && gridwork_eventstore::aggregate::validate_id(&long).is_ok(), "{long}");
        assert_ne!(long, zone_id(&"g".repeat(120), "sanitation"));
    }
}
