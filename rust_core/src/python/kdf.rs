//! Bindings of key derivation and hashing.

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::buffers::{maybe_detach, read_view};
use crate::hash::{self, Sha256Stream};
use crate::kdf;

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

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Sha256>()?;
    m.add_function(wrap_pyfunction!(hash_b64, m)?)?;
    m.add_function(wrap_pyfunction!(hw_hash, m)?)?;
    m.add_function(wrap_pyfunction!(api_key, m)?)?;
    m.add_function(wrap_pyfunction!(resource_key, m)?)?;
    m.add_function(wrap_pyfunction!(archive_key, m)?)?;
    m.add_function(wrap_pyfunction!(key_from_str, m)?)?;
    Ok(())
}
