//! The `thumbnails` table: a small JPEG per product that was added from a
//! photo, keyed by product id, written and removed in the same transaction
//! as its product row (whose flags byte says it exists).
//!
//! ```text
//! u8   format = 1
//! ...  the JPEG bytes
//! u32  CRC-32 of the id's UTF-8 bytes, then of every byte above
//! ```
//!
//! Kept apart from the product rows so that the start-up scan of every
//! product never reads them.

use redb::TableDefinition;

use super::codec::{Malformed, checked_body, seal};
use super::error::StoreError;

/// Product id -> encoded thumbnail.
pub(super) const THUMBNAILS: TableDefinition<&str, &[u8]> = TableDefinition::new(THUMBNAILS_NAME);
const THUMBNAILS_NAME: &str = "thumbnails";

const FORMAT_V1: u8 = 1;

pub(super) fn encode(id: &str, jpeg: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(1 + jpeg.len() + 4);
    body.push(FORMAT_V1);
    body.extend_from_slice(jpeg);
    seal(&[id.as_bytes()], body)
}

pub(super) fn decode(id: &str, bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
    decode_value(id, bytes).map_err(|m| m.at(THUMBNAILS_NAME, id))
}

fn decode_value(id: &str, bytes: &[u8]) -> Result<Vec<u8>, Malformed> {
    // Every thumbnail is checksummed: format 0 is never written, so
    // `checked_body` can only pass a value that starts with format 1.
    let (body, _) = checked_body(&[id.as_bytes()], bytes, FORMAT_V1, 0)?;
    match body.split_first() {
        Some((&FORMAT_V1, jpeg)) => Ok(jpeg.to_vec()),
        Some((other, _)) => Err(Malformed(format!("unknown format version {other}"))),
        None => Err(Malformed("empty value".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let bytes = encode("sku-1", b"\xff\xd8jpeg");
        assert_eq!(decode("sku-1", &bytes).unwrap(), b"\xff\xd8jpeg");
        assert!(decode("sku-2", &bytes).is_err(), "bound to its key");
        let mut flipped = bytes.clone();
        flipped[2] ^= 1;
        assert!(decode("sku-1", &flipped).is_err());
        assert!(decode("sku-1", &[]).is_err());
        assert!(decode("sku-1", b"\x00jpeg").is_err());
    }
}
