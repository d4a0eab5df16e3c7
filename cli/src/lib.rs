//! The parts of the `plush` command line that other crates use: the host-set syntax
//! ([`hostset`]), shared with the fuzz targets. The binary itself is `src/main.rs`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod hostset;
