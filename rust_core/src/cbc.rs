//! Streaming AES-256-CBC with PKCS7: the cipher under format v1.
//!
//! The container itself (`IV ‖ ciphertext`, lengths) is in `format::v1`.
//!
//! Decryption is where the speed matters: CBC decryption of block *i* needs
//! only ciphertext blocks *i* and *i-1*, so whole runs of blocks go through
//! the AES backend together (8 blocks at a time with AES-NI, 64 with
//! VAES-512, picked at run time by the `aes` crate) and are chained
//! right after with one XOR pass over data that is still in L1.

use aes::cipher::consts::U16;
use aes::cipher::typenum::Unsigned;
use aes::cipher::{
    Array, BlockCipherDecBackend, BlockCipherDecClosure, BlockCipherDecrypt, BlockCipherEncBackend,
    BlockCipherEncClosure, BlockCipherEncrypt, BlockSizeUser, InOutBuf, KeyInit,
};
use aes::Aes256;
use std::marker::PhantomData;

use crate::error::CoreError;

pub const BLOCK: usize = 16;
pub const KEY_LEN: usize = 32;

/// Parallel block groups decrypted before each chaining pass. Measured on
/// AES-NI and VAES-512: 1 to 8 are within noise; 2 keeps a step at 2 KiB
/// with VAES, well inside L1.
const GROUPS_PER_STEP: usize = 2;

pub type Block = [u8; BLOCK];

pub(crate) fn new_cipher(key: &[u8]) -> Result<Aes256, CoreError> {
    Aes256::new_from_slice(key).map_err(|_| CoreError::KeyLength(key.len()))
}

pub(crate) fn to_block(iv: &[u8]) -> Result<Block, CoreError> {
    iv.try_into().map_err(|_| CoreError::IvLength(iv.len()))
}

fn xor_in_place(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

/// CBC decryption run inside the AES backend: each group of parallel blocks
/// (8 with AES-NI, 64 with VAES) is decrypted together and chained at once,
/// while the group is still in L1.
struct DecryptChain<'a> {
    chain: &'a mut Block,
    input: &'a [u8],
    out: &'a mut [u8],
}

impl BlockSizeUser for DecryptChain<'_> {
    type BlockSize = <Aes256 as BlockSizeUser>::BlockSize;
}

impl BlockCipherDecClosure for DecryptChain<'_> {
    fn call<B: BlockCipherDecBackend<BlockSize = Self::BlockSize>>(self, backend: &B) {
        let group = BLOCK * B::ParBlocksSize::USIZE * GROUPS_PER_STEP;
        for (src, dst) in self.input.chunks(group).zip(self.out.chunks_mut(group)) {
            let (blocks, _) = InOutBuf::new(src, dst)
                .expect("chunk lengths match")
                .into_chunks::<U16>();
            let (par, rest) = blocks.into_chunks::<B::ParBlocksSize>();
            for p in par {
                backend.decrypt_par_blocks(p);
            }
            backend.decrypt_tail_blocks(rest);
            xor_in_place(&mut dst[..BLOCK], &self.chain[..]);
            xor_in_place(&mut dst[BLOCK..], &src[..src.len() - BLOCK]);
            self.chain.copy_from_slice(&src[src.len() - BLOCK..]);
        }
    }
}

/// Raw CBC decryption of whole blocks: `out = D(input) ⊕ (chain ‖ input[..-16])`.
///
/// `input.len()` must be a multiple of 16 and `out` exactly as long; `chain`
/// ends as the last ciphertext block, the chaining value for what follows.
fn cbc_decrypt_blocks(cipher: &Aes256, chain: &mut Block, input: &[u8], out: &mut [u8]) {
    debug_assert!(input.len().is_multiple_of(BLOCK) && input.len() == out.len());
    cipher.decrypt_with_backend(DecryptChain { chain, input, out });
}

/// Raw CBC decryption of a block-aligned ciphertext range, without
/// unpadding. `prev` is the ciphertext block before the range (the IV for
/// the first range). This is what lets ranged reads decrypt independently.
pub fn decrypt_range(key: &[u8], prev: &[u8], input: &[u8]) -> Result<Vec<u8>, CoreError> {
    let cipher = new_cipher(key)?;
    let mut prev = to_block(prev)?;
    if !input.len().is_multiple_of(BLOCK) {
        return Err(CoreError::Unaligned(input.len()));
    }
    let mut out = vec![0u8; input.len()];
    cbc_decrypt_blocks(&cipher, &mut prev, input, &mut out);
    Ok(out)
}

/// Checks and strips PKCS7 padding from the final block, in constant time
/// with respect to the padding bytes.
pub(crate) fn unpad(block: &Block) -> Result<usize, CoreError> {
    let pad = block[BLOCK - 1];
    // bad != 0 iff pad is outside 1..=16 or any of the last `pad` bytes differs.
    let mut bad = u8::from(pad == 0) | u8::from(pad as usize > BLOCK);
    for (i, &b) in block.iter().enumerate() {
        let in_pad = u8::from(BLOCK - i <= pad as usize);
        bad |= in_pad & u8::from(b != pad);
    }
    if bad != 0 {
        return Err(CoreError::Decryption);
    }
    Ok(BLOCK - pad as usize)
}

/// Serial CBC chaining run inside the AES backend, so the per-block loop
/// does not re-dispatch on CPU features.
struct EncryptChain<'a> {
    chain: &'a mut Block,
    input: &'a [u8],
    out: &'a mut [u8],
}

impl BlockSizeUser for EncryptChain<'_> {
    type BlockSize = <Aes256 as BlockSizeUser>::BlockSize;
}

impl BlockCipherEncClosure for EncryptChain<'_> {
    fn call<B: BlockCipherEncBackend<BlockSize = Self::BlockSize>>(self, backend: &B) {
        let mut block = Array::from(*self.chain);
        for (src, dst) in self
            .input
            .chunks_exact(BLOCK)
            .zip(self.out.chunks_exact_mut(BLOCK))
        {
            for (b, s) in block.iter_mut().zip(src) {
                *b ^= s;
            }
            backend.encrypt_block_inplace(&mut block);
            dst.copy_from_slice(&block);
        }
        self.chain.copy_from_slice(&block);
    }
}

/// What differs between the two directions of a stream.
pub trait Direction {
    /// Whether a complete last block is held back until `finalize`
    /// (decryption: it may carry the padding).
    const HOLDS_LAST_BLOCK: bool;
    /// CBC over whole blocks, advancing the chaining value.
    fn blocks(cipher: &Aes256, chain: &mut Block, input: &[u8], out: &mut [u8]);
}

pub enum Decrypt {}
pub enum Encrypt {}

impl Direction for Decrypt {
    const HOLDS_LAST_BLOCK: bool = true;
    fn blocks(cipher: &Aes256, chain: &mut Block, input: &[u8], out: &mut [u8]) {
        cbc_decrypt_blocks(cipher, chain, input, out);
    }
}

impl Direction for Encrypt {
    const HOLDS_LAST_BLOCK: bool = false;
    fn blocks(cipher: &Aes256, chain: &mut Block, input: &[u8], out: &mut [u8]) {
        cipher.encrypt_with_backend(EncryptChain { chain, input, out });
    }
}

/// Streaming AES-256-CBC with PKCS7 in direction `D`.
///
/// `update` emits output for complete blocks and carries an unfinished
/// block over to the next call; `finalize` pads (encryption) or checks and
/// strips the padding (decryption).
pub struct CbcStream<D> {
    cipher: Aes256,
    chain: Block,
    /// Input not yet processed: 0..=16 bytes.
    pending: Block,
    pending_len: usize,
    finalized: bool,
    direction: PhantomData<D>,
}

pub type CbcDecryptor = CbcStream<Decrypt>;
pub type CbcEncryptor = CbcStream<Encrypt>;

impl<D: Direction> CbcStream<D> {
    pub fn new(key: &[u8], iv: &[u8]) -> Result<Self, CoreError> {
        Ok(Self {
            cipher: new_cipher(key)?,
            chain: to_block(iv)?,
            pending: [0; BLOCK],
            pending_len: 0,
            finalized: false,
            direction: PhantomData,
        })
    }

    /// How many bytes `update` emits for `input_len` more bytes of input.
    pub fn output_len(&self, input_len: usize) -> usize {
        let total = self.pending_len + input_len;
        if D::HOLDS_LAST_BLOCK {
            total.saturating_sub(1) / BLOCK * BLOCK
        } else {
            total / BLOCK * BLOCK
        }
    }

    /// Processes what it can of `input` into `out`; returns the bytes
    /// written, always `output_len(input.len())`.
    pub fn update_into(&mut self, input: &[u8], out: &mut [u8]) -> Result<usize, CoreError> {
        if self.finalized {
            return Err(CoreError::Finalized);
        }
        let needed = self.output_len(input.len());
        if out.len() < needed {
            return Err(CoreError::OutputTooSmall {
                needed,
                got: out.len(),
            });
        }
        let mut input = input;
        let mut written = 0;
        // Complete the pending block first...
        if needed > 0 && self.pending_len > 0 {
            let take = BLOCK - self.pending_len;
            self.pending[self.pending_len..].copy_from_slice(&input[..take]);
            input = &input[take..];
            let block = self.pending;
            D::blocks(&self.cipher, &mut self.chain, &block, &mut out[..BLOCK]);
            self.pending_len = 0;
            written = BLOCK;
        }
        // ...then the bulk straight from the caller's buffer.
        let bulk = needed - written;
        D::blocks(
            &self.cipher,
            &mut self.chain,
            &input[..bulk],
            &mut out[written..needed],
        );
        let rest = &input[bulk..];
        self.pending[self.pending_len..self.pending_len + rest.len()].copy_from_slice(rest);
        self.pending_len += rest.len();
        Ok(needed)
    }

    pub fn update(&mut self, input: &[u8]) -> Result<Vec<u8>, CoreError> {
        let mut out = vec![0u8; self.output_len(input.len())];
        self.update_into(input, &mut out)?;
        Ok(out)
    }

    /// Marks the stream finished and hands back the pending input.
    fn finish(&mut self) -> Result<(Block, usize), CoreError> {
        if self.finalized {
            return Err(CoreError::Finalized);
        }
        self.finalized = true;
        Ok((self.pending, self.pending_len))
    }
}

impl CbcStream<Decrypt> {
    /// Decrypts the held-back block, checks and strips the padding.
    /// Any failure, including a truncated stream, is `Decryption`.
    pub fn finalize(&mut self) -> Result<Vec<u8>, CoreError> {
        let (last_ct, len) = self.finish()?;
        if len != BLOCK {
            return Err(CoreError::Decryption);
        }
        let mut last = [0u8; BLOCK];
        Decrypt::blocks(&self.cipher, &mut self.chain, &last_ct, &mut last);
        let keep = unpad(&last)?;
        Ok(last[..keep].to_vec())
    }
}

impl CbcStream<Encrypt> {
    /// Pads and encrypts the final block (always one: PKCS7 pads a full block too).
    pub fn finalize(&mut self) -> Result<Vec<u8>, CoreError> {
        let (mut last, len) = self.finish()?;
        last[len..].fill((BLOCK - len) as u8);
        let mut out = vec![0u8; BLOCK];
        Encrypt::blocks(&self.cipher, &mut self.chain, &last, &mut out);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // NIST SP 800-38A, F.2.5 / F.2.6 (CBC-AES256).
    const KEY: &str = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4";
    const IV: &str = "000102030405060708090a0b0c0d0e0f";
    const PT: &str = "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51\
                      30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710";
    const CT: &str = "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d\
                      39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b";

    fn raw_encrypt(pt: &[u8]) -> Vec<u8> {
        let mut enc = CbcEncryptor::new(&unhex(KEY), &unhex(IV)).unwrap();
        enc.update(pt).unwrap()
    }

    #[test]
    fn nist_vectors_both_directions() {
        assert_eq!(raw_encrypt(&unhex(PT)), unhex(CT));
        assert_eq!(
            decrypt_range(&unhex(KEY), &unhex(IV), &unhex(CT)).unwrap(),
            unhex(PT)
        );
    }

    #[test]
    fn decrypt_range_from_the_middle() {
        let ct = unhex(CT);
        let pt = unhex(PT);
        let got = decrypt_range(&unhex(KEY), &ct[16..32], &ct[32..]).unwrap();
        assert_eq!(got, &pt[32..]);
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    #[test]
    fn streaming_matches_one_shot_for_odd_chunkings() {
        let key = [3u8; 32];
        let iv = [9u8; 16];
        let pt = pattern(3 * 4096 + 77);
        let mut one_shot = CbcEncryptor::new(&key, &iv).unwrap();
        let mut ct = iv.to_vec();
        ct.extend(one_shot.update(&pt).unwrap());
        ct.extend(one_shot.finalize().unwrap());
        assert_eq!(ct.len(), BLOCK + (pt.len() / BLOCK + 1) * BLOCK);
        for step in [1, 5, 15, 16, 17, 100, 511, 4095, 4112] {
            let mut enc = CbcEncryptor::new(&key, &iv).unwrap();
            let mut got_ct = iv.to_vec();
            for chunk in pt.chunks(step) {
                got_ct.extend(enc.update(chunk).unwrap());
            }
            got_ct.extend(enc.finalize().unwrap());
            assert_eq!(got_ct, ct, "encrypt step {step}");

            let mut dec = CbcDecryptor::new(&key, &iv).unwrap();
            let mut got = Vec::new();
            for chunk in ct[BLOCK..].chunks(step) {
                got.extend(dec.update(chunk).unwrap());
            }
            got.extend(dec.finalize().unwrap());
            assert_eq!(got, pt, "decrypt step {step}");
        }
    }

    #[test]
    fn unpad_rejects_every_bad_pattern() {
        let mut block = [0u8; BLOCK];
        assert!(unpad(&block).is_err());
        block[15] = 17;
        assert!(unpad(&block).is_err());
        block[15] = 3;
        block[14] = 3;
        block[13] = 2;
        assert!(unpad(&block).is_err());
        block[13] = 3;
        assert_eq!(unpad(&block), Ok(13));
        let full = [16u8; BLOCK];
        assert_eq!(unpad(&full), Ok(0));
    }

    #[test]
    fn bad_lengths_are_reported() {
        assert_eq!(
            CbcDecryptor::new(&[0; 31], &[0; 16]).err(),
            Some(CoreError::KeyLength(31))
        );
        assert_eq!(
            CbcEncryptor::new(&[0; 32], &[0; 15]).err(),
            Some(CoreError::IvLength(15))
        );
        assert_eq!(
            decrypt_range(&[0; 32], &[0; 16], &[0; 17]),
            Err(CoreError::Unaligned(17))
        );
        let mut dec = CbcDecryptor::new(&[0; 32], &[0; 16]).unwrap();
        let mut small = [0u8; 16];
        assert_eq!(
            dec.update_into(&[0; 48], &mut small),
            Err(CoreError::OutputTooSmall {
                needed: 32,
                got: 16
            })
        );
    }

    #[test]
    fn finalize_twice_is_refused() {
        let mut enc = CbcEncryptor::new(&[0; 32], &[0; 16]).unwrap();
        enc.finalize().unwrap();
        assert_eq!(enc.finalize(), Err(CoreError::Finalized));
        assert_eq!(enc.update(b"x"), Err(CoreError::Finalized));
    }
}
