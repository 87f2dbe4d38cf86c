//! The segment list of a release (docs/security.md, "The signed release
//! manifest"): the published ciphertext cut into segments, each hashed, so
//! that every piece is checked against the signed manifest before anything
//! made from it leaves the loader.
//!
//! ```text
//! S     = a power of two, 2^16 ≤ S ≤ 2^24 (publishers use 2^20)
//! n     = ⌈size / S⌉
//! seg_i = ct[i·S .. min((i+1)·S, size)]
//! list  = SHA-256(seg_0) ‖ … ‖ SHA-256(seg_{n−1})      (32·n bytes)
//! ```

use sha2::{Digest, Sha256};

use crate::error::CoreError;

pub const MIN_SEGMENT_LOG2: u32 = 16;
pub const MAX_SEGMENT_LOG2: u32 = 24;
/// What publishers use unless told otherwise: 1 MiB.
pub const DEFAULT_SEGMENT: u64 = 1 << 20;
/// One entry of the list: a SHA-256.
pub const ENTRY_LEN: usize = 32;

/// Accepts a segment size that is a power of two from 2^16 to 2^24.
pub fn check_segment(segment: u64) -> Result<(), CoreError> {
    let range = 1u64 << MIN_SEGMENT_LOG2..=1u64 << MAX_SEGMENT_LOG2;
    if segment.is_power_of_two() && range.contains(&segment) {
        Ok(())
    } else {
        Err(CoreError::SegmentSize(segment))
    }
}

/// `n = ⌈size / segment⌉`, for a `segment` that [`check_segment`] accepts.
pub fn segment_count(size: u64, segment: u64) -> u64 {
    size.div_ceil(segment)
}

/// Builds the segment list of a ciphertext fed in pieces of any size.
#[derive(Clone)]
pub struct SegmentHasher {
    segment: usize,
    hasher: Sha256,
    /// Bytes of the current segment hashed so far: always less than `segment`.
    filled: usize,
    list: Vec<u8>,
}

impl SegmentHasher {
    pub fn new(segment: u64) -> Result<Self, CoreError> {
        check_segment(segment)?;
        Ok(Self {
            segment: segment as usize,
            hasher: Sha256::new(),
            filled: 0,
            list: Vec::new(),
        })
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let (part, rest) = data.split_at((self.segment - self.filled).min(data.len()));
            self.hasher.update(part);
            self.filled += part.len();
            if self.filled == self.segment {
                self.list.extend_from_slice(&self.hasher.finalize_reset());
                self.filled = 0;
            }
            data = rest;
        }
    }

    /// The list: one entry per segment, the last one possibly short.
    pub fn finish(mut self) -> Vec<u8> {
        if self.filled > 0 {
            self.list.extend_from_slice(&self.hasher.finalize());
        }
        self.list
    }
}

/// The segment list of a whole ciphertext.
pub fn segment_list(ct: &[u8], segment: u64) -> Result<Vec<u8>, CoreError> {
    let mut hasher = SegmentHasher::new(segment)?;
    hasher
        .list
        .reserve_exact(ct.len().div_ceil(hasher.segment) * ENTRY_LEN);
    hasher.update(ct);
    Ok(hasher.finish())
}

/// Passes ciphertext through, releasing each segment only once it hashes to
/// its entry in the list: no byte of a segment leaves before the whole
/// segment has been checked.
///
/// Bytes are hashed as they arrive and held until their segment is
/// complete, so at most one segment is held; a segment that arrives whole in
/// one `update` is hashed and released straight from the input.
///
/// A segment that fails stops the gate for good. The `update` that finds it
/// still returns the segments it verified before it (so the caller can pass
/// on everything that is good); the error is raised by that call when it has
/// nothing to return, and by every later call.
pub struct SegmentGate {
    segment: usize,
    size: u64,
    list: Vec<u8>,
    /// The segment being received; every one before it has been released.
    index: u64,
    hasher: Sha256,
    /// The received bytes of segment `index`, fewer than its length.
    held: Vec<u8>,
    /// The segment that failed.
    failed: Option<u64>,
}

impl SegmentGate {
    /// A gate for a ciphertext of `size` bytes whose input begins at offset
    /// `start`: 0, or a segment boundary when resuming a partial read.
    pub fn new(segment: u64, size: u64, list: &[u8], start: u64) -> Result<Self, CoreError> {
        check_segment(segment)?;
        if !start.is_multiple_of(segment) || start > size {
            return Err(CoreError::SegmentStart(start));
        }
        if list.len() as u64 != segment_count(size, segment) * ENTRY_LEN as u64 {
            return Err(CoreError::SegmentList);
        }
        Ok(Self {
            segment: segment as usize,
            size,
            list: list.to_vec(),
            index: start / segment,
            hasher: Sha256::new(),
            held: Vec::new(),
            failed: None,
        })
    }

    fn count(&self) -> u64 {
        segment_count(self.size, self.segment as u64)
    }

    /// Where segment `index` starts (`size` for the end).
    fn offset(&self, index: u64) -> u64 {
        index.saturating_mul(self.segment as u64).min(self.size)
    }

    /// The ciphertext offset of the end of what has been released.
    pub fn position(&self) -> u64 {
        self.offset(self.index)
    }

    /// Bytes received and held, not yet released.
    pub fn pending(&self) -> usize {
        self.held.len()
    }

    /// How many bytes `update` releases for `input_len` more bytes: whole
    /// segments, or everything up to `size`. Exact unless a segment fails,
    /// when fewer are released.
    pub fn output_len(&self, input_len: usize) -> usize {
        let received = self.position() + self.held.len() as u64;
        let end = received.saturating_add(input_len as u64).min(self.size);
        let end = if end == self.size {
            end
        } else {
            end - end % self.segment as u64
        };
        (end - self.position()) as usize
    }

    fn fail(&mut self, index: u64) -> CoreError {
        self.failed = Some(index);
        self.held = Vec::new();
        CoreError::Segment { index }
    }

    /// Takes the next bytes of the ciphertext and writes those of every
    /// segment they complete, once verified, into `out` (at least
    /// `output_len(input.len())` bytes); returns how many.
    pub fn update_into(&mut self, mut input: &[u8], out: &mut [u8]) -> Result<usize, CoreError> {
        if let Some(index) = self.failed {
            return Err(CoreError::Segment { index });
        }
        let needed = self.output_len(input.len());
        if out.len() < needed {
            return Err(CoreError::OutputTooSmall {
                needed,
                got: out.len(),
            });
        }
        let count = self.count();
        let mut written = 0;
        while !input.is_empty() {
            if self.index == count {
                // Bytes past `size`: they would start segment `count`.
                self.fail(count);
                break;
            }
            let len = (self.offset(self.index + 1) - self.position()) as usize;
            let (part, rest) = input.split_at((len - self.held.len()).min(input.len()));
            input = rest;
            self.hasher.update(part);
            if self.held.len() + part.len() < len {
                // Reserves once: later segments are never longer.
                self.held.reserve_exact(len - self.held.len());
                self.held.extend_from_slice(part);
                break;
            }
            let at = self.index as usize * ENTRY_LEN;
            if self.hasher.finalize_reset()[..] != self.list[at..at + ENTRY_LEN] {
                self.fail(self.index);
                break;
            }
            for bytes in [&self.held[..], part] {
                out[written..written + bytes.len()].copy_from_slice(bytes);
                written += bytes.len();
            }
            self.held.clear();
            self.index += 1;
        }
        debug_assert!(self.failed.is_some() || written == needed);
        match self.failed {
            Some(index) if written == 0 => Err(CoreError::Segment { index }),
            _ => Ok(written),
        }
    }

    /// `update_into` a new buffer.
    pub fn update(&mut self, input: &[u8]) -> Result<Vec<u8>, CoreError> {
        let mut out = vec![0; self.output_len(input.len())];
        let written = self.update_into(input, &mut out)?;
        out.truncate(written);
        Ok(out)
    }

    /// Succeeds only when everything up to `size` has been verified and
    /// released; an input that ended short fails at its incomplete segment.
    pub fn finish(&mut self) -> Result<(), CoreError> {
        if let Some(index) = self.failed {
            return Err(CoreError::Segment { index });
        }
        if self.index < self.count() {
            return Err(self.fail(self.index));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: usize = 1 << 16;

    /// xorshift64: split points and data, reproducibly.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }

        /// `data` cut at up to 8 random points.
        fn split<'a>(&mut self, data: &'a [u8]) -> Vec<&'a [u8]> {
            let mut cuts: Vec<usize> = (0..self.below(9))
                .map(|_| self.below(data.len() + 1))
                .collect();
            cuts.extend([0, data.len()]);
            cuts.sort_unstable();
            cuts.windows(2).map(|w| &data[w[0]..w[1]]).collect()
        }
    }

    /// The list as the text defines it, straight from sha2: hash each slice.
    fn oracle(ct: &[u8], s: usize) -> Vec<u8> {
        let mut list = Vec::new();
        for i in 0..ct.len().div_ceil(s) {
            list.extend_from_slice(&Sha256::digest(&ct[i * s..((i + 1) * s).min(ct.len())]));
        }
        list
    }

    fn gate(ct: &[u8], start: usize) -> SegmentGate {
        SegmentGate::new(S as u64, ct.len() as u64, &oracle(ct, S), start as u64).unwrap()
    }

    /// Feeds `pieces`; returns what was released and the first error.
    fn feed(gate: &mut SegmentGate, pieces: &[&[u8]]) -> (Vec<u8>, Result<(), CoreError>) {
        let mut out = Vec::new();
        for piece in pieces {
            match gate.update(piece) {
                Ok(released) => out.extend(released),
                Err(err) => return (out, Err(err)),
            }
        }
        (out, gate.finish())
    }

    #[test]
    fn the_worked_example() {
        let ct = Rng(1).bytes(2_500_000);
        let mut expected = Vec::new();
        for range in [0..1_048_576, 1_048_576..2_097_152, 2_097_152..2_500_000] {
            expected.extend_from_slice(&Sha256::digest(&ct[range]));
        }
        assert_eq!(segment_count(2_500_000, DEFAULT_SEGMENT), 3);
        let list = segment_list(&ct, DEFAULT_SEGMENT).unwrap();
        assert_eq!(list.len(), 96);
        assert_eq!(list, expected);
    }

    #[test]
    fn known_answers_around_the_boundaries() {
        let data = Rng(2).bytes(4 * S);
        for (len, n) in [(0, 0), (1, 1), (S - 1, 1), (S, 1), (S + 1, 2), (2 * S, 2)] {
            let list = segment_list(&data[..len], S as u64).unwrap();
            assert_eq!(segment_count(len as u64, S as u64), n, "len {len}");
            assert_eq!(list.len(), 32 * n as usize, "len {len}");
            assert_eq!(list, oracle(&data[..len], S), "len {len}");
        }
        // A single segment is the SHA-256 of the whole file.
        let one = segment_list(&data[..1000], S as u64).unwrap();
        assert_eq!(one[..], Sha256::digest(&data[..1000])[..]);
        // The largest segment size holds the whole test file.
        let big = 1u64 << MAX_SEGMENT_LOG2;
        assert_eq!(
            segment_list(&data, big).unwrap(),
            oracle(&data, big as usize)
        );
    }

    #[test]
    fn segment_sizes() {
        for log2 in MIN_SEGMENT_LOG2..=MAX_SEGMENT_LOG2 {
            assert_eq!(check_segment(1 << log2), Ok(()));
        }
        let min = 1u64 << MIN_SEGMENT_LOG2;
        for bad in [0, 1, min / 2, min + 1, 3 * min, 1 << 25, u64::MAX] {
            assert_eq!(check_segment(bad), Err(CoreError::SegmentSize(bad)));
            assert!(SegmentHasher::new(bad).is_err());
            assert!(segment_list(b"x", bad).is_err());
            assert!(SegmentGate::new(bad, 0, &[], 0).is_err());
        }
    }

    #[test]
    fn the_hasher_matches_for_any_split() {
        let mut rng = Rng(3);
        let ct = rng.bytes(3 * S + 123);
        for _ in 0..50 {
            let mut hasher = SegmentHasher::new(S as u64).unwrap();
            for piece in rng.split(&ct) {
                hasher.update(piece);
            }
            assert_eq!(hasher.finish(), oracle(&ct, S));
        }
    }

    #[test]
    fn the_gate_passes_a_good_file_for_any_split() {
        let mut rng = Rng(4);
        for len in [1, S - 1, S, S + 1, 2 * S, 3 * S + 7] {
            let ct = rng.bytes(len);
            assert_eq!(feed(&mut gate(&ct, 0), &[&ct]), (ct.clone(), Ok(())));
            for _ in 0..20 {
                let mut g = gate(&ct, 0);
                let (out, end) = feed(&mut g, &rng.split(&ct));
                assert_eq!((out == ct, end), (true, Ok(())), "len {len}");
                assert_eq!((g.position(), g.pending()), (len as u64, 0));
            }
        }
    }

    #[test]
    fn segments_are_held_until_complete() {
        let ct = Rng(5).bytes(2 * S + 10);
        let mut g = gate(&ct, 0);
        assert_eq!(g.update(&ct[..S - 1]).unwrap(), b"");
        assert_eq!((g.position(), g.pending()), (0, S - 1));
        // The last byte of segment 0 and the first of segment 1.
        assert_eq!(g.update(&ct[S - 1..S + 1]).unwrap(), &ct[..S]);
        assert_eq!((g.position(), g.pending()), (S as u64, 1));
        assert_eq!(g.update(&ct[S + 1..]).unwrap(), &ct[S..]);
        assert_eq!((g.position(), g.pending()), (ct.len() as u64, 0));
        assert_eq!(g.finish(), Ok(()));
    }

    #[test]
    fn a_flip_releases_only_the_segments_before_it() {
        let mut rng = Rng(6);
        let ct = rng.bytes(4 * S + 999);
        for k in 0..5 {
            for _ in 0..10 {
                let mut bad = ct.clone();
                let end = ((k + 1) * S).min(ct.len());
                bad[k * S + rng.below(end - k * S)] ^= 1 << rng.below(8);
                let mut g = gate(&ct, 0);
                let (out, end) = feed(&mut g, &rng.split(&bad));
                assert_eq!(out, &ct[..k * S]);
                assert_eq!(end, Err(CoreError::Segment { index: k as u64 }));
                assert_eq!(g.position(), (k * S) as u64);
                // The gate stays failed.
                assert_eq!(g.update(b""), Err(CoreError::Segment { index: k as u64 }));
                assert_eq!(g.finish(), Err(CoreError::Segment { index: k as u64 }));
            }
        }
    }

    #[test]
    fn a_failure_after_good_segments_is_raised_by_the_next_call() {
        let ct = Rng(7).bytes(3 * S);
        let mut bad = ct.clone();
        bad[2 * S] ^= 1;
        let mut g = gate(&ct, 0);
        assert_eq!(g.update(&bad).unwrap(), &ct[..2 * S]);
        assert_eq!(g.pending(), 0);
        assert_eq!(g.update(b"x"), Err(CoreError::Segment { index: 2 }));
    }

    #[test]
    fn truncation_fails_at_the_incomplete_segment() {
        let ct = Rng(8).bytes(3 * S + 5);
        for cut in [0, 1, S - 1, S, S + 1, 2 * S, 3 * S, 3 * S + 4] {
            let mut g = gate(&ct, 0);
            let (out, end) = feed(&mut g, &[&ct[..cut]]);
            assert_eq!(out, &ct[..cut / S * S], "cut {cut}");
            let index = (cut / S) as u64;
            assert_eq!(end, Err(CoreError::Segment { index }), "cut {cut}");
        }
    }

    #[test]
    fn bytes_past_the_end_fail_as_the_next_segment() {
        for len in [S, S + 5] {
            let ct = Rng(9).bytes(len);
            let n = len.div_ceil(S) as u64;
            let mut extended = ct.clone();
            extended.push(0);
            // In one piece: the file is released, the extra byte fails next.
            let (out, end) = feed(&mut gate(&ct, 0), &[&extended]);
            assert_eq!(
                (out, end),
                (ct.clone(), Err(CoreError::Segment { index: n }))
            );
            // After the end: at once.
            let mut g = gate(&ct, 0);
            assert_eq!(g.update(&ct).unwrap(), ct);
            assert_eq!(g.update(b"x"), Err(CoreError::Segment { index: n }));
        }
        // An empty file has no segments: any byte is one too many.
        let mut g = SegmentGate::new(S as u64, 0, &[], 0).unwrap();
        assert_eq!(g.update(b"x"), Err(CoreError::Segment { index: 0 }));
        assert_eq!(
            SegmentGate::new(S as u64, 0, &[], 0).unwrap().finish(),
            Ok(())
        );
    }

    #[test]
    fn resuming_at_a_segment_boundary() {
        let mut rng = Rng(10);
        for len in [3 * S, 3 * S + 1] {
            let ct = rng.bytes(len);
            for k in 0..=len / S {
                let start = k * S;
                let mut g = gate(&ct, start);
                assert_eq!(g.position(), start as u64);
                let (out, end) = feed(&mut g, &rng.split(&ct[start..]));
                assert_eq!((out == ct[start..], end), (true, Ok(())), "start {start}");
                // A flip after the start still fails at its own segment.
                if start < len {
                    let mut bad = ct[start..].to_vec();
                    *bad.last_mut().unwrap() ^= 1;
                    let last = (len - 1) / S;
                    let (out, end) = feed(&mut gate(&ct, start), &[&bad]);
                    assert_eq!(out, &ct[start..last * S]);
                    assert_eq!(end, Err(CoreError::Segment { index: last as u64 }));
                }
            }
        }
    }

    #[test]
    fn misuse_is_refused() {
        let ct = Rng(11).bytes(2 * S + 1);
        let list = oracle(&ct, S);
        let size = ct.len() as u64;
        let s = S as u64;
        for bad in [&list[..64], &list[..95], &[][..]] {
            assert_eq!(
                SegmentGate::new(s, size, bad, 0).err(),
                Some(CoreError::SegmentList)
            );
        }
        let mut longer = list.clone();
        longer.extend([0; 32]);
        assert_eq!(
            SegmentGate::new(s, size, &longer, 0).err(),
            Some(CoreError::SegmentList)
        );
        for start in [1, s / 2, s + 1, 3 * s, size] {
            assert_eq!(
                SegmentGate::new(s, size, &list, start).err(),
                Some(CoreError::SegmentStart(start))
            );
        }
        // Too small an output buffer is refused before anything is taken.
        let mut g = gate(&ct, 0);
        assert_eq!(g.output_len(S + 1), S);
        assert_eq!(
            g.update_into(&ct[..S + 1], &mut [0; 10]),
            Err(CoreError::OutputTooSmall { needed: S, got: 10 })
        );
        assert_eq!((g.position(), g.pending()), (0, 0));
        let mut out = vec![0; 2 * S];
        assert_eq!(g.update_into(&ct[..S + 1], &mut out), Ok(S));
        assert_eq!(out[..S], ct[..S]);
        // The end of a file that fills its last segment is a boundary.
        let even = &ct[..2 * S];
        assert!(SegmentGate::new(s, 2 * s, &oracle(even, S), 2 * s).is_ok());
    }
}
