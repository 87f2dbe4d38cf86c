//! Format v1 (docs/protocol.md, "Crypto (format v1)"): `IV ‖ AES-256-CBC(key, PKCS7(plaintext))`.
//!
//! The cipher is [`crate::cbc`]; this module is the container: the IV, the
//! lengths, and the one-shot calls.

use crate::cbc::{self, Block, CbcDecryptor, CbcEncryptor, BLOCK, KEY_LEN};
use crate::error::CoreError;

/// The magic of format v2; a v1 file must never start with it.
const V2_MAGIC: &[u8; 4] = b"ELD2";

/// A fresh IV from the OS random generator, never one that would make the
/// output start with the v2 magic (a 2^-32 case, redrawn).
pub fn random_iv() -> Result<Block, CoreError> {
    loop {
        let mut iv = [0u8; BLOCK];
        getrandom::fill(&mut iv).map_err(|_| CoreError::Random)?;
        if !iv.starts_with(V2_MAGIC) {
            return Ok(iv);
        }
    }
}

/// Length of `PKCS7(plaintext)`: PKCS7 always adds 1 to 16 bytes.
pub fn padded_length(plaintext_length: u64) -> Result<u64, CoreError> {
    (plaintext_length / BLOCK as u64 + 1)
        .checked_mul(BLOCK as u64)
        .ok_or(CoreError::LengthOverflow)
}

/// Length of the plaintext of a v1 ciphertext of `ciphertext_length` bytes
/// (IV included), from its last 32 bytes alone.
///
/// CBC lets the final block be decrypted on its own (its IV is the block
/// before it), which reveals the padding and so the exact length before the
/// rest is read. Any bad input is `Decryption`; a key of the wrong length
/// is `KeyLength`.
pub fn plaintext_length(
    key: &[u8],
    ciphertext_length: u64,
    last_two_blocks: &[u8],
) -> Result<u64, CoreError> {
    let block = BLOCK as u64;
    if ciphertext_length < 2 * block || !ciphertext_length.is_multiple_of(block) {
        return Err(CoreError::Decryption);
    }
    if last_two_blocks.len() != 2 * BLOCK {
        return Err(CoreError::Decryption);
    }
    let (prev, last) = last_two_blocks.split_at(BLOCK);
    let mut dec = CbcDecryptor::new(key, prev)?;
    dec.update(last)?;
    let tail = dec.finalize()?;
    Ok(ciphertext_length - 2 * block + tail.len() as u64)
}

/// Encrypts `plaintext` into format v1, with `iv` or a random one.
pub fn encrypt_v1(key: &[u8], plaintext: &[u8], iv: Option<&[u8]>) -> Result<Vec<u8>, CoreError> {
    let iv = match iv {
        Some(iv) => cbc::to_block(iv)?,
        None => random_iv()?,
    };
    let mut enc = CbcEncryptor::new(key, &iv)?;
    let body = enc.output_len(plaintext.len());
    let mut out = vec![0u8; BLOCK + body];
    out[..BLOCK].copy_from_slice(&iv);
    enc.update_into(plaintext, &mut out[BLOCK..])?;
    out.extend_from_slice(&enc.finalize()?);
    Ok(out)
}

/// Inverse of [`encrypt_v1`]. Every failure is `Decryption`.
pub fn decrypt_v1(key: &[u8], data: &[u8]) -> Result<Vec<u8>, CoreError> {
    if key.len() != KEY_LEN {
        return Err(CoreError::KeyLength(key.len()));
    }
    if data.len() < 2 * BLOCK {
        return Err(CoreError::Decryption);
    }
    let (iv, body) = data.split_at(BLOCK);
    let mut dec = CbcDecryptor::new(key, iv)?;
    let mut out = dec.update(body)?;
    out.extend_from_slice(&dec.finalize()?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    #[test]
    fn round_trip_every_small_length() {
        let key = [7u8; 32];
        for len in 0..=100 {
            let pt = pattern(len);
            let ct = encrypt_v1(&key, &pt, None).unwrap();
            assert_eq!(
                ct.len() as u64,
                BLOCK as u64 + padded_length(len as u64).unwrap()
            );
            assert_eq!(decrypt_v1(&key, &ct).unwrap(), pt, "length {len}");
            let last_two = &ct[ct.len() - 32..];
            assert_eq!(
                plaintext_length(&key, ct.len() as u64, last_two),
                Ok(len as u64)
            );
        }
    }

    #[test]
    fn every_failure_is_the_same_error() {
        let key = [1u8; 32];
        let ct = encrypt_v1(&key, b"attack at dawn!!", None).unwrap();
        let mut wrong_key = key;
        wrong_key[0] ^= 1;
        let mut flipped = ct.clone();
        let last = flipped.len() - 1;
        flipped[last - 16] ^= 0x01; // changes the final padding byte
        let cases: Vec<(&str, Vec<u8>, [u8; 32])> = vec![
            ("empty", vec![], key),
            ("iv only", ct[..16].to_vec(), key),
            ("unaligned", ct[..ct.len() - 1].to_vec(), key),
            ("dropped block", ct[..ct.len() - 16].to_vec(), key),
            ("flipped", flipped, key),
            ("wrong key", ct.clone(), wrong_key),
        ];
        for (name, data, k) in cases {
            assert_eq!(decrypt_v1(&k, &data), Err(CoreError::Decryption), "{name}");
        }
    }

    #[test]
    fn plaintext_length_refuses_bad_input() {
        let key = [2u8; 32];
        let ct = encrypt_v1(&key, &pattern(40), None).unwrap();
        let tail = &ct[ct.len() - 32..];
        let len = ct.len() as u64;
        for (name, n, t) in [
            ("too short", 16, tail),
            ("unaligned", len - 1, tail),
            ("tail too short", len, &tail[1..]),
            ("tail too long", len, &ct[ct.len() - 33..]),
        ] {
            assert_eq!(
                plaintext_length(&key, n, t),
                Err(CoreError::Decryption),
                "{name}"
            );
        }
        let mut bad = tail.to_vec();
        bad[15] ^= 0x40; // the padding byte of the last block
        assert_eq!(
            plaintext_length(&key, len, &bad),
            Err(CoreError::Decryption)
        );
        assert_eq!(
            plaintext_length(&key[..31], len, tail),
            Err(CoreError::KeyLength(31))
        );
    }

    #[test]
    fn padded_length_adds_one_to_sixteen_bytes() {
        assert_eq!(padded_length(0), Ok(16));
        assert_eq!(padded_length(15), Ok(16));
        assert_eq!(padded_length(16), Ok(32));
        assert_eq!(padded_length(u64::MAX), Err(CoreError::LengthOverflow));
    }

    #[test]
    fn random_iv_never_starts_with_the_v2_magic() {
        for _ in 0..1000 {
            assert!(!random_iv().unwrap().starts_with(V2_MAGIC));
        }
    }
}
