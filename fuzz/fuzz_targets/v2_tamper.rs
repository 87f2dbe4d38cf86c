//! Writes a real v2 file from the input (any length, chunk size 2^16 or
//! 2^17), applies one change the input picks, and reads it back: the
//! unchanged file reads back exactly, and every changed one fails with the
//! one error, in the one-shot and the streaming reader alike.
#![no_main]

use edgeloader_core::format::v2::{self, DecryptorV2};
use edgeloader_core::CoreError;
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [9; 32];

fn streaming(data: &[u8], step: usize) -> Result<Vec<u8>, CoreError> {
    let mut dec = DecryptorV2::new(&KEY)?;
    let mut out = Vec::new();
    for piece in data.chunks(step.max(1)) {
        out.extend(dec.update(piece)?);
    }
    out.extend(dec.finalize()?);
    Ok(out)
}

fn word(input: &[u8], at: usize) -> usize {
    let mut bytes = [0u8; 4];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = input.get(at + i).copied().unwrap_or(0);
    }
    u32::from_le_bytes(bytes) as usize
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 12 {
        return;
    }
    let chunk_log2 = 16 + u32::from(input[0] & 1);
    let size = 1usize << chunk_log2;
    // Lengths up to 3 chunks, often right at a chunk boundary.
    let len = match input[1] % 4 {
        0 => word(input, 2) % (3 * size + 2),
        k => (usize::from(k) * size + (word(input, 2) % 5)).saturating_sub(2),
    };
    let fill = &input[12..];
    let plaintext: Vec<u8> = if fill.is_empty() {
        vec![0; len]
    } else {
        fill.iter().copied().cycle().take(len).collect()
    };
    let file = v2::encrypt_v2(&KEY, &plaintext, Some(chunk_log2), None, None).unwrap();
    let stored = size + 16;
    let chunks = (file.len() - 32).div_ceil(stored);
    let at = word(input, 6);
    let mut bad = file.clone();
    match input[10] % 6 {
        0 => bad[at % file.len()] ^= 1 << (input[11] % 8),
        1 => bad.truncate(at % file.len()),
        2 => bad.extend_from_slice(&input[..1 + usize::from(input[11]) % 8]),
        3 if chunks > 1 => {
            // Swap two chunks of full size.
            let (a, b) = (at % (chunks - 1), (at / 7) % (chunks - 1));
            if a != b {
                let (a, b) = (a.min(b), a.max(b));
                let ca = file[32 + a * stored..32 + (a + 1) * stored].to_vec();
                let cb = file[32 + b * stored..32 + (b + 1) * stored].to_vec();
                bad[32 + a * stored..32 + (a + 1) * stored].copy_from_slice(&cb);
                bad[32 + b * stored..32 + (b + 1) * stored].copy_from_slice(&ca);
            }
        }
        4 if chunks > 1 => {
            // Drop one chunk.
            let i = at % chunks;
            let end = (32 + (i + 1) * stored).min(file.len());
            bad.drain(32 + i * stored..end);
        }
        _ => {}
    }
    let step = 1 + word(input, 2) % (2 * stored);
    if bad == file {
        assert_eq!(v2::decrypt_v2(&KEY, &bad).as_deref(), Ok(&plaintext[..]));
        assert_eq!(streaming(&bad, step).as_deref(), Ok(&plaintext[..]));
    } else {
        assert_eq!(v2::decrypt_v2(&KEY, &bad), Err(CoreError::Decryption));
        assert_eq!(streaming(&bad, step), Err(CoreError::Decryption));
    }
});
