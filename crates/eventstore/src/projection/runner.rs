//! The projection runner: a stream in, rows and position out, in one transaction.
//!
//! Each batch (up to `batch_size` commits, or whatever arrived within
//! `batch_wait`) is applied in one transaction that also stores the new
//! position. If the batch fails, its commits are applied one at a time: a commit
//! that still fails after `max_attempts` is parked on `dlq.<projection>` in the
//! dead-letter stream (with the error and the original headers and body) and the
//! position moves past it. A database that is unreachable is not a poison
//! commit: the runner waits and retries without parking anything.
//!
//! Rebuild replays the stream from zero into shadow tables in a background task
//! while the live tables keep answering; when it has caught up, the live loop
//! (between two batches) applies the last few commits to the shadow set and
//! swaps it in, position included, in one transaction.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig, stream};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt as _;
use tracing::{Instrument as _, info, info_span, warn};

use super::store::{ReadStore, ensure_checkpoint, lock_position, set_position};
use super::{ApplyError, Projection, Tables};
use crate::aggregate::DecodeError;
use crate::envelope::{RecordedCommit, headers};

/// Tuning for a runner.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The stream to consume, e.g. `"GRID"`.
    pub stream: String,
    /// Most commits applied per transaction.
    pub batch_size: usize,
    /// How long to wait for a batch to fill once its first commit arrived.
    pub batch_wait: Duration,
    /// Attempts at one commit before it is parked.
    pub max_attempts: u32,
    /// Pause between attempts, multiplied by the attempt number.
    pub retry_backoff: Duration,
    /// The dead-letter stream (subjects `dlq.>`).
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
            dead_letter_stream: "DLQ".into(),
        }
    }
}

/// Headers added to a parked commit.
pub mod dlq_headers {
    /// Stream the commit came from.
    pub const STREAM: &str = "Gridwork-Dlq-Stream";
    /// Its stream sequence.
    pub const SEQUENCE: &str = "Gridwork-Dlq-Sequence";
    /// Its subject.
    pub const SUBJECT: &str = "Gridwork-Dlq-Subject";
    /// The last error.
    pub const ERROR: &str = "Gridwork-Dlq-Error";
    /// How many attempts were made.
    pub const ATTEMPTS: &str = "Gridwork-Dlq-Attempts";
    /// The commit's back-pointer (its `Nats-Expected-Last-Subject-Sequence`,
    /// renamed so the dead-letter stream does not enforce it).
    pub const PREVIOUS: &str = "Gridwork-Dlq-Previous";
}

/// Runner failures.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// NATS failed.
    #[error("nats: {0}")]
    Nats(String),
    /// The read store failed.
    #[error("read store: {0}")]
    Db(#[from] sqlx::Error),
    /// The read store is unreachable while applying.
    #[error("read store unreachable: {0}")]
    Unreachable(String),
    /// A rebuild is already running.
    #[error("a rebuild is already running")]
    RebuildRunning,
    /// The runner has stopped.
    #[error("projection runner stopped")]
    Stopped,
}

fn nats(e: impl std::fmt::Display) -> RunnerError {
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
struct Delivered {
    sequence: u64,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    parsed: Result<RecordedCommit, DecodeError>,
}

impl Delivered {
    fn from_message(m: &jetstream::Message) -> Result<(Self, u64), RunnerError> {
        let info = m.info().map_err(nats)?;
        let sequence = info.stream_sequence;
        let pending = info.pending;
        let headers = m.headers.clone().unwrap_or_default();
        let parsed = RecordedCommit::from_parts(sequence, m.subject.as_str(), headers.clone(), &m.payload);
        Ok((Self { sequence, subject: m.subject.to_string(), headers, payload: m.payload.clone(), parsed }, pending))
    }
}

enum Control {
    Rebuild(oneshot::Sender<Result<u64, RunnerError>>),
    ReplayParked(oneshot::Sender<Result<ReplayReport, RunnerError>>),
}

/// What replaying parked commits did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Applied now, and removed from the dead-letter stream.
    pub applied: u64,
    /// Still failing; left parked.
    pub still_failing: u64,
}

enum Flow {
    Stop,
    Restart,
}

struct Inner<P> {
    js: jetstream::Context,
    store: ReadStore,
    projection: P,
    config: RunnerConfig,
    name: String,
    shadow_name: String,
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
        let inner = Arc::new(Inner { js, store, projection, config, shadow_name: format!("{name}#shadow"), name });
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

    /// Rebuild from zero into shadow tables and swap them in; returns the position
    /// at the swap.
    pub async fn rebuild(&self) -> Result<u64, RunnerError> {
        let (tx, rx) = oneshot::channel();
        self.control.send(Control::Rebuild(tx)).await.map_err(|_| RunnerError::Stopped)?;
        rx.await.map_err(|_| RunnerError::Stopped)?
    }

    /// Apply this projection's parked commits again (after a fix), each in its
    /// own transaction, removing those that now apply from the dead-letter stream.
    /// Runs between two live batches; parked commits apply out of stream order.
    pub async fn replay_parked(&self) -> Result<ReplayReport, RunnerError> {
        let (tx, rx) = oneshot::channel();
        self.control.send(Control::ReplayParked(tx)).await.map_err(|_| RunnerError::Stopped)?;
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
            Ok(Flow::Restart) => continue,
            Err(e) => {
                metrics::counter!("projection_errors_total", "projection" => inner.name.clone()).increment(1);
                warn!(projection = %inner.name, error = %e, "projection interrupted; resuming from the stored position");
                // The database is the truth: a failed batch may have rolled back.
                if let Ok(p) = inner.store.position(&inner.name).await {
                    position = p;
                }
                tokio::time::sleep(inner.config.retry_backoff * 4).await;
            }
        }
    }
}

type RebuildTask = (oneshot::Sender<Result<u64, RunnerError>>, JoinHandle<Result<u64, RunnerError>>);

impl<P: Projection> Inner<P> {
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
                        let task = tokio::spawn(async move { this.build_shadow().await });
                        *rebuild = Some((reply, task));
                    }
                    Some(Control::ReplayParked(reply)) => {
                        let _ = reply.send(self.replay_parked().await);
                    }
                },
                built = async { match rebuild.as_mut() { Some((_, task)) => task.await, None => std::future::pending().await } } => {
                    let Some((reply, _)) = rebuild.take() else { continue };
                    let result = match built {
                        Ok(Ok(shadow_position)) => self.swap_in(shadow_position, *position).await,
                        Ok(Err(e)) => Err(e),
                        Err(e) => Err(RunnerError::Nats(format!("rebuild task failed: {e}"))),
                    };
                    let moved = matches!(result, Ok(p) if p != *position);
                    if let Ok(p) = result {
                        *position = p;
                        position_tx.send_replace(p);
                    }
                    let _ = reply.send(result);
                    if moved {
                        return Ok(Flow::Restart);
                    }
                },
                batch = batches.next() => {
                    let Some(batch) = batch else {
                        return Err(RunnerError::Nats("consumer ended".into()));
                    };
                    let mut commits = Vec::with_capacity(batch.len());
                    let mut pending = 0;
                    for message in batch {
                        let message = message.map_err(nats)?;
                        let (delivered, p) = Delivered::from_message(&message)?;
                        pending = p;
                        commits.push(delivered);
                    }
                    let Some(last) = commits.last().map(|c| c.sequence) else { continue };
                    self.apply_batch(Tables::Live, &self.name, &commits).await?;
                    *position = last;
                    position_tx.send_replace(last);
                    metrics::gauge!("projection_position", "projection" => self.name.clone()).set(last as f64);
                    metrics::gauge!("projection_lag", "projection" => self.name.clone()).set(pending as f64);
                    metrics::counter!("projection_commits_total", "projection" => self.name.clone()).increment(commits.len() as u64);
                }
            }
        }
    }

    /// An ordered consumer delivering batches of commits after `position`.
    async fn subscribe(
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

    /// Replay the stream from zero into fresh shadow tables, up to the stream's
    /// last sequence at the start. Runs beside the live loop.
    async fn build_shadow(&self) -> Result<u64, RunnerError> {
        self.store.create_tables(self.projection.tables(), Tables::Shadow).await?;
        let mut tx = self.store.pool().begin().await?;
        set_position(&mut tx, &self.shadow_name, &self.config.stream, 0).await?;
        tx.commit().await?;
        let mut stream = self.js.get_stream(&self.config.stream).await.map_err(nats)?;
        let target = stream.info().await.map_err(nats)?.state.last_sequence;
        info!(projection = %self.name, target, "rebuilding into shadow tables");
        self.catch_up(Tables::Shadow, &self.shadow_name, 0, target).await
    }

    /// Apply commits after `from` up to `until` into `tables`.
    async fn catch_up(&self, tables: Tables, checkpoint: &str, from: u64, until: u64) -> Result<u64, RunnerError> {
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
                let message = message.map_err(nats)?;
                let (delivered, _) = Delivered::from_message(&message)?;
                if delivered.sequence > until {
                    break;
                }
                commits.push(delivered);
            }
            if let Some(last) = commits.last().map(|c| c.sequence) {
                self.apply_batch(tables, checkpoint, &commits).await?;
                position = last;
            }
        }
        Ok(position)
    }

    /// Bring the shadow set to the live position and swap it in.
    async fn swap_in(&self, shadow_position: u64, live_position: u64) -> Result<u64, RunnerError> {
        let position = self.catch_up(Tables::Shadow, &self.shadow_name, shadow_position, live_position).await?;
        self.store.swap_in_shadow(self.projection.tables(), &self.name, &self.shadow_name, &self.config.stream).await?;
        info!(projection = %self.name, position, "rebuilt tables swapped in");
        Ok(position)
    }

    async fn apply_batch(&self, tables: Tables, checkpoint: &str, commits: &[Delivered]) -> Result<(), RunnerError> {
        let Some(last) = commits.last().map(|c| c.sequence) else { return Ok(()) };
        let span = info_span!("projection.batch", projection = %self.name, commits = commits.len(), last);
        let fast = async {
            if commits.iter().any(|c| c.parsed.is_err()) {
                return Ok(false);
            }
            let mut tx = self.store.pool().begin().await?;
            // Another runner of this projection may have applied some already.
            let applied = lock_position(&mut tx, checkpoint).await?;
            if applied >= last {
                tx.commit().await?;
                return Ok(true);
            }
            for commit in commits.iter().filter_map(|c| c.parsed.as_ref().ok()).filter(|c| c.sequence > applied) {
                if let Err(e) = self.apply_one(&mut tx, tables, commit).await {
                    if e.is_transient() {
                        return Err(RunnerError::Unreachable(e.to_string()));
                    }
                    return Ok(false);
                }
            }
            set_position(&mut tx, checkpoint, &self.config.stream, last).await?;
            tx.commit().await?;
            Ok::<_, RunnerError>(true)
        }
        .instrument(span)
        .await?;
        if fast {
            return Ok(());
        }
        for c in commits {
            self.apply_or_park(tables, checkpoint, c).await?;
        }
        Ok(())
    }

    async fn apply_one(
        &self,
        tx: &mut sqlx::AnyConnection,
        tables: Tables,
        commit: &RecordedCommit,
    ) -> Result<(), ApplyError> {
        let span = info_span!("projection.apply", projection = %self.name, sequence = commit.sequence, subject = %commit.subject);
        crate::trace::set_parent_from(&span, &commit.headers);
        self.projection.apply(tx, tables, commit).instrument(span).await
    }

    async fn apply_or_park(&self, tables: Tables, checkpoint: &str, c: &Delivered) -> Result<(), RunnerError> {
        let mut attempts = 0;
        let error = loop {
            attempts += 1;
            let commit = match &c.parsed {
                Ok(commit) => commit,
                // Undecodable bytes will not decode on a retry.
                Err(e) => break e.to_string(),
            };
            let mut tx = self.store.pool().begin().await?;
            if lock_position(&mut tx, checkpoint).await? >= c.sequence {
                tx.commit().await?;
                return Ok(());
            }
            match self.apply_one(&mut tx, tables, commit).await {
                Ok(()) => {
                    set_position(&mut tx, checkpoint, &self.config.stream, c.sequence).await?;
                    tx.commit().await?;
                    return Ok(());
                }
                Err(e) if e.is_transient() => return Err(RunnerError::Unreachable(e.to_string())),
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
        let mut tx = self.store.pool().begin().await?;
        if lock_position(&mut tx, checkpoint).await? < c.sequence {
            // Parking twice (a crash before the position moved) dedupes by msg id.
            self.park(c, &error, attempts).await?;
            set_position(&mut tx, checkpoint, &self.config.stream, c.sequence).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    fn dead_letter_subject(&self) -> String {
        format!("dlq.{}", self.name.replace(['.', '*', '>', ' ', '#'], "_"))
    }

    async fn replay_parked(&self) -> Result<ReplayReport, RunnerError> {
        let mut report = ReplayReport::default();
        let mut dlq = self.js.get_stream(&self.config.dead_letter_stream).await.map_err(nats)?;
        let last = dlq.info().await.map_err(nats)?.state.last_sequence;
        let subject = self.dead_letter_subject();
        let mut next = 1;
        while next <= last {
            let message = match dlq.direct_get_next_for_subject(&subject, Some(next)).await {
                Ok(m) if m.sequence <= last => m,
                Ok(_) => break,
                Err(e) if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound => break,
                Err(e) => return Err(nats(e)),
            };
            next = message.sequence + 1;
            let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_string());
            let sequence = header(dlq_headers::SEQUENCE).and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut original = message.headers.clone();
            original.insert(
                headers::EXPECTED_LAST_SUBJECT_SEQUENCE,
                header(dlq_headers::PREVIOUS).unwrap_or_default().as_str(),
            );
            let original_subject = header(dlq_headers::SUBJECT).unwrap_or_default();
            let applied = match RecordedCommit::from_parts(sequence, &original_subject, original, &message.payload) {
                Err(_) => false,
                Ok(commit) => {
                    let mut tx = self.store.pool().begin().await?;
                    match self.apply_one(&mut tx, Tables::Live, &commit).await {
                        Ok(()) => {
                            tx.commit().await?;
                            true
                        }
                        Err(e) if e.is_transient() => return Err(RunnerError::Unreachable(e.to_string())),
                        Err(_) => false,
                    }
                }
            };
            if applied {
                dlq.delete_message(message.sequence).await.map_err(nats)?;
                report.applied += 1;
            } else {
                report.still_failing += 1;
            }
        }
        info!(projection = %self.name, ?report, "replayed parked commits");
        Ok(report)
    }

    /// Publish a poison commit to `dlq.<projection>` and wait for the ack.
    async fn park(&self, c: &Delivered, error: &str, attempts: u32) -> Result<(), RunnerError> {
        warn!(projection = %self.name, sequence = c.sequence, attempts, error, "parking poison commit");
        let mut h = HeaderMap::new();
        for (name, values) in c.headers.iter() {
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
        if let Some(previous) = c.headers.get(headers::EXPECTED_LAST_SUBJECT_SEQUENCE) {
            h.insert(dlq_headers::PREVIOUS, previous.as_str());
        }
        // Parking twice (a crash before the position moved) dedupes to one.
        h.insert(headers::MSG_ID, format!("{}:{}:{}", self.name, self.config.stream, c.sequence).as_str());
        let subject = self.dead_letter_subject();
        self.js.publish_with_headers(subject, h, c.payload.clone()).await.map_err(nats)?.await.map_err(nats)?;
        metrics::counter!("projection_parked_total", "projection" => self.name.clone()).increment(1);
        Ok(())
    }
}
