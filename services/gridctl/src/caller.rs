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

static TLS: OnceLock<tonic::transport::ClientTlsConfig> = OnceLock::new();

/// Call over TLS, trusting `ca`, presenting `identity` (certificate, key)
/// to services that require one (mTLS).
pub fn set_tls(ca: Option<&Path>, identity: Option<(&Path, &Path)>) -> anyhow::Result<()> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    if ca.is_none() && identity.is_none() {
        return Ok(());
    }
    anyhow::ensure!(ca.is_some(), "--tls-cert needs --tls-ca: the CA that signed the services' certificates");
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = ca {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    let _ = TLS.set(tls);
    Ok(())
}

/// Connect to `endpoint` (`what` names the service in errors).
pub async fn connect(endpoint: &str, what: &str) -> anyhow::Result<Conn> {
    let mut target = Channel::from_shared(endpoint.to_string())?;
    if let Some(tls) = TLS.get() {
        // tonic speaks TLS only to https:// endpoints: an http:// one would
        // carry the bearer token in the clear.
        anyhow::ensure!(
            endpoint.starts_with("https://"),
            "{what} at {endpoint}: with --tls-ca the endpoint must be https:// (set --registry, --intake, --dispatch)"
        );
        target = target.tls_config(tls.clone()).context("TLS settings")?;
    }
    let channel = target.connect().await.with_context(|| format!("connecting to {what} at {endpoint}"))?;
    Ok(InterceptedService::new(channel, CALLER.get().cloned().unwrap_or_default()))
}
