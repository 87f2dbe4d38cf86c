//! Thin PyO3 bindings over the pure core: argument conversion, GIL release
//! and error mapping only. No crypto logic lives here.
//!
//! - `error`: the one `From<CoreError> for PyErr`;
//! - `buffers`: borrowed buffers, GIL release, the streaming call shapes;
//! - one file per area: `cbc`, `v1`, `v2`, `kdf`, `segment`.

mod buffers;
mod cbc;
mod error;
mod kdf;
mod segment;
mod v1;
mod v2;

use pyo3::prelude::*;

use crate::error::DECRYPTION_FAILED;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Checked against the Python package's version when edgeloader is imported.
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DECRYPTION_FAILED", DECRYPTION_FAILED)?;
    cbc::register(m)?;
    v1::register(m)?;
    v2::register(m)?;
    kdf::register(m)?;
    segment::register(m)?;
    Ok(())
}
