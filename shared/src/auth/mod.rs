//! Authentication and authorization for every API function.
//!
//! A protected route requires `Authorization: Bearer <access token>`; the
//! pipeline verifies it (no network round trip: keys and the revocation list are
//! cached, and a token verified before is remembered, [`verified`]), checks the
//! route's scope, and hands the handler a [`Principal`] whose tenant comes from
//! the token only — never from the body, path or query.

pub mod store;
pub mod tokens;
pub mod verified;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use tokio::sync::RwLock;

use crate::config::{ConfigError, Env};
use crate::problem::ApiError;
use store::{AuthStore, RevocationCache};
use tokens::{KeyRing, TokenError, TokenPolicy};
use verified::{TokenDigest, Verified, VerifiedTokens};

pub const SCOPE_CHAT: &str = "chat";
pub const SCOPE_JOBS: &str = "jobs";
pub const SCOPE_MEMORY: &str = "memory";
/// Tool calls through the MCP gateway.
pub const SCOPE_TOOLS: &str = "tools";
/// A tenant's own administration: keys, audit log, flags.
pub const SCOPE_ADMIN: &str = "admin";
/// The platform operator: tenants' quotas.
pub const SCOPE_PLATFORM: &str = "platform";
pub const ALL_SCOPES: [&str; 6] = [
    SCOPE_CHAT,
    SCOPE_JOBS,
    SCOPE_MEMORY,
    SCOPE_TOOLS,
    SCOPE_ADMIN,
    SCOPE_PLATFORM,
];

/// Who is calling, as the verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub tenant: String,
    pub scopes: Vec<String>,
    pub family: String,
}

/// Settings shared by the token issuer (api-auth) and every verifier.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub table: String,
    pub signing_keys_secret: String,
    pub policy: TokenPolicy,
    pub revocation_cache: Duration,
}

impl AuthSettings {
    /// `AUTH_TABLE`, `SIGNING_KEYS_SECRET` (required); `TOKEN_ISSUER`
    /// (`sophia-auth`), `TOKEN_AUDIENCE` (`sophia-api`), `ACCESS_TOKEN_TTL_SECS`
    /// (900, at most 3600), `REFRESH_TOKEN_TTL_SECS` (2592000), `TOKEN_LEEWAY_SECS`
    /// (30), `REVOCATION_CACHE_MS` (5000).
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let access_ttl_secs: u64 = env.parse_or("ACCESS_TOKEN_TTL_SECS", 900)?;
        if !(60..=3600).contains(&access_ttl_secs) {
            return Err(ConfigError::new(
                "ACCESS_TOKEN_TTL_SECS",
                "must be between 60 and 3600: access tokens are short-lived",
            ));
        }
        let leeway_secs: u64 = env.parse_or("TOKEN_LEEWAY_SECS", 30)?;
        if leeway_secs > 120 {
            return Err(ConfigError::new("TOKEN_LEEWAY_SECS", "must be at most 120"));
        }
        Ok(Self {
            table: env.required("AUTH_TABLE")?,
            signing_keys_secret: env.required("SIGNING_KEYS_SECRET")?,
            policy: TokenPolicy {
                issuer: env
                    .optional("TOKEN_ISSUER")
                    .unwrap_or_else(|| "sophia-auth".to_owned()),
                audience: env
                    .optional("TOKEN_AUDIENCE")
                    .unwrap_or_else(|| "sophia-api".to_owned()),
                access_ttl_secs,
                refresh_ttl_secs: env.parse_or("REFRESH_TOKEN_TTL_SECS", 30 * 86_400)?,
                leeway_secs,
            },
            revocation_cache: Duration::from_millis(env.parse_or("REVOCATION_CACHE_MS", 5_000)?),
        })
    }
}

/// The signing key ring from Secrets Manager, read at cold start and again when
/// a token names a key we do not know (after a rotation), at most every 30 s.
#[derive(Debug)]
pub struct KeySource {
    secrets: aws_sdk_secretsmanager::Client,
    secret_id: String,
    ring: RwLock<(Instant, KeyRing)>,
}

const MIN_KEY_REFRESH: Duration = Duration::from_secs(30);

impl KeySource {
    pub async fn load(
        secrets: aws_sdk_secretsmanager::Client,
        secret_id: String,
    ) -> Result<Self, String> {
        let ring = read_ring(&secrets, &secret_id).await?;
        Ok(Self {
            secrets,
            secret_id,
            ring: RwLock::new((Instant::now(), ring)),
        })
    }

    /// A source that starts from a known ring (tests, tools); it still re-reads
    /// the secret when a token names an unknown key.
    pub fn fixed(
        secrets: aws_sdk_secretsmanager::Client,
        secret_id: String,
        ring: KeyRing,
    ) -> Self {
        Self {
            secrets,
            secret_id,
            ring: RwLock::new((Instant::now(), ring)),
        }
    }

    pub async fn current(&self) -> KeyRing {
        self.ring.read().await.1.clone()
    }

    /// Whether the ring as last read has key `kid` (no refresh).
    pub async fn knows(&self, kid: &str) -> bool {
        self.ring.read().await.1.contains(kid)
    }

    /// Replaces the ring as if just read (tests: a rotation that retired a key).
    #[cfg(test)]
    async fn replace(&self, ring: KeyRing) {
        *self.ring.write().await = (Instant::now(), ring);
    }

    /// The ring, refreshed first if it lacks `kid` and was not read recently.
    async fn ring_for(&self, kid: Option<&str>) -> KeyRing {
        {
            let guard = self.ring.read().await;
            let known = kid.is_none_or(|kid| guard.1.contains(kid));
            if known || guard.0.elapsed() < MIN_KEY_REFRESH {
                return guard.1.clone();
            }
        }
        let mut guard = self.ring.write().await;
        if guard.0.elapsed() >= MIN_KEY_REFRESH {
            match read_ring(&self.secrets, &self.secret_id).await {
                Ok(ring) => *guard = (Instant::now(), ring),
                Err(error) => {
                    tracing::warn!(%error, "re-reading the signing keys failed");
                    guard.0 = Instant::now();
                }
            }
        }
        guard.1.clone()
    }
}

async fn read_ring(
    secrets: &aws_sdk_secretsmanager::Client,
    secret_id: &str,
) -> Result<KeyRing, String> {
    let output = secrets
        .get_secret_value()
        .secret_id(secret_id)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .map_err(|error| {
            format!(
                "reading the signing keys: {}",
                aws_sdk_secretsmanager::error::DisplayErrorContext(error)
            )
        })?;
    KeyRing::from_json(output.secret_string().unwrap_or_default())
}

/// An [`Authenticator`] whose signing keys are being read.
#[derive(Debug)]
struct PendingAuthenticator {
    settings: AuthSettings,
    keys: tokio::task::JoinHandle<Result<KeySource, String>>,
    store: Arc<AuthStore>,
}

impl PendingAuthenticator {
    /// The authenticator once the keys are read; an error fails the cold start.
    async fn ready(self) -> Result<Arc<Authenticator>, ConfigError> {
        let keys = self
            .keys
            .await
            .map_err(|error| error.to_string())
            .and_then(|keys| keys)
            .map_err(|problem| ConfigError::new("SIGNING_KEYS_SECRET", problem))?;
        Ok(Arc::new(Authenticator::new(
            &self.settings,
            Arc::new(keys),
            self.store,
        )))
    }
}

/// Verifies bearer tokens for the pipeline.
#[derive(Debug)]
pub struct Authenticator {
    policy: TokenPolicy,
    keys: Arc<KeySource>,
    revocations: RevocationCache,
    verified: VerifiedTokens,
}

impl Authenticator {
    pub fn new(settings: &AuthSettings, keys: Arc<KeySource>, store: Arc<AuthStore>) -> Self {
        Self {
            policy: settings.policy.clone(),
            keys,
            revocations: RevocationCache::new(store, settings.revocation_cache),
            verified: VerifiedTokens::default(),
        }
    }

    /// Builds everything a verifier needs from the environment and SDK clients;
    /// fails at cold start if the signing keys cannot be read.
    pub async fn from_env(
        env: &Env<'_>,
        sdk: &aws_config::SdkConfig,
    ) -> Result<Arc<Self>, ConfigError> {
        Self::start_from_env(env, sdk)?.ready().await
    }

    /// [`Self::from_env`] while `build` runs: the signing keys are read on a
    /// task of their own, so a cold start builds its other clients (the fleet
    /// client's TLS roots and pools) while that read, its one network wait, is
    /// in flight. Fails if either fails.
    pub async fn from_env_while<T, E: From<ConfigError>>(
        env: &Env<'_>,
        sdk: &aws_config::SdkConfig,
        build: impl FnOnce() -> Result<T, E>,
    ) -> Result<(Arc<Self>, T), E> {
        let pending = Self::start_from_env(env, sdk)?;
        let built = build()?;
        Ok((pending.ready().await?, built))
    }

    /// Starts reading the signing keys; [`PendingAuthenticator::ready`] joins it.
    fn start_from_env(
        env: &Env<'_>,
        sdk: &aws_config::SdkConfig,
    ) -> Result<PendingAuthenticator, ConfigError> {
        let settings = AuthSettings::from_env(env)?;
        let keys = tokio::spawn(KeySource::load(
            aws_sdk_secretsmanager::Client::new(sdk),
            settings.signing_keys_secret.clone(),
        ));
        let store = Arc::new(AuthStore::new(
            aws_sdk_dynamodb::Client::new(sdk),
            settings.table.clone(),
        ));
        Ok(PendingAuthenticator {
            settings,
            keys,
            store,
        })
    }

    /// Seeds the revocation list as if just read (offline tests, tools).
    pub async fn preload_revocations(&self, families: std::collections::HashSet<String>) {
        self.revocations.preload(families).await;
    }

    /// The principal of a request to a route that needs `scope`.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        scope: &str,
    ) -> Result<Principal, ApiError> {
        let token = bearer(headers)?;
        let claims = self.verified_claims(token).await?;
        match self.revocations.is_revoked(&claims.fam).await {
            Ok(false) => {}
            Ok(true) => return Err(unauthorized(TokenError::Revoked)),
            Err(error) => {
                tracing::error!(%error, "cannot read token revocations");
                return Err(ApiError::DependencyUnavailable {
                    dependency: "authentication",
                    retry_after_secs: 2,
                });
            }
        }
        if !claims.has_scope(scope) {
            return Err(ApiError::Forbidden {
                scope: scope.to_owned(),
            });
        }
        Ok(Principal {
            subject: claims.sub,
            tenant: claims.ten,
            scopes: claims
                .scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            family: claims.fam,
        })
    }

    /// The token's claims: remembered if this instance verified it before and
    /// its key is still in the ring ([`verified`]), else verified now.
    async fn verified_claims(&self, token: &str) -> Result<tokens::Claims, ApiError> {
        let now = crate::clock::now_secs();
        let digest = TokenDigest::of(token);
        if let Some(hit) = self.verified.get(&digest, now)
            && self.keys.knows(&hit.kid).await
        {
            return Ok(hit.claims);
        }
        let kid = jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid);
        let ring = self.keys.ring_for(kid.as_deref()).await;
        let claims = self.policy.verify(&ring, token).map_err(unauthorized)?;
        if let Some(kid) = kid {
            let until = claims.exp.saturating_add(self.policy.leeway_secs);
            let remembered = Verified {
                claims: claims.clone(),
                kid,
                until,
            };
            self.verified.insert(digest, remembered, now);
        }
        Ok(claims)
    }
}

fn unauthorized(error: TokenError) -> ApiError {
    ApiError::Unauthorized {
        reason: error.to_string(),
        invalid_token: true,
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let missing = || ApiError::Unauthorized {
        reason: "a bearer access token is required".to_owned(),
        invalid_token: false,
    };
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| missing())?;
    let (kind, token) = value.split_once(' ').ok_or_else(missing)?;
    if !kind.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(missing());
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD_KEY: &str =
        r#"{"kid": "old", "secret": "an-old-signing-key-of-at-least-thirty-two-bytes-for-hs256"}"#;
    const NEW_KEY: &str =
        r#"{"kid": "new", "secret": "a-new-signing-key-of-at-least-thirty-two-bytes-for-hs256!"}"#;

    /// An authenticator that needs no network: the ring is given, the
    /// revocation list preloaded (tokens name known keys, so no re-read).
    async fn authenticator(ring: &str) -> (Authenticator, AuthSettings) {
        let settings = AuthSettings::from_env(&Env::new(&[
            ("AUTH_TABLE", "a"),
            ("SIGNING_KEYS_SECRET", "k"),
        ]))
        .unwrap();
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build();
        let keys = KeySource::fixed(
            aws_sdk_secretsmanager::Client::new(&sdk),
            "k".into(),
            KeyRing::from_json(ring).unwrap(),
        );
        let store = Arc::new(AuthStore::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            "a".into(),
        ));
        let auth = Authenticator::new(&settings, Arc::new(keys), store);
        auth.preload_revocations(["revoked-family".to_owned()].into())
            .await;
        (auth, settings)
    }

    fn bearer_headers(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        headers
    }

    fn token(settings: &AuthSettings, ring: &str, family: &str) -> String {
        let policy = &settings.policy;
        let claims = policy.claims("alice", "acme", &["chat".to_owned()], family);
        policy
            .sign(&KeyRing::from_json(ring).unwrap(), &claims)
            .unwrap()
    }

    #[tokio::test]
    async fn a_remembered_token_still_gets_every_per_request_check() {
        let (auth, settings) = authenticator(OLD_KEY).await;
        let good = bearer_headers(&token(&settings, OLD_KEY, "fam-1"));
        let principal = auth.authenticate(&good, SCOPE_CHAT).await.unwrap();
        assert_eq!(
            (principal.tenant.as_str(), principal.subject.as_str()),
            ("acme", "alice")
        );
        assert_eq!(auth.verified.len(), 1);
        // Served from memory: the same principal, nothing new remembered.
        assert_eq!(
            auth.authenticate(&good, SCOPE_CHAT).await.unwrap(),
            principal
        );
        assert_eq!(auth.verified.len(), 1);
        // The scope is the route's, checked every time.
        assert!(matches!(
            auth.authenticate(&good, SCOPE_ADMIN).await,
            Err(ApiError::Forbidden { .. })
        ));
        // So is revocation.
        let revoked = bearer_headers(&token(&settings, OLD_KEY, "revoked-family"));
        for _ in 0..2 {
            assert!(matches!(
                auth.authenticate(&revoked, SCOPE_CHAT).await,
                Err(ApiError::Unauthorized { .. })
            ));
        }
        // A tampered token is verified (and refused), never matched to a remembered one.
        let tampered = format!("{}x", token(&settings, OLD_KEY, "fam-1"));
        assert!(
            auth.authenticate(&bearer_headers(&tampered), SCOPE_CHAT)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_remembered_token_of_a_retired_key_is_refused() {
        let (auth, settings) = authenticator(OLD_KEY).await;
        let old = bearer_headers(&token(&settings, OLD_KEY, "fam-1"));
        auth.authenticate(&old, SCOPE_CHAT).await.unwrap();
        assert_eq!(auth.verified.len(), 1);
        // A rotation that dropped the old key: its tokens stop working at once.
        auth.keys
            .replace(KeyRing::from_json(NEW_KEY).unwrap())
            .await;
        assert!(matches!(
            auth.authenticate(&old, SCOPE_CHAT).await,
            Err(ApiError::Unauthorized { .. })
        ));
        let new = bearer_headers(&token(&settings, NEW_KEY, "fam-1"));
        auth.authenticate(&new, SCOPE_CHAT).await.unwrap();
    }
}
