//! The writer thread: the only code that changes shopper state, in the
//! store and then in memory.
//!
//! It takes whatever jobs are queued (up to one commit's worth), brings in
//! from the store any shopper who is not resident (it is the only writer,
//! so the store is current), commits the batch in one durable transaction,
//! publishes the new states to the resident set, and only then answers.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
};

use tokio::sync::{mpsc, oneshot};

use super::{
    Forgotten, Interaction, PersonalizeError, Shared,
    shopper::{Event, UserState},
};
use crate::{
    domain::UserId,
    store::{InteractionCommit, StoreError, StoredInteraction, StoredTrend, UserWrite},
};

pub(super) enum Job {
    Record {
        items: Vec<(Interaction, Arc<[f32]>)>,
        /// In cluster mode, the interaction log's sequence of the last item,
        /// recorded in the same transaction.
        applied: Option<u64>,
        done: oneshot::Sender<Result<(), PersonalizeError>>,
    },
    Forget {
        user: UserId,
        applied: Option<u64>,
        done: oneshot::Sender<Result<Forgotten, PersonalizeError>>,
    },
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Record { items, .. } => write!(f, "Record({} items)", items.len()),
            Self::Forget { user, .. } => write!(f, "Forget({user})"),
        }
    }
}

/// Runs until every sender is gone, after finishing what was queued: a job
/// once queued is completed even if its caller stopped waiting.
pub(super) fn writer_loop(shared: &Shared, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = Vec::new();
        // The log position the batch brings the store to: jobs arrive in
        // log order, so the latest one's.
        let mut batch_applied = None;
        let mut queued = 0usize;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Record {
                    items,
                    applied,
                    done,
                } => {
                    queued += items.len();
                    batch.push((items, done));
                    batch_applied = applied.or(batch_applied);
                }
                Job::Forget {
                    user,
                    applied,
                    done,
                } => {
                    // Order matters: what was recorded before the forget
                    // is committed first, then erased with the rest.
                    commit(shared, std::mem::take(&mut batch), batch_applied.take());
                    queued = 0;
                    let _ = done.send(forget(shared, &user, applied));
                }
            }
            if queued < shared.config.commit_batch {
                next = rx.try_recv().ok();
            }
        }
        commit(shared, batch, batch_applied);
    }
    tracing::debug!("interaction writer stopped");
}

type Pending = Vec<(
    Vec<(Interaction, Arc<[f32]>)>,
    oneshot::Sender<Result<(), PersonalizeError>>,
)>;

/// A user's new state in a commit, with the history rows it appends and
/// the sequence numbers it evicts.
type Touched = (UserState, Vec<(u64, StoredInteraction)>, Vec<u64>);

fn commit(shared: &Shared, batch: Pending, applied: Option<u64>) {
    if batch.is_empty() {
        return;
    }
    let result = apply(shared, &batch, applied).map_err(Arc::new);
    if result.is_ok() {
        for (items, _) in &batch {
            for (interaction, _) in items {
                metrics::counter!(
                    "lookbook_interactions_recorded_total",
                    "action" => interaction.action.as_str()
                )
                .increment(1);
            }
        }
    }
    for (_, done) in batch {
        let reply = result.clone().map_err(PersonalizeError::Store);
        // The caller may have gone away (cancelled); the write stands.
        let _ = done.send(reply);
    }
}

/// Commits the batch and publishes its states; a failure fails all of it.
fn apply(shared: &Shared, batch: &Pending, applied: Option<u64>) -> Result<(), StoreError> {
    let config = &shared.config;
    let mut touched: HashMap<Arc<str>, Touched> = HashMap::new();
    let mut missing: Vec<Arc<str>> = Vec::new();
    for (items, _) in batch {
        for (i, _) in items {
            let key = i.user.as_arc();
            if touched.contains_key(key) {
                continue;
            }
            let state = match shared.resident.get(key) {
                Some(state) => (*state).clone(),
                None => {
                    missing.push(Arc::clone(key));
                    UserState::default()
                }
            };
            touched.insert(Arc::clone(key), (state, Vec::new(), Vec::new()));
        }
    }
    let mut new_shoppers = 0u64;
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|u| &**u).collect();
        for (user, stored) in missing.iter().zip(shared.load_stored(&names)?) {
            match (stored, touched.get_mut(user)) {
                (Some(state), Some(entry)) => entry.0 = state,
                (None, _) => new_shoppers += 1,
                (Some(_), None) => {}
            }
        }
    }
    // History rows that failed their checks when the shopper was read are
    // deleted by this commit: unreadable, they only kept being reported.
    for (state, _, evicted) in touched.values_mut() {
        evicted.append(&mut state.damaged);
    }
    // Latest value per product: a product touched twice in one commit is
    // written once.
    let mut trends: HashMap<String, StoredTrend> = HashMap::new();
    {
        let mut trending = shared.trending.write();
        for (items, _) in batch {
            for (i, vector) in items {
                let Some((state, appended, evicted)) = touched.get_mut(i.user.as_str()) else {
                    continue;
                };
                let seq = state.next_seq;
                state.next_seq += 1;
                appended.push((
                    seq,
                    StoredInteraction {
                        product_id: i.product.to_string(),
                        action: i.action.code(),
                        timestamp_ms: i.timestamp_ms,
                    },
                ));
                state.push(
                    Event {
                        seq,
                        product: Arc::clone(i.product.as_arc()),
                        action: i.action,
                    },
                    config.max_history,
                    evicted,
                );
                if let Some(weight) = config.weights.of(i.action) {
                    state
                        .profile
                        .add(vector, weight, i.timestamp_ms, &shared.rules);
                    // Trending is aggregate-only: it is updated before the
                    // commit, so a failed commit may leave it counting
                    // interactions the caller was told failed.
                    let t = trending.add(i.product.as_arc(), weight, i.timestamp_ms);
                    trends.insert(i.product.to_string(), t);
                }
            }
        }
    }
    let write = InteractionCommit {
        users: touched
            .iter()
            .map(|(user, (state, appended, evicted))| UserWrite {
                user: user.to_string(),
                // A row appended and evicted in the same commit is never written.
                appended: appended
                    .iter()
                    .filter(|(seq, _)| !evicted.contains(seq))
                    .cloned()
                    .collect(),
                evicted: evicted.clone(),
                profile: state.stored_profile(),
            })
            .collect(),
        trends: trends.into_iter().collect(),
        applied,
    };
    shared.store.commit_interactions(&write)?;
    // Durable: now visible to the next recommendation.
    for (user, (state, _, _)) in touched {
        shared.resident.publish(user, Arc::new(state));
    }
    shared.shoppers.fetch_add(new_shoppers, Ordering::Relaxed);
    Ok(())
}

/// Erases the shopper from the store, resident or not, then from memory.
fn forget(
    shared: &Shared,
    user: &UserId,
    applied: Option<u64>,
) -> Result<Forgotten, PersonalizeError> {
    let (interactions, stored) = shared.store.forget_user_applied(user.as_str(), applied)?;
    let resident = shared.resident.remove(user.as_str());
    let existed = stored || resident;
    if existed {
        // Only this thread changes the count.
        let n = shared.shoppers.load(Ordering::Relaxed);
        shared
            .shoppers
            .store(n.saturating_sub(1), Ordering::Relaxed);
    }
    Ok(Forgotten {
        existed,
        interactions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::ProductId,
        personalize::{Action, PersonalizeConfig, load},
        store::{Store, StoredProduct},
    };

    const DIM: usize = 4;

    fn shared(dir: &std::path::Path, resident: usize) -> Shared {
        let store = Arc::new(Store::open(&dir.join("store.redb")).unwrap());
        let config = PersonalizeConfig {
            max_history: 4,
            max_resident_shoppers: resident,
            ..PersonalizeConfig::default()
        };
        load::open(store, config, DIM, crate::domain::Metric::Cosine)
            .unwrap()
            .0
    }

    /// Interaction `n` of a scripted sequence: every action, products
    /// repeating, directions spread over the axes.
    fn item(user: &str, n: u64) -> (Interaction, Arc<[f32]>) {
        let action = [
            Action::View,
            Action::Click,
            Action::Purchase,
            Action::Dislike,
            Action::AddToCart,
        ][(n % 5) as usize];
        let mut v = [0.1f32; DIM];
        v[(n % DIM as u64) as usize] = 1.0;
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let i = Interaction {
            user: UserId::parse(user, 64).unwrap(),
            product: ProductId::parse(&format!("p{}", n % 7), 64).unwrap(),
            action,
            timestamp_ms: 1_000_000 + i64::try_from(n).unwrap() * 60_000,
        };
        (i, v.iter().map(|x| x / norm).collect())
    }

    /// Commits `items` as one group commit and checks it succeeded.
    fn commit_ok(shared: &Shared, items: Vec<(Interaction, Arc<[f32]>)>) {
        let (done, mut reply) = oneshot::channel();
        commit(shared, vec![(items, done)], None);
        reply.try_recv().unwrap().unwrap();
    }

    #[test]
    fn a_reloaded_shopper_equals_the_state_the_writer_published() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path(), 100);
        for n in 0..13 {
            commit_ok(&shared, vec![item("ann", n), item("bo", n * 3)]);
        }
        for user in ["ann", "bo"] {
            let published = shared.resident.get(user).unwrap();
            let reloaded = shared
                .load_stored(&[user])
                .unwrap()
                .pop()
                .flatten()
                .unwrap();
            assert_eq!(*published, reloaded, "{user}");
            assert_eq!(reloaded.history.len(), 4, "bounded history reloads bounded");
            assert_eq!(reloaded.next_seq, 13);
        }
        assert_eq!(shared.shoppers.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn shoppers_evicted_between_writes_end_up_as_if_always_resident() {
        let all = tempfile::tempdir().unwrap();
        let one = tempfile::tempdir().unwrap();
        let (all, one) = (shared(all.path(), 100), shared(one.path(), 1));
        for n in 0..11 {
            // With one resident, each commit publishes both shoppers and
            // keeps one, so the next commit reads the other back.
            let batch = || vec![item("ann", n), item("bo", n + 1), item("ann", n + 2)];
            commit_ok(&all, batch());
            commit_ok(&one, batch());
            assert_eq!(one.resident.len(), 1);
        }
        for user in ["ann", "bo"] {
            let expected = all.resident.get(user).unwrap();
            let got = one.shopper_state(&Arc::from(user)).unwrap().unwrap();
            assert_eq!(*got, *expected, "{user}");
        }
        assert_eq!(one.shoppers.load(Ordering::Relaxed), 2);
        assert_eq!(one.store.shopper_counts().unwrap(), (2, 8));
    }

    #[test]
    fn forgetting_a_shopper_who_is_not_resident_erases_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path(), 1);
        commit_ok(&shared, vec![item("ann", 0), item("ann", 1)]);
        commit_ok(&shared, vec![item("bo", 0)]);
        assert!(shared.resident.get("ann").is_none(), "evicted by bo");
        let ann = UserId::parse("ann", 64).unwrap();
        let f = forget(&shared, &ann, None).unwrap();
        assert_eq!(
            f,
            Forgotten {
                existed: true,
                interactions: 2
            }
        );
        assert_eq!(shared.load_stored(&["ann"]).unwrap(), vec![None]);
        assert!(shared.shopper_state(&Arc::from("ann")).unwrap().is_none());
        assert_eq!(shared.shoppers.load(Ordering::Relaxed), 1);
        assert!(!forget(&shared, &ann, None).unwrap().existed);
    }

    /// One vector per product, as a catalogue has: `item`'s products with
    /// the vector of their first appearance, stored as products.
    fn catalogue(store: &Store) -> HashMap<String, Arc<[f32]>> {
        let vectors: HashMap<String, Arc<[f32]>> = (0..7)
            .map(|n| {
                let (i, v) = item("any", n);
                (i.product.to_string(), v)
            })
            .collect();
        for (id, v) in &vectors {
            store
                .put(&StoredProduct {
                    id: id.clone(),
                    attributes: std::collections::BTreeMap::new(),
                    embedding: v.to_vec(),
                    model: "m".to_owned(),
                    has_thumbnail: false,
                })
                .unwrap();
        }
        vectors
    }

    fn consistent(
        catalogue: &HashMap<String, Arc<[f32]>>,
        user: &str,
        n: u64,
    ) -> (Interaction, Arc<[f32]>) {
        let (i, _) = item(user, n);
        let v = Arc::clone(&catalogue[i.product.as_str()]);
        (i, v)
    }

    /// Flips a byte in the middle of a stored value, with redb itself.
    fn damage<K: redb::Key + 'static>(path: &std::path::Path, table: &str, key: K::SelfType<'_>) {
        use redb::ReadableTable;
        let db = redb::Database::open(path).unwrap();
        let def = redb::TableDefinition::<K, &[u8]>::new(table);
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(def).unwrap();
            let mut value = t
                .get(&key)
                .unwrap()
                .expect("the row exists")
                .value()
                .to_vec();
            let mid = value.len() / 2;
            value[mid] ^= 0x20;
            t.insert(key, value.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }

    #[test]
    fn damaged_rows_are_rebuilt_or_skipped_and_the_next_commit_replaces_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let shared = shared(dir.path(), 100);
        let catalogue = catalogue(&shared.store);
        // Four interactions each: the whole history is kept (max_history 4).
        for n in 0..4 {
            commit_ok(
                &shared,
                vec![
                    consistent(&catalogue, "ann", n),
                    consistent(&catalogue, "bo", n + 1),
                ],
            );
        }
        let ann = shared.resident.get("ann").unwrap();
        let bo = shared.resident.get("bo").unwrap();
        drop(shared);
        damage::<&str>(&path, "profiles", "ann");
        damage::<(&str, u64)>(&path, "interactions", ("bo", 2));

        let shared = self::shared(dir.path(), 100);
        // ann's profile is replayed from her whole history: as it was.
        let rebuilt = shared.shopper_state(&Arc::from("ann")).unwrap().unwrap();
        assert_eq!(*rebuilt, *ann);
        // bo's row 2 (product p3, a dislike) is skipped and remembered.
        let skipped = shared.shopper_state(&Arc::from("bo")).unwrap().unwrap();
        assert_eq!(skipped.profile, bo.profile);
        assert_eq!(
            skipped.history.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![0, 1, 3]
        );
        assert_eq!(skipped.damaged, vec![2]);
        assert_eq!(skipped.next_seq, 4);

        // The next commit of each rewrites the profile, deletes the row.
        commit_ok(
            &shared,
            vec![
                consistent(&catalogue, "ann", 4),
                consistent(&catalogue, "bo", 5),
            ],
        );
        let stored = shared.store.load_shoppers(&["ann", "bo"]).unwrap();
        for s in &stored {
            assert!(s.damaged_profile.is_none(), "{s:?}");
            assert!(s.damaged_history.is_empty(), "{s:?}");
        }
        assert_eq!(
            stored[1]
                .history
                .iter()
                .map(|(seq, _)| *seq)
                .collect::<Vec<_>>(),
            vec![0, 1, 3, 4],
            "bo: 2 deleted as damaged, 4 appended"
        );
        for user in ["ann", "bo"] {
            let published = shared.resident.get(user).unwrap();
            assert!(published.damaged.is_empty());
            let reloaded = shared
                .load_stored(&[user])
                .unwrap()
                .pop()
                .flatten()
                .unwrap();
            assert_eq!(*published, reloaded, "{user}");
        }
        assert_eq!(shared.store.shopper_counts().unwrap(), (2, 8));
    }
}
