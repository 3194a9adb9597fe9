//! The warm cache: one slot per aggregate, bounded by bytes.
//!
//! A slot holds the newest state this process knows for its aggregate, and a
//! landed commit changes the state in its slot: the map (moka: weighed, idle
//! entries expire) is written when an aggregate comes in cold and when its
//! weight has moved by more than an eighth, not on every command (an insert
//! was a tenth of a command's client-side cost).
//!
//! A slot's state only moves forward. A command, refresh or cold load that
//! finishes after a newer one leaves the newer state in place, so a reader
//! never sees an aggregate go back in time on this replica. And the state a
//! command changes is moved out of its slot, not copied, when nothing else
//! holds it at that moment (a reader, or another command in flight on the
//! same aggregate): the common case pays no copy of state and remembered
//! commands.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use moka::ops::compute::Op;

use super::Loaded;
use crate::aggregate::Aggregate;

pub(super) struct Warm<A: Aggregate> {
    map: moka::sync::Cache<String, Arc<Slot<A>>>,
}

struct Slot<A: Aggregate> {
    /// `None` only while a command folds its commit in, under the lock.
    state: Mutex<Option<Arc<Loaded<A>>>>,
    /// What the map weighs the slot by ([`Loaded::weight`]) as last inserted.
    weight: AtomicU32,
}

impl<A: Aggregate> Slot<A> {
    fn new(id: &str, loaded: Arc<Loaded<A>>) -> Arc<Self> {
        let weight = AtomicU32::new(loaded.weight(id));
        Arc::new(Self { state: Mutex::new(Some(loaded)), weight })
    }

    /// The lock is held for moves of an `Arc` and a command's fold (its
    /// events, the state's weighing every 16 commits, and a snapshot's
    /// encoding when one is due); a panic in a fold leaves `None`, read as
    /// an empty slot.
    fn lock(&self) -> MutexGuard<'_, Option<Arc<Loaded<A>>>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<A: Aggregate> Warm<A> {
    pub(super) fn new(bytes: u64, idle: Duration) -> Self {
        let map = moka::sync::Cache::builder()
            .max_capacity(bytes)
            .weigher(|_: &String, slot: &Arc<Slot<A>>| slot.weight.load(Ordering::Relaxed))
            .time_to_idle(idle)
            .build();
        Self { map }
    }

    pub(super) fn get(&self, id: &str) -> Option<Arc<Loaded<A>>> {
        self.map.get(id).and_then(|slot| slot.lock().clone())
    }

    /// Keep `loaded` (weighed) unless the slot holds a newer state; returns
    /// the state the slot holds afterwards.
    pub(super) fn offer(&self, id: &str, loaded: Arc<Loaded<A>>) -> Arc<Loaded<A>> {
        self.install(id, loaded, false)
    }

    /// Keep `loaded` (weighed) whatever the slot holds: for a state read
    /// from the leader that shows the cached one to be of another history
    /// (the stream went back).
    pub(super) fn replace(&self, id: &str, loaded: Arc<Loaded<A>>) -> Arc<Loaded<A>> {
        self.install(id, loaded, true)
    }

    /// Every write to the map goes through `and_compute_with`, whose per-key
    /// lock orders it against the others (an insert, a re-weighing, an
    /// invalidation): none can put back a slot another has replaced.
    fn install(&self, id: &str, loaded: Arc<Loaded<A>>, replace: bool) -> Arc<Loaded<A>> {
        let mut kept = Arc::clone(&loaded);
        self.map.entry_by_ref(id).and_compute_with(|entry| {
            let Some(entry) = entry else {
                return Op::Put(Slot::new(id, Arc::clone(&loaded)));
            };
            let slot = entry.into_value();
            {
                let mut state = slot.lock();
                match state.as_ref() {
                    Some(held) if !replace && held.sequence >= loaded.sequence => {
                        kept = Arc::clone(held);
                        return Op::Nop;
                    }
                    _ => *state = Some(Arc::clone(&loaded)),
                }
            }
            match Self::weight_moved(&slot, loaded.weight(id)) {
                true => Op::Put(slot),
                false => Op::Nop,
            }
        });
        kept
    }

    /// Fold a landed commit at `sequence` into the cached state: `fold`
    /// changes the state the command was decided on (`base`), moved out of
    /// the slot where nothing else holds it. Nothing changes if the slot
    /// already holds the commit (a refresh read it first).
    pub(super) fn advance(&self, id: &str, base: Arc<Loaded<A>>, sequence: u64, fold: impl FnOnce(&mut Loaded<A>)) {
        let Some(slot) = self.map.get(id) else {
            // Evicted (or invalidated) since the command loaded it.
            let mut next = Arc::unwrap_or_clone(base);
            fold(&mut next);
            self.offer(id, next.shared());
            return;
        };
        let mut state = slot.lock();
        let mut next = match state.take() {
            Some(held) if held.sequence >= sequence => {
                *state = Some(held);
                return;
            }
            Some(held) if held.sequence == base.sequence => {
                drop(base); // so the slot's may be the only reference left
                Arc::unwrap_or_clone(held)
            }
            _ => Arc::unwrap_or_clone(base),
        };
        fold(&mut next);
        next.weigh();
        let weight = next.weight(id);
        *state = Some(Arc::new(next));
        drop(state);
        self.reweigh(id, &slot, weight);
    }

    /// Let the map weigh `slot` again if its weight moved by more than an
    /// eighth — and only if it is still the map's slot for `id`.
    fn reweigh(&self, id: &str, slot: &Arc<Slot<A>>, weight: u32) {
        if !Self::weight_moved(slot, weight) {
            return;
        }
        self.map.entry_by_ref(id).and_compute_with(|entry| match entry {
            Some(e) if Arc::ptr_eq(e.value(), slot) => Op::Put(Arc::clone(slot)),
            _ => Op::Nop,
        });
    }

    /// Record `weight` for `slot` if it moved by more than an eighth from
    /// what the map weighs it by; whether it did.
    fn weight_moved(slot: &Slot<A>, weight: u32) -> bool {
        let recorded = slot.weight.load(Ordering::Relaxed);
        if weight.abs_diff(recorded) <= recorded / 8 {
            return false;
        }
        slot.weight.store(weight, Ordering::Relaxed);
        true
    }

    pub(super) fn invalidate(&self, id: &str) {
        self.map.entry_by_ref(id).and_compute_with(|_| Op::Remove);
    }

    pub(super) fn clear(&self) {
        self.map.invalidate_all();
    }

    /// Bytes held, as weighed.
    pub(super) fn weighed_bytes(&self) -> u64 {
        self.map.run_pending_tasks();
        self.map.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::Arc;
    use std::time::Duration;

    use super::Warm;
    use crate::aggregate::{Aggregate, DecodeError, DomainEvent};
    use crate::command_index::CommandTag;
    use crate::repository::Loaded;

    thread_local! {
        static CLONED: Cell<usize> = const { Cell::new(0) };
    }

    /// A state that counts its copies (on this thread).
    #[derive(Debug, Default)]
    struct Tally(u64);

    impl Clone for Tally {
        fn clone(&self) -> Self {
            CLONED.with(|c| c.set(c.get() + 1));
            Self(self.0)
        }
    }

    #[derive(Debug, Clone)]
    struct Added;

    #[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
    #[error("never")]
    struct Never;

    impl DomainEvent for Added {
        fn event_type(&self) -> &'static str {
            "test.tally.added"
        }
        fn encode(&self) -> Vec<u8> {
            Vec::new()
        }
        fn decode(_: &str, _: u32, _: &[u8]) -> Result<Self, DecodeError> {
            Ok(Added)
        }
    }

    impl Aggregate for Tally {
        const CONTEXT: &'static str = "test";
        const TYPE: &'static str = "tally";
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
    }

    fn warm() -> Warm<Tally> {
        Warm::new(1 << 20, Duration::from_secs(600))
    }

    /// A state whose last commit is at `sequence`.
    fn at(sequence: u64) -> Arc<Loaded<Tally>> {
        let mut loaded = Loaded::<Tally>::default();
        loaded.apply(sequence, CommandTag::of(&format!("c{sequence}")), &[Added], 64);
        loaded.shared()
    }

    fn fold(sequence: u64) -> impl FnOnce(&mut Loaded<Tally>) {
        move |l| l.apply(sequence, CommandTag::of(&format!("c{sequence}")), &[Added], 64)
    }

    fn cloned() -> usize {
        CLONED.with(Cell::get)
    }

    /// Two loads or commands finishing out of order: the older never
    /// replaces the newer, so a reader never sees the aggregate go back.
    #[test]
    fn a_slot_never_goes_back() {
        let w = warm();
        assert_eq!(w.offer("a", at(5)).sequence, 5);
        assert_eq!(w.offer("a", at(3)).sequence, 5, "an older load answers with the newer state");
        assert_eq!(w.get("a").map(|l| l.sequence), Some(5));
        // A command decided at 3 whose commit (4) landed before 5 was read.
        w.advance("a", at(3), 4, fold(4));
        assert_eq!(w.get("a").map(|l| l.sequence), Some(5));
        assert_eq!(w.offer("a", at(9)).sequence, 9, "a newer load is kept");
    }

    /// The state a command folds into is moved out of the slot when nothing
    /// else holds it, and copied (leaving the reader's as it was) when
    /// something does.
    #[test]
    fn a_command_copies_the_state_only_while_someone_else_holds_it() {
        let w = warm();
        w.offer("a", at(1));
        let before = cloned();
        let base = w.get("a").expect("warm");
        w.advance("a", base, 2, fold(2));
        assert_eq!(cloned() - before, 0, "nothing else held it: moved, not copied");
        assert_eq!(w.get("a").map(|l| (l.sequence, l.state.0)), Some((2, 2)));

        let reader = w.get("a").expect("warm");
        let base = w.get("a").expect("warm");
        w.advance("a", base, 3, fold(3));
        assert_eq!(cloned() - before, 1, "a reader held it: copied once");
        assert_eq!((reader.sequence, reader.state.0), (2, 2), "the reader's copy is unchanged");
        assert_eq!(w.get("a").map(|l| (l.sequence, l.state.0)), Some((3, 3)));
    }

    /// The map weighs a slot again as its state grows, though commits fold
    /// in place without inserts.
    #[test]
    fn the_weight_follows_a_growing_state() {
        let w = warm();
        w.offer("a", at(1));
        let first = w.weighed_bytes();
        for s in 2..=100 {
            let base = w.get("a").expect("warm");
            w.advance("a", base, s, fold(s));
        }
        let held = w.get("a").expect("warm").weight("a") as u64;
        let weighed = w.weighed_bytes();
        assert!(held > first * 4, "64 remembered commands weigh more than one: {first} -> {held}");
        assert!(weighed * 8 >= held * 7, "weighed {weighed} of {held} bytes");
    }
}
