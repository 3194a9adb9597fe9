//! The ledger aggregate: an account whose balance never goes negative.

use gridwork_eventstore::{Aggregate, DecodeError};
use gridwork_proto::gridwork::sample::v1 as pb;
use prost::Message as _;

pub use crate::events::LedgerEvent;

/// An account.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ledger {
    /// Whether the account was opened.
    pub opened: bool,
    /// Its owner.
    pub owner: String,
    /// Balance in cents.
    pub balance: i64,
}

/// What callers ask of an account. Inputs are already parsed (see `grpc.rs`).
#[derive(Debug, Clone, PartialEq)]
pub enum LedgerCommand {
    /// Open the account.
    Open {
        /// Owner's display name.
        owner: String,
    },
    /// Add `amount` (> 0).
    Deposit {
        /// Cents.
        amount: i64,
    },
    /// Take `amount` (> 0).
    Withdraw {
        /// Cents.
        amount: i64,
    },
    /// Apply signed amounts in order, all or none.
    Post {
        /// Non-zero cents.
        amounts: Vec<i64>,
    },
}

/// Rules a command can break.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum LedgerRejection {
    /// Opening an account twice.
    #[error("account is already open")]
    AccountAlreadyOpen,
    /// Moving money on an account never opened.
    #[error("account is not open")]
    AccountNotOpen,
    /// A withdrawal larger than the balance.
    #[error("insufficient funds: balance {balance}, requested {requested}")]
    InsufficientFunds {
        /// Balance at the time.
        balance: i64,
        /// Amount asked for.
        requested: i64,
    },
    /// The balance would overflow.
    #[error("balance would overflow")]
    BalanceOverflow,
}

impl Aggregate for Ledger {
    const CONTEXT: &'static str = "sample";
    const TYPE: &'static str = "ledger";
    const STATE_VERSION: u32 = 1;
    type Command = LedgerCommand;
    type Event = LedgerEvent;
    type Rejection = LedgerRejection;

    fn decide(&self, command: &LedgerCommand) -> Result<Vec<LedgerEvent>, LedgerRejection> {
        match command {
            LedgerCommand::Open { owner } => {
                if self.opened {
                    return Err(LedgerRejection::AccountAlreadyOpen);
                }
                Ok(vec![LedgerEvent::Opened { owner: owner.clone() }])
            }
            LedgerCommand::Deposit { amount } => self.movements(&[*amount]),
            LedgerCommand::Withdraw { amount } => self.movements(&[-*amount]),
            LedgerCommand::Post { amounts } => self.movements(amounts),
        }
    }

    fn evolve(mut self, event: &LedgerEvent) -> Self {
        match event {
            LedgerEvent::Opened { owner } => {
                self.opened = true;
                self.owner.clone_from(owner);
            }
            LedgerEvent::Deposited { balance_after, .. } | LedgerEvent::Withdrawn { balance_after, .. } => {
                self.balance = *balance_after;
            }
        }
        self
    }

    fn encode_state(&self) -> Vec<u8> {
        pb::LedgerState { opened: self.opened, owner: self.owner.clone(), balance: self.balance }.encode_to_vec()
    }

    fn decode_state(bytes: &[u8]) -> Result<Self, DecodeError> {
        let s = pb::LedgerState::decode(bytes).map_err(|e| DecodeError::new("ledger state", e))?;
        Ok(Self { opened: s.opened, owner: s.owner, balance: s.balance })
    }
}

impl Ledger {
    fn movements(&self, amounts: &[i64]) -> Result<Vec<LedgerEvent>, LedgerRejection> {
        if !self.opened {
            return Err(LedgerRejection::AccountNotOpen);
        }
        let mut balance = self.balance;
        let mut events = Vec::with_capacity(amounts.len());
        for &amount in amounts {
            if amount >= 0 {
                balance = balance.checked_add(amount).ok_or(LedgerRejection::BalanceOverflow)?;
                events.push(LedgerEvent::Deposited { amount, balance_after: balance });
            } else {
                let requested = amount.checked_neg().ok_or(LedgerRejection::BalanceOverflow)?;
                if requested > balance {
                    return Err(LedgerRejection::InsufficientFunds { balance, requested });
                }
                balance -= requested;
                events.push(LedgerEvent::Withdrawn { amount: requested, balance_after: balance });
            }
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use gridwork_eventstore::testing::given;

    use super::*;

    fn opened() -> LedgerEvent {
        LedgerEvent::Opened { owner: "Wang".into() }
    }

    #[test]
    fn opening_an_account_records_its_owner() {
        given::<Ledger>([]).when(LedgerCommand::Open { owner: "Wang".into() }).then_expect_events([opened()]);
    }

    #[test]
    fn an_account_cannot_be_opened_twice() {
        given::<Ledger>([opened()])
            .when(LedgerCommand::Open { owner: "Li".into() })
            .then_expect_error(LedgerRejection::AccountAlreadyOpen);
    }

    #[test]
    fn money_cannot_move_on_an_account_never_opened() {
        given::<Ledger>([])
            .when(LedgerCommand::Deposit { amount: 5 })
            .then_expect_error(LedgerRejection::AccountNotOpen);
    }

    #[test]
    fn a_deposit_records_the_balance_after_it() {
        given::<Ledger>([opened(), LedgerEvent::Deposited { amount: 10, balance_after: 10 }])
            .when(LedgerCommand::Deposit { amount: 5 })
            .then_expect_events([LedgerEvent::Deposited { amount: 5, balance_after: 15 }]);
    }

    #[test]
    fn a_withdrawal_larger_than_the_balance_is_refused() {
        given::<Ledger>([opened(), LedgerEvent::Deposited { amount: 10, balance_after: 10 }])
            .when(LedgerCommand::Withdraw { amount: 11 })
            .then_expect_error(LedgerRejection::InsufficientFunds { balance: 10, requested: 11 });
    }

    #[test]
    fn posting_entries_is_all_or_nothing() {
        let g = || given::<Ledger>([opened()]);
        g().when(LedgerCommand::Post { amounts: vec![10, -4, 3] }).then_expect_events([
            LedgerEvent::Deposited { amount: 10, balance_after: 10 },
            LedgerEvent::Withdrawn { amount: 4, balance_after: 6 },
            LedgerEvent::Deposited { amount: 3, balance_after: 9 },
        ]);
        g().when(LedgerCommand::Post { amounts: vec![10, -11] })
            .then_expect_error(LedgerRejection::InsufficientFunds { balance: 10, requested: 11 });
    }

    #[test]
    fn an_overflowing_balance_is_refused() {
        given::<Ledger>([opened(), LedgerEvent::Deposited { amount: i64::MAX, balance_after: i64::MAX }])
            .when(LedgerCommand::Deposit { amount: 1 })
            .then_expect_error(LedgerRejection::BalanceOverflow);
    }

    #[test]
    fn state_survives_a_snapshot_round_trip() {
        let state = given::<Ledger>([opened(), LedgerEvent::Deposited { amount: 7, balance_after: 7 }]).state().clone();
        assert_eq!(Ledger::decode_state(&state.encode_state()).expect("decodes"), state);
    }
}
