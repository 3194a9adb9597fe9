//! Who gridctl acts as: `--principal` and `--roles`, sent as metadata
//! on every call. Until the identity issue replaces it, this is the services'
//! unauthenticated `x-gridwork-principal` / `x-gridwork-roles` claim.

use std::sync::OnceLock;

use anyhow::Context as _;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A connection that says who is calling.
pub type Conn = InterceptedService<Channel, Caller>;

/// The caller's metadata, set once from the command line.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    principal: Option<AsciiMetadataValue>,
    roles: Option<AsciiMetadataValue>,
}

static CALLER: OnceLock<Caller> = OnceLock::new();

/// Set who gridctl acts as (empty: not sent). Refuses what cannot be a
/// header value.
pub fn set(principal: &str, roles: &str) -> anyhow::Result<()> {
    let value = |flag: &str, v: &str| -> anyhow::Result<Option<AsciiMetadataValue>> {
        if v.is_empty() {
            return Ok(None);
        }
        Ok(Some(v.parse().with_context(|| format!("{flag}: {v:?} is not plain ASCII"))?))
    };
    let caller = Caller { principal: value("--principal", principal)?, roles: value("--roles", roles)? };
    let _ = CALLER.set(caller);
    Ok(())
}

impl Interceptor for Caller {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(p) = &self.principal {
            request.metadata_mut().insert("x-gridwork-principal", p.clone());
        }
        if let Some(r) = &self.roles {
            request.metadata_mut().insert("x-gridwork-roles", r.clone());
        }
        Ok(request)
    }
}

/// Connect to `endpoint` (`what` names the service in errors).
pub async fn connect(endpoint: &str, what: &str) -> anyhow::Result<Conn> {
    let channel = Channel::from_shared(endpoint.to_string())?
        .connect()
        .await
        .with_context(|| format!("connecting to {what} at {endpoint}"))?;
    Ok(InterceptedService::new(channel, CALLER.get().cloned().unwrap_or_default()))
}
