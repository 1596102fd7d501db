//! Who may do what on the HTTP side.
//!
//! One secret, `[http] token`. A client proves it either with `Authorization: Bearer TOKEN`
//! (scripts, Prometheus) or, in a browser, through the login form: `POST /login` with the token
//! answers with a session cookie (`HttpOnly`, so page scripts cannot read it;
//! `SameSite=Strict`, so another site cannot make the browser send it with a forged POST). The
//! cookie holds a random session value, never the token; the server keeps only SHA-256
//! digests of the live sessions, in memory (a restart logs everyone out). Tokens are compared
//! as SHA-256 digests in constant time, so that neither their content nor their length leaks
//! through response times.
//!
//! The policy ([`guard`]): every request that is not a GET/HEAD needs the token (a node
//! without a token refuses them all); GETs of the data (`/api/...`, `/metrics`) need it when
//! the listener is beyond loopback; the health probes and the page's static files never do.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Form;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::App;
use super::Secret;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "m3dnode_session";

/// How long a browser session lasts (one working day; then log in again).
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Live sessions kept at most; the oldest goes first (each login makes one).
const MAX_SESSIONS: usize = 1000;

/// What the request proved, for the handlers (patient data only to an authenticated viewer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Viewer {
    /// The request carried the token or a live session cookie.
    pub authenticated: bool,
}

/// The token and the live sessions.
pub(super) struct Auth {
    token: Option<Secret>,
    /// SHA-256 of each live session value, with its expiry.
    sessions: Mutex<HashMap<[u8; 32], Instant>>,
}

/// What a request's credentials amount to.
enum Proof {
    None,
    Valid,
    Wrong,
}

impl Auth {
    pub(super) fn new(token: Option<Secret>) -> Auth {
        Auth {
            token,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn has_token(&self) -> bool {
        self.token.is_some()
    }

    fn check(&self, headers: &HeaderMap) -> Proof {
        let Some(token) = &self.token else {
            return Proof::None;
        };
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let given = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            return match given {
                Some(given) if same_secret(given, token.expose()) => Proof::Valid,
                _ => Proof::Wrong,
            };
        }
        match session_cookie(headers) {
            Some(value) if self.session_live(value) => Proof::Valid,
            Some(_) => Proof::Wrong,
            None => Proof::None,
        }
    }

    fn session_live(&self, value: &str) -> bool {
        let key: [u8; 32] = Sha256::digest(value.as_bytes()).into();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match sessions.get(&key) {
            Some(expiry) if *expiry > Instant::now() => true,
            Some(_) => {
                sessions.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Starts a session; returns the cookie value.
    fn new_session(&self) -> String {
        let value: [u8; 32] = rand::random();
        let value = hex(&value);
        let key: [u8; 32] = Sha256::digest(value.as_bytes()).into();
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, expiry| *expiry > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k)
        {
            sessions.remove(&oldest);
        }
        sessions.insert(key, now + SESSION_LIFETIME);
        value
    }

    fn end_session(&self, headers: &HeaderMap) {
        if let Some(value) = session_cookie(headers) {
            let key: [u8; 32] = Sha256::digest(value.as_bytes()).into();
            self.sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        }
    }
}

/// Compares two secrets in time independent of their contents and lengths.
fn same_secret(a: &str, b: &str) -> bool {
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    let diff = x
        .iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q));
    std::hint::black_box(diff) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE).then_some(value)
        })
}

/// A 401 with the reason as JSON (and the scheme to use, per RFC 6750).
pub(super) fn unauthorized(reason: &str) -> Response {
    let mut r = (
        StatusCode::UNAUTHORIZED,
        axum::Json(serde_json::json!({ "error": reason })),
    )
        .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"m3dnode\""),
    );
    r
}

/// Paths anyone may GET: the probes (orchestrators call them without credentials) and the
/// page's static files (the page then asks for the token when the data needs it).
fn public(path: &str) -> bool {
    path == "/" || path.starts_with("/assets/") || path.starts_with("/health/")
}

/// The access policy of the module documentation, applied to every request.
pub(super) async fn guard(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let proof = app.auth.check(req.headers());
    let authenticated = matches!(proof, Proof::Valid);
    let path = req.uri().path();
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    let needs_token = if reads {
        !app.open_reads && !public(path)
    } else {
        // Logging in is how the token arrives; logging out with a stale cookie must work.
        !matches!(path, "/login" | "/logout")
    };
    if needs_token && !authenticated {
        let reason = match (app.auth.has_token(), proof) {
            (false, _) => {
                "this request needs the token, and the node has none configured \
                 (set http.token or http.token_file)"
            }
            (true, Proof::Wrong) => "the token (or the session) is not valid",
            (true, _) => {
                "this request needs the token: send \"Authorization: Bearer TOKEN\" or log in"
            }
        };
        info!(method = %req.method(), path, "HTTP request refused: not authenticated");
        return unauthorized(reason);
    }
    req.extensions_mut().insert(Viewer { authenticated });
    next.run(req).await
}

/// The login form's fields.
#[derive(Deserialize)]
pub(super) struct Login {
    token: String,
}

/// `POST /login`: the token in, a session cookie out, back to the page.
pub(super) async fn login(State(app): State<Arc<App>>, Form(form): Form<Login>) -> Response {
    let valid = app
        .auth
        .token
        .as_ref()
        .is_some_and(|t| same_secret(form.token.trim(), t.expose()));
    if !valid {
        warn!("HTTP login with a wrong token");
        // Slows guessing down; the token's length makes guessing hopeless anyway.
        tokio::time::sleep(Duration::from_millis(200)).await;
        return unauthorized(if app.auth.has_token() {
            "the token is not valid"
        } else {
            "the node has no token configured (http.token), so nobody can log in"
        });
    }
    let value = app.auth.new_session();
    info!("HTTP login");
    let cookie = format!(
        "{SESSION_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_LIFETIME.as_secs()
    );
    redirect_home(&cookie)
}

/// `POST /logout`: forgets the session.
pub(super) async fn logout(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    app.auth.end_session(&headers);
    redirect_home(&format!(
        "{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
    ))
}

fn redirect_home(cookie: &str) -> Response {
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_content_only() {
        assert!(same_secret("0123456789abcdef", "0123456789abcdef"));
        assert!(!same_secret("0123456789abcdef", "0123456789abcdeF"));
        assert!(!same_secret("0123456789abcdef", "0123456789abcdef0"));
        assert!(!same_secret("", "x"));
    }

    #[test]
    fn a_session_cookie_is_found_among_others_and_only_live_ones_count() {
        let auth = Auth::new(Some(Secret::new("0123456789abcdef")));
        let value = auth.new_session();
        assert_eq!(value.len(), 64);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("theme=dark; {SESSION_COOKIE}={value}; x=1")).unwrap(),
        );
        assert!(matches!(auth.check(&headers), Proof::Valid));
        auth.end_session(&headers);
        assert!(matches!(auth.check(&headers), Proof::Wrong));
        let mut bearer = HeaderMap::new();
        bearer.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer 0123456789abcdef"),
        );
        assert!(matches!(auth.check(&bearer), Proof::Valid));
        bearer.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer 0123456789abcdeX"),
        );
        assert!(matches!(auth.check(&bearer), Proof::Wrong));
        assert!(matches!(auth.check(&HeaderMap::new()), Proof::None));
    }
}
