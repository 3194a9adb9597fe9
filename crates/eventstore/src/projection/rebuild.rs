//! Rebuilding a projection from zero while its live tables keep answering.
//!
//! 1. **One rebuild per projection.** The rebuild claims the projection's row in
//!    [`REBUILDS`] (owner id, shadow tag, heartbeat). A second rebuild — in this
//!    process or another replica on the same database — is refused while the
//!    first one is alive. A rebuild whose owner died is taken over, and its
//!    leftover tables dropped: "died" means this runner has seen the claim's
//!    heartbeat unchanged for [`STALE_AFTER`] on its own monotonic clock, with
//!    the database answering every claim meanwhile — not a wall-clock age, which
//!    a database outage (the owner cannot heartbeat either) or clock skew
//!    between replicas would make look stale.
//! 2. **Its own tables.** The shadow set is `<table>__shadow_<tag>` with a fresh
//!    tag and its own checkpoint `<projection>#shadow-<tag>`, so no two rebuilds
//!    ever write or drop each other's tables.
//! 3. **Replay.** The stream is applied from zero into the shadow set, batch by
//!    batch (poison parks under the shadow checkpoint), heartbeating as it goes.
//! 4. **Swap under the live lock.** One transaction locks the live checkpoint
//!    row — every live runner of the projection, in every replica, now waits —
//!    reads the live position, applies the commits the shadow set still lacks up
//!    to it, checks the rebuild still owns its row, replaces the live tables with
//!    the shadow set, and moves parked rows over. The position becomes the larger
//!    of the two (the shadow set may have run ahead of a lagging live runner).
//!    Nothing a live runner applied is lost, and nothing is applied twice.
//! 5. **Faults are ridden out.** NATS or the database failing under the replay
//!    or the swap is retried from the shadow position reached (the swap rolls
//!    back and is tried again), never a reason to drop the shadow set and start
//!    over from zero.
//! 6. **A newer build's commit ends the replay, not the rebuild.** This build
//!    cannot apply it and its live runners stop before it too, so the shadow
//!    set is swapped in at the position before it and the live runner waits
//!    there for an upgrade. If a newer replica has already moved the live
//!    tables past it, the rebuild cannot finish: an operator's rebuild fails
//!    with the reason; a schema rebuild waits, its shadow set kept (given up,
//!    the schema check would start it again from zero, over and over).

use std::sync::Arc;
use std::time::Duration;

use sqlx::{AssertSqlSafe, Executor as _};
use tracing::{info, warn};

use super::runner::{Inner, RunnerError};
use super::store::{
    CHECKPOINTS, PARKED, REBUILDS, ensure_checkpoint, lock_position, now_ms, record_schema, set_position, stored_schema,
};
use super::{Projection, ShadowTag, Tables};

/// A rebuild whose heartbeat has been seen unchanged for this long is presumed
/// dead and may be taken over (default of
/// [`super::RunnerConfig::rebuild_stale_after`]).
pub const STALE_AFTER: Duration = Duration::from_secs(120);

/// Another rebuild's claim as a runner saw it: owner, heartbeat, and since
/// when (this runner's clock) it has been seen unchanged.
pub(crate) struct ClaimWatch {
    owner: String,
    heartbeat: i64,
    since: std::time::Instant,
}

/// How many times the swap is tried before the rebuild gives up (each failed
/// try first catches the shadow set up without the lock).
const SWAP_ATTEMPTS: u32 = 5;

struct Claim {
    owner: String,
    tag: ShadowTag,
    checkpoint: String,
}

impl<P: Projection> Inner<P> {
    /// Rebuild and swap in; returns the position at the swap.
    pub(super) async fn rebuild(self: Arc<Self>) -> Result<u64, RunnerError> {
        if !self.projection.rebuildable() {
            return Err(RunnerError::NotRebuildable(self.name.clone()));
        }
        let claim = self.claim().await?;
        // Cancelled (its runner stopped or was killed): clean up in the background.
        let mut guard = CleanUpOnDrop { inner: Arc::clone(&self), claim: Some(claim) };
        let Some(claim) = guard.claim.as_ref() else { unreachable!("just set") };
        let result = self.rebuild_claimed(claim).await;
        if result.is_err() {
            // Leave nothing behind: the next rebuild starts clean.
            self.abandon(claim.tag, &claim.checkpoint, Some(&claim.owner)).await;
        }
        self.forget_breaker(&claim.checkpoint);
        guard.claim = None;
        result
    }

    async fn rebuild_claimed(&self, claim: &Claim) -> Result<u64, RunnerError> {
        let tables = Tables::Shadow(claim.tag);
        self.store.create_tables(self.projection.tables(), tables).await?;
        ensure_checkpoint(self.store.pool(), &claim.checkpoint, &self.config.stream).await?;
        let mut stream = self.js.get_stream(&self.config.stream).await.map_err(super::runner::nats)?;
        let target = stream.info().await.map_err(super::runner::nats)?.state.last_sequence;
        info!(projection = %self.name, tag = claim.tag.as_str(), target, "rebuilding into shadow tables");
        let owner = Some(claim.owner.as_str());
        let replayed = self.catch_up(tables, &claim.checkpoint, 0, target, owner).await?;
        if let Some(why) = &replayed.newer {
            // The live runners of this build stop at the same commit: swap in
            // what this build can read, and let them wait there as they do.
            warn!(projection = %self.name, position = replayed.position, reason = %why,
                  "the replay met a newer build's commit; swapping in the tables up to it");
        }
        let mut shadow = replayed.position;
        let (mut attempts, mut outages) = (0, 0u32);
        loop {
            // Close most of the distance without holding the live lock.
            let swapped = async {
                let live = self.store.position(&self.name).await?;
                let caught = self.catch_up(tables, &claim.checkpoint, shadow, live, owner).await?;
                shadow = caught.position;
                if let Some(why) = caught.newer {
                    // A newer replica has moved the live tables past a commit
                    // this build cannot read: the swap cannot catch up to them.
                    return self.past_newer_data(why).await.map(|()| None);
                }
                self.swap(claim, shadow).await
            };
            match swapped.await {
                Ok(Some(position)) => {
                    info!(projection = %self.name, position, "rebuilt tables swapped in");
                    return Ok(position);
                }
                Ok(None) => {
                    attempts += 1;
                    if attempts >= SWAP_ATTEMPTS {
                        return Err(RunnerError::Environment(format!(
                            "rebuild could not swap in after {SWAP_ATTEMPTS} attempts"
                        )));
                    }
                    warn!(projection = %self.name, attempts, "swap met a poison commit; parking it outside the lock first");
                }
                // NATS or the database failing under the swap: the swap rolled
                // back, the shadow set stands; try again once they are back.
                // (Also a schema rebuild behind live tables past a newer
                // build's commit: see `past_newer_data`.)
                Err(e) if e.environmental() => {
                    outages += 1;
                    warn!(projection = %self.name, outages, error = %e, "swap interrupted; trying again");
                    let pause = self.config.retry_backoff.saturating_mul(1 << outages.min(10));
                    tokio::time::sleep(pause.min(self.config.max_stall_backoff)).await;
                    if let Err(RunnerError::RebuildLost) = self.heartbeat(&claim.owner).await {
                        return Err(RunnerError::RebuildLost);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The live tables are past a commit from a newer build that this build
    /// cannot read, so the shadow set can never catch up to them. Whose tables
    /// they are decides:
    /// - a newer version's: this rebuild is moot ([`RunnerError::Schema`]);
    /// - this version's (an operator's rebuild on an older replica during a
    ///   rolling deploy): give up and say why ([`RunnerError::NewerData`]) —
    ///   waiting would hold the claim, and every other rebuild, until this
    ///   replica is replaced;
    /// - an older version's (a schema rebuild): wait, shadow set kept, for the
    ///   upgrade — given up, the schema check would start it again from zero,
    ///   over and over. Returned as an outage ([`RunnerError::Environment`]).
    async fn past_newer_data(&self, why: String) -> Result<(), RunnerError> {
        let mut tx = self.store.pool().begin().await?;
        let stored = stored_schema(&mut tx, &self.name).await?;
        tx.rollback().await?;
        match stored {
            Some(stored) if stored.version > self.schema.version => {
                self.schema_writable(&stored)?;
                Err(RunnerError::NewerData(why))
            }
            Some(stored) if stored.version < self.schema.version => {
                warn!(projection = %self.name, reason = %why,
                      "the live tables are past a newer build's commit; the schema rebuild waits for an upgrade");
                Err(RunnerError::Environment(why))
            }
            _ => Err(RunnerError::NewerData(why)),
        }
    }

    /// The swap transaction; `None` if a commit it had to apply needs parking
    /// (done outside the lock, then the swap is tried again).
    async fn swap(&self, claim: &Claim, shadow: u64) -> Result<Option<u64>, RunnerError> {
        let tables = Tables::Shadow(claim.tag);
        let mut tx = self.store.pool().begin().await?;
        let live = lock_position(&mut tx, &self.name).await?;
        let owner: Option<(String,)> =
            sqlx::query_as(AssertSqlSafe(format!("SELECT owner FROM {REBUILDS} WHERE projection = $1")))
                .bind(self.name.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if owner.map(|(o,)| o) != Some(claim.owner.clone()) {
            return Err(RunnerError::RebuildLost);
        }
        // An old replica's rebuild must not swap old tables over a newer
        // version's, nor one build's tables over another's that differ at the
        // same version (recorded after this rebuild began).
        if let Some(stored) = stored_schema(&mut tx, &self.name).await?
            && stored.version >= self.schema.version
        {
            self.schema_writable(&stored)?;
        }
        let shadow = shadow.max(lock_position(&mut tx, &claim.checkpoint).await?);
        let mut letters = Vec::new();
        if shadow < live {
            let missing = self.read_range(shadow, live).await?;
            let blocked = super::parked::blocked_subjects(&mut tx, &claim.checkpoint).await?;
            match self.apply_in(&mut tx, tables, &claim.checkpoint, &blocked, &missing, shadow).await? {
                Some(parked) => letters = parked,
                None => return Ok(None),
            }
        }
        for def in self.projection.tables() {
            for statement in self.store.backend().swap_statements(def.name, &tables.name(def.name)) {
                tx.execute(AssertSqlSafe(statement)).await?;
            }
        }
        // The shadow set may be ahead of the live one (its replay ran to the
        // stream's head while the live runner lagged): it holds everything up to
        // its own position, so that is where the live runners carry on from.
        let position = live.max(shadow);
        set_position(&mut tx, &self.name, &self.config.stream, position).await?;
        record_schema(&mut tx, &self.name, &self.schema, false).await?;
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {PARKED} WHERE checkpoint = $1")))
            .bind(self.name.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query(AssertSqlSafe(format!("UPDATE {PARKED} SET checkpoint = $1 WHERE checkpoint = $2")))
            .bind(self.name.as_str())
            .bind(claim.checkpoint.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {CHECKPOINTS} WHERE projection = $1")))
            .bind(claim.checkpoint.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {REBUILDS} WHERE projection = $1 AND owner = $2")))
            .bind(self.name.as_str())
            .bind(claim.owner.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.log_dead_letters(letters).await;
        Ok(Some(position))
    }

    /// Claim the projection's rebuild row, taking over a dead owner's. The row
    /// is made if absent and then locked (a row lock on PostgreSQL, the write
    /// lock on SQLite) before it is read, so two claims take turns and the
    /// second sees the first's owner.
    async fn claim(&self) -> Result<Claim, RunnerError> {
        let claimed = self.try_claim().await;
        if let Err(e) = &claimed
            && !matches!(e, RunnerError::RebuildRunning)
        {
            // What was seen before a failed claim says nothing about whether
            // the owner could heartbeat meanwhile: watch afresh.
            *self.claim_watch.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        }
        claimed
    }

    /// Whether the claim `(owner, heartbeat)` has been seen unchanged for
    /// `rebuild_stale_after`; starts watching it if it is new.
    fn watched_dead(&self, owner: &str, heartbeat: i64) -> bool {
        let mut watch = self.claim_watch.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match watch.as_ref() {
            Some(w) if w.owner == owner && w.heartbeat == heartbeat => {
                w.since.elapsed() >= self.config.rebuild_stale_after
            }
            _ => {
                *watch = Some(ClaimWatch { owner: owner.to_string(), heartbeat, since: std::time::Instant::now() });
                false
            }
        }
    }

    async fn try_claim(&self) -> Result<Claim, RunnerError> {
        let owner = uuid::Uuid::now_v7().to_string();
        let tag = ShadowTag::fresh();
        let mut tx = self.store.begin_write().await?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {REBUILDS} (projection, owner, tag, heartbeat_ms) VALUES ($1, '', '', 0) \
             ON CONFLICT (projection) DO NOTHING"
        )))
        .bind(self.name.as_str())
        .execute(&mut *tx)
        .await?;
        sqlx::query(AssertSqlSafe(format!("UPDATE {REBUILDS} SET owner = owner WHERE projection = $1")))
            .bind(self.name.as_str())
            .execute(&mut *tx)
            .await?;
        let (previous, old_tag, heartbeat): (String, String, i64) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT owner, tag, heartbeat_ms FROM {REBUILDS} WHERE projection = $1"
        )))
        .bind(self.name.as_str())
        .fetch_one(&mut *tx)
        .await?;
        if !previous.is_empty() && !self.watched_dead(&previous, heartbeat) {
            return Err(RunnerError::RebuildRunning);
        }
        let now = now_ms();
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {REBUILDS} SET owner = $1, tag = $2, heartbeat_ms = $3 WHERE projection = $4"
        )))
        .bind(owner.as_str())
        .bind(tag.as_str())
        .bind(now)
        .bind(self.name.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if !previous.is_empty() {
            warn!(projection = %self.name, dead_owner = %previous, "taking over a rebuild whose owner stopped heartbeating");
            if let Some(old_tag) = ShadowTag::parse(&old_tag) {
                self.abandon(old_tag, &shadow_checkpoint(&self.name, old_tag), None).await;
            }
        }
        Ok(Claim { owner, tag, checkpoint: shadow_checkpoint(&self.name, tag) })
    }

    /// Prove the rebuild owned by `owner` is alive; fails once another took over.
    pub(super) async fn heartbeat(&self, owner: &str) -> Result<(), RunnerError> {
        let done = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {REBUILDS} SET heartbeat_ms = $1 WHERE projection = $2 AND owner = $3"
        )))
        .bind(now_ms())
        .bind(self.name.as_str())
        .bind(owner)
        .execute(self.store.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(RunnerError::RebuildLost);
        }
        Ok(())
    }

    /// Drop a rebuild's shadow tables and bookkeeping (best effort: a failure
    /// leaves tables that no one reads, dropped by the next takeover).
    async fn abandon(&self, tag: ShadowTag, checkpoint: &str, owner: Option<&str>) {
        let result = async {
            self.store.drop_tables(self.projection.tables(), tag).await?;
            let mut tx = self.store.begin_write().await?;
            for table in [CHECKPOINTS, PARKED] {
                let column = if table == CHECKPOINTS { "projection" } else { "checkpoint" };
                sqlx::query(AssertSqlSafe(format!("DELETE FROM {table} WHERE {column} = $1")))
                    .bind(checkpoint)
                    .execute(&mut *tx)
                    .await?;
            }
            if let Some(owner) = owner {
                sqlx::query(AssertSqlSafe(format!("DELETE FROM {REBUILDS} WHERE projection = $1 AND owner = $2")))
                    .bind(self.name.as_str())
                    .bind(owner)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        }
        .await;
        if let Err(e) = result {
            warn!(projection = %self.name, tag = tag.as_str(), error = %e, "could not clean up a rebuild's shadow tables");
        }
    }
}

/// Abandons a claimed rebuild whose future was dropped before it finished.
struct CleanUpOnDrop<P: Projection> {
    inner: Arc<Inner<P>>,
    claim: Option<Claim>,
}

impl<P: Projection> Drop for CleanUpOnDrop<P> {
    fn drop(&mut self) {
        let Some(claim) = self.claim.take() else { return };
        let inner = Arc::clone(&self.inner);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                inner.abandon(claim.tag, &claim.checkpoint, Some(&claim.owner)).await;
                inner.forget_breaker(&claim.checkpoint);
            });
        }
    }
}

fn shadow_checkpoint(projection: &str, tag: ShadowTag) -> String {
    format!("{projection}#shadow-{}", tag.as_str())
}
