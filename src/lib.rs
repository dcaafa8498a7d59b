//! sidekey: a credential-injecting reverse proxy that sits beside an application.
//!
//! The application calls `/proxy/<endpoint>` with its own secret key and the names of a
//! connection; sidekey finds the stored credential, rewrites the URL onto the provider's base
//! URL, injects the credential, and streams the exchange through unchanged.
//!
//! # Modules
//! - [`cli`]: the command line; every flag also reads `SIDEKEY_<FLAG>`.
//! - [`config`]: providers.yaml and the vault, validated into one immutable [`config::Snapshot`];
//!   [`config::reload`] swaps in a new one when the files change.
//! - [`template`]: `${...}` templates, compiled when a snapshot is built.
//! - [`auth`]: the caller's `Authorization: Bearer` key, checked in constant time.
//! - [`proxy`]: the request path — route, rewrite, headers, inject, forward (retry, replay,
//!   timeouts, decompression) — and the upstream client.
//! - [`oauth`]: OAuth access tokens per connection: proactive and 401-driven refresh,
//!   single-flight, cool-down after failures, client-credentials tokens.
//! - [`credstore`]: where refreshed credentials persist (vault patch or state file).
//! - [`sealed`]: encryption at rest: the vault's secret fields sealed with AES-256-GCM under
//!   `SIDEKEY_ENCRYPTION_KEY` (`enc:v1:…`), opened when the vault is loaded.
//! - [`netpolicy`]: which addresses a caller's `Base-Url-Override` may reach.
//! - [`server`]: the proxy accept loop (HTTP/1.1 + h2c, or TLS), connection limit, graceful drain.
//! - [`conn`]: one caller connection: protocol choice, header and idle limits ([`conn::Limits`]).
//! - [`tls`]: TLS on the proxy listener; the certificate reloads when its files change.
//! - [`admin`]: `/live`, `/ready`, `/metrics`.
//! - [`router`]: which handler answers a request, and the scope each management route needs.
//! - [`api`]: Nango's management API: providers, integrations, connections, read and written.
//! - [`store`]: the store seam, the vault file backend, and the one writer (group commit).
//! - [`state`]: the apply path: a new snapshot swapped in, its changes logged, tokens pruned.
//! - [`metrics`]: the Prometheus registry and the calls that record into it.
//! - [`telemetry`]: tracing setup and the per-request access log (byte counts, masked URLs).
//! - [`otel`]: OpenTelemetry spans per request, upstream attempt and token call, exported over
//!   OTLP/HTTP when `--otlp-endpoint` is set.
//! - [`error`]: the one error type and its JSON response.
//! - [`body`], [`secret`], [`atomic_file`]: the body type, redacted secrets, crash-safe writes.
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
pub mod body;
pub mod cli;
pub mod config;
pub mod conn;
pub mod credstore;
pub mod error;
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

pub use run::{run, Listeners, RunError, Settings};
