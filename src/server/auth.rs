//! Who may do what: signed shopper session tokens and hashed agent bearer tokens.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Signs and checks shopper session tokens: `v1.<conversation id>.<expiry, unix s>.<hmac>`.
/// A token is a capability to resume one conversation until it expires; it carries nothing
/// secret, and a forged, altered or expired one is simply not accepted.
#[derive(Clone)]
pub struct SessionSigner {
    key: Vec<u8>,
    ttl: Duration,
}

impl SessionSigner {
    pub fn new(key: &[u8], ttl: Duration) -> SessionSigner {
        SessionSigner {
            key: key.to_vec(),
            ttl,
        }
    }

    fn mac(&self, payload: &str) -> HmacSha256 {
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        m.update(payload.as_bytes());
        m
    }

    pub fn sign(&self, conversation_id: &str) -> String {
        let exp = unix_now() + self.ttl.as_secs();
        let payload = format!("v1.{conversation_id}.{exp}");
        let tag = hex::encode(self.mac(&payload).finalize().into_bytes());
        format!("{payload}.{tag}")
    }

    /// The conversation a valid, unexpired token names.
    pub fn verify(&self, token: &str) -> Option<String> {
        let (payload, tag) = token.rsplit_once('.')?;
        let tag = hex::decode(tag).ok()?;
        self.mac(payload).verify_slice(&tag).ok()?;
        let mut parts = payload.split('.');
        let (Some("v1"), Some(id), Some(exp), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        (exp.parse::<u64>().ok()? > unix_now()).then(|| id.to_string())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An agent allowed to use `/v1/agent`, as configured: the token itself is never stored.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEntry {
    pub name: String,
    /// Hex SHA-256 of the bearer token (`shopdesk agent-token` makes both).
    pub token_sha256: String,
}

/// Token hash → agent name.
#[derive(Debug, Clone, Default)]
pub struct AgentTokens {
    by_hash: HashMap<[u8; 32], String>,
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl AgentTokens {
    pub fn new(entries: &[AgentEntry]) -> Result<AgentTokens, String> {
        let mut by_hash = HashMap::new();
        for e in entries {
            let raw = hex::decode(e.token_sha256.trim())
                .ok()
                .and_then(|v| <[u8; 32]>::try_from(v).ok())
                .ok_or_else(|| {
                    format!(
                        "agent {}: token_sha256 must be 64 hex digits (the SHA-256 of the token)",
                        e.name
                    )
                })?;
            if e.name.trim().is_empty() {
                return Err("an agent needs a name".into());
            }
            by_hash.insert(raw, e.name.clone());
        }
        Ok(AgentTokens { by_hash })
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The agent a bearer token belongs to. The lookup is by the token's hash, so timing reveals
    /// nothing about stored hashes' prefixes an attacker could steer.
    pub fn agent(&self, token: &str) -> Option<&str> {
        let h: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&h).map(String::as_str)
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The name of the session-signing key in `server_secrets` (v2: made by the OS CSPRNG).
pub const SESSION_KEY_NAME: &str = "session_key_v2";

/// A new random bearer token or key (256 bits from the OS CSPRNG, hex).
pub fn new_token() -> String {
    crate::secure::token_hex::<32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_tokens_resume_only_when_genuine() {
        let s = SessionSigner::new(b"secret", Duration::from_secs(60));
        let t = s.sign("abc123");
        assert_eq!(s.verify(&t).as_deref(), Some("abc123"));
        // Another key, an edited id, an edited tag, garbage: all refused.
        assert_eq!(
            SessionSigner::new(b"other", Duration::from_secs(60)).verify(&t),
            None
        );
        assert_eq!(s.verify(&t.replace("abc123", "abc124")), None);
        let mut bad = t.clone();
        let last = bad.pop().expect("non-empty");
        bad.push(if last == '0' { '1' } else { '0' });
        assert_eq!(s.verify(&bad), None);
        assert_eq!(s.verify("v1.abc.99999999999.zz"), None);
        assert_eq!(s.verify(""), None);
        // Expired.
        let old = SessionSigner::new(b"secret", Duration::ZERO).sign("abc123");
        assert_eq!(s.verify(&old), None);
    }

    #[test]
    fn agent_tokens_by_hash() {
        let tok = new_token();
        let a = AgentTokens::new(&[AgentEntry {
            name: "alice".into(),
            token_sha256: hash_token(&tok),
        }])
        .expect("valid");
        assert_eq!(a.agent(&tok), Some("alice"));
        assert_eq!(a.agent("guess"), None);
        assert_eq!(
            a.agent(&hash_token(&tok)),
            None,
            "the hash itself is not a token"
        );
        assert!(AgentTokens::new(&[AgentEntry {
            name: "bob".into(),
            token_sha256: "1234".into()
        }])
        .is_err());
    }
}
