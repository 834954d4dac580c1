//! Director errors and their HTTP mapping: 4xx with a precise reason, 5xx with none.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::db::DbError;

/// Why a Director operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum DirectorError {
    /// No or an invalid credential.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid credential asking for something it may not have (another vehicle's data).
    #[error("{0}")]
    Forbidden(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed or breaks a rule.
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than the configured limit.
    #[error("body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The body did not arrive in time.
    #[error("the request body took longer than {0} s")]
    BodyTimeout(u64),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The database could not serve it now (a deadlock it broke, a lock not granted in
    /// time): worth trying again.
    #[error("{0}")]
    Busy(String),
    /// A vehicle version manifest or ECU report failed a security check; the Director
    /// records a security event naming the attack.
    #[error("manifest refused ({kind}): {refusal}", kind = .0.attack(), refusal = .0)]
    ManifestRefused(uptane_core::manifest::ManifestError),
    /// The image repository could not be read or did not verify.
    #[error("image repository: {0}")]
    ImageRepository(String),
    /// Storage failed.
    #[error(transparent)]
    Db(DbError),
    /// Anything else on the server's side (keys, signing).
    #[error("{0}")]
    Internal(String),
}

impl From<DbError> for DirectorError {
    /// A unique key another request (on another replica) wrote first is a conflict the caller
    /// can act on, not a server failure.
    fn from(e: DbError) -> Self {
        if let Some(key) = e.repeated_key() {
            return DirectorError::Conflict(format!(
                "a concurrent request wrote the same record first ({key}); try again"
            ));
        }
        if e.is_contention() {
            return DirectorError::Busy(
                "the database is busy with concurrent requests; try again".into(),
            );
        }
        if let DbError::RolledBack(why) = &e {
            return DirectorError::Busy(format!(
                "nothing of this request was committed ({why}); try again"
            ));
        }
        if e.is_unavailable() {
            tracing::warn!(error = %e, "the database does not answer");
            return DirectorError::Busy("the database does not answer; try again".into());
        }
        DirectorError::Db(e)
    }
}

impl From<rusqlite::Error> for DirectorError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::Sqlite(e).into()
    }
}

impl DirectorError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            DirectorError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            DirectorError::Forbidden(_) => StatusCode::FORBIDDEN,
            DirectorError::NotFound(_) => StatusCode::NOT_FOUND,
            DirectorError::BadRequest(_) | DirectorError::ManifestRefused(_) => {
                StatusCode::BAD_REQUEST
            }
            DirectorError::Conflict(_) => StatusCode::CONFLICT,
            DirectorError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            DirectorError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            DirectorError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            DirectorError::ImageRepository(_) => StatusCode::BAD_GATEWAY,
            DirectorError::Db(_) | DirectorError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for DirectorError {
    fn into_response(self) -> Response {
        let status = self.status();
        let busy = matches!(self, DirectorError::Busy(_));
        let message = if status.is_server_error() && !busy {
            tracing::error!(error = %self, "request failed");
            "internal error".to_string()
        } else {
            self.to_string()
        };
        let mut response = (status, axum::Json(json!({"error": message}))).into_response();
        if busy {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}
