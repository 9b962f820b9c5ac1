//! The customer dashboard (DESIGN.md section 13): a few HTML pages and one JS module, compiled
//! into the binary. Each page is a static shell rendered once: the data comes from the API
//! with the token in the Authorization header, so the server never sees a token in a URL or
//! a cookie, and no page needs a template engine at request time (ADR 0012).

use std::sync::LazyLock;

use axum::{
    Router,
    extract::Query,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use sha2::{Digest, Sha256};

const LAYOUT: &str = include_str!("../assets/dashboard/layout.html");
const APP_JS: &str = include_str!("../assets/dashboard/app.js");
const APP_CSS: &str = include_str!("../assets/dashboard/app.css");
/// The usage meter, on the jobs and the usage pages.
const METER: &str = include_str!("../assets/dashboard/meter.html");

/// One page: its path, title, nav label (none: not in the nav) and body.
struct Page {
    path: &'static str,
    name: &'static str,
    title: &'static str,
    nav: Option<&'static str>,
    body: &'static str,
}

const PAGES: [Page; 5] = [
    Page {
        path: "/",
        name: "jobs",
        title: "Jobs",
        nav: Some("Jobs"),
        body: include_str!("../assets/dashboard/jobs.html"),
    },
    Page {
        path: "/jobs/{id}",
        name: "job",
        title: "Job",
        nav: None,
        body: include_str!("../assets/dashboard/job.html"),
    },
    Page {
        path: "/usage",
        name: "usage",
        title: "Usage and plan",
        nav: Some("Usage"),
        body: include_str!("../assets/dashboard/usage.html"),
    },
    Page {
        path: "/audit",
        name: "audit",
        title: "Audit",
        nav: Some("Audit"),
        body: include_str!("../assets/dashboard/audit.html"),
    },
    Page {
        path: "/signin",
        name: "signin",
        title: "Sign in",
        nav: None,
        body: include_str!("../assets/dashboard/signin.html"),
    },
];

/// Only this origin's own scripts, styles and connections: no third-party request, no inline
/// script; `blob:` images are artifacts fetched with the token.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; \
     connect-src 'self'; frame-src blob:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// An asset's content-addressed version, so a page can let browsers keep it for a year.
fn version(text: &str) -> String {
    hex_prefix(&Sha256::digest(text.as_bytes()))
}

fn hex_prefix(digest: &[u8]) -> String {
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

static JS_VERSION: LazyLock<String> = LazyLock::new(|| version(APP_JS));
static CSS_VERSION: LazyLock<String> = LazyLock::new(|| version(APP_CSS));

/// Every page rendered once, in [`PAGES`] order.
static RENDERED: LazyLock<Vec<String>> = LazyLock::new(|| {
    PAGES
        .iter()
        .map(|p| render(p, &JS_VERSION, &CSS_VERSION))
        .collect()
});

fn render(page: &Page, js: &str, css: &str) -> String {
    let nav: String = PAGES
        .iter()
        .filter_map(|p| {
            let label = p.nav?;
            let current = if p.name == page.name {
                " aria-current=\"page\""
            } else {
                ""
            };
            let role = if p.name == "audit" {
                " data-role=\"auditor\""
            } else {
                " data-role=\"customer\""
            };
            Some(format!(
                "<li{role}><a href=\"{}\"{current}>{label}</a></li>",
                p.path
            ))
        })
        .collect();
    LAYOUT
        .replace("{{title}}", page.title)
        .replace("{{page}}", page.name)
        .replace("{{nav}}", &nav)
        .replace("{{js}}", js)
        .replace("{{css}}", css)
        .replace("{{main}}", page.body)
        .replace("{{meter}}", METER)
}

/// The dashboard's routes: its pages and its two assets.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new()
        .route(
            "/assets/app.js",
            get(|q| asset(q, APP_JS, &JS_VERSION, "text/javascript; charset=utf-8")),
        )
        .route(
            "/assets/app.css",
            get(|q| asset(q, APP_CSS, &CSS_VERSION, "text/css; charset=utf-8")),
        );
    for (i, page) in PAGES.iter().enumerate() {
        router = router.route(page.path, get(move || async move { html(&RENDERED[i]) }));
    }
    router
}

fn html(body: &'static str) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        ],
        body,
    )
        .into_response()
}

/// `?v=` the current version: cached for a year; any other: revalidated each time.
#[derive(serde::Deserialize)]
struct AssetQuery {
    v: Option<String>,
}

async fn asset(
    Query(q): Query<AssetQuery>,
    body: &'static str,
    version: &'static str,
    content_type: &'static str,
) -> Response {
    let cache = if q.v.as_deref() == Some(version) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_names_its_assets_and_every_slot_is_filled() {
        for (page, html) in PAGES.iter().zip(RENDERED.iter()) {
            assert!(!html.contains("{{"), "{}", page.path);
            assert!(html.contains(&format!("/assets/app.js?v={}", *JS_VERSION)));
            assert!(html.contains(&format!("data-page=\"{}\"", page.name)));
        }
    }

    #[test]
    fn no_page_or_asset_loads_from_another_origin() {
        // Example payloads may name URLs; what the page loads or calls is same-origin.
        for text in RENDERED.iter().map(String::as_str).chain([APP_JS, APP_CSS]) {
            for bad in [
                "src=\"http",
                "href=\"http",
                "src=\"//",
                "href=\"//",
                "url(",
                "@import",
            ] {
                assert!(!text.contains(bad), "{bad}");
            }
        }
        for call in APP_JS.split("fetch(").skip(1) {
            let target = call.trim_start_matches(['\'', '`']);
            assert!(
                target.starts_with('/') || target.starts_with("path"),
                "fetch({call:.40}"
            );
        }
    }
}
