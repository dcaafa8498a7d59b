//! sidekey: a credential-injecting reverse proxy that sits beside an application.
//!
//! The application calls `/proxy/<endpoint>` with its own secret key and the names of a
//! connection; sidekey finds the stored credential, rewrites the URL onto the provider's base
//! URL, injects the credential, and streams the exchange through unchanged.
//!
//! # Modules
//! Listed bottom-up: each depends only on modules above it (`tests/module_graph.rs` keeps the
//! graph acyclic).
//! - [`secret`], [`body`], [`atomic_file`], [`template`], [`netpolicy`], [`error`]: redacted
//!   secrets, the body type, crash-safe writes, `${...}` templates, which addresses a caller's
//!   `Base-Url-Override` may reach, the one error type and its JSON response.
//! - [`memory`]: freed memory handed back to the OS after a snapshot is built.
//! - [`background`]: a low-priority runtime on its own thread, where management requests and
//!   the store's writer run, so they take only the time proxied requests leave.
//! - [`metrics`]: the Prometheus registry and the calls that record into it.
//! - [`auth`]: caller keys: SHA-256 digests checked in constant time, scopes.
//! - [`config`]: providers.yaml and the vault, validated into one immutable [`config::Snapshot`];
//!   [`config::sealed`] opens and seals the vault's secret fields (`SIDEKEY_ENCRYPTION_KEY`,
//!   `enc:v1:…`); [`config::reload`] swaps in a new snapshot when the files change.
//! - [`credstore`]: the state file that keeps refreshed credentials of a read-only vault.
//! - [`upstream`]: the pooled upstream client, the connector with `--resolve` pins and the
//!   override address policy, the rustls client config; shared by proxy, oauth and otel.
//! - [`otel`]: OpenTelemetry spans per request, upstream attempt and token call, exported over
//!   OTLP/HTTP when `--otlp-endpoint` is set.
//! - [`oauth`]: OAuth access tokens per connection: proactive and 401-driven refresh,
//!   single-flight, cool-down after failures, client-credentials tokens.
//! - [`webhooks`]: auth webhooks as Nango sends them (body, signatures, durable outbox,
//!   delivery with backoff) and the connection auth-error state they announce.
//! - [`state`]: the process state (snapshot, tokens, metrics, auth errors) and the apply path: a new
//!   snapshot swapped in, its changes logged, tokens pruned.
//! - [`store`]: the store seam, the vault file backend, the PostgreSQL backend of a fleet
//!   (change log, LISTEN/NOTIFY, refresh lease), connect sessions, and the one writer (group
//!   commit).
//! - [`proxy`]: the request path — [`proxy::plan`] (route, auth, controls, connection, headers,
//!   inject, rewrite: pure), forward (retry, replay, timeouts, decompression), the access log.
//! - [`app`]: [`app::App`] and its builder, the one place that wires state, store, upstream,
//!   oauth and metrics.
//! - [`api`]: Nango's management API: providers, integrations, connections, read and written.
//! - [`connect`]: Nango's Connect: connect sessions, the auth routes the frontend SDK calls,
//!   the public listener's routes.
//! - [`router`]: which handler answers a request, and the scope each management route needs.
//! - [`conn`], [`server`], [`tls`], [`admin`]: one caller connection (protocol, header and idle
//!   limits); the proxy accept loop, connection limit and drain; listener TLS with certificate
//!   reload; `/live`, `/ready`, `/metrics`.
//! - [`telemetry`], [`cli`]: the tracing subscriber; the command line (every flag also reads
//!   `SIDEKEY_<FLAG>`).
//! - [`run`](mod@run): [`run()`](fn@run): settings, bound listeners and a shutdown future in; serves until the
//!   shutdown, then drains. `main.rs` parses flags, binds and waits for signals around it.
//!
//! # Glossary
//! - **provider**: an API's entry in providers.yaml (base URL, auth mode, templates, retry hints).
//! - **integration**: the operator's use of a provider, named by its `unique_key`
//!   (the `Provider-Config-Key` header), with OAuth client settings or key placement.
//! - **connection**: one customer's credential for an integration (`Connection-Id`).
//! - **vault**: the file holding integrations, connections and caller key digests.
//! - **snapshot**: providers + vault compiled together; swapped atomically, never mutated.

pub mod admin;
pub mod api;
pub mod app;
pub mod atomic_file;
pub mod auth;
pub mod background;
pub mod body;
pub mod cli;
pub mod config;
pub mod conn;
pub mod connect;
pub mod credstore;
pub mod error;
pub mod memory;
pub mod metrics;
pub mod netpolicy;
pub mod oauth;
pub mod otel;
pub mod proxy;
pub mod router;
pub mod run;
pub mod secret;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod tls;
pub mod upstream;
pub mod webhooks;

pub use run::{run, Listeners, RunError, Settings};
