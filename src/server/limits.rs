//! Abuse limits: message and frame sizes, rate limits per session and per client IP, idle
//! timeouts. Rates are GCRA (governor): a burst, then a steady rate per minute; 0 turns a
//! limit off (load tests from one address do that).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::App;

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Longest shopper message, in characters (longer ones get `too_long`).
    pub max_message_chars: usize,
    /// Largest websocket frame/message, in bytes: beyond it the connection is closed (1009).
    pub max_frame_bytes: usize,
    /// Largest HTTP request body, in bytes.
    pub max_body_bytes: usize,
    /// Most texts per `/v1/classify` or `/v1/sentiment` call.
    pub max_batch_texts: usize,
    /// Messages per minute per shopper socket, and the burst allowed.
    pub session_per_minute: u32,
    pub session_burst: u32,
    /// Messages per minute from one IP address over all its sockets, and the burst.
    pub ip_messages_per_minute: u32,
    pub ip_messages_burst: u32,
    /// New websocket connections per minute from one IP address, and the burst.
    pub ip_connections_per_minute: u32,
    pub ip_connections_burst: u32,
    /// A socket with no frame from the client for this long is closed.
    pub idle_timeout: Duration,
    /// A socket must say hello within this time.
    pub hello_timeout: Duration,
    /// Bad or rate-limited frames a socket may send before it is closed (1008).
    pub max_violations: u32,
    /// Calls per minute from one IP address to the stateless API (`/v1/classify`,
    /// `/v1/sentiment`, `/v1/recommendations`, `/v1/products`), and the burst. Callers with a
    /// valid API key are not limited per address (the NLU's batch lane still bounds them).
    pub ip_api_per_minute: u32,
    pub ip_api_burst: u32,
    /// Connection caps and the header-read timeout of the accept loop.
    pub conn: super::listen::ConnLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_chars: 2000,
            max_frame_bytes: 16 * 1024,
            max_body_bytes: 1024 * 1024,
            max_batch_texts: 256,
            session_per_minute: 30,
            session_burst: 10,
            ip_messages_per_minute: 600,
            ip_messages_burst: 100,
            ip_connections_per_minute: 60,
            ip_connections_burst: 30,
            idle_timeout: Duration::from_secs(15 * 60),
            hello_timeout: Duration::from_secs(30),
            max_violations: 20,
            ip_api_per_minute: 120,
            ip_api_burst: 20,
            conn: super::listen::ConnLimits::default(),
        }
    }
}

fn quota(per_minute: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_minute)?;
    Some(Quota::per_minute(rate).allow_burst(NonZeroU32::new(burst.max(1))?))
}

/// The shared (per-IP) limiters.
pub struct Limiters {
    ip_messages: Option<DefaultKeyedRateLimiter<IpAddr>>,
    ip_connections: Option<DefaultKeyedRateLimiter<IpAddr>>,
    ip_api: Option<DefaultKeyedRateLimiter<IpAddr>>,
    session: Option<Quota>,
}

impl Limiters {
    pub fn new(l: &Limits) -> Limiters {
        Limiters {
            ip_messages: quota(l.ip_messages_per_minute, l.ip_messages_burst)
                .map(RateLimiter::keyed),
            ip_connections: quota(l.ip_connections_per_minute, l.ip_connections_burst)
                .map(RateLimiter::keyed),
            ip_api: quota(l.ip_api_per_minute, l.ip_api_burst).map(RateLimiter::keyed),
            session: quota(l.session_per_minute, l.session_burst),
        }
    }

    pub fn allow_api(&self, ip: IpAddr) -> bool {
        self.ip_api
            .as_ref()
            .is_none_or(|l| l.check_key(&ip).is_ok())
    }

    pub fn allow_connection(&self, ip: IpAddr) -> bool {
        self.ip_connections
            .as_ref()
            .is_none_or(|l| l.check_key(&ip).is_ok())
    }

    pub fn allow_message(&self, ip: IpAddr) -> bool {
        self.ip_messages
            .as_ref()
            .is_none_or(|l| l.check_key(&ip).is_ok())
    }

    /// A limiter for one socket.
    pub fn session(&self) -> Option<DefaultDirectRateLimiter> {
        self.session.map(RateLimiter::direct)
    }

    fn forget_idle(&self) {
        for l in [&self.ip_messages, &self.ip_connections, &self.ip_api]
            .into_iter()
            .flatten()
        {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// Forgets the rate state of addresses that went quiet, once a minute, so the per-IP maps do
/// not grow without bound.
pub fn spawn_housekeeping(app: Arc<App>) {
    let weak = Arc::downgrade(&app);
    drop(app);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let Some(app) = weak.upgrade() else { return };
            app.limiters.forget_idle();
        }
    });
}

/// Proxies (`--trusted-proxy CIDR`) whose `X-Forwarded-For` names the real client.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrustedProxies(Vec<ipnet::IpNet>);

impl FromStr for TrustedProxies {
    type Err = String;
    /// Comma-separated CIDRs or plain addresses.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut v = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let net = match part.parse::<ipnet::IpNet>() {
                Ok(n) => n,
                Err(_) => part
                    .parse::<IpAddr>()
                    .map(ipnet::IpNet::from)
                    .map_err(|_| format!("'{part}' is not a CIDR (10.0.0.0/8) or an address"))?,
            };
            v.push(net);
        }
        Ok(TrustedProxies(v))
    }
}

impl TrustedProxies {
    pub fn new(nets: Vec<ipnet::IpNet>) -> Self {
        TrustedProxies(nets)
    }

    pub fn extend(&mut self, other: TrustedProxies) {
        self.0.extend(other.0);
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client a request comes from: the peer, or — when the peer is a trusted proxy — the
    /// rightmost `X-Forwarded-For` address that is not itself a trusted proxy (addresses left of
    /// it were written by the client and prove nothing).
    pub fn client_ip(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        let Some(xff) = forwarded_for else {
            return peer;
        };
        for hop in xff.rsplit(',').map(str::trim) {
            match hop.parse::<IpAddr>() {
                Ok(ip) if self.contains(ip) => continue,
                Ok(ip) => return canonical(ip),
                Err(_) => return peer,
            }
        }
        peer
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, from dual-stack sockets) as IPv4, so one
/// client has one key.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Is a page from `origin` allowed to open the shopper socket on `host`?
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else {
        // Not a browser page: apps and servers send no Origin; browsers always do.
        return true;
    };
    let origin = origin.trim_end_matches('/');
    if allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/') == origin)
    {
        return true;
    }
    // Same origin: the page was served by this server.
    let without_scheme = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    matches!((without_scheme, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let allowed = vec!["https://shop.example".to_string()];
        assert!(origin_allowed(None, Some("x:1"), &allowed));
        assert!(origin_allowed(Some("https://shop.example"), None, &allowed));
        assert!(origin_allowed(
            Some("http://127.0.0.1:8080"),
            Some("127.0.0.1:8080"),
            &allowed
        ));
        assert!(!origin_allowed(
            Some("https://evil.example"),
            Some("127.0.0.1:8080"),
            &allowed
        ));
        assert!(!origin_allowed(
            Some("null"),
            Some("127.0.0.1:8080"),
            &allowed
        ));
        assert!(origin_allowed(
            Some("https://any.example"),
            None,
            &["*".to_string()]
        ));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let t: TrustedProxies = "10.0.0.0/8, 127.0.0.1".parse().expect("cidrs");
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        // Not a proxy: its header is the client's own claim.
        assert_eq!(
            t.client_ip(ip("203.0.113.9"), Some("1.2.3.4")),
            ip("203.0.113.9")
        );
        // A proxy: the rightmost address that is not a proxy.
        assert_eq!(
            t.client_ip(ip("10.1.1.1"), Some("6.6.6.6, 198.51.100.7, 10.2.2.2")),
            ip("198.51.100.7")
        );
        assert_eq!(t.client_ip(ip("127.0.0.1"), None), ip("127.0.0.1"));
        assert_eq!(
            t.client_ip(ip("::ffff:10.1.1.1"), Some("198.51.100.7")),
            ip("198.51.100.7")
        );
        // Garbage in the header: the proxy itself (never a spoofable value).
        assert_eq!(t.client_ip(ip("10.1.1.1"), Some("bogus")), ip("10.1.1.1"));
        assert!("not-a-cidr".parse::<TrustedProxies>().is_err());
    }

    #[test]
    fn ip_limits_apply_per_address_and_zero_disables() {
        let l = Limiters::new(&Limits {
            ip_messages_per_minute: 1,
            ip_messages_burst: 2,
            ..Limits::default()
        });
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        assert!(l.allow_message(a) && l.allow_message(a));
        assert!(!l.allow_message(a), "burst spent");
        assert!(l.allow_message(b), "another address has its own budget");
        let off = Limiters::new(&Limits {
            ip_messages_per_minute: 0,
            ..Limits::default()
        });
        assert!((0..10_000).all(|_| off.allow_message(a)));
    }
}
