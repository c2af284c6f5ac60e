//! Benchmark and evaluation tooling (the `tooling` feature, the
//! `lookbook-bench` binary): load generators, `make bench`'s measurements,
//! retrieval and simulated-shopper evaluations. Nothing here serves; the
//! server binary does not link it.

pub mod cli;
pub mod engines;
pub mod eval;
pub mod eval_personal;
pub mod loadgen;
pub mod perf;
