//! The `twinrx` library: everything the `twinrx` binary runs (src/main.rs holds only the
//! command line). A library so that the fuzz targets (`fuzz/`) and their corpus replay
//! (`tests/fuzz_corpus.rs`) reach the config loader and the stream's entry builder as the
//! binary does; not a stable API.

pub mod admin;
pub mod check;
pub mod client;
pub mod config;
pub mod datadir;
pub mod disk;
pub mod fault;
#[doc(hidden)]
pub mod fuzz;
pub mod gen;
pub mod guard;
pub mod journal_cmd;
pub mod keys;
pub mod lab;
pub mod metrics;
pub mod node;
pub mod pair;
pub mod procnet;
pub mod secret;
pub mod sink;
pub mod snmp;
pub mod status;
pub mod stream;
pub mod witness;
