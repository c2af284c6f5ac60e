//! Shopper state: interaction history, taste profiles and trending counts.
//!
//! Three tables, written together in one durable transaction per group
//! commit so that a profile never reflects an interaction the history lacks
//! (or the reverse) after a crash:
//! - `interactions`: `(user id, sequence)` -> one interaction. The sequence
//!   is per user and only grows, so a user's history is one contiguous key
//!   range in arrival order, and erasing a user is one range delete.
//! - `profiles`: user id -> the taste profile (decayed interest centroids)
//!   and the next sequence number. Persisted rather than replayed from the
//!   history at start, because the history is bounded: a replay would forget
//!   the contribution of evicted interactions, and would cost
//!   users x history x dim work before the service can answer.
//! - `trending`: product id -> decayed interaction weight as of a time.
//!
//! Value layouts (format v1, conventions in [`super::codec`]):
//! ```text
//! interaction: u8 format, u32 len + product id, u8 action, u64 timestamp_ms (i64 bits)
//! profile:     u8 format, u64 reference_ms (i64 bits), u64 next_seq,
//!              u32 interest count, per interest: u64 weight (f64 bits), u32 dim + dim x f32 (mean)
//! trend:       u8 format, u64 score (f64 bits), u64 at_ms (i64 bits)
//! ```

use redb::{ReadableTable, TableDefinition};

use super::codec::{Malformed, Reader, Writer, len_u32};
use super::error::StoreError;

pub(super) const INTERACTIONS: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new(INTERACTIONS_NAME);
const INTERACTIONS_NAME: &str = "interactions";
pub(super) const PROFILES: TableDefinition<&str, &[u8]> = TableDefinition::new(PROFILES_NAME);
const PROFILES_NAME: &str = "profiles";
pub(super) const TRENDS: TableDefinition<&str, &[u8]> = TableDefinition::new(TRENDS_NAME);
const TRENDS_NAME: &str = "trending";

const FORMAT_V1: u8 = 1;

/// One recorded interaction as persisted. `action` is the API's action
/// number; the store does not interpret it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredInteraction {
    pub product_id: String,
    pub action: u8,
    pub timestamp_ms: i64,
}

/// One interest: the weighted mean of the embeddings assigned to it and the
/// sum of their weights, decayed to the profile's reference time.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredInterest {
    pub weight: f64,
    pub mean: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredProfile {
    /// Time the interest weights are decayed to (the newest interaction).
    pub reference_ms: i64,
    /// Sequence number the user's next interaction gets.
    pub next_seq: u64,
    pub interests: Vec<StoredInterest>,
}

/// A product's decayed interaction weight as of `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoredTrend {
    pub score: f64,
    pub at_ms: i64,
}

/// Everything one user's part of a group commit changes.
#[derive(Debug, Clone, PartialEq)]
pub struct UserWrite {
    pub user: String,
    /// New history rows, by sequence number.
    pub appended: Vec<(u64, StoredInteraction)>,
    /// Sequence numbers that fell out of the bounded history.
    pub evicted: Vec<u64>,
    pub profile: StoredProfile,
}

/// Everything stored about one user: what [`super::Store::load_shoppers`]
/// returns. Both parts are empty for an unknown user.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredShopper {
    pub profile: Option<StoredProfile>,
    /// The kept history rows, by sequence number in arrival order.
    pub history: Vec<(u64, StoredInteraction)>,
}

/// One durable group commit of interactions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InteractionCommit {
    pub users: Vec<UserWrite>,
    pub trends: Vec<(String, StoredTrend)>,
}

pub(super) fn encode_interaction(user: &str, i: &StoredInteraction) -> Result<Vec<u8>, StoreError> {
    let len = len_u32(i.product_id.len(), user, "interaction product id")?;
    let mut w = Writer::with_capacity(1 + 4 + i.product_id.len() + 1 + 8);
    w.u8(FORMAT_V1);
    w.str(len, &i.product_id);
    w.u8(i.action);
    w.u64(u64::from_ne_bytes(i.timestamp_ms.to_ne_bytes()));
    Ok(w.finish())
}

pub(super) fn decode_interaction(
    user: &str,
    seq: u64,
    bytes: &[u8],
) -> Result<StoredInteraction, StoreError> {
    let decoded = (|| {
        let mut r = Reader::new(bytes);
        r.format(FORMAT_V1)?;
        let product_id = r.str("product id")?.to_owned();
        let action = r.u8("action")?;
        let timestamp_ms = i64::from_ne_bytes(r.u64("timestamp")?.to_ne_bytes());
        r.finish()?;
        Ok::<_, Malformed>(StoredInteraction {
            product_id,
            action,
            timestamp_ms,
        })
    })();
    decoded.map_err(|m| m.at(INTERACTIONS_NAME, &format!("{user}#{seq}")))
}

pub(super) fn encode_profile(user: &str, p: &StoredProfile) -> Result<Vec<u8>, StoreError> {
    let count = len_u32(p.interests.len(), user, "interests")?;
    let floats: usize = p.interests.iter().map(|i| i.mean.len()).sum();
    let mut w = Writer::with_capacity(1 + 8 + 8 + 4 + p.interests.len() * 12 + floats * 4);
    w.u8(FORMAT_V1);
    w.u64(u64::from_ne_bytes(p.reference_ms.to_ne_bytes()));
    w.u64(p.next_seq);
    w.u32(count);
    for interest in &p.interests {
        w.u64(interest.weight.to_bits());
        w.f32s(
            len_u32(interest.mean.len(), user, "interest")?,
            &interest.mean,
        );
    }
    Ok(w.finish())
}

pub(super) fn decode_profile(user: &str, bytes: &[u8]) -> Result<StoredProfile, StoreError> {
    let decoded = (|| {
        let mut r = Reader::new(bytes);
        r.format(FORMAT_V1)?;
        let reference_ms = i64::from_ne_bytes(r.u64("reference time")?.to_ne_bytes());
        let next_seq = r.u64("next sequence")?;
        let count = r.u32("interest count")?;
        // Each interest consumes at least 12 bytes or fails, so a forged
        // count cannot allocate or spin for long.
        let mut interests = Vec::new();
        for _ in 0..count {
            let weight = f64::from_bits(r.u64("interest weight")?);
            let mean = r.f32s("interest")?;
            interests.push(StoredInterest { weight, mean });
        }
        r.finish()?;
        Ok::<_, Malformed>(StoredProfile {
            reference_ms,
            next_seq,
            interests,
        })
    })();
    decoded.map_err(|m| m.at(PROFILES_NAME, user))
}

pub(super) fn encode_trend(t: StoredTrend) -> Vec<u8> {
    let mut w = Writer::with_capacity(17);
    w.u8(FORMAT_V1);
    w.u64(t.score.to_bits());
    w.u64(u64::from_ne_bytes(t.at_ms.to_ne_bytes()));
    w.finish()
}

pub(super) fn decode_trend(product: &str, bytes: &[u8]) -> Result<StoredTrend, StoreError> {
    let decoded = (|| {
        let mut r = Reader::new(bytes);
        r.format(FORMAT_V1)?;
        let score = f64::from_bits(r.u64("score")?);
        let at_ms = i64::from_ne_bytes(r.u64("time")?.to_ne_bytes());
        r.finish()?;
        Ok::<_, Malformed>(StoredTrend { score, at_ms })
    })();
    decoded.map_err(|m| m.at(TRENDS_NAME, product))
}

/// Reads every row of `table` with `decode`, in key order, into `f`.
pub(super) fn scan_table<K: redb::Key + 'static, T>(
    table: &impl ReadableTable<K, &'static [u8]>,
    op: &'static str,
    mut decode: impl FnMut(K::SelfType<'_>, &[u8]) -> Result<T, StoreError>,
    f: &mut dyn FnMut(T) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    for entry in table.iter().map_err(super::error::db(op))? {
        let (key, value) = entry.map_err(super::error::db(op))?;
        f(decode(key.value(), value.value())?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn interactions_round_trip(id in ".{0,20}", action in any::<u8>(), ts in any::<i64>()) {
            let i = StoredInteraction { product_id: id, action, timestamp_ms: ts };
            let bytes = encode_interaction("u", &i).unwrap();
            prop_assert_eq!(decode_interaction("u", 1, &bytes).unwrap(), i);
        }

        #[test]
        fn profiles_round_trip(
            reference_ms in any::<i64>(),
            next_seq in any::<u64>(),
            interests in proptest::collection::vec(
                (any::<f64>().prop_filter("NaN never equals itself", |w| !w.is_nan()),
                 proptest::collection::vec(-1.0f32..1.0, 0..16)),
                0..5,
            ),
        ) {
            let p = StoredProfile {
                reference_ms,
                next_seq,
                interests: interests.into_iter().map(|(weight, mean)| StoredInterest { weight, mean }).collect(),
            };
            let bytes = encode_profile("u", &p).unwrap();
            prop_assert_eq!(decode_profile("u", &bytes).unwrap(), p);
        }

        #[test]
        fn trends_round_trip(score in -1e300f64..1e300, at_ms in any::<i64>()) {
            let t = StoredTrend { score, at_ms };
            prop_assert_eq!(decode_trend("p", &encode_trend(t)).unwrap(), t);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode_interaction("u", 0, &bytes);
            let _ = decode_profile("u", &bytes);
            let _ = decode_trend("p", &bytes);
        }
    }

    #[test]
    fn corrupt_rows_name_their_table() {
        let err = decode_profile("alice", &[9]).unwrap_err();
        assert!(err.to_string().contains("profiles"), "{err}");
        let err = decode_interaction("alice", 7, &[1]).unwrap_err();
        assert!(err.to_string().contains("alice#7"), "{err}");
    }
}
