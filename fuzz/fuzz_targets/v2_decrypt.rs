//! Arbitrary bytes into the v2 readers: no panic, and the one-shot reader,
//! the streaming reader under any chunking and the random-access reader
//! (length rule + chunks opened alone) agree on every input.
#![no_main]

use edgeloader_core::format::v2::{self, DecryptorV2, Header, Layout};
use edgeloader_core::CoreError;
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [7; 32];

fn streaming(data: &[u8], steps: &[u8]) -> Result<Vec<u8>, CoreError> {
    let mut dec = DecryptorV2::new(&KEY)?;
    let mut out = Vec::new();
    let mut rest = data;
    let mut steps = steps.iter().cycle();
    while !rest.is_empty() {
        let step = usize::from(*steps.next().unwrap_or(&255)) * 97 + 1;
        let (piece, tail) = rest.split_at(step.min(rest.len()));
        let bound = dec.output_len(piece.len());
        let exact = dec.output_len_for(piece);
        let got = dec.update(piece)?;
        assert_eq!(got.len(), exact);
        assert!(exact <= bound);
        out.extend(got);
        rest = tail;
    }
    out.extend(dec.finalize()?);
    Ok(out)
}

fn random_access(data: &[u8]) -> Result<Vec<u8>, CoreError> {
    let header = data.get(..32).ok_or(CoreError::Decryption)?;
    let layout = Layout::new(&Header::parse(header)?, data.len() as u64)?;
    let mut out = Vec::new();
    for i in 0..layout.chunks {
        let (start, end, is_final) = layout.chunk_range(i)?;
        out.extend(v2::open_chunk(
            &KEY,
            header,
            i,
            is_final,
            &data[start as usize..end as usize],
        )?);
    }
    assert_eq!(out.len() as u64, layout.plaintext_len);
    Ok(out)
}

fuzz_target!(|input: &[u8]| {
    // The first byte sizes the chunking table; the rest is the file.
    let Some((&n, rest)) = input.split_first() else {
        return;
    };
    let (steps, data) = rest.split_at(usize::from(n % 8).min(rest.len()));
    // Most inputs get a header whose fixed fields are valid, so that the
    // length rule and the chunk readers are what gets explored.
    let mut data = data.to_vec();
    if n & 0x80 == 0 && data.len() >= 32 {
        let log2 = 16 + data[6] % 9;
        data[..8].copy_from_slice(&[b'E', b'L', b'D', b'2', 2, 1, log2, 0]);
        data[31] = 0;
    }
    let data = &data[..];
    let one_shot = v2::decrypt_v2(&KEY, data);
    assert_eq!(streaming(data, steps), one_shot);
    assert_eq!(random_access(data), one_shot);
    if let Err(err) = one_shot {
        assert_eq!(err, CoreError::Decryption);
    }
});
