//! What the shared policy log holds: one sealed change of the live policy, and where it came
//! from.

use serde::{Deserialize, Serialize};

/// One change of the live policy, as the shared, append-only policy log keeps it: the version
/// history and the audit trail in one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyChange {
    /// Position in the log (assigned by the store).
    #[serde(default)]
    pub seq: u64,
    /// Content hash of the policy text.
    pub version: String,
    /// `startup`, `file` (hot reload or SIGHUP), `api` (ApplyPolicy) or `rollback`: a
    /// [`ChangeSource`] as the replica that wrote the entry named it (the name is sealed).
    pub source: String,
    /// Who: the API key's name, or the replica for file changes.
    pub author: String,
    /// Why, as given.
    pub reason: String,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// What changed against the policy it replaced.
    pub summary: Vec<String>,
    /// The full policy text.
    pub text: String,
    /// HMAC of everything above but `seq`, under the deployment's policy key
    /// ([`PolicyChange::seal`]); an entry without a valid one is refused.
    #[serde(default)]
    pub mac: String,
}

/// Where a policy change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeSource {
    /// The policy file a replica started with.
    Startup,
    /// The policy file, changed while serving (hot reload or SIGHUP).
    File,
    /// ApplyPolicy.
    Api,
    /// RollbackPolicy.
    Rollback,
}

impl ChangeSource {
    /// Name as the policy log keeps it.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeSource::Startup => "startup",
            ChangeSource::File => "file",
            ChangeSource::Api => "api",
            ChangeSource::Rollback => "rollback",
        }
    }

    /// Whether a logged change with this `source` name came from a replica's policy file.
    pub fn is_file_name(source: &str) -> bool {
        [ChangeSource::Startup, ChangeSource::File]
            .iter()
            .any(|s| s.as_str() == source)
    }
}

impl PolicyChange {
    fn mac(&self, key: &[u8; 32]) -> hmac::Hmac<sha2::Sha256> {
        use hmac::Mac;
        // The position is sealed too: a sealed entry copied to the end of the log (an old,
        // looser policy replayed by someone who can write to the store) does not verify there.
        let body = (
            self.seq,
            &self.version,
            &self.source,
            &self.author,
            &self.reason,
            self.at_ms,
            &self.summary,
            &self.text,
        );
        // Serialising strings and numbers cannot fail.
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(&bytes);
        mac
    }

    /// Seals the entry with `key` before it goes into the shared log.
    pub fn seal(mut self, key: &[u8; 32]) -> Self {
        use hmac::Mac;
        self.mac = hex::encode(self.mac(key).finalize().into_bytes());
        self
    }

    /// Which of `keys` sealed the entry, at its position and unchanged since (compared in
    /// constant time); `None`: none did.
    pub fn sealed_by(&self, keys: &[[u8; 32]]) -> Option<usize> {
        use hmac::Mac;
        let tag = hex::decode(&self.mac).ok()?;
        keys.iter()
            .position(|k| self.mac(k).verify_slice(&tag).is_ok())
    }
}
