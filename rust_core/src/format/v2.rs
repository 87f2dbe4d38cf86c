//! Format v2 (docs/protocol.md, "Format v2"): authenticated streaming, STREAM-style chunked
//! AES-256-GCM.
//!
//! ```text
//! file   = header(32) ‖ ct_0 ‖ ct_1 ‖ … ‖ ct_final
//! header = "ELD2" ‖ 0x02 ‖ 0x01 (AES-256-GCM) ‖ s ‖ 0x00 ‖ salt(16) ‖ prefix(7) ‖ 0x00
//! key    = HKDF-SHA256(ikm = source key, salt, info = "edgeloader/v2 payload", L = 32)
//! ct_i   = AES-256-GCM(key, nonce = prefix ‖ u32_be(i) ‖ last, aad = header, pt_i) ‖ tag
//! ```
//!
//! Every chunk but the final holds `C = 2^s` plaintext bytes; the final one
//! holds 1..=C, or 0 when the whole plaintext is empty. Every failure of any
//! kind is [`CoreError::Decryption`].

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::hkdf;

use crate::cbc::KEY_LEN;
use crate::error::CoreError;

pub const MAGIC: [u8; 4] = *b"ELD2";
pub const VERSION: u8 = 0x02;
/// The only AEAD defined: AES-256-GCM.
pub const AEAD_AES_256_GCM: u8 = 0x01;
pub const HEADER_LEN: usize = 32;
pub const TAG_LEN: usize = 16;
pub const SALT_LEN: usize = 16;
pub const NONCE_PREFIX_LEN: usize = 7;
pub const MIN_CHUNK_LOG2: u32 = 16;
pub const MAX_CHUNK_LOG2: u32 = 24;
/// What writers use unless told otherwise: 64 KiB chunks.
pub const DEFAULT_CHUNK_LOG2: u32 = 16;
/// A file has at most this many chunks.
pub const MAX_CHUNKS: u64 = 1 << 32;
/// The shortest valid file: a header and the tag of an empty final chunk.
pub const MIN_FILE_LEN: u64 = (HEADER_LEN + TAG_LEN) as u64;
/// The HKDF `info` of the payload key (21 ASCII bytes).
pub const PAYLOAD_INFO: &[u8; 21] = b"edgeloader/v2 payload";

const SALT: std::ops::Range<usize> = 8..24;
const NONCE_PREFIX: std::ops::Range<usize> = 24..31;

/// A v2 header whose fixed fields have all been checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header([u8; HEADER_LEN]);

impl Header {
    /// A header for writing, with the given salt and nonce prefix.
    pub fn new(chunk_log2: u32, salt: &[u8], nonce_prefix: &[u8]) -> Result<Self, CoreError> {
        if !(MIN_CHUNK_LOG2..=MAX_CHUNK_LOG2).contains(&chunk_log2) {
            return Err(CoreError::ChunkLog2(chunk_log2));
        }
        if salt.len() != SALT_LEN {
            return Err(CoreError::ParamLength {
                what: "salt",
                expected: SALT_LEN,
                got: salt.len(),
            });
        }
        if nonce_prefix.len() != NONCE_PREFIX_LEN {
            return Err(CoreError::ParamLength {
                what: "nonce prefix",
                expected: NONCE_PREFIX_LEN,
                got: nonce_prefix.len(),
            });
        }
        let mut bytes = [0u8; HEADER_LEN];
        bytes[..4].copy_from_slice(&MAGIC);
        bytes[4] = VERSION;
        bytes[5] = AEAD_AES_256_GCM;
        bytes[6] = chunk_log2 as u8;
        bytes[SALT].copy_from_slice(salt);
        bytes[NONCE_PREFIX].copy_from_slice(nonce_prefix);
        Ok(Self(bytes))
    }

    /// A header for writing with a random salt and nonce prefix.
    pub fn random(chunk_log2: u32) -> Result<Self, CoreError> {
        let mut random = [0u8; SALT_LEN + NONCE_PREFIX_LEN];
        getrandom::fill(&mut random).map_err(|_| CoreError::Random)?;
        let (salt, prefix) = random.split_at(SALT_LEN);
        Self::new(chunk_log2, salt, prefix)
    }

    /// Reads exactly 32 header bytes, checking every fixed field (magic,
    /// version, AEAD, the range of `s`, both zero bytes) before any is used.
    pub fn parse(bytes: &[u8]) -> Result<Self, CoreError> {
        let bytes: [u8; HEADER_LEN] = bytes.try_into().map_err(|_| CoreError::Decryption)?;
        let valid = bytes[..4] == MAGIC
            && bytes[4] == VERSION
            && bytes[5] == AEAD_AES_256_GCM
            && (MIN_CHUNK_LOG2..=MAX_CHUNK_LOG2).contains(&u32::from(bytes[6]))
            && bytes[7] == 0
            && bytes[31] == 0;
        if valid {
            Ok(Self(bytes))
        } else {
            Err(CoreError::Decryption)
        }
    }

    pub fn as_bytes(&self) -> &[u8; HEADER_LEN] {
        &self.0
    }

    pub fn chunk_log2(&self) -> u32 {
        u32::from(self.0[6])
    }

    /// `C`, the plaintext size of every chunk but the final.
    pub fn chunk_size(&self) -> usize {
        1 << self.chunk_log2()
    }

    /// `C + 16`, the stored size of every chunk but the final.
    pub fn stored_chunk_size(&self) -> usize {
        self.chunk_size() + TAG_LEN
    }

    pub fn salt(&self) -> &[u8] {
        &self.0[SALT]
    }

    pub fn nonce_prefix(&self) -> &[u8] {
        &self.0[NONCE_PREFIX]
    }
}

/// What the header and the file size alone say about a v2 file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `C`.
    pub chunk_size: u64,
    /// `k`: the number of chunks, the final one included.
    pub chunks: u64,
    /// The plaintext length: a claim until the final chunk verifies.
    pub plaintext_len: u64,
    pub file_len: u64,
}

impl Layout {
    /// The length rule of §4.2: `n = len − 32`, `F = C + 16`, `k = ⌈n/F⌉`,
    /// `r = n − (k−1)·F`; valid only if `len ≥ 48`, `r ≥ 16`, `r ≥ 17` when
    /// `k > 1`, and `k ≤ 2^32`.
    pub fn new(header: &Header, file_len: u64) -> Result<Self, CoreError> {
        if file_len < MIN_FILE_LEN {
            return Err(CoreError::Decryption);
        }
        let chunk_size = header.chunk_size() as u64;
        let stored = chunk_size + TAG_LEN as u64;
        let n = file_len - HEADER_LEN as u64;
        let chunks = n / stored + u64::from(!n.is_multiple_of(stored));
        let last = n - (chunks - 1) * stored;
        let tag = TAG_LEN as u64;
        if last < tag || (chunks > 1 && last < tag + 1) || chunks > MAX_CHUNKS {
            return Err(CoreError::Decryption);
        }
        Ok(Self {
            chunk_size,
            chunks,
            plaintext_len: n - tag * chunks,
            file_len,
        })
    }

    /// The byte range `start..end` of chunk `index` in the file, and whether
    /// it is the final chunk.
    pub fn chunk_range(&self, index: u64) -> Result<(u64, u64, bool), CoreError> {
        if index >= self.chunks {
            return Err(CoreError::ChunkIndex {
                index,
                chunks: self.chunks,
            });
        }
        let start = HEADER_LEN as u64 + index * (self.chunk_size + TAG_LEN as u64);
        let is_final = index == self.chunks - 1;
        let end = if is_final {
            self.file_len
        } else {
            start + self.chunk_size + TAG_LEN as u64
        };
        Ok((start, end, is_final))
    }
}

/// HKDF-SHA256 with a 32-byte output.
pub(crate) fn hkdf_sha256_32(ikm: &[u8], salt: &[u8], info: &[u8]) -> [u8; 32] {
    struct Len32;
    impl hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    let mut out = [0u8; 32];
    hkdf::Salt::new(hkdf::HKDF_SHA256, salt)
        .extract(ikm)
        .expand(&[info], Len32)
        .and_then(|okm| okm.fill(&mut out))
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

/// The payload key of one file and its per-chunk nonces.
pub struct PayloadKey {
    aead: LessSafeKey,
    header: Header,
}

impl PayloadKey {
    /// Derives the payload key from the 32-byte source key and the header's salt.
    pub fn new(source_key: &[u8], header: &Header) -> Result<Self, CoreError> {
        if source_key.len() != KEY_LEN {
            return Err(CoreError::KeyLength(source_key.len()));
        }
        let key = hkdf_sha256_32(source_key, header.salt(), PAYLOAD_INFO);
        let unbound = UnboundKey::new(&AES_256_GCM, &key).expect("32-byte AES-256-GCM key");
        Ok(Self {
            aead: LessSafeKey::new(unbound),
            header: *header,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// `nonce_i = prefix ‖ u32_be(i) ‖ last`. Indexes past 2^32 − 1 are refused.
    fn nonce(&self, index: u64, last: bool) -> Result<Nonce, CoreError> {
        let index = u32::try_from(index).map_err(|_| CoreError::Decryption)?;
        let mut nonce = [0u8; 12];
        nonce[..7].copy_from_slice(self.header.nonce_prefix());
        nonce[7..11].copy_from_slice(&index.to_be_bytes());
        nonce[11] = u8::from(last);
        Ok(Nonce::assume_unique_for_key(nonce))
    }

    /// Seals one chunk: `out` (exactly `pt.len() + 16` bytes) receives the
    /// ciphertext then the tag.
    pub fn seal(&self, index: u64, last: bool, pt: &[u8], out: &mut [u8]) -> Result<(), CoreError> {
        let nonce = self
            .nonce(index, last)
            .map_err(|_| CoreError::LengthOverflow)?;
        debug_assert_eq!(out.len(), pt.len() + TAG_LEN);
        // Scatter with an empty in-place part: encrypts `pt` straight into
        // `out`, tag appended, without a copy first.
        self.aead
            .seal_in_place_scatter(nonce, Aad::from(&self.header.0), &mut [], pt, out)
            .map_err(|_| CoreError::LengthOverflow)
    }

    /// Opens one chunk (`ct` = ciphertext ‖ tag) into `out` (exactly
    /// `ct.len() − 16` bytes). On failure `out` is zeroed: no unverified
    /// plaintext is left behind.
    pub fn open(&self, index: u64, last: bool, ct: &[u8], out: &mut [u8]) -> Result<(), CoreError> {
        let nonce = self.nonce(index, last)?;
        if ct.len() < TAG_LEN || out.len() != ct.len() - TAG_LEN {
            return Err(CoreError::Decryption);
        }
        let (body, tag) = ct.split_at(ct.len() - TAG_LEN);
        let opened =
            self.aead
                .open_separate_gather(nonce, Aad::from(&self.header.0), body, tag, out);
        if opened.is_err() {
            out.fill(0);
            return Err(CoreError::Decryption);
        }
        Ok(())
    }
}

/// Whether `len` stored bytes can be chunk `index` (final or not) of a file
/// with chunks of `chunk_size` plaintext bytes.
fn valid_chunk_len(chunk_size: usize, index: u64, is_final: bool, len: usize) -> bool {
    let stored = chunk_size + TAG_LEN;
    if is_final {
        index < MAX_CHUNKS && len <= stored && len >= TAG_LEN + usize::from(index > 0)
    } else {
        index < MAX_CHUNKS - 1 && len == stored
    }
}

/// Opens chunk `index` alone, given whether it is the final one. Its size
/// must be exactly what the rules give it.
pub fn open_chunk(
    source_key: &[u8],
    header: &[u8],
    index: u64,
    is_final: bool,
    data: &[u8],
) -> Result<Vec<u8>, CoreError> {
    let header = Header::parse(header)?;
    let key = PayloadKey::new(source_key, &header)?;
    if !valid_chunk_len(header.chunk_size(), index, is_final, data.len()) {
        return Err(CoreError::Decryption);
    }
    let mut out = vec![0u8; data.len() - TAG_LEN];
    key.open(index, is_final, data, &mut out)?;
    Ok(out)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Open,
    Failed,
    Finalized,
}

/// Streaming v2 decryption of a file read from its start.
///
/// A chunk is taken as final only when the stream ends right after it, so
/// the last complete chunk seen is held back until more input or
/// `finalize`. Plaintext is released only after its tag verifies.
pub struct DecryptorV2 {
    source_key: [u8; KEY_LEN],
    header: [u8; HEADER_LEN],
    header_len: usize,
    key: Option<PayloadKey>,
    /// Ciphertext not yet opened: 0..=C+16 bytes.
    pending: Vec<u8>,
    /// Index of the next chunk to open.
    index: u64,
    state: State,
}

impl DecryptorV2 {
    pub fn new(source_key: &[u8]) -> Result<Self, CoreError> {
        let source_key = source_key
            .try_into()
            .map_err(|_| CoreError::KeyLength(source_key.len()))?;
        Ok(Self {
            source_key,
            header: [0; HEADER_LEN],
            header_len: 0,
            key: None,
            pending: Vec::new(),
            index: 0,
            state: State::Open,
        })
    }

    /// The header, once all 32 bytes have been read and checked.
    pub fn header(&self) -> Option<&Header> {
        self.key.as_ref().map(PayloadKey::header)
    }

    fn check_open(&self) -> Result<(), CoreError> {
        match self.state {
            State::Open => Ok(()),
            State::Failed => Err(CoreError::Decryption),
            State::Finalized => Err(CoreError::Finalized),
        }
    }

    /// Plaintext bytes released for `chunk_input` more bytes after the
    /// header, with chunks of `chunk_size`: every complete chunk followed by
    /// at least one more byte.
    fn released(&self, chunk_size: usize, chunk_input: usize) -> usize {
        let total = self.pending.len() + chunk_input;
        total.saturating_sub(1) / (chunk_size + TAG_LEN) * chunk_size
    }

    /// How many bytes `update` emits for `input_len` more bytes: exact once
    /// the header has been read; before that an upper bound.
    pub fn output_len(&self, input_len: usize) -> usize {
        match &self.key {
            Some(key) => self.released(key.header().chunk_size(), input_len),
            None => {
                let rest = input_len.saturating_sub(HEADER_LEN - self.header_len);
                rest.saturating_sub(1)
            }
        }
    }

    /// How many bytes `update` emits for exactly this `input`: the header's
    /// chunk size is read from `input` when the header ends in it.
    pub fn output_len_for(&self, input: &[u8]) -> usize {
        match &self.key {
            Some(_) => self.output_len(input.len()),
            None => {
                let need = HEADER_LEN - self.header_len;
                if input.len() <= need {
                    return 0;
                }
                let log2 = if self.header_len > 6 {
                    self.header[6]
                } else {
                    input[6 - self.header_len]
                };
                if !(MIN_CHUNK_LOG2..=MAX_CHUNK_LOG2).contains(&u32::from(log2)) {
                    return 0; // the header fails: nothing is released
                }
                self.released(1 << log2, input.len() - need)
            }
        }
    }

    /// Takes header bytes from the front of `input`; returns how many.
    fn absorb_header(&mut self, input: &[u8]) -> Result<usize, CoreError> {
        if self.key.is_some() {
            return Ok(0);
        }
        let take = input.len().min(HEADER_LEN - self.header_len);
        self.header[self.header_len..self.header_len + take].copy_from_slice(&input[..take]);
        self.header_len += take;
        if self.header_len == HEADER_LEN {
            let key = Header::parse(&self.header)
                .and_then(|header| PayloadKey::new(&self.source_key, &header));
            self.source_key.fill(0);
            match key {
                Ok(key) => {
                    self.pending.reserve_exact(key.header().stored_chunk_size());
                    self.key = Some(key);
                }
                Err(err) => {
                    self.state = State::Failed;
                    return Err(err);
                }
            }
        }
        Ok(take)
    }

    /// Opens chunk `self.index` (not final) from `ct` into `out`.
    fn open_inner(
        key: &PayloadKey,
        index: &mut u64,
        ct: &[u8],
        out: &mut [u8],
    ) -> Result<(), CoreError> {
        if *index >= MAX_CHUNKS - 1 {
            return Err(CoreError::Decryption);
        }
        key.open(*index, false, ct, out)?;
        *index += 1;
        Ok(())
    }

    /// Decrypts what it can of `input` into `out`; returns the bytes
    /// written, always `output_len_for(input)`. On a failure nothing written
    /// by this call is left in `out`, and every later call fails.
    pub fn update_into(&mut self, input: &[u8], out: &mut [u8]) -> Result<usize, CoreError> {
        self.check_open()?;
        let needed = self.output_len_for(input);
        if out.len() < needed {
            return Err(CoreError::OutputTooSmall {
                needed,
                got: out.len(),
            });
        }
        let used = self.absorb_header(input)?;
        let out = &mut out[..needed];
        let result = self.open_chunks(&input[used..], out);
        if result.is_err() {
            out.fill(0);
            self.state = State::Failed;
        }
        result
    }

    fn open_chunks(&mut self, mut input: &[u8], out: &mut [u8]) -> Result<usize, CoreError> {
        let Some(key) = &self.key else {
            return Ok(0);
        };
        let size = key.header().chunk_size();
        let stored = size + TAG_LEN;
        let mut written = 0;
        // Complete the held-back chunk first when more bytes follow it...
        if !self.pending.is_empty() && self.pending.len() + input.len() > stored {
            let take = stored - self.pending.len();
            self.pending.extend_from_slice(&input[..take]);
            input = &input[take..];
            Self::open_inner(key, &mut self.index, &self.pending, &mut out[..size])?;
            self.pending.clear();
            written = size;
        }
        // ...then every chunk straight from the caller's buffer that is
        // followed by at least one more byte...
        while self.pending.is_empty() && input.len() > stored {
            let (ct, rest) = input.split_at(stored);
            Self::open_inner(key, &mut self.index, ct, &mut out[written..written + size])?;
            written += size;
            input = rest;
        }
        // ...and hold back the rest (at most one chunk).
        self.pending.extend_from_slice(input);
        debug_assert!(self.pending.len() <= stored);
        Ok(written)
    }

    pub fn update(&mut self, input: &[u8]) -> Result<Vec<u8>, CoreError> {
        let mut out = vec![0u8; self.output_len_for(input)];
        let n = self.update_into(input, &mut out)?;
        out.truncate(n);
        Ok(out)
    }

    /// Opens the held-back bytes as the final chunk. A stream that ends
    /// without a chunk that verifies as final fails.
    pub fn finalize(&mut self) -> Result<Vec<u8>, CoreError> {
        self.check_open()?;
        self.state = State::Finalized;
        let Some(key) = &self.key else {
            return Err(CoreError::Decryption);
        };
        let size = key.header().chunk_size();
        if !valid_chunk_len(size, self.index, true, self.pending.len()) {
            return Err(CoreError::Decryption);
        }
        let mut out = vec![0u8; self.pending.len() - TAG_LEN];
        key.open(self.index, true, &self.pending, &mut out)?;
        self.pending.clear();
        Ok(out)
    }
}

/// Streaming v2 encryption: the header first, then every chunk.
///
/// A full chunk is sealed as not final only once a byte after it arrives,
/// since a plaintext whose length is a multiple of `C` ends with a full
/// final chunk.
pub struct EncryptorV2 {
    key: PayloadKey,
    header_sent: bool,
    /// Plaintext not yet sealed: 0..=C bytes.
    pending: Vec<u8>,
    index: u64,
    finalized: bool,
}

impl EncryptorV2 {
    /// `chunk_log2` defaults to 16; `salt` and `nonce_prefix` are random
    /// unless given (known-answer tests).
    pub fn new(
        source_key: &[u8],
        chunk_log2: Option<u32>,
        salt: Option<&[u8]>,
        nonce_prefix: Option<&[u8]>,
    ) -> Result<Self, CoreError> {
        let chunk_log2 = chunk_log2.unwrap_or(DEFAULT_CHUNK_LOG2);
        let mut header = Header::random(chunk_log2)?;
        if salt.is_some() || nonce_prefix.is_some() {
            header = Header::new(
                chunk_log2,
                salt.unwrap_or(header.salt()),
                nonce_prefix.unwrap_or(header.nonce_prefix()),
            )?;
        }
        let key = PayloadKey::new(source_key, &header)?;
        Ok(Self {
            pending: Vec::with_capacity(header.chunk_size()),
            key,
            header_sent: false,
            index: 0,
            finalized: false,
        })
    }

    pub fn header(&self) -> &Header {
        self.key.header()
    }

    fn header_out(&self) -> usize {
        if self.header_sent {
            0
        } else {
            HEADER_LEN
        }
    }

    /// How many bytes `update` emits for `input_len` more bytes.
    pub fn output_len(&self, input_len: usize) -> usize {
        let size = self.header().chunk_size();
        let total = self.pending.len() + input_len;
        self.header_out() + total.saturating_sub(1) / size * (size + TAG_LEN)
    }

    fn seal_inner(
        &mut self,
        from_pending: bool,
        pt: &[u8],
        out: &mut [u8],
    ) -> Result<(), CoreError> {
        if self.index >= MAX_CHUNKS - 1 {
            return Err(CoreError::LengthOverflow);
        }
        let pt = if from_pending { &self.pending[..] } else { pt };
        self.key.seal(self.index, false, pt, out)?;
        self.index += 1;
        Ok(())
    }

    /// Encrypts what it can of `input` into `out`; returns the bytes
    /// written, always `output_len(input.len())`.
    pub fn update_into(&mut self, mut input: &[u8], out: &mut [u8]) -> Result<usize, CoreError> {
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
        let mut written = 0;
        if !self.header_sent {
            out[..HEADER_LEN].copy_from_slice(self.header().as_bytes());
            self.header_sent = true;
            written = HEADER_LEN;
        }
        let size = self.header().chunk_size();
        let stored = size + TAG_LEN;
        if !self.pending.is_empty() && self.pending.len() + input.len() > size {
            let take = size - self.pending.len();
            self.pending.extend_from_slice(&input[..take]);
            input = &input[take..];
            self.seal_inner(true, &[], &mut out[written..written + stored])?;
            self.pending.clear();
            written += stored;
        }
        while self.pending.is_empty() && input.len() > size {
            let (pt, rest) = input.split_at(size);
            self.seal_inner(false, pt, &mut out[written..written + stored])?;
            written += stored;
            input = rest;
        }
        self.pending.extend_from_slice(input);
        debug_assert_eq!(written, needed);
        Ok(written)
    }

    pub fn update(&mut self, input: &[u8]) -> Result<Vec<u8>, CoreError> {
        let mut out = vec![0u8; self.output_len(input.len())];
        self.update_into(input, &mut out)?;
        Ok(out)
    }

    /// Seals the pending bytes as the final chunk (with the header first if
    /// nothing was emitted yet).
    pub fn finalize(&mut self) -> Result<Vec<u8>, CoreError> {
        if self.finalized {
            return Err(CoreError::Finalized);
        }
        self.finalized = true;
        let head = self.header_out();
        let mut out = vec![0u8; head + self.pending.len() + TAG_LEN];
        out[..head].copy_from_slice(&self.header().as_bytes()[..head]);
        self.header_sent = true;
        self.key
            .seal(self.index, true, &self.pending, &mut out[head..])?;
        self.pending.clear();
        Ok(out)
    }
}

/// Passes a v2 file's ciphertext through unchanged, releasing each chunk
/// only once its tag verifies: for ciphertext that is kept, not decrypted
/// (pre-staging without a manifest, docs/security.md).
///
/// With `start` 0 the input begins with the 32 header bytes, which must be
/// the header given and are released with chunk 0; otherwise `start` is the
/// offset of a chunk (resuming a partial read) and the input begins there.
/// The file's size is known, so the final chunk is known too: no chunk is
/// held back waiting for the end of the stream.
///
/// At most one chunk is held. A failure stops the gate for good; the
/// `update` that finds it still returns the chunks it verified before it,
/// and the error is raised by that call when it has nothing to return, and
/// by every later call. Every failure is [`CoreError::Decryption`].
pub struct ChunkGate {
    key: PayloadKey,
    layout: Layout,
    /// The chunk being received; every one before it has been released.
    index: u64,
    /// Header bytes in front of the chunk being received: 32 for chunk 0
    /// read from the start of the file, 0 otherwise.
    lead: usize,
    /// The received bytes of the header and chunk `index`, fewer than their length.
    held: Vec<u8>,
    /// Where chunks are opened; the plaintext is discarded.
    scratch: Vec<u8>,
    failed: bool,
}

impl ChunkGate {
    pub fn new(
        source_key: &[u8],
        header: &Header,
        file_len: u64,
        start: u64,
    ) -> Result<Self, CoreError> {
        let key = PayloadKey::new(source_key, header)?;
        let layout = Layout::new(header, file_len)?;
        let (index, lead) = if start == 0 {
            (0, HEADER_LEN)
        } else {
            let stored = header.stored_chunk_size() as u64;
            let offset = start
                .checked_sub(HEADER_LEN as u64)
                .filter(|offset| offset.is_multiple_of(stored))
                .ok_or(CoreError::Decryption)?;
            let index = offset / stored;
            if index >= layout.chunks {
                return Err(CoreError::Decryption);
            }
            (index, 0)
        };
        Ok(Self {
            key,
            layout,
            index,
            lead,
            held: Vec::new(),
            scratch: vec![0; header.chunk_size()],
            failed: false,
        })
    }

    /// The file offset of the end of what has been released.
    fn position(&self) -> u64 {
        match self.layout.chunk_range(self.index) {
            Ok((start, _, _)) => start - self.lead as u64,
            Err(_) => self.layout.file_len,
        }
    }

    /// How many bytes `update` releases for `input_len` more bytes. Exact
    /// unless a chunk fails, when fewer are released.
    pub fn output_len(&self, input_len: usize) -> usize {
        let position = self.position();
        let file_len = self.layout.file_len;
        let received = (position + self.held.len() as u64)
            .saturating_add(input_len as u64)
            .min(file_len);
        let stored = self.layout.chunk_size + TAG_LEN as u64;
        // Chunks before the final one that end by `received`.
        let done = received.saturating_sub(HEADER_LEN as u64) / stored;
        let end = if received == file_len {
            file_len
        } else if done > self.index {
            HEADER_LEN as u64 + done * stored
        } else {
            position
        };
        (end - position) as usize
    }

    /// Checks one whole unit: the header (when `lead` is 32), then chunk `index`.
    fn verify(
        key: &PayloadKey,
        index: u64,
        is_final: bool,
        lead: usize,
        unit: &[u8],
        scratch: &mut [u8],
    ) -> bool {
        let (header, chunk) = unit.split_at(lead);
        header == &key.header().as_bytes()[..lead]
            && key
                .open(
                    index,
                    is_final,
                    chunk,
                    &mut scratch[..chunk.len() - TAG_LEN],
                )
                .is_ok()
    }

    /// Takes the next bytes of the file and writes those of every chunk
    /// they complete, once its tag verifies, into `out` (at least
    /// `output_len(input.len())` bytes); returns how many.
    pub fn update_into(&mut self, mut input: &[u8], out: &mut [u8]) -> Result<usize, CoreError> {
        if self.failed {
            return Err(CoreError::Decryption);
        }
        let needed = self.output_len(input.len());
        if out.len() < needed {
            return Err(CoreError::OutputTooSmall {
                needed,
                got: out.len(),
            });
        }
        let mut written = 0;
        while !input.is_empty() {
            let Ok((start, end, is_final)) = self.layout.chunk_range(self.index) else {
                self.failed = true; // bytes after the final chunk
                break;
            };
            let len = self.lead + (end - start) as usize;
            let (part, rest) = input.split_at((len - self.held.len()).min(input.len()));
            input = rest;
            if self.held.len() + part.len() < len {
                // Reserves once: later chunks are never longer.
                self.held.reserve_exact(len - self.held.len());
                self.held.extend_from_slice(part);
                break;
            }
            let unit = if self.held.is_empty() {
                part
            } else {
                self.held.extend_from_slice(part);
                &self.held[..]
            };
            if !Self::verify(
                &self.key,
                self.index,
                is_final,
                self.lead,
                unit,
                &mut self.scratch,
            ) {
                self.failed = true;
                break;
            }
            out[written..written + unit.len()].copy_from_slice(unit);
            written += unit.len();
            self.held.clear();
            self.index += 1;
            self.lead = 0;
        }
        debug_assert!(self.failed || written == needed);
        if self.failed {
            self.held = Vec::new();
            if written == 0 {
                return Err(CoreError::Decryption);
            }
        }
        Ok(written)
    }

    /// `update_into` a new buffer.
    pub fn update(&mut self, input: &[u8]) -> Result<Vec<u8>, CoreError> {
        let mut out = vec![0; self.output_len(input.len())];
        let written = self.update_into(input, &mut out)?;
        out.truncate(written);
        Ok(out)
    }

    /// Succeeds only when the final chunk has been verified and released.
    pub fn finish(&mut self) -> Result<(), CoreError> {
        if self.failed || self.index < self.layout.chunks {
            self.failed = true;
            self.held = Vec::new();
            return Err(CoreError::Decryption);
        }
        Ok(())
    }
}

/// One-shot format v2 encryption.
pub fn encrypt_v2(
    source_key: &[u8],
    plaintext: &[u8],
    chunk_log2: Option<u32>,
    salt: Option<&[u8]>,
    nonce_prefix: Option<&[u8]>,
) -> Result<Vec<u8>, CoreError> {
    let mut enc = EncryptorV2::new(source_key, chunk_log2, salt, nonce_prefix)?;
    let mut out = enc.update(plaintext)?;
    out.extend_from_slice(&enc.finalize()?);
    Ok(out)
}

/// One-shot format v2 decryption. Every failure is `Decryption`.
pub fn decrypt_v2(source_key: &[u8], data: &[u8]) -> Result<Vec<u8>, CoreError> {
    let mut dec = DecryptorV2::new(source_key)?;
    let mut out = dec.update(data)?;
    out.extend_from_slice(&dec.finalize()?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::sha256;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    const KEY: [u8; 32] = {
        let mut k = [0u8; 32];
        let mut i = 0;
        while i < 32 {
            k[i] = i as u8;
            i += 1;
        }
        k
    };
    const SALT: &str = "101112131415161718191a1b1c1d1e1f";
    const PREFIX: &str = "a0a1a2a3a4a5a6";

    fn kat(pt: &[u8]) -> Vec<u8> {
        encrypt_v2(&KEY, pt, None, Some(&unhex(SALT)), Some(&unhex(PREFIX))).unwrap()
    }

    // Computed from the text of §4.2 with an independent AES-GCM and HKDF.
    #[test]
    fn known_answers() {
        let header = "454c443202011000101112131415161718191a1b1c1d1e1fa0a1a2a3a4a5a600";
        assert_eq!(
            hex(&hkdf_sha256_32(&KEY, &unhex(SALT), PAYLOAD_INFO)),
            "0549706e10d9f9c6cf15d2c923287d1291863b82eefe4f34c90bcc621172ae49"
        );
        assert_eq!(
            hex(&kat(b"")),
            format!("{header}a43be5d9b740660e5df54247f5a0e246")
        );
        assert_eq!(
            hex(&kat(&pattern(5))),
            format!("{header}4b936e3260bcbd48ddddd0c47d71c5fc57cee5cfcb")
        );
        let ct = kat(&pattern(65536 + 3));
        assert_eq!(ct.len(), 65603);
        assert_eq!(
            hex(&sha256(&ct)),
            "8698ca2900dd48c320ab83749119d6bdd1606c41123dd5d8695ab6ca02d60499"
        );
        assert_eq!(
            hex(&ct[ct.len() - 19..]),
            "1a31e018ca9b81d3edf534f385a588178e77e0"
        );
    }

    #[test]
    fn hkdf_rfc5869_case_1() {
        // RFC 5869 A.1; the first 32 bytes of its 42-byte OKM.
        let okm = hkdf_sha256_32(
            &[0x0b; 22],
            &unhex("000102030405060708090a0b0c"),
            &unhex("f0f1f2f3f4f5f6f7f8f9"),
        );
        assert_eq!(
            hex(&okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
        );
    }

    fn stream_decrypt(data: &[u8], step: usize) -> Result<Vec<u8>, CoreError> {
        let mut dec = DecryptorV2::new(&KEY)?;
        let mut out = Vec::new();
        for piece in data.chunks(step.max(1)) {
            let expected = dec.output_len_for(piece);
            let got = dec.update(piece)?;
            assert_eq!(got.len(), expected);
            out.extend(got);
        }
        out.extend(dec.finalize()?);
        Ok(out)
    }

    #[test]
    fn round_trips_around_chunk_boundaries_for_any_step() {
        let c = 1 << 16;
        for len in [0, 1, c - 1, c, c + 1, 2 * c, 2 * c + 1, 3 * c - 1] {
            let pt = pattern(len);
            let ct = encrypt_v2(&KEY, &pt, None, None, None).unwrap();
            let layout = Layout::new(&Header::parse(&ct[..32]).unwrap(), ct.len() as u64).unwrap();
            assert_eq!(layout.plaintext_len, len as u64);
            for step in [1000, 65_552, 65_553, 70_000, 1 << 20] {
                assert_eq!(
                    stream_decrypt(&ct, step).unwrap(),
                    pt,
                    "len {len} step {step}"
                );
            }
            for step in [1, 7, 4096, 65_536, 100_000] {
                let mut enc =
                    EncryptorV2::new(&KEY, None, Some(&ct[8..24]), Some(&ct[24..31])).unwrap();
                let mut got = Vec::new();
                for piece in pt.chunks(step) {
                    let expected = enc.output_len(piece.len());
                    let out = enc.update(piece).unwrap();
                    assert_eq!(out.len(), expected);
                    got.extend(out);
                }
                got.extend(enc.finalize().unwrap());
                assert_eq!(got, ct, "len {len} step {step}");
            }
        }
    }

    #[test]
    fn byte_at_a_time_small_file() {
        let pt = pattern(300);
        let ct = encrypt_v2(&KEY, &pt, None, None, None).unwrap();
        assert_eq!(stream_decrypt(&ct, 1).unwrap(), pt);
    }

    #[test]
    fn chunks_open_alone() {
        let c = 1 << 16;
        let pt = pattern(3 * c + 5);
        let ct = encrypt_v2(&KEY, &pt, None, None, None).unwrap();
        let header = &ct[..32];
        let layout = Layout::new(&Header::parse(header).unwrap(), ct.len() as u64).unwrap();
        assert_eq!(layout.chunks, 4);
        let mut joined = Vec::new();
        for i in 0..layout.chunks {
            let (start, end, is_final) = layout.chunk_range(i).unwrap();
            assert_eq!(is_final, i == 3);
            let data = &ct[start as usize..end as usize];
            joined.extend(open_chunk(&KEY, header, i, is_final, data).unwrap());
            // The wrong finality, index or size fails.
            assert!(open_chunk(&KEY, header, i, !is_final, data).is_err());
            assert!(open_chunk(&KEY, header, i + 1, is_final, data).is_err());
            assert!(open_chunk(&KEY, header, i, is_final, &data[1..]).is_err());
        }
        assert_eq!(joined, pt);
        assert!(matches!(
            layout.chunk_range(4),
            Err(CoreError::ChunkIndex {
                index: 4,
                chunks: 4
            })
        ));
    }

    #[test]
    fn length_rule() {
        let header = Header::new(16, &[0; 16], &[0; 7]).unwrap();
        let f = 65_536 + 16;
        let len = |n: u64| Layout::new(&header, n).map(|l| (l.chunks, l.plaintext_len));
        assert_eq!(len(47), Err(CoreError::Decryption));
        assert_eq!(len(48), Ok((1, 0)));
        assert_eq!(len(49), Ok((1, 1)));
        assert_eq!(len(32 + f), Ok((1, 65_536)));
        assert_eq!(len(32 + f + 16), Err(CoreError::Decryption)); // empty chunk after a full one
        assert_eq!(len(32 + f + 17), Ok((2, 65_537)));
        for r in 1..16 {
            assert_eq!(len(32 + f + r), Err(CoreError::Decryption), "r = {r}");
        }
        let big = Header::new(24, &[0; 16], &[0; 7]).unwrap();
        let fb = (1u64 << 24) + 16;
        assert!(Layout::new(&big, 32 + MAX_CHUNKS * fb).is_ok());
        assert_eq!(
            Layout::new(&big, 32 + MAX_CHUNKS * fb + 17),
            Err(CoreError::Decryption)
        );
        assert_eq!(Layout::new(&big, u64::MAX), Err(CoreError::Decryption));
    }

    #[test]
    fn every_header_field_is_checked() {
        let ct = kat(&pattern(10));
        let good = &ct[..32];
        assert!(Header::parse(good).is_ok());
        for (i, bad) in [(0, b'X'), (4, 3), (5, 2), (6, 15), (6, 25), (7, 1), (31, 1)] {
            let mut h = good.to_vec();
            h[i] = bad;
            assert_eq!(Header::parse(&h), Err(CoreError::Decryption), "byte {i}");
        }
        assert_eq!(Header::parse(&good[..31]), Err(CoreError::Decryption));
        // Any other change of bytes 4..32 fails at the tag.
        for i in 4..32 {
            let mut bad = ct.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                decrypt_v2(&KEY, &bad),
                Err(CoreError::Decryption),
                "byte {i}"
            );
        }
    }

    #[test]
    fn tampering_fails() {
        let c = 1 << 16;
        let ct = encrypt_v2(&KEY, &pattern(3 * c + 100), None, None, None).unwrap();
        let f = c + 16;
        let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
        for pos in [32, 32 + f - 1, 32 + f + 5, ct.len() - 1] {
            let mut bad = ct.clone();
            bad[pos] ^= 0x80;
            cases.push((format!("flip {pos}"), bad));
        }
        let mut swapped = ct[..32].to_vec();
        swapped.extend(&ct[32 + f..32 + 2 * f]);
        swapped.extend(&ct[32..32 + f]);
        swapped.extend(&ct[32 + 2 * f..]);
        cases.push(("swap".into(), swapped));
        cases.push(("drop final".into(), ct[..32 + 3 * f].to_vec()));
        let mut extended = ct.clone();
        extended.extend(encrypt_v2(&KEY, b"x", None, None, None).unwrap()[32..].iter());
        cases.push(("extra chunk".into(), extended));
        let mut one_more = ct.clone();
        one_more.push(0);
        cases.push(("one more byte".into(), one_more));
        let mut wrong_key = KEY;
        wrong_key[31] ^= 1;
        for (name, data) in &cases {
            assert_eq!(decrypt_v2(&KEY, data), Err(CoreError::Decryption), "{name}");
            assert_eq!(
                stream_decrypt(data, 70_000),
                Err(CoreError::Decryption),
                "{name}"
            );
        }
        assert_eq!(decrypt_v2(&wrong_key, &ct), Err(CoreError::Decryption));
        for cut in (0..ct.len()).step_by(997).chain([ct.len() - 1, 48, 47, 31]) {
            assert_eq!(
                decrypt_v2(&KEY, &ct[..cut]),
                Err(CoreError::Decryption),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn failures_leave_no_plaintext_and_poison_the_stream() {
        let c = 1 << 16;
        let mut ct = encrypt_v2(&KEY, &pattern(3 * c), None, None, None).unwrap();
        ct[32 + 2 * (c + 16) - 1] ^= 1; // tag of chunk 1
        let mut dec = DecryptorV2::new(&KEY).unwrap();
        let mut out = vec![0xAAu8; dec.output_len_for(&ct)];
        assert_eq!(dec.update_into(&ct, &mut out), Err(CoreError::Decryption));
        assert!(out.iter().all(|&b| b == 0));
        assert_eq!(dec.update(b"more"), Err(CoreError::Decryption));
        assert_eq!(dec.finalize(), Err(CoreError::Decryption));
    }

    #[test]
    fn misuse_is_reported() {
        assert_eq!(
            DecryptorV2::new(&[0; 31]).err(),
            Some(CoreError::KeyLength(31))
        );
        assert_eq!(
            EncryptorV2::new(&KEY, Some(25), None, None).err(),
            Some(CoreError::ChunkLog2(25))
        );
        assert_eq!(
            EncryptorV2::new(&KEY, Some(15), None, None).err(),
            Some(CoreError::ChunkLog2(15))
        );
        assert!(matches!(
            EncryptorV2::new(&KEY, None, Some(&[0; 15]), None),
            Err(CoreError::ParamLength { what: "salt", .. })
        ));
        let mut enc = EncryptorV2::new(&KEY, None, None, None).unwrap();
        enc.finalize().unwrap();
        assert_eq!(enc.finalize(), Err(CoreError::Finalized));
        assert_eq!(enc.update(b"x"), Err(CoreError::Finalized));
        let mut dec = DecryptorV2::new(&KEY).unwrap();
        let mut small = [0u8; 10];
        let ct = encrypt_v2(&KEY, &pattern(1 << 17), None, None, None).unwrap();
        assert!(matches!(
            dec.update_into(&ct, &mut small),
            Err(CoreError::OutputTooSmall { .. })
        ));
        // Nothing was consumed: the same call with room succeeds.
        assert_eq!(stream_decrypt(&ct, ct.len()).unwrap(), pattern(1 << 17));
    }

    #[test]
    fn output_len_is_an_upper_bound_before_the_header() {
        let ct = encrypt_v2(&KEY, &pattern(200_000), Some(17), None, None).unwrap();
        let dec = DecryptorV2::new(&KEY).unwrap();
        for n in [0, 10, 32, 33, 100_000, ct.len()] {
            assert!(dec.output_len(n) >= dec.output_len_for(&ct[..n]), "n = {n}");
        }
    }

    /// Feeds `data` to a gate cut at `cuts`; returns what was released and
    /// the first error.
    fn gate_feed(
        gate: &mut ChunkGate,
        data: &[u8],
        cuts: &[usize],
    ) -> (Vec<u8>, Result<(), CoreError>) {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        points.extend([0, data.len()]);
        points.sort_unstable();
        let mut out = Vec::new();
        for w in points.windows(2) {
            match gate.update(&data[w[0]..w[1]]) {
                Ok(released) => out.extend(released),
                Err(err) => return (out, Err(err)),
            }
        }
        (out, gate.finish())
    }

    fn chunk_gate(ct: &[u8], start: u64) -> Result<ChunkGate, CoreError> {
        let header = Header::parse(&ct[..32])?;
        ChunkGate::new(&KEY, &header, ct.len() as u64, start)
    }

    /// Cut points, reproducibly: a few from a linear congruential sequence.
    fn cuts(seed: u64, n: usize) -> Vec<usize> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 33) as usize
            })
            .collect()
    }

    #[test]
    fn the_chunk_gate_passes_a_good_file_for_any_split() {
        let c = 1 << 16;
        assert_eq!(
            Header::new(16, &[0; 16], &[0; 7])
                .unwrap()
                .stored_chunk_size(),
            c + 16
        );
        for len in [0, 1, c - 1, c, c + 1, 3 * c + 5] {
            let ct = encrypt_v2(&KEY, &pattern(len), None, None, None).unwrap();
            for seed in 0..20 {
                let mut gate = chunk_gate(&ct, 0).unwrap();
                let (out, end) = gate_feed(&mut gate, &ct, &cuts(seed, seed as usize % 9));
                assert_eq!((out == ct, end), (true, Ok(())), "len {len} seed {seed}");
            }
            for step in [1000, c + 16, c + 17, 1 << 20] {
                let steps: Vec<usize> = (step..ct.len()).step_by(step).collect();
                let (out, end) = gate_feed(&mut chunk_gate(&ct, 0).unwrap(), &ct, &steps);
                assert_eq!((out == ct, end), (true, Ok(())), "len {len} step {step}");
            }
        }
    }

    #[test]
    fn the_chunk_gate_releases_only_the_chunks_before_a_flip() {
        let c = 1 << 16;
        let f = c + 16;
        let ct = encrypt_v2(&KEY, &pattern(3 * c + 100), None, None, None).unwrap();
        // A flip in the header releases nothing; one in chunk k releases
        // the header and the chunks before k.
        for (pos, released) in [
            (8, 0),
            (31, 0),
            (32, 0),
            (32 + f - 1, 0),
            (32 + f, 32 + f),
            (32 + 2 * f + 7, 32 + 2 * f),
            (ct.len() - 1, 32 + 3 * f),
        ] {
            let mut bad = ct.clone();
            bad[pos] ^= 0x10;
            for seed in 0..5 {
                let mut gate = chunk_gate(&ct, 0).unwrap();
                let (out, end) = gate_feed(&mut gate, &bad, &cuts(seed, 4));
                assert_eq!(out, &ct[..released], "flip {pos}");
                assert_eq!(end, Err(CoreError::Decryption), "flip {pos}");
                assert_eq!(gate.update(b""), Err(CoreError::Decryption));
                assert_eq!(gate.finish(), Err(CoreError::Decryption));
            }
        }
        // A swapped pair of chunks fails at the first of them.
        let mut swapped = ct.clone();
        swapped[32..32 + f].copy_from_slice(&ct[32 + f..32 + 2 * f]);
        swapped[32 + f..32 + 2 * f].copy_from_slice(&ct[32..32 + f]);
        let (out, end) = gate_feed(&mut chunk_gate(&ct, 0).unwrap(), &swapped, &[]);
        assert_eq!((out.len(), end), (0, Err(CoreError::Decryption)));
    }

    #[test]
    fn the_chunk_gate_refuses_truncation_and_extension() {
        let c = 1 << 16;
        let f = c + 16;
        let ct = encrypt_v2(&KEY, &pattern(2 * c + 1), None, None, None).unwrap();
        for cut in [
            0,
            31,
            32,
            33,
            32 + f - 1,
            32 + f,
            32 + 2 * f + 16,
            ct.len() - 1,
        ] {
            let (out, end) = gate_feed(&mut chunk_gate(&ct, 0).unwrap(), &ct[..cut], &[]);
            let whole = if cut >= 32 + f {
                (cut - 32) / f * f + 32
            } else {
                0
            };
            assert_eq!(
                (out.len(), end),
                (whole, Err(CoreError::Decryption)),
                "cut {cut}"
            );
        }
        let mut extended = ct.clone();
        extended.push(0);
        let mut gate = chunk_gate(&ct, 0).unwrap();
        // The file is released; the byte after it fails the next call.
        assert_eq!(gate.update(&extended).unwrap(), ct);
        assert_eq!(gate.finish(), Err(CoreError::Decryption));
        let mut gate = chunk_gate(&ct, 0).unwrap();
        assert_eq!(gate.update(&ct).unwrap(), ct);
        assert_eq!(gate.update(b"x"), Err(CoreError::Decryption));
    }

    #[test]
    fn the_chunk_gate_resumes_at_a_chunk() {
        let c = 1 << 16;
        let f = c + 16;
        let ct = encrypt_v2(&KEY, &pattern(3 * c + 5), None, None, None).unwrap();
        for k in 0..4 {
            let start = 32 + k * f;
            let rest = &ct[start..];
            for seed in 0..5 {
                let mut gate = chunk_gate(&ct, start as u64).unwrap();
                let (out, end) = gate_feed(&mut gate, rest, &cuts(seed, 3));
                assert_eq!((out == rest, end), (true, Ok(())), "chunk {k}");
            }
            let mut bad = rest.to_vec();
            *bad.last_mut().unwrap() ^= 1;
            let (out, end) = gate_feed(&mut chunk_gate(&ct, start as u64).unwrap(), &bad, &[]);
            assert_eq!(
                (out == ct[start..32 + 3 * f], end),
                (true, Err(CoreError::Decryption))
            );
        }
        let len = ct.len() as u64;
        for start in [
            1,
            31,
            33,
            32 + f as u64 - 1,
            32 + 4 * f as u64,
            len,
            len + 1,
        ] {
            assert_eq!(
                chunk_gate(&ct, start).err(),
                Some(CoreError::Decryption),
                "{start}"
            );
        }
        // Too small an output buffer is refused before anything is taken.
        let mut gate = chunk_gate(&ct, 0).unwrap();
        assert_eq!(gate.output_len(32 + f), 32 + f);
        assert!(matches!(
            gate.update_into(&ct, &mut [0; 10]),
            Err(CoreError::OutputTooSmall { .. })
        ));
        assert_eq!(gate.update(&ct).unwrap(), ct);
        // A size no v2 file can have.
        let header = Header::parse(&ct[..32]).unwrap();
        assert!(ChunkGate::new(&KEY, &header, 32 + f as u64 + 3, 0).is_err());
    }

    #[test]
    fn larger_chunks() {
        for s in [17, 20, 24] {
            let c = 1usize << s;
            let pt = pattern(c + 1);
            let ct = encrypt_v2(&KEY, &pt, Some(s), None, None).unwrap();
            assert_eq!(ct[6], s as u8);
            assert_eq!(ct.len(), 32 + c + 1 + 32);
            assert_eq!(decrypt_v2(&KEY, &ct).unwrap(), pt);
        }
    }
}
