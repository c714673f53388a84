//! The service's one error type: every way a use case can refuse, with a low-cardinality
//! [`Error::kind`] that the gRPC face maps to a status code in one place.

use crate::domain::books::BudgetExhausted;
use crate::domain::policy::PolicyError;
use crate::domain::routing::RouteError;
use crate::engine::feedback::FeedbackError;
use crate::store::StoreError;

/// Why a use case refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Route request is invalid.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// A hard budget with `on_exhausted = "reject"` is used up.
    #[error(transparent)]
    Budget(#[from] BudgetExhausted),
    /// A Feedback or RecordReuse call was refused.
    #[error(transparent)]
    Feedback(#[from] FeedbackError),
    /// The text is not a valid policy (or changes what cannot change while running).
    #[error("invalid policy: {0}")]
    Policy(#[from] PolicyError),
    /// The policy version is already live.
    #[error("policy version {0} is already live")]
    AlreadyLive(String),
    /// No such policy version in the history.
    #[error("policy version {} is not in the version history", crate::domain::labels::shown(.0))]
    UnknownVersion(String),
    /// No such scope in the live policy.
    #[error("scope {} is not in the live policy", crate::domain::labels::shown(.0))]
    UnknownScope(String),
    /// The use case needs the store and the store failed.
    #[error("{what}: {source}")]
    Store {
        /// What could not be done, e.g. "report needs the store".
        what: &'static str,
        /// The store's error.
        source: StoreError,
    },
}

/// The kinds of refusal: what a caller can do about it (one gRPC code each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Fix the request (the field is named).
    InvalidArgument,
    /// The named thing does not exist.
    NotFound,
    /// Already done: do not retry.
    AlreadyExists,
    /// Valid, but not in the state it needs (expired, outside a window).
    FailedPrecondition,
    /// The caller may not do this.
    PermissionDenied,
    /// A budget or a capacity limit: retry later.
    ResourceExhausted,
    /// The store is unreachable: retry.
    Unavailable,
}

/// A precise pointer at what to fix, for the status details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation<'a> {
    /// A request field (or policy key path) and what is wrong with it.
    Field {
        /// Field name or key path.
        field: &'a str,
        /// What is wrong.
        reason: String,
    },
    /// An exhausted quota: the budget id.
    Quota {
        /// The budget.
        subject: &'a str,
    },
}

impl Error {
    /// The kind of refusal.
    pub fn kind(&self) -> ErrorKind {
        use ErrorKind as K;
        match self {
            Error::Route(_) | Error::Policy(_) => K::InvalidArgument,
            Error::Budget(_) => K::ResourceExhausted,
            Error::Feedback(f) => match f {
                FeedbackError::InvalidArgument { .. } | FeedbackError::Token(_) => {
                    K::InvalidArgument
                }
                FeedbackError::Expired { .. }
                | FeedbackError::BeforeStoreReset
                | FeedbackError::OutsideReuseWindow { .. }
                | FeedbackError::Shadow(_) => K::FailedPrecondition,
                FeedbackError::AlreadyRecorded | FeedbackError::ReuseRecorded(_) => {
                    K::AlreadyExists
                }
                FeedbackError::PermissionDenied { .. } | FeedbackError::ScopeMismatch { .. } => {
                    K::PermissionDenied
                }
                FeedbackError::Unavailable(_) => K::Unavailable,
                FeedbackError::Full(_) => K::ResourceExhausted,
            },
            Error::AlreadyLive(_) => K::AlreadyExists,
            Error::UnknownVersion(_) | Error::UnknownScope(_) => K::NotFound,
            Error::Store { .. } => K::Unavailable,
        }
    }

    /// The field or quota at fault, where there is one.
    pub fn violation(&self) -> Option<Violation<'_>> {
        match self {
            Error::Route(e) => Some(Violation::Field {
                field: e.field(),
                reason: e.to_string(),
            }),
            Error::Feedback(FeedbackError::InvalidArgument { field, reason }) => {
                Some(Violation::Field {
                    field,
                    reason: reason.clone(),
                })
            }
            Error::Feedback(FeedbackError::Token(t)) => Some(Violation::Field {
                field: "decision_id",
                reason: t.to_string(),
            }),
            Error::Policy(p) => Some(Violation::Field {
                field: &p.path,
                reason: p.reason.clone(),
            }),
            Error::Budget(b) => Some(Violation::Quota { subject: &b.budget }),
            _ => None,
        }
    }

    /// The store failed while doing `what`.
    pub fn store(what: &'static str) -> impl FnOnce(StoreError) -> Error {
        move |source| Error::Store { what, source }
    }
}
