//! Arbitrary bytes into the v1 readers: no panic; the one-shot reader, the
//! streaming CBC decryptor under any chunking and the length from the last
//! two blocks agree; whatever reads back re-encrypts to the same bytes.
#![no_main]

use edgeloader_core::cbc::{self, CbcDecryptor};
use edgeloader_core::format::v1;
use edgeloader_core::CoreError;
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [5; 32];

fn streaming(data: &[u8], step: usize) -> Result<Vec<u8>, CoreError> {
    if data.len() < 16 {
        return Err(CoreError::Decryption);
    }
    let (iv, body) = data.split_at(16);
    let mut dec = CbcDecryptor::new(&KEY, iv)?;
    let mut out = Vec::new();
    for piece in body.chunks(step) {
        out.extend(dec.update(piece)?);
    }
    out.extend(dec.finalize()?);
    Ok(out)
}

fuzz_target!(|input: &[u8]| {
    let Some((&step, data)) = input.split_first() else {
        return;
    };
    let one_shot = v1::decrypt_v1(&KEY, data);
    let streamed = streaming(data, usize::from(step) + 1);
    match &one_shot {
        Ok(plaintext) => {
            assert_eq!(streamed.as_ref(), Ok(plaintext));
            let tail = &data[data.len() - 32..];
            assert_eq!(
                v1::plaintext_length(&KEY, data.len() as u64, tail),
                Ok(plaintext.len() as u64)
            );
            let again = v1::encrypt_v1(&KEY, plaintext, Some(&data[..16])).unwrap();
            assert_eq!(again, data);
            // Any aligned range decrypts alone to the same bytes.
            let blocks = (data.len() - 16) / 16;
            let start = usize::from(step) % blocks;
            let got = cbc::decrypt_range(
                &KEY,
                &data[start * 16..start * 16 + 16],
                &data[16 + start * 16..],
            )
            .unwrap();
            let n = plaintext.len().saturating_sub(start * 16);
            assert_eq!(&got[..n], &plaintext[start * 16..]);
        }
        Err(err) => {
            assert_eq!(*err, CoreError::Decryption);
            assert_eq!(streamed, Err(CoreError::Decryption));
        }
    }
});
