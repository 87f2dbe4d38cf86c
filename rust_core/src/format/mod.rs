//! The container formats, each in one place, and the rules they share.
//!
//! - [`v1`]: `IV ‖ AES-256-CBC(key, PKCS7(plaintext))` (DESIGN §4.1).
//!
//! The resource split rule below applies to the ciphertext of any format.

pub mod v1;

/// Largest small part of a resource (DESIGN §4.1).
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
    fn full_small_part_boundary() {
        assert_eq!(FULL_SMALL_PART_FROM, 10_240);
        assert_eq!(small_part_length(FULL_SMALL_PART_FROM), MAX_SMALL_PART);
        assert!(small_part_length(FULL_SMALL_PART_FROM - 1) < MAX_SMALL_PART);
    }
}
