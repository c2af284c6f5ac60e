//! One shopper's state (kept history, taste profile), how it is rebuilt
//! from the store, and the read-only view a query gets.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
};

use crate::store::{StoreError, StoredInterest, StoredProfile, StoredShopper};

use super::{
    Action, ActionWeights,
    profile::{Interest, ProfileRules, TasteProfile},
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
    /// Sequence numbers of this shopper's history rows that are in the
    /// store but fail their checks: the next commit for the shopper deletes
    /// them, so a damaged row is reported until then and not forever.
    pub damaged: Vec<u64>,
}

/// What reading a shopper back from the store needs besides their rows.
pub(super) struct Restore<'a> {
    /// The catalogue's dimension: stored interests of another are dropped.
    pub dim: usize,
    pub max_history: usize,
    /// How the writer turns interactions into a profile, for replaying the
    /// history when the profile row is damaged.
    pub weights: &'a ActionWeights,
    pub rules: &'a ProfileRules,
    pub vector: &'a VectorLookup<'a>,
}

/// A product's vector as the catalogue has it; `None` when the catalogue
/// does not have the product.
pub(super) type VectorLookup<'a> = dyn Fn(&str) -> Result<Option<Vec<f32>>, StoreError> + 'a;

/// A shopper read back from the store.
#[derive(Debug, PartialEq)]
pub(super) struct Restored {
    pub state: UserState,
    /// History rows skipped for an unknown action.
    pub orphans: usize,
    /// Set when the profile row was damaged: the profile was rebuilt by
    /// replaying this many readable history rows (0: nothing to replay,
    /// the shopper starts again as a newcomer).
    pub replayed: Option<usize>,
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
    /// exactly the state the writer last published.
    ///
    /// Damaged rows (reported by the store, logged by the caller) are left
    /// out. A damaged history row loses that interaction's exclusion and
    /// reason; its sequence number is kept so the next commit deletes the
    /// row and never reuses the number. A damaged profile is rebuilt by
    /// replaying the readable history through [`TasteProfile::add`], as the
    /// writer built it. That matches the lost profile except for what the
    /// history no longer holds: interactions already evicted from the
    /// bounded history (`max_history`) and damaged rows are missing from
    /// it, products since removed from the catalogue count for nothing,
    /// replaced ones with their new vector, and a changed configuration
    /// (weights, half-life, interests) applies to all of it. With nothing
    /// readable to replay the shopper starts again as a newcomer. Fails
    /// only if reading a vector for the replay fails.
    pub fn from_stored(
        stored: StoredShopper,
        restore: &Restore<'_>,
    ) -> Result<Option<Restored>, StoreError> {
        let StoredShopper {
            profile,
            history,
            damaged_profile,
            damaged_history,
        } = stored;
        if profile.is_none()
            && history.is_empty()
            && damaged_profile.is_none()
            && damaged_history.is_empty()
        {
            return Ok(None);
        }
        let mut state = Self::default();
        if let Some(p) = profile {
            state.profile = TasteProfile {
                reference_ms: p.reference_ms,
                interests: p
                    .interests
                    .into_iter()
                    .filter(|i| {
                        i.mean.len() == restore.dim && i.weight > 0.0 && i.weight.is_finite()
                    })
                    .map(|i| Interest {
                        mean: i.mean,
                        weight: i.weight,
                    })
                    .collect(),
            };
            state.next_seq = p.next_seq;
        }
        let mut replayed = damaged_profile.is_some().then_some(0);
        for (seq, _) in &damaged_history {
            state.next_seq = state.next_seq.max(seq + 1);
            state.damaged.push(*seq);
        }
        let mut orphans = 0;
        // Nothing is evicted here unless `max_history` was lowered since
        // the rows were written.
        let mut unused = Vec::new();
        for (seq, i) in history {
            let Some(action) = Action::from_code(i.action) else {
                orphans += 1;
                continue;
            };
            state.next_seq = state.next_seq.max(seq + 1);
            if let Some(replayed) = &mut replayed {
                if let Some(weight) = restore.weights.of(action)
                    && let Some(vector) = (restore.vector)(&i.product_id)?
                    && vector.len() == restore.dim
                {
                    state
                        .profile
                        .add(&vector, weight, i.timestamp_ms, restore.rules);
                }
                *replayed += 1;
            }
            let event = Event {
                seq,
                product: Arc::from(i.product_id),
                action,
            };
            state.push(event, restore.max_history, &mut unused);
        }
        Ok(Some(Restored {
            state,
            orphans,
            replayed,
        }))
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

    /// Interests as (mean of their embeddings, share of weight), largest
    /// first; empty without positive evidence. The query planner makes each
    /// mean a query for the catalogue's metric (a unit direction under
    /// cosine).
    pub fn interests(&self) -> Vec<(Vec<f32>, f64)> {
        self.state.profile.centroids()
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
    use crate::store::{StoreError, StoredInteraction};

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

    const RULES: ProfileRules = ProfileRules {
        half_life_ms: 1000.0,
        max_interests: 2,
        join_similarity: 0.7,
    };

    /// Products `a`..`d` on the axes of a 2-d catalogue (`c` and `d`
    /// share one), `x` of another dimension.
    fn vectors() -> HashMap<String, Arc<[f32]>> {
        [
            ("a", vec![1.0, 0.0]),
            ("b", vec![0.0, 1.0]),
            ("c", vec![0.6, 0.8]),
            ("d", vec![0.6, 0.8]),
            ("x", vec![1.0]),
        ]
        .into_iter()
        .map(|(id, v)| (id.to_owned(), Arc::from(v)))
        .collect()
    }

    fn lookup(
        vectors: &HashMap<String, Arc<[f32]>>,
    ) -> impl Fn(&str) -> Result<Option<Vec<f32>>, StoreError> + '_ {
        |p| Ok(vectors.get(p).map(|v| v.to_vec()))
    }

    fn restore<'a>(vector: &'a VectorLookup<'a>, max_history: usize) -> Restore<'a> {
        const WEIGHTS: ActionWeights = ActionWeights {
            view: 1.0,
            click: 2.0,
            add_to_cart: 4.0,
            purchase: 8.0,
        };
        Restore {
            dim: 2,
            max_history,
            weights: &WEIGHTS,
            rules: &RULES,
            vector,
        }
    }

    fn corrupt(table: &'static str, key: &str) -> StoreError {
        StoreError::Corrupt {
            table,
            key: key.to_owned(),
            reason: "checksum mismatch".to_owned(),
        }
    }

    #[test]
    fn nothing_stored_is_no_shopper_and_bad_rows_are_skipped() {
        let vectors = vectors();
        let lookup = lookup(&vectors);
        let restore = restore(&lookup, 10);
        assert!(
            UserState::from_stored(StoredShopper::default(), &restore)
                .unwrap()
                .is_none()
        );
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
            ..StoredShopper::default()
        };
        let Restored {
            state,
            orphans,
            replayed,
        } = UserState::from_stored(stored, &restore).unwrap().unwrap();
        assert_eq!(orphans, 1);
        assert_eq!(replayed, None, "the stored profile is used as it is");
        assert!(state.damaged.is_empty());
        assert_eq!(state.profile.interests.len(), 1);
        assert_eq!(state.next_seq, 8, "past the newest row");
        assert_eq!(state.history.len(), 2);
        assert_eq!(state.counts["c"].dislikes, 1);
        assert_eq!(state.stored_profile().next_seq, 8);
    }

    #[test]
    fn a_damaged_profile_is_rebuilt_from_the_history_as_the_writer_built_it() {
        let vectors = vectors();
        let lookup = lookup(&vectors);
        // Views, a purchase, a dislike (no evidence), a product of another
        // dimension and one no longer in the catalogue (no vector).
        let rows = [
            (0, "a", Action::View, 0),
            (1, "c", Action::Purchase, 400),
            (2, "b", Action::Dislike, 500),
            (3, "d", Action::Click, 900),
            (4, "x", Action::View, 950),
            (5, "gone", Action::View, 990),
            (6, "b", Action::AddToCart, 1000),
        ];
        let stored_rows = || {
            rows.iter()
                .map(|&(seq, p, action, ts)| {
                    (
                        seq,
                        StoredInteraction {
                            product_id: p.to_owned(),
                            action: action.code(),
                            timestamp_ms: ts,
                        },
                    )
                })
                .collect::<Vec<_>>()
        };
        // What the writer built, one interaction at a time.
        let mut expected = TasteProfile::default();
        for &(_, p, action, ts) in &rows {
            if let (Some(w), Some(v)) = (
                restore(&lookup, 10).weights.of(action),
                vectors.get(p).filter(|v| v.len() == 2),
            ) {
                expected.add(v, w, ts, &RULES);
            }
        }
        assert_eq!(expected.interests.len(), 2);

        let intact = UserState::from_stored(
            StoredShopper {
                profile: Some(StoredProfile {
                    reference_ms: expected.reference_ms,
                    next_seq: 7,
                    interests: expected
                        .interests
                        .iter()
                        .map(|i| StoredInterest {
                            weight: i.weight,
                            mean: i.mean.clone(),
                        })
                        .collect(),
                }),
                history: stored_rows(),
                ..StoredShopper::default()
            },
            &restore(&lookup, 10),
        )
        .unwrap()
        .unwrap();
        let rebuilt = UserState::from_stored(
            StoredShopper {
                history: stored_rows(),
                damaged_profile: Some(corrupt("profiles", "ann")),
                ..StoredShopper::default()
            },
            &restore(&lookup, 10),
        )
        .unwrap()
        .unwrap();
        assert_eq!(rebuilt.replayed, Some(7));
        assert_eq!(rebuilt.state.profile, expected, "bit for bit");
        assert_eq!(
            rebuilt.state, intact.state,
            "nothing evicted: the shopper is as before"
        );

        // With the history bounded at 3 the stored rows are the last 3:
        // the profile is rebuilt from them alone.
        let mut from_kept = TasteProfile::default();
        for &(_, p, action, ts) in &rows[4..] {
            if let (Some(w), Some(v)) = (
                restore(&lookup, 3).weights.of(action),
                vectors.get(p).filter(|v| v.len() == 2),
            ) {
                from_kept.add(v, w, ts, &RULES);
            }
        }
        let bounded = UserState::from_stored(
            StoredShopper {
                history: stored_rows().split_off(4),
                damaged_profile: Some(corrupt("profiles", "ann")),
                ..StoredShopper::default()
            },
            &restore(&lookup, 3),
        )
        .unwrap()
        .unwrap();
        assert_eq!(bounded.replayed, Some(3));
        assert_eq!(bounded.state.profile, from_kept);
        assert_ne!(bounded.state.profile, expected, "evicted evidence is lost");
        assert_eq!(bounded.state.next_seq, 7);
    }

    #[test]
    fn damaged_rows_are_remembered_for_deletion_and_never_reuse_their_numbers() {
        let vectors = vectors();
        let lookup = lookup(&vectors);
        // Profile and newest history row damaged, one row readable.
        let restored = UserState::from_stored(
            StoredShopper {
                history: vec![(3, row("a", 1))],
                damaged_profile: Some(corrupt("profiles", "ann")),
                damaged_history: vec![(4, corrupt("interactions", "ann#4"))],
                ..StoredShopper::default()
            },
            &restore(&lookup, 10),
        )
        .unwrap()
        .unwrap();
        assert_eq!(restored.replayed, Some(1));
        assert_eq!(restored.state.damaged, vec![4]);
        assert_eq!(restored.state.next_seq, 5, "past the damaged row too");
        assert_eq!(restored.state.history.len(), 1);
        assert_eq!(restored.state.profile.interests.len(), 1);

        // Nothing readable: a newcomer, still known to the store.
        let restored = UserState::from_stored(
            StoredShopper {
                damaged_profile: Some(corrupt("profiles", "ann")),
                damaged_history: vec![(0, corrupt("interactions", "ann#0"))],
                ..StoredShopper::default()
            },
            &restore(&lookup, 10),
        )
        .unwrap()
        .unwrap();
        assert_eq!(restored.replayed, Some(0));
        assert!(restored.state.profile.is_empty());
        assert!(restored.state.history.is_empty());
        assert_eq!(restored.state.damaged, vec![0]);
        assert_eq!(restored.state.next_seq, 1);

        // A readable profile with a damaged history row keeps the profile.
        let restored = UserState::from_stored(
            StoredShopper {
                profile: Some(StoredProfile {
                    reference_ms: 0,
                    next_seq: 2,
                    interests: Vec::new(),
                }),
                history: vec![(1, row("b", 1))],
                damaged_history: vec![(0, corrupt("interactions", "ann#0"))],
                ..StoredShopper::default()
            },
            &restore(&lookup, 10),
        )
        .unwrap()
        .unwrap();
        assert_eq!(restored.replayed, None);
        assert_eq!(restored.state.damaged, vec![0]);
        assert_eq!(restored.state.next_seq, 2);
        assert!(restored.state.profile.is_empty(), "not replayed");
    }
}
