//! crust-sys: the only crate with `unsafe` and raw kernel calls.

pub mod procfs;
