//! What every RPC reads from its request's metadata, in one place.

use std::time::Duration;

/// Longest a read waits for `min_position` when the caller set no deadline.
pub const DEFAULT_READ_WAIT: Duration = Duration::from_secs(5);

/// The acting principal. Authentication is not built yet (see ARCHITECTURE.md,
/// "Security"): this is the unauthenticated `x-gridwork-principal` metadata, or
/// `anonymous`.
pub fn principal<T>(request: &tonic::Request<T>) -> String {
    request
        .metadata()
        .get("x-gridwork-principal")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .unwrap_or("anonymous")
        .to_string()
}

/// The caller's roles. Like the principal, until authentication is built
/// these are an unauthenticated claim: the `x-gridwork-roles` metadata,
/// comma-separated (`callback,triage`).
pub fn roles<T>(request: &tonic::Request<T>) -> Vec<String> {
    request
        .metadata()
        .get("x-gridwork-roles")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(',').map(str::trim).filter(|r| !r.is_empty()).map(String::from).collect())
        .unwrap_or_default()
}

/// `PERMISSION_DENIED` naming the role, unless the caller holds it.
#[allow(clippy::result_large_err)]
pub fn require_role<T>(request: &tonic::Request<T>, role: &str, to: &str) -> Result<(), tonic::Status> {
    if roles(request).iter().any(|r| r == role) {
        Ok(())
    } else {
        Err(tonic::Status::permission_denied(format!("{to} needs the role {role:?} (x-gridwork-roles)")))
    }
}

/// The caller's deadline (`grpc-timeout`), if it sent one.
pub fn deadline<T>(request: &tonic::Request<T>) -> Option<Duration> {
    let v = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// How long a read may wait for `min_position`: 90 % of the caller's deadline (so
/// the server answers DEADLINE_EXCEEDED itself, before the caller gives up), or
/// [`DEFAULT_READ_WAIT`], and never more than 30 s.
pub fn read_wait<T>(request: &tonic::Request<T>) -> Duration {
    deadline(request).map_or(DEFAULT_READ_WAIT, |d| d * 9 / 10).min(Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grpc_timeout_header_becomes_a_read_wait_just_under_it() {
        let mut r = tonic::Request::new(());
        r.metadata_mut().insert("grpc-timeout", "300m".parse().expect("ascii"));
        assert_eq!(deadline(&r), Some(Duration::from_millis(300)));
        assert_eq!(read_wait(&r), Duration::from_millis(270));
        assert_eq!(read_wait(&tonic::Request::new(())), DEFAULT_READ_WAIT);
    }

    #[test]
    fn a_role_is_held_only_when_claimed() {
        let mut r = tonic::Request::new(());
        assert_eq!(
            require_role(&r, "callback", "reading a contact").expect_err("none").code(),
            tonic::Code::PermissionDenied
        );
        r.metadata_mut().insert("x-gridwork-roles", "triage, callback".parse().expect("ascii"));
        assert_eq!(roles(&r), ["triage", "callback"]);
        assert!(require_role(&r, "callback", "reading a contact").is_ok());
        assert!(require_role(&r, "call", "reading a contact").is_err());
    }

    #[test]
    fn the_principal_defaults_to_anonymous() {
        let mut r = tonic::Request::new(());
        assert_eq!(principal(&r), "anonymous");
        r.metadata_mut().insert("x-gridwork-principal", "user:7".parse().expect("ascii"));
        assert_eq!(principal(&r), "user:7");
    }
}
