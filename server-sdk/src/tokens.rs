//! App sessions ("logged in as ...") kept in the authority's storage folder
//! on the client: short-lived tokens, rotated as they are used, and bound to
//! the device key so that a copied token is useless on another machine.
//!
//! A token is `tw1.<payload>.<mac>`: the payload (JSON: subject, device
//! fingerprint, issue and expiry times, base64url) signed with HMAC-SHA256
//! under the app's secret. It is only accepted from the device it was issued
//! to, as proven by the secure handshake ([`ClientInfo::device`]). A client
//! without a device key (none today; a client of Terminalwire's published v1
//! protocol one day) gets a token bound to no device (`dev` empty), which only
//! such clients accept: it is then as safe as the storage folder it sits in,
//! like v1's own tokens, and it is never accepted from a device with a key.
//!
//! Rotation keeps a session alive while it is used, but never past its
//! maximum age from the log-in ([`TokenIssuer::with_max_age`], 30 days by
//! default); an app that revokes sessions (a user's, a device's) says which
//! with [`TokenIssuer::with_revocation_check`].
//!
//! [`ClientInfo::device`]: crate::ClientInfo::device

use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::context::{ClientInfo, Context, ResourceError};

/// Where a session token lives in the authority's storage folder.
pub const TOKEN_FILE: &str = "session.token";

/// Longest saved session file read; anything longer is not a token.
pub const MAX_TOKEN_FILE: u64 = 16 * 1024;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Claims {
    /// Who is logged in (the app's user id or name).
    pub sub: String,
    /// The device fingerprint the token is bound to; empty for a client
    /// without a device key ([`ClientInfo::device`] `None`).
    ///
    /// [`ClientInfo::device`]: crate::ClientInfo::device
    pub dev: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
    /// When the user logged in (kept by rotation), seconds since the Unix
    /// epoch; absent in tokens issued before it was kept: then `iat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<u64>,
}

impl Claims {
    /// When the user logged in, seconds since the Unix epoch.
    pub fn auth_time(&self) -> u64 {
        self.auth.unwrap_or(self.iat)
    }
}

/// Why a token is not accepted. Every case means "log in again".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a token, or its signature is wrong.
    #[error("the saved session is not valid; please log in again")]
    Invalid,
    /// Its time is over.
    #[error("your session has expired; please log in again")]
    Expired,
    /// Issued to another device: copied from elsewhere.
    #[error("the saved session belongs to another device; please log in again")]
    WrongDevice,
    /// The app revoked it ([`TokenIssuer::with_revocation_check`]).
    #[error("your session was ended; please log in again")]
    Revoked,
}

/// Whether a session the app issued still holds (see
/// [`TokenIssuer::with_revocation_check`]).
pub type RevocationCheck = std::sync::Arc<dyn Fn(&Claims) -> bool + Send + Sync>;

/// Issues and checks tokens with the app's secret.
#[derive(Clone)]
pub struct TokenIssuer {
    secret: Vec<u8>,
    lifetime: Duration,
    max_age: Duration,
    still_valid: Option<RevocationCheck>,
}

/// How long a session lasts from its log-in, however often it is rotated,
/// unless the app says otherwise ([`TokenIssuer::with_max_age`]).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("lifetime", &self.lifetime)
            .field("max_age", &self.max_age)
            .field("revocation_check", &self.still_valid.is_some())
            .finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

impl TokenIssuer {
    /// Tokens signed with `secret` (at least 32 bytes), valid for `lifetime`.
    pub fn new(secret: &[u8], lifetime: Duration) -> io::Result<TokenIssuer> {
        if secret.len() < 32 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a token secret must be at least 32 bytes",
            ));
        }
        Ok(TokenIssuer {
            secret: secret.to_vec(),
            lifetime,
            max_age: DEFAULT_MAX_AGE,
            still_valid: None,
        })
    }

    /// Sessions end this long after their log-in, however often they were
    /// rotated (default [`DEFAULT_MAX_AGE`]); the user then logs in again.
    pub fn with_max_age(mut self, max_age: Duration) -> TokenIssuer {
        self.max_age = max_age;
        self
    }

    /// A session is accepted only while `still_valid` says so of its claims:
    /// the app's revocation (say, every session of a user logged in before
    /// they changed their password, or of a device the app revoked). Called
    /// on every check of a valid token.
    pub fn with_revocation_check(
        mut self,
        still_valid: impl Fn(&Claims) -> bool + Send + Sync + 'static,
    ) -> TokenIssuer {
        self.still_valid = Some(std::sync::Arc::new(still_valid));
        self
    }

    /// Tokens signed with a new random secret, valid for `lifetime`: for
    /// tests, and for an app that keeps nothing across restarts (every
    /// saved session is refused after one, and the user logs in again).
    /// Several server processes behind one load balancer share a secret
    /// instead ([`load_or_create`](TokenIssuer::load_or_create)).
    pub fn generate(lifetime: Duration) -> io::Result<TokenIssuer> {
        TokenIssuer::new(&random_secret()?, lifetime)
    }

    /// Loads the secret at `path`, creating a random one (0600, whole or
    /// not at all) if missing. Workers starting at once all load the one
    /// that was made first.
    pub fn load_or_create(path: &Path, lifetime: Duration) -> io::Result<TokenIssuer> {
        match std::fs::read(path) {
            Ok(secret) => TokenIssuer::new(&secret, lifetime),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let secret = random_secret()?;
                if crate::files::write_new(path, &secret, 0o600)? {
                    TokenIssuer::new(&secret, lifetime)
                } else {
                    // Another worker made it first: its secret is the app's.
                    TokenIssuer::load_or_create(path, lifetime)
                }
            }
            Err(error) => Err(error),
        }
    }

    fn mac(&self, payload: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(b"tw1.");
        mac.update(payload.as_bytes());
        mac
    }

    /// A token for `subject` on the device with fingerprint `device`, who
    /// logs in now. An empty `device` binds it to no device: only a client
    /// without a device key accepts it.
    pub fn issue(&self, subject: &str, device: &str) -> String {
        let now = now();
        self.issue_at(subject, device, now, now)
    }

    /// A new token for the session `claims` holds (same subject, device and
    /// log-in time), valid for a full lifetime from now but never past the
    /// session's maximum age.
    pub fn rotate(&self, claims: &Claims) -> String {
        self.issue_at(&claims.sub, &claims.dev, now(), claims.auth_time())
    }

    fn issue_at(&self, subject: &str, device: &str, issued: u64, auth: u64) -> String {
        let claims = Claims {
            sub: subject.to_owned(),
            dev: device.to_owned(),
            iat: issued,
            exp: issued
                .saturating_add(self.lifetime.as_secs())
                .min(auth.saturating_add(self.max_age.as_secs())),
            auth: Some(auth),
        };
        let payload = B64.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let mac = B64.encode(self.mac(&payload).finalize().into_bytes());
        format!("tw1.{payload}.{mac}")
    }

    /// Checks a token presented by the device `device`.
    pub fn verify(&self, token: &str, device: &str) -> Result<Claims, TokenError> {
        let mut parts = token.trim().split('.');
        let (Some("tw1"), Some(payload), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Invalid);
        };
        let mac = B64.decode(mac).map_err(|_| TokenError::Invalid)?;
        // Constant-time comparison.
        self.mac(payload)
            .verify_slice(&mac)
            .map_err(|_| TokenError::Invalid)?;
        let claims: Claims = B64
            .decode(payload)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(TokenError::Invalid)?;
        if claims.dev != device {
            return Err(TokenError::WrongDevice);
        }
        let now = now();
        if now >= claims.exp || now >= claims.auth_time().saturating_add(self.max_age.as_secs()) {
            return Err(TokenError::Expired);
        }
        if let Some(still_valid) = &self.still_valid
            && !still_valid(&claims)
        {
            return Err(TokenError::Revoked);
        }
        Ok(claims)
    }

    /// Whether a valid token is old enough to be replaced (past half its
    /// lifetime).
    pub fn wants_rotation(&self, claims: &Claims) -> bool {
        now() >= claims.iat.saturating_add(self.lifetime.as_secs() / 2)
    }
}

/// A new random secret: a fresh static key's bytes (as its file holds them).
fn random_secret() -> io::Result<Vec<u8>> {
    let key = terminalwire_protocol::secure::StaticKey::generate().map_err(io::Error::other)?;
    Ok(key.to_file_text().into_bytes())
}

/// The outcome of looking for a saved session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionState {
    /// Logged in; the token may just have been rotated.
    LoggedIn(Claims),
    /// No saved session.
    LoggedOut,
    /// A saved session that cannot be used (it was removed): log in again.
    Rejected(TokenError),
}

impl Context {
    /// Saves a session for `subject`, bound to this client's device, in the
    /// app's storage folder on the client.
    pub async fn log_in(&self, issuer: &TokenIssuer, subject: &str) -> Result<(), ResourceError> {
        let path = self.token_path()?;
        let token = issuer.issue(subject, token_binding(self.client()));
        self.file().write_with_mode(&path, token, 0o600).await
    }

    /// Removes the saved session.
    pub async fn log_out(&self) -> Result<(), ResourceError> {
        let path = self.token_path()?;
        match self.file().delete(&path).await {
            Ok(()) | Err(ResourceError::NotFound { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Reads and checks the saved session; rotates a valid token past half
    /// its life; removes one that cannot be used. Never fails because of
    /// what the file contains.
    pub async fn session(&self, issuer: &TokenIssuer) -> Result<SessionState, ResourceError> {
        let path = self.token_path()?;
        // Read before anyone logged in, from a client that may lie: a token
        // is a few hundred bytes, and a longer file is no token.
        let token = match self.file().read_limited(&path, MAX_TOKEN_FILE).await {
            Ok(bytes) => String::from_utf8(bytes).unwrap_or_default(),
            Err(ResourceError::NotFound { .. }) => return Ok(SessionState::LoggedOut),
            Err(ResourceError::Invalid { .. } | ResourceError::TooLarge { .. }) => String::new(),
            Err(error) => return Err(error),
        };
        match issuer.verify(&token, token_binding(self.client())) {
            Ok(claims) => {
                if issuer.wants_rotation(&claims) {
                    let path = self.token_path()?;
                    let token = issuer.rotate(&claims);
                    self.file().write_with_mode(&path, token, 0o600).await?;
                }
                Ok(SessionState::LoggedIn(claims))
            }
            Err(error) => {
                self.log_out().await?;
                Ok(SessionState::Rejected(error))
            }
        }
    }

    fn token_path(&self) -> Result<String, ResourceError> {
        self.storage_path(TOKEN_FILE)
            .ok_or_else(|| ResourceError::Unsupported {
                message: "the client has no storage folder for this app".into(),
            })
    }
}

/// What a client's tokens are bound to: its device key's fingerprint, or
/// nothing (empty) for a client without one.
fn token_binding(client: &ClientInfo) -> &str {
    client.device.as_deref().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(lifetime: u64) -> TokenIssuer {
        TokenIssuer::new(&[7u8; 32], Duration::from_secs(lifetime)).unwrap()
    }

    #[test]
    fn a_token_works_on_its_device_only() {
        let issuer = issuer(3600);
        let token = issuer.issue("ada", "SHA256:device-a");
        let claims = issuer.verify(&token, "SHA256:device-a").unwrap();
        assert_eq!(claims.sub, "ada");
        assert_eq!(
            issuer.verify(&token, "SHA256:device-b"),
            Err(TokenError::WrongDevice)
        );
    }

    /// A client without a device key gets a token bound to no device, which
    /// a device with a key never accepts (nor the other way round).
    #[test]
    fn a_token_of_a_client_without_a_device_key_works_on_no_device() {
        let issuer = issuer(3600);
        let keyless = ClientInfo::for_test(None);
        let keyed = ClientInfo::for_test(Some("SHA256:device-a"));
        let token = issuer.issue("ada", token_binding(&keyless));
        assert_eq!(
            issuer.verify(&token, token_binding(&keyless)).unwrap().sub,
            "ada"
        );
        assert_eq!(
            issuer.verify(&token, token_binding(&keyed)),
            Err(TokenError::WrongDevice)
        );
        let token = issuer.issue("ada", token_binding(&keyed));
        assert_eq!(
            issuer.verify(&token, token_binding(&keyless)),
            Err(TokenError::WrongDevice)
        );
    }

    /// Each generated issuer has a secret of its own: its tokens are
    /// refused by another (a restarted app that keeps nothing).
    #[test]
    fn generated_issuers_accept_only_their_own_tokens() {
        let first = TokenIssuer::generate(Duration::from_secs(60)).unwrap();
        let second = TokenIssuer::generate(Duration::from_secs(60)).unwrap();
        let token = first.issue("ada", "dev");
        assert_eq!(first.verify(&token, "dev").unwrap().sub, "ada");
        assert_eq!(second.verify(&token, "dev"), Err(TokenError::Invalid));
    }

    /// Workers starting at once on a fresh deployment all get the one
    /// secret: each one's tokens work on the others. (The secret was made
    /// in place: the workers that lost the race failed with "File exists",
    /// or read a file not yet written whole.)
    #[test]
    fn workers_starting_at_once_share_the_one_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/session.key");
        let barrier = std::sync::Barrier::new(8);
        let issuers: Vec<TokenIssuer> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        TokenIssuer::load_or_create(&path, Duration::from_secs(60))
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|worker| worker.join().unwrap().unwrap())
                .collect()
        });
        let on_disk = TokenIssuer::load_or_create(&path, Duration::from_secs(60)).unwrap();
        let token = on_disk.issue("ada", "dev");
        for issuer in &issuers {
            assert_eq!(issuer.verify(&token, "dev").unwrap().sub, "ada");
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let left = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(left, 1, "temporary files left");
    }

    #[test]
    fn tampered_foreign_and_expired_tokens_are_refused() {
        let issuer = issuer(3600);
        let token = issuer.issue("ada", "dev");
        let mut tampered = token.clone().into_bytes();
        let middle = tampered.len() / 2;
        tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(issuer.verify(&tampered, "dev"), Err(TokenError::Invalid));
        let other = TokenIssuer::new(&[8u8; 32], Duration::from_secs(3600)).unwrap();
        assert_eq!(other.verify(&token, "dev"), Err(TokenError::Invalid));
        for junk in ["", "tw1", "tw1..", "tw1.a.b.c", "jwt.x.y", "tw1.!!!.???"] {
            assert_eq!(
                issuer.verify(junk, "dev"),
                Err(TokenError::Invalid),
                "{junk:?}"
            );
        }
        let old = issuer.issue_at("ada", "dev", now() - 7200, now() - 7200);
        assert_eq!(issuer.verify(&old, "dev"), Err(TokenError::Expired));
    }

    #[test]
    fn tokens_past_half_life_want_rotation() {
        let issuer = issuer(100);
        let fresh = issuer.verify(&issuer.issue("a", "d"), "d").unwrap();
        assert!(!issuer.wants_rotation(&fresh));
        let aging = issuer
            .verify(&issuer.issue_at("a", "d", now() - 60, now() - 60), "d")
            .unwrap();
        assert!(issuer.wants_rotation(&aging));
    }

    #[test]
    fn rotation_keeps_the_log_in_time_and_never_passes_the_maximum_age() {
        let issuer = issuer(3600).with_max_age(Duration::from_secs(86_400));
        // Logged in 23 h 30 min ago, last rotated 40 minutes ago.
        let logged_in = now() - 84_600;
        let token = issuer.issue_at("ada", "dev", now() - 2400, logged_in);
        let claims = issuer.verify(&token, "dev").unwrap();
        assert_eq!(claims.auth_time(), logged_in);
        assert!(issuer.wants_rotation(&claims));
        let rotated = issuer.verify(&issuer.rotate(&claims), "dev").unwrap();
        assert_eq!(rotated.auth_time(), logged_in, "rotation keeps the log-in");
        assert_eq!(rotated.exp, logged_in + 86_400, "cut at the maximum age");
        // Past the maximum age, however fresh the token.
        let stale = issuer.issue_at("ada", "dev", now() - 10, now() - 86_401);
        assert_eq!(issuer.verify(&stale, "dev"), Err(TokenError::Expired));
        // A maximum age lowered since the token was issued holds too.
        let lenient = issuer
            .clone()
            .with_max_age(Duration::from_secs(30 * 86_400));
        let old_log_in = lenient.issue_at("ada", "dev", now() - 10, now() - 90_000);
        assert!(lenient.verify(&old_log_in, "dev").is_ok());
        assert_eq!(issuer.verify(&old_log_in, "dev"), Err(TokenError::Expired));
        // A token without a log-in time counts from its issue.
        let legacy = Claims {
            auth: None,
            ..claims
        };
        assert_eq!(legacy.auth_time(), legacy.iat);
    }

    #[test]
    fn the_app_can_revoke_sessions() {
        let cutoff = now() - 100;
        // Every session of "ada" from before the cut-off is over.
        let issuer =
            issuer(3600).with_revocation_check(move |c| c.sub != "ada" || c.auth_time() >= cutoff);
        let before = issuer.issue_at("ada", "dev", now() - 200, now() - 200);
        assert_eq!(issuer.verify(&before, "dev"), Err(TokenError::Revoked));
        assert!(issuer.verify(&issuer.issue("ada", "dev"), "dev").is_ok());
        let other = issuer.issue_at("bob", "dev", now() - 200, now() - 200);
        assert!(issuer.verify(&other, "dev").is_ok());
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(TokenIssuer::new(b"short", Duration::from_secs(1)).is_err());
    }
}
