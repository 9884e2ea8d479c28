//! Admin CRUD of the caller's account: its dialing permissions and call limits, users,
//! devices, numbers, trunks, and a user's registrations. Passwords are write-only; another
//! account's objects are 404; shared trunks are visible and read-only.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use store::{Account, Number, NumberType, Secret, StoreError, Transport, Trunk, TypeId, User};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::http::{BearerAccount, Json};
use crate::routes::calls::ErrorBody;
use crate::schemas::{
    DialPrefix, E164Number, E164Prefix, Extension, Host, HostPort, Name, NumberTypeName, Password,
    Region, SipUsername, TrunkName, TrunkSrtp, TrunkTransport, UserId,
};
use crate::state::Shared;
use crate::time::now_ms;
use crate::views;

/// Store errors of write methods as API errors.
fn write_err(e: StoreError) -> ApiError {
    match e {
        StoreError::Invalid { field, reason } => {
            ApiError::bad_request("invalid_field", format!("{field}: {reason}"))
        }
        StoreError::AlreadyExists { kind, id } => ApiError::Conflict {
            code: "already_exists",
            message: format!("{kind} {id:?} already exists"),
        },
        StoreError::NotFound { kind, id } => {
            ApiError::unprocessable("reference_not_found", format!("{kind} {id:?} not found"))
        }
        other => ApiError::Store(other),
    }
}

/// `Some(None)` for an explicit `null`, `None` when the field is absent.
fn double_option<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

// ----- the account ---------------------------------------------------------------------------

/// `PATCH /v1/account` body: the dialing permissions; absent = unchanged.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAccount {
    /// ISO 3166-1 alpha-2 codes of the countries whose numbers may be dialled.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Region>>, max_items = 300)]
    pub allowed_countries: Option<Vec<String>>,
    /// Number types that may not be dialled: `fixed_line`, `mobile`,
    /// `fixed_line_or_mobile`, `toll_free`, `premium_rate`, `shared_cost`, `voip`,
    /// `personal_number`, `pager`, `uan`, `voicemail`, `unknown`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<NumberTypeName>>, max_items = 12)]
    pub blocked_number_types: Option<Vec<String>>,
    /// E.164 prefixes (`+1`, `+44`); `["+"]` allows every prefix.
    #[serde(default)]
    #[schema(value_type = Option<Vec<E164Prefix>>, max_items = 1000)]
    pub allowed_prefixes: Option<Vec<String>>,
}

/// The caller's account and its dialing permissions.
#[utoipa::path(get, path = "/v1/account", tag = "admin",
    responses((status = 200, description = "{\"id\",\"name\",\"region\",\"allowed_countries\",\"blocked_number_types\",\"allowed_prefixes\"}", body = Object),
              (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_account(BearerAccount(account): BearerAccount) -> axum::Json<Value> {
    axum::Json(views::account(&account))
}

/// Changes the caller's dialing permissions. The `[[accounts]]` table of the configuration
/// is applied again at each start, so an account declared there gets its configured values
/// back then.
#[utoipa::path(patch, path = "/v1/account", tag = "admin", request_body = UpdateAccount,
    responses((status = 200, body = Object), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_account(
    State(shared): State<Arc<Shared>>,
    BearerAccount(mut account): BearerAccount,
    Json(req): Json<UpdateAccount>,
) -> Result<axum::Json<Value>, ApiError> {
    let invalid = |message: String| ApiError::bad_request("invalid_field", message);
    if let Some(countries) = req.allowed_countries {
        let mut list = Vec::with_capacity(countries.len());
        for (i, c) in countries.iter().enumerate() {
            let upper = c.trim().to_ascii_uppercase();
            if !store::provision::is_iso3166_alpha2(&upper)
                || !b2bua::numbering::is_known_region(&upper)
            {
                return Err(invalid(format!(
                    "allowed_countries[{i}]: {c:?} is not an ISO 3166-1 alpha-2 code of a country with telephone numbers"
                )));
            }
            if !list.contains(&upper) {
                list.push(upper);
            }
        }
        account.allowed_countries = list;
    }
    if let Some(types) = req.blocked_number_types {
        let mut list: Vec<NumberType> = Vec::with_capacity(types.len());
        for (i, t) in types.iter().enumerate() {
            let t: NumberType = t
                .parse()
                .map_err(|e| invalid(format!("blocked_number_types[{i}]: {e}")))?;
            if !list.contains(&t) {
                list.push(t);
            }
        }
        account.blocked_number_types = list;
    }
    if let Some(prefixes) = req.allowed_prefixes {
        if let Some((i, p)) = prefixes
            .iter()
            .enumerate()
            .find(|(_, p)| !store::e164::is_e164_prefix(p))
        {
            return Err(invalid(format!(
                "allowed_prefixes[{i}]: {p:?} is not an E.164 prefix (\"+\" then up to 15 digits)"
            )));
        }
        account.allowed_prefixes = prefixes;
    }
    shared
        .store
        .update_account(&account)
        .await
        .map_err(write_err)?;
    tracing::info!(account = %account.id, "dialing permissions changed");
    Ok(axum::Json(views::account(&account)))
}

const USER_NOT_FOUND: ApiError = ApiError::NotFound {
    code: "user_not_found",
    message: "User not found",
};

async fn own_user(shared: &Shared, account: &Account, id: &str) -> Result<User, ApiError> {
    shared
        .store
        .user(id)
        .await?
        .filter(|u| u.account_id == account.id)
        .ok_or(USER_NOT_FOUND)
}

async fn user_view(shared: &Shared, u: &User) -> Result<Value, ApiError> {
    let devices = shared.store.devices_for_user(&u.id).await?;
    Ok(views::user(u, &devices))
}

/// A device given with a new user.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    #[schema(value_type = SipUsername)]
    pub username: String,
    /// Write-only.
    #[schema(value_type = Password)]
    pub password: String,
}

/// `POST /v1/users` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Generated when absent.
    #[serde(default)]
    #[schema(value_type = Option<UserId>)]
    pub id: Option<String>,
    #[schema(value_type = Name)]
    pub name: String,
    #[serde(default)]
    #[schema(value_type = Option<Extension>)]
    pub extension: Option<String>,
    /// The numeric id the JustCall-style endpoint knows the agent by.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 9007199254740991_i64)]
    pub agent_id: Option<i64>,
    #[serde(default)]
    #[schema(max_items = 100)]
    pub devices: Vec<NewDevice>,
}

/// `PATCH /v1/users/{user_id}` body: absent = unchanged, `null` = cleared.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    #[serde(default)]
    #[schema(value_type = Option<Name>)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Extension>)]
    pub extension: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 9007199254740991_i64)]
    pub agent_id: Option<Option<i64>>,
}

/// The account's users.
#[utoipa::path(get, path = "/v1/users", tag = "admin",
    responses((status = 200, body = Object), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_users(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
) -> Result<axum::Json<Value>, ApiError> {
    let users = shared.store.users_for_account(&account.id).await?;
    let mut data = Vec::with_capacity(users.len());
    for u in &users {
        data.push(user_view(&shared, u).await?);
    }
    Ok(axum::Json(json!({ "data": data })))
}

/// Creates a user (and its devices).
#[utoipa::path(post, path = "/v1/users", tag = "admin", request_body = CreateUser,
    responses((status = 201, body = Object), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_user(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
    Json(req): Json<CreateUser>,
) -> Result<Response, ApiError> {
    let id = match req.id {
        Some(id) => {
            TypeId::parse_with_prefix(&id, store::provision::USER_PREFIX)
                .map_err(|_| ApiError::bad_request("invalid_user_id", "Invalid user_id format"))?;
            id
        }
        None => TypeId::new(store::provision::USER_PREFIX).to_string(),
    };
    if req.name.trim().is_empty() {
        return Err(ApiError::bad_request("missing_name", "name is required"));
    }
    let user = User {
        id,
        account_id: account.id.clone(),
        name: req.name,
        extension: req.extension,
        agent_id: req.agent_id,
    };
    shared.store.create_user(&user).await.map_err(write_err)?;
    for d in &req.devices {
        if let Err(e) = shared
            .store
            .create_device(
                &user.id,
                &d.username,
                &Secret::new(d.password.clone()),
                &shared.cfg.realm,
            )
            .await
        {
            let _ = shared.store.delete_user(&account.id, &user.id).await;
            return Err(write_err(e));
        }
    }
    Ok((
        StatusCode::CREATED,
        axum::Json(user_view(&shared, &user).await?),
    )
        .into_response())
}

/// One user.
#[utoipa::path(get, path = "/v1/users/{user_id}", tag = "admin",
    params(("user_id" = UserId, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_user(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
    Path(user_id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let u = own_user(&shared, &account, &user_id).await?;
    Ok(axum::Json(user_view(&shared, &u).await?))
}

/// Changes a user's name, extension or agent id.
#[utoipa::path(patch, path = "/v1/users/{user_id}", tag = "admin", request_body = UpdateUser,
    params(("user_id" = UserId, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_user(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
    Path(user_id): Path<String>,
    Json(req): Json<UpdateUser>,
) -> Result<axum::Json<Value>, ApiError> {
    let mut u = own_user(&shared, &account, &user_id).await?;
    if let Some(name) = req.name {
        if name.trim().is_empty() {
            return Err(ApiError::bad_request(
                "missing_name",
                "name must not be empty",
            ));
        }
        u.name = name;
    }
    if let Some(ext) = req.extension {
        u.extension = ext;
    }
    if let Some(agent) = req.agent_id {
        u.agent_id = agent;
    }
    shared.store.update_user(&u).await.map_err(write_err)?;
    Ok(axum::Json(user_view(&shared, &u).await?))
}

/// Deletes a user with its devices and their registrations.
#[utoipa::path(delete, path = "/v1/users/{user_id}", tag = "admin",
    params(("user_id" = UserId, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_user(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
    Path(user_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if shared.store.delete_user(&account.id, &user_id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(USER_NOT_FOUND)
    }
}

/// A user's devices.
#[utoipa::path(get, path = "/v1/users/{user_id}/devices", tag = "admin",
    params(("user_id" = UserId, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_devices(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
    Path(user_id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let u = own_user(&shared, &account, &user_id).await?;
    let devices = shared.store.devices_for_user(&u.id).await?;
    Ok(axum::Json(
        json!({"data": devices.iter().map(views::device).collect::<Vec<_>>()}),
    ))
}

/// Adds a device to a user.
#[utoipa::path(post, path = "/v1/users/{user_id}/devices", tag = "admin", request_body = NewDevice,
    params(("user_id" = UserId, Path)),
    responses((status = 201, body = Object), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_device(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
    Path(user_id): Path<String>,
    Json(req): Json<NewDevice>,
) -> Result<Response, ApiError> {
    let u = own_user(&shared, &account, &user_id).await?;
    let d = shared
        .store
        .create_device(
            &u.id,
            &req.username,
            &Secret::new(req.password),
            &shared.cfg.realm,
        )
        .await
        .map_err(write_err)?;
    Ok((StatusCode::CREATED, axum::Json(views::device(&d))).into_response())
}

/// `PATCH /v1/devices/{username}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    /// Write-only.
    #[schema(value_type = Password)]
    pub password: String,
}

const DEVICE_NOT_FOUND: ApiError = ApiError::NotFound {
    code: "device_not_found",
    message: "Device not found",
};

async fn own_device(shared: &Shared, account: &Account, username: &str) -> Result<(), ApiError> {
    let d = shared
        .store
        .device_by_username(username)
        .await?
        .ok_or(DEVICE_NOT_FOUND)?;
    own_user(shared, account, &d.user_id)
        .await
        .map_err(|_| DEVICE_NOT_FOUND)?;
    Ok(())
}

/// Changes a device's password.
#[utoipa::path(patch, path = "/v1/devices/{username}", tag = "admin", request_body = ChangePassword,
    params(("username" = SipUsername, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_device(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
    Path(username): Path<String>,
    Json(req): Json<ChangePassword>,
) -> Result<axum::Json<Value>, ApiError> {
    own_device(&shared, &account, &username).await?;
    let d = shared
        .store
        .set_device_password(&username, &Secret::new(req.password), &shared.cfg.realm)
        .await
        .map_err(write_err)?;
    Ok(axum::Json(views::device(&d)))
}

/// Deletes a device and its registrations.
#[utoipa::path(delete, path = "/v1/devices/{username}", tag = "admin",
    params(("username" = SipUsername, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_device(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
    Path(username): Path<String>,
) -> Result<StatusCode, ApiError> {
    own_device(&shared, &account, &username).await?;
    shared.store.delete_device(&username).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The user's registration bindings in force.
#[utoipa::path(get, path = "/v1/users/{user_id}/registrations", tag = "admin",
    params(("user_id" = UserId, Path)),
    responses((status = 200, description = "{\"data\": [{device, contact, source, transport, expires_at, expires_in, user_agent}]}", body = Object),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn registrations(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
    Path(user_id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let u = own_user(&shared, &account, &user_id).await?;
    let now = now_ms() / 1000;
    let bindings = shared.store.bindings_for_user(&u.id, now).await?;
    Ok(axum::Json(json!({
        "data": bindings.iter().map(|b| views::binding(b, now)).collect::<Vec<_>>()
    })))
}

// ----- numbers ------------------------------------------------------------------------------

/// `POST /v1/numbers` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNumber {
    #[schema(value_type = E164Number)]
    pub number: String,
    /// The default agent.
    #[serde(default)]
    #[schema(value_type = Option<UserId>)]
    pub owner: Option<String>,
}

/// `PATCH /v1/numbers/{number}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateNumber {
    /// The default agent; `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<UserId>)]
    pub owner: Option<Option<String>>,
}

const NUMBER_NOT_FOUND: ApiError = ApiError::NotFound {
    code: "number_not_found",
    message: "Number not found",
};

async fn check_owner(
    shared: &Shared,
    account: &Account,
    owner: Option<&str>,
) -> Result<(), ApiError> {
    if let Some(o) = owner {
        own_user(shared, account, o).await.map_err(|_| {
            ApiError::unprocessable("owner_not_found", "owner is not a user of this account")
        })?;
    }
    Ok(())
}

/// The account's numbers.
#[utoipa::path(get, path = "/v1/numbers", tag = "admin",
    responses((status = 200, body = Object), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_numbers(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
) -> Result<axum::Json<Value>, ApiError> {
    let numbers = shared.store.numbers_for_account(&account.id).await?;
    Ok(axum::Json(
        json!({"data": numbers.iter().map(views::number).collect::<Vec<_>>()}),
    ))
}

/// Adds a number to the account.
#[utoipa::path(post, path = "/v1/numbers", tag = "admin", request_body = CreateNumber,
    responses((status = 201, body = Object), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_number(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
    Json(req): Json<CreateNumber>,
) -> Result<Response, ApiError> {
    if !store::e164::is_e164(&req.number) {
        return Err(ApiError::bad_request(
            "invalid_number",
            "number must be in E.164 form (+ and 7 to 15 digits)",
        ));
    }
    check_owner(&shared, &account, req.owner.as_deref()).await?;
    let n = Number {
        number: req.number,
        account_id: account.id.clone(),
        owner_user_id: req.owner,
    };
    shared.store.create_number(&n).await.map_err(write_err)?;
    Ok((StatusCode::CREATED, axum::Json(views::number(&n))).into_response())
}

async fn own_number(shared: &Shared, account: &Account, number: &str) -> Result<Number, ApiError> {
    shared
        .store
        .number(number)
        .await?
        .filter(|n| n.account_id == account.id)
        .ok_or(NUMBER_NOT_FOUND)
}

/// One number.
#[utoipa::path(get, path = "/v1/numbers/{number}", tag = "admin",
    params(("number" = E164Number, Path, description = "`+` written as %2B or as is")),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_number(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
    Path(number): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(views::number(
        &own_number(&shared, &account, &number).await?,
    )))
}

/// Changes a number's owner.
#[utoipa::path(patch, path = "/v1/numbers/{number}", tag = "admin", request_body = UpdateNumber,
    params(("number" = E164Number, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_number(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
    Path(number): Path<String>,
    Json(req): Json<UpdateNumber>,
) -> Result<axum::Json<Value>, ApiError> {
    let mut n = own_number(&shared, &account, &number).await?;
    if let Some(owner) = req.owner {
        check_owner(&shared, &account, owner.as_deref()).await?;
        n.owner_user_id = owner;
    }
    shared.store.update_number(&n).await.map_err(write_err)?;
    Ok(axum::Json(views::number(&n)))
}

/// Removes a number from the account.
#[utoipa::path(delete, path = "/v1/numbers/{number}", tag = "admin",
    params(("number" = E164Number, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_number(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
    Path(number): Path<String>,
) -> Result<StatusCode, ApiError> {
    if shared.store.delete_number(&account.id, &number).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(NUMBER_NOT_FOUND)
    }
}

// ----- trunks -------------------------------------------------------------------------------

/// `POST /v1/trunks` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTrunk {
    #[schema(value_type = TrunkName)]
    pub name: String,
    #[schema(value_type = HostPort)]
    pub address: String,
    /// `udp` when absent.
    #[serde(default)]
    #[schema(value_type = Option<TrunkTransport>)]
    pub transport: Option<String>,
    /// `none` when absent; `sdes` needs `transport` `tls`.
    #[serde(default)]
    #[schema(value_type = Option<TrunkSrtp>)]
    pub srtp: Option<String>,
    /// Digest user name when the carrier challenges; requires `password`.
    #[serde(default)]
    #[schema(value_type = String, required = false, min_length = 1, max_length = 128)]
    pub username: Option<String>,
    /// Write-only; requires `username`.
    #[serde(default)]
    #[schema(value_type = String, required = false, max_length = 128)]
    pub password: Option<String>,
    #[serde(default)]
    pub emergency: bool,
    #[serde(default)]
    #[schema(value_type = Option<DialPrefix>)]
    pub dial_prefix: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Host>)]
    pub from_domain: Option<String>,
    /// Failover order, lower first (default 10).
    #[serde(default)]
    pub priority: Option<u32>,
    /// A target silent this long is given up for the next (default 2000).
    #[serde(default)]
    #[schema(minimum = 100, maximum = 60000)]
    pub invite_timeout_ms: Option<u32>,
    /// Final responses after which the next target is tried (default 408, 500, 502, 503, 504).
    #[serde(default)]
    pub failover_codes: Option<Vec<u16>>,
    /// OPTIONS health checks every this many seconds; 0 = off (default).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 86400)]
    pub options_interval_secs: Option<u32>,
    /// Failed checks in a row before a target is down (default 3).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub down_after: Option<u32>,
    /// Answered checks in a row before a target is up again (default 2).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub up_after: Option<u32>,
    /// Calls through the trunk at once; absent = no cap.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_calls: Option<u32>,
    /// New calls per second through the trunk; absent = no cap.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub calls_per_second: Option<u32>,
}

/// `PATCH /v1/trunks/{name}` body: absent = unchanged, `null` = cleared.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTrunk {
    #[serde(default)]
    #[schema(value_type = Option<HostPort>)]
    pub address: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<TrunkTransport>)]
    pub transport: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<TrunkSrtp>)]
    pub srtp: Option<String>,
    /// A trunk has both a user name and a password, or neither (409 `credentials_incomplete`).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 128)]
    pub username: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, max_length = 128)]
    pub password: Option<Option<String>>,
    #[serde(default)]
    pub emergency: Option<bool>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<DialPrefix>)]
    pub dial_prefix: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Host>)]
    pub from_domain: Option<Option<String>>,
    /// Failover order, lower first (default 10).
    #[serde(default)]
    pub priority: Option<u32>,
    /// A target silent this long is given up for the next (default 2000).
    #[serde(default)]
    #[schema(minimum = 100, maximum = 60000)]
    pub invite_timeout_ms: Option<u32>,
    /// Final responses after which the next target is tried (default 408, 500, 502, 503, 504).
    #[serde(default)]
    pub failover_codes: Option<Vec<u16>>,
    /// OPTIONS health checks every this many seconds; 0 = off (default).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 86400)]
    pub options_interval_secs: Option<u32>,
    /// Failed checks in a row before a target is down (default 3).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub down_after: Option<u32>,
    /// Answered checks in a row before a target is up again (default 2).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub up_after: Option<u32>,
    /// `null` = no cap.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<u32>, minimum = 1)]
    pub max_calls: Option<Option<u32>>,
    /// `null` = no cap.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<u32>, minimum = 1)]
    pub calls_per_second: Option<Option<u32>>,
}

const TRUNK_NOT_FOUND: ApiError = ApiError::NotFound {
    code: "trunk_not_found",
    message: "Trunk not found",
};

fn transport(s: Option<&str>) -> Result<Option<Transport>, ApiError> {
    s.map(|t| {
        t.parse::<Transport>().map_err(|_| {
            ApiError::bad_request("invalid_transport", "transport must be udp, tcp or tls")
        })
    })
    .transpose()
}

/// SDES keys travel in the SDP, so a trunk with `srtp = "sdes"` must use TLS: a request
/// that is valid field by field but not as a whole is 422.
fn srtp_needs_tls(t: &Trunk) -> Result<(), ApiError> {
    if t.srtp == store::Srtp::Sdes && t.transport != store::Transport::Tls {
        return Err(ApiError::unprocessable(
            "srtp_needs_tls",
            "srtp sdes needs transport tls (the keys travel in the SDP)",
        ));
    }
    Ok(())
}

fn srtp(s: Option<&str>) -> Result<Option<store::Srtp>, ApiError> {
    s.map(|t| {
        t.parse::<store::Srtp>()
            .map_err(|_| ApiError::bad_request("invalid_srtp", "srtp must be none or sdes"))
    })
    .transpose()
}

/// The trunks the account can use: its own, then the shared ones.
#[utoipa::path(get, path = "/v1/trunks", tag = "admin",
    responses((status = 200, body = Object), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_trunks(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
) -> Result<axum::Json<Value>, ApiError> {
    let trunks = shared.store.trunks_for_account(&account.id).await?;
    Ok(axum::Json(
        json!({"data": trunks.iter().map(views::trunk).collect::<Vec<_>>()}),
    ))
}

/// Adds a trunk owned by the account.
#[utoipa::path(post, path = "/v1/trunks", tag = "admin", request_body = CreateTrunk,
    responses((status = 201, body = Object), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_trunk(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
    Json(req): Json<CreateTrunk>,
) -> Result<Response, ApiError> {
    let t = Trunk {
        name: req.name,
        account_id: Some(account.id.clone()),
        address: req.address,
        transport: transport(req.transport.as_deref())?.unwrap_or(Transport::Udp),
        username: req.username,
        password: req.password.map(Secret::new),
        emergency: req.emergency,
        dial_prefix: req.dial_prefix,
        from_domain: req.from_domain,
        routing: {
            let d = store::TrunkRouting::default();
            store::TrunkRouting {
                priority: req.priority.unwrap_or(d.priority),
                invite_timeout_ms: req.invite_timeout_ms.unwrap_or(d.invite_timeout_ms),
                failover_codes: req.failover_codes.unwrap_or(d.failover_codes),
                options_interval_secs: req.options_interval_secs.unwrap_or(0),
                down_after: req.down_after.unwrap_or(d.down_after),
                up_after: req.up_after.unwrap_or(d.up_after),
                max_calls: req.max_calls,
                calls_per_second: req.calls_per_second,
            }
        },
        srtp: srtp(req.srtp.as_deref())?.unwrap_or_default(),
    };
    srtp_needs_tls(&t)?;
    shared.store.create_trunk(&t).await.map_err(write_err)?;
    Ok((StatusCode::CREATED, axum::Json(views::trunk(&t))).into_response())
}

/// A trunk visible to the account; `own` requires it to be the account's (not shared).
async fn visible_trunk(
    shared: &Shared,
    account: &Account,
    name: &str,
    own: bool,
) -> Result<Trunk, ApiError> {
    let t = shared.store.trunk(name).await?.ok_or(TRUNK_NOT_FOUND)?;
    match t.account_id.as_deref() {
        Some(a) if a == account.id => Ok(t),
        Some(_) => Err(TRUNK_NOT_FOUND),
        None if own => Err(ApiError::Forbidden {
            code: "trunk_read_only",
            message: "Shared trunks are read-only",
        }),
        None => Ok(t),
    }
}

/// One trunk.
#[utoipa::path(get, path = "/v1/trunks/{name}", tag = "admin",
    params(("name" = TrunkName, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_trunk(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
    Path(name): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let t = visible_trunk(&shared, &account, &name, false).await?;
    let mut view = views::trunk(&t);
    // Its run-time state: `state` (up / down) and each target with its health.
    if let (Some(status), Some(obj)) =
        (shared.calls.trunk_status(&name).await, view.as_object_mut())
    {
        if let Some(s) = status.as_object() {
            for (k, v) in s {
                obj.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(axum::Json(view))
}

/// Changes one of the account's trunks.
#[utoipa::path(patch, path = "/v1/trunks/{name}", tag = "admin", request_body = UpdateTrunk,
    params(("name" = TrunkName, Path)),
    responses((status = 200, body = Object), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_trunk(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
    Path(name): Path<String>,
    Json(req): Json<UpdateTrunk>,
) -> Result<axum::Json<Value>, ApiError> {
    let mut t = visible_trunk(&shared, &account, &name, true).await?;
    if let Some(a) = req.address {
        t.address = a;
    }
    if let Some(tr) = transport(req.transport.as_deref())? {
        t.transport = tr;
    }
    if let Some(s) = srtp(req.srtp.as_deref())? {
        t.srtp = s;
    }
    if let Some(u) = req.username {
        t.username = u;
    }
    if let Some(p) = req.password {
        t.password = p.map(Secret::new);
    }
    if let Some(e) = req.emergency {
        t.emergency = e;
    }
    if let Some(d) = req.dial_prefix {
        t.dial_prefix = d;
    }
    if let Some(f) = req.from_domain {
        t.from_domain = f;
    }
    let r = &mut t.routing;
    if let Some(v) = req.priority {
        r.priority = v;
    }
    if let Some(v) = req.invite_timeout_ms {
        r.invite_timeout_ms = v;
    }
    if let Some(v) = req.failover_codes {
        r.failover_codes = v;
    }
    if let Some(v) = req.options_interval_secs {
        r.options_interval_secs = v;
    }
    if let Some(v) = req.down_after {
        r.down_after = v;
    }
    if let Some(v) = req.up_after {
        r.up_after = v;
    }
    if let Some(v) = req.max_calls {
        r.max_calls = v;
    }
    if let Some(v) = req.calls_per_second {
        r.calls_per_second = v;
    }
    if t.username.is_some() != t.password.is_some() {
        return Err(ApiError::Conflict {
            code: "credentials_incomplete",
            message: "A trunk has both a username and a password, or neither".to_owned(),
        });
    }
    srtp_needs_tls(&t)?;
    shared.store.update_trunk(&t).await.map_err(write_err)?;
    Ok(axum::Json(views::trunk(&t)))
}

/// Deletes one of the account's trunks.
#[utoipa::path(delete, path = "/v1/trunks/{name}", tag = "admin",
    params(("name" = TrunkName, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_trunk(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    visible_trunk(&shared, &account, &name, true).await?;
    shared.store.delete_trunk(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's account's call limits (SPEC §9.1).
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct Limits {
    /// Sustained calls per second (token bucket rate; may be fractional).
    pub calls_per_second: f64,
    /// Calls that may start at once after a quiet period.
    pub burst: u32,
    /// Calls in progress at the same time.
    pub max_concurrent: u32,
}

impl From<store::AccountLimits> for Limits {
    fn from(l: store::AccountLimits) -> Limits {
        Limits {
            calls_per_second: l.calls_per_second,
            burst: l.burst,
            max_concurrent: l.max_concurrent,
        }
    }
}

/// `PATCH /v1/account/limits` body: absent = unchanged.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateLimits {
    /// Above 0, at most 100000.
    #[serde(default)]
    #[schema(exclusive_minimum = 0, maximum = 100000)]
    pub calls_per_second: Option<f64>,
    /// At least 1.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 4294967295_u32)]
    pub burst: Option<u32>,
    /// At least 1.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 4294967295_u32)]
    pub max_concurrent: Option<u32>,
}

/// The account's call limits.
#[utoipa::path(get, path = "/v1/account/limits", tag = "admin",
    responses((status = 200, body = Limits), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_limits(BearerAccount(account): BearerAccount) -> axum::Json<Limits> {
    axum::Json(account.limits.into())
}

/// Changes the account's call limits; the next call is placed under them. Limits the
/// configuration file sets are applied again at the next start.
#[utoipa::path(patch, path = "/v1/account/limits", tag = "admin", request_body = UpdateLimits,
    responses((status = 200, body = Limits), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_limits(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
    Json(req): Json<UpdateLimits>,
) -> Result<axum::Json<Limits>, ApiError> {
    let mut limits = account.limits;
    if let Some(v) = req.calls_per_second {
        limits.calls_per_second = v;
    }
    if let Some(v) = req.burst {
        limits.burst = v;
    }
    if let Some(v) = req.max_concurrent {
        limits.max_concurrent = v;
    }
    if let Some((field, reason)) = limits.problems().into_iter().next() {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("{field}: {reason}"),
        ));
    }
    if !shared
        .store
        .set_account_limits(&account.id, &limits)
        .await
        .map_err(write_err)?
    {
        return Err(ApiError::NotFound {
            code: "account_not_found",
            message: "Account not found",
        });
    }
    tracing::info!(
        account_id = %account.id,
        calls_per_second = limits.calls_per_second,
        burst = limits.burst,
        max_concurrent = limits.max_concurrent,
        "account limits changed"
    );
    Ok(axum::Json(limits.into()))
}
