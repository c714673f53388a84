//! Server side of authentication: [`AuthInterceptor`] checks every call's
//! `authorization: Bearer <key>` against the [`KeyRing`] ([`KeyRing::authenticate`]) and puts
//! the [`Caller`] in the request extensions; [`caller`] reads it back in a handler. Without a
//! key ring auth is off and requests pass through untouched.
//!
//! [`require_admin`] and [`effective_team`] are the authorization rules handlers apply: Admin
//! RPCs need the admin role; a service acts only for its own team, an admin for any.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::Semaphore;
use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::{AUTHORIZATION, Caller, KeyRing, Role};

/// gRPC service whose RPCs [`require_admin`] guards.
pub const ADMIN_SERVICE: &str = "tokenwise.v1.Admin";

// ---- authentication ----

impl KeyRing {
    /// Identifies the caller from `authorization: Bearer <key>` metadata.
    ///
    /// A missing, repeated or malformed header, or a key that is not in the ring, is
    /// `UNAUTHENTICATED`; the message says what is wrong but never quotes what was sent.
    /// The key is looked up by its SHA-256, so lookup time does not leak key prefixes.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let mut values = metadata.get_all(AUTHORIZATION).iter();
        let Some(value) = values.next() else {
            return Err(Status::unauthenticated(
                "missing `authorization` metadata: send `authorization: Bearer <key>`",
            ));
        };
        if values.next().is_some() {
            return Err(Status::unauthenticated(
                "more than one `authorization` metadata entry: send exactly one \
                 `authorization: Bearer <key>`",
            ));
        }
        let malformed = || {
            Status::unauthenticated("malformed `authorization` metadata: expected `Bearer <key>`")
        };
        let text = value.to_str().map_err(|_| malformed())?;
        let (scheme, key) = text.trim().split_once(' ').ok_or_else(malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(malformed());
        }
        let key = key.trim();
        if key.is_empty() {
            return Err(malformed());
        }
        self.lookup(key)
            .cloned()
            .ok_or_else(|| Status::unauthenticated("unknown API key"))
    }
}

// ---- interceptor ----

/// Tonic interceptor that authenticates every call.
///
/// With a key ring, a call without a valid key is refused with `UNAUTHENTICATED` and an
/// accepted call carries its [`Caller`] in the request extensions (read it with [`caller`]).
/// Without one (auth off) requests pass through unchanged and handlers see no caller.
///
/// With [`AuthInterceptor::per_team`], an authenticated call also takes one of its team's
/// concurrency slots, held (in the request extensions) while its body arrives and its handler
/// runs: one team's slow calls cannot take the whole server's budget from the others.
#[derive(Clone, Debug, Default)]
pub struct AuthInterceptor {
    ring: Option<Arc<KeyRing>>,
    /// Each team's concurrent-call slots, and how many each has.
    slots: Option<(Arc<TeamSlots>, usize)>,
    /// Calls shed for want of a team slot (`tokenwise_shed_calls_total{budget="team"}`).
    shed: Counter,
}

/// Team → the semaphore of its concurrent calls.
type TeamSlots = HashMap<String, Arc<Semaphore>>;

/// A team's concurrency slot, held by a call until its request is dropped.
#[derive(Clone)]
pub struct TeamSlot(#[allow(dead_code)] Arc<tokio::sync::OwnedSemaphorePermit>);

impl AuthInterceptor {
    /// An interceptor enforcing `ring`, or letting everything through when `None`.
    pub fn new(ring: Option<Arc<KeyRing>>) -> Self {
        Self {
            ring,
            slots: None,
            shed: Counter::default(),
        }
    }

    /// The same, with at most `limit` concurrent calls per team (the teams of the key ring);
    /// beyond it a team's call is shed with RESOURCE_EXHAUSTED. Without a key ring the team is
    /// only known from the request body, and nothing is limited per team.
    pub fn per_team(mut self, limit: usize) -> Self {
        if let Some(ring) = &self.ring {
            let teams = ring
                .callers()
                .into_iter()
                .map(|c| {
                    let permits = limit.clamp(1, Semaphore::MAX_PERMITS);
                    (c.team.clone(), Arc::new(Semaphore::new(permits)))
                })
                .collect();
            self.slots = Some((Arc::new(teams), limit));
        }
        self
    }

    /// The same, counting the calls [`AuthInterceptor::per_team`] sheds in `shed`.
    pub fn counting_sheds(self, shed: Counter) -> Self {
        Self { shed, ..self }
    }

    /// Whether calls are authenticated.
    #[cfg(test)]
    pub(crate) fn enabled(&self) -> bool {
        self.ring.is_some()
    }
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(ring) = &self.ring {
            let caller = ring.authenticate(request.metadata())?;
            if let Some((slots, limit)) = &self.slots
                && let Some(team) = slots.get(&caller.team)
            {
                let permit = team.clone().try_acquire_owned().map_err(|_| {
                    self.shed.inc();
                    Status::resource_exhausted(format!(
                        "team {:?} is at its limit of {limit} concurrent calls \
                         (--max-concurrent-requests-per-team): retry with backoff",
                        caller.team
                    ))
                })?;
                request.extensions_mut().insert(TeamSlot(Arc::new(permit)));
            }
            request.extensions_mut().insert(caller);
        }
        Ok(request)
    }
}

/// The caller [`AuthInterceptor`] authenticated; `None` when auth is off.
pub fn caller<T>(req: &Request<T>) -> Option<&Caller> {
    req.extensions().get::<Caller>()
}

// ---- authorization ----

/// Guards an Admin RPC (`rpc` is the method name, e.g. `GetReport`): auth off (`None`) or an
/// admin passes; a service caller gets `PERMISSION_DENIED`.
pub fn require_admin(caller: Option<&Caller>, rpc: &str) -> Result<(), Status> {
    match caller {
        None => Ok(()),
        Some(c) if c.role == Role::Admin => Ok(()),
        Some(c) => Err(Status::permission_denied(format!(
            "admin role required for {ADMIN_SERVICE}/{rpc}; key {:?} (team {:?}) has role {}",
            c.name, c.team, c.role
        ))),
    }
}

/// The team a call acts for, given the team the request names in `field`.
///
/// - auth off: `requested` as sent;
/// - a service caller: its own team; naming another team is `PERMISSION_DENIED` (an empty
///   `requested` means "mine");
/// - an admin: `requested` as sent (admins may act for any team, or for all with an empty one).
pub fn effective_team<'a>(
    caller: Option<&'a Caller>,
    requested: &'a str,
    field: &str,
) -> Result<&'a str, Status> {
    match caller {
        None => Ok(requested),
        Some(c) if c.role == Role::Admin => Ok(requested),
        Some(c) if requested.is_empty() || requested == c.team => Ok(&c.team),
        Some(c) => Err(Status::permission_denied(format!(
            "{field}: key {:?} belongs to team {:?} and cannot act for team {}",
            c.name,
            c.team,
            crate::domain::labels::shown(requested)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::auth::fixtures::{ADMIN_KEY, SERVICE_KEY, admin, md, ring, service};
    use tonic::Code;
    use tonic::metadata::MetadataValue;

    // ---- authenticate ----

    #[test]
    fn missing_header_is_unauthenticated() {
        let s = ring().authenticate(&MetadataMap::new()).unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated);
        assert!(
            s.message().contains("missing `authorization`"),
            "{}",
            s.message()
        );
    }

    #[test]
    fn malformed_headers_are_unauthenticated_and_not_echoed() {
        let r = ring();
        for bad in [
            SERVICE_KEY.to_string(), // no scheme: the key itself must not be echoed
            format!("Basic {SERVICE_KEY}"),
            format!("Bearer{SERVICE_KEY}"),
            "Bearer ".to_string(),
            "Bearer".to_string(),
            String::new(),
        ] {
            let s = r.authenticate(&md(&bad)).unwrap_err();
            assert_eq!(s.code(), Code::Unauthenticated, "{bad:?}");
            assert!(
                s.message().contains("malformed"),
                "{bad:?}: {}",
                s.message()
            );
            assert!(!s.message().contains("tw_"), "{bad:?}: {}", s.message());
        }
    }

    #[test]
    fn repeated_header_is_unauthenticated() {
        let mut m = md(&format!("Bearer {SERVICE_KEY}"));
        m.append(
            AUTHORIZATION,
            MetadataValue::try_from(format!("Bearer {ADMIN_KEY}").as_str()).unwrap(),
        );
        let s = ring().authenticate(&m).unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated);
        assert!(s.message().contains("more than one"), "{}", s.message());
    }

    #[test]
    fn unknown_key_is_unauthenticated_and_not_echoed() {
        let s = ring()
            .authenticate(&md("Bearer tw_not-a-real-key"))
            .unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated);
        assert_eq!(s.message(), "unknown API key");
        assert!(!s.message().contains("not-a-real-key"));
    }

    #[test]
    fn service_key_authenticates() {
        let c = ring()
            .authenticate(&md(&format!("Bearer {SERVICE_KEY}")))
            .unwrap();
        assert_eq!(c, service());
    }

    #[test]
    fn admin_key_authenticates_and_scheme_is_case_insensitive() {
        let r = ring();
        assert_eq!(
            r.authenticate(&md(&format!("Bearer {ADMIN_KEY}"))).unwrap(),
            admin()
        );
        assert_eq!(
            r.authenticate(&md(&format!("bearer {ADMIN_KEY}"))).unwrap(),
            admin()
        );
        assert_eq!(
            r.authenticate(&md(&format!("BEARER   {ADMIN_KEY}")))
                .unwrap(),
            admin()
        );
    }

    #[test]
    fn key_must_match_exactly() {
        let r = ring();
        let near = format!("Bearer {SERVICE_KEY}x");
        assert_eq!(
            r.authenticate(&md(&near)).unwrap_err().code(),
            Code::Unauthenticated
        );
    }

    // ---- interceptor ----

    fn request(auth: Option<&str>) -> Request<()> {
        let mut req = Request::new(());
        if let Some(a) = auth {
            req.metadata_mut()
                .insert(AUTHORIZATION, MetadataValue::try_from(a).unwrap());
        }
        req
    }

    #[test]
    fn interceptor_inserts_caller() {
        let mut i = AuthInterceptor::new(Some(Arc::new(ring())));
        assert!(i.enabled());
        let req = i
            .call(request(Some(&format!("Bearer {SERVICE_KEY}"))))
            .unwrap();
        assert_eq!(caller(&req), Some(&service()));
    }

    #[test]
    fn one_team_at_its_concurrency_limit_leaves_the_others_their_slots() {
        let shed = Counter::default();
        let mut i = AuthInterceptor::new(Some(Arc::new(ring())))
            .per_team(2)
            .counting_sheds(shed.clone());
        let search = format!("Bearer {SERVICE_KEY}");
        // Two calls of team search in flight (their requests alive): the third is shed.
        let held: Vec<_> = (0..2)
            .map(|_| i.call(request(Some(&search))).unwrap())
            .collect();
        let s = i.call(request(Some(&search))).unwrap_err();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("\"search\""), "{}", s.message());
        assert_eq!(shed.get(), 1, "the shed call is counted");
        // Another team (the admin key's) still gets in.
        i.call(request(Some(&format!("Bearer {ADMIN_KEY}"))))
            .unwrap();
        // A finished call gives its slot back.
        drop(held);
        i.call(request(Some(&search))).unwrap();
        // Without a key ring there are no teams to count: nothing is limited.
        let mut off = AuthInterceptor::new(None).per_team(1);
        let _a = off.call(request(None)).unwrap();
        off.call(request(None)).unwrap();
    }

    #[test]
    fn interceptor_refuses_without_key() {
        let mut i = AuthInterceptor::new(Some(Arc::new(ring())));
        let s = i.call(request(None)).unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated);
        let s = i.call(request(Some("Bearer tw_wrong"))).unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated);
    }

    #[test]
    fn interceptor_off_passes_through() {
        let mut i = AuthInterceptor::new(None);
        assert!(!i.enabled());
        let req = i.call(request(None)).unwrap();
        assert_eq!(caller(&req), None);
        // Even a bogus header is ignored when auth is off.
        let req = i.call(request(Some("Bearer whatever"))).unwrap();
        assert_eq!(caller(&req), None);
        assert!(req.metadata().get(AUTHORIZATION).is_some());
    }

    // ---- authorization ----

    #[test]
    fn require_admin_outcomes() {
        assert!(require_admin(None, "GetReport").is_ok());
        assert!(require_admin(Some(&admin()), "GetReport").is_ok());
        let s = require_admin(Some(&service()), "GetThresholds").unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied);
        assert!(
            s.message()
                .starts_with("admin role required for tokenwise.v1.Admin/GetThresholds"),
            "{}",
            s.message()
        );
        assert!(s.message().contains("search-prod"), "{}", s.message());
    }

    #[test]
    fn effective_team_auth_off_uses_request() {
        assert_eq!(effective_team(None, "search", "team").unwrap(), "search");
        assert_eq!(effective_team(None, "", "team").unwrap(), "");
    }

    #[test]
    fn effective_team_service_is_own_team() {
        let c = service();
        assert_eq!(effective_team(Some(&c), "", "team").unwrap(), "search");
        assert_eq!(
            effective_team(Some(&c), "search", "team").unwrap(),
            "search"
        );
    }

    #[test]
    fn effective_team_service_mismatch_is_denied() {
        let c = service();
        let s = effective_team(Some(&c), "ads", "team").unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied);
        let m = s.message();
        assert!(m.starts_with("team: "), "{m}");
        assert!(m.contains("\"search\"") && m.contains("\"ads\""), "{m}");
    }

    #[test]
    fn effective_team_admin_overrides() {
        let c = admin();
        assert_eq!(effective_team(Some(&c), "ads", "team").unwrap(), "ads");
        assert_eq!(effective_team(Some(&c), "", "team").unwrap(), "");
    }
}
