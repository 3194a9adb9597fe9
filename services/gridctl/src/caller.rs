//! Who gridctl calls as: a bearer token on every call — `--token` /
//! `GRIDWORK_TOKEN`, or the one `gridctl login` saved under `var/`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context as _;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A connection that says who is calling.
pub type Conn = InterceptedService<Channel, Caller>;

/// The `authorization` value, set once from the command line.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    authorization: Option<AsciiMetadataValue>,
}

static CALLER: OnceLock<Caller> = OnceLock::new();

/// Where `gridctl login` saves the token it makes.
pub fn token_file(var: &Path) -> PathBuf {
    var.join("dev-token")
}

/// Call with `token`, or (when empty) the token saved under `var` by
/// `gridctl login`, if there is one; with none, the services answer
/// UNAUTHENTICATED.
pub fn set(token: &str, var: &Path) -> anyhow::Result<()> {
    let token = match token.trim() {
        "" => match std::fs::read_to_string(token_file(var)) {
            Ok(saved) => saved.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", token_file(var).display())),
        },
        given => given.to_string(),
    };
    let authorization = match token.as_str() {
        "" => None,
        t => Some(format!("Bearer {t}").parse().context("the token is not plain ASCII")?),
    };
    let _ = CALLER.set(Caller { authorization });
    Ok(())
}

impl Interceptor for Caller {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(a) = &self.authorization {
            request.metadata_mut().insert("authorization", a.clone());
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
