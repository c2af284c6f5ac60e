//! The one mapping from errors to gRPC status codes.
//!
//! Matches are exhaustive on purpose (no catch-all arm): adding an error
//! variant anywhere in the core fails to compile here until someone decides
//! what a caller should see for it. Caller mistakes get a message they can
//! act on; internal failures are logged with their full chain and returned
//! as a bare INTERNAL so nothing about the host leaks.

use std::fmt::Write as _;

use tonic::{Code, Status};

use super::convert::InvalidRequest;
use crate::{
    catalog::CatalogError, cluster::ClusterError, encoder::EncoderError, index::IndexError,
    personalize::PersonalizeError, recommend::RecommendError, store::StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Recommend(#[from] RecommendError),
    #[error(transparent)]
    Personalize(#[from] PersonalizeError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// What the caller is told, and whether the cause is ours.
struct Public {
    code: Code,
    message: String,
    internal: bool,
    /// The bound that refused the call, when it was shed (for
    /// `lookbook_shed_total`).
    shed: Option<&'static str>,
}

impl Public {
    fn caller(code: Code, message: impl ToString) -> Self {
        Self {
            code,
            message: message.to_string(),
            internal: false,
            shed: None,
        }
    }

    /// RESOURCE_EXHAUSTED because the queue or bound `bound` was full.
    fn shed(bound: &'static str, message: impl ToString) -> Self {
        Self {
            shed: Some(bound),
            ..Self::caller(Code::ResourceExhausted, message)
        }
    }

    fn internal() -> Self {
        Self {
            code: Code::Internal,
            message: "internal error".to_owned(),
            internal: true,
            shed: None,
        }
    }
}

fn encoder(e: &EncoderError) -> Public {
    match e {
        EncoderError::EmptyImage { .. }
        | EncoderError::UndecodableImage { .. }
        | EncoderError::ImageTooLarge { .. }
        | EncoderError::TooManyImages { .. } => Public::caller(Code::InvalidArgument, e),
        EncoderError::Overloaded => Public::shed("encoder_queue", e),
        EncoderError::ShuttingDown => Public::caller(Code::Unavailable, e),
        EncoderError::Ort { .. }
        | EncoderError::Runtime(_)
        | EncoderError::Manifest { .. }
        | EncoderError::Model { .. }
        | EncoderError::Library { .. }
        | EncoderError::Config { .. } => Public::internal(),
    }
}

fn store(e: &StoreError) -> Public {
    match e {
        StoreError::CreateDir { .. }
        | StoreError::Open { .. }
        | StoreError::Db { .. }
        | StoreError::Corrupt { .. }
        | StoreError::TooLarge { .. } => Public::internal(),
    }
}

fn index(e: &IndexError) -> Public {
    // Every index failure reaching a request is a bug or an I/O problem on
    // our side: requests are validated (dimension, finiteness) before.
    match e {
        IndexError::DimensionMismatch { .. }
        | IndexError::InvalidVector { .. }
        | IndexError::InvalidParams { .. }
        | IndexError::Io { .. }
        | IndexError::CorruptDump { .. }
        | IndexError::DumpUnsupported { .. }
        | IndexError::VectorFile { .. }
        | IndexError::Internal { .. } => Public::internal(),
    }
}

fn catalog(e: &CatalogError) -> Public {
    match e {
        CatalogError::NotFound(_) => Public::caller(Code::NotFound, e),
        CatalogError::Encoder(e) => encoder(e),
        CatalogError::Store(e) => store(e),
        CatalogError::Index(e) => index(e),
        CatalogError::ModelMismatch { .. } | CatalogError::MetricMismatch { .. } => {
            Public::caller(Code::FailedPrecondition, e)
        }
        CatalogError::Busy(_) => Public::shed("write_queue", e),
        CatalogError::BadModelOutput(_)
        | CatalogError::StoreDamaged { .. }
        | CatalogError::DataDir { .. }
        | CatalogError::Task(_)
        | CatalogError::Internal(_) => Public::internal(),
    }
}

fn personalize(e: &PersonalizeError) -> Public {
    match e {
        PersonalizeError::UnknownProduct(_) => Public::caller(Code::NotFound, e),
        PersonalizeError::Overloaded => Public::shed("interaction_queue", e),
        PersonalizeError::WriterStopped => Public::caller(Code::Unavailable, e),
        PersonalizeError::Store(inner) => store(inner),
        PersonalizeError::Spawn(_) | PersonalizeError::Task(_) => Public::internal(),
    }
}

fn cluster(e: &ClusterError) -> Public {
    match e {
        ClusterError::Catalog(e) => catalog(e),
        ClusterError::Personalize(e) => personalize(e),
        // The caller may retry: nothing of the failed part was stored.
        ClusterError::Unavailable(_) | ClusterError::Halted(_) | ClusterError::Connect { .. } => {
            Public::caller(Code::Unavailable, e)
        }
        // Stored in the cluster, not yet visible here: the call's outcome
        // is "done, later", which is what DEADLINE_EXCEEDED allows.
        ClusterError::NotApplied(_) => Public::caller(Code::DeadlineExceeded, e),
        ClusterError::ModelMismatch { .. } | ClusterError::AheadOfLog { .. } => {
            Public::caller(Code::FailedPrecondition, e)
        }
        ClusterError::Setup { .. } | ClusterError::Encode(_) => Public::internal(),
    }
}

impl ApiError {
    fn public(&self) -> Public {
        match self {
            Self::Invalid(e) => Public::caller(Code::InvalidArgument, e),
            Self::Catalog(e) => catalog(e),
            Self::Recommend(e) => match e {
                RecommendError::Catalog(e) => catalog(e),
                RecommendError::DegenerateQuery => Public::caller(Code::InvalidArgument, e),
                RecommendError::Task(_) => Public::internal(),
                RecommendError::Busy(_) => Public::shed("search_queue", e),
                RecommendError::Personalize(e) => personalize(e),
            },
            Self::Personalize(e) => personalize(e),
            Self::Cluster(e) => cluster(e),
        }
    }
}

/// `e`, then each `source()` in turn, for logs.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let _ = write!(out, ": {cause}");
        next = cause.source();
    }
    out
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let public = e.public();
        if let Some(bound) = public.shed {
            metrics::counter!("lookbook_shed_total", "bound" => bound).increment(1);
        }
        if public.internal {
            // Logged once, here, with its whole chain, inside the call's
            // span (so with its request id); the caller sees only INTERNAL.
            tracing::error!(error = %chain(&e), "request failed");
        } else {
            tracing::debug!(code = ?public.code, error = %e, "request rejected");
        }
        Status::new(public.code, public.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ProductId;

    #[test]
    fn caller_errors_keep_their_message_and_internal_ones_do_not_leak() {
        let s = Status::from(ApiError::Invalid(InvalidRequest::MissingQuery));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("product_id"));

        let id = ProductId::parse("42", 8).unwrap();
        let s = Status::from(ApiError::Catalog(CatalogError::NotFound(id)));
        assert_eq!(s.code(), Code::NotFound);
        assert!(s.message().contains("42"));

        let s = Status::from(ApiError::Catalog(CatalogError::Encoder(
            EncoderError::Runtime("secret /var/lib path".into()),
        )));
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("secret"));

        let s = Status::from(ApiError::Catalog(CatalogError::Encoder(
            EncoderError::Overloaded,
        )));
        assert_eq!(s.code(), Code::ResourceExhausted);

        let s = Status::from(ApiError::Personalize(PersonalizeError::Overloaded));
        assert_eq!(s.code(), Code::ResourceExhausted);
        let s = Status::from(ApiError::Recommend(RecommendError::Personalize(
            PersonalizeError::Overloaded,
        )));
        assert_eq!(s.code(), Code::ResourceExhausted);
    }
}
