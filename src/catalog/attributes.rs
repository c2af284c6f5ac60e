//! In-memory attribute table with an inverted index.
//!
//! Filters are evaluated on every candidate an HNSW search visits, so the
//! attributes must be a hash lookup away, not a redb read. The inverted
//! index (key -> value -> ids) tells the query planner how many products a
//! `must` clause admits, so that very selective filters are answered by
//! exact search over the admitted ids instead of a filtered graph walk that
//! visits most of the graph (measured ~100x slower at 2% selectivity).
//!
//! It also keeps the ids in order, for paging through the catalogue
//! (`ListProducts`) without reading the store, and which products have a
//! thumbnail, which every recommendation reports. Both cost a pointer-sized
//! entry per product beside the attributes.
//!
//! Queries take the read lock for each lookup, never for a whole query: the
//! lock is fair, so a writer waiting behind a long query would hold up every
//! query that arrives after it (a convoy). A query may therefore see a
//! product's attributes change between two lookups; its final answer reads
//! each pick's attributes once more, which is also its liveness check.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    ops::Bound,
    sync::Arc,
};

use parking_lot::RwLock;

use crate::domain::{Attributes, Filter};

#[derive(Debug, Default)]
pub struct AttributeTable {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Invariant: every id here appears in exactly the postings of its
    /// attributes, and nowhere else.
    by_id: HashMap<Arc<str>, Arc<Attributes>>,
    postings: HashMap<String, HashMap<String, HashSet<Arc<str>>>>,
    /// Invariant: exactly the keys of `by_id`.
    ordered: BTreeSet<Arc<str>>,
    /// Invariant: a subset of the keys of `by_id`.
    thumbnails: HashSet<Arc<str>>,
}

/// Ids looked at per read-lock hold while paging, so that a page behind a
/// selective filter does not hold writers up for a whole scan.
const PAGE_SCAN_CHUNK: usize = 4096;

/// A product on a page: id, attributes, whether it has a thumbnail.
pub type PageItem = (Arc<str>, Arc<Attributes>, bool);

/// One attribute key of the catalogue with its most common values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facet {
    pub key: String,
    /// `(value, products)`, most common first, then by value.
    pub values: Vec<(String, u64)>,
    /// Distinct values of the key (may exceed `values.len()`).
    pub distinct: u64,
}

impl Inner {
    fn unlink(&mut self, id: &str, attrs: &Attributes) {
        for (k, v) in attrs {
            if let Some(values) = self.postings.get_mut(k) {
                if let Some(ids) = values.get_mut(v) {
                    ids.remove(id);
                    if ids.is_empty() {
                        values.remove(v);
                    }
                }
                if values.is_empty() {
                    self.postings.remove(k);
                }
            }
        }
    }
}

/// Read access for one query; each call takes the read lock briefly (see
/// the module docs).
#[derive(Debug, Clone, Copy)]
pub struct AttributeView<'a> {
    table: &'a AttributeTable,
}

impl AttributeTable {
    /// Inserts or replaces a product without a thumbnail.
    pub fn insert(&self, id: Arc<str>, attributes: Attributes) {
        self.insert_product(id, attributes, false);
    }

    /// Inserts or replaces a product's attributes and thumbnail flag.
    pub fn insert_product(&self, id: Arc<str>, attributes: Attributes, has_thumbnail: bool) {
        let mut inner = self.inner.write();
        if let Some(old) = inner.by_id.remove(&id) {
            inner.unlink(&id, &old);
        } else {
            inner.ordered.insert(Arc::clone(&id));
        }
        if has_thumbnail {
            inner.thumbnails.insert(Arc::clone(&id));
        } else {
            inner.thumbnails.remove(&id);
        }
        for (k, v) in &attributes {
            inner
                .postings
                .entry(k.clone())
                .or_default()
                .entry(v.clone())
                .or_default()
                .insert(Arc::clone(&id));
        }
        inner.by_id.insert(id, Arc::new(attributes));
    }

    pub fn remove(&self, id: &str) -> bool {
        let mut inner = self.inner.write();
        match inner.by_id.remove(id) {
            Some(old) => {
                inner.unlink(id, &old);
                inner.ordered.remove(id);
                inner.thumbnails.remove(id);
                true
            }
            None => false,
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Attributes>> {
        self.inner.read().by_id.get(id).cloned()
    }

    pub fn len(&self) -> usize {
        self.inner.read().by_id.len()
    }

    pub fn has_thumbnail(&self, id: &str) -> bool {
        self.inner.read().thumbnails.contains(id)
    }

    /// Up to `limit` products admitted by `filter` whose ids sort after
    /// `after` (bytewise), in id order, with their thumbnail flags; and
    /// whether more admitted products follow. Products written while the
    /// page is read appear in it if the scan has not passed their id yet.
    pub fn page(
        &self,
        after: Option<&str>,
        filter: &Filter,
        limit: usize,
    ) -> (Vec<PageItem>, bool) {
        let mut found = Vec::with_capacity(limit.min(1024));
        let mut cursor: Option<Arc<str>> = after.map(Arc::from);
        loop {
            let inner = self.inner.read();
            let start = match &cursor {
                Some(c) => Bound::Excluded(&**c),
                None => Bound::Unbounded,
            };
            let mut scanned = 0;
            let mut last = None;
            for id in inner
                .ordered
                .range::<str, _>((start, Bound::Unbounded))
                .take(PAGE_SCAN_CHUNK)
            {
                scanned += 1;
                last = Some(id);
                let Some(attributes) = inner.by_id.get(id) else {
                    continue;
                };
                if !filter.matches(attributes) {
                    continue;
                }
                if found.len() == limit {
                    // One more admitted product exists beyond the page.
                    return (found, true);
                }
                found.push((
                    Arc::clone(id),
                    Arc::clone(attributes),
                    inner.thumbnails.contains(id),
                ));
            }
            if scanned < PAGE_SCAN_CHUNK {
                return (found, false);
            }
            cursor = last.map(Arc::clone);
        }
    }

    /// Every attribute key with at most `max_values` of its values, most
    /// common first, sorted by key.
    pub fn facets(&self, max_values: usize) -> Vec<Facet> {
        let inner = self.inner.read();
        let mut facets: Vec<Facet> = inner
            .postings
            .iter()
            .map(|(key, values)| {
                let mut counted: Vec<(&String, usize)> =
                    values.iter().map(|(v, ids)| (v, ids.len())).collect();
                counted.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
                Facet {
                    key: key.clone(),
                    values: counted
                        .into_iter()
                        .take(max_values)
                        .map(|(v, n)| (v.clone(), n as u64))
                        .collect(),
                    distinct: values.len() as u64,
                }
            })
            .collect();
        facets.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        facets
    }

    /// Every product id, in no order. O(n) under the read lock: for
    /// background work, not for requests.
    pub fn ids(&self) -> Vec<Arc<str>> {
        self.inner.read().by_id.keys().map(Arc::clone).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn view(&self) -> AttributeView<'_> {
        AttributeView { table: self }
    }
}

impl AttributeView<'_> {
    pub fn get(&self, id: &str) -> Option<Arc<Attributes>> {
        self.table.inner.read().by_id.get(id).cloned()
    }

    /// Whether `id` exists and passes `filter`.
    pub fn admits(&self, id: &str, filter: &Filter) -> bool {
        self.table
            .inner
            .read()
            .by_id
            .get(id)
            .is_some_and(|a| filter.matches(a))
    }

    /// The ids admitted by the most selective `must` clause, if that clause
    /// admits at most `limit` products. Callers still apply the full filter
    /// to each id. `None` means "not selective enough (or no `must`
    /// clause): use the filtered graph search".
    pub fn narrow_candidates(&self, filter: &Filter, limit: usize) -> Option<Vec<Arc<str>>> {
        let inner = self.table.inner.read();
        let clause = filter
            .must
            .iter()
            .map(|clause| {
                let size: usize = inner.postings.get(&clause.key).map_or(0, |values| {
                    clause
                        .values
                        .iter()
                        .filter_map(|v| values.get(v))
                        .map(HashSet::len)
                        .sum()
                });
                (size, clause)
            })
            .min_by_key(|(size, _)| *size)?;
        if clause.0 > limit {
            return None;
        }
        let Some(values) = inner.postings.get(&clause.1.key) else {
            return Some(Vec::new());
        };
        // A product has one value per key, so the postings of distinct
        // values are disjoint and the concatenation has no duplicates.
        Some(
            clause
                .1
                .values
                .iter()
                .filter_map(|v| values.get(v))
                .flat_map(|ids| ids.iter().map(Arc::clone))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::domain::AttributeFilter;

    fn attrs(pairs: &[(&str, &str)]) -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn must(key: &str, values: &[&str]) -> Filter {
        Filter {
            must: vec![AttributeFilter {
                key: key.to_owned(),
                values: values
                    .iter()
                    .map(|v| (*v).to_owned())
                    .collect::<BTreeSet<_>>(),
            }],
            must_not: vec![],
        }
    }

    #[test]
    fn postings_follow_replace_and_remove() {
        let t = AttributeTable::default();
        t.insert(Arc::from("1"), attrs(&[("type", "Shirts")]));
        t.insert(Arc::from("2"), attrs(&[("type", "Shirts")]));
        t.insert(Arc::from("3"), attrs(&[("type", "Watches")]));
        let f = must("type", &["Shirts"]);
        let mut c = t
            .view()
            .narrow_candidates(&f, 10)
            .unwrap()
            .into_iter()
            .map(|id| id.to_string())
            .collect::<Vec<_>>();
        c.sort();
        assert_eq!(c, ["1", "2"]);

        t.insert(Arc::from("2"), attrs(&[("type", "Watches")]));
        assert_eq!(
            t.view().narrow_candidates(&f, 10).unwrap(),
            [Arc::<str>::from("1")]
        );
        assert!(t.remove("1"));
        assert!(!t.remove("1"));
        assert_eq!(
            t.view().narrow_candidates(&f, 10).unwrap(),
            Vec::<Arc<str>>::new()
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn pages_follow_id_order_filters_and_writes() {
        let t = AttributeTable::default();
        // More products than one scan chunk, so that paging crosses chunks.
        let n = PAGE_SCAN_CHUNK * 2 + 10;
        for i in 0..n {
            let kind = if i % 3 == 0 { "Shirts" } else { "Watches" };
            t.insert_product(
                Arc::from(format!("p{i:06}")),
                attrs(&[("type", kind)]),
                i % 2 == 0,
            );
        }
        let all = Filter::default();
        let (first, more) = t.page(None, &all, 5);
        assert!(more);
        let ids: Vec<&str> = first.iter().map(|(id, _, _)| &**id).collect();
        assert_eq!(ids, ["p000000", "p000001", "p000002", "p000003", "p000004"]);
        assert_eq!(
            first.iter().map(|(_, _, t)| *t).collect::<Vec<_>>(),
            [true, false, true, false, true]
        );
        // Walking the whole catalogue page by page, through a filter, visits
        // every admitted product once, in order.
        let shirts = must("type", &["Shirts"]);
        let mut seen = Vec::new();
        let mut after: Option<Arc<str>> = None;
        loop {
            let (page, more) = t.page(after.as_deref(), &shirts, 700);
            assert!(page.len() <= 700);
            seen.extend(page.iter().map(|(id, _, _)| id.to_string()));
            after = page.last().map(|(id, _, _)| Arc::clone(id));
            if !more {
                break;
            }
        }
        let expected: Vec<String> = (0..n)
            .filter(|i| i % 3 == 0)
            .map(|i| format!("p{i:06}"))
            .collect();
        assert_eq!(seen, expected);
        // A filter nothing matches ends at once, with no further page.
        let (page, more) = t.page(None, &must("type", &["Hats"]), 10);
        assert!(page.is_empty() && !more);
        // The last page exactly full says there is nothing more.
        let (page, more) = t.page(Some("p008191"), &all, 10);
        assert_eq!(page.len(), 10);
        assert!(!more, "{:?}", page.last());
        // Removed products leave the order and the thumbnail set.
        assert!(t.remove("p000000"));
        assert!(!t.has_thumbnail("p000000"));
        assert_eq!(&*t.page(None, &all, 1).0[0].0, "p000001");
        assert!(t.has_thumbnail("p000002"));
        t.insert(Arc::from("p000002"), attrs(&[("type", "Shirts")]));
        assert!(
            !t.has_thumbnail("p000002"),
            "a plain insert has no thumbnail"
        );
    }

    #[test]
    fn facets_count_values_most_common_first() {
        let t = AttributeTable::default();
        for (i, colour) in ["Red", "Blue", "Red", "Green", "Red", "Blue"]
            .iter()
            .enumerate()
        {
            t.insert(
                Arc::from(i.to_string()),
                attrs(&[("colour", colour), ("kind", "Shirts")]),
            );
        }
        let facets = t.facets(2);
        assert_eq!(facets.len(), 2);
        assert_eq!(facets[0].key, "colour");
        assert_eq!(
            facets[0].values,
            [("Red".to_owned(), 3), ("Blue".to_owned(), 2)]
        );
        assert_eq!(facets[0].distinct, 3);
        assert_eq!(facets[1].values, [("Shirts".to_owned(), 6)]);
        // Red and Blue now tie at 2: the tie goes by value.
        t.remove("0");
        assert_eq!(t.facets(1)[0].values, [("Blue".to_owned(), 2)]);
    }

    #[test]
    fn unselective_or_missing_must_is_not_narrowed() {
        let t = AttributeTable::default();
        for i in 0..10 {
            t.insert(Arc::from(i.to_string()), attrs(&[("type", "Shirts")]));
        }
        assert!(
            t.view()
                .narrow_candidates(&must("type", &["Shirts"]), 5)
                .is_none()
        );
        assert!(t.view().narrow_candidates(&Filter::default(), 5).is_none());
        assert_eq!(
            t.view()
                .narrow_candidates(&must("colour", &["Red"]), 5)
                .unwrap(),
            Vec::<Arc<str>>::new()
        );
    }
}
