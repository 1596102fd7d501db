//! The status page's files, compiled into the binary: a node in a hospital network must not
//! load anything from the internet, and an installation cannot lose its page.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// (path under `/assets/`, content type, contents).
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/style.css"),
    ),
    (
        "vendor/three/three.module.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/vendor/three/three.module.js"),
    ),
    (
        "vendor/three/three.core.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/vendor/three/three.core.js"),
    ),
    (
        "vendor/three/STLLoader.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/vendor/three/STLLoader.js"),
    ),
    (
        "vendor/three/OrbitControls.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/vendor/three/OrbitControls.js"),
    ),
    (
        "vendor/three/LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("assets/vendor/three/LICENSE"),
    ),
];

/// The page's own rules for the browser: scripts and everything else from this origin only
/// (the inline import map is allowed by its hash), and no framing by other sites (the Retry
/// button must not be clickable through someone else's page).
fn security_headers(r: &mut Response) {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(concat!(
            "default-src 'self'; script-src 'self' 'sha256-",
            include_str!("assets/importmap.sha256"),
            "'; img-src 'self' data: blob:; style-src 'self'; frame-ancestors 'none'"
        )),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

/// `GET /`.
pub(super) async fn index() -> Response {
    let mut r = (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        include_str!("assets/index.html"),
    )
        .into_response();
    security_headers(&mut r);
    r
}

/// `GET /assets/{file}`.
pub(super) async fn asset(Path(file): Path<String>) -> Response {
    let Some((_, content_type, body)) = FILES.iter().find(|(name, _, _)| *name == file) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // The vendored files change only with the binary; the page's own are revalidated.
    let cache = if file.starts_with("vendor/") {
        "public, max-age=86400"
    } else {
        "no-cache"
    };
    let mut r = (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        ],
        *body,
    )
        .into_response();
    security_headers(&mut r);
    r
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    /// The CSP names the import map by its hash: editing one without the other would leave
    /// the page without its modules.
    #[test]
    fn the_import_map_hash_matches_the_page() {
        let page = include_str!("assets/index.html");
        let start = page.find("<script type=\"importmap\">").unwrap() + 25;
        let end = start + page[start..].find("</script>").unwrap();
        let digest = Sha256::digest(&page.as_bytes()[start..end]);
        let b64 = base64(&digest);
        assert_eq!(
            include_str!("assets/importmap.sha256"),
            b64,
            "update src/http/assets/importmap.sha256"
        );
    }

    fn base64(bytes: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
