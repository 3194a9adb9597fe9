//! Parked commits: poison, and whatever of the same aggregate came after it.
//!
//! A commit that is poison (see [`super::ApplyError::is_poison`]) is recorded in
//! the [`PARKED`] table, in the same transaction that moves the checkpoint past
//! it, and — once that transaction has committed, best effort — logged on
//! `deadletter.<context>.<projection>` in its service's dead-letter stream
//! for alerting. The table is the truth; NATS being unreachable delays the log entry, never the projection.
//! From then on every later commit of the same subject is parked behind it
//! (`blocked_by`): applying them would build on a state the read model never
//! reached. Other aggregates carry on.
//!
//! Replay reads the parked table in stream order and fetches each commit again
//! from its source stream (which is never deleted from). Each one is applied
//! under the checkpoint lock, and its row deleted in the same transaction: so a
//! replay interleaves safely with live batches and with another replay, and
//! replaying twice applies once. A subject whose earliest parked commit still
//! fails keeps the rest parked behind it. A rebuild parks into its own shadow
//! checkpoint and its parked rows replace the live ones at the swap, so a
//! rebuild after a fix never undoes a replay.

use std::collections::{HashMap, HashSet};

use async_nats::HeaderMap;
use sqlx::{AnyConnection, AssertSqlSafe};
use tracing::{info, warn};

use super::runner::{Delivered, Inner, RunnerError, nats};
use super::store::{PARKED, ReadStore, lock_position, now_ms};
use super::{Projection, Tables};
use crate::envelope::headers;

/// Headers of a dead-letter log entry.
pub mod dlq_headers {
    /// Stream the commit came from.
    pub const STREAM: &str = "Gridwork-Dlq-Stream";
    /// Its stream sequence.
    pub const SEQUENCE: &str = "Gridwork-Dlq-Sequence";
    /// Its subject.
    pub const SUBJECT: &str = "Gridwork-Dlq-Subject";
    /// The last error.
    pub const ERROR: &str = "Gridwork-Dlq-Error";
    /// How many attempts were made (0 when parked behind another commit).
    pub const ATTEMPTS: &str = "Gridwork-Dlq-Attempts";
    /// The parked commit of the same subject this one waits behind, if any.
    pub const BLOCKED_BY: &str = "Gridwork-Dlq-Blocked-By";
}

/// One parked commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedCommit {
    /// Its sequence in the source stream.
    pub sequence: u64,
    /// Its subject (the aggregate).
    pub subject: String,
    /// Why it was parked.
    pub error: String,
    /// Attempts made before parking (0 when parked behind another commit).
    pub attempts: u32,
    /// The earlier parked commit of the same subject it waits behind, if any.
    pub blocked_by: Option<u64>,
}

/// What replaying parked commits did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Applied now, and removed from the parked table.
    pub applied: u64,
    /// Still failing, or waiting behind one that still fails; left parked.
    pub still_failing: u64,
}

/// Subjects with a parked commit under `checkpoint`, with their earliest one.
pub(super) async fn blocked_subjects(
    conn: &mut AnyConnection,
    checkpoint: &str,
) -> Result<HashMap<String, u64>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT subject, MIN(sequence) FROM {PARKED} WHERE checkpoint = $1 GROUP BY subject"
    )))
    .bind(checkpoint)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(s, q)| (s, q as u64)).collect())
}

/// Whether `sequence` is parked under `checkpoint`.
pub(super) async fn is_parked(conn: &mut AnyConnection, checkpoint: &str, sequence: u64) -> Result<bool, sqlx::Error> {
    let row: Option<(i64,)> =
        sqlx::query_as(AssertSqlSafe(format!("SELECT sequence FROM {PARKED} WHERE checkpoint = $1 AND sequence = $2")))
            .bind(checkpoint)
            .bind(sequence as i64)
            .fetch_optional(conn)
            .await?;
    Ok(row.is_some())
}

/// The earliest parked commit of `subject` under `checkpoint`.
pub(super) async fn first_parked(
    conn: &mut AnyConnection,
    checkpoint: &str,
    subject: &str,
) -> Result<Option<u64>, sqlx::Error> {
    let row: Option<(Option<i64>,)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT MIN(sequence) FROM {PARKED} WHERE checkpoint = $1 AND subject = $2"
    )))
    .bind(checkpoint)
    .bind(subject)
    .fetch_optional(conn)
    .await?;
    Ok(row.and_then(|(s,)| s).map(|s| s as u64))
}

/// The commits parked under `checkpoint`, in stream order.
pub(super) async fn list(store: &ReadStore, checkpoint: &str) -> Result<Vec<ParkedCommit>, sqlx::Error> {
    let rows: Vec<(i64, String, String, i64, i64)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT sequence, subject, error, attempts, blocked_by FROM {PARKED} WHERE checkpoint = $1 ORDER BY sequence"
    )))
    .bind(checkpoint)
    .fetch_all(store.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|(sequence, subject, error, attempts, blocked_by)| ParkedCommit {
            sequence: sequence as u64,
            subject,
            error,
            attempts: attempts as u32,
            blocked_by: (blocked_by > 0).then_some(blocked_by as u64),
        })
        .collect())
}

/// A dead-letter log entry, published once its parking has committed.
pub(super) struct DeadLetter {
    subject: String,
    headers: HeaderMap,
    payload: bytes::Bytes,
}

impl<P: Projection> Inner<P> {
    /// Record `c` as parked under `checkpoint` inside `tx`; returns the
    /// dead-letter log entry to publish after `tx` commits.
    pub(super) async fn park(
        &self,
        tx: &mut AnyConnection,
        checkpoint: &str,
        c: &Delivered,
        error: &str,
        attempts: u32,
        blocked_by: u64,
    ) -> Result<DeadLetter, RunnerError> {
        warn!(projection = %self.name, checkpoint, sequence = c.sequence, attempts, blocked_by, error, "parking commit");
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {PARKED} (checkpoint, sequence, subject, error, attempts, blocked_by, parked_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (checkpoint, sequence) DO NOTHING"
        )))
        .bind(checkpoint)
        .bind(c.sequence as i64)
        .bind(c.subject.as_str())
        .bind(error)
        .bind(i64::from(attempts))
        .bind(blocked_by as i64)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        let mut h = HeaderMap::new();
        for (name, values) in c.headers().iter() {
            let name: &str = name.as_ref();
            if name.starts_with("Nats-") {
                continue;
            }
            for value in values {
                h.append(name, value.as_str());
            }
        }
        h.insert(dlq_headers::STREAM, self.config.stream.as_str());
        h.insert(dlq_headers::SEQUENCE, c.sequence.to_string().as_str());
        h.insert(dlq_headers::SUBJECT, c.subject.as_str());
        h.insert(dlq_headers::ERROR, error.replace(['\r', '\n'], " ").as_str());
        h.insert(dlq_headers::ATTEMPTS, attempts.to_string().as_str());
        if blocked_by > 0 {
            h.insert(dlq_headers::BLOCKED_BY, blocked_by.to_string().as_str());
        }
        // Deduplicated by checkpoint and sequence: a parking that rolled back
        // and was done again logs once.
        h.insert(headers::MSG_ID, format!("{checkpoint}:{}:{}", self.config.stream, c.sequence).as_str());
        let owner = self.config.dead_letter_owner.clone().unwrap_or_else(|| dead_letter_owner(checkpoint));
        let subject = dead_letter_subject(&owner, checkpoint);
        Ok(DeadLetter { subject, headers: h, payload: c.payload.clone() })
    }

    /// Publish parkings that have committed to the dead-letter log. Best
    /// effort: a failure is counted and logged, and the projection carries on
    /// (the parked table already holds them).
    pub(super) async fn log_dead_letters(&self, letters: Vec<DeadLetter>) {
        for letter in letters {
            metrics::counter!("projection_parked_total", "projection" => self.name.clone()).increment(1);
            let published = async {
                self.js
                    .publish_with_headers(letter.subject, letter.headers, letter.payload)
                    .await
                    .map_err(nats)?
                    .await
                    .map_err(nats)
            };
            if let Err(e) = tokio::time::timeout(std::time::Duration::from_secs(5), published)
                .await
                .unwrap_or_else(|_| Err(nats("timed out")))
            {
                metrics::counter!("projection_dead_letter_failures_total", "projection" => self.name.clone())
                    .increment(1);
                warn!(projection = %self.name, error = %e, "could not log a parked commit on the dead-letter stream; it is in the parked table");
            }
        }
    }

    /// See [`super::RunnerHandle::replay_parked`]. Passes over the parked table
    /// until a pass applies nothing (new commits may park behind ones replayed).
    pub(super) async fn replay_parked(&self) -> Result<ReplayReport, RunnerError> {
        let source = self.js.get_stream(&self.config.stream).await.map_err(nats)?;
        let mut report = ReplayReport::default();
        loop {
            let rows = list(&self.store, &self.name).await?;
            let mut failing: HashSet<String> = HashSet::new();
            let mut applied_now = 0;
            for row in &rows {
                if failing.contains(&row.subject) {
                    continue;
                }
                // The leader's copy: the commit is old, but a follower may lag.
                let m = source.get_raw_message(row.sequence).await.map_err(nats)?;
                let stored_at = crate::envelope::unix_ms(m.time);
                let mut c = Delivered::new(
                    m.sequence,
                    m.subject.as_str(),
                    m.headers,
                    m.payload,
                    self.projection.unknown_events(),
                );
                if let Ok(commit) = &mut c.parsed {
                    commit.stored_at_unix_ms = stored_at;
                }
                let mut tx = self.store.pool().begin().await?;
                lock_position(&mut tx, &self.name).await?;
                self.check_live_schema(&mut tx, &self.name).await?;
                // Under the lock: still parked, and first of its subject?
                if first_parked(&mut tx, &self.name, &row.subject).await? != Some(row.sequence) {
                    tx.commit().await?;
                    continue;
                }
                let outcome = match &c.parsed {
                    Err(e) => Err(e.to_string()),
                    Ok(commit) => match self.apply_one(&mut tx, Tables::Live, commit).await {
                        Ok(()) => Ok(()),
                        Err(e) if !e.is_poison() => return Err(RunnerError::not_poison(&e)),
                        Err(e) => Err(e.to_string()),
                    },
                };
                match outcome {
                    Ok(()) => {
                        sqlx::query(AssertSqlSafe(format!(
                            "DELETE FROM {PARKED} WHERE checkpoint = $1 AND sequence = $2"
                        )))
                        .bind(self.name.as_str())
                        .bind(row.sequence as i64)
                        .execute(&mut *tx)
                        .await?;
                        tx.commit().await?;
                        applied_now += 1;
                    }
                    Err(error) => {
                        drop(tx);
                        warn!(projection = %self.name, sequence = row.sequence, error, "parked commit still fails");
                        failing.insert(row.subject.clone());
                    }
                }
            }
            report.applied += applied_now;
            if applied_now == 0 {
                report.still_failing = list(&self.store, &self.name).await?.len() as u64;
                break;
            }
        }
        info!(projection = %self.name, ?report, "replayed parked commits");
        Ok(report)
    }
}

/// The dead-letter subject of a projection: `deadletter.<owner>.<checkpoint>`, the
/// owner being its service's context (`RunnerConfig::dead_letter_owner`, by
/// default the name's first word: `dispatch_grid` → `deadletter.dispatch.dispatch_grid`),
/// so each service's NATS user may log only its own dead letters
/// (deploy/nats/permissions.conf).
pub(crate) fn dead_letter_subject(owner: &str, checkpoint: &str) -> String {
    let token = checkpoint.replace(['.', '*', '>', ' ', '#'], "_");
    format!("deadletter.{owner}.{token}")
}

/// The owner of a projection's dead letters: the first word of its name.
pub(crate) fn dead_letter_owner(checkpoint: &str) -> String {
    let token = checkpoint.replace(['.', '*', '>', ' ', '#'], "_");
    token.split('_').next().filter(|o| !o.is_empty()).unwrap_or("unnamed").to_string()
}

#[cfg(test)]
mod subject_tests {
    #[test]
    fn a_dead_letter_goes_under_its_owner_s_context() {
        let subject = |name: &str| super::dead_letter_subject(&super::dead_letter_owner(name), name);
        assert_eq!(subject("dispatch_grid"), "deadletter.dispatch.dispatch_grid");
        assert_eq!(subject("grid_registry"), "deadletter.grid.grid_registry");
        assert_eq!(subject("welcome"), "deadletter.welcome.welcome");
        assert_eq!(subject("a.b*c"), "deadletter.a.a_b_c");
        assert_eq!(super::dead_letter_subject("grid", "command_index_grid"), "deadletter.grid.command_index_grid");
    }
}
