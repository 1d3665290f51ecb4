//! Safe by default: auth (`--api-key` Bearer, `--auth user:pass` Basic) on every route but the UI's static
//! files, and CORS only for the `--cors-origin` allow-list (the request's Origin is echoed only when listed).

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use crate::error::ApiError;
use crate::SharedState;

/// The UI's static files, served without auth (they hold no data; the UI asks for the key).
pub fn is_public(method: &Method, path: &str) -> bool {
    method == Method::GET && (path == "/" || path.starts_with("/ui/"))
}

/// Equal in time independent of where the inputs differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the `Authorization` header satisfies the configured auth.
pub fn authorized(state: &SharedState, value: Option<&HeaderValue>) -> bool {
    let auth = &state.config.auth;
    let Some(v) = value.and_then(|v| v.to_str().ok()) else { return false };
    let (scheme, cred) = v.trim().split_once(' ').unwrap_or((v, ""));
    let cred = cred.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        if let Some(k) = &auth.api_key {
            return ct_eq(cred.as_bytes(), k.as_bytes());
        }
    }
    if scheme.eq_ignore_ascii_case("basic") {
        if let Some((u, p)) = &auth.basic {
            let Ok(dec) = base64::engine::general_purpose::STANDARD.decode(cred) else { return false };
            let want = format!("{u}:{p}");
            return ct_eq(&dec, want.as_bytes());
        }
    }
    false
}

pub async fn auth(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    if !state.config.auth.is_set() || is_public(req.method(), req.uri().path()) || req.method() == Method::OPTIONS {
        return next.run(req).await;
    }
    if authorized(&state, req.headers().get(header::AUTHORIZATION)) {
        return next.run(req).await;
    }
    let mut r = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "authentication required: send Authorization: Bearer API_KEY (--api-key) or HTTP Basic (--auth)",
    )
    .into_response();
    let challenge = if state.config.auth.basic.is_some() { "Basic realm=\"umbra\"" } else { "Bearer" };
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    r
}

pub async fn cors(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed =
        origin.as_ref().and_then(|o| o.to_str().ok()).is_some_and(|o| state.config.cors_origins.iter().any(|a| a == o));
    let preflight =
        req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        if !allowed {
            return ApiError::new(StatusCode::FORBIDDEN, "CORS: this origin is not in --cors-origin").into_response();
        }
        let mut r = StatusCode::NO_CONTENT.into_response();
        add_cors(&mut r, origin.expect("allowed origin"));
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("authorization, content-type"));
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        return r;
    }
    let mut r = next.run(req).await;
    if allowed {
        add_cors(&mut r, origin.expect("allowed origin"));
    }
    r
}

fn add_cors(r: &mut Response, origin: HeaderValue) {
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    h.append(header::VARY, HeaderValue::from_static("Origin"));
}
