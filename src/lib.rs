//! tokenwise — a cost-aware model router.
//!
//! # Layout
//! The layers, inside out. The domain imports no other layer and the store only the domain
//! (`tests/it/layers.rs` fails otherwise); above them the order is looser: the engine also uses
//! [`report`]'s builder for its report use case, and [`metrics`], [`offline`] and [`cli`] call
//! the engine (the CLI runs [`offline`]'s commands too).
//! - [`domain`] — pure: [`domain::features`] (task text → sparse features),
//!   [`domain::classifier`] (the item-response complexity model), [`domain::policy`] (tiers,
//!   scopes, budgets), [`domain::learning`] (evidence → per-scope, per-team, per-workflow
//!   plans), [`domain::clusters`] (workflows discovered in unlabelled traffic: sketches, linfa
//!   k-means), [`domain::routing`] (the decision), [`domain::decision`] (signed decision ids),
//!   [`domain::books`] (spend ledger and budgets), and [`domain::state`], the port to shared
//!   state (the [`domain::state::StateStore`] trait and the events, policy changes, counters
//!   and errors it speaks). No I/O, no clock, no randomness of its own; it imports no other
//!   layer, and the port is its only outward seam.
//! - [`store`] — the port's adapters: memory, Redis (single, cluster), the outage buffer; their
//!   config and the port's contract suite. It imports only the domain, and re-exports the
//!   port's names.
//! - [`engine`] — the use cases, one method each (route, feedback, reuse, report, thresholds,
//!   policy administration, refresh, shutdown) over the domain and a store; the feedback path
//!   in three pieces ([`engine::feedback`]: decision ids, the exactly-once recorder, the fold
//!   that publishes the plans); the one service error ([`engine::Error`]).
//! - Faces, each one call into the engine plus conversion: [`grpc`] (tonic services, auth,
//!   transport), [`metrics`] (Prometheus: the engine's [`engine::Telemetry`]), [`report`] (build +
//!   table/CSV/JSON/HTML), [`cli`].
//! - [`offline`] — dataset, training and the in-process replay (which runs the same engine).
//!
//! Data flows one way: a face → [`engine::Engine`] → the domain (and the store behind its
//! trait); the domain never sees proto types, and nothing below a face imports one.

pub mod cli;
pub mod domain;
pub mod engine;
pub mod grpc;
pub mod metrics;
pub mod offline;
pub mod report;
pub mod store;
