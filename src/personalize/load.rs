//! Bringing shopper state in from the store: what start-up loads (trending
//! counts and totals, never the shoppers themselves) and how one shopper is
//! read back on demand.

use std::{
    num::NonZeroUsize,
    sync::{Arc, atomic::AtomicU64},
};

use parking_lot::RwLock;

use super::{
    PersonalizeConfig, PersonalizeError, PersonalizeReport, Shared, now_ms, resident::Resident,
    shopper::UserState, trending::Trending,
};
use crate::store::{Store, StoreError};

/// Start-up: trending counts (every query for a new shopper reads them) and
/// the stored totals. Shoppers are loaded when they return, so start-up
/// time and memory no longer grow with the number of shoppers ever seen.
pub(super) fn open(
    store: Arc<Store>,
    config: PersonalizeConfig,
    dim: usize,
) -> Result<(Shared, PersonalizeReport), PersonalizeError> {
    let mut trending = Trending::new(config.trending_half_life.as_secs_f64() * 1000.0, now_ms());
    store.scan_trends(&mut |(product, t)| {
        trending.restore(Arc::from(product), t);
        Ok(())
    })?;
    let (shoppers, interactions) = store.shopper_counts()?;
    let report = PersonalizeReport {
        users: shoppers,
        interactions,
        trending_products: trending.len(),
    };
    // Validated at start (at least 1); the fallback only keeps this total.
    let capacity = NonZeroUsize::new(config.max_resident_shoppers).unwrap_or(NonZeroUsize::MIN);
    Ok((
        Shared {
            rules: config.rules(),
            config,
            dim,
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
    pub(super) fn load_stored(&self, users: &[&str]) -> Result<Vec<Option<UserState>>, StoreError> {
        let stored = self.store.load_shoppers(users)?;
        Ok(users
            .iter()
            .zip(stored)
            .map(|(user, s)| {
                let (state, orphans) =
                    UserState::from_stored(s, self.dim, self.config.max_history)?;
                if orphans > 0 {
                    tracing::warn!(
                        user,
                        orphans,
                        "skipped stored interactions with an unknown action"
                    );
                }
                Some(state)
            })
            .collect())
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
