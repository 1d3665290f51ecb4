//! API errors as JSON: `{"error": {"message", "type", "field"}, "detail": message}` with a 4xx status for
//! client mistakes (naming the field) and 5xx only for the server's own failures.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault, e.g. `width` or `init_images[0]`.
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), field: None }
    }
    /// 422: a field's value is wrong.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: format!("{field}: {}", message.into()),
            field: Some(field),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            400 => "invalid_request",
            401 => "unauthorized",
            404 => "not_found",
            409 => "conflict",
            413 => "payload_too_large",
            422 => "invalid_value",
            429 => "queue_full",
            503 => "shutting_down",
            s if s >= 500 => "server_error",
            _ => "error",
        }
    }
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {"message": self.message, "type": self.kind(), "field": self.field},
            "detail": self.message,
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;
