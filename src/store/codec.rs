//! Byte-level primitives shared by the store's value encodings.
//!
//! The encodings are hand-written rather than delegated to a serde format because the one field
//! that matters for speed, the embedding, must be a raw little-endian `f32` run: the start-up load
//! of ~12K x 1280-d products then decodes with one bounds check and a vectorisable byte-to-float
//! pass per product, where a serde sequence visitor would go element by element. The remaining
//! fields are a handful of `u32`-length-prefixed strings, which is all the framing needed, and
//! owning it lets every failure become a precise [`StoreError::Corrupt`] reason instead of a
//! panic. It also keeps the service free of one more dependency whose wire format we would have
//! to pin.
//!
//! Layout conventions (every encoding in the store follows them):
//! - each value starts with a one-byte format version, so a format can evolve while old values
//!   stay readable;
//! - integers are little-endian and fixed width;
//! - strings and sequences are prefixed with their `u32` element count;
//! - a value must be consumed exactly: trailing bytes are corruption, which keeps every accepted
//!   byte string canonical (re-encoding a decoded value yields the same bytes);
//! - a checksummed format ends with a `u32` CRC-32 of the row's key and every byte before it
//!   ([`seal`], [`checked_body`]).

use super::error::StoreError;

/// Bytes of the CRC-32 that ends a checksummed value.
pub(super) const CHECKSUM_BYTES: usize = 4;

/// CRC-32 of the key's encoded parts, then of `body`: hashing the key too
/// binds a value to the key it is stored under, so a value that ends up
/// under another key fails like a damaged one.
fn checksum(key: &[&[u8]], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for part in key {
        h.update(part);
    }
    h.update(body);
    h.finalize()
}

/// Appends the checksum of `key` and `body` (little-endian) to `body`.
pub(super) fn seal(key: &[&[u8]], mut body: Vec<u8>) -> Vec<u8> {
    let sum = checksum(key, &body);
    body.extend_from_slice(&sum.to_le_bytes());
    body
}

/// The part of a stored value its reader decodes, and the format version
/// it has. A value whose format byte is `checked` must end in the
/// checksum [`seal`] appends, which is verified and split off; any other
/// value is returned whole as `unchecked` (the older format without a
/// checksum), for the reader's format check to accept or, if its byte is
/// neither, reject.
pub(super) fn checked_body<'a>(
    key: &[&[u8]],
    bytes: &'a [u8],
    checked: u8,
    unchecked: u8,
) -> Result<(&'a [u8], u8), Malformed> {
    if bytes.first() != Some(&checked) {
        return Ok((bytes, unchecked));
    }
    let too_short = || Malformed("too short for its checksum".into());
    let (body, sum) = bytes
        .split_last_chunk::<CHECKSUM_BYTES>()
        .ok_or_else(too_short)?;
    let stored = u32::from_le_bytes(*sum);
    let computed = checksum(key, body);
    if stored != computed {
        return Err(Malformed(format!(
            "checksum mismatch (stored {stored:08x}, computed {computed:08x})"
        )));
    }
    Ok((body, checked))
}

/// Why a value could not be decoded; the caller adds the table and key to make it a
/// [`StoreError::Corrupt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Malformed(pub(super) String);

impl Malformed {
    /// Attaches the location of the bad value.
    pub(super) fn at(self, table: &'static str, key: &str) -> StoreError {
        StoreError::Corrupt {
            table,
            key: key.to_owned(),
            reason: self.0,
        }
    }
}

/// Converts a length to the `u32` the encoding stores, or reports which field of which key is
/// too long.
pub(super) fn len_u32(len: usize, key: &str, field: &'static str) -> Result<u32, StoreError> {
    u32::try_from(len).map_err(|_| StoreError::TooLarge {
        key: key.to_owned(),
        field,
        len,
    })
}

/// Appends encoded fields to a buffer. Lengths are passed in already checked with [`len_u32`],
/// so writing itself cannot fail.
#[derive(Debug, Default)]
pub(super) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(super) fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
        }
    }

    pub(super) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub(super) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(super) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Writes `len` (the checked length of `s`) then the UTF-8 bytes.
    pub(super) fn str(&mut self, len: u32, s: &str) {
        self.u32(len);
        self.buf.extend_from_slice(s.as_bytes());
    }

    /// Writes `len` (the checked length of `v`) then each float's little-endian bits, which keeps
    /// NaN payloads and signed zeros bit-exact.
    pub(super) fn f32s(&mut self, len: u32, v: &[f32]) {
        self.u32(len);
        self.buf.reserve(v.len() * 4);
        for x in v {
            self.buf.extend_from_slice(&x.to_le_bytes());
        }
    }

    pub(super) fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads fields from an untrusted byte slice. Every method checks the remaining length before
/// touching or allocating anything, so arbitrary input yields [`Malformed`], never a panic or an
/// oversized allocation.
#[derive(Debug)]
pub(super) struct Reader<'a> {
    /// The bytes not consumed yet.
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// Reads the leading format-version byte and checks it is one this build understands.
    pub(super) fn format(&mut self, supported: u8) -> Result<(), Malformed> {
        match self.u8("format version")? {
            v if v == supported => Ok(()),
            v => Err(Malformed(format!(
                "unknown format version {v} (this build reads {supported})"
            ))),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Malformed> {
        match self.rest.split_at_checked(n) {
            Some((head, tail)) => {
                self.rest = tail;
                Ok(head)
            }
            None => Err(Malformed(format!(
                "truncated {what}: needs {n} bytes, {} left",
                self.rest.len()
            ))),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], Malformed> {
        // `take` returned exactly N bytes, so the conversion only fails if that invariant breaks.
        <[u8; N]>::try_from(self.take(N, what)?)
            .map_err(|_| Malformed(format!("internal: {what} is not {N} bytes")))
    }

    pub(super) fn u8(&mut self, what: &str) -> Result<u8, Malformed> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(super) fn u32(&mut self, what: &str) -> Result<u32, Malformed> {
        self.array(what).map(u32::from_le_bytes)
    }

    pub(super) fn u64(&mut self, what: &str) -> Result<u64, Malformed> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Reads a `u32` element count, widened for slicing; lossless on the 32/64-bit targets the
    /// service runs on, and a failure elsewhere is reported rather than truncated.
    fn count(&mut self, what: &str) -> Result<usize, Malformed> {
        let n = self.u32(what)?;
        usize::try_from(n).map_err(|_| Malformed(format!("{what} {n} exceeds address space")))
    }

    pub(super) fn str(&mut self, what: &str) -> Result<&'a str, Malformed> {
        let len = self.count(what)?;
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes).map_err(|e| Malformed(format!("{what} is not UTF-8: {e}")))
    }

    pub(super) fn f32s(&mut self, what: &str) -> Result<Vec<f32>, Malformed> {
        let len = self.count(what)?;
        let n_bytes = len
            .checked_mul(4)
            .ok_or_else(|| Malformed(format!("{what} length {len} overflows")))?;
        let (chunks, _) = self.take(n_bytes, what)?.as_chunks::<4>();
        Ok(chunks.iter().map(|c| f32::from_le_bytes(*c)).collect())
    }

    /// Ends decoding; leftover bytes mean the value is not what its format says it is.
    pub(super) fn finish(self) -> Result<(), Malformed> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Malformed(format!("{} trailing bytes", self.rest.len())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primitives_round_trip() {
        let mut w = Writer::default();
        w.u8(1);
        w.u32(0xdead_beef);
        w.u64(u64::MAX - 7);
        w.str(3, "hé");
        w.f32s(3, &[1.5, -0.0, f32::from_bits(0x7fc0_0001)]);
        let bytes = w.finish();

        let mut r = Reader::new(&bytes);
        r.format(1).unwrap();
        assert_eq!(r.u32("a").unwrap(), 0xdead_beef);
        assert_eq!(r.u64("b").unwrap(), u64::MAX - 7);
        assert_eq!(r.str("c").unwrap(), "hé");
        let bits: Vec<u32> = r.f32s("d").unwrap().iter().map(|x| x.to_bits()).collect();
        assert_eq!(
            bits,
            vec![1.5f32.to_bits(), (-0.0f32).to_bits(), 0x7fc0_0001]
        );
        r.finish().unwrap();
    }

    #[test]
    fn truncation_and_trailing_bytes_are_reported() {
        let mut r = Reader::new(&[5, 0, 0, 0, b'a']);
        let err = r.str("name").unwrap_err();
        assert!(err.0.contains("truncated name"), "{err:?}");

        let mut r = Reader::new(&[1, 9]);
        r.format(1).unwrap();
        assert_eq!(
            r.finish().unwrap_err(),
            Malformed("1 trailing bytes".into())
        );

        let mut r = Reader::new(&[2]);
        assert!(
            r.format(1)
                .unwrap_err()
                .0
                .contains("unknown format version 2")
        );
    }

    #[test]
    fn huge_declared_lengths_fail_without_allocating() {
        // u32::MAX floats would be a 16 GiB allocation if trusted.
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        assert!(r.f32s("embedding").unwrap_err().0.contains("truncated"));
    }

    #[test]
    fn invalid_utf8_is_reported() {
        let mut r = Reader::new(&[2, 0, 0, 0, 0xc3, 0x28]);
        assert!(r.str("id").unwrap_err().0.contains("not UTF-8"));
    }
}
