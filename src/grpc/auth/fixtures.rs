//! Fixtures the auth layer's unit tests share: a ring of one service key and one admin key,
//! the callers they identify, and metadata carrying a credential.

use tonic::metadata::{MetadataMap, MetadataValue};

use super::{AUTHORIZATION, Caller, KeyRing, Role, hash_key, parse_keys};

/// The key of [`service`] in [`ring`].
pub(super) const SERVICE_KEY: &str = "tw_service-test-key";
/// The key of [`admin`] in [`ring`].
pub(super) const ADMIN_KEY: &str = "tw_admin-test-key";

/// Key-file text for [`ring`].
pub(super) fn ring_text() -> String {
    format!(
        r#"
[[keys]]
name = "search-prod"
team = "search"
role = "service"
sha256 = "{}"

[[keys]]
name = "platform-ops"
team = "platform"
role = "admin"
sha256 = "{}"
"#,
        hash_key(SERVICE_KEY),
        hash_key(ADMIN_KEY)
    )
}

/// [`service`] for [`SERVICE_KEY`] and [`admin`] for [`ADMIN_KEY`].
pub(super) fn ring() -> KeyRing {
    parse_keys(&ring_text()).unwrap()
}

/// Metadata with one `authorization` entry holding `value`.
pub(super) fn md(value: &str) -> MetadataMap {
    let mut m = MetadataMap::new();
    m.insert(AUTHORIZATION, MetadataValue::try_from(value).unwrap());
    m
}

/// The service caller of [`ring`].
pub(super) fn service() -> Caller {
    Caller {
        name: "search-prod".into(),
        team: "search".into(),
        role: Role::Service,
    }
}

/// The admin caller of [`ring`].
pub(super) fn admin() -> Caller {
    Caller {
        name: "platform-ops".into(),
        team: "platform".into(),
        role: Role::Admin,
    }
}
