//! The events replicas exchange through JetStream, and their encoding.
//!
//! A product event is the product as applied (the embedding computed by the
//! replica that received the photo, so no other replica runs the model on
//! it), keyed in the products bucket by its id. An interaction event
//! carries the product's vector as that replica saw it, in half precision:
//! a replica that has not applied the product yet (the two logs are not
//! ordered with each other), or has applied its later deletion, still
//! builds the same taste profile as every other, and f16 halves what the
//! log keeps per interaction (2.5 KB at 1280-d) for a difference far below
//! what ranks profiles.
//!
//! postcard (serde, varint lengths, raw little-endian floats) keeps an
//! event about the size of its vector; the leading format byte lets a later
//! version change the layout without misreading an older log.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::personalize::Action;

/// The layout of every event below.
const FORMAT_V1: u8 = 1;

/// Base64url without padding: product and shopper ids may hold any UTF-8,
/// NATS keys and subject tokens only `[-_a-zA-Z0-9]` (and a few more).
const TOKEN: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[derive(Debug, thiserror::Error)]
pub enum InvalidEvent {
    #[error("undecodable event: {0}")]
    Decode(#[from] postcard::Error),
    #[error("event format {0} is not one this version reads")]
    Format(u8),
    #[error("key {0:?} is not a base64url token of a UTF-8 id")]
    Key(String),
    #[error("interaction action code {0} is unknown")]
    Action(u8),
    #[error("vector of {0} bytes is not a whole number of f16 values")]
    Vector(usize),
}

/// The NATS token (KV key or subject token) of an id.
pub fn token(id: &str) -> String {
    TOKEN.encode(id.as_bytes())
}

/// The id a token was made from.
pub fn untoken(token: &str) -> Result<String, InvalidEvent> {
    TOKEN
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|id| !id.is_empty())
        .ok_or_else(|| InvalidEvent::Key(token.to_owned()))
}

/// The model a vector comes from: replicas refuse vectors of any other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIdentity {
    pub name: String,
    /// SHA-256 of the ONNX file, hex.
    pub sha256: String,
    pub dim: u32,
    pub metric: String,
}

impl std::fmt::Display for ModelIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (sha256 {}, {}-d, {})",
            self.name, self.sha256, self.dim, self.metric
        )
    }
}

/// A product as applied: the value of its key in the products bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductEvent {
    pub id: String,
    pub attributes: Vec<(String, String)>,
    pub embedding: Vec<f32>,
    pub model: String,
    pub model_sha256: String,
    pub metric: String,
    /// JPEG, when the product was added from a photo.
    pub thumbnail: Option<Vec<u8>>,
}

/// One event of a shopper's subject in the interaction stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InteractionEvent {
    Record {
        user: String,
        product: String,
        action: u8,
        timestamp_ms: i64,
        /// The product's vector, f16 little-endian.
        vector: Vec<u8>,
        model: String,
        model_sha256: String,
    },
    /// Erase the shopper. The events before it on the subject are purged
    /// from the stream once it is stored; it stays, holding nothing but the
    /// id, so replicas that had not applied them still erase what they hold.
    Forget { user: String },
}

pub fn encode<T: Serialize>(event: &T) -> Result<Vec<u8>, InvalidEvent> {
    let mut out = vec![FORMAT_V1];
    out.extend(postcard::to_stdvec(event)?);
    Ok(out)
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, InvalidEvent> {
    match bytes.split_first() {
        Some((&FORMAT_V1, rest)) => Ok(postcard::from_bytes(rest)?),
        Some((&other, _)) => Err(InvalidEvent::Format(other)),
        None => Err(InvalidEvent::Format(0)),
    }
}

pub fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect()
}

pub fn f16_values(bytes: &[u8]) -> Result<Vec<f32>, InvalidEvent> {
    if !bytes.len().is_multiple_of(2) {
        return Err(InvalidEvent::Vector(bytes.len()));
    }
    Ok(bytes
        .chunks_exact(2)
        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect())
}

pub fn action(code: u8) -> Result<Action, InvalidEvent> {
    Action::from_code(code).ok_or(InvalidEvent::Action(code))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn ids_round_trip_through_tokens(id in "\\PC{1,40}") {
            let t = token(&id);
            prop_assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            prop_assert_eq!(untoken(&t).unwrap(), id);
        }

        #[test]
        fn product_events_round_trip(
            id in "\\PC{1,20}",
            embedding in proptest::collection::vec(-1.0f32..1.0, 0..64),
            thumbnail in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
        ) {
            let e = ProductEvent {
                id,
                attributes: vec![("colour".into(), "blue".into())],
                embedding,
                model: "m".into(),
                model_sha256: "ab".repeat(32),
                metric: "cosine".into(),
                thumbnail,
            };
            prop_assert_eq!(decode::<ProductEvent>(&encode(&e).unwrap()).unwrap(), e);
        }

        #[test]
        fn truncated_or_foreign_events_are_rejected(cut in 0usize..40) {
            let e = InteractionEvent::Forget { user: "ann-the-shopper".into() };
            let bytes = encode(&e).unwrap();
            let cut = cut.min(bytes.len() - 1);
            prop_assert!(decode::<InteractionEvent>(&bytes[..cut]).is_err());
            let mut foreign = bytes.clone();
            foreign[0] = 9;
            prop_assert!(matches!(decode::<InteractionEvent>(&foreign), Err(InvalidEvent::Format(9))));
        }
    }

    #[test]
    fn tokens_that_are_not_ids_are_rejected() {
        assert!(untoken("").is_err());
        assert!(untoken("!!").is_err());
        // 0xff is not UTF-8.
        assert!(untoken(&TOKEN.encode([0xff])).is_err());
    }

    #[test]
    fn f16_vectors_round_trip_closely() {
        let v = [0.5f32, -0.25, 0.1, 0.0];
        let back = f16_values(&f16_bytes(&v)).unwrap();
        for (a, b) in v.iter().zip(&back) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
        assert!(matches!(
            f16_values(&[1, 2, 3]),
            Err(InvalidEvent::Vector(3))
        ));
    }
}
