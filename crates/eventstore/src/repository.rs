//! Loading aggregates and executing commands against them.
//!
//! **Execute** = load → `decide` → publish one commit with
//! `Nats-Expected-Last-Subject-Sequence` = the sequence the state was built from.
//! The server enforces that precondition; on a wrong-last-sequence rejection the
//! state is refreshed (only the commits missed are read), the command decided
//! again, with bounded, jittered retries, then [`StoreError::Conflict`].
//!
//! **Idempotency** has two layers. Within the stream's duplicate window the
//! server's `Nats-Msg-Id` dedupe answers `duplicate: true` with the original
//! sequence. After it, the aggregate's remembered recent command ids (kept in
//! [`Loaded::recent`] and in snapshots) find the original commit. Either way the
//! original commit is read back and returned, so a retry gets the same answer.
//!
//! **Loading** never scans the stream. A warm cache, weighed by bytes, holds
//! recent aggregates with their last sequence. A miss reads the last commit on
//! the subject (one direct get) and the snapshot (a KV bucket) in parallel; if
//! the last commit points back at the snapshot, that is all. Otherwise the
//! commits after the snapshot are read in one batched direct get (nats-server
//! 2.11 or later; 512 commits per batch, and past the first batch a newer snapshot is
//! taken if there is one), else walked back along each commit's stored
//! `Nats-Expected-Last-Subject-Sequence`. A snapshot is written when the
//! commits since the last one would make a cold load dear: 8 of them spread
//! over more than 16,384 stream messages, or 128 however close (see
//! [`RepositoryOptions::snapshot_every`]), or, for an aggregate written rarely,
//! the second commit past the snapshot ([`RepositoryOptions::snapshot_gap`]) —
//! after a command or after a load, so
//! a stale, missing or older-version snapshot costs one long load, not every
//! load. A snapshot that is not on the subject's chain is ignored.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishErrorKind, kv, stream::DirectGetErrorKind};
use gridwork_proto::gridwork::eventstore::v1 as pb;
use prost::Message as _;
use rand::Rng as _;
use tracing::{Instrument as _, debug, instrument, warn};

use crate::aggregate::{Aggregate, validate_id};
use crate::command_index::{CommandIndex, CommandTag};
use crate::envelope::{self, CommandMeta, RecordedCommit};
use crate::error::{ExecuteError, StoreError};

mod warm;

/// Tuning for a [`Repository`].
#[derive(Debug, Clone)]
pub struct RepositoryOptions {
    /// How many times a command is decided before giving up with a conflict.
    pub max_attempts: u32,
    /// First back-off after a conflict; doubles, with full jitter.
    pub base_backoff: Duration,
    /// Bytes of aggregate state kept warm (weighed by
    /// [`Aggregate::weight`] plus remembered command ids).
    pub cache_bytes: u64,
    /// Write a snapshot once this many commits were folded since the last
    /// one and they lie spread over more than `snapshot_spread` messages of
    /// the stream (0 = never snapshot). A cold load reads the commits after a
    /// snapshot in one batched get whose cost on the server grows with the
    /// messages it steps over, not with the commits it returns.
    pub snapshot_every: u32,
    /// Stream messages the commits since the last snapshot must span before
    /// `snapshot_every` of them call for a new one.
    pub snapshot_spread: u64,
    /// Write a snapshot after this many commits however close together (a
    /// hot aggregate's commits lie side by side and read cheaply; this bounds
    /// the fold and the batch).
    pub snapshot_every_dense: u32,
    /// An aggregate written rarely — its last commit landed more than this
    /// many stream messages after the one before (0 = no such rule) — is
    /// snapshotted once two commits lie past its snapshot, so that its next
    /// cold load is one round trip: the last commit and a snapshot at it or at
    /// the commit it points back to, read together, instead of a second trip
    /// for the commits after an older snapshot. One commit past a snapshot
    /// costs a cold load nothing (the head's back-pointer meets it), so this
    /// is at most one KV put for every two such commits. Hot aggregates keep
    /// the rules above.
    pub snapshot_gap: u64,
    /// Recent command ids remembered per aggregate (the first idempotency
    /// layer, free of round trips).
    pub remembered_commands: usize,
    /// How long a command id is recognised (with a [`CommandIndex`]); older ids
    /// are refused. Without an index, the stream's duplicate window.
    pub idempotency_horizon: Duration,
    /// How far in the future a command id's UUIDv7 time may lie (client clocks
    /// run fast).
    pub max_clock_skew: Duration,
    /// How long a command waits for a replicated stream to elect a new leader
    /// (a publish nobody answers while the stream exists) before it is answered
    /// UNAVAILABLE. Elections take a few seconds.
    pub leaderless_wait: Duration,
}

impl Default for RepositoryOptions {
    fn default() -> Self {
        Self {
            max_attempts: 12,
            base_backoff: Duration::from_millis(2),
            cache_bytes: 256 << 20,
            snapshot_every: 8,
            snapshot_spread: 16_384,
            snapshot_every_dense: 128,
            snapshot_gap: 2_048,
            remembered_commands: 64,
            idempotency_horizon: Duration::from_secs(7 * 24 * 3600),
            max_clock_skew: Duration::from_secs(300),
            leaderless_wait: Duration::from_secs(10),
        }
    }
}

/// An aggregate's state as of a stream sequence.
#[derive(Debug, Clone)]
pub struct Loaded<A: Aggregate> {
    /// The folded state.
    pub state: A,
    /// Sequence of the last commit folded in; 0 if the aggregate has none.
    pub sequence: u64,
    /// Recent command ids (as tags) and the sequence of their commits,
    /// oldest first.
    pub recent: VecDeque<(CommandTag, u64)>,
    /// `recent` holds every commit of the aggregate (none forgotten yet): a
    /// command id not in it never landed here, and the command index need
    /// not be asked.
    recent_complete: bool,
    /// Commits folded in since the last snapshot.
    commits_since_snapshot: u32,
    /// Where a cold load's read of those commits starts: the last written
    /// snapshot's sequence, or the first commit's when there is none (0 until
    /// then).
    unsnapshotted_from: u64,
    /// The state's [`Aggregate::weight`] when last measured, and the commits
    /// folded since: weighing may encode the whole state, so it is measured
    /// again only every [`REWEIGH_EVERY`] commits, not on every cache insert.
    state_weight: Option<usize>,
    commits_since_weighed: u32,
    /// Stream messages between the last commit folded in and the one before
    /// it (0 for an aggregate's first commit).
    last_gap: u64,
}

/// Commits between two measurements of a cached state's weight.
const REWEIGH_EVERY: u32 = 16;

impl<A: Aggregate> Default for Loaded<A> {
    fn default() -> Self {
        Self {
            state: A::default(),
            sequence: 0,
            recent: VecDeque::new(),
            recent_complete: true,
            commits_since_snapshot: 0,
            unsnapshotted_from: 0,
            state_weight: None,
            commits_since_weighed: 0,
            last_gap: 0,
        }
    }
}

impl<A: Aggregate> Loaded<A> {
    fn apply(&mut self, sequence: u64, command: CommandTag, events: &[A::Event], remember: usize) {
        if self.unsnapshotted_from == 0 {
            self.unsnapshotted_from = sequence; // no snapshot: the read starts at the first commit
        }
        self.state = std::mem::take(&mut self.state).fold(events);
        self.last_gap = if self.sequence == 0 { 0 } else { sequence.saturating_sub(self.sequence) };
        self.sequence = sequence;
        self.recent.push_back((command, sequence));
        while self.recent.len() > remember {
            self.recent.pop_front();
            self.recent_complete = false;
        }
        self.commits_since_snapshot += 1;
        self.commits_since_weighed += 1;
    }

    /// Measure the state's weight if it was never measured or is stale; done
    /// before the state goes into the cache, whose weigher only reads it.
    fn weigh(&mut self) {
        if self.state_weight.is_none() || self.commits_since_weighed >= REWEIGH_EVERY {
            self.state_weight = Some(self.state.weight());
            self.commits_since_weighed = 0;
        }
    }

    /// Into the cache's shared form, weighed.
    fn shared(mut self) -> Arc<Self> {
        self.weigh();
        Arc::new(self)
    }

    /// What the warm cache weighs this entry by, in bytes (roughly).
    fn weight(&self, id: &str) -> u32 {
        let recent = self.recent.len() * std::mem::size_of::<(CommandTag, u64)>();
        let state = self.state_weight.unwrap_or(0);
        u32::try_from(96 + id.len() + state + recent).unwrap_or(u32::MAX)
    }

    /// Whether the commits since the last snapshot call for a new one. Close
    /// commits wait for `snapshot_every_dense` only where a cold load reads
    /// them in one batch (`batched`); where it walks, one request per commit,
    /// every `snapshot_every`.
    fn snapshot_due(&self, options: &RepositoryOptions, batched: bool) -> bool {
        let commits = self.commits_since_snapshot;
        let spread = self.sequence.saturating_sub(self.unsnapshotted_from);
        let dense =
            if batched { options.snapshot_every_dense.max(options.snapshot_every) } else { options.snapshot_every };
        // The head and a snapshot at the commit it points back to load in one
        // round trip: only the second far commit past a snapshot needs one.
        let rare = options.snapshot_gap > 0 && self.last_gap > options.snapshot_gap && commits >= 2;
        options.snapshot_every > 0
            && commits > 0
            && (rare || (commits >= options.snapshot_every && spread > options.snapshot_spread) || commits >= dense)
    }

    fn remembered(&self, command: CommandTag) -> Option<u64> {
        self.recent.iter().rev().find(|(c, _)| *c == command).map(|(_, s)| *s)
    }

    /// The last sequence whose commits this state no longer remembers the
    /// command ids of (everything before its oldest remembered commit), or
    /// `None` if it remembers them all.
    fn forgotten_through(&self) -> Option<u64> {
        if self.recent_complete {
            return None;
        }
        Some(self.recent.front().map_or(self.sequence, |(_, s)| s.saturating_sub(1)))
    }
}

/// What a landed (or replayed) command produced. A response must be a function
/// of this alone, so a retried command answers exactly as the original did.
#[derive(Debug, Clone)]
pub struct CommitOutcome<E> {
    /// Stream sequence of the commit (0 if the command decided nothing).
    pub sequence: u64,
    /// The events of the commit.
    pub events: Vec<E>,
    /// True when this is the remembered result of an earlier identical command.
    pub replayed: bool,
}

/// Loads and executes commands on aggregates of type `A` in one stream.
/// Cheap to clone (one shared handle): clone it into each request.
pub struct Repository<A: Aggregate> {
    shared: Arc<Shared<A>>,
}

struct Shared<A: Aggregate> {
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    snapshots: Option<kv::Store>,
    cache: Arc<warm::Warm<A>>,
    options: RepositoryOptions,
    index: Option<CommandIndex>,
    duplicate_window: Duration,
    client: async_nats::Client,
    stream_name: String,
    /// The server answers batched direct gets (nats-server >= 2.11).
    batched: bool,
    /// The largest snapshot the bucket takes (the server's max_payload, or
    /// the bucket's max value size if smaller): a bigger one is not tried.
    snapshot_limit: usize,
    /// Snapshot writes in flight (see [`SNAPSHOT_PUTS_IN_FLIGHT`]).
    snapshot_puts: Arc<tokio::sync::Semaphore>,
}

/// Snapshot writes allowed in flight at once. They are off the command's path
/// and best effort: when NATS is slow they would pile up as tasks, so one that
/// finds no room is skipped (counted as `reason="busy"`) and the aggregate is
/// snapshotted at a later commit instead.
const SNAPSHOT_PUTS_IN_FLIGHT: usize = 256;

impl<A: Aggregate> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Self { shared: Arc::clone(&self.shared) }
    }
}

impl<A: Aggregate> Repository<A> {
    /// A repository over `stream_name` (already provisioned, see
    /// [`crate::provision::ensure_stream`]). Snapshots go to the KV bucket
    /// `snapshot_bucket` when given.
    pub async fn new(
        js: jetstream::Context,
        stream_name: &str,
        snapshot_bucket: Option<&str>,
        options: RepositoryOptions,
    ) -> Result<Self, StoreError> {
        let stream = js.get_stream(stream_name).await.map_err(unavailable)?;
        let duplicate_window = stream.cached_info().config.duplicate_window;
        let snapshots = match snapshot_bucket {
            Some(b) => Some(js.get_key_value(b).await.map_err(unavailable)?),
            None => None,
        };
        let cache = Arc::new(warm::Warm::new(options.cache_bytes, Duration::from_secs(600)));
        let client = js.client();
        let info = client.server_info();
        let shared = Shared {
            batched: crate::direct::server_supports_batches(&info.version),
            snapshot_limit: snapshots.as_ref().map_or(info.max_payload, |kv| {
                // A KV put carries no headers: the value is the whole message.
                let cap = kv.stream.cached_info().config.max_message_size;
                usize::try_from(cap).map_or(info.max_payload, |cap| cap.min(info.max_payload))
            }),
            snapshot_puts: Arc::new(tokio::sync::Semaphore::new(SNAPSHOT_PUTS_IN_FLIGHT)),
            client,
            stream_name: stream_name.to_string(),
            js,
            stream,
            snapshots,
            cache,
            options,
            index: None,
            duplicate_window,
        };
        Ok(Self { shared: Arc::new(shared) })
    }

    /// Recognise command ids for [`RepositoryOptions::idempotency_horizon`]
    /// through `index` (see [`crate::command_index`]).
    pub fn with_command_index(self, index: CommandIndex) -> Self {
        let s = &self.shared;
        let shared = Shared {
            js: s.js.clone(),
            stream: s.stream.clone(),
            snapshots: s.snapshots.clone(),
            cache: Arc::clone(&s.cache),
            options: s.options.clone(),
            index: Some(index),
            duplicate_window: s.duplicate_window,
            client: s.client.clone(),
            stream_name: s.stream_name.clone(),
            batched: s.batched,
            snapshot_limit: s.snapshot_limit,
            snapshot_puts: Arc::clone(&s.snapshot_puts),
        };
        Self { shared: Arc::new(shared) }
    }

    /// Refuse a command id outside the horizon. Returns its age in
    /// milliseconds where it has one (a UUIDv7), compared with the wall clock
    /// as the server's duplicate window is (not the injected domain clock);
    /// `None` for an id without a time (a process manager's derived id).
    fn command_age(&self, command_id: &str) -> Result<Option<i64>, StoreError> {
        let Some(issued) = crate::command_index::issued_at_ms(command_id) else {
            return Ok(None);
        };
        let age = crate::projection::store::now_ms() - issued;
        if age < -(self.shared.options.max_clock_skew.as_millis() as i64) {
            return Err(StoreError::InvalidCommandId(format!(
                "issued {} s in the future; check the client's clock",
                -age / 1000
            )));
        }
        let horizon = if self.shared.index.is_some() {
            self.shared.options.idempotency_horizon
        } else {
            self.shared.duplicate_window
        };
        if age > horizon.as_millis() as i64 {
            return Err(StoreError::CommandTooOld {
                command_id: command_id.to_string(),
                age_s: age / 1000,
                horizon_s: horizon.as_secs() as i64,
            });
        }
        Ok(Some(age))
    }

    /// Ask the command index (layer 3) for a command id `loaded` does not
    /// remember: only when the aggregate has forgotten ids, and for a UUIDv7
    /// only once the server's window may have let it go (younger than half
    /// of it, a retry is the server's to catch). A derived id has no age, so
    /// it is asked whenever ids were forgotten.
    async fn ask_index(
        &self,
        subject: &str,
        command_id: &str,
        loaded: &Loaded<A>,
        age: Option<i64>,
    ) -> Result<Option<u64>, StoreError> {
        let Some(index) = &self.shared.index else { return Ok(None) };
        let Some(through) = loaded.forgotten_through() else { return Ok(None) };
        if age.is_some_and(|age| age <= self.shared.duplicate_window.as_millis() as i64 / 2) {
            return Ok(None);
        }
        index.find_through(subject, command_id, through).await
    }

    /// Forget every cached aggregate (benchmarks measure the cold path with it).
    pub fn clear_cache(&self) {
        self.shared.cache.clear();
    }

    /// Bytes the warm cache holds now, as weighed against
    /// [`RepositoryOptions::cache_bytes`].
    pub fn cache_weight(&self) -> u64 {
        self.shared.cache.weighed_bytes()
    }

    /// The aggregate's current state, from the cache or cold.
    #[instrument(skip(self), fields(aggregate = A::TYPE))]
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, StoreError> {
        Ok(Arc::unwrap_or_clone(self.load_shared(id).await?))
    }

    /// The cached state itself, shared: what a command decides on (it is
    /// copied only when the command's commit lands and its events are folded),
    /// and what a read that only looks takes instead of [`Repository::load`]'s
    /// copy (a busy zone's or the catalogue's state is large).
    pub async fn load_shared(&self, id: &str) -> Result<Arc<Loaded<A>>, StoreError> {
        check_id(id)?;
        if let Some(warm) = self.shared.cache.get(id) {
            return Ok(warm);
        }
        let started = Instant::now();
        let loaded = self.load_cold(id).await?.shared();
        metrics::histogram!("eventstore_cold_load_seconds", "aggregate" => A::TYPE)
            .record(started.elapsed().as_secs_f64());
        Ok(self.shared.cache.offer(id, loaded))
    }

    /// The aggregate's current state: the warm copy if the leader's head for
    /// the subject is still where it was built, else brought up to it. One
    /// round trip to the stream leader on top of [`Repository::load`]; for reads
    /// that must not answer from a stale replica's cache.
    #[instrument(skip(self), fields(aggregate = A::TYPE))]
    pub async fn load_current(&self, id: &str) -> Result<Loaded<A>, StoreError> {
        Ok(Arc::unwrap_or_clone(self.load_current_shared(id).await?))
    }

    /// [`Repository::load_current`] without the copy, for a read that only
    /// looks (a popular original's state, with its me-toos' accounts, is large).
    pub async fn load_current_shared(&self, id: &str) -> Result<Arc<Loaded<A>>, StoreError> {
        check_id(id)?;
        let stale = match self.shared.cache.get(id) {
            Some(warm) => warm,
            // A cold load reads any replica; make sure it is the leader's head.
            None => {
                let cold = self.load_cold(id).await?.shared();
                self.shared.cache.offer(id, cold)
            }
        };
        self.refresh(id, stale).await
    }

    /// Read the aggregate from NATS without the cache: snapshot + back-pointer walk.
    pub async fn load_cold(&self, id: &str) -> Result<Loaded<A>, StoreError> {
        check_id(id)?;
        let subject = envelope::subject::<A>(id);
        // The head first: most cold loads are of a new id (a report's, a
        // command's), which has no snapshot to read either.
        let Some(last) = self.last_commit(&subject, Read::Any).await? else {
            return Ok(Loaded::default());
        };
        let base = self.read_snapshot(id).await.unwrap_or_default();
        // A snapshot past the head we read: that replica may lag the one the
        // snapshot was written from. Ask the leader before doubting it.
        let last = match base.sequence > last.sequence {
            true => self.last_commit(&subject, Read::Leader).await?.unwrap_or(last),
            false => last,
        };
        let mut loaded = self.catch_up(id, base, last).await?;
        // A long walk (a stale, missing, oversized or older-version snapshot)
        // leaves a snapshot behind, so the next cold load is short.
        self.maybe_snapshot(id, &mut loaded);
        Ok(loaded)
    }

    /// Fold the commits between `base.sequence` and `head` (and any the
    /// server has after it). One commit behind costs nothing more; a longer gap
    /// is read in batches from `base`, and when it is longer than a batch, from
    /// a newer snapshot if there is one. What a batch cannot give (a lagging
    /// replica, an older server) is walked back from `head` one commit at a
    /// time, the leader answering what a replica lacks.
    async fn catch_up(&self, id: &str, base: Loaded<A>, head: RecordedCommit) -> Result<Loaded<A>, StoreError> {
        if head.sequence == base.sequence {
            return Ok(base);
        }
        let mut loaded = base;
        if loaded.sequence > head.sequence {
            // A snapshot from past the head (a recreated stream, say) cannot
            // be checked against the chain: never trust it.
            warn!(base = loaded.sequence, head = head.sequence, "snapshot is past the head; ignoring it");
            loaded = Loaded::default();
        }
        if head.previous == loaded.sequence {
            self.fold(&mut loaded, &head)?;
            return Ok(loaded);
        }
        if self.shared.batched {
            match self.read_forwards(id, loaded.clone(), &head).await {
                Ok(read) if read.sequence >= head.sequence => return Ok(read),
                // A replica that lags: walk back from the head to what it gave.
                Ok(read) => loaded = read,
                Err(e) => {
                    // A replica that cannot batch (an older server in a mixed
                    // cluster) or a batch that failed: walk instead.
                    debug!(error = %e, "batched read failed; walking back from the head");
                    metrics::counter!("eventstore_batched_read_failures_total", "aggregate" => A::TYPE).increment(1);
                }
            }
        }
        self.walk(id, loaded, head).await
    }

    /// Read the subject's commits after `base` forwards in batches until
    /// `head` (or as far as the answering replica has them), checking each
    /// points back at the one before. Past the first batch, a newer snapshot
    /// is taken once if there is one. A base that is not on the chain is
    /// dropped: the read goes back to the state before a snapshot it jumped
    /// to, or to the first commit; snapshots are not used again in this read,
    /// so it ends.
    async fn read_forwards(&self, id: &str, base: Loaded<A>, head: &RecordedCommit) -> Result<Loaded<A>, StoreError> {
        let mut loaded = base;
        let mut snapshots = true;
        let mut before_jump: Option<Loaded<A>> = None;
        while loaded.sequence < head.sequence {
            let batch = crate::direct::commits_after(
                &self.shared.client,
                &self.shared.stream_name,
                &head.subject,
                loaded.sequence,
                BATCH_LIMIT,
            )
            .await?;
            metrics::counter!("eventstore_batched_reads_total", "aggregate" => A::TYPE).increment(1);
            let progressed = !batch.commits.is_empty();
            let mut off_chain = false;
            for commit in &batch.commits {
                if commit.previous < loaded.sequence {
                    // The first commit after the base does not point back at
                    // it: the base is not on this subject's chain.
                    off_chain = true;
                    break;
                }
                if commit.previous > loaded.sequence {
                    return Err(missing_link(commit, loaded.sequence));
                }
                self.fold(&mut loaded, commit)?;
            }
            if off_chain {
                warn!(base = loaded.sequence, "snapshot not on the commit chain; ignoring it");
                loaded = before_jump.take().unwrap_or_default();
                snapshots = false;
                continue;
            }
            if loaded.sequence >= head.sequence || batch.pending == 0 || !progressed {
                break;
            }
            // More than a batch behind: a snapshot past here saves reading the
            // rest (a warm state that went stale, a snapshot left unwritten).
            if std::mem::take(&mut snapshots)
                && let Some(snapshot) = self.read_snapshot(id).await
                && snapshot.sequence > loaded.sequence
                && snapshot.sequence <= head.sequence
            {
                before_jump = Some(std::mem::replace(&mut loaded, snapshot));
            }
        }
        Ok(loaded)
    }

    /// Walk back from `head` along the back-pointers to `base`, one direct get
    /// per commit, then fold forwards.
    async fn walk(&self, id: &str, base: Loaded<A>, head: RecordedCommit) -> Result<Loaded<A>, StoreError> {
        let mut chain = vec![head];
        loop {
            let previous = chain.last().map_or(0, |c| c.previous);
            if previous == base.sequence {
                break;
            }
            if previous < base.sequence {
                warn!(base = base.sequence, "snapshot not on the commit chain; ignoring it");
                return Box::pin(self.walk(id, Loaded::default(), chain.swap_remove(0))).await;
            }
            chain.push(self.commit_at(previous).await?);
        }
        metrics::counter!("eventstore_walked_commits_total", "aggregate" => A::TYPE).increment(chain.len() as u64);
        let mut loaded = base;
        for commit in chain.iter().rev() {
            self.fold(&mut loaded, commit)?;
        }
        Ok(loaded)
    }

    fn fold(&self, loaded: &mut Loaded<A>, commit: &RecordedCommit) -> Result<(), StoreError> {
        let events = commit.decode_events::<A::Event>()?;
        loaded.apply(
            commit.sequence,
            CommandTag::of(commit.command_id()),
            &events,
            self.shared.options.remembered_commands,
        );
        Ok(())
    }

    /// Bring a possibly stale state up to the subject's head, read from the
    /// leader (a follower's head may be the very state the server just refused).
    async fn refresh(&self, id: &str, stale: Arc<Loaded<A>>) -> Result<Arc<Loaded<A>>, StoreError> {
        let subject = envelope::subject::<A>(id);
        let stale_sequence = stale.sequence;
        let head = self.last_commit(&subject, Read::Leader).await?;
        let head_sequence = head.as_ref().map_or(0, |h| h.sequence);
        if head_sequence == stale_sequence {
            // Still the head: the copy in hand is current, and is not copied.
            return Ok(stale);
        }
        let mut loaded = match head {
            None => Loaded::default(),
            Some(head) => self.catch_up(id, Arc::unwrap_or_clone(stale), head).await?,
        };
        self.maybe_snapshot(id, &mut loaded);
        let loaded = loaded.shared();
        Ok(if head_sequence < stale_sequence {
            // The leader's head is behind what was cached: no commit acked on
            // this stream can be, so the stream went back (recreated,
            // restored from a backup). The cached state is of another
            // history; the leader's wins, older or not.
            warn!(
                cached = stale_sequence,
                head = head_sequence,
                "cached state is past the leader's head; replacing it"
            );
            self.shared.cache.replace(id, loaded)
        } else {
            self.shared.cache.offer(id, loaded)
        })
    }

    /// Decide `command` on aggregate `id` and store what it came to as one
    /// commit: its events, or a no-op, or the aggregate's refusal (both with no
    /// events). Every outcome is published with the sequence it was decided on,
    /// so the server revalidates a refusal or a no-op decided on a stale cache
    /// exactly as it does events (the command is decided again on fresh state),
    /// and every outcome is remembered under the command id.
    #[instrument(skip(self, command, meta), fields(aggregate = A::TYPE, command_id = %meta.command_id))]
    pub async fn execute(
        &self,
        id: &str,
        command: &A::Command,
        meta: &CommandMeta,
    ) -> Result<CommitOutcome<A::Event>, ExecuteError<A::Rejection>> {
        check_id(id)?;
        if meta.command_id.is_empty() || meta.command_id.len() > 128 {
            return Err(StoreError::InvalidCommandId("must be 1-128 characters".into()).into());
        }
        if meta.command_id.chars().any(char::is_control) {
            // A NUL cannot be stored in PostgreSQL's text: the command index
            // could not record it.
            return Err(StoreError::InvalidCommandId("must not contain control characters".into()).into());
        }
        let subject = envelope::subject::<A>(id);
        let tag = CommandTag::of(&meta.command_id);
        let age = self.command_age(&meta.command_id)?;
        let mut loaded = self.load_shared(id).await?;
        let mut leaderless_since: Option<tokio::time::Instant> = None;
        let mut checked_with_leader = false;
        // The state the index was last asked about: a state refreshed after a
        // conflict may have forgotten more.
        let mut index_asked_at: Option<u64> = None;
        let mut attempt = 0;
        while attempt < self.shared.options.max_attempts {
            attempt += 1;
            if let Some(sequence) = loaded.remembered(tag) {
                return self.replay(&subject, meta, sequence).await;
            }
            if index_asked_at != Some(loaded.sequence) {
                index_asked_at = Some(loaded.sequence);
                if let Some(sequence) = self.ask_index(&subject, &meta.command_id, &loaded, age).await? {
                    return self.replay(&subject, meta, sequence).await;
                }
            }
            let decided = loaded.state.decide(command);
            // A process manager's command (no request digest, an id derived from
            // what it reacts to) is decided afresh each time it is sent: storing
            // its no-op or refusal would freeze an answer that depends on time
            // (an escalation not yet due) under an id it will send again. Not
            // stored, such an answer is not checked by the server either, and
            // a reactor moves on past it: so it is decided again on the
            // leader's head before it is given (one round trip; the state
            // may be a warm copy another replica has since written past, or
            // a lagging replica's).
            if meta.request_digest == 0 {
                let settled = matches!(&decided, Ok(events) if !events.is_empty());
                if !settled && !checked_with_leader {
                    checked_with_leader = true;
                    loaded = self.refresh(id, loaded).await?;
                    attempt -= 1;
                    continue;
                }
                match decided {
                    Err(r) => return Err(ExecuteError::Rejected(r)),
                    Ok(events) if events.is_empty() => {
                        return Ok(CommitOutcome { sequence: loaded.sequence, events, replayed: false });
                    }
                    Ok(_) => {}
                }
            }
            let rejection =
                match &decided {
                    Err(r) => Some(serde_json::to_string(r).map_err(|e| {
                        StoreError::Corrupt(crate::DecodeError::new(format!("{} rejection", A::TYPE), e))
                    })?),
                    Ok(_) => None,
                };
            let decision = match (&decided, &rejection) {
                (Ok(events), _) if !events.is_empty() => envelope::Decision::Events(events),
                (Ok(_), _) => envelope::Decision::NoOp,
                (Err(_), json) => envelope::Decision::Rejected(json.as_deref().unwrap_or_default()),
            };
            let (headers, body) = envelope::encode_commit::<A>(id, loaded.sequence, meta, decision);
            let publish = async { self.shared.js.publish_with_headers(subject.clone(), headers, body).await?.await }
                .instrument(tracing::info_span!("eventstore.append", subject = %subject, attempt));
            match publish.await {
                Ok(ack) if ack.duplicate && ack.sequence == 0 => {
                    // The original is still being replicated: its sequence is
                    // not known yet. Ask again shortly; the answer will name it.
                    debug!(attempt, "duplicate of a commit still in flight; asking again");
                    self.backoff(attempt).await;
                }
                Ok(ack) if ack.duplicate => {
                    metrics::counter!("eventstore_appends_total", "aggregate" => A::TYPE, "outcome" => "duplicate")
                        .increment(1);
                    self.shared.cache.invalidate(id);
                    return self.replay(&subject, meta, ack.sequence).await;
                }
                Ok(ack) => {
                    let label = match decision {
                        envelope::Decision::Events(_) => "ok",
                        envelope::Decision::NoOp => "no_op",
                        envelope::Decision::Rejected(_) => "rejected",
                    };
                    metrics::counter!("eventstore_appends_total", "aggregate" => A::TYPE, "outcome" => label)
                        .increment(1);
                    let events = decided.as_deref().unwrap_or_default();
                    self.shared.cache.advance(id, loaded, ack.sequence, |next| {
                        next.apply(ack.sequence, tag, events, self.shared.options.remembered_commands);
                        self.maybe_snapshot(id, next);
                    });
                    return match decided {
                        Ok(events) => Ok(CommitOutcome { sequence: ack.sequence, events, replayed: false }),
                        Err(r) => Err(ExecuteError::Rejected(r)),
                    };
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    metrics::counter!("eventstore_conflicts_total", "aggregate" => A::TYPE).increment(1);
                    debug!(attempt, "someone wrote first; reloading and deciding again");
                    if attempt < self.shared.options.max_attempts {
                        self.backoff(attempt).await;
                    }
                    loaded = self.refresh(id, loaded).await?;
                }
                Err(e)
                    if e.kind() == PublishErrorKind::StreamNotFound
                        && leaderless_since.get_or_insert_with(tokio::time::Instant::now).elapsed()
                            < self.shared.options.leaderless_wait
                        && self.stream_exists().await =>
                {
                    // Nobody answered the publish, yet the stream exists: a
                    // replicated stream between leaders. The same commit (same
                    // expected sequence and message id) is sent again once one
                    // is elected; this does not count as a conflict.
                    metrics::counter!("eventstore_leaderless_waits_total", "aggregate" => A::TYPE).increment(1);
                    debug!("no stream leader to answer; waiting for an election");
                    attempt -= 1;
                    let pause = Duration::from_millis(100 + rand::rng().random_range(0..150));
                    tokio::time::sleep(pause).await;
                }
                Err(e) => {
                    self.shared.cache.invalidate(id);
                    if e.kind() == PublishErrorKind::StreamNotFound && self.stream_exists().await {
                        return Err(StoreError::Unavailable(format!(
                            "publish to {subject}: the stream has had no leader for {:?}",
                            self.shared.options.leaderless_wait
                        ))
                        .into());
                    }
                    return Err(publish_failure(&subject, &e).into());
                }
            }
        }
        metrics::counter!("eventstore_appends_total", "aggregate" => A::TYPE, "outcome" => "aborted").increment(1);
        Err(StoreError::Conflict { subject, attempts: self.shared.options.max_attempts }.into())
    }

    /// The original outcome of a command whose commit is at `sequence`: its
    /// events, its no-op, or its refusal — unless the id was used for another
    /// request.
    async fn replay(
        &self,
        subject: &str,
        meta: &CommandMeta,
        sequence: u64,
    ) -> Result<CommitOutcome<A::Event>, ExecuteError<A::Rejection>> {
        let commit = self.commit_at(sequence).await?;
        if commit.subject != subject || commit.command_id() != meta.command_id {
            return Err(StoreError::Corrupt(crate::DecodeError::new(
                format!("commit at sequence {sequence}"),
                format!(
                    "expected command {} on {subject}, found {} on {}",
                    meta.command_id,
                    commit.command_id(),
                    commit.subject
                ),
            ))
            .into());
        }
        let stored = commit.body.request_digest;
        if meta.request_digest != 0 && stored != 0 && stored != meta.request_digest {
            return Err(StoreError::CommandIdReused { command_id: meta.command_id.clone() }.into());
        }
        if commit.outcome() == pb::Outcome::Rejected {
            let rejection = serde_json::from_str(&commit.body.rejection).map_err(|e| {
                // The commit decoded, so the JSON is what some build wrote: a
                // refusal this build cannot read is a newer build's.
                StoreError::NewerData(crate::DecodeError::unknown(format!("rejection at sequence {sequence}"), e))
            })?;
            return Err(ExecuteError::Rejected(rejection));
        }
        let events = commit.decode_events::<A::Event>().map_err(StoreError::from)?;
        Ok(CommitOutcome { sequence, events, replayed: true })
    }

    /// Whether the stream exists, as far as the server can tell now: only an
    /// explicit "stream not found" says no (during an election the question
    /// itself may go unanswered, which is not a no).
    async fn stream_exists(&self) -> bool {
        use async_nats::jetstream::context::GetStreamErrorKind;
        match self.shared.js.get_stream(&self.shared.stream.cached_info().config.name).await {
            Ok(_) => true,
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(j) => {
                    j.error_code() != async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
                }
                _ => true,
            },
        }
    }

    async fn backoff(&self, attempt: u32) {
        let cap = self.shared.options.base_backoff.saturating_mul(1 << attempt.min(10));
        let jitter = rand::rng().random_range(0..=cap.as_micros() as u64);
        tokio::time::sleep(Duration::from_micros(jitter)).await;
    }

    /// The subject's last commit. `Read::Any` may be answered by a lagging
    /// follower (a direct get); `Read::Leader` is current.
    async fn last_commit(&self, subject: &str, read: Read) -> Result<Option<RecordedCommit>, StoreError> {
        if read == Read::Any {
            return match self.shared.stream.direct_get_last_for_subject(subject).await {
                Ok(m) => Ok(Some(RecordedCommit::from_stream_message(m)?)),
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
                Err(e) => Err(StoreError::Unavailable(format!("direct get last {subject}: {e}"))),
            };
        }
        match self.shared.stream.get_last_raw_message_by_subject(subject).await {
            Ok(m) => Ok(Some(RecordedCommit::from_stream_message(m)?)),
            Err(e) if leader_not_found(&e) => Ok(None),
            Err(e) => Err(StoreError::Unavailable(format!("get last {subject}: {e}"))),
        }
    }

    /// The commit at `sequence`. A direct get first (any replica); if that
    /// replica does not have it (yet), the leader, before calling it missing.
    async fn commit_at(&self, sequence: u64) -> Result<RecordedCommit, StoreError> {
        match self.shared.stream.direct_get(sequence).await {
            Ok(m) => return Ok(RecordedCommit::from_stream_message(m)?),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::Unavailable(format!("direct get {sequence}: {e}"))),
        }
        match self.shared.stream.get_raw_message(sequence).await {
            Ok(m) => Ok(RecordedCommit::from_stream_message(m)?),
            Err(e) if leader_not_found(&e) => Err(StoreError::Corrupt(crate::DecodeError::new(
                format!("commit at sequence {sequence}"),
                "missing from the stream",
            ))),
            Err(e) => Err(StoreError::Unavailable(format!("get {sequence}: {e}"))),
        }
    }

    async fn read_snapshot(&self, id: &str) -> Option<Loaded<A>> {
        let store = self.shared.snapshots.as_ref()?;
        let bytes = match store.get(snapshot_key::<A>(id)).await {
            Ok(Some(b)) => b,
            Ok(None) => return None,
            Err(e) => {
                warn!(error = %e, "snapshot read failed; loading without it");
                return None;
            }
        };
        let snap = pb::Snapshot::decode(bytes.as_ref()).ok()?;
        if snap.schema_version != A::STATE_VERSION {
            return None;
        }
        let state = A::decode_state(&snap.state).ok()?;
        Some(Loaded {
            state,
            sequence: snap.sequence,
            recent: snap
                .recent_commands
                .into_iter()
                .map(|r| (CommandTag::from_bytes(&r.tag).unwrap_or_else(|| CommandTag::of(&r.command_id)), r.sequence))
                .collect(),
            recent_complete: snap.recent_complete,
            commits_since_snapshot: 0,
            unsnapshotted_from: snap.sequence,
            state_weight: None,
            commits_since_weighed: 0,
            last_gap: 0,
        })
    }

    fn maybe_snapshot(&self, id: &str, loaded: &mut Loaded<A>) {
        let Some(store) = &self.shared.snapshots else { return };
        if !loaded.snapshot_due(&self.shared.options, self.shared.batched) {
            return;
        }
        // A put in flight to spare before the state is encoded: when NATS is
        // slow, due aggregates are not encoded only to be dropped.
        let Ok(permit) = Arc::clone(&self.shared.snapshot_puts).try_acquire_owned() else {
            // Still due: the next commit or load tries again.
            metrics::counter!("eventstore_snapshots_skipped_total", "aggregate" => A::TYPE, "reason" => "busy")
                .increment(1);
            return;
        };
        let snap = pb::Snapshot {
            sequence: loaded.sequence,
            schema_version: A::STATE_VERSION,
            state: loaded.state.encode_state(),
            recent_commands: loaded
                .recent
                .iter()
                // The id itself too where the tag gives it back (a canonical
                // UUID): builds from before tags read only the strings.
                .map(|(c, s)| pb::RecentCommand {
                    command_id: c.uuid().map(|u| u.to_string()).unwrap_or_default(),
                    sequence: *s,
                    tag: c.to_bytes().to_vec(),
                })
                .collect(),
            recent_complete: loaded.recent_complete,
        }
        .encode_to_vec();
        // The snapshot must fit in one message of the bucket; a bigger state
        // is read in batches instead, and not tried again until as many
        // commits again (the spread still counts from the last snapshot that
        // was written).
        if snap.len() > self.shared.snapshot_limit {
            metrics::counter!("eventstore_snapshots_skipped_total", "aggregate" => A::TYPE, "reason" => "oversized")
                .increment(1);
            debug!(
                bytes = snap.len(),
                limit = self.shared.snapshot_limit,
                "snapshot too large; cold loads read in batches"
            );
            loaded.commits_since_snapshot = 0;
            return;
        }
        loaded.commits_since_snapshot = 0;
        loaded.unsnapshotted_from = loaded.sequence;
        let (store, key) = (store.clone(), snapshot_key::<A>(id));
        // Best effort, off the command's path: a missing or stale snapshot only
        // lengthens the next cold walk; it can never make it wrong.
        tokio::spawn(async move {
            if let Err(e) = store.put(key, snap.into()).await {
                warn!(error = %e, "snapshot write failed");
            }
            drop(permit);
        });
    }
}

/// Sort a failed publish into what a client should do about it: retry
/// (unavailable), change the command (too large), or call an operator.
fn publish_failure(subject: &str, e: &async_nats::jetstream::context::PublishError) -> StoreError {
    use async_nats::jetstream::ErrorCode;
    use std::error::Error as _;
    /// nats-server's JSStreamSealedErr: "invalid operation on sealed stream".
    const STREAM_SEALED: ErrorCode = ErrorCode(10109);
    let code = e.source().and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>()).map(|j| j.error_code());
    let what = format!("publish to {subject}: {e}");
    match (e.kind(), code) {
        (PublishErrorKind::MaxPayloadExceeded, _) | (_, Some(ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM)) => {
            StoreError::TooLarge(what)
        }
        (PublishErrorKind::StreamNotFound, _) | (_, Some(ErrorCode::STREAM_NOT_FOUND | STREAM_SEALED)) => {
            StoreError::Misconfigured(what)
        }
        _ => StoreError::Unavailable(what),
    }
}

/// Where a read may be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Any replica (direct get): fast, possibly behind.
    Any,
    /// The stream leader: current.
    Leader,
}

fn leader_not_found(e: &async_nats::jetstream::stream::LastRawMessageError) -> bool {
    use async_nats::jetstream::stream::LastRawMessageErrorKind as K;
    match e.kind() {
        K::NoMessageFound => true,
        // JSNoMessageFoundErr
        K::JetStream(j) => j.error_code() == async_nats::jetstream::ErrorCode(10037),
        _ => false,
    }
}

/// Commits asked for in one batched read.
const BATCH_LIMIT: usize = 512;

fn missing_link(commit: &RecordedCommit, base: u64) -> StoreError {
    StoreError::Corrupt(crate::DecodeError::new(
        format!("commit at sequence {}", commit.sequence),
        format!("points back to {}, but the subject has nothing between it and {base}", commit.previous),
    ))
}

fn snapshot_key<A: Aggregate>(id: &str) -> String {
    format!("{}.{}", A::TYPE, id)
}

fn check_id(id: &str) -> Result<(), StoreError> {
    validate_id(id).map_err(|reason| StoreError::InvalidId { id: id.to_string(), reason })
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::{CommandTag, Loaded, REWEIGH_EVERY};
    use crate::aggregate::{Aggregate, DecodeError, DomainEvent};

    static WEIGHED: AtomicUsize = AtomicUsize::new(0);

    #[derive(Debug, Clone, Default)]
    struct Counter(u64);

    #[derive(Debug, Clone)]
    struct Added;

    #[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
    #[error("never")]
    struct Never;

    impl DomainEvent for Added {
        fn event_type(&self) -> &'static str {
            "test.counter.added"
        }
        fn encode(&self) -> Vec<u8> {
            Vec::new()
        }
        fn decode(_: &str, _: u32, _: &[u8]) -> Result<Self, DecodeError> {
            Ok(Added)
        }
    }

    impl Aggregate for Counter {
        const CONTEXT: &'static str = "test";
        const TYPE: &'static str = "counter";
        const STATE_VERSION: u32 = 1;
        type Command = ();
        type Event = Added;
        type Rejection = Never;
        fn decide(&self, _: &()) -> Result<Vec<Added>, Never> {
            Ok(vec![Added])
        }
        fn evolve(self, _: &Added) -> Self {
            Self(self.0 + 1)
        }
        fn encode_state(&self) -> Vec<u8> {
            self.0.to_be_bytes().to_vec()
        }
        fn decode_state(_: &[u8]) -> Result<Self, DecodeError> {
            Ok(Self::default())
        }
        fn weight(&self) -> usize {
            WEIGHED.fetch_add(1, Ordering::SeqCst);
            1000 + self.0 as usize
        }
    }

    /// Weighing may encode the whole state: a cached state is weighed when
    /// first cached and then every REWEIGH_EVERY commits, not per command.
    #[test]
    fn a_cached_state_is_weighed_every_few_commits_not_every_command() {
        let mut loaded = Loaded::<Counter>::default();
        let before = WEIGHED.load(Ordering::SeqCst);
        for n in 1..=(REWEIGH_EVERY as u64 * 4) {
            loaded.apply(n, CommandTag::of(&format!("c{n}")), &[Added], 64);
            loaded = std::sync::Arc::unwrap_or_clone(loaded.shared());
            assert!(loaded.weight("id") >= 1000, "the weight counts the state");
        }
        assert_eq!(WEIGHED.load(Ordering::SeqCst) - before, 4, "64 commits, weighed 4 times");
    }
}
