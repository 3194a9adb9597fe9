//! Pure domain code: no tokio, sqlx, tonic or NATS here.
pub mod calendar;
pub mod case;
pub mod deadline;
pub mod routing;
pub mod rulebook;
