//! Key derivation, exactly as docs/protocol.md gives it (Azaion-compatible).

use crate::hash::{hash_b64, sha256};

const HW_PREFIX: &str = "Azaion_";
const HW_SUFFIX: &str = "_%$$$)0_";
const API_SUFFIX: &str = "-#%@AzaionKey@%#---";
const RESOURCE_SEED: &str = "-#%@AzaionKey@%#---234sdfklgvhjbnn";

/// `hash_b64("Azaion_" + hardware + "_%$$$)0_")`.
pub fn hw_hash(hardware: &str) -> String {
    hash_b64(&format!("{HW_PREFIX}{hardware}{HW_SUFFIX}"))
}

/// The per-user, per-machine key string.
pub fn api_key_str(email: &str, password: &str, hardware: &str) -> String {
    let hw = hw_hash(hardware);
    hash_b64(&format!("{email}-{password}-{hw}{API_SUFFIX}"))
}

/// AES key of a key string: SHA-256 of its UTF-8 bytes.
pub fn key_from_str(key_str: &str) -> [u8; 32] {
    sha256(key_str.as_bytes())
}

/// The key that protects the small part on the wire.
pub fn api_key(email: &str, password: &str, hardware: &str) -> [u8; 32] {
    key_from_str(&api_key_str(email, password, hardware))
}

/// The key every resource is encrypted with once.
pub fn resource_key() -> [u8; 32] {
    key_from_str(&hash_b64(RESOURCE_SEED))
}

/// The key of the image archive: SHA-256 of the raw key fragment.
pub fn archive_key(fragment: &[u8]) -> [u8; 32] {
    sha256(fragment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_composes_the_documented_strings() {
        let hw = hash_b64("Azaion_CPU: x_%$$$)0_");
        assert_eq!(hw_hash("CPU: x"), hw);
        let expected = sha256(hash_b64(&format!("a@b-pw-{hw}-#%@AzaionKey@%#---")).as_bytes());
        assert_eq!(api_key("a@b", "pw", "CPU: x"), expected);
    }

    #[test]
    fn keys_depend_on_every_input() {
        let base = api_key("a@b", "pw", "hw");
        assert_ne!(base, api_key("a@c", "pw", "hw"));
        assert_ne!(base, api_key("a@b", "pW", "hw"));
        assert_ne!(base, api_key("a@b", "pw", "hW"));
        assert_ne!(archive_key(b"frag"), archive_key(b"frah"));
    }

    #[test]
    fn resource_key_is_fixed() {
        assert_eq!(resource_key(), sha256(hash_b64(RESOURCE_SEED).as_bytes()));
    }
}
