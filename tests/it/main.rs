//! The integration tests, in one binary so the suite links once: each module is one area
//! (the gRPC surface, the books, the store and its outages, learning, the CLI, the README, the
//! layer rules).

mod common;

mod auth;
mod books;
mod cli;
mod cold_start;
mod docs;
mod feedback_rpc;
mod layers;
mod learning;
mod monitoring;
mod parity;
mod policy_admin;
mod properties;
mod protection;
pub mod readme;
mod replay;
mod route_rpc;
mod store_redis;
