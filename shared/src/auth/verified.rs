//! Access tokens this instance verified recently, with their claims.
//!
//! A caller sends the same access token with every request until it expires,
//! and verifying it (two base64 parts, two JSON documents, the HMAC, the
//! registered claims) was the pipeline's largest cost after its SDK calls
//! (BENCHMARKS.md, "After (3)"). A token seen again is looked up instead, and
//! what verification decided once is still checked every time it can change:
//! - expiry: an entry serves only until the token's `exp` plus the leeway, the
//!   same instant verification starts refusing it;
//! - the signing key: the caller checks that the token's key is still in the
//!   ring (a retired key's tokens are verified again, and refused);
//! - revocation and scope are the authenticator's steps after this one, on
//!   every request, cached or not.
//!
//! Entries are keyed by the token's SHA-256, so no lookup compares a presented
//! token with a stored one byte by byte. The map is bounded: when full, expired
//! entries go first, and if none has expired it starts over (a Lambda instance
//! serves one request at a time, so a full map means many callers, each of whom
//! pays one verification again).

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::tokens::Claims;
use crate::bounded::make_room;

/// Tokens remembered per instance.
pub const CAPACITY: usize = 1024;

#[derive(Debug, Clone)]
pub struct Verified {
    pub claims: Claims,
    /// The key that signed the token.
    pub kid: String,
    /// The last Unix second the token is accepted (`exp` + leeway).
    pub until: u64,
}

#[derive(Debug)]
pub struct VerifiedTokens {
    entries: Mutex<HashMap<[u8; 32], Verified>>,
    capacity: usize,
}

impl Default for VerifiedTokens {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl VerifiedTokens {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// What verifying `token` decided, if it was verified here and is still
    /// within its lifetime at `now`.
    pub fn get(&self, token: &TokenDigest, now: u64) -> Option<Verified> {
        let mut entries = self.lock();
        match entries.get(&token.0) {
            Some(entry) if now <= entry.until => Some(entry.clone()),
            Some(_) => {
                entries.remove(&token.0);
                None
            }
            None => None,
        }
    }

    /// Remembers a token that verification accepted at `now`.
    pub fn insert(&self, token: TokenDigest, verified: Verified, now: u64) {
        let mut entries = self.lock();
        make_room(&mut entries, &token.0, self.capacity, |entry| {
            now <= entry.until
        });
        entries.insert(token.0, verified);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Verified>> {
        // Every critical section is a map operation: a panic inside one (none is
        // possible short of an allocation failure) leaves a consistent map.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A token's SHA-256: what the map is keyed by, computed once per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(sub: &str, until: u64) -> Verified {
        Verified {
            claims: Claims {
                iss: "i".into(),
                aud: "a".into(),
                sub: sub.into(),
                ten: "t".into(),
                scope: "chat".into(),
                exp: until - 5,
                iat: 1,
                nbf: 1,
                jti: "j".into(),
                fam: "f".into(),
            },
            kid: "k1".into(),
            until,
        }
    }

    #[test]
    fn a_token_is_served_until_its_last_second_and_not_after() {
        let tokens = VerifiedTokens::default();
        tokens.insert(TokenDigest::of("token-a"), verified("alice", 100), 50);
        assert_eq!(
            tokens
                .get(&TokenDigest::of("token-a"), 100)
                .unwrap()
                .claims
                .sub,
            "alice"
        );
        assert!(tokens.get(&TokenDigest::of("token-b"), 100).is_none());
        assert!(tokens.get(&TokenDigest::of("token-a"), 101).is_none());
        // The expired entry is gone, not only hidden.
        assert!(tokens.is_empty());
    }

    #[test]
    fn a_full_map_drops_expired_entries_first_then_starts_over() {
        let tokens = VerifiedTokens::with_capacity(3);
        tokens.insert(TokenDigest::of("old"), verified("old", 10), 5);
        tokens.insert(TokenDigest::of("a"), verified("a", 100), 5);
        tokens.insert(TokenDigest::of("b"), verified("b", 100), 5);
        // Full at second 20: "old" has expired and makes room.
        tokens.insert(TokenDigest::of("c"), verified("c", 100), 20);
        assert_eq!(tokens.len(), 3);
        assert!(
            tokens.get(&TokenDigest::of("a"), 20).is_some()
                && tokens.get(&TokenDigest::of("c"), 20).is_some()
        );
        // Full again and nothing expired: it starts over with the new token only.
        tokens.insert(TokenDigest::of("d"), verified("d", 100), 20);
        assert_eq!(tokens.len(), 1);
        assert!(tokens.get(&TokenDigest::of("d"), 20).is_some());
        assert!(tokens.get(&TokenDigest::of("a"), 20).is_none());
    }

    #[test]
    fn a_token_verified_again_replaces_its_entry_in_a_full_map() {
        let tokens = VerifiedTokens::with_capacity(2);
        tokens.insert(TokenDigest::of("a"), verified("a", 100), 5);
        tokens.insert(TokenDigest::of("b"), verified("b", 100), 5);
        // A remembered token whose key was retired is verified again: the
        // others stay.
        tokens.insert(TokenDigest::of("a"), verified("a2", 100), 6);
        assert_eq!(tokens.len(), 2);
        assert_eq!(
            tokens.get(&TokenDigest::of("a"), 6).unwrap().claims.sub,
            "a2"
        );
        assert!(tokens.get(&TokenDigest::of("b"), 6).is_some());
    }
}
