//! The one error type of the core.

use std::fmt;

/// Everything the core can refuse.
///
/// `Decryption` deliberately carries no detail: bad padding, a truncated
/// input and a wrong key must be indistinguishable to a caller (format v1
/// has no MAC, so any difference would be a padding oracle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoreError {
    /// A key that is not 32 bytes long.
    KeyLength(usize),
    /// An IV or previous block that is not 16 bytes long.
    IvLength(usize),
    /// A raw range whose length is not a multiple of the block size.
    Unaligned(usize),
    /// An output buffer too small for the result.
    OutputTooSmall { needed: usize, got: usize },
    /// A stream that was already finalized.
    Finalized,
    /// A length whose result does not fit in 64 bits, or a v2 stream longer
    /// than 2^32 chunks.
    LengthOverflow,
    /// A v2 chunk size exponent outside 16..=24.
    ChunkLog2(u32),
    /// A fixed-length parameter (salt, nonce prefix) of the wrong length.
    ParamLength {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// A v2 chunk index at or past the chunk count of the file.
    ChunkIndex { index: u64, chunks: u64 },
    /// The operating system's random generator failed.
    Random,
    /// Any decryption failure; see the type-level comment.
    Decryption,
    /// A segment size that is not a power of two from 2^16 to 2^24.
    SegmentSize(u64),
    /// A resume offset that is not a segment boundary within the ciphertext.
    SegmentStart(u64),
    /// A segment list whose length is not 32 bytes per segment.
    SegmentList,
    /// Segment `index` does not hash to its entry in the segment list: its
    /// bytes differ, it is cut short, or (`index` = the segment count) bytes
    /// follow the last segment.
    Segment { index: u64 },
}

/// The single message every decryption failure carries.
pub const DECRYPTION_FAILED: &str = "decryption failed";

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KeyLength(n) => write!(f, "key must be 32 bytes, got {n}"),
            Self::IvLength(n) => write!(f, "IV must be 16 bytes, got {n}"),
            Self::Unaligned(n) => {
                write!(
                    f,
                    "ciphertext range must be a multiple of 16 bytes, got {n}"
                )
            }
            Self::OutputTooSmall { needed, got } => {
                write!(f, "output buffer too small: need {needed} bytes, got {got}")
            }
            Self::Finalized => f.write_str("stream already finalized"),
            Self::LengthOverflow => f.write_str("length out of range"),
            Self::ChunkLog2(s) => write!(f, "chunk_log2 must be 16 to 24, got {s}"),
            Self::ParamLength {
                what,
                expected,
                got,
            } => write!(f, "{what} must be {expected} bytes, got {got}"),
            Self::ChunkIndex { index, chunks } => {
                write!(f, "chunk index {index} out of range for {chunks} chunks")
            }
            Self::Random => f.write_str("the OS random generator failed"),
            Self::Decryption => f.write_str(DECRYPTION_FAILED),
            Self::SegmentSize(s) => write!(
                f,
                "segment size must be a power of two from 65536 to 16777216, got {s}"
            ),
            Self::SegmentStart(start) => {
                write!(
                    f,
                    "start {start} is not a segment boundary of the ciphertext"
                )
            }
            Self::SegmentList => f.write_str("the segment list has the wrong length"),
            Self::Segment { index } => {
                write!(f, "segment {index} does not match the segment list")
            }
        }
    }
}

impl std::error::Error for CoreError {}
