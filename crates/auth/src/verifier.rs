//! Verifying bearer tokens against the JWKS file, which is watched for changes.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::Validation;
use jsonwebtoken::errors::ErrorKind;

use crate::keys::{self, KeyError, KeySet};
use crate::{AuthConfig, Grant, Principal};

/// How often the file is looked at for a new version.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Clock skew allowed on `exp` and `nbf`, in seconds.
const LEEWAY_SECONDS: u64 = 30;

/// Longest token taken, in bytes.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why a call is not authenticated (`UNAUTHENTICATED`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unauthenticated(pub String);

impl From<Unauthenticated> for tonic::Status {
    fn from(e: Unauthenticated) -> Self {
        tonic::Status::unauthenticated(e.0)
    }
}

/// The claims Gridwork reads (issuer, audience, expiry and not-before are
/// checked by the validation).
#[derive(serde::Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    exp: i64,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    jti: String,
    #[serde(default)]
    grants: Vec<String>,
}

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// The stamp of a file that could not be looked at.
const MISSING: Stamp = Stamp { modified: None, len: u64::MAX, inode: u64::MAX };

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path)?;
    Ok(Stamp { modified: m.modified().ok(), len: m.len(), inode: m.ino() })
}

struct Cached {
    generation: u64,
    principal: Arc<Principal>,
}

/// Verifies tokens; shared by every connection of a service.
pub struct Verifier {
    config: AuthConfig,
    keys: RwLock<Arc<KeySet>>,
    /// The file's stamp and bytes as last loaded.
    loaded: Mutex<(Stamp, Vec<u8>)>,
    /// Verified tokens by their SHA-256 (a token may be 8 KiB; its digest is 32 bytes).
    cache: moka::sync::Cache<[u8; 32], Arc<Cached>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("config", &self.config).finish_non_exhaustive()
    }
}

fn token_digest(token: &str) -> [u8; 32] {
    let mut digest = [0u8; 32];
    digest.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
    digest
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl Verifier {
    /// Load the key set once. Refuses a file that cannot be used and, in
    /// production, the development key or issuer.
    pub fn load(config: &AuthConfig) -> Result<Arc<Self>, KeyError> {
        if config.production() && config.jwt_issuer == keys::DEV_ISSUER {
            return Err(KeyError::Production(format!(
                "JWT_ISSUER is the development issuer {:?} (the default): a production deployment sets JWT_ISSUER \
                 and JWKS_FILE to its identity provider's; a development mesh sets GRIDWORK_DEVELOPMENT=1 (make run \
                 does)",
                keys::DEV_ISSUER
            )));
        }
        let path = config.jwks_file.display().to_string();
        let read = |source| KeyError::Read { path: path.clone(), source };
        let stamp = stamp(&config.jwks_file).map_err(read)?;
        let bytes = std::fs::read(&config.jwks_file).map_err(read)?;
        let keys = keys::parse(&bytes, &path, config.production(), true)?;
        Ok(Arc::new(Self {
            config: config.clone(),
            keys: RwLock::new(Arc::new(KeySet { keys, generation: 1 })),
            loaded: Mutex::new((stamp, bytes)),
            cache: moka::sync::Cache::builder().max_capacity(100_000).time_to_live(Duration::from_secs(600)).build(),
        }))
    }

    /// [`Verifier::load`], then watch the file: a new version is taken within
    /// a second; one that cannot be used is logged and the keys in use stay.
    pub fn start(config: &AuthConfig) -> Result<Arc<Self>, KeyError> {
        let verifier = Self::load(config)?;
        let weak: Weak<Self> = Arc::downgrade(&verifier);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WATCH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(v) = weak.upgrade() else { return };
                if let Err(e) = v.reload_if_changed() {
                    tracing::error!(error = %e, "JWKS file not reloaded; the keys loaded before stay in use");
                }
            }
        });
        Ok(verifier)
    }

    /// The settings.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// Take a new version of the file, if there is one. `Ok(true)` when the
    /// keys changed.
    pub fn reload_if_changed(&self) -> Result<bool, KeyError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        self.reload_locked(&mut loaded)
    }

    /// A version is looked at once: its stamp is recorded before it is read,
    /// so a file that cannot be used is reported once, not re-read and
    /// re-parsed for every token that names an unknown key.
    fn reload_locked(&self, loaded: &mut (Stamp, Vec<u8>)) -> Result<bool, KeyError> {
        let path = self.config.jwks_file.display().to_string();
        let read = |source| KeyError::Read { path: path.clone(), source };
        let now = match stamp(&self.config.jwks_file) {
            Ok(now) => now,
            // Gone (mid-rotation, or a mistake): the keys in use stay;
            // reported once until the file is back.
            Err(_) if loaded.0 == MISSING => return Ok(false),
            Err(e) => {
                loaded.0 = MISSING;
                return Err(read(e));
            }
        };
        if now == loaded.0 {
            return Ok(false);
        }
        loaded.0 = now;
        let bytes = std::fs::read(&self.config.jwks_file).map_err(read)?;
        if bytes == loaded.1 {
            return Ok(false);
        }
        let keys = keys::parse(&bytes, &path, self.config.production(), false)?;
        let mut current = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let generation = current.generation + 1;
        tracing::info!(path, kids = ?keys.keys().collect::<Vec<_>>(), generation, "JWKS reloaded");
        *current = Arc::new(KeySet { keys, generation });
        loaded.1 = bytes;
        Ok(true)
    }

    /// A token names a key not loaded: look at the file now (it may have been
    /// published since the last tick) — one stat, unless it changed; never
    /// waiting on a reload another call is doing.
    fn reload_on_demand(&self) {
        let Ok(mut loaded) = self.loaded.try_lock() else { return };
        if let Err(e) = self.reload_locked(&mut loaded) {
            tracing::error!(error = %e, "JWKS file not reloaded; the keys loaded before stay in use");
        }
    }

    fn key_set(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Verify `token` (the part after `Bearer `).
    pub fn verify(&self, token: &str) -> Result<Arc<Principal>, Unauthenticated> {
        self.verify_at(token, now_unix())
    }

    /// [`Verifier::verify`] as of `now` (Unix seconds): every time check —
    /// expiry, not-before, lifetime, a remembered token's expiry — reads
    /// this clock, so a test can move it.
    pub fn verify_at(&self, token: &str, now: i64) -> Result<Arc<Principal>, Unauthenticated> {
        let keys = self.key_set();
        let digest = token_digest(token);
        if let Some(hit) = self.cache.get(&digest)
            && hit.generation == keys.generation
            && hit.principal.expires_at_unix.saturating_add(LEEWAY_SECONDS as i64) > now
        {
            return Ok(hit.principal.clone());
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Unauthenticated(format!("bearer token longer than {MAX_TOKEN_BYTES} bytes")));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| Unauthenticated(format!("bearer token is not a JWT: {e}")))?;
        let kid = header.kid.ok_or_else(|| Unauthenticated("bearer token names no signing key (kid)".into()))?;
        // A key published since the last look (the file is looked at every
        // second; a token of the new key may arrive first).
        let keys = if keys.keys.contains_key(&kid) {
            keys
        } else {
            self.reload_on_demand();
            self.key_set()
        };
        let Some(key) = keys.keys.get(&kid) else {
            return Err(Unauthenticated(format!("bearer token signed by an unknown key (kid {kid:?})")));
        };
        if header.alg != key.algorithm {
            return Err(Unauthenticated(format!(
                "bearer token algorithm {:?} is not its key's ({:?})",
                header.alg, key.algorithm
            )));
        }
        let mut validation = Validation::new(key.algorithm);
        validation.algorithms = vec![key.algorithm];
        validation.leeway = LEEWAY_SECONDS;
        // Expiry and not-before are checked below, against `now`.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_issuer(&[&self.config.jwt_issuer]);
        validation.set_audience(&[&self.config.jwt_audience]);
        validation.required_spec_claims =
            ["exp", "iss", "aud", "sub"].iter().map(|c| c.to_string()).collect::<HashSet<_>>();
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation).map_err(|e| {
            Unauthenticated(match e.kind() {
                ErrorKind::ExpiredSignature => "bearer token expired".into(),
                ErrorKind::ImmatureSignature => "bearer token not valid yet (nbf)".into(),
                // Which issuer and audience the service trusts is not the
                // caller's to learn from a refusal.
                ErrorKind::InvalidIssuer => "bearer token not issued by the issuer this service trusts".into(),
                ErrorKind::InvalidAudience => "bearer token not meant for this service (audience)".into(),
                ErrorKind::InvalidSignature => "bearer token signature does not verify".into(),
                ErrorKind::MissingRequiredClaim(c) => format!("bearer token has no {c:?} claim"),
                _ => format!("bearer token refused: {e}"),
            })
        })?;
        let claims = data.claims;
        let leeway = LEEWAY_SECONDS as i64;
        if claims.exp.saturating_add(leeway) <= now {
            return Err(Unauthenticated("bearer token expired".into()));
        }
        if claims.nbf.is_some_and(|nbf| nbf.saturating_sub(leeway) > now) {
            return Err(Unauthenticated("bearer token not valid yet (nbf)".into()));
        }
        // A token valid for longer than the deployment allows is refused: a
        // stolen long-lived token would outlive every revocation by expiry.
        let max = self.config.max_token_lifetime_hours.saturating_mul(3600) as i64;
        if claims.iat.is_some_and(|iat| iat > now.saturating_add(LEEWAY_SECONDS as i64)) {
            return Err(Unauthenticated("bearer token issued in the future (iat)".into()));
        }
        let lifetime = claims.exp.saturating_sub(claims.iat.map_or(now, |iat| iat.min(now)));
        if lifetime > max.saturating_add(LEEWAY_SECONDS as i64) {
            return Err(Unauthenticated(format!(
                "bearer token valid for {} h, more than the {} h this service accepts (JWT_MAX_LIFETIME_HOURS)",
                lifetime / 3600,
                self.config.max_token_lifetime_hours
            )));
        }
        if claims.sub.is_empty() || claims.sub.len() > 128 || claims.sub.chars().any(char::is_control) {
            return Err(Unauthenticated("bearer token subject (sub) must be 1 to 128 printable characters".into()));
        }
        let grants = claims
            .grants
            .iter()
            .map(|g| g.parse::<Grant>().and_then(|g| crate::scope::check_grant(&g).map(|()| g)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Unauthenticated(format!("bearer token {e}")))?;
        let principal =
            Arc::new(Principal { subject: claims.sub, grants, token_id: claims.jti, expires_at_unix: claims.exp });
        self.cache.insert(digest, Arc::new(Cached { generation: keys.generation, principal: principal.clone() }));
        Ok(principal)
    }
}
