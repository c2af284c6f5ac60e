//! Bearer-token checks, as a tower layer in front of every service.
//!
//! Two kinds of token: read tokens allow queries, write tokens allow
//! everything (a writer must be able to read what it wrote). Which calls
//! write is decided per method by [`access_of`], checked by a test against
//! every method the proto defines, so a new RPC cannot slip through as a
//! read by default. Health checks are always open: the kubelet and load
//! balancers probe without credentials. Reflection counts as a read.
//!
//! Tokens are compared as SHA-256 digests with `subtle`'s constant-time
//! equality, against every configured token without stopping at a match,
//! so timing tells nothing about how much of a guess was right or which
//! token matched.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use subtle::ConstantTimeEq as _;
use tonic::Status;

use crate::config::Tokens;

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Never checked (health).
    Open,
    Read,
    Write,
}

/// The RPCs that change state: catalogue writes, interactions, erasure.
const WRITE_METHODS: [&str; 7] = [
    "lookbook.v1.RecommenderService/AddProduct",
    "lookbook.v1.RecommenderService/AddProducts",
    "lookbook.v1.RecommenderService/UpdateProduct",
    "lookbook.v1.RecommenderService/DeleteProduct",
    "lookbook.v1.RecommenderService/RecordInteraction",
    "lookbook.v1.RecommenderService/RecordInteractions",
    "lookbook.v1.RecommenderService/ForgetUser",
];
/// The RPCs that only read.
const READ_METHODS: [&str; 8] = [
    "lookbook.v1.RecommenderService/Embed",
    "lookbook.v1.RecommenderService/GetProduct",
    "lookbook.v1.RecommenderService/GetProducts",
    "lookbook.v1.RecommenderService/ListProducts",
    "lookbook.v1.RecommenderService/ListAttributes",
    "lookbook.v1.RecommenderService/RecommendSimilar",
    "lookbook.v1.RecommenderService/GetStats",
    "lookbook.v1.RecommenderService/RecommendForUser",
];

/// Whether `method` (`package.Service/Method`) is one of ours with an
/// explicit rule.
#[cfg(test)]
pub(crate) fn is_classified(method: &str) -> bool {
    WRITE_METHODS.contains(&method) || READ_METHODS.contains(&method)
}

/// The access a gRPC path (`/package.Service/Method`) needs. Unknown paths
/// of our own service need a write token (tonic answers UNIMPLEMENTED only
/// to callers allowed everything); other unknown paths, reflection
/// included, need a read token.
pub fn access_of(path: &str) -> Access {
    let method = path.strip_prefix('/').unwrap_or(path);
    if method.starts_with("grpc.health.v1.Health/") {
        Access::Open
    } else if WRITE_METHODS.contains(&method) {
        Access::Write
    } else if READ_METHODS.contains(&method) {
        Access::Read
    } else if method.starts_with("lookbook.") {
        Access::Write
    } else {
        Access::Read
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No token, a malformed header, or a token that is not configured.
    Unauthenticated,
    /// A read token on a write.
    PermissionDenied,
}

/// The configured tokens and the decision; shared by the gRPC layer and
/// any HTTP handler that serves catalogue data, so both ports enforce the
/// same rules.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    tokens: Arc<Tokens>,
}

impl Authenticator {
    pub fn new(tokens: Tokens) -> Self {
        Self {
            tokens: Arc::new(tokens),
        }
    }

    /// Whether any check is made at all (some token is configured).
    pub fn enabled(&self) -> bool {
        !self.tokens.write.is_empty()
    }

    /// Decides a call needing `access` with this `Authorization` header.
    pub fn check(&self, access: Access, authorization: Option<&[u8]>) -> Result<(), Denied> {
        let needs_token = match access {
            Access::Open => false,
            // With write tokens only, reads stay open.
            Access::Read => !self.tokens.read.is_empty(),
            Access::Write => !self.tokens.write.is_empty(),
        };
        if !needs_token {
            return Ok(());
        }
        let token = authorization
            .and_then(bearer)
            .ok_or(Denied::Unauthenticated)?;
        let digest = Tokens::digest(token);
        let matches = |list: &[[u8; 32]]| {
            list.iter()
                .fold(subtle::Choice::from(0), |any, t| any | t.ct_eq(&digest))
        };
        let is_write = bool::from(matches(&self.tokens.write));
        let is_read = bool::from(matches(&self.tokens.read));
        match (access, is_write, is_read) {
            (_, true, _) | (Access::Read | Access::Open, false, true) => Ok(()),
            (Access::Write, false, true) => Err(Denied::PermissionDenied),
            (_, false, false) => Err(Denied::Unauthenticated),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme
/// case-insensitive, as RFC 9110 says).
fn bearer(header: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    if header.len() <= SCHEME.len() || !header[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let token = header[SCHEME.len()..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Authenticator,
}

impl AuthLayer {
    pub fn new(auth: Authenticator) -> Self {
        Self { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    auth: Authenticator,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let access = access_of(request.uri().path());
        let header = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(http::HeaderValue::as_bytes);
        match self.auth.check(access, header) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(denied) => {
                let status = match denied {
                    Denied::Unauthenticated => {
                        metrics::counter!("lookbook_auth_failures_total", "code" => "UNAUTHENTICATED")
                            .increment(1);
                        Status::unauthenticated("a valid bearer token is required")
                    }
                    Denied::PermissionDenied => {
                        metrics::counter!("lookbook_auth_failures_total", "code" => "PERMISSION_DENIED")
                            .increment(1);
                        Status::permission_denied("this call needs a write token")
                    }
                };
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ: &str = "read-token-0123456789";
    const WRITE: &str = "write-token-0123456789";

    fn auth(read: &[&str], write: &[&str]) -> Authenticator {
        Authenticator::new(Tokens {
            read: read.iter().map(|t| Tokens::digest(t.as_bytes())).collect(),
            write: write.iter().map(|t| Tokens::digest(t.as_bytes())).collect(),
        })
    }

    fn header(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    #[test]
    fn every_method_of_the_proto_is_classified() {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(super::super::proto::FILE_DESCRIPTOR_SET)
            .expect("the built-in descriptor decodes");
        let mut seen = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    seen.push(format!(
                        "{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        seen.sort();
        let mut listed: Vec<String> = WRITE_METHODS
            .iter()
            .chain(READ_METHODS.iter())
            .map(|m| (*m).to_owned())
            .collect();
        listed.sort();
        assert_eq!(seen, listed, "classify every RPC as a read or a write");
    }

    #[test]
    fn the_matrix() {
        let both = auth(&[READ], &[WRITE]);
        let w = "/lookbook.v1.RecommenderService/DeleteProduct";
        let r = "/lookbook.v1.RecommenderService/RecommendSimilar";
        let h = "/grpc.health.v1.Health/Check";
        let check = |a: &Authenticator, path: &str, h: Option<&[u8]>| a.check(access_of(path), h);
        for (path, token, expected) in [
            (w, None, Err(Denied::Unauthenticated)),
            (
                w,
                Some(header("wrong-token-0123456789")),
                Err(Denied::Unauthenticated),
            ),
            (w, Some(header(READ)), Err(Denied::PermissionDenied)),
            (w, Some(header(WRITE)), Ok(())),
            (r, None, Err(Denied::Unauthenticated)),
            (r, Some(header(READ)), Ok(())),
            (r, Some(header(WRITE)), Ok(())),
            (
                r,
                Some(READ.as_bytes().to_vec()),
                Err(Denied::Unauthenticated),
            ),
            (h, None, Ok(())),
        ] {
            assert_eq!(check(&both, path, token.as_deref()), expected, "{path}");
        }
        // Writes protected only: reads open.
        let writes_only = auth(&[], &[WRITE]);
        assert_eq!(check(&writes_only, r, None), Ok(()));
        assert_eq!(check(&writes_only, w, None), Err(Denied::Unauthenticated));
        // Nothing configured: everything open.
        let open = auth(&[], &[]);
        assert!(!open.enabled());
        assert_eq!(check(&open, w, None), Ok(()));
        // Several tokens (a rotation): each one works.
        let rotating = auth(&[], &[WRITE, "second-write-token-0123"]);
        assert_eq!(
            check(&rotating, w, Some(&header("second-write-token-0123"))),
            Ok(())
        );
        assert_eq!(
            check(
                &rotating,
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                None
            ),
            Ok(()),
            "reflection is a read, open without read tokens"
        );
        assert_eq!(
            check(
                &both,
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                None
            ),
            Err(Denied::Unauthenticated)
        );
    }

    #[test]
    fn bearer_headers_are_parsed_strictly() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer   abc  "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"abc"), None);
    }
}
