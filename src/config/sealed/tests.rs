use proptest::prelude::*;

use super::*;
use crate::config::vault::parse;

/// 32 bytes 0x00..0x1f in standard base64.
const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// 32 bytes of 0xfb: URL-safe base64 uses `-`/`_` where standard uses `+`/`/`.
const KEY_B_URL: &str = "-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_s";

fn key_a() -> EncryptionKey {
    EncryptionKey::parse(KEY_A).expect("key A")
}

fn key_b() -> EncryptionKey {
    EncryptionKey::parse(KEY_B_URL).expect("key B")
}

/// Every credential type, with secrets named `s-…` and non-secrets named `visible-…`.
const VAULT: &str = r#"# top comment
# second line

integrations:
  - unique_key: gh
    provider: github
    credentials: {type: OAUTH2, oauth_client_id: visible-client-id, oauth_client_secret: s-int-secret}
  - {unique_key: plain, provider: p}
connections:
  - {connection_id: c0, provider_config_key: gh, credentials: {type: API_KEY, apiKey: s-api-key}}
  - {connection_id: c1, provider_config_key: gh, credentials: {type: BASIC, username: visible-user, password: s-password}}
  - {connection_id: c2, provider_config_key: gh, credentials: {type: OAUTH2, access_token: s-access, refresh_token: s-refresh, expires_at: "2030-01-01T00:00:00Z"}}
  - {connection_id: c3, provider_config_key: gh, credentials: {type: OAUTH2_CC, client_id: visible-cc-id, client_secret: s-cc-secret, token: s-cc-token}}
  - {connection_id: c4, provider_config_key: gh, credentials: {type: BASIC, username: visible-only-user, password: ""}}
"#;

const SECRETS: [&str; 8] = [
    "s-int-secret",
    "s-api-key",
    "s-password",
    "s-access",
    "s-refresh",
    "s-cc-secret",
    "s-cc-token",
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
];

fn sealed_vault() -> RawVault {
    let mut v = parse("vault.yaml", VAULT).expect("vault parses");
    assert_eq!(seal_vault(&mut v, &key_a()).expect("seals"), 7);
    v
}

fn api_key(v: &RawVault, i: usize) -> &str {
    match &v.connections[i].credentials {
        RawCredentials::ApiKey { api_key } => api_key.expose(),
        other => panic!("not API_KEY: {}", other.type_name()),
    }
}

fn set_api_key(v: &mut RawVault, i: usize, value: &str) {
    v.connections[i].credentials = RawCredentials::ApiKey {
        api_key: Secret::new(value),
    };
}

#[test]
fn keys_parse_in_either_alphabet_and_never_print() {
    let a = key_a();
    let sealed = a.seal("x", "hello").expect("seal");
    // No padding, surrounding whitespace: the same key.
    let same = EncryptionKey::parse(&format!("  {}\n", KEY_A.trim_end_matches('='))).expect("key");
    assert_eq!(same.open("x", &sealed).expect("opens").expose(), "hello");
    let b = key_b();
    assert_eq!(format!("{b:?}"), "EncryptionKey(***)");
    assert!(matches!(b.open("x", &sealed), Err(OpenFailure::Rejected)));

    assert_eq!(EncryptionKey::parse(" \n").err(), Some(KeyProblem::Empty));
    assert_eq!(
        EncryptionKey::parse("not base64 at all!").err(),
        Some(KeyProblem::NotBase64)
    );
    assert_eq!(
        EncryptionKey::parse("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==").err(),
        Some(KeyProblem::WrongLength(31))
    );
    assert_eq!(
        EncryptionKey::parse("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g").err(),
        Some(KeyProblem::WrongLength(33))
    );
    let e = KeyError {
        var: ENV_KEY,
        problem: KeyProblem::WrongLength(31),
    };
    assert!(
        e.to_string()
            .starts_with("SIDEKEY_ENCRYPTION_KEY must be 32 bytes"),
        "{e}"
    );

    let fresh = EncryptionKey::generate_base64().expect("random");
    let other = EncryptionKey::generate_base64().expect("random");
    assert_ne!(*fresh, *other);
    EncryptionKey::parse(&fresh).expect("a generated key parses");
}

#[test]
fn values_round_trip_and_hide_the_plaintext() {
    let k = key_a();
    for plain in [
        "",
        "x",
        "sk_live_0123456789",
        "ünïcødé 🔑",
        &"long".repeat(5000),
    ] {
        let sealed = k
            .seal("connections/1:a/1:b/credentials.apiKey", plain)
            .expect("seal");
        assert!(sealed.starts_with(ENVELOPE_PREFIX), "{sealed}");
        assert!(is_sealed(&sealed));
        if plain.len() > 3 {
            assert!(!sealed.contains(plain));
        }
        let opened = k
            .open("connections/1:a/1:b/credentials.apiKey", &sealed)
            .expect("opens");
        assert_eq!(opened.expose(), plain);
    }
    // A fresh nonce each time: the same value never seals to the same text.
    assert_ne!(
        k.seal("a", "same").expect("seal"),
        k.seal("a", "same").expect("seal")
    );
}

#[test]
fn associated_data_names_are_unambiguous() {
    // Without the lengths, both would read `connections/a/b/c/credentials.apiKey`.
    assert_ne!(
        connection_aad("a/b", "c", "apiKey"),
        connection_aad("a", "b/c", "apiKey")
    );
    assert_eq!(
        connection_aad("my-github", "user-123", "apiKey"),
        "connections/9:my-github/8:user-123/credentials.apiKey"
    );
    assert_eq!(
        integration_aad("gh", "oauth_client_secret"),
        "integrations/2:gh/credentials.oauth_client_secret"
    );
}

#[test]
fn seals_exactly_the_secret_fields() {
    let v = sealed_vault();
    let yaml = serde_yaml_ng::to_string(&v).expect("yaml");
    for s in SECRETS {
        assert!(!yaml.contains(s), "{s} left in:\n{yaml}");
    }
    for visible in [
        "visible-client-id",
        "visible-user",
        "visible-cc-id",
        "visible-only-user",
        "2030-01-01T00:00:00Z",
    ] {
        assert!(yaml.contains(visible), "{visible} sealed:\n{yaml}");
    }
    assert_eq!(yaml.matches(ENVELOPE_PREFIX).count(), 7, "{yaml}");
    // Sealing again changes nothing.
    let mut again = v.clone();
    assert_eq!(seal_vault(&mut again, &key_a()).expect("seal"), 0);
    assert_eq!(again, v);
}

#[test]
fn open_vault_restores_every_value() {
    let plain = parse("vault.yaml", VAULT).expect("parses");
    let mut v = sealed_vault();
    assert_ne!(v, plain);
    let report = open_vault(&mut v, Some(&key_a())).expect("opens");
    assert_eq!(v, plain);
    assert_eq!(
        report,
        OpenReport {
            sealed_seen: true,
            opened: 7,
            plaintext: vec![],
        }
    );
    assert!(report.diagnostics("vault.yaml").is_empty());
}

#[test]
fn a_plaintext_vault_opens_without_a_key() {
    let mut v = parse("vault.yaml", VAULT).expect("parses");
    let before = v.clone();
    let report = open_vault(&mut v, None).expect("nothing to open");
    assert_eq!(v, before);
    assert_eq!(report, OpenReport::default());
    // With a key, the plaintext fields are listed, but a vault with nothing sealed gets one
    // warning, not one per field.
    let report = open_vault(&mut v, Some(&key_a())).expect("nothing to open");
    assert!(!report.sealed_seen);
    assert_eq!(report.plaintext.len(), 7);
    let warnings = report.diagnostics("vault.yaml");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].path, "");
    assert!(warnings[0].message.contains("sidekey vault encrypt"));
}

#[test]
fn a_plaintext_value_in_a_sealed_vault_is_a_warning() {
    let mut v = sealed_vault();
    set_api_key(&mut v, 0, "hand-edited-key");
    let report = open_vault(&mut v, Some(&key_a())).expect("accepted");
    assert_eq!(api_key(&v, 0), "hand-edited-key");
    assert_eq!(report.plaintext, ["connections[0].credentials.apiKey"]);
    let warnings = report.diagnostics("vault.yaml");
    assert_eq!(warnings.len(), 1);
    assert_eq!(
        warnings[0].to_string(),
        "vault.yaml: connections[0].credentials.apiKey: warning: is not sealed; it will be sealed on the next write"
    );
    // And the next seal covers it.
    assert_eq!(seal_vault(&mut v, &key_a()).expect("seal"), 7);
    assert!(is_sealed(api_key(&v, 0)));
}

#[test]
fn missing_key_names_the_first_sealed_field() {
    let mut v = sealed_vault();
    let e = open_vault(&mut v, None).expect_err("needs the key");
    assert_eq!(e.path, "integrations[0].credentials.oauth_client_secret");
    assert_eq!(e.reason, OpenFailure::NoKey);
    let mut v = sealed_vault();
    v.integrations[0].credentials = None;
    let e = open_vault(&mut v, None).expect_err("needs the key");
    assert_eq!(
        e.to_string(),
        "connections[0].credentials.apiKey: sealed, but SIDEKEY_ENCRYPTION_KEY is not set"
    );
    assert_eq!(
        e.diagnostic("vault.yaml").to_string(),
        "vault.yaml: connections[0].credentials.apiKey: sealed, but SIDEKEY_ENCRYPTION_KEY is not set"
    );
}

#[test]
fn wrong_key_is_refused_by_field() {
    let mut v = sealed_vault();
    let e = open_vault(&mut v, Some(&key_b())).expect_err("wrong key");
    assert_eq!(e.path, "integrations[0].credentials.oauth_client_secret");
    assert_eq!(
        e.reason.to_string(),
        "cannot be opened with this SIDEKEY_ENCRYPTION_KEY (wrong key, or the value was moved or altered)"
    );
}

#[test]
fn a_value_moved_to_another_record_or_field_does_not_open() {
    let src = "connections:\n  - {connection_id: a, provider_config_key: i, credentials: {type: API_KEY, apiKey: key-of-a}}\n  - {connection_id: b, provider_config_key: i, credentials: {type: API_KEY, apiKey: key-of-b}}\n";
    let mut v = parse("v", src).expect("parses");
    seal_vault(&mut v, &key_a()).expect("seal");
    // a's sealed key copied over b's: b must not start using a's credential.
    let a_sealed = api_key(&v, 0).to_string();
    let mut moved = v.clone();
    set_api_key(&mut moved, 1, &a_sealed);
    let e = open_vault(&mut moved, Some(&key_a())).expect_err("moved");
    assert_eq!(e.path, "connections[1].credentials.apiKey");
    assert_eq!(e.reason, OpenFailure::Rejected);
    // Renaming the connection is a move too.
    let mut renamed = v.clone();
    renamed.connections[0].connection_id = "z".into();
    assert_eq!(
        open_vault(&mut renamed, Some(&key_a()))
            .expect_err("renamed")
            .path,
        "connections[0].credentials.apiKey"
    );
    // Reordering records is not: the place is the record's name, not its index.
    let mut swapped = v.clone();
    swapped.connections.swap(0, 1);
    open_vault(&mut swapped, Some(&key_a())).expect("order does not matter");
    assert_eq!(api_key(&swapped, 0), "key-of-b");

    // A field moved to another field of the same connection.
    let mut o = parse(
        "v",
        "connections:\n  - {connection_id: a, provider_config_key: i, credentials: {type: OAUTH2, access_token: at, refresh_token: rt}}\n",
    )
    .expect("parses");
    seal_vault(&mut o, &key_a()).expect("seal");
    if let RawCredentials::OAuth2 {
        access_token,
        refresh_token: Some(refresh_token),
        ..
    } = &mut o.connections[0].credentials
    {
        std::mem::swap(access_token, refresh_token);
    }
    let e = open_vault(&mut o, Some(&key_a())).expect_err("swapped fields");
    assert_eq!(e.path, "connections[0].credentials.access_token");
}

#[test]
fn damaged_envelopes_are_errors() {
    let k = key_a();
    let good = k.seal("p", "secret-value").expect("seal");
    let body = &good[ENVELOPE_PREFIX.len()..];
    let raw = ENVELOPE_B64.decode(body).expect("base64");
    assert!(!good.ends_with('='), "written without padding: {good}");
    // A character inside a full base64 quantum: still valid base64, but altered.
    let mut flipped: Vec<char> = good.chars().collect();
    let at = ENVELOPE_PREFIX.len() + 10;
    flipped[at] = if flipped[at] == 'A' { 'B' } else { 'A' };
    let flipped: String = flipped.into_iter().collect();
    let cases: Vec<(String, OpenFailure)> = vec![
        ("enc:".into(), OpenFailure::UnknownEnvelope),
        ("enc:v2:AAAA".into(), OpenFailure::UnknownEnvelope),
        (
            "enc:secret-looking-text".into(),
            OpenFailure::UnknownEnvelope,
        ),
        ("enc:v1:".into(), OpenFailure::Malformed("too short")),
        (
            "enc:v1:!!!!".into(),
            OpenFailure::Malformed("not base64url"),
        ),
        ("enc:v1:AAAA".into(), OpenFailure::Malformed("too short")),
        (
            format!("{ENVELOPE_PREFIX}{}", &body[..20]),
            OpenFailure::Malformed("too short"),
        ),
        (
            format!(
                "{ENVELOPE_PREFIX}{}",
                ENVELOPE_B64.encode(&raw[..raw.len() - 3])
            ),
            OpenFailure::Rejected,
        ),
        (flipped, OpenFailure::Rejected),
    ];
    // Padding added by hand is tolerated.
    let padded = format!("{good}{}", "=".repeat((4 - body.len() % 4) % 4));
    assert_eq!(
        k.open("p", &padded).expect("opens").expose(),
        "secret-value"
    );
    for (text, want) in cases {
        let got = k.open("p", &text).expect_err(&text);
        assert_eq!(got, want, "{text}");
        let msg = got.to_string();
        assert!(!msg.contains("secret"), "{msg}");
    }
    // Bytes that decrypt but are not UTF-8 can only come from someone holding the key.
    let mut buf = vec![0u8; NONCE_LEN];
    buf.extend_from_slice(&[0xff, 0xfe]);
    let tag = k
        .key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key([0; NONCE_LEN]),
            Aad::from(b"p"),
            &mut buf[NONCE_LEN..],
        )
        .expect("seal");
    buf.extend_from_slice(tag.as_ref());
    let text = format!("{ENVELOPE_PREFIX}{}", ENVELOPE_B64.encode(&buf));
    assert_eq!(k.open("p", &text).err(), Some(OpenFailure::NotUtf8));
}

#[test]
fn errors_never_contain_secret_values() {
    let mut v = sealed_vault();
    let failures = [
        open_vault(&mut v.clone(), None).expect_err("no key"),
        open_vault(&mut v, Some(&key_b())).expect_err("wrong key"),
    ];
    for e in failures {
        let msg = format!("{e} {e:?} {:?}", e.diagnostic("vault.yaml"));
        for s in SECRETS {
            assert!(!msg.contains(s), "{s} in {msg}");
        }
        assert!(!msg.contains(ENVELOPE_PREFIX), "{msg}");
    }
    assert!(!format!("{:?}", key_a()).contains("AAEC"));
}

#[test]
fn reseal_text_keeps_the_header_and_moves_to_the_new_key() {
    let (sealed, summary) = reseal_text("vault.yaml", VAULT, None, &key_a()).expect("encrypt");
    assert_eq!(
        summary,
        ResealSummary {
            opened: 0,
            sealed: 7
        }
    );
    assert!(
        sealed.starts_with("# top comment\n# second line\n"),
        "{sealed}"
    );
    for s in SECRETS {
        assert!(!sealed.contains(s), "{s} in\n{sealed}");
    }
    // Encrypting an encrypted vault again is a no-op apart from fresh nonces.
    let (twice, summary) =
        reseal_text("vault.yaml", &sealed, Some(&key_a()), &key_a()).expect("again");
    assert_eq!(summary.opened, 7);
    let mut a = parse("v", &sealed).expect("parses");
    let mut b = parse("v", &twice).expect("parses");
    open_vault(&mut a, Some(&key_a())).expect("opens");
    open_vault(&mut b, Some(&key_a())).expect("opens");
    assert_eq!(a, b);

    let (rekeyed, summary) =
        reseal_text("vault.yaml", &sealed, Some(&key_a()), &key_b()).expect("rekey");
    assert_eq!(summary.opened, 7);
    let mut v = parse("v", &rekeyed).expect("parses");
    assert_eq!(
        open_vault(&mut v.clone(), Some(&key_a()))
            .expect_err("old key")
            .reason,
        OpenFailure::Rejected
    );
    open_vault(&mut v, Some(&key_b())).expect("new key opens");
    assert_eq!(v, parse("v", VAULT).expect("parses"));
}

#[test]
fn reseal_text_refuses_what_it_cannot_open() {
    let (sealed, _) = reseal_text("vault.yaml", VAULT, None, &key_a()).expect("encrypt");
    match reseal_text("vault.yaml", &sealed, None, &key_b()) {
        Err(ResealError::Open(e)) => assert_eq!(e.reason, OpenFailure::NoKey),
        other => panic!("{other:?}"),
    }
    match reseal_text("vault.yaml", &sealed, Some(&key_b()), &key_a()) {
        Err(ResealError::Open(e)) => assert_eq!(e.reason, OpenFailure::Rejected),
        other => panic!("{other:?}"),
    }
    match reseal_text("vault.yaml", "connections: {", None, &key_a()) {
        Err(ResealError::Parse(d)) => assert_eq!(d.file, "vault.yaml"),
        other => panic!("{other:?}"),
    }
}

proptest! {
    /// Whatever a sealed-looking value holds, opening it is an error or a value, never a panic.
    #[test]
    fn any_envelope_text_never_panics(s in "\\PC*", bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
        let k = key_a();
        let _ = k.open("p", &s);
        let _ = k.open("p", &format!("{ENVELOPE_PREFIX}{s}"));
        let _ = k.open("p", &format!("{ENVELOPE_PREFIX}{}", ENVELOPE_B64.encode(&bytes)));
        let mut v = parse("v", "connections:\n  - {connection_id: a, provider_config_key: i, credentials: {type: API_KEY, apiKey: x}}\n").expect("parses");
        set_api_key(&mut v, 0, &format!("{ENVELOPE_PREFIX}{}", ENVELOPE_B64.encode(&bytes)));
        prop_assert!(open_vault(&mut v, Some(&k)).is_err());
    }

    /// Any text seals and opens back to itself, and only at its own place.
    #[test]
    fn any_value_round_trips(s in "\\PC*", place in "[a-z/:]{0,12}") {
        let k = key_a();
        let sealed = k.seal(&place, &s).expect("seal");
        let opened = k.open(&place, &sealed).expect("opens");
        prop_assert_eq!(opened.expose(), s.as_str());
        prop_assert_eq!(k.open(&format!("{place}x"), &sealed).err(), Some(OpenFailure::Rejected));
    }
}

/// The hook in `config::snapshot::build`: what `sidekey check`, serve and reload all go through.
#[test]
fn snapshot_build_opens_sealed_vaults_with_the_key() {
    use crate::config::{snapshot, BuildOptions, Credential, Sources, BUNDLED_PROVIDERS};
    use std::sync::Arc;
    let plain = "integrations:\n  - {unique_key: gh, provider: github-pat}\nconnections:\n  - {connection_id: u1, provider_config_key: gh, credentials: {type: API_KEY, apiKey: ghp_sealed_value}}\n";
    let (text, _) = reseal_text("vault.yaml", plain, None, &key_a()).expect("encrypt");
    let src = |vault: &str| Sources {
        providers_name: "providers.yaml".into(),
        providers: BUNDLED_PROVIDERS.into(),
        vault_name: "vault.yaml".into(),
        vault: vault.into(),
    };
    let with = |key: Option<EncryptionKey>| BuildOptions {
        encryption_key: key.map(Arc::new),
        ..BuildOptions::default()
    };
    let snap = snapshot::build(&src(&text), &with(Some(key_a()))).expect("opens");
    let conn = snap.connection("gh", "u1").expect("connection");
    assert!(matches!(&conn.credential, Credential::ApiKey(k) if k.expose() == "ghp_sealed_value"));
    assert!(snap
        .warnings
        .iter()
        .all(|w| w.path.is_empty() || !w.path.contains("credentials")));

    for (key, reason) in [
        (None, OpenFailure::NoKey),
        (Some(key_b()), OpenFailure::Rejected),
    ] {
        let errors = snapshot::build(&src(&text), &with(key)).expect_err("refused");
        assert_eq!(
            errors,
            vec![Diagnostic::error(
                "vault.yaml",
                "connections[0].credentials.apiKey",
                reason.to_string()
            )]
        );
    }

    // A plaintext value in a sealed vault: accepted, with a warning naming it.
    let mixed = format!(
        "{text}- {{connection_id: u2, provider_config_key: gh, credentials: {{type: API_KEY, apiKey: hand_edit}}}}\n"
    );
    let snap = snapshot::build(&src(&mixed), &with(Some(key_a()))).expect("accepted");
    assert!(
        snap.warnings.iter().any(
            |w| w.path == "connections[1].credentials.apiKey" && w.message == PLAINTEXT_WARNING
        ),
        "{:?}",
        snap.warnings
    );
}
