//! Cross-site request refusal (CSRF protection) for the token-guarded routes: the admin API's
//! writes and its reads of event contents.
//!
//! Invariants:
//! - The token travels only in an `Authorization: Bearer` header that the console's script sets
//!   (never a cookie), so a browser never attaches it to another site's request on its own. On
//!   top of that, a request a browser marks as coming from elsewhere is refused with 403 before
//!   the token is looked at and before its body is read: `Sec-Fetch-Site` other than
//!   `same-origin` or `none`, or an `Origin` whose host and port are not the `Host` the request
//!   was sent to (`Origin: null` included).
//! - Clients that are not browsers (the CLI, curl, scripts) send neither header and pass.

use axum::extract::Request;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// Why `headers` mark a cross-site request, or `None` when they do not.
pub fn cross_site(headers: &HeaderMap) -> Option<String> {
    let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("?"));
    if let Some(site) = text("sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return Some(format!("Sec-Fetch-Site is `{site}`"));
        }
    }
    if let Some(origin) = text(header::ORIGIN.as_str()) {
        let host = text(header::HOST.as_str()).unwrap_or("");
        let origin_host = origin
            .split_once("://")
            .map(|(_, rest)| rest.trim_end_matches('/'));
        if origin_host.is_none_or(|o| host.is_empty() || !o.eq_ignore_ascii_case(host)) {
            return Some(format!("Origin `{origin}` is not this host (`{host}`)"));
        }
    }
    None
}

/// The layer in front of the token check: 403 for a cross-site request (the connection is
/// closed, the body never read).
pub async fn refuse_cross_site(req: Request, next: Next) -> Response {
    if let Some(why) = cross_site(req.headers()) {
        let body = serde_json::json!({
            "error": format!("refused: a cross-site request ({why}); use the console on this host or a client that is not a browser")
        });
        let mut r = (StatusCode::FORBIDDEN, Json(body)).into_response();
        r.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        return r;
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::cross_site;
    use axum::http::HeaderMap;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn same_origin_and_non_browser_requests_pass() {
        assert_eq!(cross_site(&headers(&[])), None);
        assert_eq!(cross_site(&headers(&[("host", "127.0.0.1:8080")])), None);
        let same = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert_eq!(cross_site(&same), None);
        // Behind a TLS-terminating proxy the scheme differs; host and port are what count.
        let proxied = headers(&[
            ("host", "ops.example:443"),
            ("origin", "https://ops.example:443"),
        ]);
        assert_eq!(cross_site(&proxied), None);
    }

    #[test]
    fn another_site_is_named_and_refused() {
        let evil = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example"),
        ]);
        assert!(cross_site(&evil).unwrap().contains("evil.example"));
        let other_port = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:9999"),
        ]);
        assert!(cross_site(&other_port).is_some());
        let null = headers(&[("host", "127.0.0.1:8080"), ("origin", "null")]);
        assert!(cross_site(&null).is_some());
        for site in ["cross-site", "same-site"] {
            let h = headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", site)]);
            assert!(cross_site(&h).unwrap().contains(site));
        }
    }
}
