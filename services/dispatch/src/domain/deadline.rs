//! A case's deadlines, typed. On the wire a deadline id is a string
//! (`gridwork.dispatch.v1.Deadline.id`); every reader parses it here, once, and
//! nothing else looks inside it.

use std::fmt;

/// Whose clock a deadline is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The case's own clocks, from acceptance (respond, resolve): no hand-off
    /// resets them; a passed one makes the case overdue.
    Case,
    /// The current owner's acknowledge clock.
    Owner,
    /// The reporter's rating window.
    Rating,
    /// A summoned department's report-for-duty clock.
    Summons,
}

impl Scope {
    /// Lower-case name, as stored in the read model.
    pub fn label(self) -> &'static str {
        match self {
            Scope::Case => "case",
            Scope::Owner => "owner",
            Scope::Rating => "rating",
            Scope::Summons => "summons",
        }
    }
}

/// A deadline of a case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeadlineId {
    /// Assignment n's acknowledge clock.
    Ack(u32),
    /// Round n's respond clock (first action on site).
    Respond(u32),
    /// Round n's resolve clock.
    Resolve(u32),
    /// Round n's rating window.
    Rate(u32),
    /// A department's report-for-duty clock, from whistle n.
    Summons {
        /// The whistle.
        whistle: u32,
        /// The department code.
        department: String,
    },
}

impl DeadlineId {
    /// Parse a wire id: `ack:<n>`, `respond:<n>`, `resolve:<n>`, `rate:<n>`,
    /// `summons:<n>:<department>`; and the forms events carried before case-level
    /// clocks: `<n>:ack|respond|resolve` and `w<n>:<department>`.
    pub fn parse(id: &str) -> Option<Self> {
        let (head, rest) = id.split_once(':')?;
        let number = |s: &str| s.parse::<u32>().ok();
        match head {
            "ack" => number(rest).map(DeadlineId::Ack),
            "respond" => number(rest).map(DeadlineId::Respond),
            "resolve" => number(rest).map(DeadlineId::Resolve),
            "rate" => number(rest).map(DeadlineId::Rate),
            "summons" => {
                let (n, department) = rest.split_once(':')?;
                (!department.is_empty())
                    .then(|| number(n).map(|whistle| DeadlineId::Summons { whistle, department: department.into() }))?
            }
            legacy if legacy.starts_with('w') => {
                let whistle = number(&legacy[1..])?;
                (!rest.is_empty()).then(|| DeadlineId::Summons { whistle, department: rest.into() })
            }
            legacy => {
                let n = number(legacy)?;
                match rest {
                    "ack" => Some(DeadlineId::Ack(n)),
                    "respond" => Some(DeadlineId::Respond(n)),
                    "resolve" => Some(DeadlineId::Resolve(n)),
                    _ => None,
                }
            }
        }
    }

    /// Whose clock it is.
    pub fn scope(&self) -> Scope {
        match self {
            DeadlineId::Ack(_) => Scope::Owner,
            DeadlineId::Respond(_) | DeadlineId::Resolve(_) => Scope::Case,
            DeadlineId::Rate(_) => Scope::Rating,
            DeadlineId::Summons { .. } => Scope::Summons,
        }
    }

    /// The department, for a summons clock.
    pub fn department(&self) -> Option<&str> {
        match self {
            DeadlineId::Summons { department, .. } => Some(department),
            _ => None,
        }
    }
}

impl fmt::Display for DeadlineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadlineId::Ack(n) => write!(f, "ack:{n}"),
            DeadlineId::Respond(n) => write!(f, "respond:{n}"),
            DeadlineId::Resolve(n) => write!(f, "resolve:{n}"),
            DeadlineId::Rate(n) => write!(f, "rate:{n}"),
            DeadlineId::Summons { whistle, department } => write!(f, "summons:{whistle}:{department}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_the_old_forms_still_parse() {
        for id in [
            DeadlineId::Ack(3),
            DeadlineId::Respond(1),
            DeadlineId::Resolve(2),
            DeadlineId::Rate(1),
            DeadlineId::Summons { whistle: 2, department: "police".into() },
        ] {
            assert_eq!(DeadlineId::parse(&id.to_string()), Some(id));
        }
        assert_eq!(DeadlineId::parse("1:ack"), Some(DeadlineId::Ack(1)));
        assert_eq!(DeadlineId::parse("2:resolve"), Some(DeadlineId::Resolve(2)));
        assert_eq!(
            DeadlineId::parse("w1:urban-management"),
            Some(DeadlineId::Summons { whistle: 1, department: "urban-management".into() })
        );
        for bad in ["", "ack", "ack:x", "1:later", "w:police", "summons:1:", "w1:", "rate:-1"] {
            assert_eq!(DeadlineId::parse(bad), None, "{bad}");
        }
        assert_eq!(DeadlineId::Resolve(1).scope(), Scope::Case);
        assert_eq!(DeadlineId::parse("1:respond").map(|d| d.scope()), Some(Scope::Case));
    }
}
