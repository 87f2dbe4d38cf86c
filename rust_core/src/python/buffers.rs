//! Borrowed buffers and GIL release, shared by every binding.

use std::ptr::NonNull;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::error::CoreError;

/// Inputs at least this large are processed with the GIL released; below it
/// the release and re-acquire would cost more than the work.
pub(super) const DETACH_THRESHOLD: usize = 64 * 1024;

/// Runs `f` with the GIL released when the input is large enough to matter.
pub(super) fn maybe_detach<T: Send>(py: Python<'_>, len: usize, f: impl FnOnce() -> T + Send) -> T {
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
pub(super) fn read_view(buf: &PyBuffer<u8>) -> PyResult<&[u8]> {
    Ok(unsafe { contiguous(buf)?.as_ref() })
}

/// Borrows a writable buffer (bytearray, writable memoryview) without copying.
///
/// SAFETY: as for `read_view`; the caller must not pass the same object as
/// input and output, which `update_into` rejects by address overlap.
#[allow(clippy::mut_from_ref)]
pub(super) fn write_view(buf: &PyBuffer<u8>) -> PyResult<&mut [u8]> {
    if buf.readonly() {
        return Err(PyValueError::new_err("output buffer must be writable"));
    }
    Ok(unsafe { contiguous(buf)?.as_mut() })
}

fn overlaps(a: &[u8], b: &[u8]) -> bool {
    let (a0, b0) = (a.as_ptr() as usize, b.as_ptr() as usize);
    a0 < b0 + b.len() && b0 < a0 + a.len()
}

/// A streaming step: consumes input, writes into `out`, returns bytes written.
pub(super) type Step<S> = fn(&mut S, &[u8], &mut [u8]) -> Result<usize, CoreError>;

/// Output of a streaming step written straight into a new `bytes` object
/// of exactly `out_len` bytes.
pub(super) fn stream_update<'py, S: Send>(
    py: Python<'py>,
    state: &mut S,
    data: &PyBuffer<u8>,
    out_len: impl FnOnce(&S, &[u8]) -> usize,
    step: Step<S>,
) -> PyResult<Bound<'py, PyBytes>> {
    let input = read_view(data)?;
    let out_len = out_len(state, input);
    PyBytes::new_with(py, out_len, |out| {
        maybe_detach(py, input.len(), || step(state, input, out))?;
        Ok(())
    })
}

/// Output of a pass-through step (a gate) in a new `bytes` object. Like
/// `stream_update`, except that the step may write less than `out_len`
/// promised: a gate that meets a bad piece still returns what verified
/// before it, which is then copied into a shorter object.
pub(super) fn gate_update<'py, S: Send>(
    py: Python<'py>,
    state: &mut S,
    data: &PyBuffer<u8>,
    out_len: impl FnOnce(&S, usize) -> usize,
    step: Step<S>,
) -> PyResult<Bound<'py, PyBytes>> {
    let input = read_view(data)?;
    let len = out_len(state, input.len());
    let mut short = None;
    let out = PyBytes::new_with(py, len, |out| {
        let written = maybe_detach(py, input.len(), || step(state, input, out))?;
        if written < len {
            short = Some(out[..written].to_vec());
        }
        Ok(())
    })?;
    Ok(match short {
        Some(verified) => PyBytes::new(py, &verified),
        None => out,
    })
}

/// A streaming step into the caller's writable buffer.
pub(super) fn stream_update_into<S: Send>(
    py: Python<'_>,
    state: &mut S,
    data: &PyBuffer<u8>,
    out: &PyBuffer<u8>,
    step: Step<S>,
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
