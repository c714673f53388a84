//! Decision ids: HMAC-SHA256-signed tokens that carry what learning needs (scope, tier, band,
//! issue time), so Feedback needs no stored decision and a caller cannot forge or alter one.
//!
//! Format: `base64url(claims) "." base64url(first 16 bytes of HMAC-SHA256(key, claims))`, the
//! claims in a compact binary layout (version byte, fixed-size numbers little-endian, then
//! u16-length-prefixed strings): short on the wire and cheap to write on every Route.
//! The nonce makes each id unique; the feedback ledger remembers spent nonces until the token
//! expires, which is what makes feedback exactly-once.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the MAC kept in the token (128 bits).
const MAC_BYTES: usize = 16;
/// Longest token we try to parse; anything longer is malformed.
pub const MAX_TOKEN_BYTES: usize = 2048;

/// What a decision id asserts.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionClaims {
    /// Scope key whose plan decided.
    pub scope: String,
    /// Tier name that was chosen.
    pub tier: String,
    /// Complexity band of the task.
    pub band: u8,
    /// Complexity of the task (for the record).
    pub complexity: f32,
    /// Premium gap of the task (0 in ids issued before v3).
    pub gap: f32,
    /// Whether the decision explored.
    pub explored: bool,
    /// Whether its exploration was a pair (its shadow tier the drawn one, run beside the
    /// served tier); `None` in ids issued before pairs were told apart in the id, where the
    /// live policy's `explore_by` says.
    pub pair: Option<bool>,
    /// Team of the caller (may be empty).
    pub team: String,
    /// Workflow of the caller (may be empty).
    pub workflow: String,
    /// Policy version that decided.
    pub policy_version: String,
    /// Issue time, milliseconds since the Unix epoch.
    pub issued_ms: u64,
    /// Random, unique per decision.
    pub nonce: u64,
    /// Estimated cost of the chosen tier, micro-USD (reserved against budgets at Route).
    pub estimate_micros: u64,
    /// Estimated cost of the same task on the scope's premium tier, micro-USD.
    pub premium_micros: u64,
    /// Input tokens Route measured for the task (0 in ids issued before v4: unknown).
    pub input_tokens: u32,
    /// Output tokens Route expected for the task (0 in ids issued before v4: unknown).
    pub output_tokens: u32,
    /// The discovered cluster Route placed an unlabelled task in ([`NO_CLUSTER`]: none).
    pub cluster: u32,
    /// The task's text sketch (unlabelled tasks only; empty otherwise): what the scope's
    /// clusters are fitted on ([`crate::domain::clusters::sketch`]).
    pub sketch: Vec<u16>,
    /// The probability that the decision got its tier (`None` in ids issued before v5).
    pub propensity: Option<f32>,
    /// The probability that it would have got the scope's premium tier (`None` before v5).
    pub premium_propensity: Option<f32>,
    /// The tier Route asked the caller to also run the task on, for a shadow pair; empty: none.
    pub shadow_tier: String,
}

/// [`DecisionClaims::cluster`] of a task that was not clustered.
pub const NO_CLUSTER: u32 = u32::MAX;

/// Layout versions of the binary claims: v2 adds the cost estimates after the nonce, v3 the
/// premium gap after the complexity, v4 Route's token estimates, the task's cluster and its
/// sketch (a count byte, then that many u16) after the gap; v5 the two propensities (f32, NaN
/// for unknown) and the shadow tier (a string) at the end.
const CLAIMS_V1: u8 = 1;
const CLAIMS_V2: u8 = 2;
const CLAIMS_V3: u8 = 3;
const CLAIMS_V4: u8 = 4;
const CLAIMS_V5: u8 = 5;

/// Claims borrowed from a decision for signing: Route signs one per call without copying its
/// strings.
#[derive(Debug, Clone, Copy)]
pub struct ClaimsRef<'a> {
    /// See [`DecisionClaims::scope`].
    pub scope: &'a str,
    /// See [`DecisionClaims::tier`].
    pub tier: &'a str,
    /// See [`DecisionClaims::band`].
    pub band: u8,
    /// See [`DecisionClaims::complexity`].
    pub complexity: f32,
    /// See [`DecisionClaims::gap`].
    pub gap: f32,
    /// See [`DecisionClaims::explored`].
    pub explored: bool,
    /// See [`DecisionClaims::pair`].
    pub pair: Option<bool>,
    /// See [`DecisionClaims::team`].
    pub team: &'a str,
    /// See [`DecisionClaims::workflow`].
    pub workflow: &'a str,
    /// See [`DecisionClaims::policy_version`].
    pub policy_version: &'a str,
    /// See [`DecisionClaims::issued_ms`].
    pub issued_ms: u64,
    /// See [`DecisionClaims::nonce`].
    pub nonce: u64,
    /// See [`DecisionClaims::estimate_micros`].
    pub estimate_micros: u64,
    /// See [`DecisionClaims::premium_micros`].
    pub premium_micros: u64,
    /// See [`DecisionClaims::input_tokens`].
    pub input_tokens: u32,
    /// See [`DecisionClaims::output_tokens`].
    pub output_tokens: u32,
    /// See [`DecisionClaims::cluster`].
    pub cluster: u32,
    /// See [`DecisionClaims::sketch`].
    pub sketch: &'a [u16],
    /// See [`DecisionClaims::propensity`].
    pub propensity: Option<f32>,
    /// See [`DecisionClaims::premium_propensity`].
    pub premium_propensity: Option<f32>,
    /// See [`DecisionClaims::shadow_tier`].
    pub shadow_tier: &'a str,
}

impl ClaimsRef<'_> {
    fn encode(&self) -> Vec<u8> {
        let strings = [
            self.scope,
            self.tier,
            self.team,
            self.workflow,
            self.policy_version,
        ];
        let mut out = Vec::with_capacity(48 + strings.iter().map(|s| s.len() + 2).sum::<usize>());
        out.push(CLAIMS_V5);
        out.extend_from_slice(&self.issued_ms.to_le_bytes());
        out.extend_from_slice(&self.nonce.to_le_bytes());
        out.extend_from_slice(&self.estimate_micros.to_le_bytes());
        out.extend_from_slice(&self.premium_micros.to_le_bytes());
        out.extend_from_slice(&self.complexity.to_le_bytes());
        out.extend_from_slice(&self.gap.to_le_bytes());
        out.extend_from_slice(&self.input_tokens.to_le_bytes());
        out.extend_from_slice(&self.output_tokens.to_le_bytes());
        out.extend_from_slice(&self.cluster.to_le_bytes());
        let sketch = &self.sketch[..self.sketch.len().min(usize::from(u8::MAX))];
        out.push(sketch.len() as u8);
        for id in sketch {
            out.extend_from_slice(&id.to_le_bytes());
        }
        out.push(self.band);
        out.push(explored_byte(self.explored, self.pair));
        for s in strings {
            // Labels are capped at 256 bytes upstream and scope keys at ~530: u16 is plenty;
            // anything longer is cut, never mis-framed.
            let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        for p in [self.propensity, self.premium_propensity] {
            out.extend_from_slice(&p.unwrap_or(f32::NAN).to_le_bytes());
        }
        let shadow = &self.shadow_tier.as_bytes()[..self.shadow_tier.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(shadow.len() as u16).to_le_bytes());
        out.extend_from_slice(shadow);
        out
    }
}

impl DecisionClaims {
    /// The same claims, borrowed (what [`Signer::sign`] takes).
    pub fn borrowed(&self) -> ClaimsRef<'_> {
        ClaimsRef {
            scope: &self.scope,
            tier: &self.tier,
            band: self.band,
            complexity: self.complexity,
            gap: self.gap,
            explored: self.explored,
            pair: self.pair,
            team: &self.team,
            workflow: &self.workflow,
            policy_version: &self.policy_version,
            issued_ms: self.issued_ms,
            nonce: self.nonce,
            estimate_micros: self.estimate_micros,
            premium_micros: self.premium_micros,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cluster: self.cluster,
            sketch: &self.sketch,
            propensity: self.propensity,
            premium_propensity: self.premium_propensity,
            shadow_tier: &self.shadow_tier,
        }
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let mut r = Reader(b);
        let version = r.take(1)?[0];
        if !(CLAIMS_V1..=CLAIMS_V5).contains(&version) {
            return None;
        }
        let issued_ms = r.u64()?;
        let nonce = r.u64()?;
        let (estimate_micros, premium_micros) = if version >= CLAIMS_V2 {
            (r.u64()?, r.u64()?)
        } else {
            (0, 0)
        };
        let complexity = f32::from_le_bytes(r.take(4)?.try_into().ok()?);
        let gap = if version >= CLAIMS_V3 {
            f32::from_le_bytes(r.take(4)?.try_into().ok()?)
        } else {
            0.0
        };
        let (input_tokens, output_tokens, cluster, sketch) = if version >= CLAIMS_V4 {
            let (i, o, c) = (r.u32()?, r.u32()?, r.u32()?);
            let n = usize::from(r.take(1)?[0]);
            let sketch = r
                .take(2 * n)?
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            (i, o, c, sketch)
        } else {
            (0, 0, NO_CLUSTER, Vec::new())
        };
        let band = r.take(1)?[0];
        let (explored, pair) = explored_of(r.take(1)?[0]);
        let scope = r.string()?;
        let tier = r.string()?;
        let team = r.string()?;
        let workflow = r.string()?;
        let policy_version = r.string()?;
        let (propensity, premium_propensity, shadow_tier) = if version >= CLAIMS_V5 {
            let mut p = || {
                let x = f32::from_le_bytes(r.take(4)?.try_into().ok()?);
                Some((!x.is_nan()).then_some(x))
            };
            (p()?, p()?, r.string()?)
        } else {
            (None, None, String::new())
        };
        r.0.is_empty().then_some(Self {
            scope,
            tier,
            band,
            complexity,
            gap,
            explored,
            pair,
            team,
            workflow,
            policy_version,
            issued_ms,
            nonce,
            estimate_micros,
            premium_micros,
            input_tokens,
            output_tokens,
            cluster,
            sketch,
            propensity,
            premium_propensity,
            shadow_tier,
        })
    }
}

/// The id's exploration byte: 0 not explored; 2 an exploration pair; 3 explored otherwise; 1
/// explored, pair or not unknown (ids issued before the two were told apart). Any non-zero byte
/// reads as explored to a binary that knows only 0 and 1.
fn explored_byte(explored: bool, pair: Option<bool>) -> u8 {
    match (explored, pair) {
        (false, _) => 0,
        (true, None) => 1,
        (true, Some(true)) => 2,
        (true, Some(false)) => 3,
    }
}

/// [`explored_byte`] read back: (explored, pair).
fn explored_of(byte: u8) -> (bool, Option<bool>) {
    match byte {
        0 => (false, Some(false)),
        1 => (true, None),
        2 => (true, Some(true)),
        _ => (true, Some(false)),
    }
}

/// Bounds-checked reads over a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<String> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().ok()?) as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

/// Why a decision id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token this server could have issued (shape or encoding).
    #[error("decision_id: malformed (not an id this deployment issues)")]
    Malformed,
    /// The signature does not match: made up, altered, or signed with another key.
    #[error("decision_id: signature does not verify (forged, altered, or from another deployment)")]
    BadSignature,
}

/// Signs and verifies decision ids with a secret key.
#[derive(Clone)]
pub struct Signer {
    /// Keyed HMAC state, cloned per use.
    mac: HmacSha256,
    /// The key of the secret being rotated out: ids it signed still verify (for one TTL, while
    /// the operator keeps it configured); new ids are signed with `mac` only.
    previous: Option<HmacSha256>,
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
            previous: None,
        })
    }

    /// This signer, also accepting ids that `previous` signed (secret rotation).
    pub fn accepting(mut self, previous: Signer) -> Self {
        self.previous = Some(previous.mac);
        self
    }

    /// A signer for one deployment: its key is derived from the shared secret and the
    /// deployment's id, so ids issued by another deployment that happens to share the secret
    /// (a staging copy, a second tenant) fail verification here.
    pub fn for_deployment(
        secret: &[u8],
        deployment: &str,
    ) -> Result<Self, hmac::digest::InvalidLength> {
        let mut kdf = HmacSha256::new_from_slice(secret)?;
        kdf.update(b"tokenwise decision ids v1\0");
        kdf.update(deployment.as_bytes());
        Self::new(&kdf.finalize().into_bytes())
    }

    /// Keys for the lines of this replica's own files (spill and carry-over), derived from the
    /// decision key (so from the deployment's secret): the current secret's first, then the
    /// previous one's during a rotation. A line signed with one of them was written by a
    /// replica of this deployment; a planted one fails.
    pub fn file_keys(&self) -> Vec<[u8; 32]> {
        self.derived_keys(b"tokenwise file lines v1")
    }

    /// Keys that seal the entries of the shared policy log: an entry written into the store by
    /// anyone without the deployment's secret does not verify and never becomes live. The
    /// current secret's first, then the previous one's during a rotation.
    pub fn policy_keys(&self) -> Vec<[u8; 32]> {
        self.derived_keys(b"tokenwise policy log v1")
    }

    /// One key per secret held (current, then previous), for `purpose`.
    fn derived_keys(&self, purpose: &[u8]) -> Vec<[u8; 32]> {
        std::iter::once(&self.mac)
            .chain(self.previous.as_ref())
            .map(|mac| {
                let mut kdf = mac.clone();
                kdf.update(purpose);
                kdf.finalize().into_bytes().into()
            })
            .collect()
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
    pub fn sign(&self, claims: &ClaimsRef<'_>) -> String {
        // Serialising plain strings and numbers cannot fail.
        let payload = claims.encode();
        let tag = self.mac(&payload).finalize().into_bytes();
        let mut out = String::with_capacity((payload.len() + MAC_BYTES).div_ceil(3) * 4 + 2);
        URL_SAFE_NO_PAD.encode_string(&payload, &mut out);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(&tag[..MAC_BYTES], &mut out);
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
        let current = self.mac(&payload).verify_truncated_left(&tag);
        let verified = current.is_ok()
            || self.previous.as_ref().is_some_and(|p| {
                let mut mac = p.clone();
                mac.update(&payload);
                mac.verify_truncated_left(&tag).is_ok()
            });
        if !verified {
            return Err(TokenError::BadSignature);
        }
        DecisionClaims::decode(&payload).ok_or(TokenError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> DecisionClaims {
        DecisionClaims {
            scope: crate::domain::policy::DEFAULT_SCOPE.into(),
            tier: "small".into(),
            band: 3,
            complexity: 0.17,
            gap: -0.25,
            explored: false,
            pair: Some(false),
            team: "t".into(),
            workflow: "w".into(),
            policy_version: "abc".into(),
            issued_ms: 1_700_000_000_000,
            nonce: 42,
            estimate_micros: 1234,
            premium_micros: 98_765,
            input_tokens: 512,
            output_tokens: 64,
            cluster: 3,
            sketch: vec![7, 300, 65_000],
            propensity: Some(0.9),
            premium_propensity: Some(0.05),
            shadow_tier: "frontier".into(),
        }
    }

    #[test]
    fn round_trip() {
        let s = Signer::new(b"secret").unwrap();
        let token = s.sign(&claims().borrowed());
        assert_eq!(s.verify(&token).unwrap(), claims());
    }

    #[test]
    fn ids_issued_before_the_gap_and_the_tokens_decode_with_zeros() {
        let v5 = claims().borrowed().encode();
        // v4: the same layout without the propensities and the shadow tier at the end.
        let mut v4 = v5[..v5.len() - 8 - 2 - "frontier".len()].to_vec();
        v4[0] = CLAIMS_V4;
        let before_v5 = DecisionClaims {
            propensity: None,
            premium_propensity: None,
            shadow_tier: String::new(),
            ..claims()
        };
        assert_eq!(DecisionClaims::decode(&v4).unwrap(), before_v5);
        // v3: the same layout without the token, cluster and sketch bytes after the gap.
        let at = 1 + 8 * 4 + 4 + 4;
        let mut v3 = [&v4[..at], &v4[at + 8 + 4 + 1 + 6..]].concat();
        v3[0] = CLAIMS_V3;
        let unknown = DecisionClaims {
            input_tokens: 0,
            output_tokens: 0,
            cluster: NO_CLUSTER,
            sketch: Vec::new(),
            ..before_v5
        };
        assert_eq!(DecisionClaims::decode(&v3).unwrap(), unknown);
        // v2: nor the 4 gap bytes after the complexity.
        let at = 1 + 8 * 4 + 4;
        let mut v2 = [&v3[..at], &v3[at + 4..]].concat();
        v2[0] = CLAIMS_V2;
        let back = DecisionClaims::decode(&v2).unwrap();
        assert_eq!(
            back,
            DecisionClaims {
                gap: 0.0,
                ..unknown
            }
        );
        assert_eq!(DecisionClaims::decode(&v5).unwrap(), claims());
        // Unknown propensities travel as NaN and come back as unknown.
        let unknown_p = DecisionClaims {
            propensity: None,
            ..claims()
        };
        assert_eq!(
            DecisionClaims::decode(&unknown_p.borrowed().encode()).unwrap(),
            unknown_p
        );
    }

    #[test]
    fn an_exploration_pair_is_told_apart_and_older_ids_leave_it_unknown() {
        for (explored, pair) in [
            (true, Some(true)),
            (true, Some(false)),
            (false, Some(false)),
        ] {
            let c = DecisionClaims {
                explored,
                pair,
                ..claims()
            };
            assert_eq!(DecisionClaims::decode(&c.borrowed().encode()).unwrap(), c);
        }
        // Before pairs were told apart, an explored decision wrote 1.
        let legacy = DecisionClaims {
            explored: true,
            pair: None,
            ..claims()
        };
        let bytes = legacy.borrowed().encode();
        assert_eq!(DecisionClaims::decode(&bytes).unwrap(), legacy);
    }

    #[test]
    fn altered_forged_and_foreign_tokens_fail() {
        let s = Signer::new(b"secret").unwrap();
        let token = s.sign(&claims().borrowed());
        let (payload, tag) = token.split_once('.').unwrap();
        // Alter the claims (another tier) but keep the tag.
        let mut c = claims();
        c.tier = "frontier".into();
        let forged_payload = URL_SAFE_NO_PAD.encode(c.borrowed().encode());
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
        // Same secret, another deployment.
        let a = Signer::for_deployment(b"secret", "redis:team-a").unwrap();
        let b = Signer::for_deployment(b"secret", "redis:team-b").unwrap();
        let from_a = a.sign(&claims().borrowed());
        assert_eq!(a.verify(&from_a).unwrap(), claims());
        assert_eq!(
            Signer::for_deployment(b"secret", "redis:team-a")
                .unwrap()
                .verify(&from_a)
                .unwrap(),
            claims()
        );
        assert_eq!(b.verify(&from_a), Err(TokenError::BadSignature));
        // Rotation: the new secret, still accepting the old one's ids; new ids use the new one.
        let rotated = Signer::for_deployment(b"new-secret", "redis:team-a")
            .unwrap()
            .accepting(Signer::for_deployment(b"secret", "redis:team-a").unwrap());
        assert_eq!(rotated.verify(&from_a).unwrap(), claims());
        let fresh = rotated.sign(&claims().borrowed());
        assert_eq!(a.verify(&fresh), Err(TokenError::BadSignature));
        assert_eq!(rotated.verify(&fresh).unwrap(), claims());
        // Garbage.
        for junk in ["", "abc", "a.b", "!!!.???", &"x".repeat(5000)] {
            assert_eq!(s.verify(junk), Err(TokenError::Malformed), "{junk}");
        }
    }
}
