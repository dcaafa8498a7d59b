//! Encryption at rest: the vault's secret fields sealed with AES-256-GCM under
//! `SIDEKEY_ENCRYPTION_KEY`.
//!
//! A sealed value is the string `enc:v1:<base64url(nonce ‖ ciphertext ‖ tag)>` (no padding):
//! a fresh random 96-bit nonce per value, AES-256-GCM from `ring`, and as associated data the
//! value's place in the vault — its record and field, e.g.
//! `connections/9:my-github/8:user-123/credentials.apiKey` (each name prefixed by its length
//! in bytes, so no name can run into the next). A sealed value copied to another connection,
//! integration or field therefore fails to open instead of being used there. Any value that
//! starts with `enc:` is taken as sealed, so a plaintext secret starting that way is refused
//! as a damaged sealed value.
//!
//! Sealed fields (everything else, `username`, `client_id`, `oauth_client_id`, timestamps,
//! configuration and metadata, stays readable):
//! - connections: `apiKey` (API_KEY), `password` (BASIC), `access_token` and `refresh_token`
//!   (OAUTH2), `client_secret` and `token` (OAUTH2_CC);
//! - integrations: `oauth_client_secret`.
//!
//! Empty values are left as they are: there is nothing to hide, and the ciphertext would give
//! away the length anyway. [`open_vault`] opens every sealed field in place, so a vault in
//! memory always holds plaintext; [`seal_vault`] seals what a writer is about to store.
//! A plaintext value in a sealed vault (a hand edit) is reported, not refused, and is sealed
//! by the next write. No error or `Debug` output ever contains a key or a secret value.
//!
//! The raw key bytes are zeroized after the AES key schedule is built; `ring` does not zeroize
//! its own schedule, which lives as long as the [`EncryptionKey`].

use std::fmt;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom as _, SystemRandom};
use zeroize::Zeroizing;

use crate::config::vault::{
    RawConnection, RawCredentials, RawIntegration, RawIntegrationCredentials, RawVault,
};
use crate::config::Diagnostic;
use crate::secret::Secret;

/// The environment variable holding the key.
pub const ENV_KEY: &str = "SIDEKEY_ENCRYPTION_KEY";
/// The environment variable holding the new key for `sidekey vault rekey`.
pub const ENV_NEW_KEY: &str = "SIDEKEY_NEW_ENCRYPTION_KEY";
/// What every value sealed by this version starts with.
pub const ENVELOPE_PREFIX: &str = "enc:v1:";
/// Values starting with this are sealed (by this version or another one).
const SEALED_MARK: &str = "enc:";
const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;

/// Keys are accepted with or without padding, in either alphabet.
const STANDARD_ANY: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const URL_SAFE_ANY: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
/// Envelopes are written without padding; padding written by hand is tolerated.
const ENVELOPE_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What is wrong with a key (never its value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    #[error("is empty")]
    Empty,
    #[error("is not valid Unicode")]
    NotUnicode,
    #[error("is not base64 (standard or URL-safe)")]
    NotBase64,
    #[error("must be 32 bytes in base64, but decodes to {0} bytes (make one with `sidekey vault new-key`)")]
    WrongLength(usize),
}

/// A key that could not be read, naming where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var} {problem}")]
pub struct KeyError {
    pub var: &'static str,
    pub problem: KeyProblem,
}

/// The AES-256-GCM key; `Debug` never shows it.
pub struct EncryptionKey {
    key: LessSafeKey,
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey(***)")
    }
}

impl EncryptionKey {
    /// Parses a base64 key (standard or URL-safe alphabet, padding optional; surrounding
    /// whitespace, such as a file's final newline, is ignored) of exactly 32 bytes.
    pub fn parse(text: &str) -> Result<Self, KeyProblem> {
        let text = text.trim();
        if text.is_empty() {
            return Err(KeyProblem::Empty);
        }
        let engine = if text.contains(['-', '_']) {
            URL_SAFE_ANY
        } else {
            STANDARD_ANY
        };
        let bytes = Zeroizing::new(engine.decode(text).map_err(|_| KeyProblem::NotBase64)?);
        Self::from_bytes(&bytes)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, KeyProblem> {
        if bytes.len() != KEY_LEN {
            return Err(KeyProblem::WrongLength(bytes.len()));
        }
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| KeyProblem::WrongLength(bytes.len()))?;
        Ok(Self {
            key: LessSafeKey::new(key),
        })
    }

    /// The key in `SIDEKEY_ENCRYPTION_KEY`; `Ok(None)` when the variable is not set.
    pub fn from_env() -> Result<Option<Self>, KeyError> {
        Self::from_env_var(ENV_KEY)
    }

    /// The key in the variable `var`; `Ok(None)` when it is not set. A variable that is set but
    /// empty is an error: it is more likely a missing Secret than a wish for no encryption.
    pub fn from_env_var(var: &'static str) -> Result<Option<Self>, KeyError> {
        let text = match std::env::var(var) {
            Ok(t) => Zeroizing::new(t),
            Err(std::env::VarError::NotPresent) => return Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(KeyError {
                    var,
                    problem: KeyProblem::NotUnicode,
                })
            }
        };
        Self::parse(&text)
            .map(Some)
            .map_err(|problem| KeyError { var, problem })
    }

    /// A fresh random key, base64 (standard alphabet, padded), for `sidekey vault new-key`.
    pub fn generate_base64() -> Result<Zeroizing<String>, SealError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| SealError::Random)?;
        Ok(Zeroizing::new(STANDARD_ANY.encode(bytes.as_ref())))
    }

    /// Seals `plaintext` for the place named by `aad` (see [`connection_aad`],
    /// [`integration_aad`]).
    pub fn seal(&self, aad: &str, plaintext: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut buf = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(plaintext.as_bytes());
        // Encrypted in place: the only copy of the plaintext in `buf` is overwritten.
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut buf[NONCE_LEN..],
            )
            .map_err(|_| SealError::TooLong)?;
        buf.extend_from_slice(tag.as_ref());
        let mut out = String::with_capacity(ENVELOPE_PREFIX.len() + buf.len().div_ceil(3) * 4);
        out.push_str(ENVELOPE_PREFIX);
        ENVELOPE_B64.encode_string(&buf, &mut out);
        Ok(out)
    }

    /// Opens a sealed value for the place named by `aad`.
    pub fn open(&self, aad: &str, sealed: &str) -> Result<Secret, OpenFailure> {
        let Some(b64) = sealed.strip_prefix(ENVELOPE_PREFIX) else {
            return Err(OpenFailure::UnknownEnvelope);
        };
        let mut raw = ENVELOPE_B64
            .decode(b64)
            .map_err(|_| OpenFailure::Malformed("not base64url"))?;
        let Some((nonce, _)) = raw.split_first_chunk::<NONCE_LEN>() else {
            return Err(OpenFailure::Malformed("too short"));
        };
        let nonce = Nonce::assume_unique_for_key(*nonce);
        if raw.len() < NONCE_LEN + TAG_LEN {
            return Err(OpenFailure::Malformed("too short"));
        }
        let len = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut raw[NONCE_LEN..])
            .map_err(|_| OpenFailure::Rejected)?
            .len();
        raw.truncate(NONCE_LEN + len);
        raw.drain(..NONCE_LEN);
        String::from_utf8(raw).map(Secret::new).map_err(|e| {
            // Keep the opened bytes out of the error, and wipe them.
            drop(Zeroizing::new(e.into_bytes()));
            OpenFailure::NotUtf8
        })
    }
}

/// Whether a stored value is sealed (starts with `enc:`).
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(SEALED_MARK)
}

/// The associated data of a connection's credential field (`apiKey`, `password`, …).
pub fn connection_aad(provider_config_key: &str, connection_id: &str, field: &str) -> String {
    format!(
        "connections/{}:{provider_config_key}/{}:{connection_id}/credentials.{field}",
        provider_config_key.len(),
        connection_id.len()
    )
}

/// The associated data of an integration's credential field (`oauth_client_secret`).
pub fn integration_aad(unique_key: &str, field: &str) -> String {
    format!(
        "integrations/{}:{unique_key}/credentials.{field}",
        unique_key.len()
    )
}

/// Sealing failed: the system's random source failed, or the value is beyond AES-GCM's limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the system's random number generator failed")]
    Random,
    #[error("a value is too long to seal")]
    TooLong,
}

/// Why one sealed value could not be opened (never the value itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenFailure {
    #[error("sealed, but {ENV_KEY} is not set")]
    NoKey,
    #[error("cannot be opened with this {ENV_KEY} (wrong key, or the value was moved or altered)")]
    Rejected,
    #[error("sealed in a format this sidekey does not know (it writes `{ENVELOPE_PREFIX}…`)")]
    UnknownEnvelope,
    #[error("sealed value is damaged ({0})")]
    Malformed(&'static str),
    #[error("opens, but is not UTF-8 text")]
    NotUtf8,
}

/// The first field of a vault that could not be opened, by its path in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct OpenError {
    /// `connections[3].credentials.apiKey`, as `sidekey check` names it.
    pub path: String,
    pub reason: OpenFailure,
}

impl OpenError {
    /// As a `sidekey check` diagnostic of `file`.
    pub fn diagnostic(&self, file: &str) -> Diagnostic {
        Diagnostic::error(file, self.path.clone(), self.reason.to_string())
    }
}

/// What [`open_vault`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// At least one field was sealed.
    pub sealed_seen: bool,
    /// How many fields were opened.
    pub opened: usize,
    /// Paths of non-empty secret fields that were not sealed (collected only when a key was
    /// given: without one, they are simply a plaintext vault).
    pub plaintext: Vec<String>,
}

impl OpenReport {
    /// The warnings to show: one per plaintext field of a sealed vault; one in all for a key
    /// given to a vault that has nothing sealed yet (a field-by-field list would drown it).
    pub fn diagnostics(&self, file: &str) -> Vec<Diagnostic> {
        if !self.sealed_seen {
            if self.plaintext.is_empty() {
                return Vec::new();
            }
            return vec![Diagnostic::warning(file, "", NOTHING_SEALED_WARNING)];
        }
        self.plaintext
            .iter()
            .map(|p| Diagnostic::warning(file, p.clone(), PLAINTEXT_WARNING))
            .collect()
    }
}

/// The warning for a key given to a vault with plaintext secrets and nothing sealed.
pub const NOTHING_SEALED_WARNING: &str = "SIDEKEY_ENCRYPTION_KEY is set, but no secret in the vault is sealed yet; `sidekey vault encrypt` seals them";

/// The warning for a plaintext value in a sealed vault.
pub const PLAINTEXT_WARNING: &str = "is not sealed; it will be sealed on the next write";

/// Whether a configuration warning is one of ours (logged louder than the catalogue's).
pub fn is_sealing_warning(d: &Diagnostic) -> bool {
    d.message == PLAINTEXT_WARNING || d.message == NOTHING_SEALED_WARNING
}

/// One secret field: where it is in the file and the place bound into its seal.
struct Field<'a> {
    record: Record<'a>,
    name: &'static str,
}

enum Record<'a> {
    Integration {
        index: usize,
        unique_key: &'a str,
    },
    Connection {
        index: usize,
        provider_config_key: &'a str,
        connection_id: &'a str,
    },
}

impl Field<'_> {
    fn path(&self) -> String {
        match self.record {
            Record::Integration { index, .. } => {
                format!("integrations[{index}].credentials.{}", self.name)
            }
            Record::Connection { index, .. } => {
                format!("connections[{index}].credentials.{}", self.name)
            }
        }
    }

    fn aad(&self) -> String {
        match self.record {
            Record::Integration { unique_key, .. } => integration_aad(unique_key, self.name),
            Record::Connection {
                provider_config_key,
                connection_id,
                ..
            } => connection_aad(provider_config_key, connection_id, self.name),
        }
    }
}

/// Calls `f` on every non-empty secret field of the vault, in file order.
fn for_each_secret<E>(
    v: &mut RawVault,
    mut f: impl FnMut(&Field<'_>, &mut Secret) -> Result<(), E>,
) -> Result<(), E> {
    for (index, int) in v.integrations.iter_mut().enumerate() {
        integration_secrets(index, int, &mut f)?;
    }
    for (index, conn) in v.connections.iter_mut().enumerate() {
        connection_secrets(index, conn, &mut f)?;
    }
    Ok(())
}

/// The secret fields of one integration (its `oauth_client_secret`), if not empty.
fn integration_secrets<E>(
    index: usize,
    int: &mut RawIntegration,
    f: &mut impl FnMut(&Field<'_>, &mut Secret) -> Result<(), E>,
) -> Result<(), E> {
    let Some(RawIntegrationCredentials {
        oauth_client_secret: Some(secret),
        ..
    }) = &mut int.credentials
    else {
        return Ok(());
    };
    let record = Record::Integration {
        index,
        unique_key: &int.unique_key,
    };
    if !secret.is_empty() {
        f(
            &Field {
                record,
                name: "oauth_client_secret",
            },
            secret,
        )?;
    }
    Ok(())
}

/// The non-empty secret fields of one connection's credential.
fn connection_secrets<E>(
    index: usize,
    conn: &mut RawConnection,
    f: &mut impl FnMut(&Field<'_>, &mut Secret) -> Result<(), E>,
) -> Result<(), E> {
    let fields: [(&'static str, Option<&mut Secret>); 2] = match &mut conn.credentials {
        RawCredentials::ApiKey { api_key } => [("apiKey", Some(api_key)), ("", None)],
        RawCredentials::Basic { password, .. } => [("password", Some(password)), ("", None)],
        RawCredentials::OAuth2 {
            access_token,
            refresh_token,
            ..
        } => [
            ("access_token", Some(access_token)),
            ("refresh_token", refresh_token.as_mut()),
        ],
        RawCredentials::OAuth2Cc {
            client_secret,
            token,
            ..
        } => [
            ("client_secret", client_secret.as_mut()),
            ("token", token.as_mut()),
        ],
    };
    for (name, secret) in fields {
        let Some(secret) = secret else { continue };
        if secret.is_empty() {
            continue;
        }
        let record = Record::Connection {
            index,
            provider_config_key: &conn.provider_config_key,
            connection_id: &conn.connection_id,
        };
        f(&Field { record, name }, secret)?;
    }
    Ok(())
}

/// Seals one value unless it is sealed already (the rule of [`seal_vault`]).
fn seal_one(key: &EncryptionKey, field: &Field<'_>, secret: &mut Secret) -> Result<(), SealError> {
    if !is_sealed(secret.expose()) {
        *secret = Secret::new(key.seal(&field.aad(), secret.expose())?);
    }
    Ok(())
}

/// [`seal_vault`] for one connection record: what the file store's renderer seals, a record
/// at a time, so that a commit never holds a sealed copy of the whole vault.
pub fn seal_connection(conn: &mut RawConnection, key: &EncryptionKey) -> Result<(), SealError> {
    connection_secrets(0, conn, &mut |field, secret| seal_one(key, field, secret))
}

/// [`seal_vault`] for one integration record.
pub fn seal_integration(int: &mut RawIntegration, key: &EncryptionKey) -> Result<(), SealError> {
    integration_secrets(0, int, &mut |field, secret| seal_one(key, field, secret))
}

/// Seals every secret field that is not sealed yet; returns how many it sealed. Call it on a
/// vault that [`open_vault`] opened (or that was never sealed): a value already sealed is kept
/// as it is, so it must be one this key opens.
pub fn seal_vault(v: &mut RawVault, key: &EncryptionKey) -> Result<usize, SealError> {
    let mut sealed = 0;
    for_each_secret(v, |field, secret| {
        if is_sealed(secret.expose()) {
            return Ok(());
        }
        *secret = Secret::new(key.seal(&field.aad(), secret.expose())?);
        sealed += 1;
        Ok(())
    })?;
    Ok(sealed)
}

/// Opens every sealed field in place, so that the vault holds plaintext (in memory only).
/// Stops at the first field that cannot be opened; the vault is then partly opened and must be
/// discarded.
pub fn open_vault(v: &mut RawVault, key: Option<&EncryptionKey>) -> Result<OpenReport, OpenError> {
    let mut opener = Opener::new(key);
    for (index, int) in v.integrations.iter_mut().enumerate() {
        opener.integration(index, int)?;
    }
    for (index, conn) in v.connections.iter_mut().enumerate() {
        opener.connection(index, conn)?;
    }
    Ok(opener.report)
}

/// [`open_vault`] one record at a time, for a build that compiles each record as it is
/// parsed. Feed integrations before connections, each in file order, to get the same
/// report and the same first failure as [`open_vault`].
pub struct Opener<'k> {
    key: Option<&'k EncryptionKey>,
    pub report: OpenReport,
}

impl<'k> Opener<'k> {
    pub fn new(key: Option<&'k EncryptionKey>) -> Self {
        Self {
            key,
            report: OpenReport::default(),
        }
    }

    /// Opens the sealed secrets of `integrations[index]` in place.
    pub fn integration(&mut self, index: usize, int: &mut RawIntegration) -> Result<(), OpenError> {
        let (key, report) = (self.key, &mut self.report);
        integration_secrets(index, int, &mut |field, secret| {
            open_one(key, report, field, secret)
        })
    }

    /// Opens the sealed secrets of `connections[index]` in place.
    pub fn connection(&mut self, index: usize, conn: &mut RawConnection) -> Result<(), OpenError> {
        let (key, report) = (self.key, &mut self.report);
        connection_secrets(index, conn, &mut |field, secret| {
            open_one(key, report, field, secret)
        })
    }
}

fn open_one(
    key: Option<&EncryptionKey>,
    report: &mut OpenReport,
    field: &Field<'_>,
    secret: &mut Secret,
) -> Result<(), OpenError> {
    if !is_sealed(secret.expose()) {
        if key.is_some() {
            report.plaintext.push(field.path());
        }
        return Ok(());
    }
    report.sealed_seen = true;
    let fail = |reason| OpenError {
        path: field.path(),
        reason,
    };
    let key = key.ok_or_else(|| fail(OpenFailure::NoKey))?;
    *secret = key.open(&field.aad(), secret.expose()).map_err(fail)?;
    report.opened += 1;
    Ok(())
}

/// Why a vault file could not be sealed again.
#[derive(Debug, thiserror::Error)]
pub enum ResealError {
    #[error("{0}")]
    Parse(Diagnostic),
    #[error("{0}")]
    Open(OpenError),
    #[error("{0}")]
    Seal(#[from] SealError),
    #[error("cannot write the vault as YAML")]
    Serialize,
    /// The text about to be written does not read back as the same vault: a bug, refused.
    #[error("the sealed vault does not read back as the same vault; nothing was written")]
    Verify,
}

/// What [`reseal_text`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResealSummary {
    /// Values that were sealed (with `old`) and are now sealed with the new key.
    pub opened: usize,
    /// Values sealed in total in the new text.
    pub sealed: usize,
}

/// The vault text `text` with every secret sealed under `new`: sealed values are opened with
/// `old` first (every one must open). Comment lines at the top of the file are kept; other
/// comments are not (a YAML value does not carry them). The result is checked to read back,
/// opened with `new`, as the same vault.
pub fn reseal_text(
    file: &str,
    text: &str,
    old: Option<&EncryptionKey>,
    new: &EncryptionKey,
) -> Result<(String, ResealSummary), ResealError> {
    let mut vault = crate::config::vault::parse(file, text).map_err(ResealError::Parse)?;
    let report = open_vault(&mut vault, old).map_err(ResealError::Open)?;
    let plain = vault.clone();
    let sealed = seal_vault(&mut vault, new)?;
    let body = serde_yaml_ng::to_string(&vault).map_err(|_| ResealError::Serialize)?;
    let out = format!("{}{body}", crate::config::vault::leading_comments(text));
    let mut back = crate::config::vault::parse(file, &out).map_err(|_| ResealError::Verify)?;
    open_vault(&mut back, Some(new)).map_err(|_| ResealError::Verify)?;
    if back != plain {
        return Err(ResealError::Verify);
    }
    Ok((
        out,
        ResealSummary {
            opened: report.opened,
            sealed,
        },
    ))
}

#[cfg(test)]
mod tests;
