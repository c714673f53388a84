//! What changed between two policies, one line per change, for the audit trail.

use super::{Policy, ScopePolicy, Tier};

/// What changed from `old` to `new`, one line per change, for the audit trail.
pub fn diff(old: &Policy, new: &Policy) -> Vec<String> {
    let mut out = tier_changes(old, new);
    out.extend(scope_changes(old, new));
    out.extend(budget_changes(old, new));
    if out.is_empty() && old.version != new.version {
        out.push("no effective change (comments or formatting)".into());
    }
    out
}

/// Input/output per 1M tokens, then the cached input and reasoning prices where they are not
/// simply the input and output ones.
fn price(t: &Tier) -> String {
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
}

fn tier_changes(old: &Policy, new: &Policy) -> Vec<String> {
    let mut out = Vec::new();
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
    out
}

/// A scope field as the audit trail shows it: its name, and its value in a policy.
type Field = (&'static str, fn(&Policy, &ScopePolicy) -> String);

/// Every scope field the audit trail reports, in the order it reports them.
const SCOPE_FIELDS: [Field; 14] = [
    ("quality_bar", |_, s| s.quality_bar.to_string()),
    ("allowed_tiers", |p, s| {
        let names: Vec<&String> = s.allowed.iter().map(|&i| &p.tiers[i].name).collect();
        format!("{names:?}")
    }),
    ("exploration_rate", |_, s| s.exploration_rate.to_string()),
    ("explore_by", |_, s| s.explore_by.as_str().to_string()),
    ("shadow_rate", |p, s| {
        format!("{} on {}", s.shadow_rate, p.tiers[s.shadow_tier].name)
    }),
    ("report_interval_width", |_, s| {
        s.report_interval_width.to_string()
    }),
    ("pinned thresholds", |_, s| {
        format!("{:?}", s.pinned_thresholds)
    }),
    ("bar_mode", |_, s| s.bar_mode.as_str().to_string()),
    ("quality_bar_relative", |_, s| {
        format!("{:?}", s.quality_bar_relative)
    }),
    ("reuse_retention_days", |_, s| {
        s.reuse_retention_days.to_string()
    }),
    ("reuse limits", |_, s| {
        format!(
            "{} events per decision, {} ids per team",
            s.reuse_events_per_decision, s.reuse_ids_per_team
        )
    }),
    ("max_output_tokens", |_, s| s.max_output_tokens.to_string()),
    ("value_per_success_usd", |_, s| {
        format!("{:?}", s.value_per_success_usd)
    }),
    ("human time", |_, s| {
        format!(
            "{:?} min at {:?} USD/h",
            s.human_minutes_per_success, s.loaded_cost_per_hour_usd
        )
    }),
];

fn scope_changes(old: &Policy, new: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    let old_scopes = old.all_scopes();
    let new_scopes = new.all_scopes();
    for s in &new_scopes {
        let Some(o) = old_scopes.iter().find(|o| o.key == s.key) else {
            out.push(format!("scope {} added (bar {})", s.key, s.quality_bar));
            continue;
        };
        for (name, show) in SCOPE_FIELDS {
            let (before, after) = (show(old, o), show(new, s));
            if before != after {
                out.push(format!("scope {}: {name} {before} → {after}", s.key));
            }
        }
    }
    for o in &old_scopes {
        if !new_scopes.iter().any(|s| s.key == o.key) {
            out.push(format!("scope {} removed", o.key));
        }
    }
    out
}

fn budget_changes(old: &Policy, new: &Policy) -> Vec<String> {
    let mut out = Vec::new();
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
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::policy::tests::THREE;

    #[test]
    fn unchanged_policies_say_nothing_and_a_changed_default_names_every_field() {
        let old = Policy::parse(THREE).unwrap();
        assert!(diff(&old, &old).is_empty());
        let text = THREE.replace(
            "[default]\nquality_bar = 0.8\n",
            "[default]\nquality_bar = 0.7\nreuse_events_per_decision = 7\n\
             max_output_tokens = 999\nhuman_minutes_per_success = 3.0\n",
        );
        let new = Policy::parse(&text).unwrap();
        let lines = diff(&old, &new);
        let line = |prefix: &str| {
            lines
                .iter()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix:?} in {lines:?}"))
                .clone()
        };
        assert_eq!(
            line("scope default: quality_bar"),
            "scope default: quality_bar 0.8 → 0.7"
        );
        assert!(line("scope default: reuse limits").contains("→ 7 events per decision"));
        assert!(line("scope default: max_output_tokens").ends_with("→ 999"));
        assert!(line("scope default: human time").contains("Some(3.0) min"));
    }
}
