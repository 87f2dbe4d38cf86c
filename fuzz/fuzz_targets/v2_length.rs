//! The v2 length rule and chunk ranges against a plain reading of §4.2 in
//! 128-bit arithmetic, for any header and any file length; and format
//! detection on any prefix.
#![no_main]

use edgeloader_core::format::{self, v2, Format};
use edgeloader_core::CoreError;
use libfuzzer_sys::fuzz_target;

/// (k, plaintext length) by the text, or None.
fn by_the_text(s: u32, file_len: u128) -> Option<(u128, u128)> {
    if file_len < 48 {
        return None;
    }
    let n = file_len - 32;
    let f = (1u128 << s) + 16;
    let k = n.div_ceil(f);
    let r = n - (k - 1) * f;
    if r < 16 || (k > 1 && r < 17) || k > 1 << 32 {
        return None;
    }
    Some((k, n - 16 * k))
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 32 + 8 + 8 + 1 {
        return;
    }
    let (header, rest) = input.split_at(32);
    let file_len = u64::from_le_bytes(rest[..8].try_into().unwrap());
    let index = u64::from_le_bytes(rest[8..16].try_into().unwrap());

    match format::detect(header) {
        Ok(Format::V1) => assert!(!header.starts_with(b"ELD2")),
        Ok(Format::V2) => assert!(header.starts_with(b"ELD2") && header[4] == 2),
        Err(err) => {
            assert_eq!(err, CoreError::Decryption);
            assert!(header.starts_with(b"ELD2") && header[4] != 2);
        }
    }

    // Make most headers valid, so the length rule is what gets explored.
    let mut fixed = [0u8; 32];
    fixed.copy_from_slice(header);
    if rest[16] & 1 == 0 {
        let log2 = 16 + fixed[6] % 9;
        fixed[..8].copy_from_slice(&[b'E', b'L', b'D', b'2', 2, 1, log2, 0]);
        fixed[31] = 0;
    }
    let Ok(parsed) = v2::Header::parse(&fixed) else {
        return;
    };
    let s = parsed.chunk_log2();
    // Lengths near a chunk boundary are the interesting ones.
    let f = (1u64 << s) + 16;
    let near = 32u64
        .saturating_add((file_len >> 8).wrapping_rem(1 << 33).saturating_mul(f))
        .saturating_add(file_len & 0xff)
        .saturating_sub(8);
    for len in [file_len, near] {
        let layout = v2::Layout::new(&parsed, len);
        match (by_the_text(s, u128::from(len)), layout) {
            (None, Err(err)) => assert_eq!(err, CoreError::Decryption),
            (Some((k, pt)), Ok(layout)) => {
                assert_eq!(
                    (u128::from(layout.chunks), u128::from(layout.plaintext_len)),
                    (k, pt)
                );
                let i = index % layout.chunks;
                let (start, end, is_final) = layout.chunk_range(i).unwrap();
                assert_eq!(u128::from(start), 32 + u128::from(i) * u128::from(f));
                assert_eq!(is_final, i == layout.chunks - 1);
                if is_final {
                    assert_eq!(end, len);
                    assert!(end - start >= 16 + u64::from(i > 0) && end - start <= f);
                } else {
                    assert_eq!(end - start, f);
                }
                assert!(layout.chunk_range(layout.chunks).is_err());
            }
            (expected, got) => panic!("len {len}: text says {expected:?}, core says {got:?}"),
        }
    }
});
