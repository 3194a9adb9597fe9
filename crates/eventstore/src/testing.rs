//! Given / when / then for aggregates, in the spirit of cqrs-es:
//!
//! ```ignore
//! given::<Ledger>([opened("ann")])
//!     .when(Deposit { amount: 5 })
//!     .then_expect_events([deposited(5, 5)]);
//! ```
//!
//! No NATS, no clock: the aggregate is pure, so its rules are tested as functions.

use std::fmt::Debug;

use crate::aggregate::Aggregate;

/// State built from past events.
pub struct Given<A: Aggregate> {
    state: A,
}

/// The outcome of one command on that state.
pub struct Then<A: Aggregate> {
    result: Result<Vec<A::Event>, A::Rejection>,
}

/// Start a scenario from these past events.
pub fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let state = events.into_iter().fold(A::default(), |s, e| s.evolve(&e));
    Given { state }
}

/// Start a scenario from a state already folded (a step in a longer story).
pub fn given_state<A: Aggregate>(state: A) -> Given<A> {
    Given { state }
}

impl<A: Aggregate> Given<A> {
    /// Decide `command` on the given state.
    pub fn when(self, command: A::Command) -> Then<A> {
        Then { result: self.state.decide(&command) }
    }

    /// The folded state, for assertions on `evolve`.
    pub fn state(&self) -> &A {
        &self.state
    }
}

impl<A: Aggregate> Then<A>
where
    A::Event: PartialEq,
{
    /// Assert the command produced exactly these events.
    #[track_caller]
    pub fn then_expect_events(self, expected: impl IntoIterator<Item = A::Event>) {
        let expected: Vec<_> = expected.into_iter().collect();
        match self.result {
            Ok(events) => assert_eq!(events, expected, "unexpected events"),
            Err(rejection) => panic!("expected events {expected:?}, got rejection: {rejection:?}"),
        }
    }

    /// Assert the command produced events, and check them with `check` (for
    /// events with computed fields, such as a distance).
    #[track_caller]
    pub fn then_with(self, check: impl FnOnce(&[A::Event])) {
        match self.result {
            Ok(events) => check(&events),
            Err(rejection) => panic!("expected events, got rejection: {rejection:?}"),
        }
    }

    /// Assert the command was refused with this rejection.
    #[track_caller]
    pub fn then_expect_error(self, expected: A::Rejection)
    where
        A::Rejection: PartialEq + Debug,
    {
        match self.result {
            Ok(events) => panic!("expected rejection {expected:?}, got events {events:?}"),
            Err(rejection) => assert_eq!(rejection, expected, "unexpected rejection"),
        }
    }
}
