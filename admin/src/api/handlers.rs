//! The admin API's handlers and request types. Each handler's
//! `#[utoipa::path]` is what the OpenAPI document is made of, and the same
//! annotation registers its route (see `super::router`), so the document
//! cannot drift from the routes.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::extract::{query, Body, Id, JsonRequest};
use super::{ApiResult, ErrorBody};
use crate::apps::{AppPatch, AppSummary, AppView, NewApp};
use crate::audit::{self, AuditEntry};
use crate::db::{self, Page};
use crate::devices::{self, DevicePatch, DeviceView, NewDevice};
use crate::error::AdminError;
use crate::groups::{GroupPatch, GroupView, NewGroup};
use crate::tenants::Caller;
use crate::validate;
use crate::Admin;

/// Page size when `limit` is not given.
const DEFAULT_LIMIT: i64 = 50;
/// Largest page.
const MAX_LIMIT: i64 = 200;

/// One page of a list, newest first.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct List<T> {
    items: Vec<T>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

fn list<T>((items, next_cursor): (Vec<T>, Option<String>)) -> Json<List<T>> {
    Json(List { items, next_cursor })
}

/// Paging and filtering of a list.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Rows per page, 1 to 200 (default 50).
    limit: Option<i64>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
    /// Only names containing this (compared after NFC, trimming and case
    /// folding).
    name: Option<String>,
}

fn limit(l: Option<i64>) -> Result<i64, AdminError> {
    match l {
        None => Ok(DEFAULT_LIMIT),
        Some(l) if (1..=MAX_LIMIT).contains(&l) => Ok(l),
        Some(_) => Err(AdminError::invalid(
            "limit",
            format!("must be 1 to {MAX_LIMIT}"),
        )),
    }
}

fn page(raw: Option<&str>) -> Result<Page, AdminError> {
    let q: ListQuery = query(raw)?;
    let after = q
        .cursor
        .filter(|c| !c.is_empty())
        .map(|c| {
            db::decode_cursor(&c)
                .ok_or_else(|| AdminError::invalid("cursor", "not a cursor from this API"))
        })
        .transpose()?;
    Ok(Page {
        limit: limit(q.limit)?,
        after,
        name_contains: q
            .name
            .filter(|n| !n.is_empty())
            .map(|n| validate::name_key(&n)),
    })
}

// --- devices ---

/// Register a device.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CreateDevice {
    /// 1 to 64 characters of `A-Z a-z 0-9 . _ -`, unique in the tenant.
    id: String,
    /// Display name: 1 to 100 characters, no control or invisible ones.
    name: String,
    /// Free-form JSON object, at most 16 KiB.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
}
impl JsonRequest for CreateDevice {}

/// Edit a device: omitted fields stay as they are.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct UpdateDevice {
    name: Option<String>,
    /// Replaces the whole metadata object.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
}
impl JsonRequest for UpdateDevice {
    const REFUSED: &'static [(&'static str, &'static str)] = &[
        ("id", "a device id cannot be changed"),
        ("enabled", "use POST /devices/{id}/enable or /disable"),
    ];
}

/// Creates a device; the response carries its ingest key, shown only here.
#[utoipa::path(post, path = "/devices", tag = "devices", request_body = CreateDevice,
    responses((status = 201, body = DeviceView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub(crate) async fn create_device(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Body(b): Body<CreateDevice>,
) -> ApiResult<(StatusCode, Json<DeviceView>)> {
    validate::id("id", &b.id)?;
    let name = validate::name("name", &b.name)?;
    let metadata = b
        .metadata
        .map(devices::metadata)
        .transpose()?
        .unwrap_or_else(|| Value::Object(Map::new()));
    let d = admin
        .create_device(
            &caller,
            NewDevice {
                id: b.id,
                name,
                metadata,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(d)))
}

/// Lists devices, newest first.
#[utoipa::path(get, path = "/devices", tag = "devices", params(ListQuery),
    responses((status = 200, body = List<DeviceView>), (status = 400, body = ErrorBody)))]
pub(crate) async fn list_devices(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<List<DeviceView>>> {
    Ok(list(
        admin
            .list_devices(&caller.tenant, &page(q.as_deref())?)
            .await?,
    ))
}

/// Shows a device (never its key).
#[utoipa::path(get, path = "/devices/{id}", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = DeviceView), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_device(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
) -> ApiResult<Json<DeviceView>> {
    Ok(Json(admin.get_device(&caller.tenant, &id).await?))
}

/// Edits a device's name and/or metadata.
#[utoipa::path(patch, path = "/devices/{id}", tag = "devices", params(("id" = String, Path)), request_body = UpdateDevice,
    responses((status = 200, body = DeviceView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub(crate) async fn update_device(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
    Body(b): Body<UpdateDevice>,
) -> ApiResult<Json<DeviceView>> {
    let patch = DevicePatch {
        name: b.name.map(|n| validate::name("name", &n)).transpose()?,
        metadata: b.metadata.map(devices::metadata).transpose()?,
    };
    Ok(Json(admin.update_device(&caller, &id, patch).await?))
}

/// Deletes a device; it also leaves every group and application.
#[utoipa::path(delete, path = "/devices/{id}", tag = "devices", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete_device(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
) -> ApiResult<StatusCode> {
    admin.delete_device(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replaces the device's ingest key (shown only in this response); the old
/// key stops working at once.
#[utoipa::path(post, path = "/devices/{id}/rotate-key", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = DeviceView), (status = 404, body = ErrorBody)))]
pub(crate) async fn rotate_device_key(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
) -> ApiResult<Json<DeviceView>> {
    Ok(Json(admin.rotate_device_key(&caller, &id).await?))
}

/// Disables a device: its QUIC sessions are refused.
#[utoipa::path(post, path = "/devices/{id}/disable", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = DeviceView), (status = 404, body = ErrorBody)))]
pub(crate) async fn disable_device(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
) -> ApiResult<Json<DeviceView>> {
    Ok(Json(admin.set_device_enabled(&caller, &id, false).await?))
}

/// Enables a device again.
#[utoipa::path(post, path = "/devices/{id}/enable", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = DeviceView), (status = 404, body = ErrorBody)))]
pub(crate) async fn enable_device(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
) -> ApiResult<Json<DeviceView>> {
    Ok(Json(admin.set_device_enabled(&caller, &id, true).await?))
}

// --- device groups ---

/// Create a device group.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CreateGroup {
    /// Optional id (same rules as device ids); generated if omitted.
    id: Option<String>,
    /// Unique in the tenant after NFC, trimming and case folding.
    name: String,
    /// Member device ids (same tenant).
    devices: Option<Vec<String>>,
}
impl JsonRequest for CreateGroup {}

/// Edit a group: omitted fields stay as they are.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct UpdateGroup {
    name: Option<String>,
    /// The full new member list.
    devices: Option<Vec<String>>,
}
impl JsonRequest for UpdateGroup {
    const REFUSED: &'static [(&'static str, &'static str)] =
        &[("id", "a group id cannot be changed")];
}

#[utoipa::path(post, path = "/device-groups", tag = "device-groups", request_body = CreateGroup,
    responses((status = 201, body = GroupView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub(crate) async fn create_group(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Body(b): Body<CreateGroup>,
) -> ApiResult<(StatusCode, Json<GroupView>)> {
    if let Some(id) = &b.id {
        validate::id("id", id)?;
    }
    let g = NewGroup {
        id: b.id,
        name: validate::name("name", &b.name)?,
        devices: validate::id_list("devices", b.devices.unwrap_or_default())?,
    };
    Ok((
        StatusCode::CREATED,
        Json(admin.create_group(&caller, g).await?),
    ))
}

#[utoipa::path(get, path = "/device-groups", tag = "device-groups", params(ListQuery),
    responses((status = 200, body = List<GroupView>), (status = 400, body = ErrorBody)))]
pub(crate) async fn list_groups(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<List<GroupView>>> {
    Ok(list(
        admin
            .list_groups(&caller.tenant, &page(q.as_deref())?)
            .await?,
    ))
}

#[utoipa::path(get, path = "/device-groups/{id}", tag = "device-groups", params(("id" = String, Path)),
    responses((status = 200, body = GroupView), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_group(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
) -> ApiResult<Json<GroupView>> {
    Ok(Json(admin.get_group(&caller.tenant, &id).await?))
}

/// Renames a group and/or replaces its members; applications naming the
/// group follow at once.
#[utoipa::path(patch, path = "/device-groups/{id}", tag = "device-groups", params(("id" = String, Path)), request_body = UpdateGroup,
    responses((status = 200, body = GroupView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub(crate) async fn update_group(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
    Body(b): Body<UpdateGroup>,
) -> ApiResult<Json<GroupView>> {
    let patch = GroupPatch {
        name: b.name.map(|n| validate::name("name", &n)).transpose()?,
        devices: b
            .devices
            .map(|d| validate::id_list("devices", d))
            .transpose()?,
    };
    Ok(Json(admin.update_group(&caller, &id, patch).await?))
}

#[utoipa::path(delete, path = "/device-groups/{id}", tag = "device-groups", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete_group(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
) -> ApiResult<StatusCode> {
    admin.delete_group(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// --- applications ---

/// Register an external application.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CreateApp {
    /// Unique in the tenant after NFC, trimming and case folding; 1 to 100
    /// characters, no control or invisible ones.
    name: String,
    /// RFC 3339 instant (any offset) in the future.
    #[schema(format = DateTime)]
    expires_at: String,
    /// Deliver anomaly events too (default false).
    include_anomalies: Option<bool>,
    /// Device ids of the same tenant.
    devices: Option<Vec<String>>,
    /// Device group ids of the same tenant.
    device_groups: Option<Vec<String>>,
}
impl JsonRequest for CreateApp {}

/// Edit an application: omitted fields stay as they are.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct UpdateApp {
    name: Option<String>,
    include_anomalies: Option<bool>,
    devices: Option<Vec<String>>,
    device_groups: Option<Vec<String>>,
}
impl JsonRequest for UpdateApp {
    const REFUSED: &'static [(&'static str, &'static str)] = &[
        (
            "expiresAt",
            "the expiry cannot be changed; create a new application",
        ),
        ("status", "use POST /applications/{id}/enable or /disable"),
        ("clientId", "the Client ID cannot be changed"),
        ("clientSecret", "use POST /applications/{id}/rotate-secret"),
    ];
}

/// Creates an application; the response carries the Client Secret, shown
/// only here.
#[utoipa::path(post, path = "/applications", tag = "applications", request_body = CreateApp,
    responses((status = 201, body = AppView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub(crate) async fn create_app(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Body(b): Body<CreateApp>,
) -> ApiResult<(StatusCode, Json<AppView>)> {
    let a = NewApp {
        name: validate::name("name", &b.name)?,
        expires_at_ms: validate::rfc3339_ms("expiresAt", &b.expires_at)?,
        include_anomalies: b.include_anomalies.unwrap_or(false),
        devices: validate::id_list("devices", b.devices.unwrap_or_default())?,
        groups: validate::id_list("deviceGroups", b.device_groups.unwrap_or_default())?,
    };
    Ok((
        StatusCode::CREATED,
        Json(admin.create_app(&caller, a).await?),
    ))
}

#[utoipa::path(get, path = "/applications", tag = "applications", params(ListQuery),
    responses((status = 200, body = List<AppSummary>), (status = 400, body = ErrorBody)))]
pub(crate) async fn list_apps(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<List<AppSummary>>> {
    Ok(list(
        admin
            .list_apps(&caller.tenant, &page(q.as_deref())?)
            .await?,
    ))
}

/// Every configured property; never the secret.
#[utoipa::path(get, path = "/applications/{id}", tag = "applications", params(("id" = String, Path)),
    responses((status = 200, body = AppView), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_app(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
) -> ApiResult<Json<AppView>> {
    Ok(Json(admin.get_app(&caller.tenant, &id).await?))
}

/// Edits name, anomalies, devices and/or groups; open streams follow at once.
#[utoipa::path(patch, path = "/applications/{id}", tag = "applications", params(("id" = String, Path)), request_body = UpdateApp,
    responses((status = 200, body = AppView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub(crate) async fn update_app(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
    Body(b): Body<UpdateApp>,
) -> ApiResult<Json<AppView>> {
    let p = AppPatch {
        name: b.name.map(|n| validate::name("name", &n)).transpose()?,
        include_anomalies: b.include_anomalies,
        devices: b
            .devices
            .map(|d| validate::id_list("devices", d))
            .transpose()?,
        groups: b
            .device_groups
            .map(|g| validate::id_list("deviceGroups", g))
            .transpose()?,
    };
    Ok(Json(admin.update_app(&caller, &id, p).await?))
}

/// Deletes the application and its credentials; its tokens stop working.
#[utoipa::path(delete, path = "/applications/{id}", tag = "applications", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete_app(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
) -> ApiResult<StatusCode> {
    admin.delete_app(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// New Client Secret (shown only here); the old secret and every access
/// token issued under it stop working at once.
#[utoipa::path(post, path = "/applications/{id}/rotate-secret", tag = "applications", params(("id" = String, Path)),
    responses((status = 200, body = AppView), (status = 404, body = ErrorBody)))]
pub(crate) async fn rotate_app_secret(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
) -> ApiResult<Json<AppView>> {
    Ok(Json(admin.rotate_app_secret(&caller, &id).await?))
}

/// Disables the application: no tokens, and its tokens stop working.
#[utoipa::path(post, path = "/applications/{id}/disable", tag = "applications", params(("id" = String, Path)),
    responses((status = 200, body = AppView), (status = 404, body = ErrorBody)))]
pub(crate) async fn disable_app(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
) -> ApiResult<Json<AppView>> {
    Ok(Json(admin.set_app_enabled(&caller, &id, false).await?))
}

/// Enables the application again (tokens issued before still carry the
/// current secret generation, so they work again until they expire).
#[utoipa::path(post, path = "/applications/{id}/enable", tag = "applications", params(("id" = String, Path)),
    responses((status = 200, body = AppView), (status = 404, body = ErrorBody)))]
pub(crate) async fn enable_app(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Id(id): Id,
) -> ApiResult<Json<AppView>> {
    Ok(Json(admin.set_app_enabled(&caller, &id, true).await?))
}

// --- audit ---

/// Filters of the audit log; all optional, combined with AND.
#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    /// Rows per page, 1 to 200 (default 50).
    limit: Option<i64>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
    /// Exact action, e.g. `application.rotate_secret`, `token.refuse`.
    action: Option<String>,
    /// Exact actor, e.g. `admin-key:<id>` or `client:<client id>`.
    actor: Option<String>,
    /// `application`, `device`, `device_group`, `admin_key`, …
    #[param(rename = "targetType")]
    target_type: Option<String>,
    /// The object's id.
    #[param(rename = "targetId")]
    target_id: Option<String>,
    /// RFC 3339; entries at or after.
    since: Option<String>,
    /// RFC 3339; entries before.
    until: Option<String>,
}

/// The tenant's audit log, newest first.
#[utoipa::path(get, path = "/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = List<AuditEntry>), (status = 400, body = ErrorBody)))]
pub(crate) async fn list_audit(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<List<AuditEntry>>> {
    let q: AuditQuery = query(q.as_deref())?;
    let time = |n: &str, v: Option<String>| {
        v.filter(|t| !t.is_empty())
            .map(|t| validate::rfc3339_ms(n, &t))
            .transpose()
    };
    let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
    let f = audit::Filter {
        since_ms: time("since", q.since)?,
        until_ms: time("until", q.until)?,
        action: nonempty(q.action),
        actor: nonempty(q.actor),
        target_type: nonempty(q.target_type),
        target_id: nonempty(q.target_id),
        // Audit cursors are entry ids (UUIDs): anything else could only
        // compare as some arbitrary position in the log.
        cursor: nonempty(q.cursor)
            .map(|c| match uuid::Uuid::parse_str(&c) {
                Ok(id) if id.hyphenated().to_string() == c => Ok(c),
                _ => Err(AdminError::invalid("cursor", "not a cursor from this API")),
            })
            .transpose()?,
        limit: limit(q.limit)?,
    };
    Ok(list(admin.audit(&caller.tenant, &f).await?))
}
