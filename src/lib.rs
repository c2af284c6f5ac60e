//! lookbook: a gRPC service for visual and personalized product
//! recommendations.
//!
//! Map of the crate, edge to core:
//! - [`api`]: the only module that sees tonic/prost/HTTP: generated
//!   `lookbook.v1` types, the gRPC service and the HTTP port (health,
//!   metrics), the layers every call passes (request id and access log,
//!   tokens, overload), TLS, request validation (`TryFrom` into domain
//!   types), the single error -> `Status` mapping, a typed client.
//! - [`app`]: wiring: bind, load, serve, drain.
//! - [`cli`]: the `lookbook` command line: `serve`, `check` and the
//!   operator's client commands.
//! - [`cluster`]: cluster mode: replicas kept in step through NATS
//!   JetStream (the write path through the log, the appliers).
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
//! - [`gate`]: bounded admission (a semaphore with a bounded queue) used
//!   by every wait on a request path.
//! - [`config`] (the only reader of the environment), [`telemetry`] (logs,
//!   Prometheus metrics, OTLP traces), [`dataset`] (Kaggle-style folders).
//! - `tooling` (feature `tooling`, binary `lookbook-bench`): load
//!   generators, `make bench`'s measurements and the evaluations; apart
//!   from what serves.

pub mod api;
pub mod app;
pub mod catalog;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dataset;
pub mod domain;
pub mod encoder;
pub mod gate;
pub mod index;
pub mod personalize;
pub mod recommend;
pub mod store;
pub mod telemetry;
#[cfg(feature = "tooling")]
pub mod tooling;
