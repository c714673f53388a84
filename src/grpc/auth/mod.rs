//! API-key authentication and role/team authorization for the gRPC API: the layer owns the key
//! file and its [`KeyRing`], the server's interceptor and authorization rules, and [`BearerKey`].

use std::fmt;

mod client;
#[cfg(test)]
mod fixtures;
mod interceptor;
mod keys;

pub use client::{AuthedChannel, BearerKey};
pub use interceptor::{ADMIN_SERVICE, AuthInterceptor, caller, effective_team, require_admin};
pub use keys::{AuthConfigError, KEY_PREFIX, KeyRing, hash_key, load_keys, new_key, parse_keys};

/// Metadata key that carries the credential.
pub const AUTHORIZATION: &str = "authorization";

/// What an authenticated caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// An internal service: Router RPCs, acting only for its own team.
    Service,
    /// A platform operator: everything, for any team.
    Admin,
}

impl Role {
    /// The name used in the key file: `service` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Service => "service",
            Role::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "service" => Some(Role::Service),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller: who holds the key that was presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Key name from the key file, for logs and the audit trail (unique within a ring).
    pub name: String,
    /// Team the caller belongs to (and is billed to).
    pub team: String,
    /// What the caller may do.
    pub role: Role,
}
