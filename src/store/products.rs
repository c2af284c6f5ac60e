//! The `products` table: one row per catalog product, keyed by product id.
//!
//! The id is the redb key (so `scan` yields id order for free and lookups are a B-tree probe);
//! everything else lives in one versioned value, encoded as (format v3):
//!
//! ```text
//! u8   format = 3
//! u32  model length, model (UTF-8)
//! u32  attribute count, then per attribute in strictly increasing key order:
//!        u32 key length, key (UTF-8), u32 value length, value (UTF-8)
//! u32  embedding dimension, then dimension x f32 little-endian
//! u8   flags: bit 0 = a thumbnail row is stored under the same id; other bits 0
//! u32  CRC-32 of the id's UTF-8 bytes, then of every byte above
//! ```
//!
//! The thumbnail flag lives here, not only in the thumbnails table, because
//! start-up reads every product row anyway while the thumbnails (kilobytes
//! each) are read only when one is served.
//!
//! The checksum is what makes a damaged row detectable: redb checksums its
//! pages only when it repairs after a crash, so a flipped bit inside a value
//! would otherwise decode into a plausible product with a wrong vector. It
//! covers the id (the key) too, so a value that ends up under another key
//! fails as well. Formats v2 (v3 without the flags) and v1 (v2 without the checksum) are
//! still read, as products without a thumbnail.
//!
//! Attribute keys must be strictly increasing on decode: that is how a `BTreeMap` encodes, and
//! refusing anything else means a decoded value always re-encodes to the same bytes, so a
//! duplicate key cannot silently drop data.

use std::collections::BTreeMap;

use redb::TableDefinition;

use super::codec::{CHECKSUM_BYTES, Malformed, Reader, Writer, checked_body, len_u32, seal};
use super::error::StoreError;

/// Product id -> encoded [`StoredProduct`] (without the id, which is the key).
pub(super) const PRODUCTS: TableDefinition<&str, &[u8]> = TableDefinition::new(PRODUCTS_NAME);
const PRODUCTS_NAME: &str = "products";

/// No checksum; written by earlier builds, still read.
const FORMAT_V1: u8 = 1;
/// v1's fields followed by a CRC-32 over the id and the value.
const FORMAT_V2: u8 = 2;
/// v2 with a flags byte before the checksum.
const FORMAT_V3: u8 = 3;
/// Bit of the flags byte: a thumbnail is stored.
const FLAG_THUMBNAIL: u8 = 1;

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
    /// Whether a thumbnail is stored with the product. Read back from the
    /// row; on writes the store sets it from the thumbnails it is given, so
    /// the flag and the thumbnails table never disagree.
    pub has_thumbnail: bool,
}

/// Encodes everything but the id into a product value, with the thumbnail
/// flag `has_thumbnail` (not `p.has_thumbnail`: see the field).
pub(super) fn encode(p: &StoredProduct, has_thumbnail: bool) -> Result<Vec<u8>, StoreError> {
    let id = p.id.as_str();
    let model_len = len_u32(p.model.len(), id, "model")?;
    let attr_count = len_u32(p.attributes.len(), id, "attributes")?;
    let dim = len_u32(p.embedding.len(), id, "embedding")?;

    let attr_bytes: usize = p
        .attributes
        .iter()
        .map(|(k, v)| 8 + k.len() + v.len())
        .sum();
    let mut w = Writer::with_capacity(
        1 + 4 + p.model.len() + 4 + attr_bytes + 4 + 4 * p.embedding.len() + 1 + CHECKSUM_BYTES,
    );
    w.u8(FORMAT_V3);
    w.str(model_len, &p.model);
    w.u32(attr_count);
    for (k, v) in &p.attributes {
        w.str(len_u32(k.len(), id, "attribute key")?, k);
        w.str(len_u32(v.len(), id, "attribute value")?, v);
    }
    w.f32s(dim, &p.embedding);
    w.u8(if has_thumbnail { FLAG_THUMBNAIL } else { 0 });
    Ok(seal(&[id.as_bytes()], w.finish()))
}

/// Decodes a product value stored under `id`.
pub(super) fn decode(id: &str, bytes: &[u8]) -> Result<StoredProduct, StoreError> {
    decode_value(id, bytes).map_err(|m| m.at(PRODUCTS_NAME, id))
}

fn decode_value(id: &str, bytes: &[u8]) -> Result<StoredProduct, Malformed> {
    let checked = if bytes.first() == Some(&FORMAT_V3) {
        FORMAT_V3
    } else {
        FORMAT_V2
    };
    let (body, version) = checked_body(&[id.as_bytes()], bytes, checked, FORMAT_V1)?;
    let mut r = Reader::new(body);
    r.format(version)?;
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
    let has_thumbnail = if version == FORMAT_V3 {
        match r.u8("flags")? {
            0 => false,
            FLAG_THUMBNAIL => true,
            other => return Err(Malformed(format!("unknown flags {other:#04x}"))),
        }
    } else {
        false
    };
    r.finish()?;
    Ok(StoredProduct {
        id: id.to_owned(),
        attributes,
        embedding,
        model,
        has_thumbnail,
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
            any::<bool>(),
        )
            .prop_map(
                |(id, attributes, embedding, model, has_thumbnail)| StoredProduct {
                    id,
                    attributes,
                    embedding,
                    model,
                    has_thumbnail,
                },
            )
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(p in product()) {
            let bytes = encode(&p, p.has_thumbnail).unwrap();
            let back = decode(&p.id, &bytes).unwrap();
            prop_assert_eq!(back.has_thumbnail, p.has_thumbnail);
            prop_assert_eq!(&back.id, &p.id);
            prop_assert_eq!(&back.model, &p.model);
            prop_assert_eq!(&back.attributes, &p.attributes);
            prop_assert_eq!(bits(&back.embedding), bits(&p.embedding));
        }

        #[test]
        fn decode_of_arbitrary_bytes_never_panics_and_is_canonical(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            // Anything accepted must re-encode to exactly the same bytes (a
            // v1 or v2 value to the same fields as v3, with the checksum and
            // an empty flags byte added).
            if let Ok(p) = decode("k", &bytes) {
                let again = encode(&p, p.has_thumbnail).unwrap();
                let fields = &again[1..again.len() - CHECKSUM_BYTES - 1];
                match bytes[0] {
                    FORMAT_V3 => prop_assert_eq!(again, bytes),
                    FORMAT_V2 => prop_assert_eq!(fields, &bytes[1..bytes.len() - CHECKSUM_BYTES]),
                    other => {
                        prop_assert_eq!(other, FORMAT_V1);
                        prop_assert_eq!(fields, &bytes[1..]);
                    }
                }
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
            let original = encode(&p, p.has_thumbnail).unwrap();
            let mut bytes = original.clone();
            for (at, x) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= x;
            }
            // The checksum catches every change (a CRC-32 collision aside,
            // 2^-32 per value), and never by panicking.
            prop_assert_eq!(decode(&p.id, &bytes).is_ok(), bytes == original);
            let keep = cut.index(original.len());
            prop_assert!(decode(&p.id, &original[..keep]).is_err());
            prop_assert!(decode(&p.id, &original).is_ok());
        }
    }

    #[test]
    fn layout_is_as_documented() {
        let p = StoredProduct {
            id: "sku-1".into(),
            attributes: BTreeMap::from([("c".into(), "red".into())]),
            embedding: vec![1.0],
            model: "m".into(),
            has_thumbnail: true,
        };
        let v2_body: Vec<u8> = [
            &[2u8][..],
            &[1, 0, 0, 0, b'm'],
            &[1, 0, 0, 0],
            &[1, 0, 0, 0, b'c', 3, 0, 0, 0, b'r', b'e', b'd'],
            &[1, 0, 0, 0],
            &1.0f32.to_le_bytes(),
        ]
        .concat();
        let sealed = |body: &[u8]| {
            let mut h = crc32fast::Hasher::new();
            h.update(b"sku-1");
            h.update(body);
            [body, &h.finalize().to_le_bytes()].concat()
        };
        let mut v3_body = v2_body.clone();
        v3_body[0] = 3;
        v3_body.push(FLAG_THUMBNAIL);
        assert_eq!(encode(&p, true).unwrap(), sealed(&v3_body));
        // v2 (no flags) and v1 (no checksum) are still read, without a thumbnail.
        let without = StoredProduct {
            has_thumbnail: false,
            ..p.clone()
        };
        assert_eq!(decode("sku-1", &sealed(&v2_body)).unwrap(), without);
        let mut v1 = v2_body.clone();
        v1[0] = 1;
        assert_eq!(decode("sku-1", &v1).unwrap(), without);
        // Unknown flag bits are damage, not a newer format to guess at.
        let mut odd = v3_body.clone();
        *odd.last_mut().unwrap() = 2;
        let err = decode("sku-1", &sealed(&odd)).unwrap_err();
        assert!(err.to_string().contains("unknown flags"), "{err}");
    }

    #[test]
    fn a_value_under_another_key_or_with_a_flipped_bit_is_corrupt() {
        let p = StoredProduct {
            id: "sku-1".into(),
            attributes: BTreeMap::new(),
            embedding: vec![0.6, 0.8],
            model: "m".into(),
            has_thumbnail: false,
        };
        let bytes = encode(&p, false).unwrap();
        let err = decode("sku-2", &bytes).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 0x10;
        let err = decode("sku-1", &flipped).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
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
