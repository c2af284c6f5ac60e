//! One shopper's state (kept history, taste profile), how it is rebuilt
//! from the store, and the read-only view a query gets.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
};

use crate::store::{StoredInterest, StoredProfile, StoredShopper};

use super::{
    Action,
    profile::{Interest, TasteProfile},
};

/// One kept interaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Event {
    pub seq: u64,
    pub product: Arc<str>,
    pub action: Action,
}

/// Per product, how often each kind of action is in the kept history;
/// maintained on append and evict so exclusion checks are a hash lookup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Counts {
    purchases: u32,
    views: u32,
    dislikes: u32,
}

impl Counts {
    fn slot(&mut self, action: Action) -> &mut u32 {
        match action {
            Action::Purchase => &mut self.purchases,
            Action::View | Action::Click | Action::AddToCart => &mut self.views,
            Action::Dislike => &mut self.dislikes,
        }
    }

    fn is_zero(&self) -> bool {
        self.purchases == 0 && self.views == 0 && self.dislikes == 0
    }
}

/// Everything kept about one shopper. Immutable once published: the writer
/// clones, changes and swaps it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct UserState {
    pub profile: TasteProfile,
    pub next_seq: u64,
    /// Arrival order, at most `max_history` long.
    pub history: VecDeque<Event>,
    pub counts: HashMap<Arc<str>, Counts>,
}

impl UserState {
    pub fn push(&mut self, event: Event, max_history: usize, evicted: &mut Vec<u64>) {
        *self
            .counts
            .entry(Arc::clone(&event.product))
            .or_default()
            .slot(event.action) += 1;
        self.history.push_back(event);
        while self.history.len() > max_history {
            let Some(old) = self.history.pop_front() else {
                break;
            };
            if let Some(c) = self.counts.get_mut(&old.product) {
                let slot = c.slot(old.action);
                *slot = slot.saturating_sub(1);
                if c.is_zero() {
                    self.counts.remove(&old.product);
                }
            }
            evicted.push(old.seq);
        }
    }

    /// Rebuilds a shopper from their stored profile and history rows (in
    /// sequence order); `None` when nothing is stored. Because the writer
    /// deletes every row it evicts and stores the profile it keeps, this is
    /// exactly the state the writer last published. Also returns the rows
    /// skipped for an unknown action.
    pub fn from_stored(
        stored: StoredShopper,
        dim: usize,
        max_history: usize,
    ) -> Option<(Self, usize)> {
        if stored.profile.is_none() && stored.history.is_empty() {
            return None;
        }
        let mut state = Self::default();
        if let Some(p) = stored.profile {
            state.profile = TasteProfile {
                reference_ms: p.reference_ms,
                interests: p
                    .interests
                    .into_iter()
                    .filter(|i| i.mean.len() == dim && i.weight > 0.0 && i.weight.is_finite())
                    .map(|i| Interest {
                        mean: i.mean,
                        weight: i.weight,
                    })
                    .collect(),
            };
            state.next_seq = p.next_seq;
        }
        let mut orphans = 0;
        // Nothing is evicted here unless `max_history` was lowered since
        // the rows were written.
        let mut unused = Vec::new();
        for (seq, i) in stored.history {
            let Some(action) = Action::from_code(i.action) else {
                orphans += 1;
                continue;
            };
            state.next_seq = state.next_seq.max(seq + 1);
            let event = Event {
                seq,
                product: Arc::from(i.product_id),
                action,
            };
            state.push(event, max_history, &mut unused);
        }
        Some((state, orphans))
    }

    /// The profile row the store keeps for this state.
    pub fn stored_profile(&self) -> StoredProfile {
        StoredProfile {
            reference_ms: self.profile.reference_ms,
            next_seq: self.next_seq,
            interests: self
                .profile
                .interests
                .iter()
                .map(|i| StoredInterest {
                    mean: i.mean.clone(),
                    weight: i.weight,
                })
                .collect(),
        }
    }
}

/// What a query may see of a shopper, from the configuration.
#[derive(Debug, Clone, Copy)]
pub(super) struct ViewRules {
    pub exclude_purchased: bool,
    pub exclude_viewed: bool,
    pub max_dislikes: usize,
    pub reason_window: usize,
}

/// A read-only view of one shopper for a query.
#[derive(Debug, Clone)]
pub struct Shopper {
    state: Arc<UserState>,
    rules: ViewRules,
}

impl Shopper {
    pub(super) fn new(state: Arc<UserState>, rules: ViewRules) -> Self {
        Self { state, rules }
    }

    /// Interests as (unit direction, share of weight), largest first; empty
    /// without positive evidence.
    pub fn interests(&self) -> Vec<(Vec<f32>, f64)> {
        self.state.profile.directions()
    }

    /// Whether `id` must not be recommended: disliked, or bought/viewed
    /// when configured so.
    pub fn excludes(&self, id: &str) -> bool {
        self.state.counts.get(id).is_some_and(|c| {
            c.dislikes > 0
                || (self.rules.exclude_purchased && c.purchases > 0)
                || (self.rules.exclude_viewed && c.views > 0)
        })
    }

    /// Most recent distinct disliked products, newest first.
    pub fn dislikes(&self) -> Vec<Arc<str>> {
        self.recent(|a| a == Action::Dislike, self.rules.max_dislikes)
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    /// Most recent distinct positively-interacted products with the
    /// strongest action taken on each, newest first (for reasons).
    pub fn recent_positives(&self) -> Vec<(Arc<str>, Action)> {
        self.recent(|a| a != Action::Dislike, self.rules.reason_window)
            .into_iter()
            .map(|(id, action)| {
                let c = self.state.counts.get(&id).copied().unwrap_or_default();
                let strongest = if c.purchases > 0 {
                    Action::Purchase
                } else {
                    action
                };
                (id, strongest)
            })
            .collect()
    }

    fn recent(&self, want: impl Fn(Action) -> bool, limit: usize) -> Vec<(Arc<str>, Action)> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for e in self.state.history.iter().rev() {
            if out.len() >= limit {
                break;
            }
            if want(e.action) && seen.insert(Arc::clone(&e.product)) {
                out.push((Arc::clone(&e.product), e.action));
            }
        }
        out
    }

    pub fn interactions(&self) -> usize {
        self.state.history.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoredInteraction;

    #[test]
    fn history_is_bounded_and_counts_follow_evictions() {
        let mut s = UserState::default();
        let mut evicted = Vec::new();
        for seq in 0..5 {
            s.push(
                Event {
                    seq,
                    product: Arc::from(if seq == 0 { "bought" } else { "viewed" }),
                    action: if seq == 0 {
                        Action::Purchase
                    } else {
                        Action::View
                    },
                },
                3,
                &mut evicted,
            );
        }
        assert_eq!(s.history.len(), 3);
        assert_eq!(evicted, vec![0, 1]);
        assert!(
            !s.counts.contains_key("bought"),
            "evicted purchase is forgotten"
        );
        assert_eq!(s.counts["viewed"].views, 3);
    }

    fn row(product: &str, action: u8) -> StoredInteraction {
        StoredInteraction {
            product_id: product.to_owned(),
            action,
            timestamp_ms: 0,
        }
    }

    #[test]
    fn nothing_stored_is_no_shopper_and_bad_rows_are_skipped() {
        assert!(UserState::from_stored(StoredShopper::default(), 2, 10).is_none());
        let stored = StoredShopper {
            profile: Some(StoredProfile {
                reference_ms: 5,
                next_seq: 3,
                interests: vec![
                    StoredInterest {
                        mean: vec![1.0, 0.0],
                        weight: 2.0,
                    },
                    // Wrong dimension: another model's profile.
                    StoredInterest {
                        mean: vec![1.0],
                        weight: 1.0,
                    },
                ],
            }),
            history: vec![(1, row("a", 1)), (2, row("b", 99)), (7, row("c", 5))],
        };
        let (state, orphans) = UserState::from_stored(stored, 2, 10).unwrap();
        assert_eq!(orphans, 1);
        assert_eq!(state.profile.interests.len(), 1);
        assert_eq!(state.next_seq, 8, "past the newest row");
        assert_eq!(state.history.len(), 2);
        assert_eq!(state.counts["c"].dislikes, 1);
        assert_eq!(state.stored_profile().next_seq, 8);
    }
}
