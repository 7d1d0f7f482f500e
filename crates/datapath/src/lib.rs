//! The kernel data path's pure side, with no BPF library and no unsafe:
//! the byte layouts of the maps the tc program reads (`maps`, checked
//! against the C header by compiling it) and the planner that turns the
//! forwarded services into the map writes that bring the kernel from what
//! it holds to what is wanted (`plan`). The loader that writes them lives
//! in `ferrolb-sys`, the one crate with unsafe.

pub mod maps;
pub mod plan;
