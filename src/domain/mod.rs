//! The domain: features, the complexity model, policy, learning, routing, decision ids and the
//! books, and the port to shared state ([`state`]) that the store adapters implement. Pure logic
//! (time and randomness come in as arguments); no proto, no I/O; nothing from the layers above.

pub mod books;
pub mod calendar;
pub mod classifier;
pub mod clusters;
pub mod decision;
pub mod features;
pub mod labels;
pub mod learning;
pub mod lengths;
pub mod policy;
pub mod routing;
pub mod state;
