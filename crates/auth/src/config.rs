//! The authentication settings every service shares.

use std::path::PathBuf;

/// Where the keys are and what a token must say. Flattened into every
/// service's configuration; each is an environment variable with a flag.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthConfig {
    /// JWKS file holding the public keys that sign callers' tokens (by `kid`).
    /// Re-read when it changes: add the new key, switch the issuer over, then
    /// remove the old one — no restart.
    #[arg(long, env = "JWKS_FILE", default_value = crate::DEV_JWKS_FILE)]
    pub jwks_file: PathBuf,
    /// The `iss` every token must carry.
    #[arg(long, env = "JWT_ISSUER", default_value = crate::DEV_ISSUER)]
    pub jwt_issuer: String,
    /// The `aud` every token must carry (one of them, if several).
    #[arg(long, env = "JWT_AUDIENCE", default_value = crate::AUDIENCE)]
    pub jwt_audience: String,
    /// A production deployment: the development signing key and issuer that
    /// `make run` uses are refused at start and on every reload.
    #[arg(long, env = "GRIDWORK_PRODUCTION", default_value_t = false)]
    pub production: bool,
}

impl AuthConfig {
    /// The development set-up: `var/dev-jwks.json`, issuer `gridwork-dev`.
    pub fn development() -> Self {
        Self {
            jwks_file: crate::DEV_JWKS_FILE.into(),
            jwt_issuer: crate::DEV_ISSUER.into(),
            jwt_audience: crate::AUDIENCE.into(),
            production: false,
        }
    }

    /// Verify against `jwks_file` with the development issuer and audience.
    pub fn with_jwks(jwks_file: impl Into<PathBuf>) -> Self {
        Self { jwks_file: jwks_file.into(), ..Self::development() }
    }
}
