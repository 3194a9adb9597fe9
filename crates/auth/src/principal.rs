//! The verified caller and what it may do.

use std::fmt;
use std::str::FromStr;

/// One thing a caller may do, and where: `street:s1` (the street `s1` and
/// its subtree), `department:fire`, `dispatcher` (no scope). Carried in the
/// token's `grants` claim as these strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Grant {
    /// The role: lower-case letters, digits and `-`.
    pub role: String,
    /// The unit, department or other thing the role is held for, if any.
    pub scope: Option<String>,
}

/// A grant string that is not `role` or `role:scope`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("grant {grant:?}: {reason}")]
pub struct GrantError {
    /// The string.
    pub grant: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for Grant {
    type Err = GrantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| GrantError { grant: s.chars().take(80).collect(), reason };
        let (role, scope) = match s.split_once(':') {
            Some((role, scope)) => (role, Some(scope)),
            None => (s, None),
        };
        if role.is_empty() || role.len() > 32 {
            return Err(err("the role must be 1 to 32 characters"));
        }
        if !role.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(err("the role may hold only a-z, 0-9 and '-'"));
        }
        if let Some(scope) = scope {
            if scope.is_empty() || scope.len() > 128 {
                return Err(err("the scope must be 1 to 128 characters"));
            }
            if !scope.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(err("the scope may hold only printable ASCII without spaces"));
            }
        }
        Ok(Self { role: role.to_string(), scope: scope.map(str::to_string) })
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scope {
            Some(scope) => write!(f, "{}:{scope}", self.role),
            None => f.write_str(&self.role),
        }
    }
}

/// A caller whose token was verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`: who, as the issuer names them (recorded in every
    /// event header the caller's commands write).
    pub subject: String,
    /// What the caller may do.
    pub grants: Vec<Grant>,
    /// The token's `jti`, if it had one (audit records name it).
    pub token_id: String,
    /// The token's `exp` (Unix seconds).
    pub expires_at_unix: i64,
}

impl Principal {
    /// Whether any grant is for `role` (whatever its scope).
    pub fn has_role(&self, role: &str) -> bool {
        self.grants.iter().any(|g| g.role == role)
    }

    /// The scopes `role` is held for (`None` for a grant without scope).
    pub fn scopes<'a>(&'a self, role: &'a str) -> impl Iterator<Item = Option<&'a str>> + 'a {
        self.grants.iter().filter(move |g| g.role == role).map(|g| g.scope.as_deref())
    }

    /// The roles, once each, in grant order.
    pub fn roles(&self) -> Vec<&str> {
        let mut roles: Vec<&str> = Vec::new();
        for g in &self.grants {
            if !roles.contains(&g.role.as_str()) {
                roles.push(&g.role);
            }
        }
        roles
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_as_role_or_role_and_scope_and_refuse_anything_else() {
        let g: Grant = "street:s1".parse().expect("scoped");
        assert_eq!((g.role.as_str(), g.scope.as_deref()), ("street", Some("s1")));
        assert_eq!(g.to_string(), "street:s1");
        let g: Grant = "dispatcher".parse().expect("bare");
        assert_eq!(g.scope, None);
        // A scope may itself hold a colon (a department code with a sub-unit).
        assert_eq!("department:fire:north".parse::<Grant>().expect("colon").scope.as_deref(), Some("fire:north"));
        for bad in ["", ":s1", "Street:s1", "street:", "street:a b", "grid worker", &"r".repeat(33)] {
            assert!(bad.parse::<Grant>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_principal_lists_its_roles_once_and_the_scopes_of_each() {
        let p = Principal {
            subject: "u1".into(),
            grants: ["street:s1", "street:s2", "dispatcher"].iter().map(|g| g.parse().expect("grant")).collect(),
            token_id: String::new(),
            expires_at_unix: 0,
        };
        assert_eq!(p.roles(), ["street", "dispatcher"]);
        assert_eq!(p.scopes("street").collect::<Vec<_>>(), [Some("s1"), Some("s2")]);
        assert!(p.has_role("dispatcher") && !p.has_role("triage"));
    }
}
