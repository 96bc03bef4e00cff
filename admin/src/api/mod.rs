//! The HTTP surface: routes, admin-key authentication, error bodies and the
//! OpenAPI document.
//!
//! Every error is JSON — `{"error", "message", "field"?}` — including a
//! malformed body, a wrong media type or a bad path, never a framework's
//! plain-text rejection (see [`extract`]). Unknown body fields and query
//! parameters are refused: a typo must not silently do nothing.
//!
//! The routes of the admin API and the token endpoint are registered from
//! their `#[utoipa::path]` annotations (`utoipa_axum::routes!`), so the
//! OpenAPI document served at `/api/v1/openapi.json` lists exactly the
//! routes that exist.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::SecurityRequirement;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::AdminError;
use crate::limiter::Key;
use crate::{token, Admin};

pub(crate) mod extract;
mod handlers;

use handlers::*;

/// Where the admin API lives.
const API_PREFIX: &str = "/api/v1";

#[derive(OpenApi)]
#[openapi(info(
    title = "SenseGate admin API",
    description = "Devices, device groups, external applications, audit log, and the OAuth2 token endpoint."
))]
struct ApiDoc;

pub(crate) fn router(admin: Admin) -> Router {
    let (router, doc) = routes_and_doc(admin.clone());
    let doc = Arc::new(doc.to_pretty_json().unwrap_or_default());
    router
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        doc.as_str().to_owned(),
                    )
                }
            }),
        )
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/openid-configuration", get(discovery))
        // Only the routes above: the broker's merged routes keep theirs.
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(axum::middleware::from_fn_with_state(
            admin.clone(),
            crate::metrics::track,
        ))
        .with_state(admin)
}

/// An unknown path under `/api/v1`.
async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: "no such API route; see /api/v1/openapi.json".into(),
        field: None,
    }
}

/// A known path with a method it does not have (axum adds `Allow`).
async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        message: "method not allowed on this route; see the Allow header".into(),
        field: None,
    }
}

/// The documented routes and their OpenAPI document.
fn routes_and_doc(admin: Admin) -> (Router<Admin>, utoipa::openapi::OpenApi) {
    let api = OpenApiRouter::new()
        .routes(routes!(list_devices, create_device))
        .routes(routes!(get_device, update_device, delete_device))
        .routes(routes!(rotate_device_key))
        .routes(routes!(disable_device))
        .routes(routes!(enable_device))
        .routes(routes!(list_groups, create_group))
        .routes(routes!(get_group, update_group, delete_group))
        .routes(routes!(list_apps, create_app))
        .routes(routes!(get_app, update_app, delete_app))
        .routes(routes!(rotate_app_secret))
        .routes(routes!(disable_app))
        .routes(routes!(enable_app))
        .routes(routes!(list_audit))
        .route_layer(middleware::from_fn_with_state(admin, require_admin_key))
        .fallback(not_found);
    let (schemas, paths, token_route) = routes!(token::endpoint);
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest(API_PREFIX, api)
        .routes((
            schemas,
            paths,
            token_route.fallback(token::method_not_allowed),
        ))
        .split_for_parts();
    secure(&mut doc);
    (router, doc)
}

/// Declares the security schemes and puts the admin key on every admin
/// operation.
fn secure(doc: &mut utoipa::openapi::OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "adminKey",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("An admin API key (`sensegate admin key create`)."))
                .build(),
        ),
    );
    components.add_security_scheme(
        "clientBasic",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Basic)
                .description(Some(
                    "Client ID and Client Secret, each form-encoded (RFC 6749 §2.3.1).",
                ))
                .build(),
        ),
    );
    for (path, item) in doc.paths.paths.iter_mut() {
        let scheme = if path.starts_with(API_PREFIX) {
            "adminKey"
        } else {
            "clientBasic"
        };
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.patch,
            &mut item.delete,
            &mut item.put,
        ]
        .into_iter()
        .flatten()
        {
            op.security = Some(vec![SecurityRequirement::new(scheme, Vec::<String>::new())]);
        }
    }
}

/// The body of every admin API error.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// `invalid_request`, `unauthorized`, `not_found`,
    /// `method_not_allowed`, `conflict`, `payload_too_large`,
    /// `unsupported_media_type` or `internal`.
    error: &'static str,
    /// What went wrong, for a human.
    message: String,
    /// The request field at fault, for `invalid_request`.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

/// An API error response.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_request",
            message: message.into(),
            field: None,
        }
    }

    /// `413`: the body is over the admin API's limit.
    fn payload_too_large(limit: usize) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "payload_too_large",
            message: format!("request body over {limit} bytes"),
            field: None,
        }
    }

    /// `408`: the body did not arrive in time.
    fn request_timeout() -> Self {
        ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            code: "request_timeout",
            message: extract::timed_out_message(),
            field: None,
        }
    }

    /// `429`: too many wrong admin keys from this address.
    fn too_many_failures() -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "too_many_requests",
            message: "too many invalid admin keys from this address; retry later".into(),
            field: None,
        }
    }

    /// `415`: the body is not JSON.
    fn unsupported_media_type() -> Self {
        ApiError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "unsupported_media_type",
            message: "Content-Type must be application/json".into(),
            field: None,
        }
    }

    fn unauthorized(message: &str) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            message: message.to_string(),
            field: None,
        }
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        let (status, code, message, field) = match e {
            AdminError::Invalid { field, message } => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                message,
                Some(field),
            ),
            AdminError::NotFound(what) => (
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} not found"),
                None,
            ),
            AdminError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m, None),
            other => {
                tracing::error!(error = %other, "admin request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error".to_string(),
                    None,
                )
            }
        };
        ApiError {
            status,
            code,
            message,
            field,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code,
            message: self.message,
            field: self.field,
        };
        let mut res = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Resolves `Authorization: Bearer <admin key>` to a [`Caller`]; marks every
/// API response `no-store` (some carry secrets).
async fn require_admin_key(State(admin): State<Admin>, mut req: Request, next: Next) -> Response {
    let key = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, k)| k.trim().to_string());
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return ApiError::unauthorized("missing admin key: send Authorization: Bearer <key>")
            .into_response();
    };
    // Wrong keys are throttled per peer address, like the token endpoint's
    // guesses (an operator-chosen bootstrap key may be short).
    let guesser = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| Key::AdminAddr(c.0.ip()));
    let limiter = &admin.inner.limiter;
    if let Some(retry_after) = guesser
        .as_ref()
        .and_then(|k| limiter.locked(std::slice::from_ref(k), Instant::now()))
    {
        let mut res = ApiError::too_many_failures().into_response();
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        return res;
    }
    let mut res = match admin.authenticate(&key).await {
        Ok(Some(caller)) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Ok(None) => {
            if let Some(k) = &guesser {
                limiter.failure(std::slice::from_ref(k), Instant::now());
            }
            ApiError::unauthorized("invalid or revoked admin key").into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    };
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

// --- discovery ---

async fn jwks(State(admin): State<Admin>) -> ApiResult<Response> {
    let mut res = Json(admin.jwks().await?).into_response();
    // Short: a rotated key must reach verifiers well within a token TTL.
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=60"),
    );
    Ok(res)
}

async fn discovery(State(admin): State<Admin>) -> Json<serde_json::Value> {
    Json(token::discovery(&admin.inner.cfg.issuer))
}
