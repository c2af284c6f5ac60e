//! The HTTP/JSON API under `/v1` on the HTTP port, and the page at `/`.
//!
//! A thin layer over the gRPC service: each route parses its JSON (the
//! proto3 JSON mapping of the same request message, through the generated
//! `pbjson` impls), then calls the very method gRPC calls, so validation,
//! limits and error semantics are the same by construction; a `Status`
//! becomes an HTTP status by [`http_status`] and a JSON body
//! `{"error": {"code", "status", "message"}}`. Before any body is read a
//! call must pass the same token check as on the gRPC port (by the RPC it
//! maps to) and take a slot of the same server-wide in-flight bound.
//!
//! [`ROUTES`] is the single list of routes: the router is built from it and
//! so is the OpenAPI document at `/openapi.json` (see `openapi`), so the two
//! cannot disagree.
#![expect(
    clippy::result_large_err,
    reason = "the helpers return the finished error response as their Err arm; it is built once \
              per refused request and moved up, never on a hot path"
)]

use std::collections::BTreeMap;

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{FromRequest, FromRequestParts as _, Multipart, Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{MethodRouter, on},
};
use serde::{Serialize, de::DeserializeOwned};
use tonic::{Code, Status};

use super::{
    auth::{Authenticator, Denied, access_of},
    limit::InFlightLimitLayer,
    observe::code_name,
    proto::{self, recommender_service_server::RecommenderService as _},
    service::RecommenderService,
};

/// What a route does; one per entry of [`ROUTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Embed,
    AddProduct,
    ListProducts,
    GetProduct,
    UpdateProduct,
    DeleteProduct,
    GetProducts,
    Thumbnail,
    ListAttributes,
    RecommendSimilar,
    RecordInteraction,
    RecommendForUser,
    ForgetUser,
    GetStats,
}

/// One HTTP route of the API.
#[derive(Debug)]
pub(crate) struct Route {
    pub op: Op,
    /// Lower case, as in OpenAPI.
    pub method: &'static str,
    /// With `{name}` parameters, as both axum and OpenAPI write them.
    pub path: &'static str,
    /// The gRPC method whose token rules and semantics it has.
    pub rpc: &'static str,
    /// Message of the JSON body, if it takes one.
    pub request: Option<&'static str>,
    /// Message of the JSON response (`None`: not JSON, see `summary`).
    pub response: Option<&'static str>,
    pub summary: &'static str,
}

pub(crate) const ROUTES: &[Route] = &[
    Route {
        op: Op::Embed,
        method: "post",
        path: "/v1/embed",
        rpc: "Embed",
        request: Some("EmbedRequest"),
        response: Some("EmbedResponse"),
        summary: "Embeds photos (base64 in `images`) with the configured model",
    },
    Route {
        op: Op::AddProduct,
        method: "post",
        path: "/v1/products",
        rpc: "AddProduct",
        request: Some("AddProductRequest"),
        response: Some("AddProductResponse"),
        summary: "Adds or replaces a product from a photo (base64 `image`) or an `embedding`",
    },
    Route {
        op: Op::ListProducts,
        method: "get",
        path: "/v1/products",
        rpc: "ListProducts",
        request: None,
        response: Some("ListProductsResponse"),
        summary: "Pages through the catalogue in id order; `must`/`mustNot` are `key:value` filters (repeat for several values or keys)",
    },
    Route {
        op: Op::GetProduct,
        method: "get",
        path: "/v1/products/{productId}",
        rpc: "GetProduct",
        request: None,
        response: Some("GetProductResponse"),
        summary: "One product; `view=PRODUCT_VIEW_FULL` adds its embedding",
    },
    Route {
        op: Op::UpdateProduct,
        method: "patch",
        path: "/v1/products/{productId}",
        rpc: "UpdateProduct",
        request: Some("UpdateProductRequest"),
        response: Some("UpdateProductResponse"),
        summary: "Sets (`setAttributes`) and removes (`removeAttributes`) attributes; the vector is untouched",
    },
    Route {
        op: Op::DeleteProduct,
        method: "delete",
        path: "/v1/products/{productId}",
        rpc: "DeleteProduct",
        request: None,
        response: Some("DeleteProductResponse"),
        summary: "Deletes a product and its thumbnail",
    },
    Route {
        op: Op::GetProducts,
        method: "post",
        path: "/v1/products:batchGet",
        rpc: "GetProducts",
        request: Some("GetProductsRequest"),
        response: Some("GetProductsResponse"),
        summary: "Products by id, in request order; unknown ids in `missingIds`",
    },
    Route {
        op: Op::Thumbnail,
        method: "get",
        path: "/v1/products/{productId}/thumbnail",
        rpc: "GetProduct",
        request: None,
        response: None,
        summary: "The product's thumbnail (image/jpeg, long side at most 256 px), with an ETag",
    },
    Route {
        op: Op::ListAttributes,
        method: "get",
        path: "/v1/attributes",
        rpc: "ListAttributes",
        request: None,
        response: Some("ListAttributesResponse"),
        summary: "Attribute keys with their most common values and counts (facets)",
    },
    Route {
        op: Op::RecommendSimilar,
        method: "post",
        path: "/v1/recommend/similar",
        rpc: "RecommendSimilar",
        request: Some("RecommendSimilarRequest"),
        response: Some("RecommendSimilarResponse"),
        summary: "Products similar to a product, photo or embedding; also multipart/form-data with an `image` file and an optional `request` JSON part",
    },
    Route {
        op: Op::RecordInteraction,
        method: "post",
        path: "/v1/interactions",
        rpc: "RecordInteraction",
        request: Some("RecordInteractionRequest"),
        response: Some("RecordInteractionResponse"),
        summary: "Records what a shopper did (viewed, added to cart, bought, disliked)",
    },
    Route {
        op: Op::RecommendForUser,
        method: "post",
        path: "/v1/recommend/user",
        rpc: "RecommendForUser",
        request: Some("RecommendForUserRequest"),
        response: Some("RecommendForUserResponse"),
        summary: "What a shopper should see next, each item with its reason",
    },
    Route {
        op: Op::ForgetUser,
        method: "delete",
        path: "/v1/users/{userId}",
        rpc: "ForgetUser",
        request: None,
        response: Some("ForgetUserResponse"),
        summary: "Erases everything known about a shopper",
    },
    Route {
        op: Op::GetStats,
        method: "get",
        path: "/v1/stats",
        rpc: "GetStats",
        request: None,
        response: Some("GetStatsResponse"),
        summary: "Catalogue size, model, dimension, metric, index state",
    },
];

/// The gRPC service's fully qualified name, for token rules.
const SERVICE_PATH: &str = "lookbook.v1.RecommenderService/";

/// What the API handlers share.
#[derive(Debug, Clone)]
pub(crate) struct RestState {
    pub(crate) service: RecommenderService,
    pub(crate) auth: Authenticator,
    pub(crate) limit: InFlightLimitLayer,
    /// Largest request body: the gRPC message limit, plus a third for the
    /// base64 encoding of images in JSON.
    pub(crate) max_body: usize,
}

/// The API routes (and, with `ui`, the page), built from [`ROUTES`].
pub(crate) fn router(state: RestState, ui: bool) -> Router {
    let mut router = Router::new();
    for route in ROUTES {
        router = router.route(route.path, method_router(route));
    }
    router = router.route("/openapi.json", axum::routing::get(openapi));
    if ui {
        router = router
            .route("/", axum::routing::get(page_html))
            .route("/ui/app.js", axum::routing::get(page_js))
            .route("/ui/app.css", axum::routing::get(page_css));
    }
    router.with_state(state)
}

fn method_router(route: &'static Route) -> MethodRouter<RestState> {
    let method = match route.method {
        "get" => axum::routing::MethodFilter::GET,
        "post" => axum::routing::MethodFilter::POST,
        "patch" => axum::routing::MethodFilter::PATCH,
        "delete" => axum::routing::MethodFilter::DELETE,
        other => unreachable!("ROUTES has method {other}, which `method_router` does not map"),
    };
    on(
        method,
        move |State(state): State<RestState>, request: Request| async move {
            match handle(route, &state, request).await {
                Ok(response) | Err(response) => response,
            }
        },
    )
}

/// The HTTP status for a gRPC code, as Google's APIs map them
/// (google.rpc.Code's documentation); CANCELLED is the de-facto 499.
pub(crate) fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: u16,
    status: &'static str,
    message: &'a str,
}

/// An error response with the given HTTP status (normally
/// `http_status(code)`).
fn error_with(http: StatusCode, code: Code, message: &str) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: http.as_u16(),
            status: code_name(code),
            message,
        },
    };
    let json = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = (http, [(header::CONTENT_TYPE, "application/json")], json).into_response();
    if code == Code::Unauthenticated {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

fn error(code: Code, message: &str) -> Response {
    error_with(http_status(code), code, message)
}

fn status_response(status: &Status) -> Response {
    error(status.code(), status.message())
}

fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a JSON response");
            error(Code::Internal, "internal error")
        }
    }
}

/// Token check and an in-flight slot, before anything is read.
fn admit(
    route: &Route,
    state: &RestState,
    headers: &HeaderMap,
) -> Result<tokio::sync::OwnedSemaphorePermit, Response> {
    let access = access_of(&format!("{SERVICE_PATH}{}", route.rpc));
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    state
        .auth
        .check(access, authorization)
        .map_err(|denied| match denied {
            Denied::Unauthenticated => error(
                Code::Unauthenticated,
                "missing or unknown bearer token (Authorization: Bearer <token>)",
            ),
            Denied::PermissionDenied => {
                error(Code::PermissionDenied, "this token may read but not write")
            }
        })?;
    state.limit.try_enter().map_err(|max| {
        metrics::counter!("lookbook_shed_total", "bound" => "in_flight").increment(1);
        error(
            Code::ResourceExhausted,
            &format!("overloaded: {max} calls in flight; retry later"),
        )
    })
}

async fn body_bytes(body: Body, limit: usize) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large(limit))
}

/// 413, not RESOURCE_EXHAUSTED's 429: retrying the same body cannot
/// succeed.
fn too_large(limit: usize) -> Response {
    error_with(
        StatusCode::PAYLOAD_TOO_LARGE,
        Code::ResourceExhausted,
        &format!("request body larger than {limit} bytes"),
    )
}

/// The JSON body as message `T`; an empty body is `{}`.
async fn json_body<T: DeserializeOwned + Default>(body: Body, limit: usize) -> Result<T, Response> {
    let bytes = body_bytes(body, limit).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| error(Code::InvalidArgument, &format!("invalid JSON body: {e}")))
}

fn rpc_result<T: Serialize>(result: Result<tonic::Response<T>, Status>) -> Response {
    match result {
        Ok(response) => json(response.get_ref()),
        Err(status) => status_response(&status),
    }
}

/// Query parameters, in order, repeated keys kept.
type Params = Vec<(String, String)>;

async fn params(request: Request) -> Result<(Params, Request), Response> {
    let (mut parts, body) = request.into_parts();
    let Query(params) = Query::<Params>::from_request_parts(&mut parts, &())
        .await
        .map_err(|e| error(Code::InvalidArgument, &format!("query string: {e}")))?;
    Ok((params, Request::from_parts(parts, body)))
}

fn unknown_param(key: &str, allowed: &[&str]) -> Response {
    error(
        Code::InvalidArgument,
        &format!(
            "unknown query parameter {key:?} (this route takes {})",
            if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed.join(", ")
            }
        ),
    )
}

fn number(key: &str, value: &str) -> Result<u32, Response> {
    value.parse().map_err(|_| {
        error(
            Code::InvalidArgument,
            &format!("query parameter {key} must be a non-negative integer, got {value:?}"),
        )
    })
}

/// A `view` query parameter: an enum name or number, as in proto3 JSON.
fn view_param(value: &str) -> Result<i32, Response> {
    proto::ProductView::from_str_name(value)
        .map(i32::from)
        .or_else(|| value.parse().ok())
        .ok_or_else(|| {
            error(
                Code::InvalidArgument,
                &format!("unknown view {value:?} (PRODUCT_VIEW_BASIC or PRODUCT_VIEW_FULL)"),
            )
        })
}

/// `must`/`mustNot` values `key:value`; values of one key are alternatives.
fn clause_param(
    clauses: &mut Vec<proto::AttributeFilter>,
    key: &str,
    raw: &str,
) -> Result<(), Response> {
    let Some((attribute, value)) = raw.split_once(':') else {
        return Err(error(
            Code::InvalidArgument,
            &format!("{key} must be key:value, got {raw:?}"),
        ));
    };
    match clauses.iter_mut().find(|c| c.key == attribute) {
        Some(clause) => clause.values.push(value.to_owned()),
        None => clauses.push(proto::AttributeFilter {
            key: attribute.to_owned(),
            values: vec![value.to_owned()],
        }),
    }
    Ok(())
}

fn list_request(params: Params) -> Result<proto::ListProductsRequest, Response> {
    const ALLOWED: [&str; 5] = ["pageSize", "pageToken", "view", "must", "mustNot"];
    let mut request = proto::ListProductsRequest::default();
    let mut filter = proto::Filter::default();
    for (key, value) in params {
        match key.as_str() {
            "pageSize" | "page_size" => request.page_size = number(&key, &value)?,
            "pageToken" | "page_token" => request.page_token = value,
            "view" => request.view = view_param(&value)?,
            "must" => clause_param(&mut filter.must, &key, &value)?,
            "mustNot" | "must_not" => clause_param(&mut filter.must_not, &key, &value)?,
            other => return Err(unknown_param(other, &ALLOWED)),
        }
    }
    if !filter.must.is_empty() || !filter.must_not.is_empty() {
        request.filter = Some(filter);
    }
    Ok(request)
}

/// A path parameter, percent-decoded.
async fn path_param(request: Request) -> Result<(String, Request), Response> {
    let (mut parts, body) = request.into_parts();
    let Path(value) = Path::<String>::from_request_parts(&mut parts, &())
        .await
        .map_err(|e| error(Code::InvalidArgument, &format!("path: {e}")))?;
    Ok((value, Request::from_parts(parts, body)))
}

fn no_params(params: &Params, allowed: &[&str]) -> Result<(), Response> {
    match params.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        Some((key, _)) => Err(unknown_param(key, allowed)),
        None => Ok(()),
    }
}

async fn handle(route: &Route, state: &RestState, request: Request) -> Result<Response, Response> {
    let _slot = admit(route, state, request.headers())?;
    let limit = state.max_body;
    let service = &state.service;
    let (params, request) = params(request).await?;
    let response = match route.op {
        Op::Embed => {
            no_params(&params, &[])?;
            let body: proto::EmbedRequest = json_body(request.into_body(), limit).await?;
            rpc_result(service.embed(tonic::Request::new(body)).await)
        }
        Op::AddProduct => {
            no_params(&params, &[])?;
            let body: proto::AddProductRequest = json_body(request.into_body(), limit).await?;
            rpc_result(service.add_product(tonic::Request::new(body)).await)
        }
        Op::ListProducts => {
            let body = list_request(params)?;
            rpc_result(service.list_products(tonic::Request::new(body)).await)
        }
        Op::GetProduct => {
            let (product_id, _) = path_param(request).await?;
            let mut body = proto::GetProductRequest {
                product_id,
                view: 0,
            };
            for (key, value) in params {
                match key.as_str() {
                    "view" => body.view = view_param(&value)?,
                    other => return Err(unknown_param(other, &["view"])),
                }
            }
            rpc_result(service.get_product(tonic::Request::new(body)).await)
        }
        Op::UpdateProduct => {
            no_params(&params, &[])?;
            let (product_id, request) = path_param(request).await?;
            let mut body: proto::UpdateProductRequest =
                json_body(request.into_body(), limit).await?;
            if !body.product_id.is_empty() && body.product_id != product_id {
                return Err(error(
                    Code::InvalidArgument,
                    "productId in the body differs from the one in the path",
                ));
            }
            body.product_id = product_id;
            rpc_result(service.update_product(tonic::Request::new(body)).await)
        }
        Op::DeleteProduct => {
            no_params(&params, &[])?;
            let (product_id, _) = path_param(request).await?;
            let body = proto::DeleteProductRequest { product_id };
            rpc_result(service.delete_product(tonic::Request::new(body)).await)
        }
        Op::GetProducts => {
            no_params(&params, &[])?;
            let body: proto::GetProductsRequest = json_body(request.into_body(), limit).await?;
            rpc_result(service.get_products(tonic::Request::new(body)).await)
        }
        Op::Thumbnail => {
            no_params(&params, &[])?;
            let if_none_match = request.headers().get(header::IF_NONE_MATCH).cloned();
            let (product_id, _) = path_param(request).await?;
            match service.thumbnail(&product_id).await {
                Ok(jpeg) => thumbnail_response(jpeg, if_none_match.as_ref()),
                Err(status) => status_response(&status),
            }
        }
        Op::ListAttributes => {
            let mut body = proto::ListAttributesRequest::default();
            for (key, value) in params {
                match key.as_str() {
                    "maxValues" | "max_values" => body.max_values = number(&key, &value)?,
                    other => return Err(unknown_param(other, &["maxValues"])),
                }
            }
            rpc_result(service.list_attributes(tonic::Request::new(body)).await)
        }
        Op::RecommendSimilar => {
            no_params(&params, &[])?;
            let body = similar_request(request, limit).await?;
            rpc_result(service.recommend_similar(tonic::Request::new(body)).await)
        }
        Op::RecordInteraction => {
            no_params(&params, &[])?;
            let body: proto::RecordInteractionRequest =
                json_body(request.into_body(), limit).await?;
            rpc_result(service.record_interaction(tonic::Request::new(body)).await)
        }
        Op::RecommendForUser => {
            no_params(&params, &[])?;
            let body: proto::RecommendForUserRequest =
                json_body(request.into_body(), limit).await?;
            rpc_result(service.recommend_for_user(tonic::Request::new(body)).await)
        }
        Op::ForgetUser => {
            no_params(&params, &[])?;
            let (user_id, _) = path_param(request).await?;
            let body = proto::ForgetUserRequest { user_id };
            rpc_result(service.forget_user(tonic::Request::new(body)).await)
        }
        Op::GetStats => {
            no_params(&params, &[])?;
            rpc_result(
                service
                    .get_stats(tonic::Request::new(proto::GetStatsRequest {}))
                    .await,
            )
        }
    };
    Ok(response)
}

/// A RecommendSimilar request from JSON, or from a multipart form with the
/// photo in an `image` part and the other fields in a `request` JSON part.
async fn similar_request(
    request: Request,
    limit: usize,
) -> Result<proto::RecommendSimilarRequest, Response> {
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if !multipart {
        return json_body(request.into_body(), limit).await;
    }
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|e| error(Code::InvalidArgument, &format!("multipart body: {e}")))?;
    let mut image: Option<Bytes> = None;
    let mut body = proto::RecommendSimilarRequest::default();
    let bad_part = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(limit)
        } else {
            error(Code::InvalidArgument, &format!("multipart body: {e}"))
        }
    };
    while let Some(field) = form.next_field().await.map_err(bad_part)? {
        match field.name() {
            Some("image") => image = Some(field.bytes().await.map_err(bad_part)?),
            Some("request") => {
                let text = field.bytes().await.map_err(bad_part)?;
                body = serde_json::from_slice(&text).map_err(|e| {
                    error(
                        Code::InvalidArgument,
                        &format!("invalid JSON in the `request` part: {e}"),
                    )
                })?;
            }
            other => {
                return Err(error(
                    Code::InvalidArgument,
                    &format!(
                        "unknown multipart part {:?} (expected `image` and optionally `request`)",
                        other.unwrap_or("")
                    ),
                ));
            }
        }
    }
    let image = image.ok_or_else(|| {
        error(
            Code::InvalidArgument,
            "multipart body without an `image` part",
        )
    })?;
    if body.query.is_some() {
        return Err(error(
            Code::InvalidArgument,
            "with an uploaded image the `request` part must not set productId, image or embedding",
        ));
    }
    body.query = Some(proto::recommend_similar_request::Query::Image(image));
    Ok(body)
}

/// How long a client may reuse a thumbnail without asking again; after
/// that it revalidates with its ETag (a 304 costs no image bytes). Short,
/// because a product re-added with another photo gets another thumbnail
/// under the same URL.
const THUMBNAIL_MAX_AGE: &str = "private, max-age=300";

fn thumbnail_response(jpeg: Vec<u8>, if_none_match: Option<&HeaderValue>) -> Response {
    let etag = format!("\"{:08x}-{:x}\"", crc32fast::hash(&jpeg), jpeg.len());
    let headers = [
        (header::ETAG, etag.clone()),
        (header::CACHE_CONTROL, THUMBNAIL_MAX_AGE.to_owned()),
    ];
    let matches = if_none_match
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (
        StatusCode::OK,
        headers,
        [(header::CONTENT_TYPE, "image/jpeg".to_owned())],
        jpeg,
    )
        .into_response()
}

async fn openapi() -> Response {
    match super::openapi::document() {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot build the OpenAPI document");
            error(Code::Internal, "internal error")
        }
    }
}

/// The page's files, embedded so the binary serves it offline, with no
/// CDN and nothing to install beside it.
const PAGE_HTML: &str = include_str!("../../ui/index.html");
const PAGE_JS: &str = include_str!("../../ui/app.js");
const PAGE_CSS: &str = include_str!("../../ui/app.css");
/// Everything the page loads comes from this server; thumbnails may be
/// `blob:` URLs (fetched with a token) and the favicon a `data:` URL.
const PAGE_CSP: &str = "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn page_html() -> Response {
    asset("text/html; charset=utf-8", PAGE_HTML)
}

async fn page_js() -> Response {
    asset("text/javascript; charset=utf-8", PAGE_JS)
}

async fn page_css() -> Response {
    asset("text/css; charset=utf-8", PAGE_CSS)
}

/// JSON 404 for paths no route matches.
pub(crate) async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    error(
        Code::NotFound,
        &format!("no route for {method} {}; see /openapi.json", uri.path()),
    )
}

/// Routes grouped by path (for the OpenAPI document).
pub(crate) fn routes_by_path() -> BTreeMap<&'static str, Vec<&'static Route>> {
    let mut by_path: BTreeMap<&'static str, Vec<&'static Route>> = BTreeMap::new();
    for route in ROUTES {
        by_path.entry(route.path).or_default().push(route);
    }
    by_path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_an_http_status_and_a_name() {
        for value in 0..=16 {
            let code = Code::from(value);
            assert_eq!(code as i32, value);
            let name = code_name(code);
            assert_eq!(name, name.to_uppercase());
            let http = http_status(code);
            assert!(code == Code::Ok || http.as_u16() >= 400, "{name} -> {http}");
        }
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(
            http_status(Code::ResourceExhausted),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn routes_are_unique_and_name_real_rpcs() {
        let mut seen = std::collections::HashSet::new();
        for route in ROUTES {
            assert!(seen.insert((route.method, route.path)), "{route:?} twice");
            assert!(
                super::super::auth::is_classified(&format!("{SERVICE_PATH}{}", route.rpc)),
                "{route:?} maps to an RPC the token rules do not know"
            );
        }
    }

    #[test]
    fn list_parameters_become_a_filter() {
        let params = vec![
            ("pageSize".to_owned(), "5".to_owned()),
            ("must".to_owned(), "articleType:Tshirts".to_owned()),
            ("must".to_owned(), "articleType:Shirts".to_owned()),
            ("must".to_owned(), "gender:Men".to_owned()),
            ("mustNot".to_owned(), "baseColour:Black".to_owned()),
            ("view".to_owned(), "PRODUCT_VIEW_FULL".to_owned()),
        ];
        let request = list_request(params).unwrap();
        assert_eq!(request.page_size, 5);
        assert_eq!(request.view, proto::ProductView::Full as i32);
        let filter = request.filter.unwrap();
        assert_eq!(filter.must.len(), 2);
        assert_eq!(filter.must[0].values, ["Tshirts", "Shirts"]);
        assert_eq!(filter.must_not[0].key, "baseColour");
        for bad in [
            ("pageSize", "-1"),
            ("must", "novalue"),
            ("colour", "x"),
            ("view", "ALL"),
        ] {
            let params = vec![(bad.0.to_owned(), bad.1.to_owned())];
            let response = list_request(params).unwrap_err();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }

    #[test]
    fn thumbnails_revalidate_by_etag() {
        let first = thumbnail_response(b"jpeg".to_vec(), None);
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[header::ETAG].clone();
        assert!(
            first.headers()[header::CACHE_CONTROL]
                .to_str()
                .unwrap()
                .contains("max-age")
        );
        let again = thumbnail_response(b"jpeg".to_vec(), Some(&etag));
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        let other = thumbnail_response(b"other".to_vec(), Some(&etag));
        assert_eq!(other.status(), StatusCode::OK, "another image, another tag");
    }
}
