//! Pure domain code: no tokio, sqlx, tonic or NATS here.
pub mod catalogue;
pub mod incident;
pub mod zone;
