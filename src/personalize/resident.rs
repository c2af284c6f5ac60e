//! The bounded working set of shoppers kept in memory.
//!
//! The store holds every shopper; this keeps the most recently used
//! `max_resident_shoppers` of them as immutable snapshots, so a returning
//! shopper costs a hash lookup and an evicted one two B-tree lookups in the
//! store (see [`Resident::get_or_load`]).
//!
//! Two parties install states, and the one race between them is handled
//! here. The writer publishes a shopper's new state after its commit is
//! durable, so the cache never runs ahead of the store; a reader that missed
//! installs what it loaded from a store snapshot, which may have been taken
//! just before a commit whose state the writer has since published (or
//! before a forget the writer has since applied). Installing it then would
//! hide an acknowledged write, or bring back a forgotten shopper, until the
//! next eviction. So every publish and removal bumps a generation, and a
//! reader installs only if the generation it read before loading is
//! unchanged; otherwise it answers with the state the writer left resident,
//! or else with what it loaded (its request overlapped the write, so either
//! order is a correct answer) without installing it.
//!
//! Generations are kept per stripe of users rather than per user (no state
//! for shoppers who are not resident) or globally (every commit would
//! refuse every concurrent reader's install). A collision only costs a
//! missed install, never a stale one.
//!
//! Plain LRU under one mutex: the lock is held for a hash lookup and a list
//! splice (well under a microsecond) against a search of milliseconds,
//! the bound is exact, and the generation check needs the same lock as the
//! insert anyway.

use std::{
    hash::{BuildHasher, RandomState},
    num::NonZeroUsize,
    sync::Arc,
};

use lru::LruCache;
use parking_lot::Mutex;

use super::shopper::UserState;

/// Generation stripes, one per value of a byte of the user's hash: a load
/// collides with a concurrent write to another shopper with probability
/// 1/256.
const STRIPES: usize = 256;

#[derive(Debug)]
pub(super) struct Resident {
    inner: Mutex<Inner>,
    hasher: RandomState,
}

#[derive(Debug)]
struct Inner {
    lru: LruCache<Arc<str>, Arc<UserState>>,
    /// Bumped, in the stripe of the user, by every publish and removal.
    generations: Box<[u64; STRIPES]>,
}

impl Resident {
    pub fn new(capacity: NonZeroUsize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                lru: LruCache::new(capacity),
                generations: Box::new([0; STRIPES]),
            }),
            hasher: RandomState::new(),
        }
    }

    fn stripe(&self, user: &str) -> usize {
        // One byte of the hash picks one of the 256 stripes.
        usize::from(self.hasher.hash_one(user).to_le_bytes()[0])
    }

    /// The resident state, marked as most recently used.
    pub fn get(&self, user: &str) -> Option<Arc<UserState>> {
        self.inner.lock().lru.get(user).cloned()
    }

    /// The resident state, or else `load`'s (called without the lock held,
    /// typically reading the store), installed unless a write to the
    /// shopper's stripe happened while it ran. `Ok(None)`: nothing is known
    /// about the shopper; nothing is cached for them either, so that ids
    /// seen once cannot crowd out real shoppers.
    pub fn get_or_load<E>(
        &self,
        user: &Arc<str>,
        load: impl FnOnce() -> Result<Option<UserState>, E>,
    ) -> Result<Option<Arc<UserState>>, E> {
        let stripe = self.stripe(user);
        let before = {
            let mut inner = self.inner.lock();
            if let Some(state) = inner.lru.get(&**user) {
                return Ok(Some(Arc::clone(state)));
            }
            inner.generations[stripe]
        };
        let loaded = load()?;
        let mut inner = self.inner.lock();
        if let Some(state) = inner.lru.get(&**user) {
            // The writer published meanwhile (or another reader installed
            // the same snapshot): never older than what was loaded.
            return Ok(Some(Arc::clone(state)));
        }
        let Some(loaded) = loaded.map(Arc::new) else {
            return Ok(None);
        };
        if inner.generations[stripe] == before {
            let evicted = inner.lru.push(Arc::clone(user), Arc::clone(&loaded));
            drop(inner);
            drop(evicted);
        }
        Ok(Some(loaded))
    }

    /// Installs the writer's new state, durable in the store.
    pub fn publish(&self, user: Arc<str>, state: Arc<UserState>) {
        let stripe = self.stripe(&user);
        let mut inner = self.inner.lock();
        inner.generations[stripe] += 1;
        let evicted = inner.lru.push(user, state);
        drop(inner);
        // The evicted state (kilobytes of vectors) is freed outside the lock.
        drop(evicted);
    }

    /// Drops a forgotten shopper, erased from the store. Whether they were
    /// resident.
    pub fn remove(&self, user: &str) -> bool {
        let stripe = self.stripe(user);
        let mut inner = self.inner.lock();
        inner.generations[stripe] += 1;
        let removed = inner.lru.pop(user);
        drop(inner);
        removed.is_some()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().lru.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::personalize::{Action, shopper::Event};

    fn state(seq: u64) -> UserState {
        let mut s = UserState::default();
        s.push(
            Event {
                seq,
                product: Arc::from(format!("p{seq}")),
                action: Action::View,
            },
            10,
            &mut Vec::new(),
        );
        s
    }

    fn user(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    fn loaded(s: UserState) -> impl FnOnce() -> Result<Option<UserState>, ()> {
        move || Ok(Some(s))
    }

    #[test]
    fn least_recently_used_is_evicted_first() {
        let r = Resident::new(NonZeroUsize::new(2).unwrap());
        r.publish(user("a"), Arc::new(state(1)));
        r.publish(user("b"), Arc::new(state(2)));
        assert!(r.get("a").is_some(), "a is now the most recent");
        r.publish(user("c"), Arc::new(state(3)));
        assert_eq!(r.len(), 2);
        assert!(r.get("b").is_none(), "b was least recently used");
        assert_eq!(*r.get("a").unwrap(), state(1));
        assert_eq!(*r.get("c").unwrap(), state(3));
    }

    #[test]
    fn a_miss_loads_installs_and_then_hits() {
        let r = Resident::new(NonZeroUsize::new(2).unwrap());
        let got = r.get_or_load(&user("a"), loaded(state(1))).unwrap();
        assert_eq!(*got.unwrap(), state(1));
        assert_eq!(r.len(), 1);
        let again = r
            .get_or_load(&user("a"), || -> Result<_, ()> {
                panic!("a resident shopper is not loaded again")
            })
            .unwrap();
        assert_eq!(*again.unwrap(), state(1));
        let nobody = r.get_or_load(&user("nobody"), || Ok::<_, ()>(None));
        assert_eq!(nobody, Ok(None));
        assert_eq!(r.len(), 1, "unknown shoppers are not cached");
        assert_eq!(
            r.get_or_load(&user("b"), || Err("store down")),
            Err("store down")
        );
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn a_load_racing_a_publish_never_installs_its_stale_snapshot() {
        let r = Resident::new(NonZeroUsize::new(4).unwrap());
        // The reader's snapshot predates the commit the writer publishes
        // while the reader is loading.
        let got = r
            .get_or_load(&user("a"), || {
                r.publish(user("a"), Arc::new(state(2)));
                Ok::<_, ()>(Some(state(1)))
            })
            .unwrap();
        assert_eq!(*got.unwrap(), state(2), "the published state wins");
        assert_eq!(*r.get("a").unwrap(), state(2));

        // Published and already evicted again before the reader is back:
        // the stale snapshot answers this one overlapping request but is
        // not installed; the next read loads the store afresh.
        let r = Resident::new(NonZeroUsize::new(1).unwrap());
        let got = r
            .get_or_load(&user("a"), || {
                r.publish(user("a"), Arc::new(state(2)));
                r.publish(user("b"), Arc::new(state(9)));
                Ok::<_, ()>(Some(state(1)))
            })
            .unwrap();
        assert_eq!(*got.unwrap(), state(1));
        assert!(r.get("a").is_none(), "the stale snapshot was not installed");
        let fresh = r.get_or_load(&user("a"), loaded(state(2))).unwrap();
        assert_eq!(*fresh.unwrap(), state(2));
        assert_eq!(*r.get("a").unwrap(), state(2));
    }

    #[test]
    fn a_load_racing_a_forget_does_not_bring_the_shopper_back() {
        let r = Resident::new(NonZeroUsize::new(4).unwrap());
        r.publish(user("a"), Arc::new(state(1)));
        assert!(r.remove("a"));
        assert!(!r.remove("a"));
        let got = r
            .get_or_load(&user("a"), || {
                // Snapshot taken before a second forget's commit, which
                // lands (and is applied here) while the load runs.
                r.remove("a");
                Ok::<_, ()>(Some(state(1)))
            })
            .unwrap();
        assert!(got.is_some(), "the overlapping request may still see it");
        assert!(r.get("a").is_none(), "but it is not resident again");
        assert_eq!(r.len(), 0);
    }
}
