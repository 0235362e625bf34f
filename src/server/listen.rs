//! The accept loop: HTTP/1 connections with a header-read timeout, a per-address cap on open
//! connections and a total cap, graceful shutdown.
//!
//! Why not `axum::serve`: it has no header-read timeout and no connection caps, so 200 slowloris
//! connections (a few header bytes a minute) stayed open for ever, and a few hundred silent
//! connections from one address exhausted the file limit and took the server offline. hyper's
//! `header_read_timeout` closes a connection whose request head has not fully arrived in time —
//! including an idle keep-alive connection waiting for its next request — and the caps here
//! refuse connections beyond a budget before any byte is read. A trusted proxy's address is not
//! capped per address (every client arrives through it); the total cap still holds.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use super::limits::TrustedProxies;
use super::metrics::Metrics;

/// Connection limits of the accept loop.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnLimits {
    /// A request head (line and headers) must arrive within this time, counted from the
    /// connection's start or the end of its previous response (idle keep-alive included).
    pub header_read_timeout: Duration,
    /// Open connections from one address (0: no cap). Trusted proxies are exempt.
    pub max_per_ip: usize,
    /// Open connections in all (0: no cap).
    pub max_total: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_read_timeout: Duration::from_secs(10),
            max_per_ip: 64,
            max_total: 10_000,
        }
    }
}

/// Fits the total connection cap under the process's open-file limit, so the caps refuse
/// connections before `accept` starts failing with EMFILE (which took the server offline: the
/// database and model files need descriptors too). Raises the soft limit to the hard one first,
/// as servers do. Leaves 128 descriptors for everything else. 0 (no cap) becomes the fd budget.
pub fn fit_to_fd_limit(configured: usize) -> usize {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit write/read the struct we own.
        let soft = unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return configured;
            }
            if lim.rlim_cur < lim.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    lim.rlim_cur = lim.rlim_max;
                }
            }
            lim.rlim_cur
        };
        let budget = usize::try_from(soft)
            .unwrap_or(usize::MAX)
            .saturating_sub(128)
            .max(16);
        let total = if configured == 0 {
            budget
        } else {
            configured.min(budget)
        };
        if total < configured {
            tracing::warn!(
                open_files = soft,
                total,
                "the open-file limit caps connections below the configured total"
            );
        }
        total
    }
    #[cfg(not(unix))]
    configured
}

/// A connection's place in the caps, carried in each request's extensions so that a socket
/// upgraded to a websocket keeps counting against its address until it closes.
#[derive(Clone)]
pub struct ConnSlot(#[allow(dead_code)] Arc<Slot>);

/// Open connections per address.
#[derive(Default)]
struct Open {
    by_ip: Mutex<(HashMap<IpAddr, usize>, usize)>,
}

/// Counts one open connection until dropped.
pub struct Slot {
    open: Arc<Open>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.open.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        g.1 = g.1.saturating_sub(1);
        if let Some(n) = g.0.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                g.0.remove(&self.ip);
            }
        }
    }
}

impl Open {
    fn take(self: &Arc<Self>, ip: IpAddr, per_ip_cap: usize, total_cap: usize) -> Option<Slot> {
        let mut g = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        if total_cap > 0 && g.1 >= total_cap {
            return None;
        }
        let n = g.0.entry(ip).or_insert(0);
        if per_ip_cap > 0 && *n >= per_ip_cap {
            return None;
        }
        *n += 1;
        g.1 += 1;
        Some(Slot {
            open: self.clone(),
            ip,
        })
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets open requests finish
/// (sockets that live long — websockets — close themselves on the app's closing signal).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    trusted: TrustedProxies,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let open = Arc::new(Open::default());
    // Every connection task holds a receiver; when all are gone, shutdown is complete.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: wait a moment instead of spinning on the error.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let per_ip = if trusted.contains(peer.ip()) {
            0
        } else {
            limits.max_per_ip
        };
        let Some(slot) = open.take(peer.ip(), per_ip, limits.max_total) else {
            metrics.error("connection_refused");
            tracing::debug!(%peer, "connection refused: too many open connections");
            drop(stream);
            continue;
        };
        // Chat frames are small and come in pairs (typing, reply): without TCP_NODELAY,
        // Nagle's algorithm holds the reply until the client's delayed ACK, 40 ms later.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        let router = router.clone();
        let mut stop = stop_rx.clone();
        let done = done_rx.clone();
        let header_timeout = limits.header_read_timeout;
        let slot = ConnSlot(Arc::new(slot));
        tokio::spawn(async move {
            let _done = done;
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(slot.clone());
                let router = router.clone();
                async move {
                    Ok::<_, Infallible>(
                        router
                            .oneshot(req.map(Body::new))
                            .await
                            .unwrap_or_else(|e| match e {}),
                    )
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let conn = builder
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                // The guard `wait_for` returns is dropped inside, before anything is awaited.
                _ = async { drop(stop.wait_for(|s| *s).await) } => {
                    conn.as_mut().graceful_shutdown();
                    // Wait for the connection itself now (the stop signal stays true).
                    conn.as_mut().await
                }
            };
            if let Err(e) = ended {
                tracing::trace!("connection from {peer} ended: {e}");
            }
        });
    }
    drop(listener);
    stop_tx.send_replace(true);
    drop(done_rx);
    done_tx.closed().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_cap_fits_under_the_open_file_limit() {
        let total = fit_to_fd_limit(usize::MAX);
        assert!((16..usize::MAX).contains(&total), "{total}");
        assert_eq!(fit_to_fd_limit(10), 10, "a small cap stays");
        assert_eq!(fit_to_fd_limit(0), total, "no cap becomes the fd budget");
    }

    #[test]
    fn caps_per_address_and_in_total_and_frees_on_drop() {
        let open = Arc::new(Open::default());
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let s1 = open.take(a, 2, 3).expect("first");
        let s2 = open.take(a, 2, 3).expect("second");
        assert!(open.take(a, 2, 3).is_none(), "per-address cap");
        let s3 = open.take(b, 2, 3).expect("another address");
        assert!(open.take(b, 2, 3).is_none(), "total cap");
        drop(s1);
        let _s4 = open.take(a, 2, 3).expect("a slot came back");
        assert!(open.take(b, 0, 0).is_some(), "0 = no cap");
        drop((s2, s3));
    }
}
