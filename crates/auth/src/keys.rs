//! The key set: the signing keys of a JWKS file, by `kid`.

use std::collections::HashMap;

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// The `kid` of every development key starts with this; production refuses it.
pub const DEV_KID_PREFIX: &str = "gridwork-dev-";

/// The development issuer (`gridctl login`); production refuses it.
pub const DEV_ISSUER: &str = "gridwork-dev";

/// Smallest RSA modulus taken, in bytes (2048 bits).
const MIN_RSA_BYTES: usize = 256;

/// A JWKS file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("JWKS file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not a JWKS, or not one key in it this service can verify with.
    #[error("JWKS file {path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The configuration is a development one in a production deployment.
    #[error("{0}")]
    Production(String),
}

/// One verification key.
pub(crate) struct Key {
    pub(crate) decoding: DecodingKey,
    pub(crate) algorithm: Algorithm,
}

/// The usable keys of one version of the file.
pub(crate) struct KeySet {
    pub(crate) keys: HashMap<String, Key>,
    /// Counts the versions loaded: a token verified under another version is
    /// verified again (its key may have been removed).
    pub(crate) generation: u64,
}

/// Parse `bytes` as a JWKS. Keys this service does not verify with (another
/// algorithm, `use: enc`, no `kid`) are skipped with a warning. `strict` (at
/// start): a file with no usable key, a `kid` twice or, in production, a
/// development key is refused whole, so the service does not start. Not
/// strict (a reload of a file that is a JWKS): the operator's edit is applied
/// as far as it can be — a development key in production and both keys of a
/// repeated `kid` are left out, and a file with no usable key left means no
/// key, every token refused (fail closed), never the old keys kept, which
/// would keep trusting a key just removed. Only a file that is not a JWKS at
/// all (half written, not JSON) is refused whole.
pub(crate) fn parse(
    bytes: &[u8],
    path: &str,
    production: bool,
    strict: bool,
) -> Result<HashMap<String, Key>, KeyError> {
    let invalid = |reason: String| KeyError::Invalid { path: path.to_string(), reason };
    let doc: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let Some(entries) = doc.get("keys").and_then(|k| k.as_array()) else {
        return Err(invalid("no \"keys\" array".into()));
    };
    let mut keys = HashMap::new();
    let mut repeated = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let kid = entry.get("kid").and_then(|k| k.as_str()).unwrap_or_default().to_string();
        if production && kid.starts_with(DEV_KID_PREFIX) {
            let refusal = format!(
                "JWKS file {path}: key {kid:?} is a development key (made by `make run`); a production deployment \
                 refuses it — publish the identity provider's keys instead (or set GRIDWORK_DEVELOPMENT=1 in a \
                 development mesh)"
            );
            if strict {
                return Err(KeyError::Production(refusal));
            }
            tracing::error!("{refusal}");
            continue;
        }
        match key(entry) {
            Ok(k) if kid.is_empty() => {
                tracing::warn!(path, index = i, alg = ?k.algorithm, "JWKS key without kid skipped")
            }
            Ok(k) => {
                if keys.insert(kid.clone(), k).is_some() {
                    if strict {
                        return Err(invalid(format!("kid {kid:?} appears twice")));
                    }
                    repeated.push(kid);
                }
            }
            Err(reason) => tracing::warn!(path, index = i, kid, reason, "JWKS key skipped"),
        }
    }
    for kid in repeated {
        tracing::error!(path, kid, "JWKS kid appears twice: neither key is used");
        keys.remove(&kid);
    }
    if keys.is_empty() {
        if strict {
            return Err(invalid("no RS256 or EdDSA signing key with a kid".into()));
        }
        tracing::error!(path, "JWKS file holds no usable key: every token is refused until one is published");
    }
    Ok(keys)
}

fn key(entry: &serde_json::Value) -> Result<Key, String> {
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|e| format!("not a JWK: {e}"))?;
    if let Some(usage) = &jwk.common.public_key_use
        && *usage != PublicKeyUse::Signature
    {
        return Err("not a signing key (use)".into());
    }
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(rsa.n.trim_end_matches('='))
                .map_err(|e| format!("modulus: {e}"))?;
            let bits = n.iter().skip_while(|b| **b == 0).count();
            if bits < MIN_RSA_BYTES {
                return Err(format!("RSA modulus of {} bits; at least 2048 are needed", bits * 8));
            }
            Algorithm::RS256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
        _ => return Err("neither RSA nor Ed25519".into()),
    };
    match (&jwk.common.key_algorithm, algorithm) {
        (None, _) | (Some(KeyAlgorithm::RS256), Algorithm::RS256) | (Some(KeyAlgorithm::EdDSA), Algorithm::EdDSA) => {}
        (Some(other), _) => return Err(format!("algorithm {other:?}: only RS256 and EdDSA are taken")),
    }
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable key: {e}"))?;
    Ok(Key { decoding, algorithm })
}
