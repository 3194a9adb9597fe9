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
//! delivered sequence that is not the next one (a consumer that restarted from
//! the stream's start, as async-nats' ordered consumer did after a server
//! restart; another runner moved the position on) makes the runner resubscribe
//! from the stored position: the position never goes backwards and no commit is
//! skipped. The feed is an ephemeral pull consumer asking for thousands of
//! messages per pull, read and decoded a few batches ahead of the writes.
//!
//! **Failures.** If a batch fails on a commit that is poison
//! ([`ApplyError::is_poison`]), its commits are applied one at a time and the
//! poison one is parked after `max_attempts` (see [`super::parked`]). Any other
//! failure stalls the runner: it retries with backoff (up to
//! `max_stall_backoff`), without limit, reporting the projection in
//! [`ReadStore::stalled`] (the service's readiness goes NOT_SERVING) and in the
//! `projection_stalled` gauge, until the batch applies.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use super::feed::{Feed, ReadAhead};
use super::parked::{self, DeadLetter, ReplayReport};
use super::store::{
    ReadStore, batch_context, ensure_checkpoint, lock_position, record_schema, set_position, stored_schema,
};
use super::{ApplyError, Projection, Schema, Tables, UnknownEvents, is_poison_db_error};
use crate::aggregate::DecodeError;
use crate::envelope::RecordedCommit;

/// Tuning for a runner.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The stream to consume, e.g. `"GRID"`.
    pub stream: String,
    /// Most commits applied per transaction (a runner that is behind fills
    /// its batches; a batched projection writes each row once per batch).
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
    /// [`RunnerConfig::poison_burst_window`] and within
    /// [`RunnerConfig::poison_burst_span`] commits of each other is an outage,
    /// not poison: the runner stops parking and stalls.
    pub poison_burst_limit: usize,
    /// See [`RunnerConfig::poison_burst_limit`].
    pub poison_burst_window: Duration,
    /// See [`RunnerConfig::poison_burst_limit`]. A runner catching up (a new
    /// read model over a long history, a rebuild) passes a minute's worth of
    /// live commits in a fraction of a second: poison spread over the history
    /// would look like a burst by the clock alone, and the runner would stall
    /// for good before the first of them past the limit.
    pub poison_burst_span: u64,
    /// The dead-letter streams' name prefix: the projection's parkings are
    /// logged in `<prefix>_<OWNER>` (subjects `deadletter.<owner>.>`, the owner
    /// being the first word of the projection's name — its service's
    /// context), one stream per service, so that no service's messages can
    /// shadow another's (the stream's duplicate window spans all its
    /// subjects). A log for alerting; the parked table is what replay reads.
    pub dead_letter_stream: String,
    /// Whose dead letters these are (the service's context: `grid`,
    /// `intake`…); by default the first word of the projection's name.
    pub dead_letter_owner: Option<String>,
    /// With nothing delivered for this long, the runner asks the stream for its
    /// head and resubscribes if commits are waiting: a consumer lost with a
    /// cluster node must not leave the read model standing still.
    pub idle_check: Duration,
    /// Messages asked of the server per pull (the next pull goes out once half
    /// arrived): what the client buffers ahead of the read-ahead batches.
    pub fetch_batch: usize,
    /// Bytes of commits read and parsed ahead of the batch being applied, at
    /// most: the feed reads no further until a batch is applied. A batch
    /// heavier than this still goes through, alone.
    pub read_ahead_bytes: usize,
    /// Another rebuild's claim whose heartbeat this runner has seen unchanged
    /// for this long, on its own clock and with the database answering
    /// throughout, is presumed dead and taken over (see
    /// [`crate::projection::rebuild`]).
    pub rebuild_stale_after: Duration,
}

impl RunnerConfig {
    /// Defaults for consuming `stream`.
    pub fn new(stream: impl Into<String>) -> Self {
        Self {
            stream: stream.into(),
            batch_size: 2000,
            batch_wait: Duration::from_millis(10),
            max_attempts: 5,
            retry_backoff: Duration::from_millis(50),
            max_stall_backoff: Duration::from_secs(5),
            poison_burst_limit: 5,
            poison_burst_window: Duration::from_secs(60),
            poison_burst_span: 10_000,
            dead_letter_stream: "DLQ".into(),
            dead_letter_owner: None,
            idle_check: Duration::from_secs(3),
            fetch_batch: FETCH_BATCH,
            read_ahead_bytes: super::feed::READ_AHEAD_BYTES,
            rebuild_stale_after: super::rebuild::STALE_AFTER,
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
    /// A reactor is never rebuilt (it would send its commands again).
    #[error("{0} is a reactor: it is never rebuilt")]
    NotRebuildable(String),
    /// Another rebuild took this one's place (it was presumed dead).
    #[error("the rebuild lost its ownership to another one")]
    RebuildLost,
    /// The stored position is behind the first commit delivered after it (an
    /// operator moved the checkpoint back): the runner carries on from the
    /// stored position.
    #[error("the stored position {stored} is behind the delivered commit {delivered}")]
    CheckpointBehind {
        /// The stored position.
        stored: u64,
        /// The first commit delivered.
        delivered: u64,
    },
    /// The stream does not hold the commit after the position (it was deleted
    /// from a stream that must never be deleted from): nothing past it is applied.
    #[error("commit {0} is missing from the stream; not skipping it")]
    Missing(u64),
    /// A commit was written by a newer build (an event type, version or
    /// envelope this one does not know) and the projection's policy is to
    /// stall: it waits for this replica to be upgraded, parking nothing.
    #[error("{0}; upgrade this replica (the projection waits, nothing is skipped)")]
    NewerData(String),
    /// The live tables were built for another [`super::Schema`] than this
    /// build's, and this build must not write into them (it is older, or its
    /// tables changed without a version bump).
    #[error("{0}")]
    Schema(String),
    /// The position lies beyond the stream's last sequence: no write made it.
    #[error("position {wanted} is beyond the stream's last sequence {head}")]
    BeyondHead {
        /// Position asked for.
        wanted: u64,
        /// The stream's last sequence.
        head: u64,
    },
    /// The runner has stopped.
    #[error("projection runner stopped")]
    Stopped,
}

impl RunnerError {
    /// A failure to apply that is not poison: the environment, or data from a
    /// newer build.
    pub(super) fn not_poison(e: &ApplyError) -> Self {
        match e {
            ApplyError::Decode(d) if d.newer => RunnerError::NewerData(d.to_string()),
            other => RunnerError::Environment(other.to_string()),
        }
    }

    /// Whether the failure is the environment's (NATS or the database out of
    /// reach, failing, or refusing for now), to be ridden out by retrying.
    pub(super) fn environmental(&self) -> bool {
        matches!(
            self,
            RunnerError::Nats(_) | RunnerError::Db(_) | RunnerError::Environment(_) | RunnerError::PoisonBurst { .. }
        )
    }

    /// Whether the failure stalls the projection (as opposed to a NATS hiccup).
    fn stalls(&self) -> bool {
        matches!(
            self,
            RunnerError::Db(_)
                | RunnerError::Environment(_)
                | RunnerError::NewerData(_)
                | RunnerError::Schema(_)
                | RunnerError::PoisonBurst { .. }
                | RunnerError::Missing(_)
        )
    }
}

/// How far [`Inner::catch_up`] got.
pub(super) struct CaughtUp {
    /// The position reached (everything up to it is applied).
    pub position: u64,
    /// Why it stopped short: the next commit is a newer build's.
    pub newer: Option<String>,
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
    /// The position lies beyond the stream's last sequence: no write made it.
    #[error("position {wanted} is beyond the stream's last sequence {head}")]
    BeyondHead {
        /// Position asked for.
        wanted: u64,
        /// The stream's last sequence.
        head: u64,
    },
    /// The runner has stopped.
    #[error("projection runner stopped")]
    Stopped,
    /// NATS could not say where the stream's head is.
    #[error("cannot tell where the stream ends: {0}")]
    Unavailable(String),
}

/// A commit as delivered, parsed or not.
pub(super) struct Delivered {
    pub(super) sequence: u64,
    pub(super) subject: String,
    pub(super) payload: Bytes,
    pub(super) parsed: Result<RecordedCommit, DecodeError>,
    /// The headers of a message that did not parse (a parsed one's are in
    /// its commit; this is then empty): kept once, for the dead-letter copy.
    unparsed_headers: HeaderMap,
}

impl Delivered {
    pub(super) fn from_message(m: jetstream::Message, unknown: UnknownEvents) -> Result<(Self, u64), RunnerError> {
        let info = m.info().map_err(nats)?;
        let (sequence, pending) = (info.stream_sequence, info.pending);
        let stored_at = crate::envelope::unix_ms(info.published);
        let message = m.message;
        let headers = message.headers.unwrap_or_default();
        let mut delivered = Self::new(sequence, message.subject.as_str(), headers, message.payload, unknown);
        if let Ok(commit) = &mut delivered.parsed {
            commit.stored_at_unix_ms = stored_at;
        }
        Ok((delivered, pending))
    }

    /// Parse a delivered message for a projection with the `unknown` policy.
    pub(super) fn new(
        sequence: u64,
        subject: &str,
        headers: HeaderMap,
        payload: Bytes,
        unknown: UnknownEvents,
    ) -> Self {
        let (parsed, unparsed_headers) = match RecordedCommit::parse(sequence, subject, headers, &payload) {
            Ok(c) => (
                Ok(match unknown {
                    UnknownEvents::Skip => c.skipping_unknown_events(),
                    UnknownEvents::Stall => c,
                }),
                HeaderMap::new(),
            ),
            Err((e, headers)) => (Err(e), headers),
        };
        Self { sequence, subject: subject.to_string(), payload, parsed, unparsed_headers }
    }

    /// The message's headers as stored.
    pub(super) fn headers(&self) -> &HeaderMap {
        match &self.parsed {
            Ok(c) => &c.headers,
            Err(_) => &self.unparsed_headers,
        }
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

/// Remembers recent parkings under one checkpoint, to tell poison from an outage.
#[derive(Default)]
struct Breaker {
    /// Distinct commits parked within the window and span, with when.
    parked: VecDeque<(u64, Instant)>,
    /// Refusing to park until a commit applies under this checkpoint again.
    tripped: bool,
}

pub(super) struct Inner<P> {
    pub(super) js: jetstream::Context,
    pub(super) store: ReadStore,
    pub(super) projection: P,
    pub(super) config: RunnerConfig,
    pub(super) name: String,
    /// What this build's tables look like.
    pub(super) schema: Schema,
    /// Per checkpoint: the live one, and a rebuild's shadow one.
    breakers: Mutex<HashMap<String, Breaker>>,
    /// Another rebuild's claim as this runner last saw it (see `claim`).
    pub(super) claim_watch: Mutex<Option<super::rebuild::ClaimWatch>>,
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
        let owner = config.dead_letter_owner.clone().unwrap_or_else(|| super::parked::dead_letter_owner(&name));
        ensure_dead_letter_stream(&js, &config.dead_letter_stream, &owner, &config.stream).await?;
        let position = store.position(&name).await?;
        let stored = stored_schema(&mut *store.pool().acquire().await?, &name).await?;
        let (position_tx, position_rx) = watch::channel(position);
        let (control_tx, control_rx) = mpsc::channel(4);
        let schema = Schema::of(&projection);
        let inner = Arc::new(Inner {
            js,
            store,
            projection,
            config,
            name,
            schema,
            breakers: Mutex::default(),
            claim_watch: Mutex::default(),
            stalled: AtomicBool::new(false),
            failures: AtomicU32::new(0),
        });
        info!(projection = %inner.name, position, "projection starting");
        if stored.is_some_and(|s| s.version < inner.schema.version) {
            // Not serving from an older build's tables from the first moment
            // (`consume` rebuilds them, or waits for another replica's rebuild).
            inner.store.set_stalled(&inner.name, Some(inner.rebuilding_reason()));
        }
        let (js, stream) = (inner.js.clone(), inner.config.stream.clone());
        let task = tokio::spawn(run(inner, position, position_tx, control_rx));
        Ok(RunnerHandle {
            position: position_rx,
            control: control_tx,
            task,
            js,
            stream,
            known_head: std::sync::atomic::AtomicU64::new(0),
        })
    }
}

/// The dead-letter stream is made with as many replicas as the stream it
/// reads (R3 in production): an R1 log lives on one node drawn at random,
/// and is gone, or cannot even be made, with that node.
async fn ensure_dead_letter_stream(
    js: &jetstream::Context,
    prefix: &str,
    owner: &str,
    read: &str,
) -> Result<(), RunnerError> {
    let name = format!("{prefix}_{}", owner.to_ascii_uppercase());
    // Not under `dlq.>`: the single stream of earlier versions (`DLQ`) holds
    // those subjects, and a new stream may not overlap it.
    let subjects = vec![format!("deadletter.{owner}.>")];
    if let Ok(mut existing) = js.get_stream(&name).await {
        let config = &existing.info().await.map_err(nats)?.config;
        if config.subjects != subjects || config.storage != stream::StorageType::File {
            return Err(nats(format!(
                "dead-letter stream {name} exists with subjects {:?} and {:?} storage, not {subjects:?} on file",
                config.subjects, config.storage
            )));
        }
        if let Ok(read) = js.get_stream(read).await
            && read.cached_info().config.num_replicas > config.num_replicas
        {
            warn!(stream = %name, replicas = config.num_replicas, wanted = read.cached_info().config.num_replicas,
                  "dead-letter stream has fewer replicas than the stream it logs for: raise them");
        }
        return Ok(());
    }
    // Never a guess: a transient failure here (a node just died) must not
    // leave an R1 log behind for good.
    let num_replicas = js.get_stream(read).await.map_err(nats)?.cached_info().config.num_replicas.max(1);
    js.get_or_create_stream(stream::Config {
        name,
        subjects,
        num_replicas,
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
    js: jetstream::Context,
    stream: String,
    /// The highest stream head seen: a position at or below it is some
    /// write's, and waiting for it needs no question to the leader.
    known_head: std::sync::atomic::AtomicU64,
}

impl RunnerHandle {
    /// The stream position applied so far.
    pub fn position(&self) -> u64 {
        *self.position.borrow()
    }

    /// Wait until the read model has applied `position` (read-your-writes).
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<u64, WaitError> {
        let now = *self.position.borrow();
        if now >= position {
            return Ok(now);
        }
        // A position the stream itself has not reached is no write's (a
        // caller's typo, or a guess): refused at once, not waited on until
        // the deadline. One STREAM.INFO to the leader, only when behind.
        let asked = tokio::time::Instant::now();
        let known = self.known_head.load(std::sync::atomic::Ordering::Relaxed);
        if position > known
            && let Ok(Ok(stream)) =
                tokio::time::timeout(timeout.min(Duration::from_secs(2)), self.js.get_stream(&self.stream)).await
        {
            let head = stream.cached_info().state.last_sequence;
            self.known_head.fetch_max(head, std::sync::atomic::Ordering::Relaxed);
            if position > head {
                return Err(WaitError::BeyondHead { wanted: position, head });
            }
        }
        // The question came out of the caller's time, not on top of it.
        let timeout = timeout.saturating_sub(asked.elapsed());
        let mut rx = self.position.clone();
        match tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position)).await {
            Ok(Ok(p)) => Ok(*p),
            Ok(Err(_)) => Err(WaitError::Stopped),
            Err(_) => Err(WaitError::Timeout { wanted: position, reached: *self.position.borrow() }),
        }
    }

    /// Wait until the read model has applied everything its stream held when
    /// called (one stream-info round trip to the leader, then
    /// [`RunnerHandle::wait_for`]): for a decision that must see every fact
    /// already stored. If NATS cannot say where the head is, the read model
    /// cannot be shown current either: [`WaitError::Unavailable`].
    pub async fn wait_for_stream_head(&self, timeout: Duration) -> Result<u64, WaitError> {
        // One STREAM.INFO round trip: getting the stream fetches its info.
        let head = async {
            let stream = self.js.get_stream(&self.stream).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(stream.cached_info().state.last_sequence)
        };
        let head = match tokio::time::timeout(timeout, head).await {
            Ok(Ok(head)) => head,
            Ok(Err(e)) => return Err(WaitError::Unavailable(format!("stream {}: {e}", self.stream))),
            Err(_) => return Err(WaitError::Unavailable(format!("stream {}: no answer in {timeout:?}", self.stream))),
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

/// A rebuild in flight: where to answer, and its task, aborted if the runner
/// stops or is killed first.
struct RebuildTask {
    reply: oneshot::Sender<Result<u64, RunnerError>>,
    task: AbortOnDrop<Result<u64, RunnerError>>,
}

pub(super) struct AbortOnDrop<T>(pub(super) JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Clears the runner's stall report however its task ends (stopped, aborted,
/// panicked), so that a dead runner never keeps its service NOT_SERVING.
struct StallReport {
    store: ReadStore,
    name: String,
}

impl Drop for StallReport {
    fn drop(&mut self) {
        self.store.set_stalled(&self.name, None);
        metrics::gauge!("projection_stalled", "projection" => self.name.clone()).set(0.0);
    }
}

/// How long one pull waits; heartbeats come every half of it, and a consumer
/// lost with its node ends the run once two intervals passed without one.
const PULL_EXPIRY: Duration = Duration::from_secs(4);

/// Messages asked for per pull by default ([`RunnerConfig::fetch_batch`]; the
/// next pull goes out at half of it), and the bytes: large enough that catch-up is not bound by round trips to the
/// server, small enough to stay far below the client's slow-consumer limits.
/// The bytes are raised to twice the server's largest message where that is
/// more: a message larger than a pull's byte limit is never delivered.
const FETCH_BATCH: usize = 4096;
const FETCH_BYTES: usize = 8 << 20;

/// How long the server keeps a consumer nobody pulls from: a dropped feed's
/// consumer (a resubscribe, a stopped runner) goes after this. A batch held up
/// in the database longer than this loses its consumer, and the run
/// resubscribes from the stored position (a rebuild's replay from where it
/// got to). Feeds do not delete their consumer on drop: in the one suite run
/// that tried it, the cluster test's resubscribe after a leader kill timed out
/// creating its consumer twice (that was [`create_consumer`]'s dead peer,
/// not the deletes; they stay out all the same).
const CONSUMER_INACTIVE: Duration = Duration::from_secs(30);

/// How long a try at creating the feed's consumer may take: a creation
/// answers in milliseconds, so the first [`CREATE_QUICK_TRIES`] get half a
/// second each; after them a cluster that is merely slow gets twice as long
/// each time, up to the client's own request timeout, for
/// [`CREATE_ATTEMPTS`] tries in all (16 s), and then the run starts over.
const CREATE_TIMEOUT: Duration = Duration::from_millis(500);
const CREATE_QUICK_TRIES: u32 = 8;
const CREATE_ATTEMPTS: u32 = 12;

fn create_timeout(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(CREATE_QUICK_TRIES).min(4);
    CREATE_TIMEOUT.saturating_mul(1 << doublings).min(Duration::from_secs(5))
}

/// Create the feed's consumer, trying again at once when a try times out.
///
/// On a cluster the server places an R1 consumer on a peer of the stream's
/// group drawn at random from those it believes alive, and it learns that a
/// SIGKILLed node is gone only when the node's heartbeats have been missing
/// for minutes (nats-server `checkRemoteServers`, five 30 s intervals). Until
/// then one create in three lands on the dead peer and waits out the whole
/// request timeout: with the runner's pause between runs the read model stood
/// still for 20 s and more after a node died. Each try draws a peer anew.
/// Each try names its consumer (`<projection>-<uuid>`), and a try given up
/// on is deleted behind it, so a cluster that is merely slow is not left
/// with a consumer per try (one the server makes after the delete goes with
/// its inactivity threshold). A failure that came back at once (no
/// responders, the cluster electing) waits a little before the next try.
async fn create_consumer(
    stream: &jetstream::stream::Stream,
    projection: &str,
    config: pull::Config,
) -> Result<jetstream::consumer::Consumer<pull::Config>, RunnerError> {
    let prefix: String =
        projection.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    let mut attempt = 1;
    loop {
        let timeout = create_timeout(attempt);
        let name = format!("{prefix}-{}", uuid::Uuid::now_v7().simple());
        let config = pull::Config { name: Some(name.clone()), ..config.clone() };
        let began = tokio::time::Instant::now();
        let error = match tokio::time::timeout(timeout, stream.create_consumer(config)).await {
            Ok(Ok(consumer)) => return Ok(consumer),
            Ok(Err(e)) if retryable(&e) => e.to_string(),
            Ok(Err(e)) => return Err(nats(e)),
            Err(_) => {
                let stream = stream.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(10), stream.delete_consumer(&name)).await;
                });
                format!("no answer in {timeout:?}")
            }
        };
        if attempt == CREATE_ATTEMPTS {
            return Err(nats(format!("creating the consumer: {error} ({attempt} tries)")));
        }
        debug!(attempt, error, "creating the consumer failed; trying again (a peer may be dead)");
        if began.elapsed() < Duration::from_millis(100) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        attempt += 1;
    }
}

/// A failed create worth another try: no answer, no responders, or the
/// cluster without a leader for the moment.
fn retryable(e: &jetstream::stream::ConsumerError) -> bool {
    use jetstream::stream::ConsumerErrorKind;
    match e.kind() {
        ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request => true,
        ConsumerErrorKind::JetStream(j) => j.error_code() == jetstream::ErrorCode::CLUSTER_NOT_AVAILABLE,
        _ => false,
    }
}

/// Resubscribing this many times in a row at one position, without applying
/// anything, means the stream lacks the next commit: stall and say so.
const RESUBSCRIBES_BEFORE_STALL: u32 = 3;

/// How long a range read under the live lock (a rebuild's swap) may take
/// before the swap rolls back and catches up outside the lock instead.
const LOCKED_READ_LIMIT: Duration = Duration::from_secs(10);

async fn run<P: Projection>(
    inner: Arc<Inner<P>>,
    mut position: u64,
    position_tx: watch::Sender<u64>,
    mut control: mpsc::Receiver<Control>,
) {
    let _report = StallReport { store: inner.store.clone(), name: inner.name.clone() };
    let mut rebuild = None;
    let mut resubscribes = (position, 0u32);
    loop {
        // Stopped while failing: a consume that fails before it listens for
        // control messages (a stall) would otherwise never see the stop.
        if control.is_closed() {
            return;
        }
        match inner.consume(&mut position, &position_tx, &mut control, &mut rebuild).await {
            Ok(Flow::Stop) => return,
            Ok(Flow::Resubscribe) => {
                metrics::counter!("projection_resubscribes_total", "projection" => inner.name.clone()).increment(1);
                resubscribes = if resubscribes.0 == position { (position, resubscribes.1 + 1) } else { (position, 1) };
                if resubscribes.1 >= RESUBSCRIBES_BEFORE_STALL {
                    inner.stall(&RunnerError::Missing(position + 1));
                }
                tokio::time::sleep(inner.config.retry_backoff.saturating_mul(resubscribes.1.min(20))).await;
            }
            Err(RunnerError::CheckpointBehind { stored, delivered }) => {
                error!(projection = %inner.name, stored, delivered, "the stored position moved back; carrying on from it");
                position = stored;
                position_tx.send_replace(stored);
                continue;
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
    pub(super) fn stall(&self, e: &RunnerError) {
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
    }

    /// While stalled with nothing left to apply (another replica, or a swap,
    /// applied it), a batch never comes to prove the database works again: ask
    /// it directly — lock the checkpoint, and compare with the stream's head.
    async fn stalled_but_current(&self) -> Result<bool, RunnerError> {
        let mut tx = self.store.pool().begin().await?;
        let applied = lock_position(&mut tx, &self.name).await?;
        tx.commit().await?;
        let mut stream = self.js.get_stream(&self.config.stream).await.map_err(nats)?;
        let head = stream.info().await.map_err(nats)?.state.last_sequence;
        Ok(applied >= head)
    }

    /// Compare the live tables' recorded schema with this build's (recording
    /// it on first start): `true` when this build's is newer and the tables
    /// must be rebuilt; an error when this build must not write into them.
    async fn schema_needs_rebuild(&self) -> Result<bool, RunnerError> {
        let mut tx = self.store.begin_write().await?;
        record_schema(&mut tx, &self.name, &self.schema, true).await?;
        let stored = stored_schema(&mut tx, &self.name).await?;
        tx.commit().await?;
        match stored {
            Some(stored) if stored.version < self.schema.version => {
                info!(projection = %self.name, from = stored.version, to = self.schema.version,
                      "the projection's tables are from an older version; rebuilding them");
                Ok(true)
            }
            Some(stored) => self.schema_writable(&stored).map(|()| false),
            None => Ok(false),
        }
    }

    /// Inside a transaction that holds `checkpoint`'s lock: refuse to write
    /// into the live tables if a newer replica rebuilt them under this one.
    pub(super) async fn check_live_schema(
        &self,
        tx: &mut sqlx::AnyConnection,
        checkpoint: &str,
    ) -> Result<(), RunnerError> {
        if checkpoint == self.name
            && let Some(stored) = stored_schema(tx, checkpoint).await?
        {
            self.schema_writable(&stored)?;
        }
        Ok(())
    }

    /// Whether this build may write into live tables built with `stored`.
    pub(super) fn schema_writable(&self, stored: &Schema) -> Result<(), RunnerError> {
        if stored.version > self.schema.version {
            return Err(RunnerError::Schema(format!(
                "projection {} tables are at version {}, newer than this build's {}: upgrade this replica",
                self.name, stored.version, self.schema.version
            )));
        }
        if stored.hash != self.schema.hash && !self.projection.rebuildable() {
            return Err(RunnerError::Schema(format!(
                "reactor {} table definitions differ from the database's: a reactor is never rebuilt, \
                 so migrate its tables by hand",
                self.name
            )));
        }
        if stored.version == self.schema.version && stored.hash != self.schema.hash {
            return Err(RunnerError::Schema(format!(
                "projection {} table definitions differ from the database's at the same version {}: \
                 raise Projection::version so the tables are rebuilt",
                self.name, stored.version
            )));
        }
        Ok(())
    }

    fn rebuilding_reason(&self) -> String {
        format!("rebuilding its tables for version {} before serving them", self.schema.version)
    }

    /// Run (or wait for) a rebuild because the schema changed, serving control
    /// messages meanwhile. `Some(flow)` to leave consume; `None` once the
    /// rebuild has finished (check the schema again).
    async fn rebuild_for_schema(
        self: &Arc<Self>,
        control: &mut mpsc::Receiver<Control>,
        rebuild: &mut Option<RebuildTask>,
    ) -> Result<Option<Flow>, RunnerError> {
        if rebuild.is_none() {
            let (reply, _) = oneshot::channel();
            let this = Arc::clone(self);
            let task = AbortOnDrop(tokio::spawn(async move { this.rebuild().await }));
            *rebuild = Some(RebuildTask { reply, task });
        }
        // Until the rebuilt tables are swapped in, the live ones are an older
        // version's: this build's queries must not be answered from them, so
        // the service reports NOT_SERVING (older replicas go on serving).
        self.store.set_stalled(&self.name, Some(self.rebuilding_reason()));
        // The marker stays after a failure — another replica's rebuild
        // holding the claim (RebuildRunning), a fault — and is cleared only
        // once the tables are this build's (`consume`, past the check).
        self.await_schema_rebuild(control, rebuild).await
    }

    async fn await_schema_rebuild(
        self: &Arc<Self>,
        control: &mut mpsc::Receiver<Control>,
        rebuild: &mut Option<RebuildTask>,
    ) -> Result<Option<Flow>, RunnerError> {
        loop {
            tokio::select! {
                message = control.recv() => match message {
                    None => return Ok(Some(Flow::Stop)),
                    Some(Control::Rebuild(reply)) => {
                        let _ = reply.send(Err(RunnerError::RebuildRunning));
                    }
                    Some(Control::ReplayParked(reply)) => {
                        let _ = reply.send(Err(RunnerError::RebuildRunning));
                    }
                    Some(Control::Parked(reply)) => {
                        let _ = reply.send(parked::list(&self.store, &self.name).await.map_err(RunnerError::from));
                    }
                },
                built = async { match rebuild.as_mut() { Some(r) => (&mut r.task.0).await, None => std::future::pending().await } } => {
                    let Some(RebuildTask { reply, .. }) = rebuild.take() else { continue };
                    let built = built.unwrap_or_else(|e| Err(RunnerError::Nats(format!("rebuild task failed: {e}"))));
                    // An operator's rebuild answers the operator; this one's
                    // failure (another replica rebuilding, say) is retried.
                    return match reply.send(built) {
                        Ok(()) | Err(Ok(_)) => Ok(None),
                        Err(Err(e)) => Err(e),
                    };
                },
            }
        }
    }

    /// Whether the stream holds commits after `position`. Unknown (NATS not
    /// answering within a second: reconnecting, or between leaders) is "no";
    /// the next check asks again. It must not hold the loop for a request
    /// timeout.
    async fn commits_waiting(&self, position: u64) -> bool {
        let ask = async {
            let mut stream = self.js.get_stream(&self.config.stream).await.ok()?;
            stream.info().await.ok().map(|info| info.state.last_sequence > position)
        };
        matches!(tokio::time::timeout(Duration::from_secs(1), ask).await, Ok(Some(true)))
    }

    async fn consume(
        self: &Arc<Self>,
        position: &mut u64,
        position_tx: &watch::Sender<u64>,
        control: &mut mpsc::Receiver<Control>,
        rebuild: &mut Option<RebuildTask>,
    ) -> Result<Flow, RunnerError> {
        // Tables built by an older version are rebuilt (into shadow tables,
        // swapped in) before anything is applied to them live.
        while self.schema_needs_rebuild().await? {
            if let Some(flow) = self.rebuild_for_schema(control, rebuild).await? {
                return Ok(flow);
            }
            let stored = self.store.position(&self.name).await?;
            if stored > *position {
                *position = stored;
                position_tx.send_replace(stored);
            }
        }
        if !self.stalled.load(Ordering::Relaxed) {
            // The tables are this build's: whatever rebuild marker was set
            // (ours, or while another replica's ran) no longer holds.
            self.store.set_stalled(&self.name, None);
        }
        let mut feed = self.subscribe(*position).await?;
        if self.stalled.load(Ordering::Relaxed) && self.stalled_but_current().await? {
            self.progressed();
        }
        let mut idle = tokio::time::interval(self.config.idle_check);
        idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        idle.reset();
        let mut delivered_since_check = false;
        loop {
            tokio::select! {
                _ = idle.tick() => {
                    if !std::mem::take(&mut delivered_since_check) && self.commits_waiting(*position).await {
                        warn!(projection = %self.name, position = *position,
                              "nothing delivered while the stream has more; resubscribing");
                        return Ok(Flow::Resubscribe);
                    }
                }
                message = control.recv() => match message {
                    None => return Ok(Flow::Stop),
                    Some(Control::Rebuild(reply)) => {
                        if rebuild.is_some() {
                            let _ = reply.send(Err(RunnerError::RebuildRunning));
                            continue;
                        }
                        let this = Arc::clone(self);
                        let task = AbortOnDrop(tokio::spawn(async move { this.rebuild().await }));
                        *rebuild = Some(RebuildTask { reply, task });
                    }
                    Some(Control::ReplayParked(reply)) => {
                        let _ = reply.send(self.replay_parked().await);
                    }
                    Some(Control::Parked(reply)) => {
                        let _ = reply.send(parked::list(&self.store, &self.name).await.map_err(RunnerError::from));
                    }
                },
                built = async { match rebuild.as_mut() { Some(r) => (&mut r.task.0).await, None => std::future::pending().await } } => {
                    let Some(RebuildTask { reply, .. }) = rebuild.take() else { continue };
                    let _ = reply.send(built.unwrap_or_else(|e| Err(RunnerError::Nats(format!("rebuild task failed: {e}")))));
                },
                run = feed.next(u64::MAX) => {
                    let run = run?;
                    delivered_since_check = true;
                    if !run.commits.is_empty() {
                        let reached = self.apply_batch(Tables::Live, &self.name, &run.commits).await?;
                        self.progressed();
                        *position = reached;
                        position_tx.send_replace(reached);
                        metrics::gauge!("projection_position", "projection" => self.name.clone()).set(reached as f64);
                        metrics::gauge!("projection_lag", "projection" => self.name.clone()).set(run.pending as f64);
                        metrics::counter!("projection_commits_total", "projection" => self.name.clone()).increment(run.commits.len() as u64);
                    }
                    if let Some(delivered) = run.gap {
                        warn!(projection = %self.name, position = *position, delivered,
                              "delivery is not contiguous with the position; resubscribing from it");
                        return Ok(Flow::Resubscribe);
                    }
                }
            }
        }
    }

    /// The commits after `position`, from a consumer of our own: an ephemeral
    /// pull consumer (in memory, no acks) asked for `fetch_batch` messages at a
    /// time. Recovery is the feed's, not the client's: contiguity is checked
    /// here, and an error (a missed heartbeat when the consumer's node died,
    /// the consumer deleted) ends the run, which resubscribes from the stored
    /// position. async-nats' ordered consumer pulls 500 at a time whatever it
    /// is asked, which bounded catch-up at its round trips.
    pub(super) async fn subscribe(&self, position: u64) -> Result<Feed, RunnerError> {
        let stream = self.js.get_stream(&self.config.stream).await.map_err(nats)?;
        let deliver_policy = if position == 0 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence { start_sequence: position + 1 }
        };
        let config = pull::Config {
            deliver_policy,
            ack_policy: AckPolicy::None,
            memory_storage: true,
            // Removed by the server once no pull came for this long (the feed
            // was dropped, or its client is gone).
            inactive_threshold: CONSUMER_INACTIVE,
            ..Default::default()
        };
        let consumer = create_consumer(&stream, &self.name, config).await?;
        let fetch_bytes = FETCH_BYTES.max(2 * self.js.client().server_info().max_payload);
        // A short pull expiry makes the server send idle heartbeats every
        // expiry/2; a missed one ends the run. With the defaults (30 s expiry,
        // 15 s heartbeats) a projection whose consumer lived on a killed node
        // stood still for 30 s.
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.config.fetch_batch.max(1))
            .max_bytes_per_batch(fetch_bytes)
            .expires(PULL_EXPIRY)
            .heartbeat(PULL_EXPIRY / 2)
            .messages()
            .await
            .map_err(nats)?;
        let limits = ReadAhead {
            size: self.config.batch_size,
            wait: self.config.batch_wait,
            bytes: self.config.read_ahead_bytes,
        };
        Ok(Feed::read_ahead(messages, position + 1, limits, self.projection.unknown_events()))
    }

    /// The commits after `from` up to and including `until`, contiguous, read
    /// while the caller holds the live lock (a rebuild's swap): one try,
    /// within [`LOCKED_READ_LIMIT`]. Anything else — the feed failing, a gap,
    /// the time running out — is [`RunnerError::Nats`]: the swap rolls back,
    /// lets the live runners go on, and catches up outside the lock, where a
    /// gap that persists is found to be final. Retrying here held every live
    /// runner of the projection for as long as the retries took.
    pub(super) async fn read_range(&self, from: u64, until: u64) -> Result<Vec<Delivered>, RunnerError> {
        let read = async {
            let mut out: Vec<Delivered> = Vec::new();
            let mut feed = self.subscribe(from).await?;
            while from + (out.len() as u64) < until {
                let run = feed.next(until).await?;
                out.extend(run.commits);
                if let Some(delivered) = run.gap {
                    return Err(nats(format!(
                        "commit {} delivered after {} while reading under the live lock",
                        delivered,
                        from + out.len() as u64
                    )));
                }
            }
            Ok(out)
        };
        match tokio::time::timeout(LOCKED_READ_LIMIT, read).await {
            Ok(read) => read,
            Err(_) => Err(nats(format!("commits {from}..={until} not read within {LOCKED_READ_LIMIT:?}"))),
        }
    }

    /// Apply commits after `from` up to `until` into `tables`, batch by batch;
    /// a rebuild (`rebuild_owner`) heartbeats after each. The environment
    /// failing (NATS between leaders or restarting, the database down or
    /// read-only) is ridden out, as the live runner rides it out: backing off
    /// and carrying on from the position reached, without limit, so that a
    /// rebuild is not thrown away and started again from zero. A rebuild stops
    /// once another took over its claim; a commit missing from the stream
    /// (seen at one position [`RESUBSCRIBES_BEFORE_STALL`] times) is final. A
    /// commit from a newer build ends the catch-up short of `until`, at the
    /// position before it, with the reason ([`CaughtUp::newer`]): this build
    /// can go no further, and what it applied stands.
    pub(super) async fn catch_up(
        &self,
        tables: Tables,
        checkpoint: &str,
        from: u64,
        until: u64,
        rebuild_owner: Option<&str>,
    ) -> Result<CaughtUp, RunnerError> {
        let mut position = from;
        let mut failures: u32 = 0;
        let mut gaps = (position, 0u32);
        while position < until {
            let reached = position;
            match self.catch_up_once(tables, checkpoint, &mut position, until, rebuild_owner).await {
                Ok(()) => {}
                Err(RunnerError::Missing(at)) => {
                    gaps = if gaps.0 == position { (position, gaps.1 + 1) } else { (position, 1) };
                    if gaps.1 >= RESUBSCRIBES_BEFORE_STALL {
                        return Err(RunnerError::Missing(at));
                    }
                    tokio::time::sleep(self.config.retry_backoff.saturating_mul(gaps.1)).await;
                }
                Err(e) if e.environmental() => {
                    failures = if position > reached { 1 } else { failures + 1 };
                    metrics::counter!("projection_catch_up_interruptions_total", "projection" => self.name.clone())
                        .increment(1);
                    warn!(projection = %self.name, checkpoint, position, failures, error = %e,
                          "catch-up interrupted; retrying from the position reached");
                    let pause = self.config.retry_backoff.saturating_mul(1 << failures.min(10));
                    tokio::time::sleep(pause.min(self.config.max_stall_backoff)).await;
                    // Still ours? (A database still down answers later.)
                    if let Some(owner) = rebuild_owner
                        && let Err(RunnerError::RebuildLost) = self.heartbeat(owner).await
                    {
                        return Err(RunnerError::RebuildLost);
                    }
                }
                Err(RunnerError::NewerData(why)) => {
                    // The commits before it in its batch were applied one at a
                    // time, past `position`: report where the checkpoint is.
                    let stored = self.store.position(checkpoint).await.unwrap_or(position);
                    return Ok(CaughtUp { position: position.max(stored), newer: Some(why) });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(CaughtUp { position, newer: None })
    }

    /// One feed's worth of [`Inner::catch_up`]: until `until`, an error, or a
    /// gap (reported as [`RunnerError::Missing`]).
    async fn catch_up_once(
        &self,
        tables: Tables,
        checkpoint: &str,
        position: &mut u64,
        until: u64,
        rebuild_owner: Option<&str>,
    ) -> Result<(), RunnerError> {
        let mut feed = self.subscribe(*position).await?;
        while *position < until {
            let run = feed.next(until).await?;
            if !run.commits.is_empty() {
                *position = self.apply_batch(tables, checkpoint, &run.commits).await?;
                if let Some(owner) = rebuild_owner {
                    self.heartbeat(owner).await?;
                }
            }
            if run.gap.is_some() {
                return Err(RunnerError::Missing(*position + 1));
            }
        }
        Ok(())
    }

    /// Apply a contiguous run of commits under `checkpoint`'s lock; returns the
    /// position reached (which may be past the batch if another runner applied more).
    pub(super) async fn apply_batch(
        &self,
        tables: Tables,
        checkpoint: &str,
        commits: &[Delivered],
    ) -> Result<u64, RunnerError> {
        let (Some(first), Some(last)) = (commits.first().map(|c| c.sequence), commits.last().map(|c| c.sequence))
        else {
            return Ok(0);
        };
        let span = info_span!("projection.batch", projection = %self.name, commits = commits.len(), last);
        let fast = async {
            let mut tx = self.store.pool().begin().await?;
            // Another runner of this projection may have applied some already.
            let applied = lock_position(&mut tx, checkpoint).await?;
            // Refuse to write into live tables a newer replica rebuilt under
            // this one (see check_live_schema), and learn which aggregates
            // wait behind a parked commit: one round trip for both.
            let schema_of = (tables.is_live() && checkpoint == self.name).then_some(checkpoint);
            let (stored, blocked) = batch_context(&mut tx, schema_of, checkpoint).await?;
            if let Some(stored) = stored {
                self.schema_writable(&stored)?;
            }
            if applied >= last {
                tx.commit().await?;
                return Ok(Some((applied, Vec::new())));
            }
            if applied + 1 < first {
                return Err(RunnerError::CheckpointBehind { stored: applied, delivered: first });
            }
            let Some(letters) = self.apply_in(&mut tx, tables, checkpoint, &blocked, commits, applied).await? else {
                return Ok(None);
            };
            set_position(&mut tx, checkpoint, &self.config.stream, last).await?;
            match tx.commit().await {
                Ok(()) => Ok(Some((last, letters))),
                // A deferred constraint refused the batch at COMMIT: find which commit.
                Err(e) if is_poison_db_error(&e) => Ok(None),
                Err(e) => Err(e.into()),
            }
        }
        .instrument(span)
        .await?;
        if let Some((reached, letters)) = fast {
            self.untrip(checkpoint);
            self.log_dead_letters(letters).await;
            return Ok(reached);
        }
        for c in commits {
            self.apply_or_park(tables, checkpoint, c).await?;
        }
        Ok(last)
    }

    /// Apply the commits after `applied` inside `tx`; a commit of an aggregate
    /// with a parked commit (`blocked`: subject → earliest parked sequence) is
    /// parked behind it. `None` (nothing kept) when one of them is poison: the
    /// caller rolls back and goes one commit at a time. The dead letters to log
    /// once `tx` commits otherwise.
    pub(super) async fn apply_in(
        &self,
        tx: &mut sqlx::AnyConnection,
        tables: Tables,
        checkpoint: &str,
        blocked: &HashMap<String, u64>,
        commits: &[Delivered],
        applied: u64,
    ) -> Result<Option<Vec<DeadLetter>>, RunnerError> {
        let mut letters = Vec::new();
        let mut run = Vec::with_capacity(commits.len());
        for c in commits.iter().filter(|c| c.sequence > applied) {
            if !self.projection.commits_independent()
                && let Some(&first) = blocked.get(&c.subject)
            {
                // Applying it would build on a state the read model never reached.
                let reason = format!("waits behind parked commit {first} of {}", c.subject);
                letters.push(self.park(tx, checkpoint, c, &reason, 0, first).await?);
                continue;
            }
            let Ok(commit) = &c.parsed else { return Ok(None) };
            run.push(commit);
        }
        let span = info_span!("projection.apply_batch", projection = %self.name, commits = run.len());
        match self.projection.apply_batch(tx, tables, &run).instrument(span).await {
            Ok(()) => Ok(Some(letters)),
            // One at a time instead: poison is parked, and the commits before
            // one from a newer build, or before a reactor's command the store
            // cannot take now, are kept (their commands are not sent again)
            // before stalling at it.
            Err(e) if e.is_poison() || e.is_newer_data() || matches!(e, ApplyError::Unavailable(_)) => Ok(None),
            Err(e) => Err(RunnerError::not_poison(&e)),
        }
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
            self.check_live_schema(&mut tx, checkpoint).await?;
            if !self.projection.commits_independent()
                && let Some(first) = parked::first_parked(&mut tx, checkpoint, &c.subject).await?
            {
                let reason = format!("waits behind parked commit {first} of {}", c.subject);
                let letter = self.park(&mut tx, checkpoint, c, &reason, 0, first).await?;
                set_position(&mut tx, checkpoint, &self.config.stream, c.sequence).await?;
                tx.commit().await?;
                self.log_dead_letters(vec![letter]).await;
                return Ok(());
            }
            let commit = match &c.parsed {
                Ok(commit) => commit,
                Err(e) if e.newer => return Err(RunnerError::NewerData(e.to_string())),
                // Undecodable bytes will not decode on a retry.
                Err(e) => break e.to_string(),
            };
            let outcome = match self.apply_one(&mut tx, tables, commit).await {
                Ok(()) => match set_position(&mut tx, checkpoint, &self.config.stream, c.sequence).await {
                    Ok(()) => tx.commit().await.map_err(ApplyError::from),
                    Err(e) => Err(e.into()),
                },
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => {
                    self.untrip(checkpoint);
                    return Ok(());
                }
                Err(e) if !e.is_poison() => return Err(RunnerError::not_poison(&e)),
                Err(e) => {
                    if attempts >= self.config.max_attempts {
                        break e.to_string();
                    }
                    warn!(projection = %self.name, sequence = c.sequence, attempts, error = %e, "commit failed; retrying");
                    tokio::time::sleep(self.config.retry_backoff * attempts).await;
                }
            }
        };
        let mut tx = self.store.pool().begin().await?;
        if lock_position(&mut tx, checkpoint).await? >= c.sequence {
            tx.commit().await?;
            return Ok(());
        }
        // A rebuild meets again the commits the live tables parked: known
        // poison, not a sign of an outage.
        let known = checkpoint != self.name && parked::is_parked(&mut tx, &self.name, c.sequence).await?;
        if !known {
            self.admit_parking(checkpoint, c.sequence)?;
        }
        let letter = self.park(&mut tx, checkpoint, c, &error, attempts, 0).await?;
        set_position(&mut tx, checkpoint, &self.config.stream, c.sequence).await?;
        tx.commit().await?;
        if !known {
            self.count_parking(checkpoint, c.sequence);
        }
        self.log_dead_letters(vec![letter]).await;
        Ok(())
    }

    /// Refuse to park `sequence` under `checkpoint` when more than the burst
    /// limit of *other* commits were parked there within the window, each
    /// within the span of commits before it: many different commits failing
    /// in a short time and a short stretch of the stream is the environment,
    /// not poison.
    /// Once refused, parking stays refused until a commit applies there again.
    fn admit_parking(&self, checkpoint: &str, sequence: u64) -> Result<(), RunnerError> {
        let Ok(mut breakers) = self.breakers.lock() else { return Ok(()) };
        let b = breakers.entry(checkpoint.to_string()).or_default();
        let (window, span) = (self.config.poison_burst_window, self.config.poison_burst_span);
        b.parked.retain(|(s, t)| t.elapsed() <= window && s.abs_diff(sequence) <= span);
        let others = b.parked.iter().filter(|(s, _)| *s != sequence).count();
        if b.tripped || others >= self.config.poison_burst_limit {
            b.tripped = true;
            return Err(RunnerError::PoisonBurst { count: others, window });
        }
        Ok(())
    }

    /// Count a parking that committed.
    fn count_parking(&self, checkpoint: &str, sequence: u64) {
        if let Ok(mut breakers) = self.breakers.lock() {
            let b = breakers.entry(checkpoint.to_string()).or_default();
            if !b.parked.iter().any(|(s, _)| *s == sequence) {
                b.parked.push_back((sequence, Instant::now()));
            }
        }
    }

    /// A commit applied under `checkpoint`: the environment works.
    fn untrip(&self, checkpoint: &str) {
        if let Ok(mut breakers) = self.breakers.lock()
            && let Some(b) = breakers.get_mut(checkpoint)
        {
            b.tripped = false;
        }
    }

    /// Forget a checkpoint's breaker (a rebuild's, once it ends).
    pub(super) fn forget_breaker(&self, checkpoint: &str) {
        if let Ok(mut breakers) = self.breakers.lock() {
            breakers.remove(checkpoint);
        }
    }
}
