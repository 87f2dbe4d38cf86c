//! Bindings of format v1 and of the resource split rule.

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::buffers::{maybe_detach, read_view};
use crate::error::CoreError;
use crate::format::{self, v1};

#[pyfunction]
#[pyo3(signature = (key, plaintext, iv=None))]
fn encrypt_v1<'py>(
    py: Python<'py>,
    key: &[u8],
    plaintext: PyBuffer<u8>,
    iv: Option<&[u8]>,
) -> PyResult<Bound<'py, PyBytes>> {
    let input = read_view(&plaintext)?;
    let out = maybe_detach(py, input.len(), || v1::encrypt_v1(key, input, iv))?;
    Ok(PyBytes::new(py, &out))
}

#[pyfunction]
fn decrypt_v1<'py>(
    py: Python<'py>,
    key: &[u8],
    data: PyBuffer<u8>,
) -> PyResult<Bound<'py, PyBytes>> {
    let input = read_view(&data)?;
    let out = maybe_detach(py, input.len(), || v1::decrypt_v1(key, input))?;
    Ok(PyBytes::new(py, &out))
}

#[pyfunction]
fn v1_padded_length(plaintext_length: u64) -> PyResult<u64> {
    Ok(v1::padded_length(plaintext_length)?)
}

/// Any length a file can have: a negative one is bad input like any other.
fn file_length(length: i128) -> Result<u64, CoreError> {
    u64::try_from(length).map_err(|_| CoreError::Decryption)
}

#[pyfunction]
fn v1_plaintext_length(
    key: &[u8],
    ciphertext_length: i128,
    last_two_blocks: &[u8],
) -> PyResult<u64> {
    let n = file_length(ciphertext_length)?;
    Ok(v1::plaintext_length(key, n, last_two_blocks)?)
}

#[pyfunction]
fn small_part_length(ciphertext_length: u64) -> u64 {
    format::small_part_length(ciphertext_length)
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("MAX_SMALL_PART", format::MAX_SMALL_PART)?;
    m.add("FULL_SMALL_PART_FROM", format::FULL_SMALL_PART_FROM)?;
    m.add_function(wrap_pyfunction!(encrypt_v1, m)?)?;
    m.add_function(wrap_pyfunction!(decrypt_v1, m)?)?;
    m.add_function(wrap_pyfunction!(v1_padded_length, m)?)?;
    m.add_function(wrap_pyfunction!(v1_plaintext_length, m)?)?;
    m.add_function(wrap_pyfunction!(small_part_length, m)?)?;
    Ok(())
}
