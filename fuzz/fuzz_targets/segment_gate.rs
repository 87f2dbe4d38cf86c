//! Makes a ciphertext from the input (up to 4 segments of 2^16 bytes, often
//! right at a boundary), changes it as the input picks (a flipped bit, a cut,
//! extra bytes, or nothing), and feeds it through a SegmentGate in pieces of
//! the input's choosing, from the start or resumed at a segment boundary.
//! After every call, what the gate has released is a prefix of the true
//! ciphertext (from `start`) that ends on a segment boundary or at its end;
//! the unchanged input passes whole, and a changed one never finishes cleanly.
#![no_main]

use edgeloader_core::segment::{segment_list, SegmentGate};
use libfuzzer_sys::fuzz_target;

const S: usize = 1 << 16;

fn word(input: &[u8], at: usize) -> usize {
    let mut bytes = [0u8; 4];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = input.get(at + i).copied().unwrap_or(0);
    }
    u32::from_le_bytes(bytes) as usize
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 16 {
        return;
    }
    let len = match input[0] % 4 {
        0 => word(input, 1) % (4 * S + 2),
        k => (usize::from(k) * S + word(input, 1) % 5).saturating_sub(2),
    };
    let fill = &input[16..];
    let ct: Vec<u8> = if fill.is_empty() {
        vec![0; len]
    } else {
        fill.iter().copied().cycle().take(len).collect()
    };
    let list = segment_list(&ct, S as u64).unwrap();
    let start = usize::from(input[5]) % (len / S + 1) * S;
    let mut data = ct[start..].to_vec();
    let at = word(input, 6);
    match input[10] % 4 {
        0 if !data.is_empty() => {
            let i = at % data.len();
            data[i] ^= 1 << (input[11] % 8);
        }
        1 => data.truncate(at % (data.len() + 1)),
        2 => data.extend_from_slice(&input[..1 + usize::from(input[11]) % 8]),
        _ => {}
    }
    let changed = data != ct[start..];

    let mut gate = SegmentGate::new(S as u64, len as u64, &list, start as u64).unwrap();
    let mut end = start; // the end of what has been released
    let mut result = Ok(());
    let mut rest = &data[..];
    let mut x = word(input, 12) as u64 | 1;
    while !rest.is_empty() && result.is_ok() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let r = (x >> 33) as usize;
        let step = 1 + if input[4] & 1 == 0 {
            r % (2 * S)
        } else {
            r % 4096
        };
        let (piece, tail) = rest.split_at(step.min(rest.len()));
        rest = tail;
        match gate.update(piece) {
            Ok(out) => {
                assert_eq!(out, ct[end..end + out.len()]);
                end += out.len();
            }
            Err(err) => result = Err(err),
        }
        assert!(end % S == 0 || end == len);
        assert_eq!(gate.position(), end as u64);
    }
    if result.is_ok() {
        result = gate.finish();
    }
    if changed {
        assert!(result.is_err());
    } else {
        assert_eq!((result, end), (Ok(()), len));
    }
});
