//! The stream after a position, read and parsed ahead of the writes.
//!
//! While a batch is written to the database, the next ones arrive from NATS
//! and are decoded on another core. What is read ahead is bounded twice: by
//! batches ([`BATCHES_AHEAD`]) and by bytes ([`READ_AHEAD_BYTES`]) — a count
//! alone let four batches of 2,000 commits of up to the server's largest
//! message (1 MB by default, up to 64 MB) hold gigabytes. A batch is cut at
//! `batch_size` commits, at a weight of [`BATCH_BYTES`], or at whatever
//! arrived within `batch_wait` of its first commit; the reader then takes the
//! batch's weight from the byte budget before handing it on, and waits while
//! the budget is spent. The weight comes back when the batch is dropped (the
//! [`Run`] made of it has been applied).
//!
//! The bound on memory is therefore the budget, plus the one batch cut and
//! waiting for its weight (at most [`BATCH_BYTES`] and one message), plus
//! what the client buffers of the pull (twice the server's largest message,
//! at least 8 MiB): about 90 MiB with the defaults and 1 MB messages.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::{Stream, StreamExt as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

use super::UnknownEvents;
use super::runner::{AbortOnDrop, Delivered, RunnerError, nats};

/// Batches read ahead of the one being applied.
const BATCHES_AHEAD: usize = 4;

/// Bytes read ahead and not yet applied, at most (a single larger message
/// still goes through, alone).
pub(super) const READ_AHEAD_BYTES: usize = 64 << 20;

/// A batch stops growing once its messages weigh this much (about half of
/// it on the wire).
const BATCH_BYTES: usize = 16 << 20;

/// What a message weighs against the budget: its bytes on the wire, twice
/// (the delivered message and its parsed commit), and a fixed part for the
/// structures around them.
fn weigh(m: &Result<jetstream::Message, impl std::fmt::Display>) -> usize {
    m.as_ref().map_or(0, |m| 2 * m.message.length) + 256
}

/// How far ahead a feed reads.
#[derive(Clone, Copy, Debug)]
pub(super) struct ReadAhead {
    /// Most commits per batch.
    pub(super) size: usize,
    /// How long a batch waits to fill once its first commit arrived.
    pub(super) wait: Duration,
    /// Bytes read ahead and not yet applied, at most.
    pub(super) bytes: usize,
}

/// A run of contiguous commits read from the stream.
pub(super) struct Run {
    pub(super) commits: Vec<Delivered>,
    /// Messages the server still holds for the consumer after this run.
    pub(super) pending: u64,
    /// The sequence delivered out of turn after the run, if any: the caller
    /// must resubscribe (or fail) instead of reading on.
    pub(super) gap: Option<u64>,
    /// The run's weight in the read-ahead budget, given back when it is dropped.
    _weight: Option<OwnedSemaphorePermit>,
}

/// A parsed batch and its weight in the budget.
struct Batch<T> {
    items: Vec<T>,
    weight: OwnedSemaphorePermit,
}

/// The stream after a position, delivered in contiguous runs. The stream is
/// unfiltered and never deleted from, so the commits after `p` are exactly
/// `p+1, p+2, …`; anything else is reported as a gap, never skipped over.
pub(super) struct Feed {
    batches: mpsc::Receiver<Batch<Result<(Delivered, u64), RunnerError>>>,
    next: u64,
    /// The task reading ahead; it ends with the feed.
    _reader: AbortOnDrop<()>,
    /// Its end has been reported (a finished task is awaited once).
    ended: bool,
}

impl Feed {
    /// Read `messages` (the commits from `next` on) ahead, parsing each for a
    /// projection with the `unknown` policy.
    pub(super) fn read_ahead<E: std::fmt::Display + Send + 'static>(
        messages: impl Stream<Item = Result<jetstream::Message, E>> + Send + 'static,
        next: u64,
        limits: ReadAhead,
        unknown: UnknownEvents,
    ) -> Self {
        let (batches, reader) = spawn_reader(messages, limits, weigh, move |m| {
            m.map_err(nats).and_then(|m| Delivered::from_message(m, unknown))
        });
        Self { batches, next, _reader: AbortOnDrop(reader), ended: false }
    }

    /// The next run, up to `until` (inclusive). Cancel-safe: it awaits once,
    /// before taking anything.
    pub(super) async fn next(&mut self, until: u64) -> Result<Run, RunnerError> {
        let Some(batch) = self.batches.recv().await else {
            if self.ended {
                return Err(RunnerError::Nats("consumer ended".into()));
            }
            // Marked only once the reader's end is known: cancelled while
            // waiting for it (the channel closes a moment before the task's
            // result is ready), the next call asks again.
            let e = why_ended(&mut self._reader.0).await;
            self.ended = true;
            return Err(e);
        };
        let mut run =
            Run { commits: Vec::with_capacity(batch.items.len()), pending: 0, gap: None, _weight: Some(batch.weight) };
        for message in batch.items {
            let (delivered, pending) = message?;
            if delivered.sequence > until && delivered.sequence == self.next {
                break;
            }
            if delivered.sequence != self.next {
                run.gap = Some(delivered.sequence);
                break;
            }
            self.next += 1;
            run.pending = pending;
            run.commits.push(delivered);
        }
        Ok(run)
    }
}

/// Why the reader stopped sending: the consumer's messages ended, or the
/// reader itself failed (a panic in parsing says so, instead of passing for a
/// consumer that went away).
async fn why_ended(reader: &mut tokio::task::JoinHandle<()>) -> RunnerError {
    match reader.await {
        Err(e) if e.is_panic() => {
            let panic = e.into_panic();
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            tracing::error!(panic = %what, "the feed's reader panicked");
            RunnerError::Environment(format!("the feed's reader panicked: {what}"))
        }
        _ => RunnerError::Nats("consumer ended".into()),
    }
}

/// The reading task: batches of `source`, each weighed, paid for from the
/// budget, parsed and sent on.
fn spawn_reader<T, B>(
    source: impl Stream<Item = T> + Send + 'static,
    limits: ReadAhead,
    weigh: impl Fn(&T) -> usize + Send + 'static,
    parse: impl Fn(T) -> B + Send + 'static,
) -> (mpsc::Receiver<Batch<B>>, tokio::task::JoinHandle<()>)
where
    T: Send + 'static,
    B: Send + 'static,
{
    let (tx, batches) = mpsc::channel(BATCHES_AHEAD);
    // Permits are taken in u32s, and a semaphore holds at most MAX_PERMITS.
    let budget_bytes = limits.bytes.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let budget = Arc::new(Semaphore::new(budget_bytes));
    let reader = tokio::spawn(async move {
        let mut source = std::pin::pin!(source);
        let cut_at = BATCH_BYTES.min(budget_bytes);
        loop {
            let Some(first) = source.next().await else { return };
            let mut bytes = weigh(&first);
            let mut chunk = vec![first];
            let mut ended = false;
            let deadline = Instant::now() + limits.wait;
            while chunk.len() < limits.size.max(1) && bytes < cut_at {
                match tokio::time::timeout_at(deadline, source.next()).await {
                    Ok(Some(item)) => {
                        bytes += weigh(&item);
                        chunk.push(item);
                    }
                    Ok(None) => {
                        ended = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            // A batch heavier than the whole budget takes all of it: it goes
            // through alone.
            let Ok(weight) = Arc::clone(&budget).acquire_many_owned(bytes.min(budget_bytes) as u32).await else {
                return;
            };
            let items = chunk.into_iter().map(&parse).collect();
            if tx.send(Batch { items, weight }).await.is_err() || ended {
                return; // the feed was dropped, or the source ended
            }
        }
    });
    (batches, reader)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const MB: usize = 1 << 20;

    /// A source of `n` one-megabyte messages that counts what was taken from it.
    fn counted(n: usize) -> (impl Stream<Item = usize> + Send + 'static, Arc<AtomicUsize>) {
        let taken = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&taken);
        let source = futures::stream::iter(0..n).map(move |i| {
            counter.fetch_add(1, Ordering::SeqCst);
            i
        });
        (source, taken)
    }

    #[tokio::test]
    async fn large_messages_are_read_ahead_up_to_the_byte_budget_not_the_batch_count() {
        let (source, taken) = counted(10_000);
        // Less than the batches the channel holds (four of 16 MB): the budget,
        // not the count, must be what stops the reader.
        let limits = ReadAhead { size: 2000, wait: Duration::from_millis(5), bytes: 20 * MB };
        let (mut batches, _reader) = spawn_reader(source, limits, |_| MB, |i| i);
        tokio::time::sleep(Duration::from_millis(200)).await;
        // One batch paid for (16) + the next, cut and waiting for its weight
        // (16), + one message the cut may have looked at.
        let read = taken.load(Ordering::SeqCst);
        assert!(read <= 16 + 16 + 1, "read {read} one-megabyte messages ahead on a 20 MB budget");
        assert!(read >= 32, "read {read}: the budget is used");

        // Taking a batch and dropping it frees its weight; reading goes on.
        let first = batches.recv().await.expect("a batch");
        assert_eq!(first.items.len(), 16, "cut at BATCH_BYTES");
        drop(first);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(taken.load(Ordering::SeqCst) > read, "reading resumed once the batch was applied");
    }

    /// A run keeps its weight until the caller drops it (has applied it), not
    /// only until it is received.
    #[tokio::test]
    async fn a_runs_weight_is_held_until_it_is_dropped() {
        let (source, taken) = counted(1000);
        let limits = ReadAhead { size: 10, wait: Duration::from_millis(5), bytes: 20 * MB };
        let (batches, reader) = spawn_reader(
            source,
            limits,
            |_| MB,
            |i| {
                let sequence = i as u64 + 1;
                let headers = async_nats::HeaderMap::new();
                Ok((Delivered::new(sequence, "s.x", headers, bytes::Bytes::new(), UnknownEvents::Skip), 0))
            },
        );
        let mut feed = Feed { batches, next: 1, _reader: AbortOnDrop(reader), ended: false };
        let first = feed.next(u64::MAX).await.expect("first run");
        let second = feed.next(u64::MAX).await.expect("second run");
        assert_eq!((first.commits.len(), second.commits.len()), (10, 10));
        tokio::time::sleep(Duration::from_millis(150)).await;
        // The two runs held take the whole budget; one more batch is cut and waits.
        let read = taken.load(Ordering::SeqCst);
        assert!(read <= 30 + 1, "read {read} while the runs are held");
        drop(first);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(taken.load(Ordering::SeqCst) > read, "reading resumed once a run was dropped");
        drop(second);
    }

    #[tokio::test]
    async fn a_message_heavier_than_the_budget_goes_through_alone() {
        let (source, _) = counted(3);
        let limits = ReadAhead { size: 2000, wait: Duration::from_millis(5), bytes: 4 * MB };
        let (mut batches, _reader) = spawn_reader(source, limits, |_| 10 * MB, |i| i);
        for expected in 0..3 {
            let batch = tokio::time::timeout(Duration::from_secs(5), batches.recv()).await.expect("in time");
            assert_eq!(batch.expect("a batch").items, vec![expected]);
        }
    }

    #[tokio::test]
    async fn a_reader_that_panics_is_reported_as_such() {
        let (source, _) = counted(3);
        let limits = ReadAhead { size: 1, wait: Duration::from_millis(5), bytes: MB };
        let (mut batches, mut reader) = spawn_reader(
            source,
            limits,
            |_| 1,
            |i| {
                assert!(i < 1, "cannot parse {i}");
                i
            },
        );
        let _ = batches.recv().await.expect("the first batch");
        assert!(batches.recv().await.is_none(), "the reader stopped");
        let e = why_ended(&mut reader).await;
        assert!(matches!(&e, RunnerError::Environment(m) if m.contains("cannot parse 1")), "{e:?}");
    }

    #[tokio::test]
    async fn small_messages_fill_batches_by_count() {
        let (source, _) = counted(5000);
        let limits = ReadAhead { size: 2000, wait: Duration::from_secs(5), bytes: 64 * MB };
        let (mut batches, _reader) = spawn_reader(source, limits, |_| 300, |i| i);
        let sizes: Vec<usize> = [
            batches.recv().await.expect("1").items.len(),
            batches.recv().await.expect("2").items.len(),
            batches.recv().await.expect("3").items.len(),
        ]
        .to_vec();
        assert_eq!(sizes, vec![2000, 2000, 1000], "the last cut where the source ended");
    }
}
