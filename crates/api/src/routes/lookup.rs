//! `GET /v1/lookup/{number}`: what a number is and whether the caller's account may dial it,
//! so that a CRM can check a number before it asks for a call (SPEC §9.9).

use axum::extract::Path;
use b2bua::dialplan::{self, Dialled};
use b2bua::numbering;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;
use crate::http::{BearerAccount, Query};
use crate::routes::calls::ErrorBody;
use crate::schemas::Region;

/// `?region=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LookupQuery {
    /// ISO 3166-1 alpha-2 region a national number is read in; default: the account's.
    #[serde(default)]
    #[param(value_type = Region, required = false)]
    pub region: Option<String>,
}

/// The answer to `GET /v1/lookup/{number}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Lookup {
    /// The number in E.164 form.
    pub e164: String,
    /// ISO 3166-1 alpha-2 country of the number (`+1 876…` is `JM`); `null` for
    /// international networks (`+800`) and numbers of no country.
    pub region: Option<String>,
    /// `fixed_line`, `mobile`, `fixed_line_or_mobile`, `toll_free`, `premium_rate`,
    /// `shared_cost`, `voip`, `personal_number`, `pager`, `uan`, `voicemail`, or `unknown`
    /// (invalid numbers).
    #[serde(rename = "type")]
    pub number_type: String,
    /// In a range of numbers in use, by libphonenumber's metadata.
    pub valid: bool,
    /// This account may dial it (`POST /v1/calls` would not refuse it with 422).
    pub allowed: bool,
    /// Why it is invalid or not allowed, as the call endpoints would say it; `null` when
    /// allowed.
    pub reason: Option<String>,
}

/// Parses, validates and classifies a number, and says whether this account may dial it.
#[utoipa::path(get, path = "/v1/lookup/{number}", tag = "calls",
    params(
        ("number" = String, Path, min_length = 1, max_length = 64, description = "E.164 (`+18765551234`), international (`011 44…`) or national (`(415) 555-1234`) form"),
        LookupQuery,
    ),
    responses(
        (status = 200, description = "{\"e164\",\"region\",\"type\",\"valid\",\"allowed\",\"reason\"}", body = Lookup),
        (status = 400, description = "region is not a known ISO 3166-1 alpha-2 code", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 422, description = "invalid_destination: not a telephone number (empty, bad characters, an extension, an emergency number)", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn lookup(
    BearerAccount(account): BearerAccount,
    Path(number): Path<String>,
    Query(q): Query<LookupQuery>,
) -> Result<axum::Json<Lookup>, ApiError> {
    let region = match q.region.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) => {
            let upper = r.to_ascii_uppercase();
            if !numbering::is_known_region(&upper) {
                return Err(ApiError::bad_request(
                    "invalid_region",
                    format!("region {r:?} is not an ISO 3166-1 alpha-2 code of a country with telephone numbers"),
                ));
            }
            upper
        }
        None => account.region.clone(),
    };
    let not_a_number = |why: String| ApiError::unprocessable("invalid_destination", why);
    let e164 = match dialplan::normalize(&number, &region) {
        Ok(Dialled::E164(n)) => n,
        Ok(Dialled::Extension(x)) => {
            return Err(not_a_number(format!(
                "{x} is an extension in region {region}, not a telephone number"
            )))
        }
        Ok(Dialled::Emergency(x)) => {
            return Err(not_a_number(format!(
                "{x} is an emergency number in region {region}"
            )))
        }
        Err(e) => return Err(not_a_number(format!("not a telephone number: {e}"))),
    };
    let (classified, verdict) = dialplan::check(&e164, (&account).into());
    Ok(axum::Json(Lookup {
        valid: classified.is_valid(),
        allowed: verdict.is_ok(),
        reason: verdict.err().map(|r| r.to_string()),
        e164: classified.e164,
        region: classified.region,
        number_type: classified.number_type.as_str().to_owned(),
    }))
}
