//! The web console: static files embedded in the binary and served from `/console/`, on the same
//! origin as the API. The page holds no rules of its own: it signs in with a principal's token
//! (kept in the page's memory only, sent as `Authorization: Bearer`), and everything it shows comes
//! through the same `/v1` API and its access rules. Its bytes are constants of the build —
//! independent of any data — and every answer carries a strict Content-Security-Policy (no
//! inline script, no other origin), so a value the page displays can never run as code.
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use crate::error::ApiError;

/// Only this origin's own files; no inline script or style; no framing; no form posts elsewhere.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// The console's files: (path under `/console/`, media type, bytes).
pub(crate) const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_bytes!("../console/index.html"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("../console/console.css"),
    ),
    ("js/app.js", JS, include_bytes!("../console/js/app.js")),
    ("js/api.js", JS, include_bytes!("../console/js/api.js")),
    ("js/dom.js", JS, include_bytes!("../console/js/dom.js")),
    ("js/chart.js", JS, include_bytes!("../console/js/chart.js")),
    ("js/diff.js", JS, include_bytes!("../console/js/diff.js")),
    (
        "js/verify.js",
        JS,
        include_bytes!("../console/js/verify.js"),
    ),
    (
        "js/holder.js",
        JS,
        include_bytes!("../console/js/holder.js"),
    ),
    (
        "js/consumer.js",
        JS,
        include_bytes!("../console/js/consumer.js"),
    ),
    (
        "js/reviewer.js",
        JS,
        include_bytes!("../console/js/reviewer.js"),
    ),
];

const JS: &str = "text/javascript; charset=utf-8";

/// `GET /`: the console.
pub(crate) async fn root() -> Redirect {
    Redirect::to("/console/")
}

/// `GET /console/`: the page.
pub(crate) async fn index() -> Response {
    asset("")
}

/// `GET /console/{*path}`: one of its files, or the API's `not_found`.
pub(crate) async fn file(Path(path): Path<String>) -> Response {
    asset(&path)
}

fn asset(path: &str) -> Response {
    let Some((_, media_type, bytes)) = ASSETS.iter().find(|(p, _, _)| *p == path) else {
        return ApiError::not_found("no such console file").into_response();
    };
    let mut response = (StatusCode::OK, *bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // A new build serves new files: revalidate instead of mixing versions from a cache.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CSP forbids inline script; this keeps the files from relying on it (where CSP would
    /// silently break the page) and from building HTML out of strings.
    #[test]
    fn the_console_has_no_inline_script_and_builds_no_html_from_text() {
        let html = std::str::from_utf8(ASSETS[0].2).unwrap();
        for tag in html.split("<script").skip(1) {
            let open = &tag[..tag.find('>').unwrap()];
            assert!(
                open.contains("src=\"/console/"),
                "inline script: <script{open}>"
            );
        }
        assert!(!html.contains(" on"), "inline event handler in index.html");
        for (path, _, bytes) in ASSETS.iter().filter(|(p, _, _)| p.ends_with(".js")) {
            let text = std::str::from_utf8(bytes).unwrap();
            for banned in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "eval(",
                "new Function",
                "document.write",
                "localStorage",
                "sessionStorage",
                "document.cookie",
            ] {
                assert!(!text.contains(banned), "{path} uses {banned}");
            }
        }
    }

    #[test]
    fn every_asset_is_listed_once_and_named_by_its_file() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
        let mut on_disk = Vec::new();
        for entry in walk(&dir) {
            on_disk.push(
                entry
                    .strip_prefix(&dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        on_disk.sort();
        let mut listed: Vec<String> = ASSETS
            .iter()
            .map(|(p, _, _)| {
                if p.is_empty() {
                    "index.html".into()
                } else {
                    p.to_string()
                }
            })
            .collect();
        listed.sort();
        assert_eq!(listed, on_disk, "console/ and ASSETS disagree");
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }
}
