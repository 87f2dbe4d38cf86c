//! edgeloader's crypto core.
//!
//! The pure modules (`cipher`, `kdf`, `hash`, `error`) have no Python in
//! them and are tested by `cargo test`; `python` holds the thin PyO3
//! bindings and is built only with the `python` feature (by maturin).

pub mod cipher;
pub mod error;
pub mod hash;
pub mod kdf;

#[cfg(feature = "python")]
mod python;

pub use error::CoreError;
