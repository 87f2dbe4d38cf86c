//! Hashing: SHA-256 streaming, and the `hash_b64` of docs/protocol.md.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha256, Sha384};

/// base64(SHA-384(UTF-8 bytes of `s`)), standard alphabet with padding.
pub fn hash_b64(s: &str) -> String {
    STANDARD.encode(Sha384::digest(s.as_bytes()))
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Incremental SHA-256.
#[derive(Clone, Default)]
pub struct Sha256Stream(Sha256);

impl Sha256Stream {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest of everything fed so far; the stream stays usable.
    pub fn digest(&self) -> [u8; 32] {
        self.0.clone().finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn sha256_known_answer() {
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn streaming_matches_one_shot() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut s = Sha256Stream::new();
        for chunk in data.chunks(333) {
            s.update(chunk);
        }
        assert_eq!(s.digest(), sha256(&data));
    }

    #[test]
    fn hash_b64_known_answer() {
        // SHA-384("abc") from FIPS 180-2, base64-encoded.
        assert_eq!(
            hash_b64("abc"),
            "ywB1P0WjXou1oD1pmsZQBycsMqsO3tFjGotgWkP/W+2AhgcroefMI1i67KE0yCWn"
        );
    }
}
