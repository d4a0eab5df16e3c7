//! The parts of the `plush` command line that other crates use, and the fuzz targets reach:
//! the host-set syntax ([`hostset`]) and application files ([`appfile`]). The binary itself is
//! `src/main.rs`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod appfile;
pub mod hostset;
