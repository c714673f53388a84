//! What changed between two policies, one line per change, for the audit trail.

use super::{Policy, ScopePolicy, Tier};

/// What changed from `old` to `new`, one line per change, for the audit trail.
pub fn diff(old: &Policy, new: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    // Input/output per 1M tokens, then the cached input and reasoning prices where they are
    // not simply the input and output ones.
    let price = |t: &Tier| {
        let usd = |m: u64| m as f64 / 1e6;
        let mut s = format!(
            "${}/${} per 1M",
            usd(t.input_micros_per_mtok),
            usd(t.output_micros_per_mtok)
        );
        if t.cached_input_micros_per_mtok != t.input_micros_per_mtok {
            s += &format!(", cached input ${}", usd(t.cached_input_micros_per_mtok));
        }
        if t.reasoning_micros_per_mtok != t.output_micros_per_mtok {
            s += &format!(", reasoning ${}", usd(t.reasoning_micros_per_mtok));
        }
        s
    };
    for t in &new.tiers {
        match old.tiers.iter().find(|o| o.name == t.name) {
            None => out.push(format!("tier {} added ({}, {})", t.name, t.model, price(t))),
            Some(o) if o != t => out.push(format!(
                "tier {}: {} {} → {} {}",
                t.name,
                o.model,
                price(o),
                t.model,
                price(t)
            )),
            _ => {}
        }
    }
    for o in &old.tiers {
        if new.tier_index(&o.name).is_none() {
            out.push(format!("tier {} removed", o.name));
        }
    }
    let names = |p: &Policy, s: &ScopePolicy| -> Vec<String> {
        s.allowed.iter().map(|&i| p.tiers[i].name.clone()).collect()
    };
    let old_scopes = old.all_scopes();
    let new_scopes = new.all_scopes();
    for s in &new_scopes {
        match old_scopes.iter().find(|o| o.key == s.key) {
            None => out.push(format!("scope {} added (bar {})", s.key, s.quality_bar)),
            Some(o) => {
                if o.quality_bar != s.quality_bar {
                    out.push(format!(
                        "scope {}: quality_bar {} → {}",
                        s.key, o.quality_bar, s.quality_bar
                    ));
                }
                if names(old, o) != names(new, s) {
                    out.push(format!(
                        "scope {}: allowed_tiers {:?} → {:?}",
                        s.key,
                        names(old, o),
                        names(new, s)
                    ));
                }
                if o.exploration_rate != s.exploration_rate {
                    out.push(format!(
                        "scope {}: exploration_rate {} → {}",
                        s.key, o.exploration_rate, s.exploration_rate
                    ));
                }
                if (o.shadow_rate, &old.tiers[o.shadow_tier].name)
                    != (s.shadow_rate, &new.tiers[s.shadow_tier].name)
                {
                    out.push(format!(
                        "scope {}: shadow_rate {} on {} → {} on {}",
                        s.key,
                        o.shadow_rate,
                        old.tiers[o.shadow_tier].name,
                        s.shadow_rate,
                        new.tiers[s.shadow_tier].name
                    ));
                }
                if o.report_interval_width != s.report_interval_width {
                    out.push(format!(
                        "scope {}: report_interval_width {} → {}",
                        s.key, o.report_interval_width, s.report_interval_width
                    ));
                }
                if o.pinned_thresholds != s.pinned_thresholds {
                    out.push(format!("scope {}: pinned thresholds changed", s.key));
                }
                if o.bar_mode != s.bar_mode {
                    out.push(format!(
                        "scope {}: bar_mode {} → {}",
                        s.key,
                        o.bar_mode.as_str(),
                        s.bar_mode.as_str()
                    ));
                }
                if o.quality_bar_relative != s.quality_bar_relative {
                    out.push(format!(
                        "scope {}: quality_bar_relative {:?} → {:?}",
                        s.key, o.quality_bar_relative, s.quality_bar_relative
                    ));
                }
                if o.reuse_retention_days != s.reuse_retention_days {
                    out.push(format!(
                        "scope {}: reuse_retention_days {} → {}",
                        s.key, o.reuse_retention_days, s.reuse_retention_days
                    ));
                }
                if (o.reuse_events_per_decision, o.reuse_ids_per_team)
                    != (s.reuse_events_per_decision, s.reuse_ids_per_team)
                {
                    out.push(format!(
                        "scope {}: reuse limits {} events per decision, {} ids per team → {}, {}",
                        s.key,
                        o.reuse_events_per_decision,
                        o.reuse_ids_per_team,
                        s.reuse_events_per_decision,
                        s.reuse_ids_per_team
                    ));
                }
                if o.max_output_tokens != s.max_output_tokens {
                    out.push(format!(
                        "scope {}: max_output_tokens {} → {}",
                        s.key, o.max_output_tokens, s.max_output_tokens
                    ));
                }
                if o.value_per_success_usd != s.value_per_success_usd {
                    out.push(format!(
                        "scope {}: value_per_success_usd {:?} → {:?}",
                        s.key, o.value_per_success_usd, s.value_per_success_usd
                    ));
                }
                if o.human_minutes_per_success != s.human_minutes_per_success
                    || o.loaded_cost_per_hour_usd != s.loaded_cost_per_hour_usd
                {
                    out.push(format!(
                        "scope {}: human time {:?} min at {:?} USD/h → {:?} min at {:?} USD/h",
                        s.key,
                        o.human_minutes_per_success,
                        o.loaded_cost_per_hour_usd,
                        s.human_minutes_per_success,
                        s.loaded_cost_per_hour_usd
                    ));
                }
            }
        }
    }
    for o in &old_scopes {
        if !new_scopes.iter().any(|s| s.key == o.key) {
            out.push(format!("scope {} removed", o.key));
        }
    }
    let usd = |m: Option<i64>| m.map_or("none".to_string(), |m| format!("${}", m as f64 / 1e6));
    for b in &new.budgets {
        match old.budgets.iter().find(|o| o.id == b.id) {
            None => out.push(format!(
                "budget {} added (soft {}, hard {})",
                b.id,
                usd(b.soft_limit_micros),
                usd(b.hard_limit_micros)
            )),
            Some(o) if o != b => out.push(format!(
                "budget {}: soft {} → {}, hard {} → {}",
                b.id,
                usd(o.soft_limit_micros),
                usd(b.soft_limit_micros),
                usd(o.hard_limit_micros),
                usd(b.hard_limit_micros)
            )),
            _ => {}
        }
    }
    for o in &old.budgets {
        if !new.budgets.iter().any(|b| b.id == o.id) {
            out.push(format!("budget {} removed", o.id));
        }
    }
    if out.is_empty() && old.version != new.version {
        out.push("no effective change (comments or formatting)".into());
    }
    out
}
