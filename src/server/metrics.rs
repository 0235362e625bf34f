//! Prometheus metrics, one registry per server (tests run several servers in one process).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    /// Turn latency by stage: nlu, answer (FAQ + policy + recommendations), store, total.
    pub turn_seconds: HistogramVec,
    pub intents: IntCounterVec,
    pub escalations: IntCounterVec,
    pub active_sessions: IntGauge,
    pub errors: IntCounterVec,
    pub http_requests: IntCounterVec,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric names and labels are static: an error here is a programming mistake.
    r.unwrap_or_else(|e| unreachable!("metric definition: {e}"))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let turn_seconds = must(HistogramVec::new(
            HistogramOpts::new(
                "shopdesk_turn_seconds",
                "Shopper turn latency by stage (nlu, answer, store, total)",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["stage"],
        ));
        let intents = must(IntCounterVec::new(
            Opts::new(
                "shopdesk_intents_total",
                "Shopper messages by predicted intent",
            ),
            &["intent"],
        ));
        let escalations = must(IntCounterVec::new(
            Opts::new(
                "shopdesk_escalations_total",
                "Escalations to a person by reason",
            ),
            &["reason"],
        ));
        let active_sessions = must(IntGauge::new(
            "shopdesk_active_sessions",
            "Open shopper websockets that said hello",
        ));
        let errors = must(IntCounterVec::new(
            Opts::new(
                "shopdesk_errors_total",
                "Errors returned to clients by code",
            ),
            &["code"],
        ));
        let http_requests = must(IntCounterVec::new(
            Opts::new(
                "shopdesk_http_requests_total",
                "HTTP requests by route and status",
            ),
            &["route", "status"],
        ));
        for c in [
            Box::new(turn_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(intents.clone()),
            Box::new(escalations.clone()),
            Box::new(active_sessions.clone()),
            Box::new(errors.clone()),
            Box::new(http_requests.clone()),
        ] {
            must(registry.register(c));
        }
        Metrics {
            registry,
            turn_seconds,
            intents,
            escalations,
            active_sessions,
            errors,
            http_requests,
        }
    }

    pub fn observe_stage(&self, stage: &str, seconds: f64) {
        self.turn_seconds
            .with_label_values(&[stage])
            .observe(seconds);
    }

    pub fn error(&self, code: &str) {
        self.errors.with_label_values(&[code]).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!("metrics encoding failed: {e}");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// Counts an active session while alive.
pub struct SessionGauge(IntGauge);

impl SessionGauge {
    pub fn new(g: &IntGauge) -> SessionGauge {
        g.inc();
        SessionGauge(g.clone())
    }
}

impl Drop for SessionGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}
