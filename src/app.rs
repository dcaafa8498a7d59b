//! The application: the process state, the request path's shared parts and the store's writer,
//! wired in one place ([`AppBuilder`]), so that the binary and the in-process tests build the
//! same thing.
//!
//! [`App`] is what every handler receives (the router, the management API, the listeners);
//! those sit above this module. Everything the builder wires sits below it: the state and its
//! snapshot, the upstream pools, the OAuth token manager with its credential store, the
//! metrics, the store backend and its writer. The file reload loop and the listeners are
//! started by [`crate::run()`](fn@crate::run), which owns the process's lifetime.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::background::{Background, Foreground};
use crate::config::Snapshot;
use crate::credstore::CredStore;
use crate::metrics::Metrics;
use crate::oauth::endpoint::{HttpTokenEndpoint, TokenEndpoint};
use crate::oauth::{OAuthOptions, TokenManager};
use crate::proxy::{Proxy, ProxyOptions};
use crate::state::State;
use crate::store::sessions::{MemorySessions, SessionStore};
use crate::store::writer::Writer;
use crate::store::Backend;
use crate::upstream::{ClientOptions, UpstreamClient};
use crate::webhooks::outbox;
use crate::webhooks::status::AuthErrors;
use crate::webhooks::{AuthEvent, Hooks, Operation};

/// Everything the handlers share.
pub struct App {
    /// The serving snapshot, token state and metrics (also held by the writer and the reload
    /// loop).
    pub state: Arc<State>,
    /// The request path's upstream pools and settings.
    pub proxy: Proxy,
    /// The one writer of the store, when the app has a store (API writes go through it;
    /// without one they answer 409 `store_read_only`). Its task runs on `background`.
    pub writer: Option<Writer>,
    /// Where management requests and the writer run: a low-priority thread of their own.
    pub background: Background,
    /// The request runtime, for the upstream calls a management request makes.
    pub foreground: Foreground,
    /// Auth webhooks: [`Hooks::emit`] commits an event to the outbox and delivers it.
    pub hooks: Arc<Hooks>,
    /// Where connect sessions live (in memory unless a store says otherwise).
    pub sessions: Arc<dyn SessionStore>,
    /// The Connect flow's settings.
    pub connect: ConnectOptions,
}

/// The Connect flow's settings (`--public-url`, session lifetime, attempts per session).
#[derive(Debug)]
pub struct ConnectOptions {
    /// The base of `connect_link` and OAuth redirect URIs: `--public-url`, or, when it is not
    /// given, set once the listeners are bound (the connect listener's address, else the main
    /// one's).
    pub public_url: std::sync::OnceLock<String>,
    /// What `/oauth/callback` is appended to for OAuth redirect URIs: `--public-url`, or the
    /// root of the listener end users reach (set with the listeners).
    pub callback_base: std::sync::OnceLock<String>,
    /// How long a connect session works (Nango: 30 minutes).
    pub session_ttl: std::time::Duration,
    /// Auth attempts one session may make; the next ones answer 429 `too_many_attempts`.
    pub max_attempts: u32,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            public_url: std::sync::OnceLock::new(),
            callback_base: std::sync::OnceLock::new(),
            session_ttl: std::time::Duration::from_secs(30 * 60),
            max_attempts: 20,
        }
    }
}

impl App {
    /// Starts building an app that serves `snapshot`.
    pub fn builder(snapshot: Snapshot) -> AppBuilder {
        AppBuilder {
            snapshot,
            client: None,
            options: ProxyOptions::default(),
            oauth: OAuthOptions::default(),
            credentials: None,
            token_endpoint: None,
            backend: None,
            webhooks: None,
            sessions: None,
            connect: ConnectOptions::default(),
        }
    }

    /// Announces an auth event (the Connect flow calls this when it creates or overrides a
    /// connection): a successful creation or override clears the connection's auth error,
    /// then the webhook is emitted.
    pub fn announce(&self, ev: AuthEvent) {
        if ev.success && matches!(ev.operation, Operation::Creation | Operation::Override) {
            self.state
                .errors
                .clear_connection(&ev.provider_config_key, &ev.connection_id);
        }
        self.hooks.emit(ev);
    }

    /// The metrics registry (served on the admin listener).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.state.metrics
    }
}

/// How an [`App`] is put together; every part has a default fit for a test.
pub struct AppBuilder {
    snapshot: Snapshot,
    client: Option<UpstreamClient>,
    options: ProxyOptions,
    oauth: OAuthOptions,
    credentials: Option<CredStore>,
    token_endpoint: Option<Arc<dyn TokenEndpoint>>,
    backend: Option<Arc<dyn Backend>>,
    webhooks: Option<(crate::webhooks::Settings, outbox::Store)>,
    sessions: Option<Arc<dyn SessionStore>>,
    connect: ConnectOptions,
}

/// Why an app could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot build the upstream client: {0}")]
    Upstream(crate::upstream::ClientTlsError),
    #[error("cannot start the background thread: {0}")]
    Background(std::io::Error),
}

impl AppBuilder {
    /// The upstream pools (default: web PKI roots, no pins, default timeouts).
    pub fn client(mut self, client: UpstreamClient) -> Self {
        self.client = Some(client);
        self
    }

    /// The request path's settings.
    pub fn options(mut self, options: ProxyOptions) -> Self {
        self.options = options;
        self
    }

    /// The token manager's settings (cool-down after a failed refresh).
    pub fn oauth(mut self, options: OAuthOptions) -> Self {
        self.oauth = options;
        self
    }

    /// Where refreshed OAuth credentials persist (default: in memory only).
    pub fn credentials(mut self, store: CredStore) -> Self {
        self.credentials = Some(store);
        self
    }

    /// The token endpoint client (default: HTTP through the trusted pool, with the response
    /// timeout of [`AppBuilder::options`]).
    pub fn token_endpoint(mut self, endpoint: Arc<dyn TokenEndpoint>) -> Self {
        self.token_endpoint = Some(endpoint);
        self
    }

    /// The store API writes commit to; its writer task starts in [`AppBuilder::build`].
    pub fn store(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Auth webhooks with these settings, committed to `outbox` (default: off).
    pub fn webhooks(
        mut self,
        settings: crate::webhooks::Settings,
        outbox: impl Into<outbox::Store>,
    ) -> Self {
        self.webhooks = Some((settings, outbox.into()));
        self
    }

    /// Where connect sessions live (default: this process's memory).
    pub fn sessions(mut self, sessions: Arc<dyn SessionStore>) -> Self {
        self.sessions = Some(sessions);
        self
    }

    /// The Connect flow's settings.
    pub fn connect(mut self, options: ConnectOptions) -> Self {
        self.connect = options;
        self
    }

    /// Wires the parts. Must run on the request runtime (it becomes [`App::foreground`]);
    /// starts the background thread, and the writer task on it when there is a store; the
    /// credential store's state file is pruned against the snapshot (blocking file I/O, once,
    /// before serving).
    pub fn build(self) -> Result<Arc<App>, BuildError> {
        let client = match self.client {
            Some(c) => c,
            None => UpstreamClient::new(&ClientOptions::default()).map_err(BuildError::Upstream)?,
        };
        let endpoint = self.token_endpoint.unwrap_or_else(|| {
            Arc::new(HttpTokenEndpoint::new(
                client.trusted.clone(),
                self.options.response_timeout,
            ))
        });
        let credentials = self.credentials.unwrap_or_else(CredStore::memory);
        let metrics = Arc::new(Metrics::new());
        metrics.set_generation(self.snapshot.generation);
        let mut oauth = TokenManager::new(endpoint, Arc::new(credentials), self.oauth);
        oauth.set_metrics(metrics.clone());
        oauth.prune(&self.snapshot);
        let hooks = Arc::new(match self.webhooks {
            Some((settings, outbox)) => Hooks::start(settings, outbox, &client, metrics.clone()),
            None => Hooks::disabled(),
        });
        let errors = Arc::new(AuthErrors::new(hooks.clone(), metrics.clone()));
        let state = Arc::new(State {
            snapshot: ArcSwap::from_pointee(self.snapshot),
            oauth,
            metrics,
            errors,
            cold: std::sync::OnceLock::new(),
        });
        state.oauth.observe(state.errors.clone());
        let weak = Arc::downgrade(&state);
        state.errors.set_current(Box::new(move || {
            weak.upgrade().map(|s| s.snapshot.load_full())
        }));
        let background = Background::start("sidekey-manage").map_err(BuildError::Background)?;
        let writer = self
            .backend
            .map(|b| Writer::spawn(background.handle(), state.clone(), b));
        Ok(Arc::new(App {
            proxy: Proxy {
                state: state.clone(),
                client,
                options: self.options,
            },
            state,
            writer,
            background,
            foreground: Foreground::current(),
            hooks,
            sessions: self
                .sessions
                .unwrap_or_else(|| Arc::new(MemorySessions::new())),
            connect: self.connect,
        }))
    }
}
