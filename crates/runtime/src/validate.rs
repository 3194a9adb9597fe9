//! Request validation shared by every service's `grpc.rs`: collect every
//! invalid field, then answer once with `INVALID_ARGUMENT` naming them all.

use gridwork_eventstore::CommandKey;
use gridwork_eventstore::aggregate::validate_id;
use gridwork_eventstore::envelope::request_digest;
use tonic::Status;

use crate::status::{FieldViolation, ServiceError};

/// The field violations found in one request.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// Record that `field` is invalid.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// A client command id (must be a UUID) and the digest of the request it
    /// came with: a retry must send the same request under the same id.
    pub fn command_id(&mut self, v: &str, request: &impl prost::Message) -> CommandKey {
        if uuid::Uuid::parse_str(v).is_err() {
            self.add("command_id", "must be a UUID");
        }
        CommandKey { id: v.to_string(), request_digest: request_digest(&request.encode_to_vec()) }
    }

    /// An aggregate or reference id: 1-128 of `[A-Za-z0-9_-]`.
    pub fn id(&mut self, field: &str, v: &str) -> String {
        if let Err(reason) = validate_id(v) {
            self.add(field, reason);
        }
        v.to_string()
    }

    /// Text of `min..=max` characters after trimming; returns it trimmed.
    pub fn text(&mut self, field: &str, v: &str, min: usize, max: usize) -> String {
        let t = v.trim();
        let n = t.chars().count();
        if n < min || n > max {
            self.add(field, format!("must be {min}-{max} characters"));
        }
        t.to_string()
    }

    /// A number greater than zero.
    pub fn positive(&mut self, field: &str, v: i64) -> i64 {
        if v <= 0 {
            self.add(field, "must be greater than 0");
        }
        v
    }

    /// A page size: 0 means `default`, more than `max` is refused.
    pub fn limit(&mut self, v: u32, default: u32, max: u32) -> u32 {
        if v > max {
            self.add("limit", format!("must be at most {max}"));
        }
        if v == 0 { default } else { v }
    }

    /// `INVALID_ARGUMENT` naming every violation, if there are any; else the
    /// parsed `value`. A parse that yielded nothing without recording why is
    /// still answered as an invalid `field`, never as an internal error.
    pub fn finish_with<T>(mut self, value: Option<T>, field: &str) -> Result<T, Status> {
        match value {
            Some(value) if self.0.is_empty() => Ok(value),
            Some(_) => Err(ServiceError::InvalidArgument(self.0).into()),
            None => {
                if self.0.is_empty() {
                    self.add(field, "is invalid");
                }
                Err(ServiceError::InvalidArgument(self.0).into())
            }
        }
    }

    /// `INVALID_ARGUMENT` naming every violation, if there are any.
    pub fn finish(self) -> Result<(), Status> {
        if self.0.is_empty() { Ok(()) } else { Err(ServiceError::InvalidArgument(self.0).into()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_invalid_field_is_named_in_one_answer() {
        let mut v = Violations::default();
        v.command_id("nope", &());
        v.id("unit_id", "a.b");
        v.text("name", "  ", 1, 10);
        v.positive("amount", 0);
        v.limit(501, 50, 500);
        let status = v.finish().expect_err("invalid");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        for field in ["command_id", "unit_id", "name", "amount", "limit"] {
            assert!(status.message().contains(field), "{field} missing from {}", status.message());
        }
        assert!(Violations::default().finish().is_ok());
    }
}
