//! `shopdesk serve` and `shopdesk agent-token`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use shopdesk::config::FileConfig;
use shopdesk::nlu::NluConfig;
use shopdesk::server::auth::{hash_token, new_token};
use shopdesk::server::{self, AgentEntry, EngineConfig, Limits, ServerConfig, TrustedProxies};

use super::Settings;

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "SHOPDESK_HOST")]
    host: Option<String>,
    /// Port to listen on (0: any free port; the chosen one is printed).
    #[arg(long, env = "SHOPDESK_PORT")]
    port: Option<u16>,
    /// Where conversations are stored: sqlite://PATH.
    #[arg(long, env = "SHOPDESK_DATABASE_URL")]
    database_url: Option<String>,
    /// The recommendation model (`recommend train` writes it).
    #[arg(long, env = "SHOPDESK_RECOMMEND_DIR")]
    recommend_dir: Option<PathBuf>,
    /// An agent allowed on /v1/agent, as NAME:SHA256-OF-TOKEN (repeatable; `agent-token` makes one).
    #[arg(
        long = "agent",
        value_name = "NAME:SHA256",
        env = "SHOPDESK_AGENTS",
        value_delimiter = ','
    )]
    agents: Vec<String>,
    /// An origin whose pages may open the shopper socket (repeatable; `*` for any).
    #[arg(
        long = "allow-origin",
        value_name = "ORIGIN",
        env = "SHOPDESK_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    allowed_origins: Vec<String>,
    /// Key that signs session tokens, at least 32 characters (default: generated once from the
    /// OS CSPRNG and kept in the database). Prefer --session-secret-file.
    #[arg(long, env = "SHOPDESK_SESSION_SECRET", hide_env_values = true)]
    session_secret: Option<String>,
    /// A file holding the session-signing key (first line; e.g. `openssl rand -hex 32 > FILE`,
    /// mode 600), so the key need not sit in the database.
    #[arg(
        long,
        env = "SHOPDESK_SESSION_SECRET_FILE",
        conflicts_with = "session_secret"
    )]
    session_secret_file: Option<PathBuf>,
    /// The SHA-256 (hex) of an API key (repeatable; `shopdesk api-key` makes one). When set,
    /// /v1/classify, /v1/sentiment and /v1/recommendations need `Authorization: Bearer KEY`.
    #[arg(
        long = "api-key",
        value_name = "SHA256",
        env = "SHOPDESK_API_KEYS",
        value_delimiter = ','
    )]
    api_keys: Vec<String>,
    /// An operator allowed on /v1/admin (reload), as NAME:SHA256-OF-TOKEN (repeatable).
    #[arg(
        long = "admin",
        value_name = "NAME:SHA256",
        env = "SHOPDESK_ADMINS",
        value_delimiter = ','
    )]
    admins: Vec<String>,
    /// A proxy (CIDR or address, repeatable) whose X-Forwarded-For names the real client: rate
    /// limits then key on that client, and the proxy is not capped per address.
    #[arg(
        long = "trusted-proxy",
        value_name = "CIDR",
        env = "SHOPDESK_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    trusted_proxies: Vec<String>,
    /// Also read messages in other languages than the shop's (Chinese, German, ...) with
    /// multilingual-e5-small and its heads (`shopdesk models fetch multilingual-e5-small`;
    /// about 0.5 GB more memory). Replies are in the shopper's language where the shop has
    /// `prompts/<language>.toml`.
    #[arg(long, env = "SHOPDESK_MULTILINGUAL")]
    multilingual: bool,
    /// Seconds a client has to send a request's headers (idle keep-alive connections included).
    #[arg(long, env = "SHOPDESK_HEADER_TIMEOUT_SECS")]
    header_timeout_secs: Option<u64>,
    /// Open connections allowed from one address (0: no cap).
    #[arg(long, env = "SHOPDESK_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<usize>,
    /// Days a session token stays valid.
    #[arg(long, default_value_t = 30)]
    session_days: u64,
    /// Turn off per-session and per-IP rate limits (load tests from one address).
    #[arg(long)]
    no_rate_limits: bool,
    /// NLU workers: 1 computes each batch on every core; N > 1 computes N batches at once, one
    /// core each (default: one per core, at most 4).
    #[arg(long, env = "SHOPDESK_NLU_WORKERS")]
    nlu_workers: Option<usize>,
    /// Threads for sockets and HTTP (default: a quarter of the cores, at least 1). The NLU
    /// worker uses `--threads` cores for the encoder; sharing cores with it costs latency.
    #[arg(long, env = "SHOPDESK_IO_THREADS")]
    io_threads: Option<usize>,
    /// SQLite synchronous=NORMAL instead of FULL: acknowledged turns survive a killed process
    /// but not a power cut; faster commits.
    #[arg(long)]
    sync_normal: bool,
    /// Serve the shop page, widget and console from this folder (e.g. `web/`) instead of the
    /// copies built into the binary: edit and reload without rebuilding.
    #[arg(long, env = "SHOPDESK_WEB_DIR")]
    web_dir: Option<std::path::PathBuf>,
}

/// `[server]` of the config file.
#[derive(Debug, Default, Clone, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub database_url: Option<String>,
    pub recommend_dir: Option<PathBuf>,
    #[serde(default)]
    pub agents: Vec<AgentEntry>,
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    pub session_secret: Option<String>,
    pub session_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub api_keys: Vec<String>,
    #[serde(default)]
    pub admins: Vec<AgentEntry>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub header_timeout_secs: Option<u64>,
    pub max_connections_per_ip: Option<usize>,
    pub api_per_minute: Option<u32>,
    pub max_message_chars: Option<usize>,
    pub session_messages_per_minute: Option<u32>,
    pub ip_messages_per_minute: Option<u32>,
    pub ip_connections_per_minute: Option<u32>,
    pub idle_timeout_secs: Option<u64>,
}

fn parse_agent(s: &str) -> Result<AgentEntry> {
    let (name, hash) = s
        .split_once(':')
        .with_context(|| format!("--agent {s}: expected NAME:SHA256"))?;
    Ok(AgentEntry {
        name: name.trim().to_string(),
        token_sha256: hash.trim().to_string(),
    })
}

pub fn config(a: &ServeArgs, s: &Settings, file: &FileConfig) -> Result<ServerConfig> {
    let f: ServerFile = match &file.server {
        Some(v) => v
            .clone()
            .try_into()
            .context("config file: invalid [server] table")?,
        None => ServerFile::default(),
    };
    let host = a
        .host
        .clone()
        .or(f.host)
        .unwrap_or_else(|| "127.0.0.1".into());
    let port = a.port.or(f.port).unwrap_or(8080);
    let addr: SocketAddr = (host.as_str(), port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve host {host}"))?
        .next()
        .with_context(|| format!("host {host} has no address"))?;
    let mut agents = f.agents;
    for x in &a.agents {
        agents.push(parse_agent(x)?);
    }
    let mut limits = Limits::default();
    if let Some(v) = f.max_message_chars {
        limits.max_message_chars = v;
    }
    if let Some(v) = f.session_messages_per_minute {
        limits.session_per_minute = v;
    }
    if let Some(v) = f.ip_messages_per_minute {
        limits.ip_messages_per_minute = v;
    }
    if let Some(v) = f.ip_connections_per_minute {
        limits.ip_connections_per_minute = v;
    }
    if let Some(v) = f.idle_timeout_secs {
        limits.idle_timeout = Duration::from_secs(v.max(1));
    }
    if let Some(v) = f.api_per_minute {
        limits.ip_api_per_minute = v;
    }
    if let Some(v) = a.header_timeout_secs.or(f.header_timeout_secs) {
        limits.conn.header_read_timeout = Duration::from_secs(v.max(1));
    }
    if let Some(v) = a.max_connections_per_ip.or(f.max_connections_per_ip) {
        limits.conn.max_per_ip = v;
    }
    if a.no_rate_limits {
        limits.session_per_minute = 0;
        limits.ip_messages_per_minute = 0;
        limits.ip_connections_per_minute = 0;
        limits.ip_api_per_minute = 0;
        limits.conn.max_per_ip = 0;
    }
    let mut admins = f.admins;
    for x in &a.admins {
        admins.push(parse_agent(x)?);
    }
    let mut trusted_proxies = TrustedProxies::default();
    for t in f.trusted_proxies.iter().chain(&a.trusted_proxies) {
        trusted_proxies.extend(
            t.parse::<TrustedProxies>()
                .map_err(|e| anyhow::anyhow!("--trusted-proxy: {e}"))?,
        );
    }
    let mut api_keys = f.api_keys;
    api_keys.extend(a.api_keys.iter().cloned());
    let secret_file = a.session_secret_file.clone().or(f.session_secret_file);
    let session_secret = match (&a.session_secret, secret_file) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(path)) => Some(read_secret_file(&path)?),
        (None, None) => f.session_secret,
    };
    let mut nlu = NluConfig::new(s.encoder.clone(), &s.models_root);
    nlu.device = s.device;
    nlu.precision = s.precision.unwrap_or(shopdesk::nlu::Precision::Bf16);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    nlu.workers = a.nlu_workers.unwrap_or(cores.min(4)).max(1);
    // One worker stays free for chat turns however much API work is queued; a small batch
    // lane answers 429 instead of queueing without bound.
    nlu.batch_workers = Some(nlu.workers.saturating_sub(1).max(1));
    nlu.batch_queue_capacity = 32;
    let multilingual = a.multilingual.then(|| {
        // The converted model `models fetch multilingual-e5-small` wrote under the models root.
        let mut source = s.encoder.clone();
        source.name = shopdesk::nlu::hub::MULTILINGUAL_ENCODER.to_string();
        source.model_dir = None;
        source.offline = true;
        let mut m = NluConfig::new(source, &s.models_root);
        m.device = s.device;
        m.precision = nlu.precision;
        // One worker: other languages are the smaller share of a shop's chats.
        m.workers = 1;
        m
    });
    let mut allowed_origins = f.allowed_origins;
    allowed_origins.extend(a.allowed_origins.iter().cloned());
    Ok(ServerConfig {
        addr,
        database_url: a
            .database_url
            .clone()
            .or(f.database_url)
            .unwrap_or_else(|| "sqlite://shopdesk.db".into()),
        synchronous_full: !a.sync_normal,
        engine: EngineConfig {
            nlu,
            index_dir: s.index_dir.clone(),
            prompts_dir: s.prompts_dir.clone(),
            locale: s.locale.clone(),
            recommend_dir: a
                .recommend_dir
                .clone()
                .or(f.recommend_dir)
                .unwrap_or_else(|| s.models_root.join("recommend")),
            multilingual,
        },
        session_secret,
        session_ttl: Duration::from_secs(a.session_days.max(1) * 86_400),
        agents,
        admins,
        api_keys,
        trusted_proxies,
        allowed_origins,
        limits,
        web_dir: a.web_dir.clone(),
    })
}

/// The session key from a file: its first line, trimmed; at least 32 characters.
fn read_secret_file(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the session secret file {}", path.display()))?;
    let key = text.lines().next().unwrap_or("").trim().to_string();
    if key.len() < 32 {
        bail!(
            "{}: the session secret needs at least 32 characters (make one with `openssl rand -hex 32 > {}`)",
            path.display(),
            path.display()
        );
    }
    Ok(key)
}

pub fn run(a: ServeArgs, s: &Settings, file: &FileConfig) -> Result<()> {
    let cfg = config(&a, s, file)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.io_threads.unwrap_or(cores / 4).max(1))
        .enable_all()
        .thread_name("shopdesk-io")
        .build()?;
    rt.block_on(async move {
        let running = server::start(cfg, shutdown_signal())
            .await
            .context("cannot start the server")?;
        // One line on stdout that scripts (tests, the load generator) wait for.
        println!("shopdesk listening on http://{}", running.addr);
        eprintln!(
            "shop: http://{0}/ · agent console: http://{0}/console · chat: ws://{0}/v1/chat · \
             ready: http://{0}/readyz · metrics: http://{0}/metrics",
            running.addr
        );
        running.handle.await??;
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("shutting down: finishing open requests");
}

#[derive(Args)]
pub struct AgentTokenArgs {
    /// The agent's name, shown to shoppers ("Alex joined the chat").
    #[arg(long)]
    name: String,
}

#[derive(Args)]
pub struct ApiKeyArgs {}

/// Prints a new API key and the line that configures its hash.
pub fn api_key(_a: ApiKeyArgs) -> Result<()> {
    let key = new_token();
    println!("API key (shown once; it is not stored anywhere): {key}");
    println!();
    println!("shopdesk.toml:");
    println!("[server]");
    println!("api_keys = [\"{}\"]", hash_token(&key));
    println!();
    println!("or: shopdesk serve --api-key {}", hash_token(&key));
    Ok(())
}

/// Prints a new bearer token and the line that configures its hash.
pub fn agent_token(a: AgentTokenArgs) -> Result<()> {
    let name = a.name.trim();
    if name.is_empty() || name.contains(':') || name.contains(',') {
        bail!("--name must be non-empty without ':' or ','");
    }
    let token = new_token();
    println!("token (shown once; give it to {name}; it is not stored anywhere): {token}");
    println!();
    println!("shopdesk.toml:");
    println!("[[server.agents]]");
    println!("name = \"{name}\"");
    println!("token_sha256 = \"{}\"", hash_token(&token));
    println!();
    println!("or: shopdesk serve --agent {name}:{}", hash_token(&token));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_agents_are_name_hash_pairs() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shopdesk.example.toml");
        let f = FileConfig::load(Some(&path)).expect("example config");
        let s: ServerFile = f
            .server
            .expect("[server]")
            .try_into()
            .expect("valid [server]");
        assert_eq!(s.port, Some(8080));
        assert_eq!(s.allowed_origins, vec!["https://shop.example".to_string()]);
        let a = parse_agent("alex:abc").expect("pair");
        assert_eq!((a.name.as_str(), a.token_sha256.as_str()), ("alex", "abc"));
        assert!(parse_agent("no-colon").is_err());
    }
}
