//! edgeloader's crypto core.
//!
//! The pure modules have no Python in them and are tested by `cargo test`:
//! - `cbc`: the streaming AES-256-CBC state machine under format v1;
//! - `format`: the container formats (headers, lengths, split rule), one
//!   home per format;
//! - `segment`: the segment list of a release and the gate that releases
//!   ciphertext only once its segment verifies;
//! - `kdf`, `hash`, `error`.
//!
//! `python` holds the thin PyO3 bindings and is built only with the
//! `python` feature (by maturin).

pub mod cbc;
pub mod error;
pub mod format;
pub mod hash;
pub mod kdf;
pub mod segment;

#[cfg(feature = "python")]
mod python;

pub use error::CoreError;
