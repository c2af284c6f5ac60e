//! lookbook: a gRPC service for visual and personalized product
//! recommendations.
//!
//! Map of the crate, edge to core:
//! - [`api`]: the only module that sees tonic/prost: generated
//!   `lookbook.v1` types, the service, request validation (`TryFrom` into
//!   domain types), the single error -> `Status` mapping, a typed client.
//! - [`app`]: wiring: bind, load, serve with health/reflection, drain.
//! - [`cli`]: the `lookbook` command line (`serve`, `import`, `similar`,
//!   `bench`, `synth`, `eval`, `eval-personal`, and the `make bench` tools).
//! - [`recommend`]: query planning: similar products (Qdrant-style
//!   positives/negatives) and per-shopper recommendations; shares, caps,
//!   MMR and reasons.
//! - [`personalize`]: interactions, multi-interest taste profiles and
//!   trending, group-committed to the store.
//! - [`catalog`]: keeps the store, the attribute table and the index in step.
//! - [`encoder`]: image -> embedding with ONNX Runtime, on its own bounded pool.
//! - [`index`]: our own HNSW graph, with tombstones, exact fallback,
//!   background rebuild and crash-safe dumps.
//! - [`store`]: durable products in redb.
//! - [`domain`]: validated types shared by the core.
//! - [`loadgen`]: the `bench`/`synth` load tools behind the README figures.
//! - [`perf`]: the measurements `make bench` compares with the Python peers
//!   (encoder split, index sweeps, ingest, freshness).
//! - [`gate`]: bounded admission (a semaphore with a bounded queue) used
//!   by every wait on a request path.
//! - [`config`], [`telemetry`], [`dataset`] (Kaggle-style folders), [`eval`]
//!   (retrieval metrics), [`eval_personal`] (simulated shoppers).

pub mod api;
pub mod app;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod dataset;
pub mod domain;
pub mod encoder;
pub mod eval;
pub mod eval_personal;
pub mod gate;
pub mod index;
pub mod loadgen;
pub mod perf;
pub mod personalize;
pub mod recommend;
pub mod store;
pub mod telemetry;
