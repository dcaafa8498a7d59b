//! Unit tests of the token manager against a counting fake token endpoint.

use std::sync::atomic::AtomicUsize;

use super::endpoint::{TokenFuture, TokenGrant};
use super::*;
use crate::config::{BuildOptions, Sources};

const PROVIDERS: &str = r#"
o: {auth_mode: OAUTH2, token_url: "https://t.example/${connectionConfig.tenant}/token", refresh_params: {extra: "1"}, proxy: {base_url: "https://a.example"}}
ob: {auth_mode: OAUTH2, token_url: "https://t.example/token", token_request_auth_method: basic, token_expiration_buffer: 60, proxy: {base_url: "https://a.example"}}
cc: {auth_mode: OAUTH2_CC, token_url: "https://t.example/cc", token_params: {audience: api}, proxy: {base_url: "https://a.example"}}
"#;

/// One recorded call: URL, form fields, whether HTTP Basic was used.
type Seen = (String, Vec<(String, String)>, bool);

/// A fake endpoint: counts calls, records requests, answers after `delay` with tokens
/// `at-N` / `rt-N`, or fails with `invalid_grant` while `fail` is set.
#[derive(Default)]
struct Fake {
    calls: AtomicUsize,
    fail: std::sync::atomic::AtomicBool,
    delay: Duration,
    expires_in: Option<u64>,
    seen: Mutex<Vec<Seen>>,
}

impl TokenEndpoint for Fake {
    fn exchange(&self, req: TokenRequest) -> TokenFuture<'_> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let form = req
                .form
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_string()))
                .collect();
            self.seen
                .lock()
                .expect("lock")
                .push((req.url.clone(), form, req.basic.is_some()));
            tokio::time::sleep(self.delay).await;
            if self.fail.load(Ordering::SeqCst) {
                return Err(TokenFailure {
                    provider_error: Some("invalid_grant".into()),
                    detail: "test".into(),
                });
            }
            Ok(TokenGrant {
                access_token: Secret::new(format!("at-{n}")),
                refresh_token: Some(Secret::new(format!("rt-{n}"))),
                expires_in: self.expires_in,
            })
        })
    }
}

impl Fake {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn last_form(&self) -> Vec<(String, String)> {
        self.seen
            .lock()
            .expect("lock")
            .last()
            .expect("a call")
            .1
            .clone()
    }
}

fn snapshot(vault: &str) -> Snapshot {
    let src = Sources {
        providers_name: "providers.yaml".into(),
        providers: PROVIDERS.into(),
        vault_name: "vault.yaml".into(),
        vault: vault.into(),
    };
    crate::config::snapshot::build(&src, &BuildOptions::default()).expect("snapshot builds")
}

/// The store's version counter the tests' reloads share (as a process's file store does).
fn versions() -> Arc<crate::config::Versions> {
    static V: std::sync::OnceLock<Arc<crate::config::Versions>> = std::sync::OnceLock::new();
    V.get_or_init(|| Arc::new(crate::config::Versions::starting_now()))
        .clone()
}

/// A reload of `vault` over `previous`, as the file source does it: unchanged records keep
/// their version, changed ones get a new one.
fn reload(previous: &Snapshot, vault: &str) -> Snapshot {
    let src = Sources {
        providers_name: "providers.yaml".into(),
        providers: PROVIDERS.into(),
        vault_name: "vault.yaml".into(),
        vault: vault.into(),
    };
    let opts = BuildOptions {
        versions: Some(versions()),
        ..BuildOptions::default()
    };
    crate::config::snapshot::build_reusing(&src, &opts, Some(previous)).expect("snapshot builds")
}

fn ts(offset_secs: i64) -> String {
    Timestamp::from_second(Timestamp::now().as_second() + offset_secs)
        .expect("ts")
        .to_string()
}

/// One OAUTH2 connection `c` of integration `i` (provider `o`).
fn oauth_vault(access: &str, expires_at: Option<&str>) -> String {
    let exp = expires_at
        .map(|e| format!(", expires_at: \"{e}\""))
        .unwrap_or_default();
    format!(
        r#"
integrations: [{{unique_key: i, provider: o, credentials: {{oauth_client_id: cid, oauth_client_secret: csecret}}}}]
connections:
  - {{connection_id: c, provider_config_key: i, connection_config: {{tenant: t1}}, credentials: {{type: OAUTH2, access_token: {access}, refresh_token: rt-0{exp}}}}}
"#
    )
}

fn manager(fake: Arc<Fake>, cooldown: Duration) -> Arc<TokenManager> {
    Arc::new(TokenManager::new(
        fake,
        Arc::new(CredStore::memory()),
        OAuthOptions {
            refresh_cooldown: cooldown,
        },
    ))
}

fn conn(s: &Snapshot) -> Arc<Connection> {
    s.connection("i", "c").expect("connection").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_on_an_expired_token_make_one_call() {
    let fake = Arc::new(Fake {
        delay: Duration::from_millis(100),
        expires_in: Some(3600),
        ..Fake::default()
    });
    let m = manager(fake.clone(), Duration::from_secs(30));
    let c = conn(&snapshot(&oauth_vault("old", Some(&ts(-10)))));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (m, c) = (m.clone(), c.clone());
            tokio::spawn(async move { m.access_token(&c).await })
        })
        .collect();
    for t in tasks {
        let token = t.await.expect("join").expect("token").expect("oauth");
        assert_eq!(token.expose(), "at-1");
    }
    assert_eq!(fake.calls(), 1);
    let (url, form, basic) = fake.seen.lock().expect("lock")[0].clone();
    assert_eq!(
        url, "https://t.example/t1/token",
        "connectionConfig resolved"
    );
    assert!(!basic);
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("grant_type"), Some("refresh_token"));
    assert_eq!(get("refresh_token"), Some("rt-0"));
    assert_eq!(get("extra"), Some("1"), "refresh_params");
    assert_eq!(get("client_id"), Some("cid"));
    assert_eq!(get("client_secret"), Some("csecret"));
    // Fresh now: no more calls.
    m.access_token(&c).await.expect("token");
    assert_eq!(fake.calls(), 1);
}

#[tokio::test]
async fn proactive_only_inside_the_buffer_and_never_without_expiry() {
    let fake = Arc::new(Fake::default());
    let m = manager(fake.clone(), Duration::from_secs(30));
    // Expires in 1 h: outside the 5 min default buffer.
    let later = conn(&snapshot(&oauth_vault("old", Some(&ts(3600)))));
    assert_eq!(
        m.access_token(&later)
            .await
            .expect("ok")
            .expect("t")
            .expose(),
        "old"
    );
    assert_eq!(fake.calls(), 0);
    // No expiry at all: never refreshed proactively.
    let m = manager(fake.clone(), Duration::from_secs(30));
    let never = conn(&snapshot(&oauth_vault("old", None)));
    assert_eq!(
        m.access_token(&never)
            .await
            .expect("ok")
            .expect("t")
            .expose(),
        "old"
    );
    assert_eq!(fake.calls(), 0);
    // Expires in 2 min: inside the buffer, refreshed before use.
    let m = manager(fake.clone(), Duration::from_secs(30));
    let soon = conn(&snapshot(&oauth_vault("old", Some(&ts(120)))));
    assert_eq!(
        m.access_token(&soon)
            .await
            .expect("ok")
            .expect("t")
            .expose(),
        "at-1"
    );
    assert_eq!(fake.calls(), 1);
}

#[tokio::test]
async fn provider_buffer_and_basic_client_auth() {
    let fake = Arc::new(Fake::default());
    let m = manager(fake.clone(), Duration::from_secs(30));
    let vault = |exp: &str| {
        format!(
            r#"
integrations: [{{unique_key: i, provider: ob, credentials: {{oauth_client_id: cid, oauth_client_secret: csecret}}}}]
connections: [{{connection_id: c, provider_config_key: i, credentials: {{type: OAUTH2, access_token: old, refresh_token: r, expires_at: "{exp}"}}}}]
"#
        )
    };
    // token_expiration_buffer: 60 → a token with 2 min left is still used.
    let first = snapshot(&vault(&ts(120)));
    let c = conn(&first);
    assert_eq!(
        m.access_token(&c).await.expect("ok").expect("t").expose(),
        "old"
    );
    // The operator writes a sooner expiry (a reload: a new version of the record).
    let c = conn(&reload(&first, &vault(&ts(30))));
    assert_eq!(
        m.access_token(&c).await.expect("ok").expect("t").expose(),
        "at-1"
    );
    let (_, form, basic) = fake.seen.lock().expect("lock")[0].clone();
    assert!(basic, "client credentials in HTTP Basic");
    assert!(form
        .iter()
        .all(|(k, _)| k != "client_secret" && k != "client_id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unauthorized_refreshes_once_past_the_stale_token() {
    let fake = Arc::new(Fake {
        delay: Duration::from_millis(50),
        ..Fake::default()
    });
    let m = manager(fake.clone(), Duration::from_secs(30));
    let c = conn(&snapshot(&oauth_vault("old", None)));
    let stale = m.access_token(&c).await.expect("ok").expect("token");
    assert_eq!(stale.expose(), "old");
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (m, c, stale) = (m.clone(), c.clone(), stale.clone());
            tokio::spawn(async move { m.refresh_after_unauthorized(&c, &stale).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("join").expect("refreshed").expose(), "at-1");
    }
    assert_eq!(
        fake.calls(),
        1,
        "one refresh for every 401 on the same token"
    );
    // A late 401 on the old token does not refresh again.
    let fresh = m.refresh_after_unauthorized(&c, &stale).await.expect("ok");
    assert_eq!((fresh.expose(), fake.calls()), ("at-1", 1));
    // A 401 on the new token does, with the rotated refresh token.
    let newer = m.refresh_after_unauthorized(&c, &fresh).await.expect("ok");
    assert_eq!((newer.expose(), fake.calls()), ("at-2", 2));
    assert!(fake
        .last_form()
        .contains(&("refresh_token".into(), "rt-1".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failure_answers_the_provider_code_and_fails_fast_during_the_cooldown() {
    let fake = Arc::new(Fake {
        delay: Duration::from_millis(50),
        ..Fake::default()
    });
    fake.fail.store(true, Ordering::SeqCst);
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let mut manager = TokenManager::new(
        fake.clone(),
        Arc::new(CredStore::memory()),
        OAuthOptions {
            refresh_cooldown: Duration::from_millis(300),
        },
    );
    manager.set_metrics(metrics.clone());
    let m = Arc::new(manager);
    let c = conn(&snapshot(&oauth_vault("old", Some(&ts(-5)))));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (m, c) = (m.clone(), c.clone());
            tokio::spawn(async move { m.access_token(&c).await })
        })
        .collect();
    for t in tasks {
        match t.await.expect("join") {
            Err(ProxyError::CredentialsRefreshFailed { provider_error }) => {
                assert_eq!(provider_error.as_deref(), Some("invalid_grant"))
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(fake.calls(), 1, "waiters share the failure");
    assert!(m.access_token(&c).await.is_err());
    assert_eq!(fake.calls(), 1, "fail fast during the cool-down");
    let text = metrics.encode();
    assert!(
        text.contains("sidekey_token_refreshes_total{result=\"fail_fast\"}")
            && text.contains("sidekey_token_refreshes_total{result=\"error\"} 1"),
        "{text}"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    fake.fail.store(false, Ordering::SeqCst);
    assert_eq!(
        m.access_token(&c).await.expect("ok").expect("t").expose(),
        "at-2"
    );
    assert_eq!(
        fake.calls(),
        2,
        "after the cool-down the endpoint is asked again"
    );
}

#[tokio::test]
async fn an_early_refresh_that_fails_keeps_the_unexpired_token() {
    let fake = Arc::new(Fake::default());
    fake.fail.store(true, Ordering::SeqCst);
    let m = manager(fake.clone(), Duration::from_secs(30));
    let c = conn(&snapshot(&oauth_vault("old", Some(&ts(120)))));
    assert_eq!(
        m.access_token(&c).await.expect("ok").expect("t").expose(),
        "old"
    );
    assert_eq!(
        m.access_token(&c).await.expect("ok").expect("t").expose(),
        "old"
    );
    assert_eq!(fake.calls(), 1, "the cool-down also covers early refreshes");
}

#[tokio::test]
async fn the_vault_wins_when_its_credential_changes() {
    let fake = Arc::new(Fake::default());
    let m = manager(fake.clone(), Duration::from_secs(30));
    let s = snapshot(&oauth_vault("old", None));
    let c = conn(&s);
    let stale = m.access_token(&c).await.expect("ok").expect("t");
    let fresh = m.refresh_after_unauthorized(&c, &stale).await.expect("ok");
    assert_eq!(fresh.expose(), "at-1");
    // The same snapshot again: the manager's newer token stays.
    assert_eq!(
        m.access_token(&c).await.expect("ok").expect("t").expose(),
        "at-1"
    );
    // A reload of the same file keeps the record's version, and the manager's token.
    let same = reload(&s, &oauth_vault("old", None));
    assert_eq!(
        conn(&same).version,
        c.version,
        "an unchanged record keeps its version"
    );
    assert_eq!(
        m.access_token(&conn(&same))
            .await
            .expect("ok")
            .expect("t")
            .expose(),
        "at-1"
    );
    // A reload with a hand-edited credential: a new version, and the vault's token is used
    // from now on.
    let edited_snapshot = reload(&same, &oauth_vault("by-hand", None));
    let edited = conn(&edited_snapshot);
    assert!(
        edited.version > c.version,
        "an edited record gets a new version"
    );
    assert_eq!(
        m.access_token(&edited)
            .await
            .expect("ok")
            .expect("t")
            .expose(),
        "by-hand"
    );
    // A request still finishing on the older snapshot does not bring the old state back.
    assert_eq!(
        m.access_token(&c).await.expect("ok").expect("t").expose(),
        "by-hand"
    );
    assert_eq!(fake.calls(), 1);
}

#[tokio::test]
async fn client_credentials_are_cached_until_the_buffer() {
    let fake = Arc::new(Fake {
        expires_in: Some(3600),
        ..Fake::default()
    });
    let m = manager(fake.clone(), Duration::from_secs(30));
    let s = snapshot(
        r#"
integrations: [{unique_key: i, provider: cc, credentials: {oauth_client_id: int-id, oauth_client_secret: int-secret, scopes: "read,write"}}]
connections: [{connection_id: c, provider_config_key: i, credentials: {type: OAUTH2_CC, client_id: conn-id}}]
"#,
    );
    let c = conn(&s);
    assert_eq!(
        m.access_token(&c).await.expect("ok").expect("t").expose(),
        "at-1"
    );
    assert_eq!(
        m.access_token(&c).await.expect("ok").expect("t").expose(),
        "at-1"
    );
    assert_eq!(fake.calls(), 1);
    let form = fake.last_form();
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("grant_type").as_deref(), Some("client_credentials"));
    assert_eq!(get("scope").as_deref(), Some("read write"));
    assert_eq!(get("audience").as_deref(), Some("api"), "token_params");
    assert_eq!(
        get("client_id").as_deref(),
        Some("conn-id"),
        "the connection's id wins"
    );
    assert_eq!(get("client_secret").as_deref(), Some("int-secret"));

    // A token that expires within the buffer is fetched again.
    let fake = Arc::new(Fake {
        expires_in: Some(60),
        ..Fake::default()
    });
    let m = manager(fake.clone(), Duration::from_secs(30));
    m.access_token(&c).await.expect("ok");
    m.access_token(&c).await.expect("ok");
    assert_eq!(fake.calls(), 2);
}

#[tokio::test]
async fn no_refresh_token_fails_without_a_call() {
    let fake = Arc::new(Fake::default());
    let m = manager(fake.clone(), Duration::from_secs(30));
    let s = snapshot(&oauth_vault("old", Some(&ts(-5))).replace(", refresh_token: rt-0", ""));
    let err = m.access_token(&conn(&s)).await.expect_err("refused");
    assert_eq!(err.code(), "credentials_refresh_failed");
    assert_eq!(fake.calls(), 0);
}

/// The store's writer as the token manager sees it: commits the refreshed credential into
/// the record at a new version, unless the record moved on, and publishes it first.
struct FakeWriter {
    snapshot: arc_swap::ArcSwap<Snapshot>,
    writes: AtomicUsize,
}

impl TokenWriter for FakeWriter {
    fn persist<'a>(
        &'a self,
        key: &'a Key,
        cred: &'a StoredCredential,
        version: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Persisted>> + Send + 'a>> {
        Box::pin(async move {
            let cur = self.snapshot.load_full();
            let c = cur.connection(&key.0, &key.1)?;
            if c.version != version {
                return Some(Persisted::Skipped("changed meanwhile".into()));
            }
            let mut record = c.record();
            assert!(crate::credstore::apply_refreshed(
                &mut record.credentials,
                cred
            ));
            let v = versions().next();
            let next = cur
                .with(crate::config::Change::PutConnection(record, v))
                .expect("applies");
            self.snapshot.store(Arc::new(next));
            self.writes.fetch_add(1, Ordering::SeqCst);
            Some(Persisted::Vault(v))
        })
    }
}

#[tokio::test]
async fn rotated_credentials_reach_the_store_and_its_new_version_is_not_a_hand_edit() {
    let fake = Arc::new(Fake {
        expires_in: Some(3600),
        ..Fake::default()
    });
    let m = TokenManager::new(
        fake.clone(),
        Arc::new(CredStore::memory()),
        OAuthOptions::default(),
    );
    let text = oauth_vault("old", Some(&ts(-5)));
    let first = reload(&snapshot(""), &text);
    let writer = Arc::new(FakeWriter {
        snapshot: arc_swap::ArcSwap::from_pointee(first.clone()),
        writes: AtomicUsize::new(0),
    });
    m.use_store(writer.clone());
    let c = conn(&first);
    assert_eq!(
        m.access_token(&c).await.expect("ok").expect("t").expose(),
        "at-1"
    );
    assert_eq!(writer.writes.load(Ordering::SeqCst), 1);
    let written = writer.snapshot.load_full();
    let w = conn(&written);
    assert!(w.version > c.version, "the write took a new version");
    let Credential::OAuth2 {
        access_token,
        refresh_token,
        ..
    } = &w.credential
    else {
        panic!("oauth2")
    };
    assert_eq!(
        (
            access_token.expose(),
            refresh_token.as_ref().map(Secret::expose)
        ),
        ("at-1", Some("rt-1"))
    );
    // The snapshot of sidekey's own write keeps the manager's state (no refresh, same token).
    let t = m.access_token(&w).await.expect("ok").expect("t");
    assert_eq!((t.expose(), fake.calls()), ("at-1", 1));
    // So does a late request on the older snapshot.
    let t = m.access_token(&c).await.expect("ok").expect("t");
    assert_eq!((t.expose(), fake.calls()), ("at-1", 1));
    // The operator edits the credential by hand (a reload gives it a new version): the vault
    // wins, and the next refresh writes on top of the edit, not over it.
    let edited = reload(&written, &oauth_vault("by-hand", Some(&ts(3600))));
    assert!(conn(&edited).version > w.version);
    writer.snapshot.store(Arc::new(edited.clone()));
    let t = m
        .access_token(&conn(&edited))
        .await
        .expect("ok")
        .expect("t");
    assert_eq!((t.expose(), fake.calls()), ("by-hand", 1));
}

/// A store writer that never answers (a commit stuck behind a slow disk).
struct StuckWriter;

impl TokenWriter for StuckWriter {
    fn persist<'a>(
        &'a self,
        _: &'a Key,
        _: &'a StoredCredential,
        _: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Persisted>> + Send + 'a>> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test]
async fn a_request_dropped_while_its_token_is_written_does_not_hide_later_edits() {
    let fake = Arc::new(Fake {
        expires_in: Some(3600),
        ..Fake::default()
    });
    let m = TokenManager::new(
        fake.clone(),
        Arc::new(CredStore::memory()),
        OAuthOptions::default(),
    );
    m.use_store(Arc::new(StuckWriter));
    let first = reload(&snapshot(""), &oauth_vault("old", Some(&ts(-5))));
    // The client goes away while the refreshed token is being written.
    let c = conn(&first);
    let dropped = tokio::time::timeout(Duration::from_millis(50), m.access_token(&c));
    assert!(dropped.await.is_err(), "the write never finishes");
    assert_eq!(fake.calls(), 1);
    let edited = reload(&first, &oauth_vault("by-hand", Some(&ts(3600))));
    let t = m
        .access_token(&conn(&edited))
        .await
        .expect("ok")
        .expect("t");
    assert_eq!(t.expose(), "by-hand", "the operator's edit still wins");
}

#[tokio::test]
async fn a_refreshed_credential_is_not_written_over_a_record_changed_meanwhile() {
    let fake = Arc::new(Fake {
        expires_in: Some(3600),
        ..Fake::default()
    });
    let m = TokenManager::new(
        fake.clone(),
        Arc::new(CredStore::memory()),
        OAuthOptions::default(),
    );
    let first = reload(&snapshot(""), &oauth_vault("old", Some(&ts(-5))));
    // The store already holds a newer record (a hand edit the manager has not seen yet).
    let edited = reload(&first, &oauth_vault("by-hand", Some(&ts(3600))));
    let writer = Arc::new(FakeWriter {
        snapshot: arc_swap::ArcSwap::from_pointee(edited.clone()),
        writes: AtomicUsize::new(0),
    });
    m.use_store(writer.clone());
    m.access_token(&conn(&first)).await.expect("ok").expect("t");
    assert_eq!(
        writer.writes.load(Ordering::SeqCst),
        0,
        "the edit is not overwritten"
    );
    // The edited record, once seen, wins over the manager's refreshed token.
    let t = m
        .access_token(&conn(&edited))
        .await
        .expect("ok")
        .expect("t");
    assert_eq!(t.expose(), "by-hand");
}

#[tokio::test]
async fn a_reload_that_deletes_a_connection_frees_its_token_state() {
    let fake = Arc::new(Fake::default());
    let m = manager(fake.clone(), Duration::from_secs(30));
    let s1 = snapshot(&oauth_vault("old", Some(&ts(3600))));
    m.access_token(&conn(&s1)).await.expect("token");
    assert_eq!(m.tracked(), 1);
    // Still in the vault: kept, with its state.
    m.prune(&s1);
    assert_eq!(m.tracked(), 1);
    // The connection is gone, then its whole integration.
    let no_connection = snapshot(
        "integrations: [{unique_key: i, provider: o, credentials: {oauth_client_id: cid, oauth_client_secret: csecret}}]\n",
    );
    m.prune(&no_connection);
    assert_eq!(m.tracked(), 0);
    m.access_token(&conn(&s1)).await.expect("token");
    assert_eq!(m.tracked(), 1, "made again on use");
    m.prune(&snapshot("integrations: []\n"));
    assert_eq!(m.tracked(), 0);
    assert_eq!(fake.calls(), 0, "no refresh was needed");
}
