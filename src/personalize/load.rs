//! Bringing shopper state in from the store: what start-up loads (trending
//! counts and totals, never the shoppers themselves) and how one shopper is
//! read back on demand.

use std::{
    num::NonZeroUsize,
    sync::{Arc, atomic::AtomicU64},
};

use parking_lot::RwLock;

use super::{
    PersonalizeConfig, PersonalizeError, PersonalizeReport, Shared, now_ms,
    resident::Resident,
    shopper::{Restore, Restored, UserState},
    trending::Trending,
};
use crate::{
    catalog::usable_vector,
    domain::Metric,
    store::{Store, StoreError},
};

/// Start-up: trending counts (every query for a new shopper reads them) and
/// the stored totals. Shoppers are loaded when they return, so start-up
/// time and memory no longer grow with the number of shoppers ever seen.
///
/// A damaged trending row is logged and skipped: the product ranks as if
/// nobody had interacted with it until its next positive interaction (view,
/// click, cart, purchase), whose commit rewrites the row from that
/// interaction alone.
pub(super) fn open(
    store: Arc<Store>,
    config: PersonalizeConfig,
    dim: usize,
    metric: Metric,
) -> Result<(Shared, PersonalizeReport), PersonalizeError> {
    let mut trending = Trending::new(config.trending_half_life.as_secs_f64() * 1000.0, now_ms());
    let mut damaged = Vec::new();
    store.scan_trends(
        &mut |(product, t)| {
            trending.restore(Arc::from(product), t);
            Ok(())
        },
        &mut damaged,
    )?;
    for error in &damaged {
        tracing::warn!(%error, "skipped a damaged trending row");
    }
    let (shoppers, interactions) = store.shopper_counts()?;
    let report = PersonalizeReport {
        users: shoppers,
        interactions,
        trending_products: trending.len(),
        damaged_trending: damaged.len(),
    };
    // Validated at start (at least 1); the fallback only keeps this total.
    let capacity = NonZeroUsize::new(config.max_resident_shoppers).unwrap_or(NonZeroUsize::MIN);
    Ok((
        Shared {
            rules: config.rules(),
            config,
            dim,
            metric,
            store,
            resident: Resident::new(capacity),
            trending: RwLock::new(trending),
            shoppers: AtomicU64::new(shoppers),
        },
        report,
    ))
}

impl Shared {
    /// What the store holds for each of `users`, from one snapshot; `None`
    /// for a shopper it knows nothing about. Blocking.
    ///
    /// Damaged rows never fail the load: each is logged by user id and key,
    /// a damaged profile is rebuilt from the history and a damaged history
    /// row is skipped (see [`UserState::from_stored`]); the shopper's next
    /// commit replaces the profile row and deletes the damaged history rows.
    pub(super) fn load_stored(&self, users: &[&str]) -> Result<Vec<Option<UserState>>, StoreError> {
        let stored = self.store.load_shoppers(users)?;
        // The vectors a damaged profile is replayed with: the stored ones,
        // which are the index's (it is built from them, bit for bit), read
        // only on that rare path.
        let vector = |product: &str| match self.store.get(product) {
            Ok(Some(p)) if usable_vector(&p.embedding, self.dim, self.metric).is_ok() => {
                Ok(Some(p.embedding))
            }
            // Absent, or left out of the catalogue (and reported) at start.
            Ok(_) | Err(StoreError::Corrupt { .. }) => Ok(None),
            Err(e) => Err(e),
        };
        let restore = Restore {
            dim: self.dim,
            max_history: self.config.max_history,
            weights: &self.config.weights,
            rules: &self.rules,
            vector: &vector,
        };
        users
            .iter()
            .zip(stored)
            .map(|(user, s)| {
                for (seq, error) in &s.damaged_history {
                    tracing::warn!(user, seq, %error, "skipped a damaged history row");
                }
                let profile_error = s.damaged_profile.as_ref().map(ToString::to_string);
                let Some(Restored {
                    state,
                    orphans,
                    replayed,
                }) = UserState::from_stored(s, &restore)?
                else {
                    return Ok(None);
                };
                // `replayed` is set exactly when the profile was damaged.
                if let (Some(error), Some(replayed)) = (profile_error, replayed) {
                    tracing::warn!(
                        user,
                        %error,
                        replayed,
                        "damaged stored profile rebuilt from the readable history"
                    );
                }
                if orphans > 0 {
                    tracing::warn!(
                        user,
                        orphans,
                        "skipped stored interactions with an unknown action"
                    );
                }
                Ok(Some(state))
            })
            .collect()
    }

    /// The shopper's current state for a query: resident, or loaded from
    /// the store and made resident (see [`Resident::get_or_load`] for why
    /// a load racing a commit cannot install a stale state). Blocking.
    pub(super) fn shopper_state(
        &self,
        user: &Arc<str>,
    ) -> Result<Option<Arc<UserState>>, StoreError> {
        self.resident
            .get_or_load(user, || Ok(self.load_stored(&[user])?.pop().flatten()))
    }
}
