//! Minting tokens: the development key behind `gridctl login`, and tests.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::KeyPair as _;

use crate::Grant;

/// The development signing key (PKCS#8), made by `make run` / `gridctl login`.
pub const DEV_KEY_FILE: &str = "var/dev-signing-key.p8";

/// The development JWKS the services read by default.
pub const DEV_JWKS_FILE: &str = "var/dev-jwks.json";

/// What a minted token says.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    /// `sub`.
    pub subject: String,
    /// `grants`.
    pub grants: Vec<Grant>,
    /// `iss`.
    pub issuer: String,
    /// `aud`.
    pub audience: String,
    /// How long from now it is valid.
    pub valid_for: Duration,
    /// Valid from this many seconds after now (negative: before).
    pub not_before_offset: i64,
}

impl TokenSpec {
    /// A token for `subject` with `grants`, from the development issuer, for
    /// eight hours (a shift).
    pub fn new(subject: &str, grants: &[&str]) -> anyhow::Result<Self> {
        Ok(Self {
            subject: subject.to_string(),
            grants: grants.iter().map(|g| g.parse()).collect::<Result<_, _>>()?,
            issuer: crate::DEV_ISSUER.into(),
            audience: crate::AUDIENCE.into(),
            valid_for: Duration::from_secs(8 * 3600),
            not_before_offset: 0,
        })
    }
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iss: &'a str,
    aud: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: String,
    grants: Vec<String>,
}

/// A private key that signs tokens.
pub struct Signer {
    key: EncodingKey,
    kid: String,
    algorithm: Algorithm,
    /// The public JWK (for an Ed25519 key made here).
    jwk: Option<serde_json::Value>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

impl Signer {
    /// A new Ed25519 key named `kid`.
    pub fn generate_ed25519(kid: &str) -> anyhow::Result<Self> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| anyhow::anyhow!("generating an Ed25519 key"))?;
        Self::from_ed25519_pkcs8(pkcs8.as_ref(), kid)
    }

    /// An Ed25519 key from its PKCS#8 document.
    pub fn from_ed25519_pkcs8(pkcs8: &[u8], kid: &str) -> anyhow::Result<Self> {
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|e| anyhow::anyhow!("not an Ed25519 PKCS#8 key: {e}"))?;
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        Ok(Self {
            key: EncodingKey::from_ed_der(pkcs8),
            kid: kid.to_string(),
            algorithm: Algorithm::EdDSA,
            jwk: Some(serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"
            })),
        })
    }

    /// An RSA key (RS256) from PEM; its JWK comes from whoever made it.
    pub fn from_rsa_pem(pem: &[u8], kid: &str) -> anyhow::Result<Self> {
        Ok(Self {
            key: EncodingKey::from_rsa_pem(pem).context("not an RSA private key in PEM")?,
            kid: kid.to_string(),
            algorithm: Algorithm::RS256,
            jwk: None,
        })
    }

    /// The key's id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWK, for a key made here (Ed25519).
    pub fn jwk(&self) -> Option<&serde_json::Value> {
        self.jwk.as_ref()
    }

    /// Sign a token.
    pub fn mint(&self, spec: &TokenSpec) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        let claims = Claims {
            sub: &spec.subject,
            iss: &spec.issuer,
            aud: &spec.audience,
            iat: now,
            nbf: now + spec.not_before_offset,
            exp: now + spec.valid_for.as_secs() as i64,
            jti: uuid::Uuid::now_v7().to_string(),
            grants: spec.grants.iter().map(Grant::to_string).collect(),
        };
        jsonwebtoken::encode(&header, &claims, &self.key).context("signing the token")
    }
}

impl Signer {
    /// Sign `claims` as they are (tests: claims no [`TokenSpec`] would make).
    pub fn mint_raw(&self, claims: &serde_json::Value) -> anyhow::Result<String> {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).context("signing the token")
    }
}

/// Write `keys` as the JWKS file at `path`, whole or not at all (a rename),
/// so a service watching it never reads half a file.
pub fn write_jwks(path: &Path, keys: &[serde_json::Value]) -> anyhow::Result<()> {
    let doc = serde_json::json!({ "keys": keys });
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&doc)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// The development signer under `dir` (`var/`): its key is made on first use
/// (readable by the owner only) and published in `dev-jwks.json` there.
pub fn dev_signer(dir: &Path) -> anyhow::Result<Signer> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key_file = dir.join(Path::new(DEV_KEY_FILE).file_name().unwrap_or_default());
    let jwks_file = dir.join(Path::new(DEV_JWKS_FILE).file_name().unwrap_or_default());
    let pkcs8 = match std::fs::read(&key_file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let rng = ring::rand::SystemRandom::new();
            let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| anyhow::anyhow!("generating the development key"))?;
            // Written whole under a name of its own, then linked into place:
            // two logins at once make one key (the second link fails and
            // reads the first's), and a crash never leaves an empty key.
            let tmp = key_file.with_extension(format!("p8.{}.{}", std::process::id(), uuid::Uuid::now_v7().simple()));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            f.write_all(doc.as_ref())?;
            f.sync_all()?;
            let linked = std::fs::hard_link(&tmp, &key_file);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => doc.as_ref().to_vec(),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(&key_file)?,
                Err(e) => return Err(e).with_context(|| format!("creating {}", key_file.display())),
            }
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", key_file.display())),
    };
    // The kid names the key by its public half, so a new key is a new kid.
    let probe = Signer::from_ed25519_pkcs8(&pkcs8, "probe")?;
    let x = probe.jwk().and_then(|j| j["x"].as_str()).unwrap_or_default().to_string();
    let kid = format!("{}{}", crate::DEV_KID_PREFIX, &x[..x.len().min(16)]);
    let signer = Signer::from_ed25519_pkcs8(&pkcs8, &kid)?;
    let published = std::fs::read(&jwks_file)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|doc| doc["keys"].as_array().is_some_and(|ks| ks.iter().any(|k| k["kid"] == kid.as_str())));
    if !published {
        write_jwks(&jwks_file, &[signer.jwk().cloned().unwrap_or_default()])?;
    }
    Ok(signer)
}
