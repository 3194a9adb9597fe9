//! The one place errors become `tonic::Status`.
//!
//! | error | code |
//! |---|---|
//! | bad input, or a command whose commit can never fit the stream | `INVALID_ARGUMENT`, with `google.rpc.BadRequest` naming each field |
//! | broken domain rule | `FAILED_PRECONDITION`, with `google.rpc.PreconditionFailure` |
//! | missing | `NOT_FOUND` |
//! | concurrency still losing after retries | `ABORTED` |
//! | NATS or database down | `UNAVAILABLE` |
//! | read model not caught up within the deadline | `DEADLINE_EXCEEDED` |
//! | anything else (corrupt data, a missing or sealed stream) | `INTERNAL` with a generic message; the cause is logged, never sent |

use gridwork_eventstore::projection::WaitError;
use gridwork_eventstore::{ExecuteError, StoreError};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path in the request, e.g. `"location.lat"`.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self { field: field.into(), description: description.into() }
    }
}

/// Errors a service returns from an RPC.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed.
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// A domain rule refused the command.
    #[error("{description}")]
    FailedPrecondition {
        /// Rule type, e.g. `"BALANCE"`.
        kind: String,
        /// What it is about, e.g. `"account/a1"`.
        subject: String,
        /// Human-readable reason.
        description: String,
    },
    /// The caller's grants do not reach what the request acts on.
    #[error("{0}")]
    PermissionDenied(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Concurrent writers kept winning.
    #[error("{0}")]
    Aborted(String),
    /// A dependency is down.
    #[error("{0}")]
    Unavailable(String),
    /// The read model did not catch up in time.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A bug or corrupt data; the detail is logged, not sent.
    #[error("internal: {0}")]
    Internal(String),
}

fn describe(v: &[FieldViolation]) -> String {
    v.iter().map(|f| format!("{}: {}", f.field, f.description)).collect::<Vec<_>>().join("; ")
}

impl ServiceError {
    /// A single invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    /// Every (field, problem) a check found.
    pub fn invalid_all(problems: impl IntoIterator<Item = (String, String)>) -> Self {
        Self::InvalidArgument(problems.into_iter().map(|(f, d)| FieldViolation::new(f, d)).collect())
    }
}

impl From<gridwork_auth::Denied> for ServiceError {
    fn from(d: gridwork_auth::Denied) -> Self {
        Self::PermissionDenied(d.0)
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::InvalidArgument(violations) => {
                let message = format!("invalid request: {}", describe(&violations));
                let details = ErrorDetails::with_bad_request(
                    violations
                        .into_iter()
                        .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
                        .collect::<Vec<_>>(),
                );
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            ServiceError::FailedPrecondition { kind, subject, description } => {
                let details = ErrorDetails::with_precondition_failure(vec![tonic_types::PreconditionViolation::new(
                    kind,
                    subject,
                    description.clone(),
                )]);
                Status::with_error_details(Code::FailedPrecondition, description, details)
            }
            ServiceError::PermissionDenied(m) => Status::permission_denied(m),
            ServiceError::NotFound(m) => Status::not_found(m),
            ServiceError::Aborted(m) => Status::aborted(m),
            ServiceError::Unavailable(m) => {
                tracing::warn!(error = %m, "dependency unavailable");
                Status::unavailable("a dependency is unavailable; retry with backoff")
            }
            ServiceError::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            ServiceError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InvalidId { reason, .. } => ServiceError::invalid("id", reason),
            StoreError::InvalidCommandId(reason) => ServiceError::invalid("command_id", reason),
            StoreError::CommandTooOld { .. } => ServiceError::invalid("command_id", e.to_string()),
            StoreError::CommandIdReused { .. } => ServiceError::invalid(
                "command_id",
                format!("{e}: a retry must repeat the request exactly; a new request needs a new command id"),
            ),
            StoreError::Conflict { .. } => ServiceError::Aborted(format!("{e}; retry the command")),
            StoreError::Unavailable(m) => ServiceError::Unavailable(m),
            StoreError::NewerData(_) => ServiceError::Unavailable(e.to_string()),
            // The same command can never fit: the caller must change it.
            StoreError::TooLarge(m) => ServiceError::invalid("command", m),
            StoreError::Corrupt(_) | StoreError::Unsafe(_) | StoreError::Misconfigured(_) => {
                ServiceError::Internal(e.to_string())
            }
        }
    }
}

impl<R> From<ExecuteError<R>> for ServiceError
where
    R: std::error::Error + Into<ServiceError>,
{
    fn from(e: ExecuteError<R>) -> Self {
        match e {
            ExecuteError::Rejected(r) => r.into(),
            ExecuteError::Store(s) => s.into(),
        }
    }
}

/// The personal-data key store: unreachable is UNAVAILABLE (retry); a
/// store configured unsafely, a missing key or an altered value is INTERNAL.
impl From<gridwork_personal::PersonalError> for ServiceError {
    fn from(e: gridwork_personal::PersonalError) -> Self {
        match e {
            gridwork_personal::PersonalError::Unavailable(e) => {
                ServiceError::Unavailable(format!("personal-data key store: {e}"))
            }
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

impl From<WaitError> for ServiceError {
    fn from(e: WaitError) -> Self {
        match e {
            WaitError::Timeout { .. } => ServiceError::DeadlineExceeded(e.to_string()),
            WaitError::BeyondHead { .. } => {
                ServiceError::invalid("min_position", format!("{e}: pass the position a write of yours returned"))
            }
            WaitError::Stopped | WaitError::Unavailable(_) => ServiceError::Unavailable(e.to_string()),
        }
    }
}

impl From<sqlx::Error> for ServiceError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                ServiceError::Unavailable(e.to_string())
            }
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_input_names_every_field_in_bad_request_details() {
        let status: Status = ServiceError::InvalidArgument(vec![
            FieldViolation::new("amount", "must be > 0"),
            FieldViolation::new("account_id", "must not be empty"),
        ])
        .into();
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let bad = details.bad_request().expect("BadRequest detail");
        let fields: Vec<_> = bad.field_violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["amount", "account_id"]);
        assert!(status.message().contains("amount: must be > 0"));
    }

    #[test]
    fn internal_errors_never_leak_their_cause() {
        let status: Status = ServiceError::Internal("password=hunter2 at db".into()).into();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("hunter2"));
    }

    #[test]
    fn a_conflict_after_retries_is_aborted() {
        let status: Status = ServiceError::from(StoreError::Conflict { subject: "s.a.1".into(), attempts: 3 }).into();
        assert_eq!(status.code(), Code::Aborted);
    }
}
