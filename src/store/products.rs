//! The `products` table: one row per catalog product, keyed by product id.
//!
//! The id is the redb key (so `scan` yields id order for free and lookups are a B-tree probe);
//! everything else lives in one versioned value, encoded as (format v1):
//!
//! ```text
//! u8   format = 1
//! u32  model length, model (UTF-8)
//! u32  attribute count, then per attribute in strictly increasing key order:
//!        u32 key length, key (UTF-8), u32 value length, value (UTF-8)
//! u32  embedding dimension, then dimension x f32 little-endian
//! ```
//!
//! Attribute keys must be strictly increasing on decode: that is how a `BTreeMap` encodes, and
//! refusing anything else means a decoded value always re-encodes to the same bytes, so a
//! duplicate key cannot silently drop data.

use std::collections::BTreeMap;

use redb::TableDefinition;

use super::codec::{Malformed, Reader, Writer, len_u32};
use super::error::StoreError;

/// Product id -> encoded [`StoredProduct`] (without the id, which is the key).
pub(super) const PRODUCTS: TableDefinition<&str, &[u8]> = TableDefinition::new(PRODUCTS_NAME);
const PRODUCTS_NAME: &str = "products";

const FORMAT_V1: u8 = 1;

/// A catalog product as persisted.
///
/// `PartialEq` compares embeddings with float `==` (so a NaN never equals itself); compare
/// `to_bits()` where bit identity matters.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredProduct {
    /// Unique product id; the table key.
    pub id: String,
    pub attributes: BTreeMap<String, String>,
    /// Stored bit-exactly; not validated (finite, normalised, dimension) here, that is the
    /// caller's job.
    pub embedding: Vec<f32>,
    /// Name of the model that produced `embedding`.
    pub model: String,
}

/// Encodes everything but the id into a product value.
pub(super) fn encode(p: &StoredProduct) -> Result<Vec<u8>, StoreError> {
    let id = p.id.as_str();
    let model_len = len_u32(p.model.len(), id, "model")?;
    let attr_count = len_u32(p.attributes.len(), id, "attributes")?;
    let dim = len_u32(p.embedding.len(), id, "embedding")?;

    let attr_bytes: usize = p
        .attributes
        .iter()
        .map(|(k, v)| 8 + k.len() + v.len())
        .sum();
    let mut w =
        Writer::with_capacity(1 + 4 + p.model.len() + 4 + attr_bytes + 4 + 4 * p.embedding.len());
    w.u8(FORMAT_V1);
    w.str(model_len, &p.model);
    w.u32(attr_count);
    for (k, v) in &p.attributes {
        w.str(len_u32(k.len(), id, "attribute key")?, k);
        w.str(len_u32(v.len(), id, "attribute value")?, v);
    }
    w.f32s(dim, &p.embedding);
    Ok(w.finish())
}

/// Decodes a product value stored under `id`.
pub(super) fn decode(id: &str, bytes: &[u8]) -> Result<StoredProduct, StoreError> {
    decode_value(id, bytes).map_err(|m| m.at(PRODUCTS_NAME, id))
}

fn decode_value(id: &str, bytes: &[u8]) -> Result<StoredProduct, Malformed> {
    let mut r = Reader::new(bytes);
    r.format(FORMAT_V1)?;
    let model = r.str("model")?.to_owned();
    let attr_count = r.u32("attribute count")?;
    let mut attributes = BTreeMap::new();
    let mut previous: Option<&str> = None;
    // Each iteration consumes at least the two 4-byte length prefixes or fails, so a forged
    // count cannot spin for long on a short value.
    for _ in 0..attr_count {
        let k = r.str("attribute key")?;
        let v = r.str("attribute value")?;
        if previous.is_some_and(|p| p >= k) {
            return Err(Malformed(format!(
                "attribute key {k:?} is not after {previous:?}"
            )));
        }
        previous = Some(k);
        attributes.insert(k.to_owned(), v.to_owned());
    }
    let embedding = r.f32s("embedding")?;
    r.finish()?;
    Ok(StoredProduct {
        id: id.to_owned(),
        attributes,
        embedding,
        model,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    fn product() -> impl Strategy<Value = StoredProduct> {
        (
            ".{0,12}",
            proptest::collection::btree_map(".{0,8}", ".{0,16}", 0..6),
            // Arbitrary bit patterns: NaNs with payloads, infinities, subnormals, -0.0.
            proptest::collection::vec(any::<u32>().prop_map(f32::from_bits), 0..64),
            ".{0,10}",
        )
            .prop_map(|(id, attributes, embedding, model)| StoredProduct {
                id,
                attributes,
                embedding,
                model,
            })
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(p in product()) {
            let bytes = encode(&p).unwrap();
            let back = decode(&p.id, &bytes).unwrap();
            prop_assert_eq!(&back.id, &p.id);
            prop_assert_eq!(&back.model, &p.model);
            prop_assert_eq!(&back.attributes, &p.attributes);
            prop_assert_eq!(bits(&back.embedding), bits(&p.embedding));
        }

        #[test]
        fn decode_of_arbitrary_bytes_never_panics_and_is_canonical(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            // Anything accepted must re-encode to exactly the same bytes.
            if let Ok(p) = decode("k", &bytes) {
                prop_assert_eq!(encode(&p).unwrap(), bytes);
            }
        }

        #[test]
        fn decode_of_mutated_valid_value_never_panics(
            p in product(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            // Random bytes almost never get past the format byte; damaging a real value reaches
            // the deeper fields.
            let mut bytes = encode(&p).unwrap();
            for (at, x) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= x;
            }
            let _ = decode(&p.id, &bytes);
            let keep = cut.index(bytes.len());
            let _ = decode(&p.id, &bytes[..keep]);
        }
    }

    #[test]
    fn layout_is_as_documented() {
        let p = StoredProduct {
            id: "sku-1".into(),
            attributes: BTreeMap::from([("c".into(), "red".into())]),
            embedding: vec![1.0],
            model: "m".into(),
        };
        let expected: Vec<u8> = [
            &[1u8][..],
            &[1, 0, 0, 0, b'm'],
            &[1, 0, 0, 0],
            &[1, 0, 0, 0, b'c', 3, 0, 0, 0, b'r', b'e', b'd'],
            &[1, 0, 0, 0],
            &1.0f32.to_le_bytes(),
        ]
        .concat();
        assert_eq!(encode(&p).unwrap(), expected);
    }

    #[test]
    fn corrupt_values_name_table_key_and_reason() {
        let err = decode("sku-9", &[7]).unwrap_err();
        match err {
            StoreError::Corrupt { table, key, reason } => {
                assert_eq!(table, "products");
                assert_eq!(key, "sku-9");
                assert!(reason.contains("unknown format version 7"), "{reason}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn unsorted_or_duplicate_attribute_keys_are_corrupt() {
        let mut w = Writer::default();
        w.u8(FORMAT_V1);
        w.str(0, "");
        w.u32(2);
        for _ in 0..2 {
            w.str(1, "a");
            w.str(1, "x");
        }
        w.f32s(0, &[]);
        let err = decode("k", &w.finish()).unwrap_err();
        assert!(err.to_string().contains("is not after"), "{err}");
    }
}
