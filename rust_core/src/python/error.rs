//! The one place core errors become Python exceptions.
//!
//! Decryption failures become `edgeloader.errors.DecryptionError` and a
//! stream used after `finalize` becomes `edgeloader.errors.StreamFinalized`
//! (both defined in Python so the exception hierarchy stays in one module,
//! imported on first use so that importing the core imports nothing);
//! a segment that does not match the segment list, or a list of the wrong
//! length, becomes `edgeloader.errors.IntegrityError` with the reason `hash`
//! or `segments` (docs/security.md); other misuse becomes ValueError.

use pyo3::exceptions::{PyIndexError, PyOSError, PyOverflowError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use pyo3::PyErrArguments;

use crate::error::{CoreError, DECRYPTION_FAILED};

static DECRYPTION_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static STREAM_FINALIZED: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static INTEGRITY_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn edgeloader_error<A>(cell: &'static PyOnceLock<Py<PyType>>, name: &str, args: A) -> PyErr
where
    A: PyErrArguments + Send + Sync + 'static,
{
    Python::attach(|py| match cell.import(py, "edgeloader.errors", name) {
        Ok(cls) => PyErr::from_type(cls.clone(), args),
        Err(import_err) => import_err,
    })
}

/// `IntegrityError(reason, detail)`.
fn integrity_error(reason: &'static str, err: CoreError) -> PyErr {
    edgeloader_error(
        &INTEGRITY_ERROR,
        "IntegrityError",
        (reason, err.to_string()),
    )
}

impl From<CoreError> for PyErr {
    fn from(err: CoreError) -> PyErr {
        match err {
            CoreError::Decryption => {
                edgeloader_error(&DECRYPTION_ERROR, "DecryptionError", DECRYPTION_FAILED)
            }
            CoreError::Finalized => {
                edgeloader_error(&STREAM_FINALIZED, "StreamFinalized", err.to_string())
            }
            CoreError::Segment { .. } => integrity_error("hash", err),
            CoreError::SegmentList => integrity_error("segments", err),
            CoreError::Random => PyOSError::new_err(err.to_string()),
            CoreError::LengthOverflow => PyOverflowError::new_err(err.to_string()),
            CoreError::ChunkIndex { .. } => PyIndexError::new_err(err.to_string()),
            CoreError::KeyLength(_)
            | CoreError::IvLength(_)
            | CoreError::Unaligned(_)
            | CoreError::OutputTooSmall { .. }
            | CoreError::ChunkLog2(_)
            | CoreError::ParamLength { .. }
            | CoreError::SegmentSize(_)
            | CoreError::SegmentStart(_) => PyValueError::new_err(err.to_string()),
        }
    }
}
