//! Access tokens (JWT, RFC 9068 profile, RFC 8725 practices) and the opaque
//! secrets behind API keys and refresh tokens.
//!
//! - The algorithm is pinned to HS256: a token whose header names anything else
//!   (`none`, RS256 …) is rejected before any key is touched, so there is no
//!   algorithm confusion. Tokens are explicitly typed (`typ: at+jwt`) and must
//!   carry `kid`, `iss`, `aud`, `sub`, `exp`, `iat`, `nbf`.
//! - Signing keys form a ring (current + previous) so rotation never invalidates
//!   live tokens: new tokens use the current key, verification picks by `kid`.
//! - API keys and refresh tokens are random 256-bit secrets; only their SHA-256
//!   is stored (high-entropy secrets need no slow hash), compared in constant time.

use crate::clock::now_secs;
use std::collections::HashMap;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const TOKEN_TYPE: &str = "at+jwt";
const MIN_KEY_BYTES: usize = 32;

/// Why a token or secret was refused. The words are safe to show a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's algorithm is not accepted")]
    WrongAlgorithm,
    #[error("the token is not an access token")]
    WrongType,
    #[error("the token's signing key is unknown")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is for another audience")]
    WrongAudience,
    #[error("the token is from another issuer")]
    WrongIssuer,
    #[error("the token lacks required claims")]
    MissingClaims,
    #[error("the token has been revoked")]
    Revoked,
}

/// One signing key of the ring.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey {
    pub kid: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    pub fn new(kid: &str, secret: &[u8]) -> Result<Self, String> {
        if kid.is_empty() || kid.len() > 64 {
            return Err("a key id must have 1 to 64 characters".to_owned());
        }
        if secret.len() < MIN_KEY_BYTES {
            return Err(format!(
                "signing key {kid} is shorter than {MIN_KEY_BYTES} bytes"
            ));
        }
        Ok(Self {
            kid: kid.to_owned(),
            secret: secret.to_vec(),
        })
    }
}

/// The signing keys: the current one signs, all of them verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRing {
    current: String,
    keys: HashMap<String, SigningKey>,
}

#[derive(Deserialize, Serialize)]
struct StoredKey {
    kid: String,
    secret: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StoredRing {
    Ring {
        current: String,
        keys: Vec<StoredKey>,
    },
    /// What the template's generated secret holds before the first rotation.
    Single { kid: String, secret: String },
}

impl KeyRing {
    pub fn new(current: SigningKey, previous: Vec<SigningKey>) -> Self {
        let mut keys: HashMap<String, SigningKey> =
            previous.into_iter().map(|k| (k.kid.clone(), k)).collect();
        let kid = current.kid.clone();
        keys.insert(kid.clone(), current);
        Self { current: kid, keys }
    }

    /// Parses the Secrets Manager value: `{"current": kid, "keys": [{"kid", "secret"}…]}`
    /// or, before the first rotation, `{"kid", "secret"}`.
    pub fn from_json(raw: &str) -> Result<Self, String> {
        let stored: StoredRing = serde_json::from_str(raw)
            .map_err(|_| "the signing key secret is not a key ring".to_owned())?;
        match stored {
            StoredRing::Single { kid, secret } => Ok(Self::new(
                SigningKey::new(&kid, secret.as_bytes())?,
                Vec::new(),
            )),
            StoredRing::Ring { current, keys } => {
                let keys = keys
                    .into_iter()
                    .map(|k| SigningKey::new(&k.kid, k.secret.as_bytes()))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut ring = Self {
                    current: current.clone(),
                    keys: keys.into_iter().map(|k| (k.kid.clone(), k)).collect(),
                };
                if !ring.keys.contains_key(&current) {
                    return Err(format!("the current key {current} is not in the ring"));
                }
                ring.current = current;
                Ok(ring)
            }
        }
    }

    /// The ring as stored in Secrets Manager (used by rotation).
    pub fn to_json(&self) -> String {
        let keys: Vec<StoredKey> = self
            .keys
            .values()
            .map(|k| StoredKey {
                kid: k.kid.clone(),
                secret: String::from_utf8_lossy(&k.secret).into_owned(),
            })
            .collect();
        serde_json::json!({ "current": self.current, "keys": keys }).to_string()
    }

    /// The next ring: a fresh random key `kid` becomes current, the current one
    /// stays as previous (tokens it signed verify until they expire), older
    /// keys are dropped.
    pub fn rotated(&self, kid: &str) -> Result<Self, String> {
        let fresh = SigningKey::new(kid, random_hex(32).as_bytes())?;
        let previous = self.keys.get(&self.current).cloned().into_iter().collect();
        Ok(Self::new(fresh, previous))
    }

    pub fn current_kid(&self) -> &str {
        &self.current
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    /// The tenant: the only source of tenancy for every request.
    pub ten: String,
    /// Space-separated scopes (RFC 8693 `scope`).
    pub scope: String,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
    pub jti: String,
    /// The refresh-token family this token was issued in (revocation unit).
    pub fam: String,
}

impl Claims {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.split(' ').any(|s| s == scope)
    }
}

/// Issuer, audience and lifetimes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPolicy {
    pub issuer: String,
    pub audience: String,
    pub access_ttl_secs: u64,
    pub refresh_ttl_secs: u64,
    pub leeway_secs: u64,
}

impl TokenPolicy {
    pub fn sign(&self, ring: &KeyRing, claims: &Claims) -> Result<String, String> {
        let key = ring
            .keys
            .get(&ring.current)
            .ok_or("the current key is missing")?;
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key.kid.clone());
        header.typ = Some(TOKEN_TYPE.to_owned());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(&key.secret))
            .map_err(|e| format!("signing failed: {e}"))
    }

    /// Claims for a new access token.
    pub fn claims(&self, subject: &str, tenant: &str, scopes: &[String], family: &str) -> Claims {
        let now = now_secs();
        Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: subject.to_owned(),
            ten: tenant.to_owned(),
            scope: scopes.join(" "),
            exp: now + self.access_ttl_secs,
            iat: now,
            nbf: now,
            jti: random_hex(16),
            fam: family.to_owned(),
        }
    }

    /// Verifies signature, type, algorithm and registered claims. Revocation is
    /// the caller's second step.
    pub fn verify(&self, ring: &KeyRing, token: &str) -> Result<Claims, TokenError> {
        if token.len() > 4096 || token.split('.').count() != 3 {
            return Err(TokenError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenError::WrongAlgorithm);
        }
        if header.typ.as_deref() != Some(TOKEN_TYPE) {
            return Err(TokenError::WrongType);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let key = ring.keys.get(&kid).ok_or(TokenError::UnknownKey)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iat", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway_secs;
        let data = jsonwebtoken::decode::<Claims>(
            token,
            &DecodingKey::from_secret(&key.secret),
            &validation,
        )
        .map_err(|error| {
            use jsonwebtoken::errors::ErrorKind;
            match error.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidAudience => TokenError::WrongAudience,
                ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                ErrorKind::MissingRequiredClaim(_) => TokenError::MissingClaims,
                ErrorKind::InvalidAlgorithm => TokenError::WrongAlgorithm,
                _ => TokenError::Malformed,
            }
        })?;
        let claims = data.claims;
        if claims.ten.is_empty()
            || claims.fam.is_empty()
            || claims.iat > now_secs() + self.leeway_secs
        {
            return Err(TokenError::MissingClaims);
        }
        Ok(claims)
    }
}

/// Random bytes from the operating system, as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    // The OS generator failing is unrecoverable for secret generation; fall back
    // to nothing weaker: an empty buffer here would be detectable by its zeros,
    // so mix in a UUID (itself from the OS) instead of silently using zeros.
    if getrandom::fill(&mut buffer).is_err() {
        let fallback = uuid::Uuid::new_v4();
        for (i, b) in buffer.iter_mut().enumerate() {
            *b = fallback.as_bytes()[i % 16];
        }
    }
    hex(&buffer)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// SHA-256 of a secret, hex: what is stored instead of the secret.
pub fn secret_hash(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Constant-time comparison of a presented secret with a stored hash.
pub fn secret_matches(presented_secret: &str, stored_hash: &str) -> bool {
    secret_hash(presented_secret)
        .as_bytes()
        .ct_eq(stored_hash.as_bytes())
        .into()
}

/// An opaque credential: `<prefix>_<id>_<secret>` (API key: one id; refresh
/// token: family and token ids).
#[derive(Clone, PartialEq, Eq)]
pub struct Opaque {
    pub ids: Vec<String>,
    pub secret: String,
}

impl std::fmt::Debug for Opaque {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opaque")
            .field("ids", &self.ids)
            .finish_non_exhaustive()
    }
}

pub const API_KEY_PREFIX: &str = "sk";
pub const REFRESH_PREFIX: &str = "rt";

impl Opaque {
    pub fn generate(id_count: usize) -> Self {
        Self {
            ids: (0..id_count).map(|_| random_hex(8)).collect(),
            secret: random_hex(32),
        }
    }

    pub fn render(&self, prefix: &str) -> String {
        format!("{prefix}_{}_{}", self.ids.join("_"), self.secret)
    }

    /// Parses `<prefix>_<16 hex>…_<64 hex>`; anything else is `None`.
    pub fn parse(prefix: &str, text: &str, id_count: usize) -> Option<Self> {
        let mut parts = text.strip_prefix(prefix)?.strip_prefix('_')?.split('_');
        let ids: Vec<String> = parts.by_ref().take(id_count).map(str::to_owned).collect();
        let secret = parts.next()?.to_owned();
        let is_hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        };
        let valid = parts.next().is_none()
            && ids.len() == id_count
            && ids.iter().all(|id| is_hex(id, 16))
            && is_hex(&secret, 64);
        valid.then_some(Self { ids, secret })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn policy() -> TokenPolicy {
        TokenPolicy {
            issuer: "https://auth.sophia.test".into(),
            audience: "sophia-api".into(),
            access_ttl_secs: 600,
            refresh_ttl_secs: 86_400,
            leeway_secs: 5,
        }
    }

    fn ring(kid: &str) -> KeyRing {
        KeyRing::new(
            SigningKey::new(
                kid,
                format!("{kid}-secret-material-of-enough-length!!").as_bytes(),
            )
            .unwrap(),
            vec![],
        )
    }

    fn forge(header: serde_json::Value, claims: &Claims, key: &[u8]) -> String {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let head = engine.encode(header.to_string());
        let body = engine.encode(serde_json::to_string(claims).unwrap());
        let signing_input = format!("{head}.{body}");
        let signature = jsonwebtoken::crypto::sign(
            signing_input.as_bytes(),
            &EncodingKey::from_secret(key),
            Algorithm::HS256,
        )
        .unwrap();
        format!("{signing_input}.{signature}")
    }

    #[test]
    fn a_signed_token_verifies() {
        let (p, r) = (policy(), ring("k1"));
        let claims = p.claims(
            "key:abc",
            "tenant-a",
            &["chat".into(), "jobs".into()],
            "fam1",
        );
        let token = p.sign(&r, &claims).unwrap();
        let verified = p.verify(&r, &token).unwrap();
        assert_eq!(verified, claims);
        assert!(verified.has_scope("jobs") && !verified.has_scope("admin"));
    }

    #[test]
    fn hostile_tokens_are_refused_for_the_right_reason() {
        let (p, r) = (policy(), ring("k1"));
        let good = p.claims("s", "t", &["chat".into()], "f");
        let key = b"k1-secret-material-of-enough-length!!";
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            engine.encode(r#"{"alg":"none","typ":"at+jwt","kid":"k1"}"#),
            engine.encode(serde_json::to_string(&good).unwrap())
        );
        let cases = [
            (
                forge(
                    serde_json::json!({"alg": "HS256", "typ": "at+jwt", "kid": "k1"}),
                    &good,
                    b"another-key-another-key-another-key!",
                ),
                TokenError::BadSignature,
            ),
            (
                forge(
                    serde_json::json!({"alg": "HS256", "typ": "at+jwt", "kid": "k9"}),
                    &good,
                    key,
                ),
                TokenError::UnknownKey,
            ),
            (
                forge(
                    serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": "k1"}),
                    &good,
                    key,
                ),
                TokenError::WrongType,
            ),
            (
                forge(
                    serde_json::json!({"alg": "RS256", "typ": "at+jwt", "kid": "k1"}),
                    &good,
                    key,
                ),
                TokenError::WrongAlgorithm,
            ),
            // jsonwebtoken has no `none` algorithm: such a header does not even parse.
            (none, TokenError::Malformed),
            (
                forge(
                    serde_json::json!({"alg": "HS256", "typ": "at+jwt", "kid": "k1"}),
                    &Claims {
                        exp: now_secs() - 60,
                        ..good.clone()
                    },
                    key,
                ),
                TokenError::Expired,
            ),
            (
                forge(
                    serde_json::json!({"alg": "HS256", "typ": "at+jwt", "kid": "k1"}),
                    &Claims {
                        nbf: now_secs() + 600,
                        ..good.clone()
                    },
                    key,
                ),
                TokenError::NotYetValid,
            ),
            (
                forge(
                    serde_json::json!({"alg": "HS256", "typ": "at+jwt", "kid": "k1"}),
                    &Claims {
                        aud: "other".into(),
                        ..good.clone()
                    },
                    key,
                ),
                TokenError::WrongAudience,
            ),
            (
                forge(
                    serde_json::json!({"alg": "HS256", "typ": "at+jwt", "kid": "k1"}),
                    &Claims {
                        iss: "evil".into(),
                        ..good.clone()
                    },
                    key,
                ),
                TokenError::WrongIssuer,
            ),
            ("not.a.token".to_owned(), TokenError::Malformed),
            ("x".repeat(5000), TokenError::Malformed),
        ];
        for (token, expected) in cases {
            assert_eq!(p.verify(&r, &token), Err(expected), "{token}");
        }
    }

    #[test]
    fn tokens_signed_before_rotation_still_verify_and_new_ones_carry_the_new_kid() {
        let p = policy();
        let old = ring("k1");
        let token = p.sign(&old, &p.claims("s", "t", &[], "f")).unwrap();
        let rotated = KeyRing::new(
            SigningKey::new("k2", b"k2-secret-material-of-enough-length!!").unwrap(),
            vec![SigningKey::new("k1", b"k1-secret-material-of-enough-length!!").unwrap()],
        );
        assert!(p.verify(&rotated, &token).is_ok());
        let fresh = p.sign(&rotated, &p.claims("s", "t", &[], "f")).unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&fresh).unwrap().kid.as_deref(),
            Some("k2")
        );
        let round_trip = KeyRing::from_json(&rotated.to_json()).unwrap();
        assert_eq!(round_trip, rotated);
    }

    #[test]
    fn key_rings_parse_both_stored_forms_and_refuse_weak_keys() {
        let single =
            KeyRing::from_json(r#"{"kid": "k1", "secret": "0123456789abcdef0123456789abcdef"}"#)
                .unwrap();
        assert_eq!(single.current_kid(), "k1");
        assert!(KeyRing::from_json(r#"{"kid": "k1", "secret": "short"}"#).is_err());
        assert!(KeyRing::from_json(r#"{"current": "k2", "keys": [{"kid": "k1", "secret": "0123456789abcdef0123456789abcdef"}]}"#).is_err());
        assert!(KeyRing::from_json("not json").is_err());
    }

    #[test]
    fn opaque_credentials_round_trip_and_reject_garbage() {
        let key = Opaque::generate(1);
        let text = key.render(API_KEY_PREFIX);
        assert_eq!(Opaque::parse(API_KEY_PREFIX, &text, 1), Some(key.clone()));
        assert!(Opaque::parse(REFRESH_PREFIX, &text, 1).is_none());
        assert!(Opaque::parse(API_KEY_PREFIX, &format!("{text}_x"), 1).is_none());
        assert!(Opaque::parse(API_KEY_PREFIX, &text.to_uppercase(), 1).is_none());
        let refresh = Opaque::generate(2);
        assert_eq!(
            Opaque::parse(REFRESH_PREFIX, &refresh.render(REFRESH_PREFIX), 2),
            Some(refresh)
        );
        assert!(secret_matches(&key.secret, &secret_hash(&key.secret)));
        assert!(!secret_matches("wrong", &secret_hash(&key.secret)));
        assert!(
            !format!("{key:?}").contains(&key.secret),
            "secrets never reach Debug output"
        );
    }
}
