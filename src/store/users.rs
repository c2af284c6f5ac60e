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
//! Value layouts (format v2, conventions in [`super::codec`]):
//! ```text
//! interaction: u8 format = 2, u32 len + product id, u8 action, u64 timestamp_ms (i64 bits),
//!              u32 CRC-32 of the user id's UTF-8 bytes, the sequence (u64), every byte above
//! profile:     u8 format = 2, u64 reference_ms (i64 bits), u64 next_seq,
//!              u32 interest count, per interest: u64 weight (f64 bits), u32 dim + dim x f32 (mean),
//!              u32 CRC-32 of the user id's UTF-8 bytes, every byte above
//! trend:       u8 format = 2, u64 score (f64 bits), u64 at_ms (i64 bits),
//!              u32 CRC-32 of the product id's UTF-8 bytes, every byte above
//! ```
//!
//! The checksums are there for the reason the products table has one (see
//! [`super::products`]): redb does not verify its pages on a normal read, so
//! a flipped bit inside a value would decode into a plausible profile that
//! points somewhere else, a history row naming another product, or a
//! trending score off by orders of magnitude. Each covers the row's key, so
//! a value under another key (another shopper's profile, another sequence
//! number) fails as well. Format v1 (the same without the checksum, format
//! byte 1) is still read; every write is v2.
//!
//! A row that fails is reported by key ([`StoreError::Corrupt`]) and left
//! out of what a read returns, never the reason the rest cannot be read:
//! [`super::Store::load_shoppers`] returns it beside the shopper's readable
//! rows, the scans collect it. What replaces it is the caller's decision.

use redb::{ReadableTable, TableDefinition};

use super::codec::{CHECKSUM_BYTES, Malformed, Reader, Writer, checked_body, len_u32, seal};
use super::error::StoreError;

pub(super) const INTERACTIONS: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new(INTERACTIONS_NAME);
const INTERACTIONS_NAME: &str = "interactions";
pub(super) const PROFILES: TableDefinition<&str, &[u8]> = TableDefinition::new(PROFILES_NAME);
const PROFILES_NAME: &str = "profiles";
pub(super) const TRENDS: TableDefinition<&str, &[u8]> = TableDefinition::new(TRENDS_NAME);
const TRENDS_NAME: &str = "trending";

/// No checksum; written by earlier builds, still read.
const FORMAT_V1: u8 = 1;
/// v1's fields followed by a CRC-32 over the key and the value.
const FORMAT_V2: u8 = 2;

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
/// returns. Every field is empty for an unknown user.
#[derive(Debug, Default)]
pub struct StoredShopper {
    pub profile: Option<StoredProfile>,
    /// The kept history rows, by sequence number in arrival order.
    pub history: Vec<(u64, StoredInteraction)>,
    /// Why the profile row, present but failing its checksum or decoding,
    /// is not in `profile` ([`StoreError::Corrupt`]).
    pub damaged_profile: Option<StoreError>,
    /// History rows present but failing their checksum or decoding, by
    /// sequence number; not in `history`.
    pub damaged_history: Vec<(u64, StoreError)>,
}

/// One durable group commit of interactions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InteractionCommit {
    pub users: Vec<UserWrite>,
    pub trends: Vec<(String, StoredTrend)>,
    /// In cluster mode, the interaction log's sequence this commit brings the store to.
    pub applied: Option<u64>,
}

/// The key of a history row as its checksum covers it.
fn interaction_key<'a>(user: &'a str, seq: &'a [u8; 8]) -> [&'a [u8]; 2] {
    [user.as_bytes(), seq]
}

pub(super) fn encode_interaction(
    user: &str,
    seq: u64,
    i: &StoredInteraction,
) -> Result<Vec<u8>, StoreError> {
    let len = len_u32(i.product_id.len(), user, "interaction product id")?;
    let mut w = Writer::with_capacity(1 + 4 + i.product_id.len() + 1 + 8 + CHECKSUM_BYTES);
    w.u8(FORMAT_V2);
    w.str(len, &i.product_id);
    w.u8(i.action);
    w.u64(u64::from_ne_bytes(i.timestamp_ms.to_ne_bytes()));
    Ok(seal(&interaction_key(user, &seq.to_le_bytes()), w.finish()))
}

pub(super) fn decode_interaction(
    user: &str,
    seq: u64,
    bytes: &[u8],
) -> Result<StoredInteraction, StoreError> {
    let decoded = (|| {
        let seq_bytes = seq.to_le_bytes();
        let (body, version) = checked_body(
            &interaction_key(user, &seq_bytes),
            bytes,
            FORMAT_V2,
            FORMAT_V1,
        )?;
        let mut r = Reader::new(body);
        r.format(version)?;
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
    let mut w =
        Writer::with_capacity(1 + 8 + 8 + 4 + p.interests.len() * 12 + floats * 4 + CHECKSUM_BYTES);
    w.u8(FORMAT_V2);
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
    Ok(seal(&[user.as_bytes()], w.finish()))
}

pub(super) fn decode_profile(user: &str, bytes: &[u8]) -> Result<StoredProfile, StoreError> {
    let decoded = (|| {
        let (body, version) = checked_body(&[user.as_bytes()], bytes, FORMAT_V2, FORMAT_V1)?;
        let mut r = Reader::new(body);
        r.format(version)?;
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

pub(super) fn encode_trend(product: &str, t: StoredTrend) -> Vec<u8> {
    let mut w = Writer::with_capacity(1 + 8 + 8 + CHECKSUM_BYTES);
    w.u8(FORMAT_V2);
    w.u64(t.score.to_bits());
    w.u64(u64::from_ne_bytes(t.at_ms.to_ne_bytes()));
    seal(&[product.as_bytes()], w.finish())
}

pub(super) fn decode_trend(product: &str, bytes: &[u8]) -> Result<StoredTrend, StoreError> {
    let decoded = (|| {
        let (body, version) = checked_body(&[product.as_bytes()], bytes, FORMAT_V2, FORMAT_V1)?;
        let mut r = Reader::new(body);
        r.format(version)?;
        let score = f64::from_bits(r.u64("score")?);
        let at_ms = i64::from_ne_bytes(r.u64("time")?.to_ne_bytes());
        r.finish()?;
        Ok::<_, Malformed>(StoredTrend { score, at_ms })
    })();
    decoded.map_err(|m| m.at(TRENDS_NAME, product))
}

/// Reads every row of `table` with `decode`, in key order, into `f`; a row
/// that fails to decode goes to `damaged` instead and the scan goes on.
/// Errors of the database itself, and from `f`, end the scan.
pub(super) fn scan_table<K: redb::Key + 'static, T>(
    table: &impl ReadableTable<K, &'static [u8]>,
    op: &'static str,
    mut decode: impl FnMut(K::SelfType<'_>, &[u8]) -> Result<T, StoreError>,
    f: &mut dyn FnMut(T) -> Result<(), StoreError>,
    damaged: &mut Vec<StoreError>,
) -> Result<(), StoreError> {
    for entry in table.iter().map_err(super::error::db(op))? {
        let (key, value) = entry.map_err(super::error::db(op))?;
        match decode(key.value(), value.value()) {
            Ok(row) => f(row)?,
            Err(e) => damaged.push(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn interaction() -> impl Strategy<Value = StoredInteraction> {
        (".{0,20}", any::<u8>(), any::<i64>()).prop_map(|(product_id, action, timestamp_ms)| {
            StoredInteraction {
                product_id,
                action,
                timestamp_ms,
            }
        })
    }

    fn profile() -> impl Strategy<Value = StoredProfile> {
        (
            any::<i64>(),
            any::<u64>(),
            proptest::collection::vec(
                (
                    any::<f64>().prop_filter("NaN never equals itself", |w| !w.is_nan()),
                    proptest::collection::vec(-1.0f32..1.0, 0..16),
                ),
                0..5,
            ),
        )
            .prop_map(|(reference_ms, next_seq, interests)| StoredProfile {
                reference_ms,
                next_seq,
                interests: interests
                    .into_iter()
                    .map(|(weight, mean)| StoredInterest { weight, mean })
                    .collect(),
            })
    }

    fn trend() -> impl Strategy<Value = StoredTrend> {
        (-1e300f64..1e300, any::<i64>()).prop_map(|(score, at_ms)| StoredTrend { score, at_ms })
    }

    /// The v1 form of a v2 value: format byte 1, no checksum.
    fn v1_of(v2: &[u8]) -> Vec<u8> {
        assert_eq!(v2[0], FORMAT_V2);
        [&[FORMAT_V1][..], &v2[1..v2.len() - CHECKSUM_BYTES]].concat()
    }

    /// The table and key a corrupt-value error names.
    fn location(e: StoreError) -> (&'static str, String) {
        match e {
            StoreError::Corrupt { table, key, .. } => (table, key),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    proptest! {
        #[test]
        fn interactions_round_trip_in_v2_and_v1(
            user in ".{0,12}", seq in any::<u64>(), i in interaction(),
        ) {
            let bytes = encode_interaction(&user, seq, &i).unwrap();
            prop_assert_eq!(bytes[0], FORMAT_V2);
            prop_assert_eq!(decode_interaction(&user, seq, &bytes).unwrap(), i.clone());
            prop_assert_eq!(decode_interaction(&user, seq, &v1_of(&bytes)).unwrap(), i);
        }

        #[test]
        fn profiles_round_trip_in_v2_and_v1(user in ".{0,12}", p in profile()) {
            let bytes = encode_profile(&user, &p).unwrap();
            prop_assert_eq!(bytes[0], FORMAT_V2);
            prop_assert_eq!(decode_profile(&user, &bytes).unwrap(), p.clone());
            prop_assert_eq!(decode_profile(&user, &v1_of(&bytes)).unwrap(), p);
        }

        #[test]
        fn trends_round_trip_in_v2_and_v1(product in ".{0,12}", t in trend()) {
            let bytes = encode_trend(&product, t);
            prop_assert_eq!(bytes[0], FORMAT_V2);
            prop_assert_eq!(decode_trend(&product, &bytes).unwrap(), t);
            prop_assert_eq!(decode_trend(&product, &v1_of(&bytes)).unwrap(), t);
        }

        #[test]
        fn any_changed_byte_or_cut_of_a_v2_value_is_corrupt(
            user in ".{0,12}",
            seq in any::<u64>(),
            i in interaction(),
            p in profile(),
            t in trend(),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            // A single changed byte is always caught: CRC-32 detects every
            // burst of up to 32 bits.
            let key = format!("{user}#{seq}");
            let mut bytes = encode_interaction(&user, seq, &i).unwrap();
            prop_assert!(decode_interaction(&user, seq, &bytes).is_ok());
            let n = at.index(bytes.len());
            prop_assert!(decode_interaction(&user, seq, &bytes[..n]).is_err());
            bytes[n] ^= flip;
            let err = decode_interaction(&user, seq, &bytes).unwrap_err();
            prop_assert_eq!(location(err), (INTERACTIONS_NAME, key));

            let mut bytes = encode_profile(&user, &p).unwrap();
            prop_assert!(decode_profile(&user, &bytes).is_ok());
            let n = at.index(bytes.len());
            prop_assert!(decode_profile(&user, &bytes[..n]).is_err());
            bytes[n] ^= flip;
            let err = decode_profile(&user, &bytes).unwrap_err();
            prop_assert_eq!(location(err), (PROFILES_NAME, user.clone()));

            let mut bytes = encode_trend(&user, t);
            prop_assert!(decode_trend(&user, &bytes).is_ok());
            let n = at.index(bytes.len());
            prop_assert!(decode_trend(&user, &bytes[..n]).is_err());
            bytes[n] ^= flip;
            let err = decode_trend(&user, &bytes).unwrap_err();
            prop_assert_eq!(location(err), (TRENDS_NAME, user));
        }

        #[test]
        fn a_value_under_another_key_is_corrupt(
            user in ".{0,12}",
            other in ".{0,12}",
            seq in any::<u64>(),
            other_seq in any::<u64>(),
            i in interaction(),
            p in profile(),
            t in trend(),
        ) {
            let bytes = encode_interaction(&user, seq, &i).unwrap();
            let moved = decode_interaction(&other, other_seq, &bytes);
            if (&other, other_seq) == (&user, seq) {
                prop_assert_eq!(moved.unwrap(), i);
            } else {
                let err = moved.unwrap_err();
                prop_assert!(err.to_string().contains("checksum mismatch"), "{}", err);
                prop_assert_eq!(location(err), (INTERACTIONS_NAME, format!("{other}#{other_seq}")));
            }
            // The same user, the next sequence number: a row shifted by one.
            let shifted = decode_interaction(&user, seq.wrapping_add(1), &bytes).unwrap_err();
            prop_assert!(shifted.to_string().contains("checksum mismatch"), "{}", shifted);

            let bytes = encode_profile(&user, &p).unwrap();
            let moved = decode_profile(&other, &bytes);
            if other == user {
                prop_assert_eq!(moved.unwrap(), p);
            } else {
                prop_assert_eq!(location(moved.unwrap_err()), (PROFILES_NAME, other.clone()));
            }

            let bytes = encode_trend(&user, t);
            let moved = decode_trend(&other, &bytes);
            if other == user {
                prop_assert_eq!(moved.unwrap(), t);
            } else {
                prop_assert_eq!(location(moved.unwrap_err()), (TRENDS_NAME, other));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_what_is_accepted_is_canonical(
            bytes in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            // Accepted: re-encoding gives the same bytes (v2), or the same
            // fields with the v2 format byte and checksum (v1). Refused:
            // a corrupt value naming its table and key.
            let canonical = |again: Vec<u8>| {
                if bytes[0] == FORMAT_V2 {
                    again == bytes
                } else {
                    bytes[0] == FORMAT_V1 && v1_of(&again) == bytes
                }
            };
            match decode_interaction("u", 3, &bytes) {
                Ok(i) => prop_assert!(canonical(encode_interaction("u", 3, &i).unwrap())),
                Err(e) => prop_assert_eq!(location(e), (INTERACTIONS_NAME, "u#3".to_owned())),
            }
            match decode_profile("u", &bytes) {
                Ok(p) => prop_assert!(canonical(encode_profile("u", &p).unwrap())),
                Err(e) => prop_assert_eq!(location(e), (PROFILES_NAME, "u".to_owned())),
            }
            match decode_trend("p", &bytes) {
                Ok(t) => prop_assert!(canonical(encode_trend("p", t))),
                Err(e) => prop_assert_eq!(location(e), (TRENDS_NAME, "p".to_owned())),
            }
        }
    }

    #[test]
    fn layouts_are_as_documented() {
        let crc = |parts: &[&[u8]]| {
            let mut h = crc32fast::Hasher::new();
            for p in parts {
                h.update(p);
            }
            h.finalize().to_le_bytes()
        };
        let i = StoredInteraction {
            product_id: "p1".into(),
            action: 4,
            timestamp_ms: -2,
        };
        let body = [
            &[2u8, 2, 0, 0, 0, b'p', b'1', 4][..],
            &(-2i64).to_le_bytes(),
        ]
        .concat();
        let seq = 9u64.to_le_bytes();
        assert_eq!(
            encode_interaction("ann", 9, &i).unwrap(),
            [&body[..], &crc(&[b"ann", &seq, &body])].concat()
        );

        let p = StoredProfile {
            reference_ms: 5,
            next_seq: 7,
            interests: vec![StoredInterest {
                weight: 0.5,
                mean: vec![1.0],
            }],
        };
        let body = [
            &[2u8][..],
            &5i64.to_le_bytes(),
            &7u64.to_le_bytes(),
            &[1, 0, 0, 0],
            &0.5f64.to_le_bytes(),
            &[1, 0, 0, 0],
            &1.0f32.to_le_bytes(),
        ]
        .concat();
        assert_eq!(
            encode_profile("ann", &p).unwrap(),
            [&body[..], &crc(&[b"ann", &body])].concat()
        );

        let t = StoredTrend {
            score: 3.0,
            at_ms: 42,
        };
        let body = [&[2u8][..], &3.0f64.to_le_bytes(), &42i64.to_le_bytes()].concat();
        assert_eq!(
            encode_trend("p1", t),
            [&body[..], &crc(&[b"p1", &body])].concat()
        );
    }

    #[test]
    fn corrupt_rows_name_their_table_key_and_reason() {
        let err = decode_profile("alice", &[9]).unwrap_err();
        assert!(err.to_string().contains("profiles"), "{err}");
        assert!(
            err.to_string().contains("unknown format version 9"),
            "{err}"
        );
        let err = decode_interaction("alice", 7, &[1]).unwrap_err();
        assert!(err.to_string().contains("alice#7"), "{err}");
        let bytes = encode_trend(
            "p1",
            StoredTrend {
                score: 1.0,
                at_ms: 0,
            },
        );
        let err = decode_trend("p2", &bytes).unwrap_err();
        assert!(
            err.to_string().contains("\"p2\"") && err.to_string().contains("checksum mismatch"),
            "{err}"
        );
    }
}
