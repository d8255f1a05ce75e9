//! The operator console at `/ui`: one page, its script and its stylesheet, embedded in the
//! binary (no build step, no separate server). The page reads and acts through the admin API
//! only (`docs/openapi.json`), with the same token rules: it holds nothing of its own.
//!
//! Invariants:
//! - Everything an event carries (payload, headers, error, ids, reasons) is attacker-controlled:
//!   the script puts text on the page only as text nodes (`textContent`), never as markup, and
//!   sets no URL from data.
//! - Every answer of the HTTP surface carries [`CONTENT_SECURITY_POLICY`] (no inline script or
//!   style, nothing from elsewhere, no framing, no form posts), `X-Content-Type-Options:
//!   nosniff` and `Referrer-Policy: no-referrer`: a string that did reach the page as markup
//!   still could not run a script.
//! - The token is typed by the operator and kept in the page's memory only (not in a cookie or
//!   storage); writes send it as `Authorization: Bearer`, and the write routes refuse
//!   cross-site requests ([`crate::same_origin`]).

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

/// The policy every answer carries.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("console/index.html");
const APP_JS: &str = include_str!("console/app.js");
const APP_CSS: &str = include_str!("console/app.css");

/// The console's routes: `/ui` (the page), `/ui/app.js`, `/ui/app.css`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/ui",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The layer over the whole HTTP surface that adds the security headers to every answer.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

#[cfg(test)]
mod tests {
    /// The script writes data into the page as text only: no HTML parsing sinks, no inline
    /// handlers, no eval. (The browser test shows a hostile payload staying text; this keeps
    /// a later edit from bringing a sink back unnoticed.)
    #[test]
    fn the_script_has_no_markup_sinks() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "setTimeout(\"",
            ".onerror",
            "srcdoc",
            "javascript:",
        ] {
            assert!(
                !super::APP_JS.contains(sink),
                "app.js uses `{sink}`: put data on the page with textContent"
            );
        }
        for inline in ["<script>", "style=", " on"] {
            let html = super::INDEX_HTML.to_lowercase();
            let found = match inline {
                " on" => html.split('<').any(|tag| {
                    let tag = tag.split('>').next().unwrap_or("");
                    tag.split_whitespace()
                        .skip(1)
                        .any(|attr| attr.starts_with("on"))
                }),
                _ => html.contains(inline),
            };
            assert!(
                !found,
                "index.html has inline `{inline}` (the policy forbids it)"
            );
        }
    }
}
