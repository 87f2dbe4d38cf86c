//! Bindings of the streaming AES-256-CBC cipher (format v1's cipher).

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::buffers::{maybe_detach, read_view, stream_update, stream_update_into};
use crate::cbc::{self, CbcDecryptor, CbcEncryptor, BLOCK};
use crate::error::CoreError;
use crate::format::v1;

/// Streaming AES-256-CBC decryption with PKCS7 unpadding.
#[pyclass(module = "edgeloader._core")]
struct Decryptor(CbcDecryptor);

#[pymethods]
impl Decryptor {
    #[new]
    fn new(key: &[u8], iv: &[u8]) -> PyResult<Self> {
        Ok(Self(CbcDecryptor::new(key, iv)?))
    }

    fn update<'py>(
        &mut self,
        py: Python<'py>,
        data: PyBuffer<u8>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        stream_update(
            py,
            &mut self.0,
            &data,
            |s, input| s.output_len(input.len()),
            CbcDecryptor::update_into,
        )
    }

    fn update_into(
        &mut self,
        py: Python<'_>,
        data: PyBuffer<u8>,
        out: PyBuffer<u8>,
    ) -> PyResult<usize> {
        stream_update_into(py, &mut self.0, &data, &out, CbcDecryptor::update_into)
    }

    fn output_length(&self, input_length: usize) -> usize {
        self.0.output_len(input_length)
    }

    fn finalize<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &self.0.finalize()?))
    }
}

/// Streaming AES-256-CBC encryption with PKCS7 padding.
#[pyclass(module = "edgeloader._core")]
struct Encryptor {
    inner: CbcEncryptor,
    iv: [u8; BLOCK],
}

#[pymethods]
impl Encryptor {
    #[new]
    #[pyo3(signature = (key, iv=None))]
    fn new(key: &[u8], iv: Option<&[u8]>) -> PyResult<Self> {
        let iv: [u8; BLOCK] = match iv {
            Some(iv) => iv.try_into().map_err(|_| CoreError::IvLength(iv.len()))?,
            // A v1 stream starts with its IV: never one that reads as v2.
            None => v1::random_iv()?,
        };
        Ok(Self {
            inner: CbcEncryptor::new(key, &iv)?,
            iv,
        })
    }

    #[getter]
    fn iv<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.iv)
    }

    fn update<'py>(
        &mut self,
        py: Python<'py>,
        data: PyBuffer<u8>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        stream_update(
            py,
            &mut self.inner,
            &data,
            |s, input| s.output_len(input.len()),
            CbcEncryptor::update_into,
        )
    }

    fn update_into(
        &mut self,
        py: Python<'_>,
        data: PyBuffer<u8>,
        out: PyBuffer<u8>,
    ) -> PyResult<usize> {
        stream_update_into(py, &mut self.inner, &data, &out, CbcEncryptor::update_into)
    }

    fn output_length(&self, input_length: usize) -> usize {
        self.inner.output_len(input_length)
    }

    fn finalize<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &self.inner.finalize()?))
    }
}

/// Raw CBC decryption of a block-aligned range; `prev_block` is the
/// ciphertext block before it (the IV for the first range).
#[pyfunction]
fn decrypt_range<'py>(
    py: Python<'py>,
    key: &[u8],
    prev_block: &[u8],
    ciphertext_slice: PyBuffer<u8>,
) -> PyResult<Bound<'py, PyBytes>> {
    let input = read_view(&ciphertext_slice)?;
    let out = maybe_detach(py, input.len(), || {
        cbc::decrypt_range(key, prev_block, input)
    })?;
    Ok(PyBytes::new(py, &out))
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("BLOCK_SIZE", BLOCK)?;
    m.add_class::<Decryptor>()?;
    m.add_class::<Encryptor>()?;
    m.add_function(wrap_pyfunction!(decrypt_range, m)?)?;
    Ok(())
}
