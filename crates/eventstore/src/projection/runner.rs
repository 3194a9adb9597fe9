//! The projection runner: a stream in, rows and position out, in one transaction.
//!
//! Each batch (up to `batch_size` commits, or whatever arrived within
//! `batch_wait`) is applied in one transaction that first locks the
//! projection's checkpoint row and finally stores the new position. Several
//! runners of one projection on one database (replicas) take turns on that lock
//! and each applies only what lies past the position it finds.
//!
//! **Contiguity.** The source stream is unfiltered and nothing is ever deleted
//! from it, so the commits after position `p` are exactly `p+1, p+2, …`. A
//! delivered sequence that is not the next one (async-nats recreates an ordered
//! consumer from the stream's start after a server restart; another runner moved
//! the position on) makes the runner resubscribe from the stored position: the
//! position never goes backwards and no commit is skipped.
//!
//! **Failures.** If a batch fails on a commit that is poison
//! ([`ApplyError::is_poison`]), its commits are applied one at a time and the
//! poison one is parked after `max_attempts` (see [`super::parked`]). Any other
//! failure stalls the runner: it retries with backoff (up to
//! `max_stall_backoff`), without limit, reporting the projection in
//! [`ReadStore::stalled`] (the service's readiness goes NOT_SERVING) and in the
//! `projection_stalled` gauge, until the batch applies.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig, stream};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt as _;
use tracing::{Instrument as _, error, info, info_span, warn};

use super::parked::{self, ReplayReport};
use super::store::{ReadStore, ensure_checkpoint, lock_position, set_position};
use super::{ApplyError, Projection, Tables};
use crate::aggregate::DecodeError;
use crate::envelope::RecordedCommit;

/// Tuning for a runner.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The stream to consume, e.g. `"GRID"`.
    pub stream: String,
    /// Most commits applied per transaction.
    pub batch_size: usize,
    /// How long to wait for a batch to fill once its first commit arrived.
    pub batch_wait: Duration,
    /// Attempts at one poison commit before it is parked.
    pub max_attempts: u32,
    /// Pause between attempts at a poison commit, multiplied by the attempt
    /// number; also the first pause of a stall, doubled per failure.
    pub retry_backoff: Duration,
    /// Longest pause between two attempts while stalled.
    pub max_stall_backoff: Duration,
    /// More than this many commits parked as poison within
    /// [`RunnerConfig::poison_burst_window`] is an outage, not poison: the runner
    /// stops parking and stalls.
    pub poison_burst_limit: usize,
    /// See [`RunnerConfig::poison_burst_limit`].
    pub poison_burst_window: Duration,
    /// The dead-letter stream (subjects `dlq.>`): a log of every parking, for
    /// alerting; the parked table is what replay reads.
    pub dead_letter_stream: String,
}

impl RunnerConfig {
    /// Defaults for consuming `stream`.
    pub fn new(stream: impl Into<String>) -> Self {
        Self {
            stream: stream.into(),
            batch_size: 500,
            batch_wait: Duration::from_millis(10),
            max_attempts: 5,
            retry_backoff: Duration::from_millis(50),
            max_stall_backoff: Duration::from_secs(5),
            poison_burst_limit: 5,
            poison_burst_window: Duration::from_secs(60),
            dead_letter_stream: "DLQ".into(),
        }
    }
}

/// Runner failures.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// NATS failed.
    #[error("nats: {0}")]
    Nats(String),
    /// The read store failed outside applying a commit.
    #[error("read store: {0}")]
    Db(#[from] sqlx::Error),
    /// Applying failed for a reason that is not about the commit: the runner
    /// stalls and retries.
    #[error("read store cannot apply commits: {0}")]
    Environment(String),
    /// Too many different commits failed as poison in a short time.
    #[error("{count} commits failed as poison within {window:?}: treating it as an outage, not parking more")]
    PoisonBurst {
        /// Commits parked within the window.
        count: usize,
        /// The window.
        window: Duration,
    },
    /// A rebuild of this projection is already running (here or in another
    /// replica sharing the database).
    #[error("a rebuild of this projection is already running")]
    RebuildRunning,
    /// Another rebuild took this one's place (it was presumed dead).
    #[error("the rebuild lost its ownership to another one")]
    RebuildLost,
    /// The runner has stopped.
    #[error("projection runner stopped")]
    Stopped,
}

impl RunnerError {
    /// Whether the failure stalls the projection (as opposed to a NATS hiccup).
    fn stalls(&self) -> bool {
        matches!(self, RunnerError::Db(_) | RunnerError::Environment(_) | RunnerError::PoisonBurst { .. })
    }
}

pub(super) fn nats(e: impl std::fmt::Display) -> RunnerError {
    RunnerError::Nats(e.to_string())
}

/// Waiting for a position failed.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The projection did not reach the position in time.
    #[error("read model reached position {reached}, not {wanted}, in time")]
    Timeout {
        /// Position asked for.
        wanted: u64,
        /// Position reached.
        reached: u64,
    },
    /// The runner has stopped.
    #[error("projection runner stopped")]
    Stopped,
}

/// A commit as delivered, parsed or not.
pub(super) struct Delivered {
    pub(super) sequence: u64,
    pub(super) subject: String,
    pub(super) headers: HeaderMap,
    pub(super) payload: Bytes,
    pub(super) parsed: Result<RecordedCommit, DecodeError>,
}

impl Delivered {
    fn from_message(m: &jetstream::Message) -> Result<(Self, u64), RunnerError> {
        let info = m.info().map_err(nats)?;
        let pending = info.pending;
        let headers = m.headers.clone().unwrap_or_default();
        Ok((Self::new(info.stream_sequence, m.subject.as_str(), headers, m.payload.clone()), pending))
    }

    pub(super) fn new(sequence: u64, subject: &str, headers: HeaderMap, payload: Bytes) -> Self {
        let parsed = RecordedCommit::from_parts(sequence, subject, headers.clone(), &payload);
        Self { sequence, subject: subject.to_string(), headers, payload, parsed }
    }
}

enum Control {
    Rebuild(oneshot::Sender<Result<u64, RunnerError>>),
    ReplayParked(oneshot::Sender<Result<ReplayReport, RunnerError>>),
    Parked(oneshot::Sender<Result<Vec<parked::ParkedCommit>, RunnerError>>),
}

enum Flow {
    Stop,
    Resubscribe,
}

/// Remembers recent parkings to tell poison from an outage.
#[derive(Default)]
struct Breaker {
    parked_at: VecDeque<Instant>,
    tripped: bool,
}

pub(super) struct Inner<P> {
    pub(super) js: jetstream::Context,
    pub(super) store: ReadStore,
    pub(super) projection: P,
    pub(super) config: RunnerConfig,
    pub(super) name: String,
    breaker: Mutex<Breaker>,
    stalled: AtomicBool,
    failures: AtomicU32,
}

/// Starts projection runners.
pub struct ProjectionRunner;

impl ProjectionRunner {
    /// Create the projection's tables and the dead-letter stream if absent, read
    /// the stored position, and start consuming after it.
    pub async fn start<P: Projection>(
        js: jetstream::Context,
        store: ReadStore,
        projection: P,
        config: RunnerConfig,
    ) -> Result<RunnerHandle, RunnerError> {
        let name = projection.name().to_string();
        store.create_tables(projection.tables(), Tables::Live).await?;
        ensure_checkpoint(store.pool(), &name, &config.stream).await?;
        ensure_dead_letter_stream(&js, &config.dead_letter_stream).await?;
        let position = store.position(&name).await?;
        let (position_tx, position_rx) = watch::channel(position);
        let (control_tx, control_rx) = mpsc::channel(4);
        let inner = Arc::new(Inner {
            js,
            store,
            projection,
            config,
            name,
            breaker: Mutex::default(),
            stalled: AtomicBool::new(false),
            failures: AtomicU32::new(0),
        });
        info!(projection = %inner.name, position, "projection starting");
        let task = tokio::spawn(run(inner, position, position_tx, control_rx));
        Ok(RunnerHandle { position: position_rx, control: control_tx, task })
    }
}

async fn ensure_dead_letter_stream(js: &jetstream::Context, name: &str) -> Result<(), RunnerError> {
    if js.get_stream(name).await.is_ok() {
        return Ok(());
    }
    js.get_or_create_stream(stream::Config {
        name: name.to_string(),
        subjects: vec!["dlq.>".into()],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        // A log for alerting and forensics; the parked table is the queue.
        max_age: Duration::from_secs(90 * 24 * 3600),
        allow_direct: true,
        ..Default::default()
    })
    .await
    .map_err(nats)?;
    Ok(())
}

/// A running projection.
pub struct RunnerHandle {
    position: watch::Receiver<u64>,
    control: mpsc::Sender<Control>,
    task: JoinHandle<()>,
}

impl RunnerHandle {
    /// The stream position applied so far.
    pub fn position(&self) -> u64 {
        *self.position.borrow()
    }

    /// Wait until the read model has applied `position` (read-your-writes).
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<u64, WaitError> {
        let mut rx = self.position.clone();
        match tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position)).await {
            Ok(Ok(p)) => Ok(*p),
            Ok(Err(_)) => Err(WaitError::Stopped),
            Err(_) => Err(WaitError::Timeout { wanted: position, reached: *self.position.borrow() }),
        }
    }

    /// Wait until the read model has applied everything `stream` held when
    /// called (one stream-info round trip, then [`RunnerHandle::wait_for`]).
    pub async fn wait_for_stream_head(
        &self,
        js: &jetstream::Context,
        stream: &str,
        timeout: Duration,
    ) -> Result<u64, WaitError> {
        let head = async {
            let mut s = js.get_stream(stream).await.ok()?;
            Some(s.info().await.ok()?.state.last_sequence)
        };
        // If NATS cannot say, the read model cannot be shown current either.
        let Some(head) = tokio::time::timeout(timeout, head).await.ok().flatten() else {
            return Err(WaitError::Timeout { wanted: u64::MAX, reached: self.position() });
        };
        self.wait_for(head, timeout).await
    }

    /// Rebuild from zero into fresh shadow tables and swap them in; returns the
    /// position at the swap. Refused while another rebuild of the projection
    /// runs, here or in another replica sharing the database.
    pub async fn rebuild(&self) -> Result<u64, RunnerError> {
        let (tx, rx) = oneshot::channel();
        self.control.send(Control::Rebuild(tx)).await.map_err(|_| RunnerError::Stopped)?;
        rx.await.map_err(|_| RunnerError::Stopped)?
    }

    /// Apply this projection's parked commits again (after a fix), in stream
    /// order, each under the checkpoint lock; a commit that applies leaves the
    /// parked table in the same transaction, so replaying twice applies once.
    /// An aggregate whose earliest parked commit still fails keeps the rest
    /// parked behind it.
    pub async fn replay_parked(&self) -> Result<ReplayReport, RunnerError> {
        let (tx, rx) = oneshot::channel();
        self.control.send(Control::ReplayParked(tx)).await.map_err(|_| RunnerError::Stopped)?;
        rx.await.map_err(|_| RunnerError::Stopped)?
    }

    /// The commits parked for this projection, in stream order.
    pub async fn parked(&self) -> Result<Vec<parked::ParkedCommit>, RunnerError> {
        let (tx, rx) = oneshot::channel();
        self.control.send(Control::Parked(tx)).await.map_err(|_| RunnerError::Stopped)?;
        rx.await.map_err(|_| RunnerError::Stopped)?
    }

    /// Stop consuming and wait for the current batch to finish.
    pub async fn stop(self) {
        drop(self.control);
        let _ = self.task.await;
    }

    /// Kill the runner wherever it is, as a crash would (tests use it).
    pub fn abort(self) {
        self.task.abort();
    }
}

type RebuildTask = (oneshot::Sender<Result<u64, RunnerError>>, JoinHandle<Result<u64, RunnerError>>);

async fn run<P: Projection>(
    inner: Arc<Inner<P>>,
    mut position: u64,
    position_tx: watch::Sender<u64>,
    mut control: mpsc::Receiver<Control>,
) {
    let mut rebuild = None;
    loop {
        match inner.consume(&mut position, &position_tx, &mut control, &mut rebuild).await {
            Ok(Flow::Stop) => return,
            Ok(Flow::Resubscribe) => {
                metrics::counter!("projection_resubscribes_total", "projection" => inner.name.clone()).increment(1);
            }
            Err(e) => {
                let failures = inner.failures.fetch_add(1, Ordering::Relaxed) + 1;
                metrics::counter!("projection_errors_total", "projection" => inner.name.clone()).increment(1);
                if e.stalls() {
                    inner.stall(&e);
                } else {
                    warn!(projection = %inner.name, error = %e, "projection interrupted; resuming from the stored position");
                }
                let pause = inner.config.retry_backoff.saturating_mul(1 << failures.min(10));
                tokio::time::sleep(pause.min(inner.config.max_stall_backoff)).await;
            }
        }
        // The database is the truth: a failed batch rolled back, another runner
        // may have moved on.
        if let Ok(p) = inner.store.position(&inner.name).await
            && p > position
        {
            position = p;
            position_tx.send_replace(p);
        }
    }
}

impl<P: Projection> Inner<P> {
    fn stall(&self, e: &RunnerError) {
        if !self.stalled.swap(true, Ordering::Relaxed) {
            error!(projection = %self.name, error = %e, "projection stalled: retrying without limit; nothing is skipped");
        }
        self.store.set_stalled(&self.name, Some(e.to_string()));
        metrics::gauge!("projection_stalled", "projection" => self.name.clone()).set(1.0);
    }

    fn progressed(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if self.stalled.swap(false, Ordering::Relaxed) {
            info!(projection = %self.name, "projection no longer stalled");
            self.store.set_stalled(&self.name, None);
            metrics::gauge!("projection_stalled", "projection" => self.name.clone()).set(0.0);
        }
        if let Ok(mut b) = self.breaker.lock() {
            b.tripped = false;
        }
    }

    async fn consume(
        self: &Arc<Self>,
        position: &mut u64,
        position_tx: &watch::Sender<u64>,
        control: &mut mpsc::Receiver<Control>,
        rebuild: &mut Option<RebuildTask>,
    ) -> Result<Flow, RunnerError> {
        let mut batches = Box::pin(self.subscribe(*position).await?);
        loop {
            tokio::select! {
                message = control.recv() => match message {
                    None => return Ok(Flow::Stop),
                    Some(Control::Rebuild(reply)) => {
                        if rebuild.is_some() {
                            let _ = reply.send(Err(RunnerError::RebuildRunning));
                            continue;
                        }
                        let this = Arc::clone(self);
                        let task = tokio::spawn(async move { this.rebuild().await });
                        *rebuild = Some((reply, task));
                    }
                    Some(Control::ReplayParked(reply)) => {
                        let _ = reply.send(self.replay_parked().await);
                    }
                    Some(Control::Parked(reply)) => {
                        let _ = reply.send(parked::list(&self.store, &self.name).await.map_err(RunnerError::from));
                    }
                },
                built = async { match rebuild.as_mut() { Some((_, task)) => task.await, None => std::future::pending().await } } => {
                    let Some((reply, _)) = rebuild.take() else { continue };
                    let _ = reply.send(built.unwrap_or_else(|e| Err(RunnerError::Nats(format!("rebuild task failed: {e}")))));
                },
                batch = batches.next() => {
                    let Some(batch) = batch else {
                        return Err(RunnerError::Nats("consumer ended".into()));
                    };
                    let mut commits = Vec::with_capacity(batch.len());
                    let mut pending = 0;
                    let mut gap = false;
                    for message in batch {
                        let message = message.map_err(nats)?;
                        let (delivered, p) = Delivered::from_message(&message)?;
                        if delivered.sequence != *position + 1 + commits.len() as u64 {
                            warn!(projection = %self.name, position = *position, delivered = delivered.sequence,
                                  "delivery is not contiguous with the position; resubscribing from it");
                            gap = true;
                            break;
                        }
                        pending = p;
                        commits.push(delivered);
                    }
                    if !commits.is_empty() {
                        let reached = self.apply_batch(Tables::Live, &self.name, &commits).await?;
                        self.progressed();
                        *position = reached;
                        position_tx.send_replace(reached);
                        metrics::gauge!("projection_position", "projection" => self.name.clone()).set(reached as f64);
                        metrics::gauge!("projection_lag", "projection" => self.name.clone()).set(pending as f64);
                        metrics::counter!("projection_commits_total", "projection" => self.name.clone()).increment(commits.len() as u64);
                    }
                    if gap {
                        return Ok(Flow::Resubscribe);
                    }
                }
            }
        }
    }

    /// An ordered consumer delivering batches of commits after `position`.
    pub(super) async fn subscribe(
        &self,
        position: u64,
    ) -> Result<
        impl futures::Stream<Item = Vec<Result<jetstream::Message, async_nats::jetstream::consumer::pull::OrderedError>>>,
        RunnerError,
    > {
        let stream = self.js.get_stream(&self.config.stream).await.map_err(nats)?;
        let deliver_policy = if position == 0 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence { start_sequence: position + 1 }
        };
        let consumer =
            stream.create_consumer(OrderedConfig { deliver_policy, ..Default::default() }).await.map_err(nats)?;
        let messages = consumer.messages().await.map_err(nats)?;
        Ok(messages.chunks_timeout(self.config.batch_size, self.config.batch_wait))
    }

    /// The commits after `from` up to and including `until`, contiguous.
    pub(super) async fn read_range(&self, from: u64, until: u64) -> Result<Vec<Delivered>, RunnerError> {
        let mut out = Vec::new();
        if from >= until {
            return Ok(out);
        }
        let mut batches = Box::pin(self.subscribe(from).await?);
        while (out.len() as u64) < until - from {
            let Some(batch) = batches.next().await else {
                return Err(RunnerError::Nats("consumer ended while reading a range".into()));
            };
            for message in batch {
                let (delivered, _) = Delivered::from_message(&message.map_err(nats)?)?;
                if delivered.sequence != from + 1 + out.len() as u64 {
                    return Err(RunnerError::Nats(format!(
                        "range read not contiguous: expected {}, got {}",
                        from + 1 + out.len() as u64,
                        delivered.sequence
                    )));
                }
                out.push(delivered);
                if out.len() as u64 == until - from {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Apply commits after `from` up to `until` into `tables`, batch by batch;
    /// a rebuild (`rebuild_owner`) heartbeats after each.
    pub(super) async fn catch_up(
        &self,
        tables: Tables,
        checkpoint: &str,
        from: u64,
        until: u64,
        rebuild_owner: Option<&str>,
    ) -> Result<u64, RunnerError> {
        let mut position = from;
        if position >= until {
            return Ok(position);
        }
        let mut batches = Box::pin(self.subscribe(position).await?);
        while position < until {
            let Some(batch) = batches.next().await else {
                return Err(RunnerError::Nats("consumer ended during catch-up".into()));
            };
            let mut commits = Vec::with_capacity(batch.len());
            for message in batch {
                let (delivered, _) = Delivered::from_message(&message.map_err(nats)?)?;
                if delivered.sequence > until {
                    break;
                }
                if delivered.sequence != position + 1 + commits.len() as u64 {
                    return Err(RunnerError::Nats(format!(
                        "catch-up not contiguous: expected {}, got {}",
                        position + 1 + commits.len() as u64,
                        delivered.sequence
                    )));
                }
                commits.push(delivered);
            }
            if !commits.is_empty() {
                position = self.apply_batch(tables, checkpoint, &commits).await?;
                if let Some(owner) = rebuild_owner {
                    self.heartbeat(owner).await?;
                }
            }
        }
        Ok(position)
    }

    /// Apply a contiguous run of commits under `checkpoint`'s lock; returns the
    /// position reached (which may be past the batch if another runner applied more).
    pub(super) async fn apply_batch(
        &self,
        tables: Tables,
        checkpoint: &str,
        commits: &[Delivered],
    ) -> Result<u64, RunnerError> {
        let Some(last) = commits.last().map(|c| c.sequence) else { return Ok(0) };
        let span = info_span!("projection.batch", projection = %self.name, commits = commits.len(), last);
        let fast = async {
            let mut tx = self.store.pool().begin().await?;
            // Another runner of this projection may have applied some already.
            let applied = lock_position(&mut tx, checkpoint).await?;
            if applied >= last {
                tx.commit().await?;
                return Ok(Some(applied));
            }
            let blocked = parked::blocked_subjects(&mut tx, checkpoint).await?;
            if !self.apply_in(&mut tx, tables, &blocked, commits, applied).await? {
                return Ok(None);
            }
            set_position(&mut tx, checkpoint, &self.config.stream, last).await?;
            tx.commit().await?;
            Ok::<_, RunnerError>(Some(last))
        }
        .instrument(span)
        .await?;
        if let Some(reached) = fast {
            return Ok(reached);
        }
        for c in commits {
            self.apply_or_park(tables, checkpoint, c).await?;
        }
        Ok(last)
    }

    /// Apply the commits after `applied` inside `tx`. `Ok(false)` (nothing
    /// kept) when one of them is poison or waits behind a parked commit: the
    /// caller rolls back and goes one commit at a time.
    pub(super) async fn apply_in(
        &self,
        tx: &mut sqlx::AnyConnection,
        tables: Tables,
        blocked: &HashSet<String>,
        commits: &[Delivered],
        applied: u64,
    ) -> Result<bool, RunnerError> {
        for c in commits.iter().filter(|c| c.sequence > applied) {
            let Ok(commit) = &c.parsed else { return Ok(false) };
            if blocked.contains(&c.subject) {
                return Ok(false);
            }
            match self.apply_one(tx, tables, commit).await {
                Ok(()) => {}
                Err(e) if e.is_poison() => return Ok(false),
                Err(e) => return Err(RunnerError::Environment(e.to_string())),
            }
        }
        Ok(true)
    }

    pub(super) async fn apply_one(
        &self,
        tx: &mut sqlx::AnyConnection,
        tables: Tables,
        commit: &RecordedCommit,
    ) -> Result<(), ApplyError> {
        let span = info_span!("projection.apply", projection = %self.name, sequence = commit.sequence, subject = %commit.subject);
        crate::trace::set_parent_from(&span, &commit.headers);
        self.projection.apply(tx, tables, commit).instrument(span).await
    }

    /// One commit in its own transaction: applied, or parked as poison after
    /// bounded attempts, or parked behind an earlier parked commit of its subject.
    async fn apply_or_park(&self, tables: Tables, checkpoint: &str, c: &Delivered) -> Result<(), RunnerError> {
        let mut attempts = 0;
        let error = loop {
            attempts += 1;
            let mut tx = self.store.pool().begin().await?;
            if lock_position(&mut tx, checkpoint).await? >= c.sequence {
                tx.commit().await?;
                return Ok(());
            }
            if let Some(first) = parked::first_parked(&mut tx, checkpoint, &c.subject).await? {
                // Its aggregate has a parked commit: applying this one now would
                // build on a state the read model never reached.
                let reason = format!("waits behind parked commit {first} of {}", c.subject);
                self.park(&mut tx, checkpoint, c, &reason, 0, first).await?;
                set_position(&mut tx, checkpoint, &self.config.stream, c.sequence).await?;
                tx.commit().await?;
                return Ok(());
            }
            let commit = match &c.parsed {
                Ok(commit) => commit,
                // Undecodable bytes will not decode on a retry.
                Err(e) => break e.to_string(),
            };
            match self.apply_one(&mut tx, tables, commit).await {
                Ok(()) => {
                    set_position(&mut tx, checkpoint, &self.config.stream, c.sequence).await?;
                    tx.commit().await?;
                    return Ok(());
                }
                Err(e) if !e.is_poison() => return Err(RunnerError::Environment(e.to_string())),
                Err(e) => {
                    drop(tx);
                    if attempts >= self.config.max_attempts {
                        break e.to_string();
                    }
                    warn!(projection = %self.name, sequence = c.sequence, attempts, error = %e, "commit failed; retrying");
                    tokio::time::sleep(self.config.retry_backoff * attempts).await;
                }
            }
        };
        self.admit_parking()?;
        let mut tx = self.store.pool().begin().await?;
        if lock_position(&mut tx, checkpoint).await? < c.sequence {
            self.park(&mut tx, checkpoint, c, &error, attempts, 0).await?;
            set_position(&mut tx, checkpoint, &self.config.stream, c.sequence).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Count a parking against the burst limit, or refuse it: many different
    /// commits failing in a short time is the environment, not poison.
    fn admit_parking(&self) -> Result<(), RunnerError> {
        let Ok(mut b) = self.breaker.lock() else { return Ok(()) };
        let window = self.config.poison_burst_window;
        while b.parked_at.front().is_some_and(|t| t.elapsed() > window) {
            b.parked_at.pop_front();
        }
        if b.tripped || b.parked_at.len() >= self.config.poison_burst_limit {
            b.tripped = true;
            return Err(RunnerError::PoisonBurst { count: b.parked_at.len(), window });
        }
        b.parked_at.push_back(Instant::now());
        Ok(())
    }
}
