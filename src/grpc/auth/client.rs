//! Client side of authentication: [`BearerKey`] sends `authorization: Bearer <key>` on every
//! call a client makes (the CLI, replays, tests), and [`AuthedChannel`] is a channel wearing it.

use tonic::Status;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;

use super::AUTHORIZATION;

/// Client side: adds `authorization: Bearer <key>` to every call (no key: nothing).
#[derive(Clone, Default)]
pub struct BearerKey(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for BearerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "BearerKey(<key>)"
        } else {
            "BearerKey(none)"
        })
    }
}

impl BearerKey {
    /// From an API key; `None` or empty sends no header. Fails on characters a header cannot
    /// carry.
    pub fn new(key: Option<&str>) -> Result<Self, Status> {
        match key.filter(|k| !k.is_empty()) {
            None => Ok(Self(None)),
            Some(k) => format!("Bearer {k}")
                .parse()
                .map(|v| Self(Some(v)))
                .map_err(|_| {
                    Status::invalid_argument("API key has characters a header cannot carry")
                }),
        }
    }
}

impl Interceptor for BearerKey {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(AUTHORIZATION, v.clone());
        }
        Ok(req)
    }
}

/// A client channel that authenticates with [`BearerKey`].
pub type AuthedChannel =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerKey>;

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    const KEY: &str = "tw_client-test-key";

    #[test]
    fn key_is_sent_as_bearer() {
        let mut b = BearerKey::new(Some(KEY)).unwrap();
        let req = b.call(tonic::Request::new(())).unwrap();
        let sent: Vec<_> = req.metadata().get_all(AUTHORIZATION).iter().collect();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].to_str().unwrap(), format!("Bearer {KEY}"));
    }

    #[test]
    fn sent_key_replaces_one_already_there() {
        let mut b = BearerKey::new(Some(KEY)).unwrap();
        let mut req = tonic::Request::new(());
        req.metadata_mut()
            .insert(AUTHORIZATION, MetadataValue::from_static("Bearer tw_old"));
        let req = b.call(req).unwrap();
        let sent: Vec<_> = req.metadata().get_all(AUTHORIZATION).iter().collect();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].to_str().unwrap(), format!("Bearer {KEY}"));
    }

    #[test]
    fn no_key_or_empty_key_sends_nothing() {
        for key in [None, Some("")] {
            let mut b = BearerKey::new(key).unwrap();
            let req = b.call(tonic::Request::new(())).unwrap();
            assert!(req.metadata().get(AUTHORIZATION).is_none(), "{key:?}");
        }
        let mut b = BearerKey::default();
        let req = b.call(tonic::Request::new(())).unwrap();
        assert!(req.metadata().get(AUTHORIZATION).is_none());
    }

    #[test]
    fn key_a_header_cannot_carry_is_refused_without_echo() {
        let e = BearerKey::new(Some("tw_bad\nkey")).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(e.message(), "API key has characters a header cannot carry");
    }

    #[test]
    fn debug_shows_no_key() {
        let d = format!("{:?}", BearerKey::new(Some(KEY)).unwrap());
        assert_eq!(d, "BearerKey(<key>)");
        assert_eq!(format!("{:?}", BearerKey::default()), "BearerKey(none)");
    }
}
