//! The chat service: shopper websocket, agent API, classification and recommendation endpoints,
//! health and metrics. The server only wires the capabilities together: `nlu` understands,
//! `faq` + `dialogue` answer, `recommend` suggests, `store` remembers.
//!
//! Startup binds the port first and loads models in the background: `/healthz` answers at once,
//! `/readyz` turns 200 once the NLU, the FAQ index and the templates are loaded, and requests
//! that need them get 503 (`error` frames on the socket) until then.

mod admin;
mod agent;
mod api;
pub mod auth;
mod chat;
pub mod error;
pub mod limits;
pub mod listen;
pub mod metrics;
mod web;

/// The wire format, shared with `conversation`.
pub use crate::protocol;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

pub use crate::conversation::{Engine, EngineConfig};
pub use auth::{AgentEntry, AgentTokens, SessionSigner};
pub use error::{ApiError, ServerError};
pub use limits::{Limits, TrustedProxies};

use crate::conversation::{Brain, Service};
use crate::store::{Store, StoreOptions};

/// Everything `shopdesk serve` needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    /// `sqlite://PATH`.
    pub database_url: String,
    /// Sync every commit to disk (default): an acknowledged turn survives power loss, not only
    /// a killed process.
    pub synchronous_full: bool,
    pub engine: EngineConfig,
    /// Key for session tokens (from `--session-secret-file` or the environment); by default
    /// one is generated once from the OS CSPRNG and kept in the database.
    pub session_secret: Option<String>,
    pub session_ttl: Duration,
    pub agents: Vec<AgentEntry>,
    /// Who may call `/v1/admin/*` (reload): name and token hash, like agents.
    pub admins: Vec<AgentEntry>,
    /// SHA-256 hashes (hex) of API keys. When any is set, `/v1/classify`, `/v1/sentiment` and
    /// `/v1/recommendations` need `Authorization: Bearer <key>`; key holders are not limited
    /// per address.
    pub api_keys: Vec<String>,
    /// Proxies whose `X-Forwarded-For` names the real client (limits key on that client).
    pub trusted_proxies: TrustedProxies,
    /// Origins (`https://shop.example`) whose pages may open the shopper socket; `*` allows any.
    /// Same-origin pages and clients that send no Origin (apps, servers) are always allowed.
    pub allowed_origins: Vec<String>,
    pub limits: Limits,
    /// Serve the web pages from this folder instead of the copies built into the binary.
    pub web_dir: Option<std::path::PathBuf>,
}

/// Shared state of a running server.
pub struct App {
    pub config: ServerConfig,
    /// Conversations: every turn and agent action, storage and live events.
    pub service: Service,
    engine: OnceLock<Arc<Engine>>,
    load_error: Mutex<Option<String>>,
    pub signer: SessionSigner,
    pub agents: AgentTokens,
    pub admins: AgentTokens,
    pub api_keys: AgentTokens,
    /// The shop's canned replies for agents (`prompts/canned.toml`), read at start.
    pub canned: Vec<crate::canned::CannedReply>,
    pub metrics: Arc<metrics::Metrics>,
    pub limiters: limits::Limiters,
    /// Turns true when the server begins to shut down: open websockets close (1012).
    pub closing: tokio::sync::watch::Sender<bool>,
}

impl App {
    pub fn store(&self) -> &Store {
        &self.service.store
    }

    /// The loaded engine as the conversation service's brain.
    pub fn brain(&self) -> Result<Arc<dyn Brain>, ApiError> {
        let e: Arc<dyn Brain> = self.engine()?.clone();
        Ok(e)
    }

    /// The loaded engine, or why there is none yet.
    pub fn engine(&self) -> Result<&Arc<Engine>, ApiError> {
        self.engine.get().ok_or_else(|| {
            let err = self
                .load_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            ApiError::Unavailable(match err {
                Some(e) => format!("the server could not load its models: {e}"),
                None => "the server is still loading its models; try again shortly".into(),
            })
        })
    }

    /// The engine, waiting up to `max` while it loads: a shopper who writes during a restart
    /// gets an answer a little later instead of an error.
    pub async fn engine_wait(&self, max: Duration) -> Result<Arc<Engine>, ApiError> {
        let until = tokio::time::Instant::now() + max;
        loop {
            match self.engine() {
                Ok(e) => return Ok(e.clone()),
                Err(e) => {
                    let failed = self
                        .load_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .is_some();
                    if failed || tokio::time::Instant::now() >= until {
                        return Err(e);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Resolves when the server begins to shut down.
    pub async fn closing(&self) {
        let mut rx = self.closing.subscribe();
        // The guard `wait_for` returns is dropped here, before anything else is awaited.
        let closed = rx.wait_for(|&c| c).await.is_ok();
        if !closed {
            std::future::pending::<()>().await;
        }
    }

    pub fn set_engine(&self, e: Engine) {
        let h = e.nlu.stats().batch_sizes.clone();
        if let Err(err) = self.metrics.registry.register(Box::new(h)) {
            tracing::warn!("cannot register NLU metrics: {err}");
        }
        let _ = self.engine.set(Arc::new(e));
    }
}

/// A server that is listening.
pub struct Running {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    pub handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Connects the database, binds the port and starts serving; models load in the background.
/// `shutdown` resolves when the server should stop accepting connections.
pub async fn start(
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Running, ServerError> {
    let agents = AgentTokens::new(&config.agents).map_err(ServerError::Config)?;
    if agents.is_empty() {
        tracing::warn!(
            "no agents configured: the agent API refuses every call (see `shopdesk agent-token`)"
        );
    }
    let admins = AgentTokens::new(&config.admins).map_err(ServerError::Config)?;
    let api_keys = AgentTokens::new(
        &config
            .api_keys
            .iter()
            .enumerate()
            .map(|(i, h)| AgentEntry {
                name: format!("api-key-{i}"),
                token_sha256: h.clone(),
            })
            .collect::<Vec<_>>(),
    )
    .map_err(|e| ServerError::Config(format!("--api-key: {e}")))?;
    // Read before anything starts: a shop's broken file is a start-up error, not a console
    // that quietly lacks its replies.
    let canned = crate::canned::load(&config.engine.prompts_dir.join("canned.toml"))
        .map_err(|e| ServerError::Config(e.to_string()))?;
    let mut opts = StoreOptions::new(config.database_url.clone());
    opts.synchronous_full = config.synchronous_full;
    let store = Store::connect(&opts).await?;
    let secret = match &config.session_secret {
        Some(s) if s.len() >= 32 => s.clone(),
        Some(_) => {
            return Err(ServerError::Config(
                "the session secret needs at least 32 characters (`openssl rand -hex 32`)".into(),
            ))
        }
        // `session_key` was made by versions before 0.2 from a clock-seeded generator: it is
        // retired (its tokens then start new conversations) and a CSPRNG key replaces it.
        None => {
            store
                .secret(auth::SESSION_KEY_NAME, &["session_key"], auth::new_token)
                .await?
        }
    };
    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.addr.to_string(),
            source,
        })?;
    let addr = listener.local_addr()?;
    let app = Arc::new(App {
        signer: SessionSigner::new(secret.as_bytes(), config.session_ttl),
        limiters: limits::Limiters::new(&config.limits),
        config,
        service: Service::new(store),
        engine: OnceLock::new(),
        load_error: Mutex::new(None),
        agents,
        admins,
        api_keys,
        canned,
        metrics: Arc::new(metrics::Metrics::new()),
        closing: tokio::sync::watch::Sender::new(false),
    });
    {
        let app = app.clone();
        crate::blocking::spawn(move || {
            let t = std::time::Instant::now();
            match Engine::load(&app.config.engine) {
                Ok(e) => {
                    app.set_engine(e);
                    tracing::info!(ms = t.elapsed().as_millis() as u64, "models loaded, ready");
                }
                Err(e) => {
                    tracing::error!("{e}");
                    *app.load_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                }
            }
        });
    }
    limits::spawn_housekeeping(app.clone());
    admin::spawn_sighup_reload(app.clone());
    let router = router(app.clone());
    let shutdown = {
        let app = app.clone();
        async move {
            shutdown.await;
            app.closing.send_replace(true);
        }
    };
    let mut conn_limits = app.config.limits.conn.clone();
    conn_limits.max_total = listen::fit_to_fd_limit(conn_limits.max_total);
    let trusted = app.config.trusted_proxies.clone();
    let metrics = app.metrics.clone();
    let handle = tokio::spawn(listen::serve(
        listener,
        router,
        conn_limits,
        trusted,
        metrics,
        shutdown,
    ));
    Ok(Running { addr, app, handle })
}

/// The client's address: the peer, or the client a trusted proxy forwarded for.
pub fn client_ip(app: &App, peer: SocketAddr, headers: &axum::http::HeaderMap) -> std::net::IpAddr {
    let xff: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let joined = xff.join(",");
    app.config
        .trusted_proxies
        .client_ip(peer.ip(), (!joined.is_empty()).then_some(joined.as_str()))
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/chat", get(chat::upgrade))
        .route("/v1/classify", post(api::classify))
        .route("/v1/sentiment", post(api::sentiment))
        .route(
            "/v1/recommendations/{customer_id}",
            get(api::recommendations),
        )
        .route("/v1/products/{id}/similar", get(api::similar))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route("/v1/admin/reload", post(admin::reload))
        .nest("/v1/agent", agent::router())
        .merge(web::router())
        .fallback(|| async { ApiError::NotFound("no such page or endpoint".into()) })
        .layer(middleware::from_fn_with_state(app.clone(), count_requests))
        // Every answer, JSON included: a browser never guesses another type.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            app.config.limits.max_body_bytes,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    // The route, not the raw path: paths carry ids, never log them as text.
                    let route = req
                        .extensions()
                        .get::<MatchedPath>()
                        .map_or("unmatched", |p| p.as_str());
                    tracing::info_span!("request", method = %req.method(), route)
                })
                // 503 from /readyz while loading is expected; real failures are logged where they happen.
                .on_failure(
                    tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
                ),
        )
        .with_state(app)
}

async fn count_requests(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let res = next.run(req).await;
    app.metrics
        .http_requests
        .with_label_values(&[route.as_str(), res.status().as_str()])
        .inc();
    res
}
