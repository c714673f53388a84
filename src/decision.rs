//! Decision ids: HMAC-SHA256-signed tokens that carry what learning needs (scope, tier, band,
//! issue time), so Feedback needs no stored decision and a caller cannot forge or alter one.
//!
//! Format: `base64url(json claims) "." base64url(first 16 bytes of HMAC-SHA256(key, claims))`.
//! The nonce makes each id unique; the feedback ledger remembers spent nonces until the token
//! expires, which is what makes feedback exactly-once.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the MAC kept in the token (128 bits).
const MAC_BYTES: usize = 16;
/// Longest token we try to parse; anything longer is malformed.
pub const MAX_TOKEN_BYTES: usize = 2048;

/// What a decision id asserts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionClaims {
    /// Scope key whose plan decided.
    #[serde(rename = "s")]
    pub scope: String,
    /// Tier name that was chosen.
    #[serde(rename = "t")]
    pub tier: String,
    /// Complexity band of the task.
    #[serde(rename = "b")]
    pub band: u8,
    /// Complexity of the task (for the record).
    #[serde(rename = "c")]
    pub complexity: f32,
    /// Whether the decision explored.
    #[serde(rename = "x", default)]
    pub explored: bool,
    /// Team of the caller (may be empty).
    #[serde(rename = "tm", default)]
    pub team: String,
    /// Workflow of the caller (may be empty).
    #[serde(rename = "wf", default)]
    pub workflow: String,
    /// Policy version that decided.
    #[serde(rename = "p")]
    pub policy_version: String,
    /// Issue time, milliseconds since the Unix epoch.
    #[serde(rename = "i")]
    pub issued_ms: u64,
    /// Random, unique per decision.
    #[serde(rename = "n")]
    pub nonce: u64,
}

/// Why a decision id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token this server could have issued (shape or encoding).
    #[error("decision_id is malformed")]
    Malformed,
    /// The signature does not match: made up, altered, or signed with another key.
    #[error("decision_id signature does not verify (forged, altered, or from another deployment)")]
    BadSignature,
}

/// Signs and verifies decision ids with a secret key.
#[derive(Clone)]
pub struct Signer {
    /// Keyed HMAC state, cloned per use.
    mac: HmacSha256,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<secret>)")
    }
}

impl Signer {
    /// A signer with a configured secret (shared by every replica of a deployment).
    pub fn new(secret: &[u8]) -> Result<Self, hmac::digest::InvalidLength> {
        Ok(Self {
            mac: HmacSha256::new_from_slice(secret)?,
        })
    }

    /// A signer with a random secret: ids do not survive a restart.
    pub fn random() -> Result<Self, hmac::digest::InvalidLength> {
        let key: [u8; 32] = rand::random();
        Self::new(&key)
    }

    fn mac(&self, payload: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(payload);
        mac
    }

    /// Encodes and signs claims.
    pub fn sign(&self, claims: &DecisionClaims) -> String {
        // Serialising plain strings and numbers cannot fail.
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let tag = self.mac(&payload).finalize().into_bytes();
        let mut out = URL_SAFE_NO_PAD.encode(&payload);
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(&tag[..MAC_BYTES]));
        out
    }

    /// Checks the signature (in constant time) and decodes the claims.
    pub fn verify(&self, token: &str) -> Result<DecisionClaims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let (payload, tag) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Malformed)?;
        if tag.len() != MAC_BYTES {
            return Err(TokenError::Malformed);
        }
        self.mac(&payload)
            .verify_truncated_left(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> DecisionClaims {
        DecisionClaims {
            scope: "default".into(),
            tier: "small".into(),
            band: 3,
            complexity: 0.17,
            explored: false,
            team: "t".into(),
            workflow: "w".into(),
            policy_version: "abc".into(),
            issued_ms: 1_700_000_000_000,
            nonce: 42,
        }
    }

    #[test]
    fn round_trip() {
        let s = Signer::new(b"secret").unwrap();
        let token = s.sign(&claims());
        assert_eq!(s.verify(&token).unwrap(), claims());
    }

    #[test]
    fn altered_forged_and_foreign_tokens_fail() {
        let s = Signer::new(b"secret").unwrap();
        let token = s.sign(&claims());
        let (payload, tag) = token.split_once('.').unwrap();
        // Alter the claims (another tier) but keep the tag.
        let mut c = claims();
        c.tier = "frontier".into();
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        assert_eq!(
            s.verify(&format!("{forged_payload}.{tag}")),
            Err(TokenError::BadSignature)
        );
        // Flip a tag character.
        let mut bad_tag = tag.to_string();
        let first = if bad_tag.starts_with('A') { "B" } else { "A" };
        bad_tag.replace_range(0..1, first);
        assert_eq!(
            s.verify(&format!("{payload}.{bad_tag}")),
            Err(TokenError::BadSignature)
        );
        // Another deployment's key.
        assert_eq!(
            Signer::new(b"other").unwrap().verify(&token),
            Err(TokenError::BadSignature)
        );
        // Garbage.
        for junk in ["", "abc", "a.b", "!!!.???", &"x".repeat(5000)] {
            assert_eq!(s.verify(junk), Err(TokenError::Malformed), "{junk}");
        }
    }
}
