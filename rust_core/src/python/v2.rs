//! Bindings of format v2 and of format detection.

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::buffers::{gate_update, maybe_detach, read_view, stream_update, stream_update_into};
use crate::error::CoreError;
use crate::format::v2::{DecryptorV2 as CoreDecryptor, EncryptorV2 as CoreEncryptor};
use crate::format::{self, v2};

/// Streaming format v2 decryption of a file read from its start.
#[pyclass(module = "edgeloader._core")]
struct DecryptorV2(CoreDecryptor);

#[pymethods]
impl DecryptorV2 {
    #[new]
    fn new(key: &[u8]) -> PyResult<Self> {
        Ok(Self(CoreDecryptor::new(key)?))
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
            CoreDecryptor::output_len_for,
            CoreDecryptor::update_into,
        )
    }

    fn update_into(
        &mut self,
        py: Python<'_>,
        data: PyBuffer<u8>,
        out: PyBuffer<u8>,
    ) -> PyResult<usize> {
        stream_update_into(py, &mut self.0, &data, &out, CoreDecryptor::update_into)
    }

    fn output_length(&self, input_length: usize) -> usize {
        self.0.output_len(input_length)
    }

    fn finalize<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let chunk = self.0.header().map_or(0, v2::Header::chunk_size);
        let state = &mut self.0;
        let out = maybe_detach(py, chunk, || state.finalize())?;
        Ok(PyBytes::new(py, &out))
    }
}

/// Passes a stored v2 file through, releasing each chunk once its tag verifies.
#[pyclass(module = "edgeloader._core")]
struct ChunkGate(v2::ChunkGate);

#[pymethods]
impl ChunkGate {
    #[new]
    #[pyo3(signature = (key, header, file_length, start=0))]
    fn new(key: &[u8], header: &[u8], file_length: i128, start: i128) -> PyResult<Self> {
        let header = v2::Header::parse(header)?;
        let start = u64::try_from(start).map_err(|_| CoreError::Decryption)?;
        Ok(Self(v2::ChunkGate::new(
            key,
            &header,
            self::file_length(file_length)?,
            start,
        )?))
    }

    fn update<'py>(
        &mut self,
        py: Python<'py>,
        data: PyBuffer<u8>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        gate_update(
            py,
            &mut self.0,
            &data,
            v2::ChunkGate::output_len,
            v2::ChunkGate::update_into,
        )
    }

    fn finish(&mut self) -> PyResult<()> {
        Ok(self.0.finish()?)
    }
}

/// Streaming format v2 encryption; the header is the start of the output.
#[pyclass(module = "edgeloader._core")]
struct EncryptorV2(CoreEncryptor);

#[pymethods]
impl EncryptorV2 {
    #[new]
    #[pyo3(signature = (key, chunk_log2=16, salt=None, nonce_prefix=None))]
    fn new(
        key: &[u8],
        chunk_log2: u32,
        salt: Option<&[u8]>,
        nonce_prefix: Option<&[u8]>,
    ) -> PyResult<Self> {
        Ok(Self(CoreEncryptor::new(
            key,
            Some(chunk_log2),
            salt,
            nonce_prefix,
        )?))
    }

    #[getter]
    fn header<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.0.header().as_bytes())
    }

    #[getter]
    fn chunk_size(&self) -> usize {
        self.0.header().chunk_size()
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
            CoreEncryptor::update_into,
        )
    }

    fn update_into(
        &mut self,
        py: Python<'_>,
        data: PyBuffer<u8>,
        out: PyBuffer<u8>,
    ) -> PyResult<usize> {
        stream_update_into(py, &mut self.0, &data, &out, CoreEncryptor::update_into)
    }

    fn output_length(&self, input_length: usize) -> usize {
        self.0.output_len(input_length)
    }

    fn finalize<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let chunk = self.0.header().chunk_size();
        let state = &mut self.0;
        let out = maybe_detach(py, chunk, || state.finalize())?;
        Ok(PyBytes::new(py, &out))
    }
}

#[pyfunction]
#[pyo3(signature = (key, plaintext, chunk_log2=16, salt=None, nonce_prefix=None))]
fn encrypt_v2<'py>(
    py: Python<'py>,
    key: &[u8],
    plaintext: PyBuffer<u8>,
    chunk_log2: u32,
    salt: Option<&[u8]>,
    nonce_prefix: Option<&[u8]>,
) -> PyResult<Bound<'py, PyBytes>> {
    let input = read_view(&plaintext)?;
    let out = maybe_detach(py, input.len(), || {
        v2::encrypt_v2(key, input, Some(chunk_log2), salt, nonce_prefix)
    })?;
    Ok(PyBytes::new(py, &out))
}

#[pyfunction]
fn decrypt_v2<'py>(
    py: Python<'py>,
    key: &[u8],
    data: PyBuffer<u8>,
) -> PyResult<Bound<'py, PyBytes>> {
    let input = read_view(&data)?;
    let out = maybe_detach(py, input.len(), || v2::decrypt_v2(key, input))?;
    Ok(PyBytes::new(py, &out))
}

/// A file length from Python: a negative one is bad input like any other.
fn file_length(length: i128) -> Result<u64, CoreError> {
    u64::try_from(length).map_err(|_| CoreError::Decryption)
}

fn layout(header: &[u8], file_length_: i128) -> Result<v2::Layout, CoreError> {
    v2::Layout::new(&v2::Header::parse(header)?, file_length(file_length_)?)
}

#[pyfunction]
fn v2_plaintext_length(header: &[u8], file_length: i128) -> PyResult<u64> {
    Ok(layout(header, file_length)?.plaintext_len)
}

#[pyfunction]
fn v2_stored_chunk_size(header: &[u8]) -> PyResult<usize> {
    Ok(v2::Header::parse(header)?.stored_chunk_size())
}

#[pyfunction]
fn v2_chunk_count(header: &[u8], file_length: i128) -> PyResult<u64> {
    Ok(layout(header, file_length)?.chunks)
}

#[pyfunction]
fn v2_chunk_range(header: &[u8], file_length: i128, index: u64) -> PyResult<(u64, u64, bool)> {
    Ok(layout(header, file_length)?.chunk_range(index)?)
}

#[pyfunction]
fn v2_open_chunk<'py>(
    py: Python<'py>,
    key: &[u8],
    header: &[u8],
    index: u64,
    is_final: bool,
    data: PyBuffer<u8>,
) -> PyResult<Bound<'py, PyBytes>> {
    let input = read_view(&data)?;
    let out = maybe_detach(py, input.len(), || {
        v2::open_chunk(key, header, index, is_final, input)
    })?;
    Ok(PyBytes::new(py, &out))
}

#[pyfunction]
fn detect_format(prefix: &[u8]) -> PyResult<u8> {
    Ok(format::detect(prefix)? as u8)
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("V2_MAGIC", PyBytes::new(m.py(), &v2::MAGIC))?;
    m.add("V2_HEADER_SIZE", v2::HEADER_LEN)?;
    m.add("V2_TAG_SIZE", v2::TAG_LEN)?;
    m.add("V2_DEFAULT_CHUNK_LOG2", v2::DEFAULT_CHUNK_LOG2)?;
    m.add("V2_MIN_CHUNK_LOG2", v2::MIN_CHUNK_LOG2)?;
    m.add("V2_MAX_CHUNK_LOG2", v2::MAX_CHUNK_LOG2)?;
    m.add_class::<DecryptorV2>()?;
    m.add_class::<EncryptorV2>()?;
    m.add_class::<ChunkGate>()?;
    m.add_function(wrap_pyfunction!(encrypt_v2, m)?)?;
    m.add_function(wrap_pyfunction!(decrypt_v2, m)?)?;
    m.add_function(wrap_pyfunction!(v2_plaintext_length, m)?)?;
    m.add_function(wrap_pyfunction!(v2_stored_chunk_size, m)?)?;
    m.add_function(wrap_pyfunction!(v2_chunk_count, m)?)?;
    m.add_function(wrap_pyfunction!(v2_chunk_range, m)?)?;
    m.add_function(wrap_pyfunction!(v2_open_chunk, m)?)?;
    m.add_function(wrap_pyfunction!(detect_format, m)?)?;
    Ok(())
}

// The signatures above spell the default chunk size as a literal so that it
// shows in `__text_signature__`; keep it equal to the core's.
const _: () = assert!(v2::DEFAULT_CHUNK_LOG2 == 16);
