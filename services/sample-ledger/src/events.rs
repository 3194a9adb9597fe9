//! Event names, versions and their protobuf form.

use gridwork_eventstore::{DecodeError, DomainEvent};
use gridwork_proto::gridwork::sample::v1 as pb;
use prost::Message as _;

/// Something that happened to an account.
#[derive(Debug, Clone, PartialEq)]
pub enum LedgerEvent {
    /// The account was opened.
    Opened {
        /// Owner's display name.
        owner: String,
    },
    /// Money came in.
    Deposited {
        /// Cents.
        amount: i64,
        /// Balance after it.
        balance_after: i64,
    },
    /// Money went out.
    Withdrawn {
        /// Cents.
        amount: i64,
        /// Balance after it.
        balance_after: i64,
    },
}

/// `sample.ledger.opened`.
pub const OPENED: &str = "sample.ledger.opened";
/// `sample.ledger.deposited`.
pub const DEPOSITED: &str = "sample.ledger.deposited";
/// `sample.ledger.withdrawn`.
pub const WITHDRAWN: &str = "sample.ledger.withdrawn";

impl DomainEvent for LedgerEvent {
    fn event_type(&self) -> &'static str {
        match self {
            LedgerEvent::Opened { .. } => OPENED,
            LedgerEvent::Deposited { .. } => DEPOSITED,
            LedgerEvent::Withdrawn { .. } => WITHDRAWN,
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            LedgerEvent::Opened { owner } => pb::AccountOpened { owner: owner.clone() }.encode_to_vec(),
            LedgerEvent::Deposited { amount, balance_after } => {
                pb::AmountDeposited { amount: *amount, balance_after: *balance_after }.encode_to_vec()
            }
            LedgerEvent::Withdrawn { amount, balance_after } => {
                pb::AmountWithdrawn { amount: *amount, balance_after: *balance_after }.encode_to_vec()
            }
        }
    }

    fn decode(event_type: &str, schema_version: u32, payload: &[u8]) -> Result<Self, DecodeError> {
        if schema_version != 1 {
            return Err(DecodeError::unknown(
                event_type,
                format!("schema version {schema_version} is not one this build reads"),
            ));
        }
        let err = |e| DecodeError::new(event_type, e);
        match event_type {
            OPENED => pb::AccountOpened::decode(payload).map(|e| LedgerEvent::Opened { owner: e.owner }).map_err(err),
            DEPOSITED => pb::AmountDeposited::decode(payload)
                .map(|e| LedgerEvent::Deposited { amount: e.amount, balance_after: e.balance_after })
                .map_err(err),
            WITHDRAWN => pb::AmountWithdrawn::decode(payload)
                .map(|e| LedgerEvent::Withdrawn { amount: e.amount, balance_after: e.balance_after })
                .map_err(err),
            other => Err(DecodeError::unknown(other, "an event type this build does not know")),
        }
    }
}
