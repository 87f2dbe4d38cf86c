//! The container formats, each in one place, and the rules they share.
//!
//! - [`v1`]: `IV ‖ AES-256-CBC(key, PKCS7(plaintext))` (docs/protocol.md, "Crypto (format v1)");
//! - [`v2`]: chunked AES-256-GCM with a 32-byte header (docs/protocol.md, "Format v2").
//!
//! Detection and the resource split rule below apply to both.

use crate::error::CoreError;

pub mod v1;
pub mod v2;

/// A container format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    V1 = 1,
    V2 = 2,
}

/// The format of a file from its first bytes: `ELD2` is v2 (an unknown
/// version byte after it is refused), anything else is v1.
///
/// Pass at least 5 bytes (or the whole file if shorter): with only the 4
/// magic bytes the version is checked later, by the header parser.
pub fn detect(prefix: &[u8]) -> Result<Format, CoreError> {
    if !prefix.starts_with(&v2::MAGIC) {
        return Ok(Format::V1);
    }
    match prefix.get(4) {
        None => Ok(Format::V2),
        Some(&v2::VERSION) => Ok(Format::V2),
        Some(_) => Err(CoreError::Decryption),
    }
}

/// Largest small part of a resource (docs/protocol.md, "Crypto (format v1)").
pub const MAX_SMALL_PART: u64 = 3072;

/// From this ciphertext length on, the small part is always [`MAX_SMALL_PART`]:
/// the least `n` with `floor(0.3 × n) ≥ 3072`.
pub const FULL_SMALL_PART_FROM: u64 = MAX_SMALL_PART * 10 / 3;

/// `min(3072, floor(0.3 × ciphertext_length))`, in integers (no float
/// rounding, no overflow for any `u64`).
pub fn small_part_length(ciphertext_length: u64) -> u64 {
    let n = ciphertext_length;
    // floor(3n/10) = 3·floor(n/10) + floor(3·(n mod 10)/10).
    let three_tenths = n / 10 * 3 + (n % 10) * 3 / 10;
    three_tenths.min(MAX_SMALL_PART)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rule_matches_the_formula() {
        for n in (0..20_000u64).chain([u64::MAX - 10, u64::MAX]) {
            let expected = (u128::from(n) * 3 / 10).min(3072) as u64;
            assert_eq!(small_part_length(n), expected, "n = {n}");
        }
    }

    #[test]
    fn detection() {
        assert_eq!(detect(b""), Ok(Format::V1));
        assert_eq!(detect(b"ELD"), Ok(Format::V1));
        assert_eq!(detect(b"ELD3\x02"), Ok(Format::V1));
        assert_eq!(detect(b"ELD2"), Ok(Format::V2));
        assert_eq!(detect(b"ELD2\x02\x01"), Ok(Format::V2));
        assert_eq!(detect(b"ELD2\x01"), Err(CoreError::Decryption));
        assert_eq!(detect(b"ELD2\x03"), Err(CoreError::Decryption));
    }

    #[test]
    fn full_small_part_boundary() {
        assert_eq!(FULL_SMALL_PART_FROM, 10_240);
        assert_eq!(small_part_length(FULL_SMALL_PART_FROM), MAX_SMALL_PART);
        assert!(small_part_length(FULL_SMALL_PART_FROM - 1) < MAX_SMALL_PART);
    }
}
