//! What every RPC reads from its request's metadata, in one place.

use std::sync::Arc;
use std::time::Duration;

use gridwork_auth::{Access, Principal};

/// Longest a read waits for `min_position` when the caller set no deadline.
pub const DEFAULT_READ_WAIT: Duration = Duration::from_secs(5);

/// What the authentication layer (`gridwork_auth::AuthLayer`, in front of
/// every service) admitted the call under: the verified caller and the RPC's
/// permission, for the handler's scope checks. A request that never passed
/// the layer is refused `UNAUTHENTICATED`, never served as somebody.
pub fn access<T>(request: &tonic::Request<T>) -> Result<Arc<Access>, tonic::Status> {
    request.extensions().get::<Arc<Access>>().cloned().ok_or_else(|| {
        tonic::Status::unauthenticated("no verified caller: the call did not pass the authentication layer")
    })
}

/// The verified caller, if the call passed the authentication layer.
pub fn caller<T>(request: &tonic::Request<T>) -> Option<&Principal> {
    request.extensions().get::<Arc<Access>>().map(|a| a.principal.as_ref())
}

/// The acting principal recorded in event headers: the verified token's
/// subject, never client metadata (`UNAUTHENTICATED` without one).
pub fn principal<T>(request: &tonic::Request<T>) -> Result<String, tonic::Status> {
    Ok(access(request)?.principal.subject.clone())
}

/// The caller's roles, from its verified token's grants.
pub fn roles<T>(request: &tonic::Request<T>) -> Vec<String> {
    caller(request).map(|p| p.roles().into_iter().map(String::from).collect()).unwrap_or_default()
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

    fn with_grants(grants: &[&str]) -> tonic::Request<()> {
        let mut r = tonic::Request::new(());
        r.extensions_mut().insert(Arc::new(Access {
            principal: Arc::new(Principal {
                subject: "user:7".into(),
                grants: grants.iter().map(|g| g.parse().expect("grant")).collect(),
                token_id: String::new(),
                expires_at_unix: 0,
            }),
            permission: &gridwork_auth::policy::DISPATCH_READ,
        }));
        r
    }

    #[test]
    fn roles_come_from_the_verified_token_never_from_metadata() {
        let mut claimed = tonic::Request::new(());
        claimed.metadata_mut().insert("x-gridwork-roles", "callback".parse().expect("ascii"));
        assert!(roles(&claimed).is_empty());
        assert_eq!(roles(&with_grants(&["triage", "callback:hl", "triage:hl-s0"])), ["triage", "callback"]);
    }

    #[test]
    fn the_principal_is_the_verified_subject() {
        let mut r = tonic::Request::new(());
        r.metadata_mut().insert("x-gridwork-principal", "user:9".parse().expect("ascii"));
        let refused = principal(&r).expect_err("no verified caller is nobody, not \"anonymous\"");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert_eq!(principal(&with_grants(&[])).expect("verified"), "user:7");
    }
}
