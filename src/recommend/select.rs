//! Turning candidate lists into the final k: shares, caps, MMR, reasons.
//!
//! Every recommendation path ends here with one or more ranked candidate
//! lists (one per taste interest, or a trending list with an explore list
//! behind it) and a quota per list. Picks alternate between lists by how far
//! each is below its quota (a weighted round robin), skip duplicates and
//! products over their attribute cap, and, with MMR on, take from the due
//! list the candidate with the best `(1 - lambda) * relevance - lambda *
//! (max similarity to the picks so far)`. Similarity is the catalogue's
//! metric, as relevance is, so the two terms share a scale (under euclidean
//! both are minus a distance). A list that runs dry hands its
//! remaining quota to the lists after it, in order, which is how "trending,
//! then a diverse fill" and "multi-interest, but never fewer than k" work.
//!
//! **Cost.** MMR looks at a window of [`mmr_window`] candidates from the
//! front of the due list (taken and inadmissible ones at the front are
//! skipped for good), and keeps each candidate's similarity to the picks
//! incrementally, so each candidate is compared with each pick at most once:
//! a request costs at most `k x (k + mmr_window(k))` vector similarities
//! (k <= `limits.max_k`), whatever the list sizes. (Recomputing every
//! candidate's similarity to every pick, over the whole list, costs 98 s of
//! CPU for k = 1000 with MMR on 5,000 products.) The loop also stops as soon as `cancelled` says nobody waits for
//! the answer.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use crate::{catalog::AttributeView, domain::Metric, index::VectorIndex};

/// One candidate of one list.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub key: Arc<str>,
    /// Relevance, higher is better.
    pub score: f32,
}

/// How a pick from a list is explained.
#[derive(Debug, Clone)]
pub enum Why {
    /// By the anchor (a product the shopper interacted with, or a query
    /// product) most similar to the pick.
    NearestAnchor,
    Fixed(&'static str),
}

#[derive(Debug, Clone)]
pub struct List {
    /// Best first.
    pub candidates: Vec<Candidate>,
    pub quota: usize,
    /// MMR trade-off for picks from this list (0 = off).
    pub mmr_lambda: f32,
    pub why: Why,
    /// Whether the list was cut at the size asked for, i.e. more
    /// candidates exist; used to decide whether to fetch again wider.
    pub saturated: bool,
}

/// A reason-giving reference point.
#[derive(Debug, Clone)]
pub struct Anchor {
    pub reason: String,
    pub vector: Arc<[f32]>,
}

#[derive(Debug, Clone)]
pub struct Pick {
    pub key: Arc<str>,
    pub score: f32,
    pub reason: String,
}

/// Vectors of the candidates (unit length under cosine), fetched once per
/// request, and the metric they are compared with.
#[derive(Debug)]
pub struct Vectors<'a> {
    index: &'a VectorIndex,
    cache: HashMap<Arc<str>, Option<Arc<[f32]>>>,
}

impl<'a> Vectors<'a> {
    pub fn new(index: &'a VectorIndex) -> Self {
        Self {
            index,
            cache: HashMap::new(),
        }
    }

    /// The index's metric: how picks and anchors are compared.
    pub fn metric(&self) -> Metric {
        self.index.metric()
    }

    pub fn get(&mut self, key: &Arc<str>) -> Option<Arc<[f32]>> {
        self.cache
            .entry(Arc::clone(key))
            .or_insert_with(|| self.index.get(key))
            .clone()
    }
}

/// Candidates MMR weighs for each pick of a list with quota (or, for a
/// fallback list, k) `quota`: the over-fetch the planner asks for when MMR
/// is on, so MMR sees every candidate fetched for it in the common case.
pub fn mmr_window(quota: usize) -> usize {
    quota.saturating_mul(4).max(quota.saturating_add(16))
}

/// At most `max` picks per value of attribute `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cap {
    pub key: String,
    pub max: usize,
}

/// Largest-remainder split of `k` by `shares` (which sum to ~1).
pub fn quotas(k: usize, shares: &[f64]) -> Vec<usize> {
    let total: f64 = shares.iter().sum();
    if shares.is_empty() || total.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return vec![0; shares.len()];
    }
    let exact: Vec<f64> = shares.iter().map(|s| s / total * k as f64).collect();
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "each exact share is in [0, k]"
    )]
    let mut out: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut left = k.saturating_sub(out.iter().sum());
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|&a, &b| {
        let ra = exact[a] - exact[a].floor();
        let rb = exact[b] - exact[b].floor();
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for i in order {
        if left == 0 {
            break;
        }
        out[i] += 1;
        left -= 1;
    }
    out
}

/// Picks up to `k` products from `lists` (see the module docs).
pub fn select(
    lists: &[List],
    k: usize,
    cap: Option<&Cap>,
    view: &AttributeView<'_>,
    vectors: &mut Vectors<'_>,
    anchors: &[Anchor],
    cancelled: &dyn Fn() -> bool,
) -> Vec<Pick> {
    let metric = vectors.metric();
    let mut taken = vec![0usize; lists.len()];
    // Per list and candidate: (max similarity to the picks folded in so far,
    // how many picks that covers), for incremental MMR.
    let mut redundancy: Vec<Vec<(f32, usize)>> = lists
        .iter()
        .map(|l| {
            if l.mmr_lambda > 0.0 {
                vec![(f32::NEG_INFINITY, 0); l.candidates.len()]
            } else {
                Vec::new()
            }
        })
        .collect();
    let mut next = vec![0usize; lists.len()];
    let mut dry = vec![false; lists.len()];
    let mut seen: HashSet<Arc<str>> = HashSet::new();
    let mut per_value: HashMap<String, usize> = HashMap::new();
    let mut picks: Vec<(usize, Candidate)> = Vec::with_capacity(k);
    let mut picked_vectors: Vec<Arc<[f32]>> = Vec::with_capacity(k);
    let capped_value = |key: &str| -> Option<String> {
        let cap = cap?;
        view.get(key)?.get(&cap.key).cloned()
    };
    while picks.len() < k {
        if cancelled() {
            return Vec::new();
        }
        // The list furthest below its quota, else the first with anything left.
        let due = (0..lists.len())
            .filter(|&i| !dry[i] && taken[i] < lists[i].quota)
            .max_by(|&a, &b| {
                let fa = (lists[a].quota - taken[a]) as f64 / lists[a].quota as f64;
                let fb = (lists[b].quota - taken[b]) as f64 / lists[b].quota as f64;
                fa.total_cmp(&fb).then(b.cmp(&a))
            })
            .or_else(|| (0..lists.len()).find(|&i| !dry[i]));
        let Some(l) = due else { break };
        let list = &lists[l];
        let admissible = |c: &Candidate| {
            !seen.contains(&c.key)
                && match (cap, capped_value(&c.key)) {
                    (Some(cap), Some(value)) => {
                        per_value.get(&value).copied().unwrap_or(0) < cap.max
                    }
                    _ => true,
                }
        };
        let chosen = if list.mmr_lambda > 0.0 && !picked_vectors.is_empty() {
            let lambda = list.mmr_lambda;
            // Taken or inadmissible candidates at the front stay so (caps
            // only tighten), so the window starts after them.
            while next[l] < list.candidates.len() && !admissible(&list.candidates[next[l]]) {
                next[l] += 1;
            }
            let base = if list.quota == 0 { k } else { list.quota };
            let end = next[l]
                .saturating_add(mmr_window(base))
                .min(list.candidates.len());
            let mut best: Option<(usize, f32)> = None;
            let window = list.candidates[next[l]..end]
                .iter()
                .zip(&mut redundancy[l][next[l]..end]);
            for (i, (c, (max_sim, folded))) in (next[l]..).zip(window) {
                if !admissible(c) {
                    continue;
                }
                let Some(v) = vectors.get(&c.key) else {
                    continue;
                };
                for p in &picked_vectors[*folded..] {
                    *max_sim = max_sim.max(metric.similarity(p, &v));
                }
                *folded = picked_vectors.len();
                let value = (1.0 - lambda) * c.score - lambda * *max_sim;
                if best.is_none_or(|(_, b)| value > b) {
                    best = Some((i, value));
                }
            }
            best.map(|(i, _)| i)
        } else {
            // Candidates before `next[l]` were all taken or inadmissible,
            // and stay so (caps only tighten), so the scan resumes there.
            let found = (next[l]..list.candidates.len()).find(|&i| admissible(&list.candidates[i]));
            if let Some(i) = found {
                next[l] = i + 1;
            }
            found
        };
        let Some(i) = chosen else {
            dry[l] = true;
            continue;
        };
        let c = list.candidates[i].clone();
        seen.insert(Arc::clone(&c.key));
        if let Some(value) = capped_value(&c.key) {
            *per_value.entry(value).or_default() += 1;
        }
        if let Some(v) = vectors.get(&c.key) {
            picked_vectors.push(v);
        }
        taken[l] += 1;
        picks.push((l, c));
    }
    // Without MMR the pick order is an artefact of the round robin; show
    // the best first. With MMR the pick order is the diversified ranking.
    if lists.iter().all(|l| l.mmr_lambda <= 0.0) {
        picks.sort_by(|a, b| {
            b.1.score
                .total_cmp(&a.1.score)
                .then_with(|| a.1.key.cmp(&b.1.key))
        });
    }
    picks
        .into_iter()
        .map(|(l, c)| {
            let reason = match &lists[l].why {
                Why::Fixed(s) => (*s).to_owned(),
                Why::NearestAnchor => vectors
                    .get(&c.key)
                    .and_then(|v| {
                        anchors
                            .iter()
                            .map(|a| (a, metric.similarity(&a.vector, &v)))
                            .max_by(|x, y| x.1.total_cmp(&y.1))
                            .map(|(a, _)| a.reason.clone())
                    })
                    .unwrap_or_default(),
            };
            Pick {
                key: c.key,
                score: c.score,
                reason,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        catalog::AttributeTable,
        domain::Attributes,
        index::{IndexParams, VectorIndex},
    };
    use proptest::prelude::*;

    /// Products `p0..` with the given kinds, at angles `i * 10` degrees.
    fn fixture(kinds: &[&str]) -> (AttributeTable, VectorIndex) {
        let table = AttributeTable::default();
        let index = VectorIndex::new(2, IndexParams::default());
        for (i, kind) in kinds.iter().enumerate() {
            let id: Arc<str> = Arc::from(format!("p{i}"));
            table.insert(
                Arc::clone(&id),
                [("kind".to_owned(), (*kind).to_owned())]
                    .into_iter()
                    .collect(),
            );
            let angle = (i as f32 * 10.0).to_radians();
            index
                .upsert(id, Arc::from(vec![angle.cos(), angle.sin()]))
                .unwrap();
        }
        (table, index)
    }

    fn list(ids: &[(usize, f32)], quota: usize, mmr_lambda: f32) -> List {
        List {
            candidates: ids
                .iter()
                .map(|&(i, score)| Candidate {
                    key: Arc::from(format!("p{i}")),
                    score,
                })
                .collect(),
            quota,
            mmr_lambda,
            why: Why::Fixed("test"),
            saturated: false,
        }
    }

    fn keys(picks: &[Pick]) -> Vec<&str> {
        picks.iter().map(|p| &*p.key).collect()
    }

    #[test]
    fn caps_skip_and_a_dry_list_hands_over_to_the_next() {
        let (table, index) = fixture(&["a", "a", "a", "b", "b", "c"]);
        let view = table.view();
        let mut vectors = Vectors::new(&index);
        let lists = [
            list(&[(0, 0.9), (1, 0.8), (2, 0.7)], 3, 0.0),
            list(&[(3, 0.6), (4, 0.5), (5, 0.4)], 0, 0.0),
        ];
        let cap = Cap {
            key: "kind".into(),
            max: 1,
        };
        let picks = select(&lists, 5, Some(&cap), &view, &mut vectors, &[], &|| false);
        assert_eq!(
            keys(&picks),
            ["p0", "p3", "p5"],
            "one per kind, then nothing left"
        );
        let picks = select(&lists, 4, None, &view, &mut vectors, &[], &|| false);
        assert_eq!(keys(&picks), ["p0", "p1", "p2", "p3"]);
    }

    #[test]
    fn quotas_share_k_between_lists_and_duplicates_count_once() {
        let (table, index) = fixture(&["a", "a", "b", "b", "b"]);
        let view = table.view();
        let mut vectors = Vectors::new(&index);
        let lists = [
            list(&[(0, 0.9), (1, 0.8), (2, 0.2)], 1, 0.0),
            list(&[(0, 0.9), (2, 0.7), (3, 0.6), (4, 0.5)], 2, 0.0),
        ];
        let picks = select(&lists, 3, None, &view, &mut vectors, &[], &|| false);
        assert_eq!(keys(&picks), ["p0", "p2", "p3"]);
    }

    #[test]
    fn mmr_trades_relevance_for_distance_from_the_picks() {
        let (table, index) = fixture(&["a", "a", "a", "a", "a", "a", "a", "a", "a", "a"]);
        let view = table.view();
        let mut vectors = Vectors::new(&index);
        // p0 and p1 are 10 degrees apart, p9 is 90 degrees from p0.
        let plain = [list(&[(0, 0.9), (1, 0.89), (9, 0.5)], 2, 0.0)];
        let diverse = [list(&[(0, 0.9), (1, 0.89), (9, 0.5)], 2, 0.5)];
        assert_eq!(
            keys(&select(&plain, 2, None, &view, &mut vectors, &[], &|| {
                false
            })),
            ["p0", "p1"]
        );
        assert_eq!(
            keys(&select(
                &diverse,
                2,
                None,
                &view,
                &mut vectors,
                &[],
                &|| false
            )),
            ["p0", "p9"]
        );
    }

    #[test]
    fn mmr_weighs_only_its_window_and_stops_when_cancelled() {
        // 36 products round the circle; a list of quota 1 has a window of 17.
        let kinds = vec!["a"; 36];
        let (table, index) = fixture(&kinds);
        let view = table.view();
        let mut vectors = Vectors::new(&index);
        assert_eq!(mmr_window(1), 17);
        // p18 (180 degrees from p0) is the most diverse second pick, but it
        // is 19th in the list, outside the window after p0 is taken.
        let ranked: Vec<(usize, f32)> = (0..18)
            .map(|i| (i, 0.9 - i as f32 * 0.001))
            .chain([(18, 0.8)])
            .collect();
        let mut l = list(&ranked, 1, 1.0);
        l.quota = 0;
        let picks = select(&[l.clone()], 2, None, &view, &mut vectors, &[], &|| false);
        // Window of mmr_window(k = 2) = 18 after p0: p1..=p18, so p18 is in it.
        assert_eq!(keys(&picks), ["p0", "p18"]);
        let picks = select(&[l.clone()], 1, None, &view, &mut vectors, &[], &|| false);
        assert_eq!(keys(&picks), ["p0"]);
        // Moved to position 19, just past that window, p18 is never weighed:
        // the most distant point inside the window (p17 or p19, 170 or 190
        // degrees from p0) is picked instead.
        let mut order: Vec<(usize, f32)> = (0..18).map(|i| (i, 0.9 - i as f32 * 0.001)).collect();
        order.extend([(19, 0.85), (18, 0.8)]);
        let mut past = list(&order, 1, 1.0);
        past.quota = 0;
        let picks = select(&[past], 2, None, &view, &mut vectors, &[], &|| false);
        assert_eq!(picks[0].key.as_ref(), "p0");
        assert!(
            ["p17", "p19"].contains(&picks[1].key.as_ref()),
            "{:?}",
            keys(&picks)
        );
        let picks = select(&[l], 2, None, &view, &mut vectors, &[], &|| true);
        assert!(picks.is_empty(), "a cancelled selection stops at once");
    }

    proptest! {
        /// The incremental redundancy gives the same picks as recomputing
        /// the maximum similarity to every pick for every candidate.
        #[test]
        fn incremental_mmr_matches_the_direct_definition(
            scores in proptest::collection::vec(0.0f32..1.0, 2..30),
            lambda in 0.05f32..1.0,
            k in 1usize..10,
        ) {
            let kinds = vec!["a"; 36];
            let (table, index) = fixture(&kinds);
            let view = table.view();
            let mut vectors = Vectors::new(&index);
            let ranked: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
            let mut sorted = ranked.clone();
            sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
            let l = list(&sorted, k, lambda);
            let got = select(std::slice::from_ref(&l), k, None, &view, &mut vectors, &[], &|| false);
            // Direct MMR over the same window.
            let mut picked: Vec<usize> = Vec::new();
            let mut start = 0;
            while picked.len() < k.min(sorted.len()) {
                while start < sorted.len() && picked.contains(&start) {
                    start += 1;
                }
                let choice = if picked.is_empty() {
                    start
                } else {
                    let end = (start + mmr_window(k)).min(sorted.len());
                    let mut best: Option<(usize, f32)> = None;
                    for i in start..end {
                        if picked.contains(&i) {
                            continue;
                        }
                        let v = vectors.get(&l.candidates[i].key).unwrap();
                        let red = picked
                            .iter()
                            .map(|&j| crate::domain::dot(&vectors.get(&l.candidates[j].key).unwrap(), &v))
                            .fold(f32::NEG_INFINITY, f32::max);
                        let value = (1.0 - lambda) * l.candidates[i].score - lambda * red;
                        if best.is_none_or(|(_, b)| value > b) {
                            best = Some((i, value));
                        }
                    }
                    best.map_or(start, |(i, _)| i)
                };
                picked.push(choice);
            }
            let want: Vec<&str> = picked.iter().map(|&i| &*l.candidates[i].key).collect();
            prop_assert_eq!(keys(&got), want);
        }
    }

    #[test]
    fn reasons_name_the_nearest_anchor() {
        let (table, index) = fixture(&["a", "a", "a", "a", "a", "a", "a", "a", "a", "a"]);
        let view = table.view();
        let mut vectors = Vectors::new(&index);
        let anchor = |i: usize, reason: &str| Anchor {
            reason: reason.to_owned(),
            vector: index.get(&format!("p{i}")).unwrap(),
        };
        let anchors = [anchor(0, "near p0"), anchor(9, "near p9")];
        let mut l = list(&[(1, 0.9), (8, 0.8)], 2, 0.0);
        l.why = Why::NearestAnchor;
        let picks = select(&[l], 2, None, &view, &mut vectors, &anchors, &|| false);
        let reasons: Vec<&str> = picks.iter().map(|p| p.reason.as_str()).collect();
        assert_eq!(reasons, ["near p0", "near p9"]);
    }

    /// Products `p0..` at `[i, 0]`, compared by Euclidean distance.
    fn line(n: usize) -> (AttributeTable, VectorIndex) {
        let table = AttributeTable::default();
        let params = IndexParams {
            metric: Metric::Euclidean,
            ..IndexParams::default()
        };
        let index = VectorIndex::new(2, params);
        for i in 0..n {
            let id: Arc<str> = Arc::from(format!("p{i}"));
            table.insert(Arc::clone(&id), Attributes::new());
            index.upsert(id, Arc::from(vec![i as f32, 0.0])).unwrap();
        }
        (table, index)
    }

    /// MMR and reasons use the catalogue's metric: under Euclidean, the
    /// picks' redundancy is minus their distance and the reason names the
    /// nearest anchor, where a dot product would name the longest one.
    #[test]
    fn mmr_and_reasons_follow_the_metric() {
        let (table, index) = line(11);
        let view = table.view();
        let mut vectors = Vectors::new(&index);
        assert_eq!(vectors.metric(), Metric::Euclidean);
        // Scored by distance from a query at the origin.
        let ranked = [(1, -1.0), (2, -2.0), (9, -9.0)];
        let plain = [list(&ranked, 2, 0.0)];
        let diverse = [list(&ranked, 2, 0.7)];
        let pick = |lists: &[List], vectors: &mut Vectors<'_>| {
            keys(&select(lists, 2, None, &view, vectors, &[], &|| false))
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(pick(&plain, &mut vectors), ["p1", "p2"]);
        // After p1, p2 is worth 0.3 * -2 - 0.7 * -1 = 0.1, p9 0.3 * -9 -
        // 0.7 * -8 = 2.9.
        assert_eq!(pick(&diverse, &mut vectors), ["p1", "p9"]);

        let anchor = |i: usize, reason: &str| Anchor {
            reason: reason.to_owned(),
            vector: index.get(&format!("p{i}")).unwrap(),
        };
        let anchors = [anchor(1, "near p1"), anchor(10, "near p10")];
        let mut l = list(&[(2, -1.0), (8, -2.0)], 2, 0.0);
        l.why = Why::NearestAnchor;
        let picks = select(&[l], 2, None, &view, &mut vectors, &anchors, &|| false);
        let reasons: Vec<&str> = picks.iter().map(|p| p.reason.as_str()).collect();
        assert_eq!(reasons, ["near p1", "near p10"]);
    }

    #[test]
    fn quotas_follow_shares_and_sum_to_k() {
        assert_eq!(quotas(10, &[0.5, 0.3, 0.2]), vec![5, 3, 2]);
        assert_eq!(quotas(10, &[0.7, 0.3]), vec![7, 3]);
        assert_eq!(quotas(3, &[0.34, 0.33, 0.33]), vec![1, 1, 1]);
        assert_eq!(quotas(1, &[0.6, 0.4]), vec![1, 0]);
        assert_eq!(quotas(5, &[]), Vec::<usize>::new());
    }

    proptest! {
        #[test]
        fn quotas_always_sum_to_k(k in 0usize..200, shares in proptest::collection::vec(0.0f64..1.0, 1..8)) {
            let q = quotas(k, &shares);
            if shares.iter().sum::<f64>() > 0.0 {
                prop_assert_eq!(q.iter().sum::<usize>(), k);
            }
        }
    }
}
