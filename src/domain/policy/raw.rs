//! The policy file as written: serde structs that reject unknown keys, so a misspelt key is an
//! error naming its path, not a line silently ignored; a closed set of values (bar mode,
//! budget period and limit behaviours) is its typed enum, so a misspelt value is refused the
//! same way, naming the values it could have been.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::budget::RawBudget;
use super::{BarMode, ExploreBy};

/// A policy file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicyFile {
    pub(super) tiers: Vec<RawTier>,
    #[serde(default)]
    pub(super) default: RawScope,
    #[serde(default)]
    pub(super) policies: Vec<RawScope>,
    /// Store settings in a form other than a `[store]` table (which [`super::split_store`] cuts
    /// out first): refused, naming the deployment config.
    #[serde(default)]
    pub(super) store: Option<toml::Value>,
    #[serde(default)]
    pub(super) budgets: Vec<RawBudget>,
}

/// One `[[tiers]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTier {
    pub(super) name: String,
    pub(super) model: String,
    pub(super) input_usd_per_mtok: f64,
    pub(super) output_usd_per_mtok: f64,
    pub(super) cached_input_usd_per_mtok: Option<f64>,
    pub(super) reasoning_usd_per_mtok: Option<f64>,
}

/// `[default]` or one `[[policies]]` entry as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScope {
    pub(super) team: Option<String>,
    pub(super) workflow: Option<String>,
    pub(super) quality_bar: Option<f64>,
    pub(super) allowed_tiers: Option<Vec<String>>,
    pub(super) thresholds: Option<BTreeMap<String, f64>>,
    pub(super) exploration_rate: Option<f64>,
    pub(super) explore_by: Option<ExploreBy>,
    pub(super) value_per_success_usd: Option<f64>,
    pub(super) human_minutes_per_success: Option<f64>,
    pub(super) loaded_cost_per_hour_usd: Option<f64>,
    pub(super) bar_mode: Option<BarMode>,
    pub(super) quality_bar_relative: Option<f64>,
    pub(super) max_output_tokens: Option<u64>,
    pub(super) reuse_retention_days: Option<u32>,
    pub(super) reuse_events_per_decision: Option<u64>,
    pub(super) reuse_ids_per_team: Option<u64>,
    pub(super) shadow_rate: Option<f64>,
    pub(super) shadow_tier: Option<String>,
    pub(super) report_interval_width: Option<f64>,
}
