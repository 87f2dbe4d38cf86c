//! Thin PyO3 bindings over the pure core: argument conversion, GIL release
//! and error mapping only. No crypto logic lives here.

use std::ptr::NonNull;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyType};

use crate::cipher::{self, CbcDecryptor, CbcEncryptor};
use crate::error::{CoreError, DECRYPTION_FAILED};
use crate::hash::{self, Sha256Stream};
use crate::kdf;

/// Inputs at least this large are processed with the GIL released; below it
/// the release and re-acquire would cost more than the work.
const DETACH_THRESHOLD: usize = 64 * 1024;

static DECRYPTION_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

// The one place core errors become Python exceptions. Decryption failures
// become `edgeloader.errors.DecryptionError` (defined in Python so the
// exception hierarchy stays in one module); misuse becomes ValueError.
impl From<CoreError> for PyErr {
    fn from(err: CoreError) -> PyErr {
        match err {
            CoreError::Decryption => Python::attach(|py| {
                match DECRYPTION_ERROR.import(py, "edgeloader.errors", "DecryptionError") {
                    Ok(cls) => PyErr::from_type(cls.clone(), DECRYPTION_FAILED),
                    Err(import_err) => import_err,
                }
            }),
            CoreError::Random => PyOSError::new_err(err.to_string()),
            _ => PyValueError::new_err(err.to_string()),
        }
    }
}

/// Runs `f` with the GIL released when the input is large enough to matter.
fn maybe_detach<T: Send>(py: Python<'_>, len: usize, f: impl FnOnce() -> T + Send) -> T {
    if len >= DETACH_THRESHOLD {
        py.detach(f)
    } else {
        f()
    }
}

fn contiguous(buf: &PyBuffer<u8>) -> PyResult<NonNull<[u8]>> {
    buf.as_slice_ptr()
        .ok_or_else(|| PyValueError::new_err("buffer must be C-contiguous"))
}

/// Borrows a bytes-like object's memory without copying.
///
/// SAFETY: the slice lives as long as `buf`, which holds the buffer export,
/// so the object cannot be resized or freed meanwhile. A concurrent writer in
/// another thread could change the bytes while the GIL is released; that
/// only changes the output, exactly as with `cryptography`.
fn read_view(buf: &PyBuffer<u8>) -> PyResult<&[u8]> {
    Ok(unsafe { contiguous(buf)?.as_ref() })
}

/// Borrows a writable buffer (bytearray, writable memoryview) without copying.
///
/// SAFETY: as for `read_view`; the caller must not pass the same object as
/// input and output, which `update_into` rejects by address overlap.
#[allow(clippy::mut_from_ref)]
fn write_view(buf: &PyBuffer<u8>) -> PyResult<&mut [u8]> {
    if buf.readonly() {
        return Err(PyValueError::new_err("output buffer must be writable"));
    }
    Ok(unsafe { contiguous(buf)?.as_mut() })
}

fn overlaps(a: &[u8], b: &[u8]) -> bool {
    let (a0, b0) = (a.as_ptr() as usize, b.as_ptr() as usize);
    a0 < b0 + b.len() && b0 < a0 + a.len()
}

/// Output of a streaming step written straight into a new `bytes` object.
fn stream_update<'py, S: Send>(
    py: Python<'py>,
    state: &mut S,
    input: &[u8],
    out_len: usize,
    step: impl FnOnce(&mut S, &[u8], &mut [u8]) -> Result<usize, CoreError> + Send,
) -> PyResult<Bound<'py, PyBytes>> {
    PyBytes::new_with(py, out_len, |out| {
        maybe_detach(py, input.len(), || step(state, input, out))?;
        Ok(())
    })
}

fn stream_update_into<S: Send>(
    py: Python<'_>,
    state: &mut S,
    data: &PyBuffer<u8>,
    out: &PyBuffer<u8>,
    step: impl FnOnce(&mut S, &[u8], &mut [u8]) -> Result<usize, CoreError> + Send,
) -> PyResult<usize> {
    let input = read_view(data)?;
    let output = write_view(out)?;
    if overlaps(input, output) {
        return Err(PyValueError::new_err(
            "input and output buffers must not overlap",
        ));
    }
    Ok(maybe_detach(py, input.len(), || {
        step(state, input, output)
    })?)
}

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
        let input = read_view(&data)?;
        let out_len = self.0.output_len(input.len());
        stream_update(py, &mut self.0, input, out_len, CbcDecryptor::update_into)
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
    iv: [u8; cipher::BLOCK],
}

#[pymethods]
impl Encryptor {
    #[new]
    #[pyo3(signature = (key, iv=None))]
    fn new(key: &[u8], iv: Option<&[u8]>) -> PyResult<Self> {
        let iv: [u8; cipher::BLOCK] = match iv {
            Some(iv) => iv.try_into().map_err(|_| CoreError::IvLength(iv.len()))?,
            None => cipher::random_iv()?,
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
        let input = read_view(&data)?;
        let out_len = self.inner.output_len(input.len());
        stream_update(
            py,
            &mut self.inner,
            input,
            out_len,
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

/// Incremental SHA-256.
#[pyclass(module = "edgeloader._core")]
#[derive(Default)]
struct Sha256(Sha256Stream);

#[pymethods]
impl Sha256 {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    fn update(&mut self, py: Python<'_>, data: PyBuffer<u8>) -> PyResult<()> {
        let input = read_view(&data)?;
        let state = &mut self.0;
        maybe_detach(py, input.len(), || state.update(input));
        Ok(())
    }

    fn digest<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.digest())
    }

    fn hexdigest(&self) -> String {
        self.0.digest().iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[pyfunction]
#[pyo3(signature = (key, plaintext, iv=None))]
fn encrypt_v1<'py>(
    py: Python<'py>,
    key: &[u8],
    plaintext: PyBuffer<u8>,
    iv: Option<&[u8]>,
) -> PyResult<Bound<'py, PyBytes>> {
    let input = read_view(&plaintext)?;
    let out = maybe_detach(py, input.len(), || cipher::encrypt_v1(key, input, iv))?;
    Ok(PyBytes::new(py, &out))
}

#[pyfunction]
fn decrypt_v1<'py>(
    py: Python<'py>,
    key: &[u8],
    data: PyBuffer<u8>,
) -> PyResult<Bound<'py, PyBytes>> {
    let input = read_view(&data)?;
    let out = maybe_detach(py, input.len(), || cipher::decrypt_v1(key, input))?;
    Ok(PyBytes::new(py, &out))
}

#[pyfunction]
fn decrypt_range<'py>(
    py: Python<'py>,
    key: &[u8],
    prev_block: &[u8],
    ciphertext_slice: PyBuffer<u8>,
) -> PyResult<Bound<'py, PyBytes>> {
    let input = read_view(&ciphertext_slice)?;
    let out = maybe_detach(py, input.len(), || {
        cipher::decrypt_range(key, prev_block, input)
    })?;
    Ok(PyBytes::new(py, &out))
}

#[pyfunction]
fn hash_b64(s: &str) -> String {
    hash::hash_b64(s)
}

#[pyfunction]
fn hw_hash(hardware: &str) -> String {
    kdf::hw_hash(hardware)
}

#[pyfunction]
fn api_key<'py>(
    py: Python<'py>,
    email: &str,
    password: &str,
    hardware: &str,
) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &kdf::api_key(email, password, hardware))
}

#[pyfunction]
fn resource_key(py: Python<'_>) -> Bound<'_, PyBytes> {
    PyBytes::new(py, &kdf::resource_key())
}

#[pyfunction]
fn archive_key<'py>(py: Python<'py>, fragment: &[u8]) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &kdf::archive_key(fragment))
}

#[pyfunction]
fn key_from_str<'py>(py: Python<'py>, key_str: &str) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &kdf::key_from_str(key_str))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("BLOCK_SIZE", cipher::BLOCK)?;
    m.add("DECRYPTION_FAILED", DECRYPTION_FAILED)?;
    m.add_class::<Decryptor>()?;
    m.add_class::<Encryptor>()?;
    m.add_class::<Sha256>()?;
    m.add_function(wrap_pyfunction!(encrypt_v1, m)?)?;
    m.add_function(wrap_pyfunction!(decrypt_v1, m)?)?;
    m.add_function(wrap_pyfunction!(decrypt_range, m)?)?;
    m.add_function(wrap_pyfunction!(hash_b64, m)?)?;
    m.add_function(wrap_pyfunction!(hw_hash, m)?)?;
    m.add_function(wrap_pyfunction!(api_key, m)?)?;
    m.add_function(wrap_pyfunction!(resource_key, m)?)?;
    m.add_function(wrap_pyfunction!(archive_key, m)?)?;
    m.add_function(wrap_pyfunction!(key_from_str, m)?)?;
    Ok(())
}
