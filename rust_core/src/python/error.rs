//! The one place core errors become Python exceptions.
//!
//! Decryption failures become `edgeloader.errors.DecryptionError` and a
//! stream used after `finalize` becomes `edgeloader.errors.StreamFinalized`
//! (both defined in Python so the exception hierarchy stays in one module,
//! imported on first use so that importing the core imports nothing);
//! other misuse becomes ValueError.

use pyo3::exceptions::{PyIndexError, PyOSError, PyOverflowError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use crate::error::{CoreError, DECRYPTION_FAILED};

static DECRYPTION_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static STREAM_FINALIZED: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn edgeloader_error(cell: &'static PyOnceLock<Py<PyType>>, name: &str, message: &str) -> PyErr {
    Python::attach(|py| match cell.import(py, "edgeloader.errors", name) {
        Ok(cls) => PyErr::from_type(cls.clone(), message.to_owned()),
        Err(import_err) => import_err,
    })
}

impl From<CoreError> for PyErr {
    fn from(err: CoreError) -> PyErr {
        match err {
            CoreError::Decryption => {
                edgeloader_error(&DECRYPTION_ERROR, "DecryptionError", DECRYPTION_FAILED)
            }
            CoreError::Finalized => {
                edgeloader_error(&STREAM_FINALIZED, "StreamFinalized", &err.to_string())
            }
            CoreError::Random => PyOSError::new_err(err.to_string()),
            CoreError::LengthOverflow => PyOverflowError::new_err(err.to_string()),
            CoreError::ChunkIndex { .. } => PyIndexError::new_err(err.to_string()),
            CoreError::KeyLength(_)
            | CoreError::IvLength(_)
            | CoreError::Unaligned(_)
            | CoreError::OutputTooSmall { .. }
            | CoreError::ChunkLog2(_)
            | CoreError::ParamLength { .. } => PyValueError::new_err(err.to_string()),
        }
    }
}
