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
    /// The longest a token may be valid for (its `exp` from its `iat`, or from
    /// now without one), in hours; longer ones are refused.
    #[arg(long, env = "JWT_MAX_LIFETIME_HOURS", default_value_t = 24)]
    pub max_token_lifetime_hours: u64,
    /// A development mesh (`make run` sets it): the development signing key
    /// and issuer are accepted. Without it a service is in production and
    /// refuses them at start and on every reload, so a deployment that forgot
    /// `JWKS_FILE` or `JWT_ISSUER` does not start on the defaults.
    #[arg(
        long,
        env = "GRIDWORK_DEVELOPMENT",
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub development: bool,
}

impl AuthConfig {
    /// The development set-up: `var/dev-jwks.json`, issuer `gridwork-dev`.
    pub fn development() -> Self {
        Self {
            jwks_file: crate::DEV_JWKS_FILE.into(),
            jwt_issuer: crate::DEV_ISSUER.into(),
            jwt_audience: crate::AUDIENCE.into(),
            max_token_lifetime_hours: 24,
            development: true,
        }
    }

    /// Whether this is a production deployment (not `GRIDWORK_DEVELOPMENT`).
    pub fn production(&self) -> bool {
        !self.development
    }

    /// Verify against `jwks_file` with the development issuer and audience.
    pub fn with_jwks(jwks_file: impl Into<PathBuf>) -> Self {
        Self { jwks_file: jwks_file.into(), ..Self::development() }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Service {
        #[command(flatten)]
        auth: super::AuthConfig,
    }

    #[test]
    fn a_service_is_in_production_unless_told_it_is_a_development_mesh() {
        // The variable would change the answer; the tests' environment has none.
        assert!(std::env::var_os("GRIDWORK_DEVELOPMENT").is_none());
        assert!(Service::parse_from(["svc"]).auth.production());
        assert!(!Service::parse_from(["svc", "--development"]).auth.production());
        assert!(!Service::parse_from(["svc", "--development=1"]).auth.production(), "as make run sets it");
        assert!(Service::parse_from(["svc", "--development=no"]).auth.production());
    }
}
