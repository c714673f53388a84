//! tokenwise — a cost-aware model router.
//!
//! # Layout
//! - [`features`] turns task text into a sparse feature vector (pure CPU).
//! - [`classifier`] scores its difficulty with the bundled item-response model: a complexity in
//!   [0, 1].
//! - [`policy`] holds the tier catalogue and the scoped policies (quality bar, allowed tiers).
//! - [`learning`] turns calibration plus outcome evidence (per scope, team, family and workflow) into
//!   per-scope plans (the planner).
//! - [`routing`] decides: policy scope → thresholds → cheapest tier that admits the task.
//! - [`server`] is the gRPC face (tonic): handlers convert proto ↔ domain and call [`routing`].
//! - [`dataset`] and [`training`] are the offline side: `train` and `eval`.
//!
//! Data flows one way: `server` → `routing` → (`classifier`, `policy`, `learning`); the domain
//! never sees proto types.

pub mod auth;
pub mod books;
pub mod classifier;
pub mod cli;
pub mod codec;
pub mod dataset;
pub mod decision;
pub mod engine;
pub mod features;
pub mod feedback;
pub mod learning;
pub mod metrics;
pub mod policy;
pub mod replay;
pub mod report;
pub mod routing;
pub mod server;
pub mod store;
pub mod training;
