//! Prometheus metrics: one registry per process, served as text on the admin listener.
//!
//! Every label value comes from a closed set: integration names from the loaded snapshot
//! (anything a caller names that the snapshot does not know is `unknown`), HTTP methods the proxy
//! accepts (others are `other`), status classes, and `&'static str` results chosen in code. A
//! caller therefore cannot grow the number of series, and no label ever holds a credential, a
//! path or a query.
//!
//! Other modules record through the small methods here ([`Metrics::retry`],
//! [`Metrics::token_refresh`], [`Metrics::reload`], [`Metrics::set_generation`], ...), so the
//! metric names and labels stay in this one file.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// The integration label of a request that named no integration the snapshot knows.
pub const UNKNOWN_INTEGRATION: &str = "unknown";

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    integration: String,
    method: &'static str,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IntegrationLabel {
    integration: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

type LatencyFamily = Family<IntegrationLabel, Histogram, fn() -> Histogram>;

/// All of sidekey's metrics. Cheap to share: every handle is an atomic behind an `Arc`.
pub struct Metrics {
    /// Tells apart the registries of one process, so that handles cached on an integration
    /// are only used with the registry that made them.
    id: u64,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    upstream_latency: LatencyFamily,
    retries: Family<IntegrationLabel, Counter>,
    token_refreshes: Family<ResultLabel, Counter>,
    reloads: Family<ResultLabel, Counter>,
    generation: Gauge,
    in_flight: Gauge,
    client_connections: Gauge,
    oauth_connections: Gauge,
    auth_errors: Family<IntegrationLabel, Gauge>,
    webhook_deliveries: Family<ResultLabel, Counter>,
    webhook_pending: Gauge,
    cache_loads: Family<ResultLabel, Counter>,
    cache_evictions: Counter,
    cached_connections: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn latency_histogram() -> Histogram {
    // 5 ms to ~41 s: covers a loopback echo as well as a slow report export.
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sidekey");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Proxy requests answered, by integration, method and status class",
            requests.clone(),
        );
        let upstream_latency: LatencyFamily = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "upstream_latency",
            "Time from sending a request upstream to its response head, per attempt",
            Unit::Seconds,
            upstream_latency.clone(),
        );
        let retries = Family::<IntegrationLabel, Counter>::default();
        registry.register(
            "retries",
            "Upstream requests sent again after a retryable failure",
            retries.clone(),
        );
        let token_refreshes = Family::<ResultLabel, Counter>::default();
        registry.register(
            "token_refreshes",
            "OAuth token refreshes, by result",
            token_refreshes.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "reloads",
            "Configuration reloads, by result",
            reloads.clone(),
        );
        let generation = Gauge::default();
        registry.register(
            "snapshot_generation",
            "Generation number of the configuration snapshot in use",
            generation.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "Proxy requests received whose response has not finished",
            in_flight.clone(),
        );
        let client_connections = Gauge::default();
        registry.register(
            "client_connections",
            "Open connections from callers to the proxy listener",
            client_connections.clone(),
        );
        let oauth_connections = Gauge::default();
        registry.register(
            "oauth_connections",
            "OAuth connections whose token state is held in memory",
            oauth_connections.clone(),
        );
        let auth_errors = Family::<IntegrationLabel, Gauge>::default();
        registry.register(
            "connection_auth_errors",
            "Connections whose credential the upstream refused or whose token refresh failed, by integration",
            auth_errors.clone(),
        );
        let webhook_deliveries = Family::<ResultLabel, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts, by result (delivered, retry, failed, expired)",
            webhook_deliveries.clone(),
        );
        let webhook_pending = Gauge::default();
        registry.register(
            "webhook_outbox_pending",
            "Webhook events committed to the outbox and not yet delivered",
            webhook_pending.clone(),
        );
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let cache_loads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "connection_cache_loads",
            "Connections read from the store on a cache miss (PostgreSQL store), by result: found, absent, error",
            cache_loads.clone(),
        );
        let cache_evictions = Counter::default();
        registry.register(
            "connection_cache_evictions",
            "Connections evicted from the bounded connection cache",
            cache_evictions.clone(),
        );
        let cached_connections = Gauge::default();
        registry.register(
            "connection_cache_connections",
            "Connections the bounded connection cache holds (PostgreSQL store)",
            cached_connections.clone(),
        );
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            registry,
            requests,
            upstream_latency,
            retries,
            token_refreshes,
            reloads,
            generation,
            in_flight,
            client_connections,
            oauth_connections,
            auth_errors,
            webhook_deliveries,
            webhook_pending,
            cache_loads,
            cache_evictions,
            cached_connections,
        }
    }

    /// The handles of `int`, made on first use and kept on the integration, so that the
    /// request path counts without building labels or taking the family's lock.
    fn handles<'a, I: Labelled + ?Sized>(&self, int: &'a I) -> Option<&'a IntegrationMetrics> {
        let h = int.handle_slot().get_or_init(|| IntegrationMetrics {
            owner: self.id,
            latency: self
                .upstream_latency
                .get_or_create(&IntegrationLabel {
                    integration: int.label().to_string(),
                })
                .clone(),
            retries: self
                .retries
                .get_or_create(&IntegrationLabel {
                    integration: int.label().to_string(),
                })
                .clone(),
            requests: Default::default(),
        });
        (h.owner == self.id).then_some(h)
    }

    /// Counts one answered request of a known integration (or of none: `unknown`).
    pub fn request_of<I: Labelled + ?Sized>(&self, int: Option<&I>, method: &Method, status: u16) {
        let Some((int, h)) = int.and_then(|i| Some((i, self.handles(i)?))) else {
            let label = int.map_or(UNKNOWN_INTEGRATION, |i| i.label());
            return self.request(label, method, status);
        };
        let (m, c) = (method_index(method), class_index(status));
        h.requests[m][c]
            .get_or_init(|| {
                self.requests
                    .get_or_create(&RequestLabels {
                        integration: int.label().to_string(),
                        method: method_label(method),
                        status_class: status_class(status),
                    })
                    .clone()
            })
            .inc();
    }

    /// [`Metrics::upstream_latency`] through the integration's cached handle.
    pub fn upstream_latency_of<I: Labelled + ?Sized>(&self, int: &I, elapsed: Duration) {
        match self.handles(int) {
            Some(h) => h.latency.observe(elapsed.as_secs_f64()),
            None => self.upstream_latency(int.label(), elapsed),
        }
    }

    /// [`Metrics::retry`] through the integration's cached handle.
    pub fn retry_of<I: Labelled + ?Sized>(&self, int: &I) {
        match self.handles(int) {
            Some(h) => {
                h.retries.inc();
            }
            None => self.retry(int.label()),
        }
    }

    /// Counts one answered request. `integration` must come from the snapshot (or be
    /// [`UNKNOWN_INTEGRATION`]), never straight from a request header.
    pub fn request(&self, integration: &str, method: &Method, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                integration: integration.to_string(),
                method: method_label(method),
                status_class: status_class(status),
            })
            .inc();
    }

    /// Records the time to the response head of one upstream attempt.
    pub fn upstream_latency(&self, integration: &str, elapsed: Duration) {
        self.upstream_latency
            .get_or_create(&IntegrationLabel {
                integration: integration.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one retry (an attempt after the first) for `integration`.
    pub fn retry(&self, integration: &str) {
        self.retries
            .get_or_create(&IntegrationLabel {
                integration: integration.to_string(),
            })
            .inc();
    }

    /// Counts one token refresh; `result` is a fixed word such as `success` or `failure`.
    pub fn token_refresh(&self, result: &'static str) {
        self.token_refreshes
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Counts one configuration reload; `result` is a fixed word such as `success` or `failure`.
    pub fn reload(&self, result: &'static str) {
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// Publishes the generation of the snapshot now in use.
    pub fn set_generation(&self, generation: u64) {
        self.generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// Publishes how many OAuth connections have token state in memory.
    pub fn set_oauth_connections(&self, n: usize) {
        self.oauth_connections
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Publishes how many connections of `integration` (a snapshot's key) have an auth error.
    pub fn set_auth_errors(&self, integration: &str, n: usize) {
        self.auth_errors
            .get_or_create(&IntegrationLabel {
                integration: integration.to_string(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts one webhook delivery attempt; `result` is a fixed word.
    pub fn webhook_delivery(&self, result: &'static str) {
        self.webhook_deliveries
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Publishes how many webhook events wait in the outbox.
    pub fn set_webhook_pending(&self, n: usize) {
        self.webhook_pending
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts one read of a connection the cache did not hold; `result`: found, absent, error.
    pub fn cache_load(&self, result: &'static str) {
        self.cache_loads
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Counts connections evicted from the cache and publishes how many it still holds.
    pub fn cache_evicted(&self, evicted: usize, held: usize) {
        self.cache_evictions.inc_by(evicted as u64);
        self.set_cached_connections(held);
    }

    /// Publishes how many connections the cache holds.
    pub fn set_cached_connections(&self, held: usize) {
        self.cached_connections
            .set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    /// Marks a request in flight until the guard drops.
    pub fn in_flight(&self) -> InFlight {
        InFlight::new(&self.in_flight)
    }

    /// Marks a caller connection open until the guard drops.
    pub fn client_connection(&self) -> InFlight {
        InFlight::new(&self.client_connections)
    }

    /// The whole registry in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail; an encoder error would only cut the output short.
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::warn!("metrics encoding failed");
        }
        out
    }
}

/// Holds a gauge one higher until dropped.
#[derive(Debug)]
pub struct InFlight(Gauge);

impl InFlight {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What the registry needs of an integration to count its requests: the label value, and a slot
/// where its handles are kept after first use. `config::Integration` implements it (in
/// `config`), so the metrics depend on nothing above them and the snapshot still carries the
/// handles, which spares the request path a label build and a lookup per request.
pub trait Labelled {
    /// The `integration` label value (the integration's unique key).
    fn label(&self) -> &str;
    /// Where this integration's handles live once made.
    fn handle_slot(&self) -> &OnceLock<IntegrationMetrics>;
}

impl<T: Labelled + ?Sized> Labelled for std::sync::Arc<T> {
    fn label(&self) -> &str {
        (**self).label()
    }
    fn handle_slot(&self) -> &OnceLock<IntegrationMetrics> {
        (**self).handle_slot()
    }
}

/// One integration's series, resolved once per snapshot (see [`Metrics::request_of`]).
pub struct IntegrationMetrics {
    owner: u64,
    latency: Histogram,
    retries: Counter,
    /// By [`method_index`], then [`class_index`]; made when first counted, so that `/metrics`
    /// only shows series that happened.
    requests: [[OnceLock<Counter>; 6]; 8],
}

impl std::fmt::Debug for IntegrationMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntegrationMetrics").finish_non_exhaustive()
    }
}

/// The position of [`method_label`]'s answer among the eight labels.
fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::PATCH => 3,
        Method::DELETE => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// The position of [`status_class`]'s answer among the six classes.
fn class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => 5,
    }
}

/// A bounded method label.
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `2xx`, `4xx`, ...; anything outside 100..=599 is `other`.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(599), "5xx");
        assert_eq!(status_class(42), "other");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let odd = Method::from_bytes(b"PROPFIND").expect("method");
        assert_eq!(method_label(&odd), "other");
    }

    #[test]
    fn encoding_shows_every_family_and_moves_with_use() {
        let m = Metrics::new();
        m.request("github", &Method::GET, 200);
        m.request("github", &Method::GET, 201);
        m.request(UNKNOWN_INTEGRATION, &Method::POST, 404);
        m.upstream_latency("github", Duration::from_millis(30));
        m.retry("github");
        m.token_refresh("success");
        m.reload("failure");
        m.set_generation(7);
        let guard = m.in_flight();
        let conn = m.client_connection();
        let text = m.encode();
        for line in [
            r#"sidekey_requests_total{integration="github",method="GET",status_class="2xx"} 2"#,
            r#"sidekey_requests_total{integration="unknown",method="POST",status_class="4xx"} 1"#,
            r#"sidekey_upstream_latency_seconds_count{integration="github"} 1"#,
            r#"sidekey_retries_total{integration="github"} 1"#,
            r#"sidekey_token_refreshes_total{result="success"} 1"#,
            r#"sidekey_reloads_total{result="failure"} 1"#,
            "sidekey_snapshot_generation 7",
            "sidekey_requests_in_flight 1",
            "sidekey_client_connections 1",
        ] {
            assert!(text.contains(line), "missing `{line}` in:\n{text}");
        }
        drop((guard, conn));
        let text = m.encode();
        assert!(text.contains("sidekey_requests_in_flight 0"), "{text}");
        assert!(text.contains("sidekey_client_connections 0"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn cached_integration_handles_count_into_the_same_series() {
        let src = crate::config::Sources {
            providers_name: "providers.yaml".into(),
            providers: "p: {auth_mode: API_KEY, proxy: {base_url: \"https://p.example\", headers: {x-key: \"${apiKey}\"}}}"
                .into(),
            vault_name: "vault.yaml".into(),
            vault: "integrations: [{unique_key: gh, provider: p}]".into(),
        };
        let snap = crate::config::snapshot::build(&src, &Default::default()).expect("snapshot");
        let gh = snap.integrations.get("gh").expect("gh");
        let m = Metrics::new();
        m.request_of(Some(gh), &Method::GET, 200);
        m.request_of(Some(gh), &Method::GET, 204);
        m.request("gh", &Method::GET, 200);
        m.request_of(None::<&crate::config::Integration>, &Method::PUT, 503);
        m.request_of(Some(gh), &Method::from_bytes(b"PROPFIND").expect("m"), 42);
        m.retry_of(gh);
        m.upstream_latency_of(gh, Duration::from_millis(3));
        // A second registry in the same process must not use the first one's handles.
        let other = Metrics::new();
        other.request_of(Some(gh), &Method::GET, 200);
        other.retry_of(gh);
        let text = m.encode();
        for line in [
            r#"sidekey_requests_total{integration="gh",method="GET",status_class="2xx"} 3"#,
            r#"sidekey_requests_total{integration="unknown",method="PUT",status_class="5xx"} 1"#,
            r#"sidekey_requests_total{integration="gh",method="other",status_class="other"} 1"#,
            r#"sidekey_retries_total{integration="gh"} 1"#,
            r#"sidekey_upstream_latency_seconds_count{integration="gh"} 1"#,
        ] {
            assert!(text.contains(line), "missing `{line}` in:\n{text}");
        }
        let text = other.encode();
        for line in [
            r#"sidekey_requests_total{integration="gh",method="GET",status_class="2xx"} 1"#,
            r#"sidekey_retries_total{integration="gh"} 1"#,
        ] {
            assert!(text.contains(line), "missing `{line}` in:\n{text}");
        }
    }
}
