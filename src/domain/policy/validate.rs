//! Raw file → typed policy: tiers, scopes (team+workflow, workflow, team, default; a scope's
//! unset fields come from `[default]`), pinned thresholds, and toml errors located by line.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::budget::validate_budgets;
use super::raw::{RawPolicyFile, RawScope};
use super::{
    DEFAULT_EXPLORATION_RATE, DEFAULT_MAX_OUTPUT_TOKENS, DEFAULT_REPORT_INTERVAL_WIDTH,
    DEFAULT_REUSE_EVENTS_PER_DECISION, DEFAULT_REUSE_IDS_PER_TEAM, DEFAULT_REUSE_RETENTION_DAYS,
    MAX_SHADOW_RATE, Policy, PolicyError, ScopePolicy, Tier, scope_key,
};

/// A toml error as one short line: `line L, column C: what is wrong`. toml's own rendering
/// quotes the offending source line under a caret, which flattened into one line read badly
/// and echoed whatever the line held (a 200 KB value included).
///
/// The error may be in a text cut out of `text` (the policy without its `[store]` table):
/// `to_text` maps a byte offset of the cut text to `text`'s, so the line and column are the
/// file's.
pub(super) fn toml_error_in(
    text: &str,
    e: &toml::de::Error,
    to_text: impl Fn(usize) -> usize,
) -> String {
    let message: Vec<&str> = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let message = short_unknown_field(&message.join(" "));
    match e.span() {
        Some(span) => locate(text, to_text(span.start), message),
        None => message,
    }
}

/// ``unknown field `<caller's text>`, expected one of …``: the caller's text cut to a few
/// dozen characters, so the list of the keys it could have meant is never cut instead.
fn short_unknown_field(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    match rest.split_once("`, ") {
        Some((name, expected)) => format!(
            "unknown field {}, {expected}",
            crate::domain::labels::shown(name)
        ),
        None => message.to_string(),
    }
}

/// `message` prefixed with where `e` points in `text`: `line L, column C: message` (the policy
/// and the key file both report toml errors this way, without quoting the source line).
pub(crate) fn toml_at(text: &str, e: &toml::de::Error, message: String) -> String {
    match e.span() {
        Some(span) => locate(text, span.start, message),
        None => message,
    }
}

/// `message` prefixed with the line and column of byte `at` of `text`.
fn locate(text: &str, at: usize, message: String) -> String {
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}: {message}")
}

/// Largest `value_per_success_usd`. The books add values up in signed 64-bit micro-dollars (at
/// most $9.2 × 10¹² in all), so one outcome must be a tiny share of that; a million dollars per
/// completed output is far above any real one (an unbounded value saturated the conversion and
/// overflowed the store's counter).
const MAX_VALUE_PER_SUCCESS_USD: f64 = 1e6;
/// Why a name with a control character is refused.
const NO_CONTROL: &str =
    "must not contain control characters (newlines, tabs, escapes): names reach logs and terminals";
/// Longest reuse retention: ten years.
const MAX_REUSE_RETENTION_DAYS: u32 = 3650;
/// Largest `human_minutes_per_success`: about two working years per output.
const MAX_HUMAN_MINUTES: f64 = 200_000.0;
/// Largest `loaded_cost_per_hour_usd`.
const MAX_LOADED_COST_PER_HOUR_USD: f64 = 100_000.0;

/// A per-1M-token price in USD as micro-USD, rejecting negative, non-finite or absurd ones.
fn usd_to_micros(path: &str, usd: f64) -> Result<u64, PolicyError> {
    if !usd.is_finite() || usd < 0.0 {
        return Err(PolicyError::new(
            path,
            format!("must be a finite price ≥ 0, got {usd}"),
        ));
    }
    if usd > 1e6 {
        return Err(PolicyError::new(
            path,
            format!("{usd} USD per 1M tokens is not a plausible price"),
        ));
    }
    Ok((usd * 1e6).round() as u64)
}

/// The typed policy of a parsed file: tiers ordered by price, scopes resolved against
/// `[default]`, then `[store]` and `[[budgets]]`.
pub(super) fn validate(raw: RawPolicyFile, version: String) -> Result<Policy, PolicyError> {
    if raw.tiers.len() < 2 {
        return Err(PolicyError::new(
            "tiers",
            format!("needs at least 2 tiers, got {}", raw.tiers.len()),
        ));
    }
    let mut tiers = Vec::with_capacity(raw.tiers.len());
    for (i, t) in raw.tiers.iter().enumerate() {
        let path = |k: &str| format!("tiers[{i}].{k}");
        if t.name.trim().is_empty() {
            return Err(PolicyError::new(path("name"), "must not be empty"));
        }
        if t.model.trim().is_empty() {
            return Err(PolicyError::new(path("model"), "must not be empty"));
        }
        for (key, v) in [("name", &t.name), ("model", &t.model)] {
            if crate::domain::labels::has_control(v) {
                return Err(PolicyError::new(path(key), NO_CONTROL));
            }
        }
        if raw.tiers[..i].iter().any(|o| o.name == t.name) {
            return Err(PolicyError::new(
                path("name"),
                format!("duplicate tier name {:?}", t.name),
            ));
        }
        let input = usd_to_micros(&path("input_usd_per_mtok"), t.input_usd_per_mtok)?;
        let output = usd_to_micros(&path("output_usd_per_mtok"), t.output_usd_per_mtok)?;
        // Unset: cached input is billed as input, reasoning as output (as providers bill it).
        let or = |key: &str, usd: Option<f64>, default: u64| {
            usd.map_or(Ok(default), |usd| usd_to_micros(&path(key), usd))
        };
        tiers.push(Tier {
            name: t.name.clone(),
            model: t.model.clone(),
            input_micros_per_mtok: input,
            output_micros_per_mtok: output,
            cached_input_micros_per_mtok: or(
                "cached_input_usd_per_mtok",
                t.cached_input_usd_per_mtok,
                input,
            )?,
            reasoning_micros_per_mtok: or(
                "reasoning_usd_per_mtok",
                t.reasoning_usd_per_mtok,
                output,
            )?,
        });
    }
    // Order the ladder by price (input + output), stable for equal prices.
    tiers.sort_by_key(|t| t.input_micros_per_mtok + t.output_micros_per_mtok);

    let default = resolve_scope("default", &raw.default, None, &tiers)?;
    if raw.default.team.is_some() || raw.default.workflow.is_some() {
        return Err(PolicyError::new(
            "default",
            "the default scope takes no team or workflow",
        ));
    }
    let mut scopes = HashMap::new();
    for (i, s) in raw.policies.iter().enumerate() {
        let at = format!("policies[{i}]");
        let team = s.team.as_deref().unwrap_or("");
        let workflow = s.workflow.as_deref().unwrap_or("");
        // A label Route would refuse can never match a request.
        for (key, v) in [("team", team), ("workflow", workflow)] {
            if v.len() > crate::domain::labels::MAX_LABEL_BYTES {
                return Err(PolicyError::new(
                    format!("{at}.{key}"),
                    format!(
                        "is {} bytes; labels are at most {} bytes",
                        v.len(),
                        crate::domain::labels::MAX_LABEL_BYTES
                    ),
                ));
            }
            if crate::domain::labels::has_control(v) {
                return Err(PolicyError::new(format!("{at}.{key}"), NO_CONTROL));
            }
            if key == "team" && v.contains(super::TEAM_WORKFLOW_SEP) {
                return Err(PolicyError::new(
                    format!("{at}.team"),
                    "must not contain \"/workflow:\" (it separates a team from a workflow in scope keys)",
                ));
            }
        }
        if team.is_empty() && workflow.is_empty() {
            return Err(PolicyError::new(
                at,
                "a policy needs a team, a workflow or both (use [default] for the rest)",
            ));
        }
        let key = scope_key(team, workflow);
        let scope = resolve_scope(&at, s, Some(&raw.default), &tiers)?;
        let scope = ScopePolicy {
            key: key.clone(),
            ..scope
        };
        if scopes.insert(key.clone(), Arc::new(scope)).is_some() {
            return Err(PolicyError::new(at, format!("duplicate scope {key}")));
        }
    }
    if raw.store.is_some() {
        return Err(PolicyError::new(
            "store",
            "deployment settings are not policy: give the store in the deployment config \
             (serve --store-url/--deployment, or TOKENWISE_STORE_URL); a [store] table is still \
             read at startup, deprecated",
        ));
    }
    let budgets = validate_budgets(&raw.budgets)?;
    Ok(Policy {
        version,
        source: Arc::from(""),
        budgets,
        tiers,
        default: Arc::new(ScopePolicy {
            key: super::DEFAULT_SCOPE.into(),
            ..default
        }),
        scopes,
    })
}

/// One scope's policy: its own fields, else `base`'s (`[default]`), else the built-in defaults;
/// `at` is its key path in the file. The key is left empty for the caller to set.
pub(super) fn resolve_scope(
    at: &str,
    s: &RawScope,
    base: Option<&RawScope>,
    tiers: &[Tier],
) -> Result<ScopePolicy, PolicyError> {
    let f = Fields { at, own: s, base };
    let quality_bar = f.quality_bar()?;
    let exploration_rate = f.check(
        "exploration_rate",
        f.get(|r| r.exploration_rate)
            .unwrap_or(DEFAULT_EXPLORATION_RATE),
        |v| (0.0..=0.5).contains(&v),
        "in [0, 0.5]",
    )?;
    let (value_per_success_usd, human_minutes_per_success, loaded_cost_per_hour_usd) =
        f.value_fields()?;
    let bar_mode = f.get(|r| r.bar_mode).unwrap_or_default();
    let explore_by = f.get(|r| r.explore_by).unwrap_or_default();
    let quality_bar_relative = f.optional(
        "quality_bar_relative",
        f.get(|r| r.quality_bar_relative),
        |r| r > 0.0 && r <= 1.0,
        "in (0, 1]",
    )?;
    let max_output_tokens = f.count(
        "max_output_tokens",
        |r| r.max_output_tokens,
        DEFAULT_MAX_OUTPUT_TOKENS,
        1_000_000,
    )?;
    let reuse_retention_days = f.count(
        "reuse_retention_days",
        |r| r.reuse_retention_days,
        DEFAULT_REUSE_RETENTION_DAYS,
        MAX_REUSE_RETENTION_DAYS,
    )?;
    let reuse_events_per_decision = f.count(
        "reuse_events_per_decision",
        |r| r.reuse_events_per_decision,
        DEFAULT_REUSE_EVENTS_PER_DECISION,
        1_000_000_000,
    )?;
    let reuse_ids_per_team = f.count(
        "reuse_ids_per_team",
        |r| r.reuse_ids_per_team,
        DEFAULT_REUSE_IDS_PER_TEAM,
        // The memory store's whole pool for reuse ids.
        crate::domain::state::MAX_REUSE_IDS as u64,
    )?;
    let allowed = f.allowed(tiers)?;
    let shadow_rate = f.check(
        "shadow_rate",
        f.get(|r| r.shadow_rate).unwrap_or(0.0),
        |v| (0.0..=MAX_SHADOW_RATE).contains(&v),
        &format!("in [0, {MAX_SHADOW_RATE}]"),
    )?;
    let shadow_tier = f.shadow_tier(&allowed, tiers)?;
    let report_interval_width = f.check(
        "report_interval_width",
        f.get(|r| r.report_interval_width)
            .unwrap_or(DEFAULT_REPORT_INTERVAL_WIDTH),
        |w| w > 0.0 && w <= 1.0,
        "in (0, 1]",
    )?;
    let pinned_thresholds = match s.thresholds.as_ref() {
        None => None,
        Some(map) => Some(pinned(&f.path("thresholds"), map, &allowed, tiers)?),
    };
    Ok(ScopePolicy {
        key: String::new(),
        quality_bar,
        allowed,
        pinned_thresholds,
        exploration_rate,
        explore_by,
        value_per_success_usd,
        human_minutes_per_success,
        loaded_cost_per_hour_usd,
        bar_mode,
        quality_bar_relative,
        max_output_tokens,
        reuse_retention_days,
        reuse_events_per_decision,
        reuse_ids_per_team,
        shadow_rate,
        shadow_tier,
        report_interval_width,
    })
}

/// A scope's raw fields with `[default]`'s behind them, at key path `at`: a field set on the
/// scope wins, else the base's; every refusal names the field's path and the accepted range.
struct Fields<'a> {
    at: &'a str,
    own: &'a RawScope,
    base: Option<&'a RawScope>,
}

impl<'a> Fields<'a> {
    fn path(&self, key: &str) -> String {
        format!("{}.{key}", self.at)
    }

    /// The scope's own value of a field, else the base's.
    fn get<T>(&self, field: impl Fn(&'a RawScope) -> Option<T>) -> Option<T> {
        field(self.own).or_else(|| self.base.and_then(&field))
    }

    /// `v` where `ok(v)`, else "must be {range}, got {v}" at `key`.
    fn check<T: Copy + std::fmt::Display>(
        &self,
        key: &str,
        v: T,
        ok: impl Fn(T) -> bool,
        range: &str,
    ) -> Result<T, PolicyError> {
        if ok(v) {
            Ok(v)
        } else {
            Err(PolicyError::new(
                self.path(key),
                format!("must be {range}, got {v}"),
            ))
        }
    }

    /// [`Fields::check`] of an optional value: unset passes.
    fn optional(
        &self,
        key: &str,
        v: Option<f64>,
        ok: impl Fn(f64) -> bool,
        range: &str,
    ) -> Result<Option<f64>, PolicyError> {
        v.map(|x| self.check(key, x, &ok, range)).transpose()
    }

    /// A whole number in [1, `max`], `default` where neither the scope nor the base sets it.
    fn count<T>(
        &self,
        key: &str,
        field: impl Fn(&'a RawScope) -> Option<T>,
        default: T,
        max: T,
    ) -> Result<T, PolicyError>
    where
        T: Copy + std::fmt::Display + PartialOrd + From<u8>,
    {
        let v = self.get(field).unwrap_or(default);
        self.check(
            key,
            v,
            |x| (T::from(1)..=max).contains(&x),
            &format!("in [1, {max}]"),
        )
    }

    /// The bar; a bad one inherited from `[default]` is refused at `default.quality_bar`.
    fn quality_bar(&self) -> Result<f64, PolicyError> {
        let v = self.get(|r| r.quality_bar).unwrap_or(0.9);
        if (0.0..=1.0).contains(&v) {
            return Ok(v);
        }
        let path = if self.own.quality_bar.is_some() || self.base.is_none() {
            self.path("quality_bar")
        } else {
            "default.quality_bar".into()
        };
        Err(PolicyError::new(
            path,
            format!("must be in [0, 1], got {v}"),
        ))
    }

    /// Value per success, human minutes per success and their loaded hourly cost: each bounded
    /// so a year of outcomes stays far inside the books' 64-bit integer micro-dollar counters.
    #[allow(clippy::type_complexity)]
    fn value_fields(&self) -> Result<(Option<f64>, Option<f64>, Option<f64>), PolicyError> {
        let within = |max: f64| move |x: f64| x.is_finite() && (0.0..=max).contains(&x);
        let value = self.optional(
            "value_per_success_usd",
            self.get(|r| r.value_per_success_usd),
            within(MAX_VALUE_PER_SUCCESS_USD),
            "a dollar amount in [0, 1e6]",
        )?;
        let minutes = self.optional(
            "human_minutes_per_success",
            self.get(|r| r.human_minutes_per_success),
            within(MAX_HUMAN_MINUTES),
            &format!("minutes in [0, {MAX_HUMAN_MINUTES}]"),
        )?;
        let rate = self.optional(
            "loaded_cost_per_hour_usd",
            self.get(|r| r.loaded_cost_per_hour_usd),
            within(MAX_LOADED_COST_PER_HOUR_USD),
            &format!("a dollar amount in [0, {MAX_LOADED_COST_PER_HOUR_USD}]"),
        )?;
        Ok((value, minutes, rate))
    }

    /// The allowed tiers' indices, ascending; every tier when unset, never none.
    fn allowed(&self, tiers: &[Tier]) -> Result<Vec<usize>, PolicyError> {
        let Some(names) = self.get(|r| r.allowed_tiers.as_ref()) else {
            return Ok((0..tiers.len()).collect());
        };
        let mut idx = Vec::new();
        for (j, n) in names.iter().enumerate() {
            let at = || format!("{}[{j}]", self.path("allowed_tiers"));
            let Some(i) = tiers.iter().position(|t| &t.name == n) else {
                return Err(PolicyError::new(at(), format!("unknown tier {n:?}")));
            };
            if idx.contains(&i) {
                return Err(PolicyError::new(at(), format!("tier {n:?} listed twice")));
            }
            idx.push(i);
        }
        if idx.is_empty() {
            return Err(PolicyError::new(
                self.path("allowed_tiers"),
                "must allow at least one tier",
            ));
        }
        idx.sort_unstable();
        Ok(idx)
    }

    /// The shadow tier: the one named, which must be allowed, else the top allowed tier.
    fn shadow_tier(&self, allowed: &[usize], tiers: &[Tier]) -> Result<usize, PolicyError> {
        let Some(n) = self.get(|r| r.shadow_tier.as_ref()) else {
            // `allowed` is ascending and never empty.
            return Ok(allowed[allowed.len() - 1]);
        };
        match tiers.iter().position(|t| &t.name == n) {
            Some(i) if allowed.contains(&i) => Ok(i),
            Some(_) => Err(PolicyError::new(
                self.path("shadow_tier"),
                format!("tier {n:?} is not in the scope's allowed_tiers"),
            )),
            None => Err(PolicyError::new(
                self.path("shadow_tier"),
                format!("unknown tier {n:?}"),
            )),
        }
    }
}

/// Pinned thresholds of `map` (at key path `at`), one per allowed tier, ascending, the top one 1.
pub(super) fn pinned(
    at: &str,
    map: &BTreeMap<String, f64>,
    allowed: &[usize],
    tiers: &[Tier],
) -> Result<Vec<f64>, PolicyError> {
    for (name, v) in map {
        let path = format!("{at}.{name}");
        let Some(i) = tiers.iter().position(|t| &t.name == name) else {
            return Err(PolicyError::new(path, format!("unknown tier {name:?}")));
        };
        if !allowed.contains(&i) {
            return Err(PolicyError::new(
                path,
                format!("tier {name:?} is not in allowed_tiers"),
            ));
        }
        if !(0.0..=1.0).contains(v) {
            return Err(PolicyError::new(
                path,
                format!("must be in [0, 1], got {v}"),
            ));
        }
    }
    let last = allowed.len() - 1;
    let mut out = Vec::with_capacity(allowed.len());
    for (slot, &i) in allowed.iter().enumerate() {
        let name = &tiers[i].name;
        let v = if slot == last {
            // The top tier takes everything the cheaper ones are not trusted with.
            1.0
        } else {
            *map.get(name).ok_or_else(|| {
                PolicyError::new(format!("{at}.{name}"), "missing: pinned thresholds need a value for every allowed tier below the top one")
            })?
        };
        if let Some(prev) = out.last()
            && v < *prev
        {
            return Err(PolicyError::new(
                format!("{at}.{name}"),
                format!("must be ≥ the cheaper tier's threshold {prev}, got {v}"),
            ));
        }
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::policy::tests::THREE;
    use crate::domain::policy::{ExploreBy, MAX_ERROR_PATH, MAX_ERROR_REASON};

    fn err(text: &str) -> PolicyError {
        Policy::parse(text).unwrap_err()
    }

    #[test]
    fn validation_errors_name_the_key_path() {
        let e = err(&THREE.replace(
            "allowed_tiers = [\"medium\", \"frontier\"]",
            "allowed_tiers = [\"medium\", \"huge\"]",
        ));
        assert_eq!(e.path, "policies[0].allowed_tiers[1]");
        assert!(e.reason.contains("unknown tier \"huge\""));

        let e = err(&THREE.replace("quality_bar = 0.95", "quality_bar = 1.5"));
        assert_eq!(e.path, "policies[0].quality_bar");

        let e = err(&THREE.replace("input_usd_per_mtok = 1.0", "input_usd_per_mtok = -1.0"));
        assert_eq!(e.path, "tiers[2].input_usd_per_mtok");

        let e = err(&THREE.replace("name = \"medium\"", "name = \"small\""));
        assert_eq!(e.path, "tiers[2].name");
        assert!(e.reason.contains("duplicate"));

        let e = err(&THREE.replace(
            "exploration_rate = 0.0",
            "exploration_rate = 0.0\ncolour = \"red\"",
        ));
        assert_eq!(e.path, "policies[1].colour");
        assert!(e.reason.contains("unknown field \"colour\""), "{e}");
        // The list of keys it could have meant is whole (it was cut mid-name at 300 bytes).
        assert!(
            e.reason
                .ends_with("`shadow_rate`, `shadow_tier`, `report_interval_width`"),
            "{e}"
        );

        let e = err(&THREE.replace("small = 0.3, medium = 0.7", "small = 0.8, medium = 0.7"));
        assert_eq!(e.path, "policies[2].thresholds.medium");

        let e = err(&THREE.replace("small = 0.3, medium = 0.7", "small = 0.3"));
        assert_eq!(e.path, "policies[2].thresholds.medium");

        let e = err(
            "[[tiers]]\nname=\"a\"\nmodel=\"m\"\ninput_usd_per_mtok=1.0\noutput_usd_per_mtok=1.0\n",
        );
        assert_eq!(e.path, "tiers");

        let e = err("this is not toml");
        assert_eq!(e.path, "<file>");
    }

    #[test]
    fn shadow_knobs_are_bounded_and_name_their_key_path() {
        let p = Policy::parse(THREE).unwrap();
        // Off by default; the shadow tier is the scope's top allowed tier.
        assert_eq!(p.default.shadow_rate, 0.0);
        assert_eq!(
            p.default.shadow_tier,
            p.default.allowed[p.default.allowed.len() - 1]
        );
        assert_eq!(
            p.default.report_interval_width,
            DEFAULT_REPORT_INTERVAL_WIDTH
        );
        let with = |extra: &str| {
            THREE.replace(
                "exploration_rate = 0.0",
                &format!("exploration_rate = 0.0\n{extra}"),
            )
        };
        let p = Policy::parse(&with("shadow_rate = 0.2\nshadow_tier = \"medium\"")).unwrap();
        let s = p.scopes.values().find(|s| s.shadow_rate > 0.0).unwrap();
        assert_eq!(p.tiers[s.shadow_tier].name, "medium");
        for (extra, reason) in [
            ("shadow_rate = 0.21", "must be in [0, 0.2], got 0.21"),
            ("shadow_rate = -0.1", "must be in [0, 0.2]"),
            ("shadow_tier = \"huge\"", "unknown tier \"huge\""),
            ("report_interval_width = 0.0", "must be in (0, 1], got 0"),
        ] {
            let e = err(&with(extra));
            let key = extra.split(' ').next().unwrap();
            assert_eq!(e.path, format!("policies[1].{key}"), "{extra}");
            assert!(e.reason.contains(reason), "{extra}: {e}");
        }
    }

    #[test]
    fn explore_by_is_auto_unless_a_scope_names_one() {
        let p = Policy::parse(THREE).unwrap();
        assert_eq!(p.default.explore_by, ExploreBy::Auto);
        let with = THREE.replace(
            "exploration_rate = 0.0",
            "exploration_rate = 0.0\nexplore_by = \"pairs\"",
        );
        let p = Policy::parse(&with).unwrap();
        assert!(p.scopes.values().any(|s| s.explore_by == ExploreBy::Pairs));
        assert_eq!(p.default.explore_by, ExploreBy::Auto);
        let sub = THREE.replace(
            "exploration_rate = 0.0",
            "exploration_rate = 0.0\nexplore_by = \"substitution\"",
        );
        let p = Policy::parse(&sub).unwrap();
        assert!(
            p.scopes
                .values()
                .any(|s| s.explore_by == ExploreBy::Substitution)
        );
        let bad = THREE.replace(
            "exploration_rate = 0.0",
            "exploration_rate = 0.0\nexplore_by = \"both\"",
        );
        let e = Policy::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("both") && e.contains("pairs"), "{e}");
    }

    #[test]
    fn errors_never_echo_more_than_a_few_hundred_bytes() {
        let long_team = format!(
            "{THREE}\n[[policies]]\nteam = \"{}\"\nquality_bar = 0.8\n",
            "x".repeat(200_000)
        );
        let e = Policy::parse(&long_team).unwrap_err();
        assert_eq!(e.path, "policies[3].team");
        assert!(e.reason.contains("200000 bytes"), "{}", e.reason);
        let long_line = format!("{THREE}\nfoo = \"{}\n", "y".repeat(5_000));
        let e = Policy::parse(&long_line).unwrap_err();
        assert!(
            e.to_string().len() < MAX_ERROR_PATH + MAX_ERROR_REASON,
            "{}",
            e.to_string().len()
        );
        // The offending line is located, not echoed.
        assert!(e.reason.starts_with("line "), "{}", e.reason);
        assert!(!e.reason.contains("yyyy"), "{}", e.reason);
    }

    #[test]
    fn value_per_success_is_a_bounded_dollar_amount() {
        let with = |v: &str| {
            Policy::parse(&THREE.replacen(
                "[default]\n",
                &format!("[default]\nvalue_per_success_usd = {v}\n"),
                1,
            ))
        };
        assert_eq!(
            with("2.5").unwrap().default.value_per_success_usd,
            Some(2.5)
        );
        assert!(with("1e6").is_ok());
        for bad in ["1e7", "1e300", "-1", "nan", "inf"] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.path, "default.value_per_success_usd", "{bad}");
        }
    }
}
