//! The verifier against real keys: Ed25519 made here and an RS256 test key;
//! every way a token can be wrong is refused with a message saying which.

use std::path::Path;

use gridwork_auth::{AuthConfig, KeyError, Signer, TokenSpec, Verifier, write_jwks};

const RSA_PEM: &[u8] = include_bytes!("fixtures/rsa-test-key.pem");
const RSA_JWK: &str = include_str!("fixtures/rsa-test-key.jwk.json");

fn rsa() -> (Signer, serde_json::Value) {
    (Signer::from_rsa_pem(RSA_PEM, "test-rsa-1").expect("rsa"), serde_json::from_str(RSA_JWK).expect("jwk"))
}

fn ed(kid: &str) -> (Signer, serde_json::Value) {
    let s = Signer::generate_ed25519(kid).expect("ed25519");
    let jwk = s.jwk().cloned().expect("jwk");
    (s, jwk)
}

fn spec(grants: &[&str]) -> TokenSpec {
    TokenSpec::new("user:w7", grants).expect("spec")
}

fn verifier(dir: &Path, keys: &[serde_json::Value]) -> std::sync::Arc<Verifier> {
    let file = dir.join("jwks.json");
    write_jwks(&file, keys).expect("jwks");
    Verifier::load(&AuthConfig::with_jwks(file)).expect("verifier")
}

#[test]
fn eddsa_and_rs256_tokens_verify_and_carry_their_subject_and_grants() {
    let dir = tempfile::tempdir().expect("dir");
    let ((e, ejwk), (r, rjwk)) = (ed("e1"), rsa());
    let v = verifier(dir.path(), &[ejwk, rjwk]);
    for signer in [&e, &r] {
        let token = signer.mint(&spec(&["street:s1", "dispatcher"])).expect("mint");
        let p = v.verify(&token).expect("verifies");
        assert_eq!(p.subject, "user:w7");
        assert_eq!(p.grants.iter().map(ToString::to_string).collect::<Vec<_>>(), ["street:s1", "dispatcher"]);
        assert!(!p.token_id.is_empty());
        // Again: the same answer (from the cache).
        assert_eq!(v.verify(&token).expect("again"), p);
    }
}

#[test]
fn a_remembered_token_is_refused_once_it_expires() {
    let dir = tempfile::tempdir().expect("dir");
    let (e, ejwk) = ed("e1");
    let v = verifier(dir.path(), &[ejwk]);
    let token = mint_with(&e, serde_json::json!({"exp": now() + 60}));
    v.verify_at(&token, now()).expect("valid now, and remembered");
    v.verify_at(&token, now() + 60 + 29).expect("within the leeway");
    let err = v.verify_at(&token, now() + 60 + 31).expect_err("expired, though remembered");
    assert!(err.0.contains("expired"), "{err}");
    // Not before its nbf (less the leeway).
    let later = mint_with(&e, serde_json::json!({"nbf": now() + 120, "exp": now() + 600}));
    assert!(v.verify_at(&later, now()).is_err());
    v.verify_at(&later, now() + 100).expect("within the leeway of nbf");
}

#[test]
fn every_wrong_token_is_refused_saying_why() {
    let dir = tempfile::tempdir().expect("dir");
    let ((e, ejwk), (_, rjwk)) = (ed("e1"), rsa());
    let v = verifier(dir.path(), &[ejwk, rjwk]);
    let refused = |token: &str, says: &str| {
        let err = v.verify(token).expect_err("refused");
        assert!(err.0.contains(says), "{says:?} not in {err}");
    };
    refused("not-a-jwt", "not a JWT");
    // Ended an hour ago (well past the 30 s leeway).
    let old = mint_with(&e, serde_json::json!({"exp": now() - 3600, "nbf": now() - 7200}));
    refused(&old, "expired");
    let early = e.mint(&TokenSpec { not_before_offset: 3600, ..spec(&[]) }).expect("early");
    refused(&early, "not valid yet");
    refused(&e.mint(&TokenSpec { issuer: "someone-else".into(), ..spec(&[]) }).expect("iss"), "not issued by");
    refused(&e.mint(&TokenSpec { audience: "another-app".into(), ..spec(&[]) }).expect("aud"), "not meant for");
    // The refusal does not tell a stranger which issuer or audience to forge.
    let err =
        v.verify(&e.mint(&TokenSpec { issuer: "someone-else".into(), ..spec(&[]) }).expect("iss")).expect_err("iss");
    assert!(!err.0.contains("gridwork-dev"), "{err}");
    // Valid for two days: past the 24 h a service accepts; a day's token is fine.
    let long = TokenSpec { valid_for: std::time::Duration::from_secs(48 * 3600), ..spec(&[]) };
    refused(&e.mint(&long).expect("long"), "JWT_MAX_LIFETIME_HOURS");
    let day = TokenSpec { valid_for: std::time::Duration::from_secs(23 * 3600), ..spec(&[]) };
    v.verify(&e.mint(&day).expect("day")).expect("a day's token");
    // An iat in the future does not stretch the cap; it is refused.
    refused(&mint_with(&e, serde_json::json!({"iat": now() + 40 * 3600, "exp": now() + 48 * 3600})), "future");
    // Without iat, the lifetime counts from now.
    refused(&mint_with(&e, serde_json::json!({"exp": now() + 72 * 3600, "iat": null})), "JWT_MAX_LIFETIME_HOURS");
    // Signed by another key that claims the kid of a known one.
    let (impostor, _) = ed("e1");
    refused(&impostor.mint(&spec(&[])).expect("impostor"), "signature");
    let (stranger, _) = ed("e9");
    refused(&stranger.mint(&spec(&[])).expect("stranger"), "unknown key");
    // Algorithm confusion: HS256 keyed with the RSA key's public modulus.
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("test-rsa-1".into());
    let claims = serde_json::json!({"sub": "x", "iss": "gridwork-dev", "aud": "gridwork", "exp": now() + 600});
    let hs = jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(RSA_JWK.as_bytes()));
    refused(&hs.expect("hs256"), "algorithm");
    refused(&mint_with(&e, serde_json::json!({"sub": ""})), "subject");
    refused(&mint_with(&e, serde_json::json!({"grants": ["Street:s1"]})), "grant");
    refused(&mint_without(&e, "sub"), "\"sub\"");
    refused(&mint_without(&e, "exp"), "\"exp\"");
    // A payload changed after signing: grants raised with another token's signature.
    let (mine, raised) = (e.mint(&spec(&[])).expect("m"), e.mint(&spec(&["registry-admin"])).expect("m"));
    let (signed, _) = mine.rsplit_once('.').expect("jws");
    let (_, other_signature) = raised.rsplit_once('.').expect("jws");
    refused(&format!("{signed}.{other_signature}"), "signature");
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
}

/// A token from `signer` with claims overridden by `over` (raw JSON, so it
/// can say what `TokenSpec` never would).
fn mint_with(signer: &Signer, over: serde_json::Value) -> String {
    let mut claims = serde_json::json!({
        "sub": "user:w7", "iss": "gridwork-dev", "aud": "gridwork", "iat": now(), "nbf": now(), "exp": now() + 600
    });
    for (k, v) in over.as_object().expect("object") {
        claims[k] = v.clone();
    }
    sign_raw(signer, &claims)
}

fn mint_without(signer: &Signer, claim: &str) -> String {
    let mut claims = serde_json::json!({
        "sub": "user:w7", "iss": "gridwork-dev", "aud": "gridwork", "iat": now(), "nbf": now(), "exp": now() + 600
    });
    claims.as_object_mut().expect("object").remove(claim);
    sign_raw(signer, &claims)
}

fn sign_raw(signer: &Signer, claims: &serde_json::Value) -> String {
    signer.mint_raw(claims).expect("sign")
}

#[test]
fn keys_rotate_without_a_restart_and_a_removed_key_stops_working() {
    let dir = tempfile::tempdir().expect("dir");
    let ((old, oldjwk), (new, newjwk)) = (ed("k-old"), ed("k-new"));
    let v = verifier(dir.path(), std::slice::from_ref(&oldjwk));
    let file = dir.path().join("jwks.json");
    let old_token = old.mint(&spec(&[])).expect("old");
    v.verify(&old_token).expect("old key works");
    let new_token = new.mint(&spec(&[])).expect("new");
    assert!(v.verify(&new_token).is_err(), "not published yet");
    // Publish the new key beside the old: its tokens work at once (an
    // unknown kid makes the verifier look at the file).
    write_jwks(&file, &[oldjwk.clone(), newjwk.clone()]).expect("both");
    v.verify(&new_token).expect("new key works without a restart");
    v.verify(&old_token).expect("old key still works");
    // A broken file is not taken: the keys in use stay.
    std::fs::write(&file, b"{ not json").expect("broken");
    assert!(v.reload_if_changed().is_err());
    v.verify(&new_token).expect("still the keys loaded before");
    // Retire the old key: its token, verified and remembered before, is refused.
    write_jwks(&file, &[newjwk]).expect("new only");
    assert!(v.reload_if_changed().expect("reload"), "the keys changed");
    let err = v.verify(&old_token).expect_err("retired");
    assert!(err.0.contains("unknown key"), "{err}");
    v.verify(&new_token).expect("new key works");
}

#[test]
fn a_production_deployment_refuses_the_development_key_and_issuer() {
    let dir = tempfile::tempdir().expect("dir");
    let signer = gridwork_auth::dev_signer(dir.path()).expect("dev key");
    assert!(signer.kid().starts_with(gridwork_auth::DEV_KID_PREFIX));
    let jwks = dir.path().join("dev-jwks.json");
    // Development: the dev key's tokens verify.
    let v = Verifier::load(&AuthConfig::with_jwks(&jwks)).expect("development");
    v.verify(&signer.mint(&spec(&["dispatcher"])).expect("mint")).expect("verifies");
    // The same key again on a second login: one key, one kid.
    assert_eq!(gridwork_auth::dev_signer(dir.path()).expect("again").kid(), signer.kid());
    let production = AuthConfig {
        development: false,
        jwt_issuer: "https://idp.city.example".into(),
        ..AuthConfig::with_jwks(&jwks)
    };
    assert!(matches!(Verifier::load(&production), Err(KeyError::Production(_))), "dev key in production");
    let (_, rjwk) = rsa();
    let idp = dir.path().join("idp.json");
    write_jwks(&idp, &[rjwk]).expect("idp");
    let dev_issuer = AuthConfig { development: false, ..AuthConfig::with_jwks(&idp) };
    assert!(matches!(Verifier::load(&dev_issuer), Err(KeyError::Production(_))), "dev issuer in production");
    let ok = AuthConfig { jwks_file: idp, ..production };
    Verifier::load(&ok).expect("a production key set");
}

#[test]
fn a_key_set_with_nothing_usable_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("jwks.json");
    for (doc, says) in [
        (serde_json::json!({}), "keys"),
        (serde_json::json!({"keys": []}), "no RS256 or EdDSA"),
        (serde_json::json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}), "no RS256 or EdDSA"),
        (serde_json::json!({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "small"}]}), "no RS256 or EdDSA"),
    ] {
        std::fs::write(&file, doc.to_string()).expect("write");
        let err = Verifier::load(&AuthConfig::with_jwks(&file)).expect_err("refused");
        assert!(err.to_string().contains(says), "{says:?} not in {err}");
    }
    let missing = Verifier::load(&AuthConfig::with_jwks(dir.path().join("none.json"))).expect_err("missing");
    assert!(matches!(missing, KeyError::Read { .. }));
}

#[test]
fn a_reload_applies_removals_even_from_a_flawed_file_and_fails_closed() {
    let dir = tempfile::tempdir().expect("dir");
    let ((a, ajwk), (b, bjwk)) = (ed("k-a"), ed("k-b"));
    let v = verifier(dir.path(), &[ajwk.clone(), bjwk.clone()]);
    let file = dir.path().join("jwks.json");
    let (ta, tb) = (a.mint(&spec(&[])).expect("a"), b.mint(&spec(&[])).expect("b"));
    v.verify(&ta).expect("a");
    v.verify(&tb).expect("b");
    // A half-written file is reported once and changes nothing.
    std::fs::write(&file, b"{\"keys\": [").expect("half");
    assert!(v.reload_if_changed().is_err(), "reported");
    assert!(!v.reload_if_changed().expect("the same version again"), "reported once, not re-read");
    v.verify(&ta).expect("keys kept");
    // The operator removes a compromised key, and the file also holds a key
    // this service cannot use: the removal still takes effect.
    let unusable = serde_json::json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": "k-ec"});
    write_jwks(&file, &[bjwk.clone(), unusable]).expect("flawed");
    assert!(v.reload_if_changed().expect("applied"));
    assert!(v.verify(&ta).expect_err("removed").0.contains("unknown key"));
    v.verify(&tb).expect("b stays");
    // A kid twice: neither key is trusted.
    write_jwks(&file, &[bjwk.clone(), ajwk.clone()]).expect("both");
    v.reload_if_changed().expect("both back");
    let mut clash = ajwk.clone();
    clash["kid"] = "k-b".into();
    write_jwks(&file, &[bjwk.clone(), clash]).expect("clash");
    v.reload_if_changed().expect("applied");
    assert!(v.verify(&tb).is_err(), "an ambiguous kid verifies nothing");
    // No usable key left: every token refused, never the old keys kept.
    write_jwks(&file, &[]).expect("empty");
    assert!(v.reload_if_changed().expect("applied"));
    assert!(v.verify(&tb).is_err() && v.verify(&ta).is_err(), "fail closed");
}

#[test]
fn a_production_reload_leaves_out_a_development_key_and_takes_the_rest() {
    let dir = tempfile::tempdir().expect("dir");
    let dev = gridwork_auth::dev_signer(dir.path()).expect("dev key");
    let (idp, idpjwk) = ed("idp-1");
    let file = dir.path().join("idp.json");
    write_jwks(&file, std::slice::from_ref(&idpjwk)).expect("idp");
    let config = AuthConfig {
        development: false,
        jwt_issuer: "https://idp.city.example".into(),
        ..AuthConfig::with_jwks(&file)
    };
    let v = Verifier::load(&config).expect("production");
    let issued = |s: &Signer| s.mint(&TokenSpec { issuer: "https://idp.city.example".into(), ..spec(&[]) }).expect("m");
    write_jwks(&file, &[idpjwk, dev.jwk().cloned().expect("jwk")]).expect("dev key slipped in");
    v.reload_if_changed().expect("reload");
    assert!(v.verify(&issued(&dev)).expect_err("dev key").0.contains("unknown key"));
    v.verify(&issued(&idp)).expect("the identity provider's key");
}

#[test]
fn a_token_that_never_expires_is_verified_twice_without_overflow() {
    let dir = tempfile::tempdir().expect("dir");
    let (e, ejwk) = ed("e1");
    let v = verifier(dir.path(), &[ejwk]);
    let forever = mint_with(&e, serde_json::json!({"exp": i64::MAX}));
    // The first verify fills the cache; the second reads it (exp + leeway).
    let first = v.verify(&forever);
    let second = v.verify(&forever);
    assert_eq!(first.is_ok(), second.is_ok(), "{first:?} {second:?}");
}
