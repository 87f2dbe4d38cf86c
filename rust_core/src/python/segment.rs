//! Bindings of the segment list and of the gate that releases ciphertext
//! only once its segment verifies.

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::buffers::{gate_update, maybe_detach, read_view};
use crate::error::CoreError;
use crate::segment::{self, SegmentGate as CoreGate, SegmentHasher as CoreHasher};

#[pyfunction]
fn segment_count(size: u64, segment: u64) -> PyResult<u64> {
    segment::check_segment(segment)?;
    Ok(segment::segment_count(size, segment))
}

#[pyfunction]
fn segment_list<'py>(
    py: Python<'py>,
    ciphertext: PyBuffer<u8>,
    segment: u64,
) -> PyResult<Bound<'py, PyBytes>> {
    let input = read_view(&ciphertext)?;
    let out = maybe_detach(py, input.len(), || segment::segment_list(input, segment))?;
    Ok(PyBytes::new(py, &out))
}

/// Builds a segment list from pieces; spent by `finish`.
#[pyclass(module = "edgeloader._core")]
struct SegmentHasher(Option<CoreHasher>);

#[pymethods]
impl SegmentHasher {
    #[new]
    fn new(segment: u64) -> PyResult<Self> {
        Ok(Self(Some(CoreHasher::new(segment)?)))
    }

    fn update(&mut self, py: Python<'_>, data: PyBuffer<u8>) -> PyResult<()> {
        let hasher = self.0.as_mut().ok_or(CoreError::Finalized)?;
        let input = read_view(&data)?;
        maybe_detach(py, input.len(), || hasher.update(input));
        Ok(())
    }

    fn finish<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let hasher = self.0.take().ok_or(CoreError::Finalized)?;
        Ok(PyBytes::new(py, &hasher.finish()))
    }
}

/// Passes ciphertext through, releasing each segment once it verifies.
#[pyclass(module = "edgeloader._core")]
struct SegmentGate(CoreGate);

#[pymethods]
impl SegmentGate {
    #[new]
    #[pyo3(signature = (segment, size, segments, start=0))]
    fn new(segment: u64, size: u64, segments: &[u8], start: u64) -> PyResult<Self> {
        Ok(Self(CoreGate::new(segment, size, segments, start)?))
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
            CoreGate::output_len,
            CoreGate::update_into,
        )
    }

    fn finish(&mut self) -> PyResult<()> {
        Ok(self.0.finish()?)
    }

    #[getter]
    fn position(&self) -> u64 {
        self.0.position()
    }

    #[getter]
    fn pending(&self) -> usize {
        self.0.pending()
    }
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("SEGMENT_MIN", 1u64 << segment::MIN_SEGMENT_LOG2)?;
    m.add("SEGMENT_MAX", 1u64 << segment::MAX_SEGMENT_LOG2)?;
    m.add("SEGMENT_DEFAULT", segment::DEFAULT_SEGMENT)?;
    m.add_class::<SegmentHasher>()?;
    m.add_class::<SegmentGate>()?;
    m.add_function(wrap_pyfunction!(segment_count, m)?)?;
    m.add_function(wrap_pyfunction!(segment_list, m)?)?;
    Ok(())
}
