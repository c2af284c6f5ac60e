//! The `[personalize]` configuration section.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Action, ProfileRules};

/// Evidence weight of each positive action.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActionWeights {
    pub view: f64,
    pub click: f64,
    pub add_to_cart: f64,
    pub purchase: f64,
}

impl Default for ActionWeights {
    fn default() -> Self {
        Self {
            view: 1.0,
            click: 2.0,
            add_to_cart: 4.0,
            purchase: 8.0,
        }
    }
}

impl ActionWeights {
    /// `None` for dislikes, which are not positive evidence.
    pub fn of(&self, action: Action) -> Option<f64> {
        match action {
            Action::View => Some(self.view),
            Action::Click => Some(self.click),
            Action::AddToCart => Some(self.add_to_cart),
            Action::Purchase => Some(self.purchase),
            Action::Dislike => None,
        }
    }
}

/// The `[personalize]` configuration section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PersonalizeConfig {
    pub weights: ActionWeights,
    /// Age at which an interaction counts half.
    #[serde(with = "humantime_serde")]
    pub half_life: Duration,
    /// Interest centroids per shopper (1 = a single taste vector).
    pub max_interests: usize,
    /// Cosine at or above which an interaction joins its nearest interest
    /// instead of starting a new one.
    pub interest_similarity: f32,
    /// Interactions kept per shopper (oldest evicted), bounding memory.
    pub max_history: usize,
    /// Never recommend what the shopper bought (within the kept history).
    pub exclude_purchased: bool,
    /// Never recommend what the shopper viewed, clicked or carted.
    pub exclude_viewed: bool,
    /// Weight of `context_product_ids` against the shopper's taste in each
    /// query, in [0, 1].
    pub context_weight: f32,
    /// Age at which an interaction counts half towards trending.
    #[serde(with = "humantime_serde")]
    pub trending_half_life: Duration,
    /// Most recent dislikes used as negatives per query.
    pub max_dislikes: usize,
    /// Most recent distinct products considered when explaining a result.
    pub reason_window: usize,
    /// Most interactions in one group commit.
    pub commit_batch: usize,
    /// Record and forget calls queued for the writer; calls past it are
    /// refused at once (RESOURCE_EXHAUSTED).
    pub queue_capacity: usize,
    /// Shoppers whose state is kept in memory, least recently used evicted;
    /// the others are read from the store when they return. A resident
    /// shopper costs about 7 KB at 1280 dimensions with one interest (up
    /// to ~20 KB with four interests and a full history).
    pub max_resident_shoppers: usize,
    /// Shopper loads from the store running at once on the blocking pool;
    /// recommendations that need one more are refused at once
    /// (RESOURCE_EXHAUSTED).
    pub load_concurrency: usize,
}

impl Default for PersonalizeConfig {
    fn default() -> Self {
        Self {
            weights: ActionWeights::default(),
            half_life: Duration::from_secs(14 * 86_400),
            max_interests: 4,
            interest_similarity: 0.5,
            max_history: 500,
            exclude_purchased: true,
            exclude_viewed: false,
            context_weight: 0.5,
            trending_half_life: Duration::from_secs(86_400),
            max_dislikes: 20,
            reason_window: 50,
            commit_batch: 512,
            queue_capacity: 1024,
            // ~0.7 GB of one-interest shoppers (~2 GB at the worst case of
            // four interests and full histories): the active shoppers of a
            // large shop fit, and memory no longer grows with every id ever
            // seen.
            max_resident_shoppers: 100_000,
            // A load is a few B-tree lookups (well under a millisecond), so
            // 64 at once is far more than a burst of returning shoppers
            // needs, and still leaves the blocking pool to the searches.
            load_concurrency: 64,
        }
    }
}

impl PersonalizeConfig {
    /// The offending field (under `personalize.`) and why.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        let w = &self.weights;
        for (field, v) in [
            ("weights.view", w.view),
            ("weights.click", w.click),
            ("weights.add_to_cart", w.add_to_cart),
            ("weights.purchase", w.purchase),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return Err((field, "must be a positive number"));
            }
        }
        if self.half_life.is_zero() {
            return Err(("half_life", "must be positive"));
        }
        if self.trending_half_life.is_zero() {
            return Err(("trending_half_life", "must be positive"));
        }
        if !(1..=64).contains(&self.max_interests) {
            return Err(("max_interests", "must be in 1..=64"));
        }
        if !(-1.0..=1.0).contains(&self.interest_similarity) {
            return Err(("interest_similarity", "must be in [-1, 1]"));
        }
        if !(0.0..=1.0).contains(&self.context_weight) {
            return Err(("context_weight", "must be in [0, 1]"));
        }
        for (field, v) in [
            ("max_history", self.max_history),
            ("commit_batch", self.commit_batch),
            ("queue_capacity", self.queue_capacity),
            ("max_resident_shoppers", self.max_resident_shoppers),
            ("load_concurrency", self.load_concurrency),
        ] {
            if v == 0 {
                return Err((field, "must be at least 1"));
            }
        }
        Ok(())
    }

    pub fn rules(&self) -> ProfileRules {
        ProfileRules {
            half_life_ms: self.half_life.as_secs_f64() * 1000.0,
            max_interests: self.max_interests,
            join_similarity: self.interest_similarity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_name_their_field() {
        PersonalizeConfig::default().validate().unwrap();
        let c = PersonalizeConfig {
            context_weight: 1.5,
            ..PersonalizeConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "context_weight");
        let c = PersonalizeConfig {
            max_interests: 0,
            ..PersonalizeConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "max_interests");
        let c = PersonalizeConfig {
            max_resident_shoppers: 0,
            ..PersonalizeConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "max_resident_shoppers");
        let c = PersonalizeConfig {
            load_concurrency: 0,
            ..PersonalizeConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "load_concurrency");
        let c = PersonalizeConfig {
            max_resident_shoppers: 1,
            load_concurrency: 1,
            ..PersonalizeConfig::default()
        };
        c.validate().unwrap();
    }
}
