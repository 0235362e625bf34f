//! The web pages: the demo storefront at `/` (with the chat widget), the widget script at
//! `/widget.js`, the agent console at `/console`, the catalog as JSON and the demo's product
//! pictures. The files under `web/` are compiled into the binary, so one file deploys;
//! `--web-dir` serves them from disk instead (edit and reload while working on them).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::error::ApiError;
// The same five characters need escaping in SVG text and attributes.
use super::App;
use crate::text::html_escape;

struct Asset {
    /// Path under `web/`.
    file: &'static str,
    mime: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($file:literal, $mime:expr) => {
        Asset {
            file: $file,
            mime: $mime,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $file)),
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

static SHOP: Asset = asset!("shop/index.html", HTML);
static SHOP_JS: Asset = asset!("shop/shop.js", JS);
static SHOP_CSS: Asset = asset!("shop/shop.css", CSS);
static WIDGET_JS: Asset = asset!("widget/widget.js", JS);
static CONSOLE: Asset = asset!("console/index.html", HTML);
static CONSOLE_JS: Asset = asset!("console/console.js", JS);
static CONSOLE_CSS: Asset = asset!("console/console.css", CSS);

/// Our pages load nothing from elsewhere and run no inline script: shopper text that slipped
/// into the DOM as markup still could not run. They connect only to us: `connect-src 'self'`
/// covers our own `ws:`/`wss:` origin (CSP Level 3), where `ws: wss:` allowed a socket to any
/// host, a channel out for anything injected.
const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'none'";

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(|s| serve(s, &SHOP)))
        .route("/products/{id}", get(|s| serve(s, &SHOP)))
        .route("/shop.js", get(|s| serve(s, &SHOP_JS)))
        .route("/shop.css", get(|s| serve(s, &SHOP_CSS)))
        .route("/widget.js", get(|s| serve(s, &WIDGET_JS)))
        .route("/console", get(|s| serve(s, &CONSOLE)))
        .route("/console/", get(|s| serve(s, &CONSOLE)))
        .route("/console/console.js", get(|s| serve(s, &CONSOLE_JS)))
        .route("/console/console.css", get(|s| serve(s, &CONSOLE_CSS)))
        .route("/static/products/{file}", get(product_image))
        .route("/v1/products", get(products))
}

async fn serve(State(app): State<Arc<App>>, a: &'static Asset) -> Response {
    let body: Vec<u8> = match &app.config.web_dir {
        Some(dir) => match tokio::fs::read(dir.join(a.file)).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("web file {}: {e}", a.file);
                return ApiError::NotFound(format!("{} is missing from the web folder", a.file))
                    .into_response();
            }
        },
        None => a.body.to_vec(),
    };
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(a.mime));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if a.mime == HTML {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_CSP),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
    } else if a.mime == JS && a.file == WIDGET_JS.file {
        // Shops embed the widget from their own pages.
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    }
    debug_assert!([HTML, JS, CSS].contains(&a.mime));
    res
}

/// `GET /v1/products`: the catalog the recommender knows, in catalog order.
async fn products(State(app): State<Arc<App>>) -> Result<Json<serde_json::Value>, ApiError> {
    let engine = app.engine()?;
    let Some(rec) = &engine.recommender else {
        return Ok(Json(serde_json::json!({ "products": [] })));
    };
    let mut products = rec.model().catalog().products;
    products.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Json(serde_json::json!({ "products": products })))
}

/// The demo shop has no photographs: each product's picture is drawn from its catalog entry.
async fn product_image(
    State(app): State<Arc<App>>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let id = file
        .strip_suffix(".svg")
        .ok_or_else(|| ApiError::NotFound(format!("{file} is not a product picture")))?;
    let engine = app.engine()?;
    let product = engine
        .recommender
        .as_ref()
        .and_then(|r| {
            r.model()
                .catalog()
                .products
                .into_iter()
                .find(|p| p.id == id)
        })
        .ok_or_else(|| ApiError::NotFound(format!("product {id} is not known")))?;
    let svg = picture(
        &product.title,
        product.category.as_deref().unwrap_or("product"),
    );
    let mut res = svg.into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("image/svg+xml"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // An SVG opened on its own is a document: it may not run anything either.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    Ok(res)
}

fn picture(title: &str, category: &str) -> String {
    // A stable colour per category, so the grid reads by kind of garment.
    let h = category
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
        % 360;
    let words: Vec<&str> = title.split_whitespace().collect();
    let initials: String = words
        .iter()
        .filter_map(|w| w.chars().next())
        .take(2)
        .collect();
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 300 300" role="img" aria-label="{label}"><rect width="300" height="300" fill="hsl({h},45%,88%)"/><circle cx="150" cy="130" r="70" fill="hsl({h},40%,70%)"/><text x="150" y="150" font-family="Georgia,serif" font-size="56" text-anchor="middle" fill="hsl({h},45%,25%)">{initials}</text><text x="150" y="255" font-family="Helvetica,Arial,sans-serif" font-size="20" text-anchor="middle" fill="hsl({h},45%,25%)">{cat}</text></svg>"##,
        label = html_escape(title),
        initials = html_escape(&initials),
        cat = html_escape(category),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pictures_escape_catalog_text() {
        let svg = picture("<script>alert(1)</script> & Co", "tops\"><x");
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("&lt;script&gt;"));
        assert!(svg.contains("tops&quot;&gt;&lt;x"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }

    #[test]
    fn pages_connect_only_to_their_own_origin() {
        let connect = PAGE_CSP
            .split(';')
            .map(str::trim)
            .find(|d| d.starts_with("connect-src"))
            .expect("a connect-src directive");
        assert_eq!(connect, "connect-src 'self'");
    }

    #[test]
    fn widget_stays_small() {
        // The issue's budget for the embedded script: under 30 KB.
        assert!(
            WIDGET_JS.body.len() < 30 * 1024,
            "widget.js is {} bytes",
            WIDGET_JS.body.len()
        );
    }
}
