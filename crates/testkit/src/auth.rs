//! Tokens for tests: one Ed25519 key per test process, published in a JWKS
//! file every test service verifies against ([`crate::service_config`]), and
//! clients that send a token on every call.

use std::path::PathBuf;
use std::sync::OnceLock;

use gridwork_auth::{AuthConfig, Signer, TokenSpec};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

struct Keys {
    _dir: tempfile::TempDir,
    jwks: PathBuf,
    signer: Signer,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir for the test JWKS");
        let signer = Signer::generate_ed25519("test-key-1").expect("test key");
        let jwks = dir.path().join("jwks.json");
        gridwork_auth::write_jwks(&jwks, &[signer.jwk().cloned().expect("jwk")]).expect("test JWKS");
        Keys { _dir: dir, jwks, signer }
    })
}

/// The authentication settings of every test service.
pub fn config() -> AuthConfig {
    AuthConfig::with_jwks(keys().jwks.clone())
}

/// A token for `subject` holding `grants` (`street:s1`, `dispatcher`).
pub fn token(subject: &str, grants: &[&str]) -> String {
    keys().signer.mint(&TokenSpec::new(subject, grants).expect("grants")).expect("mint")
}

/// The `authorization` value carrying `token`.
pub fn bearer(token: &str) -> AsciiMetadataValue {
    format!("Bearer {token}").parse().expect("ascii token")
}

/// Put a token for `subject` with `grants` on `request` (it replaces the
/// client's own).
pub fn as_caller<T>(mut request: tonic::Request<T>, subject: &str, grants: &[&str]) -> tonic::Request<T> {
    request.metadata_mut().insert("authorization", bearer(&token(subject, grants)));
    request
}

/// Sends a token on every call that carries none of its own.
#[derive(Clone, Debug)]
pub struct Bearer(AsciiMetadataValue);

impl Bearer {
    /// Send `token`.
    pub fn new(token: &str) -> Self {
        Self(bearer(token))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if !request.metadata().contains_key("authorization") {
            request.metadata_mut().insert("authorization", self.0.clone());
        }
        Ok(request)
    }
}

/// A channel whose calls carry a token.
pub type Authed = InterceptedService<Channel, Bearer>;

/// What the tests' default caller holds: every role but those whose absence
/// tests check (reading and erasing contacts, breaking a triage claim); the
/// places held for are the test tree's grid `g`, community `c`, street `s`
/// (and `s2`, a second district's street) ([`crate::tree`]), the departments
/// those the tests summon.
pub const DEFAULT_GRANTS: &[&str] = &[
    "registry-admin",
    "catalogue-admin",
    "routing-admin",
    "triage",
    "dispatcher",
    "hotline",
    "grid-worker:g",
    "grid-head:g",
    "community:c",
    "street:s",
    "street:s2",
    "department:emergency-medical",
    "department:fire-brigade",
    "department:gas-company",
    "department:housing",
    "department:police",
    "department:urban-management",
    "rider",
    "auditor",
    "ledger-operator",
];

/// A valid grant of `role` in the tests' world: a unit role held for the
/// test tree's unit of its level (`street:s`, `community:c`, `grid-head:g`), the department role for `fire-brigade`, any other bare.
pub fn grant_for(role: &str) -> String {
    use gridwork_auth::ScopeKind;
    match gridwork_auth::scope::scope_kind(role) {
        ScopeKind::Unit => match role {
            gridwork_auth::policy::roles::STREET => format!("{role}:s"),
            gridwork_auth::policy::roles::COMMUNITY => format!("{role}:c"),
            _ => format!("{role}:g"),
        },
        ScopeKind::Department => format!("{role}:fire-brigade"),
        ScopeKind::Global | ScopeKind::Own => role.to_string(),
    }
}

/// `channel`, calling as `tester` with [`DEFAULT_GRANTS`]; a call may carry
/// its own token ([`as_caller`]).
pub fn authed(channel: Channel) -> Authed {
    authed_as(channel, "tester", DEFAULT_GRANTS)
}

/// `channel`, calling as `subject` with `grants`.
pub fn authed_as(channel: Channel, subject: &str, grants: &[&str]) -> Authed {
    InterceptedService::new(channel, Bearer(bearer(&token(subject, grants))))
}
