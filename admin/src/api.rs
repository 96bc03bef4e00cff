//! The HTTP surface: routes, admin-key authentication, request parsing and
//! error bodies.
//!
//! Every error is JSON — `{"error", "message", "field"?}` — including a
//! malformed body, a wrong media type or a bad path, never a framework's
//! plain-text rejection. Request bodies are read into a JSON object and each
//! field is checked by hand so that a 400 names the field at fault; unknown
//! fields are refused (a typo must not silently do nothing).

use axum::extract::{FromRequest, FromRequestParts, Path, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::apps::{AppPatch, NewApp};
use crate::audit;
use crate::db::{self, Page};
use crate::devices::{self, DevicePatch, NewDevice};
use crate::error::AdminError;
use crate::groups::{GroupPatch, NewGroup};
use crate::tenants::Caller;
use crate::validate;
use crate::{token, Admin};

/// Largest admin request body.
const MAX_BODY: usize = 1024 * 1024;
/// Page size when `limit` is not given.
const DEFAULT_LIMIT: i64 = 50;
/// Largest page.
const MAX_LIMIT: i64 = 200;

pub(crate) fn router(admin: Admin) -> Router {
    let api = Router::new()
        .route("/devices", get(list_devices).post(create_device))
        .route(
            "/devices/{id}",
            get(get_device).patch(update_device).delete(delete_device),
        )
        .route("/devices/{id}/rotate-key", post(rotate_device_key))
        .route("/devices/{id}/disable", post(disable_device))
        .route("/devices/{id}/enable", post(enable_device))
        .route("/device-groups", get(list_groups).post(create_group))
        .route(
            "/device-groups/{id}",
            get(get_group).patch(update_group).delete(delete_group),
        )
        .route("/applications", get(list_apps).post(create_app))
        .route(
            "/applications/{id}",
            get(get_app).patch(update_app).delete(delete_app),
        )
        .route("/applications/{id}/rotate-secret", post(rotate_app_secret))
        .route("/applications/{id}/disable", post(disable_app))
        .route("/applications/{id}/enable", post(enable_app))
        .route("/audit", get(list_audit))
        .route_layer(middleware::from_fn_with_state(
            admin.clone(),
            require_admin_key,
        ));
    Router::new()
        .nest("/api/v1", api)
        .route(
            "/connect/token",
            post(token::endpoint).fallback(token::method_not_allowed),
        )
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/openid-configuration", get(discovery))
        .with_state(admin)
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
        let mut body = serde_json::json!({ "error": self.code, "message": self.message });
        if let Some(f) = self.field {
            body["field"] = Value::String(f);
        }
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
    let mut res = match admin.authenticate(&key).await {
        Ok(Some(caller)) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Ok(None) => ApiError::unauthorized("invalid or revoked admin key").into_response(),
        Err(e) => ApiError::from(e).into_response(),
    };
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// The `{id}` path segment, with a JSON error if it cannot be read.
struct Id(String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| Id(id))
            .map_err(|e| ApiError::bad_request(format!("bad path: {e}")))
    }
}

/// A JSON object request body, fields taken one by one.
struct Fields(Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for Fields {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            })
            .unwrap_or(false);
        if !json {
            return Err(ApiError::bad_request(
                "Content-Type must be application/json",
            ));
        }
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY)
            .await
            .map_err(|_| {
                ApiError::bad_request(format!("body over {MAX_BODY} bytes or unreadable"))
            })?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(m)) => Ok(Fields(m)),
            Ok(_) => Err(ApiError::bad_request("body must be a JSON object")),
            Err(e) => Err(ApiError::bad_request(format!("malformed JSON: {e}"))),
        }
    }
}

impl Fields {
    /// Refuses fields outside `allowed`; `why` explains known-but-refused
    /// ones.
    fn only(&self, allowed: &[&str], why: &[(&str, &str)]) -> Result<(), AdminError> {
        for k in self.0.keys() {
            if let Some((_, m)) = why.iter().find(|(f, _)| f == k) {
                return Err(AdminError::invalid(k, *m));
            }
            if !allowed.contains(&k.as_str()) {
                return Err(AdminError::invalid(k, "unknown field"));
            }
        }
        Ok(())
    }

    /// A field's value; `null` counts as absent.
    fn take(&mut self, f: &str) -> Option<Value> {
        self.0.remove(f).filter(|v| !v.is_null())
    }

    fn string(&mut self, f: &str) -> Result<Option<String>, AdminError> {
        match self.take(f) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(AdminError::invalid(f, "must be a string")),
        }
    }

    fn required(&mut self, f: &str) -> Result<String, AdminError> {
        self.string(f)?
            .ok_or_else(|| AdminError::invalid(f, "is required"))
    }

    fn name(&mut self, f: &str) -> Result<Option<validate::Name>, AdminError> {
        self.string(f)?.map(|n| validate::name(f, &n)).transpose()
    }

    fn boolean(&mut self, f: &str) -> Result<Option<bool>, AdminError> {
        match self.take(f) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(AdminError::invalid(f, "must be true or false")),
        }
    }

    fn ids(&mut self, f: &str) -> Result<Option<Vec<String>>, AdminError> {
        let Some(v) = self.take(f) else {
            return Ok(None);
        };
        let Value::Array(items) = v else {
            return Err(AdminError::invalid(f, "must be an array of ids"));
        };
        let ids = items
            .into_iter()
            .map(|i| match i {
                Value::String(s) => Ok(s),
                _ => Err(AdminError::invalid(f, "must be an array of ids")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        validate::id_list(f, ids).map(Some)
    }
}

/// Query parameters, each at most once, only the `allowed` ones.
fn query(raw: Option<String>, allowed: &[&str]) -> Result<Vec<(String, String)>, AdminError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if !allowed.contains(&k.as_ref()) {
            return Err(AdminError::invalid(&k, "unknown query parameter"));
        }
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(AdminError::invalid(&k, "repeated query parameter"));
        }
        out.push((k.into_owned(), v.into_owned()));
    }
    Ok(out)
}

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter()
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

fn limit(q: &[(String, String)]) -> Result<i64, AdminError> {
    match param(q, "limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| AdminError::invalid("limit", format!("must be 1 to {MAX_LIMIT}"))),
    }
}

/// `limit`, `cursor` and `name` (substring, compared after the same
/// normalisation as uniqueness).
fn page(raw: Option<String>) -> Result<Page, AdminError> {
    let q = query(raw, &["limit", "cursor", "name"])?;
    let after = param(&q, "cursor")
        .map(|c| {
            db::decode_cursor(c)
                .ok_or_else(|| AdminError::invalid("cursor", "not a cursor from this API"))
        })
        .transpose()?;
    Ok(Page {
        limit: limit(&q)?,
        after,
        name_contains: param(&q, "name").map(validate::name_key),
    })
}

/// A page of a list.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct List<T> {
    items: Vec<T>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

fn list<T>((items, next_cursor): (Vec<T>, Option<String>)) -> Json<List<T>> {
    Json(List { items, next_cursor })
}

// --- devices ---

async fn create_device(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    mut body: Fields,
) -> ApiResult<(StatusCode, Json<devices::DeviceView>)> {
    body.only(&["id", "name", "metadata"], &[])?;
    let id = body.required("id")?;
    validate::id("id", &id)?;
    let name = validate::name("name", &body.required("name")?)?;
    let metadata = body
        .take("metadata")
        .map(devices::metadata)
        .transpose()?
        .unwrap_or_else(|| Value::Object(Map::new()));
    let d = admin
        .create_device(&caller, NewDevice { id, name, metadata })
        .await?;
    Ok((StatusCode::CREATED, Json(d)))
}

async fn list_devices(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<List<devices::DeviceView>>> {
    Ok(list(admin.list_devices(&caller.tenant, &page(q)?).await?))
}

async fn get_device(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
) -> ApiResult<Json<devices::DeviceView>> {
    Ok(Json(admin.get_device(&caller.tenant, &id).await?))
}

async fn update_device(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
    mut body: Fields,
) -> ApiResult<Json<devices::DeviceView>> {
    body.only(
        &["name", "metadata"],
        &[("id", "a device id cannot be changed")],
    )?;
    let patch = DevicePatch {
        name: body.name("name")?,
        metadata: body.take("metadata").map(devices::metadata).transpose()?,
    };
    Ok(Json(admin.update_device(&caller, &id, patch).await?))
}

async fn delete_device(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
) -> ApiResult<StatusCode> {
    admin.delete_device(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn rotate_device_key(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
) -> ApiResult<Json<devices::DeviceView>> {
    Ok(Json(admin.rotate_device_key(&caller, &id).await?))
}

async fn disable_device(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
) -> ApiResult<Json<devices::DeviceView>> {
    Ok(Json(admin.set_device_enabled(&caller, &id, false).await?))
}

async fn enable_device(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
) -> ApiResult<Json<devices::DeviceView>> {
    Ok(Json(admin.set_device_enabled(&caller, &id, true).await?))
}

// --- device groups ---

async fn create_group(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    mut body: Fields,
) -> ApiResult<(StatusCode, Json<crate::groups::GroupView>)> {
    body.only(&["id", "name", "devices"], &[])?;
    let id = body.string("id")?;
    if let Some(id) = &id {
        validate::id("id", id)?;
    }
    let name = validate::name("name", &body.required("name")?)?;
    let devices = body.ids("devices")?.unwrap_or_default();
    let g = admin
        .create_group(&caller, NewGroup { id, name, devices })
        .await?;
    Ok((StatusCode::CREATED, Json(g)))
}

async fn list_groups(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<List<crate::groups::GroupView>>> {
    Ok(list(admin.list_groups(&caller.tenant, &page(q)?).await?))
}

async fn get_group(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
) -> ApiResult<Json<crate::groups::GroupView>> {
    Ok(Json(admin.get_group(&caller.tenant, &id).await?))
}

async fn update_group(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
    mut body: Fields,
) -> ApiResult<Json<crate::groups::GroupView>> {
    body.only(
        &["name", "devices"],
        &[("id", "a group id cannot be changed")],
    )?;
    let patch = GroupPatch {
        name: body.name("name")?,
        devices: body.ids("devices")?,
    };
    Ok(Json(admin.update_group(&caller, &id, patch).await?))
}

async fn delete_group(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
) -> ApiResult<StatusCode> {
    admin.delete_group(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// --- applications ---

async fn create_app(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    mut body: Fields,
) -> ApiResult<(StatusCode, Json<crate::apps::AppView>)> {
    body.only(
        &[
            "name",
            "expiresAt",
            "includeAnomalies",
            "devices",
            "deviceGroups",
        ],
        &[],
    )?;
    let name = validate::name("name", &body.required("name")?)?;
    let expires_at_ms = validate::rfc3339_ms("expiresAt", &body.required("expiresAt")?)?;
    let a = NewApp {
        name,
        expires_at_ms,
        include_anomalies: body.boolean("includeAnomalies")?.unwrap_or(false),
        devices: body.ids("devices")?.unwrap_or_default(),
        groups: body.ids("deviceGroups")?.unwrap_or_default(),
    };
    Ok((
        StatusCode::CREATED,
        Json(admin.create_app(&caller, a).await?),
    ))
}

async fn list_apps(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<List<crate::apps::AppSummary>>> {
    Ok(list(admin.list_apps(&caller.tenant, &page(q)?).await?))
}

async fn get_app(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
) -> ApiResult<Json<crate::apps::AppView>> {
    Ok(Json(admin.get_app(&caller.tenant, &id).await?))
}

async fn update_app(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
    mut body: Fields,
) -> ApiResult<Json<crate::apps::AppView>> {
    body.only(
        &["name", "includeAnomalies", "devices", "deviceGroups"],
        &[
            (
                "expiresAt",
                "the expiry cannot be changed; create a new application",
            ),
            ("status", "use POST /applications/{id}/enable or /disable"),
            ("clientId", "the Client ID cannot be changed"),
            ("clientSecret", "use POST /applications/{id}/rotate-secret"),
        ],
    )?;
    let p = AppPatch {
        name: body.name("name")?,
        include_anomalies: body.boolean("includeAnomalies")?,
        devices: body.ids("devices")?,
        groups: body.ids("deviceGroups")?,
    };
    Ok(Json(admin.update_app(&caller, &id, p).await?))
}

async fn delete_app(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
) -> ApiResult<StatusCode> {
    admin.delete_app(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn rotate_app_secret(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
) -> ApiResult<Json<crate::apps::AppView>> {
    Ok(Json(admin.rotate_app_secret(&caller, &id).await?))
}

async fn disable_app(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
) -> ApiResult<Json<crate::apps::AppView>> {
    Ok(Json(admin.set_app_enabled(&caller, &id, false).await?))
}

async fn enable_app(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
) -> ApiResult<Json<crate::apps::AppView>> {
    Ok(Json(admin.set_app_enabled(&caller, &id, true).await?))
}

// --- audit ---

async fn list_audit(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<List<audit::AuditEntry>>> {
    let q = query(
        q,
        &[
            "limit",
            "cursor",
            "action",
            "actor",
            "targetType",
            "targetId",
            "since",
            "until",
        ],
    )?;
    let own = |n: &str| param(&q, n).map(str::to_string);
    let time = |n: &str| param(&q, n).map(|t| validate::rfc3339_ms(n, t)).transpose();
    let f = audit::Filter {
        action: own("action"),
        actor: own("actor"),
        target_type: own("targetType"),
        target_id: own("targetId"),
        since_ms: time("since")?,
        until_ms: time("until")?,
        cursor: own("cursor"),
        limit: limit(&q)?,
    };
    Ok(list(admin.audit(&caller.tenant, &f).await?))
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

async fn discovery(State(admin): State<Admin>) -> Json<Value> {
    Json(token::discovery(&admin.inner.cfg.issuer))
}
