//! Spend budgets: who a budget covers, its calendar period (UTC-aligned), what Route does at
//! its limits, and the validation of `[[budgets]]`.

use std::sync::Arc;

use serde::Deserialize;

use super::{PolicyError, scope_key};
use crate::domain::calendar::DAY_MS;

/// Length of a budget period; periods are calendar-aligned in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// From 00:00 UTC.
    Day,
    /// From Monday 00:00 UTC (ISO week).
    Week,
    /// From the 1st of the month, 00:00 UTC.
    Month,
}

impl Period {
    /// Every period, shortest first.
    pub const ALL: [Period; 3] = [Period::Day, Period::Week, Period::Month];

    /// Name as written in the policy (and in a report request's `period`).
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }

    /// The period of a name written by [`Period::as_str`]; `None` when unknown.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// Start (ms since the epoch) of the period that contains `now_ms`.
    pub fn start_ms(self, now_ms: u64) -> u64 {
        use jiff::ToSpan;
        use jiff::tz::TimeZone;
        let today = crate::domain::calendar::timestamp(now_ms)
            .to_zoned(TimeZone::UTC)
            .date();
        let start = match self {
            Period::Day => Ok(today),
            Period::Week => {
                today.checked_sub(i64::from(today.weekday().to_monday_zero_offset()).days())
            }
            Period::Month => Ok(today.first_of_month()),
        };
        start
            .and_then(|d| d.to_zoned(TimeZone::UTC))
            .map_or(0, |z| {
                u64::try_from(z.timestamp().as_millisecond()).unwrap_or(0)
            })
    }

    /// Start of the period after the one that contains `now_ms`.
    pub fn next_start_ms(self, now_ms: u64) -> u64 {
        let start = self.start_ms(now_ms);
        match self {
            Period::Day => start + DAY_MS,
            Period::Week => start + 7 * DAY_MS,
            Period::Month => self.start_ms(start + 32 * DAY_MS),
        }
    }
}

/// What Route does once a hard limit is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExhausted {
    /// Route to the cheapest allowed tier (keeps serving at the lowest cost).
    #[default]
    Cheapest,
    /// Refuse with RESOURCE_EXHAUSTED naming the budget.
    Reject,
}

/// What Route assumes about a budget while the store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreUnavailable {
    /// Enforce on this replica's last view plus its own reservations.
    #[default]
    FailOpen,
    /// Treat the hard limit as reached.
    FailClosed,
}

/// A spend budget over the decisions of a team, a workflow, both, or everything.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// `scope-key/period`, e.g. `team:search/month`; unique.
    pub id: String,
    /// Team it covers; empty = every team.
    pub team: String,
    /// Workflow it covers; empty = every workflow.
    pub workflow: String,
    /// Calendar period.
    pub period: Period,
    /// Above this, only tiers cheaper than the usual choice are used (micro-USD).
    pub soft_limit_micros: Option<i64>,
    /// At this, `on_exhausted` applies (micro-USD).
    pub hard_limit_micros: Option<i64>,
    /// Action at the hard limit.
    pub on_exhausted: OnExhausted,
    /// Behaviour while the store is unreachable.
    pub on_store_unavailable: OnStoreUnavailable,
    /// For a budget over several teams: the share of its hard limit one team may spend; past
    /// it, `on_exhausted` applies to that team alone. `None`: any team may spend all of it.
    pub team_share: Option<f64>,
}

impl Budget {
    /// Whether the budget covers calls of this team and workflow.
    pub fn covers(&self, team: &str, workflow: &str) -> bool {
        (self.team.is_empty() || self.team == team)
            && (self.workflow.is_empty() || self.workflow == workflow)
    }
}

/// One `[[budgets]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudget {
    pub(super) team: Option<String>,
    pub(super) workflow: Option<String>,
    pub(super) period: Period,
    pub(super) soft_limit_usd: Option<f64>,
    pub(super) hard_limit_usd: Option<f64>,
    pub(super) on_exhausted: Option<OnExhausted>,
    pub(super) on_store_unavailable: Option<OnStoreUnavailable>,
    pub(super) team_share: Option<f64>,
}

/// The `[[budgets]]` entries, validated in file order (ids unique).
pub(super) fn validate_budgets(raw: &[RawBudget]) -> Result<Vec<Arc<Budget>>, PolicyError> {
    let mut out: Vec<Arc<Budget>> = Vec::with_capacity(raw.len());
    for (i, b) in raw.iter().enumerate() {
        let path = |k: &str| format!("budgets[{i}].{k}");
        let period = b.period;
        let limit = |k: &str, v: Option<f64>| -> Result<Option<i64>, PolicyError> {
            match v {
                None => Ok(None),
                Some(usd) if usd.is_finite() && usd > 0.0 && usd <= 1e9 => {
                    Ok(Some((usd * 1e6).round() as i64))
                }
                Some(usd) => Err(PolicyError::new(
                    path(k),
                    format!("must be a dollar amount in (0, 1e9], got {usd}"),
                )),
            }
        };
        let soft = limit("soft_limit_usd", b.soft_limit_usd)?;
        let hard = limit("hard_limit_usd", b.hard_limit_usd)?;
        match (soft, hard) {
            (None, None) => {
                return Err(PolicyError::new(
                    format!("budgets[{i}]"),
                    "needs soft_limit_usd, hard_limit_usd or both",
                ));
            }
            (Some(s), Some(h)) if s > h => {
                return Err(PolicyError::new(
                    path("soft_limit_usd"),
                    "must not be above hard_limit_usd",
                ));
            }
            _ => {}
        }
        let (on_exhausted, on_store_unavailable) = (
            b.on_exhausted.unwrap_or_default(),
            b.on_store_unavailable.unwrap_or_default(),
        );
        let team = b.team.clone().unwrap_or_default();
        let workflow = b.workflow.clone().unwrap_or_default();
        let team_share = match b.team_share {
            None => None,
            Some(_) if !team.is_empty() => {
                return Err(PolicyError::new(
                    path("team_share"),
                    "only a budget over several teams (without `team`) has team shares",
                ));
            }
            Some(_) if hard.is_none() => {
                return Err(PolicyError::new(
                    path("team_share"),
                    "is a share of hard_limit_usd, which this budget lacks",
                ));
            }
            Some(s) if s.is_finite() && s > 0.0 && s <= 1.0 => Some(s),
            Some(s) => {
                return Err(PolicyError::new(
                    path("team_share"),
                    format!("must be in (0, 1], got {s}"),
                ));
            }
        };
        let id = format!("{}/{}", scope_key(&team, &workflow), period.as_str());
        if out.iter().any(|o| o.id == id) {
            return Err(PolicyError::new(
                format!("budgets[{i}]"),
                format!("duplicate budget {id}"),
            ));
        }
        out.push(Arc::new(Budget {
            id,
            team,
            workflow,
            period,
            soft_limit_micros: soft,
            hard_limit_micros: hard,
            on_exhausted,
            on_store_unavailable,
            team_share,
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::policy::Policy;
    use crate::domain::policy::tests::THREE;

    #[test]
    fn periods_are_calendar_aligned_in_utc() {
        // 2026-11-29 (a Sunday) 06:41:03 UTC.
        let now = 1_795_934_463_000;
        assert_eq!(Period::Day.start_ms(now), 1_795_910_400_000); // 2026-11-29 00:00
        assert_eq!(Period::Week.start_ms(now), 1_795_392_000_000); // Mon 2026-11-23
        assert_eq!(Period::Month.start_ms(now), 1_793_491_200_000); // 2026-11-01
        assert_eq!(Period::Month.next_start_ms(now), 1_796_083_200_000); // 2026-12-01
        assert_eq!(Period::Day.next_start_ms(now), 1_795_996_800_000);
        // The last millisecond of a period belongs to it; the next one starts the next.
        let dec1 = 1_796_083_200_000;
        assert_eq!(Period::Month.start_ms(dec1 - 1), 1_793_491_200_000);
        assert_eq!(Period::Month.start_ms(dec1), dec1);
        // February of a leap year, and a year boundary (day numbers since 1970-01-01, from an
        // independent calendar).
        let feb29_2028 = 21243 * DAY_MS;
        assert_eq!(Period::Month.start_ms(feb29_2028), 21215 * DAY_MS);
        assert_eq!(Period::Month.next_start_ms(feb29_2028), 21244 * DAY_MS);
        let dec31 = 20818 * DAY_MS;
        assert_eq!(Period::Month.next_start_ms(dec31), 20819 * DAY_MS);
        assert_eq!(Period::Week.start_ms(0), 0); // clamped before the first Monday
    }

    #[test]
    fn budgets_parse_and_reject_with_key_paths() {
        let with = |b: &str| Policy::parse(&format!("{THREE}\n{b}"));
        let p = with(
            r#"
[[budgets]]
team = "search"
period = "month"
soft_limit_usd = 800
hard_limit_usd = 1000.5
on_exhausted = "reject"
on_store_unavailable = "fail_closed"
[[budgets]]
period = "day"
hard_limit_usd = 50
"#,
        )
        .unwrap();
        assert_eq!(p.budgets.len(), 2);
        let b = &p.budgets[0];
        assert_eq!(b.id, "team:search/month");
        assert_eq!(b.hard_limit_micros, Some(1_000_500_000));
        assert_eq!(b.on_exhausted, OnExhausted::Reject);
        assert_eq!(b.on_store_unavailable, OnStoreUnavailable::FailClosed);
        assert!(b.covers("search", "anything") && !b.covers("ads", ""));
        assert_eq!(p.budgets[1].id, "default/day");
        assert_eq!(p.budgets[1].on_exhausted, OnExhausted::Cheapest);
        assert!(p.budgets[1].covers("x", "y"));

        let err = |b: &str| with(b).unwrap_err();
        assert_eq!(
            err("[[budgets]]\nperiod = \"year\"\nhard_limit_usd = 1").path,
            "budgets[0].period"
        );
        assert_eq!(err("[[budgets]]\nperiod = \"day\"").path, "budgets[0]");
        // A team share: of a budget over several teams, of its hard limit, in (0, 1].
        for bad in [
            "[[budgets]]\nteam = \"a\"\nperiod = \"day\"\nhard_limit_usd = 1\nteam_share = 0.5",
            "[[budgets]]\nperiod = \"day\"\nsoft_limit_usd = 1\nteam_share = 0.5",
            "[[budgets]]\nperiod = \"day\"\nhard_limit_usd = 1\nteam_share = 1.5",
            "[[budgets]]\nperiod = \"day\"\nhard_limit_usd = 1\nteam_share = 0",
        ] {
            assert_eq!(err(bad).path, "budgets[0].team_share", "{bad}");
        }
        let shared = with("[[budgets]]\nperiod = \"day\"\nhard_limit_usd = 1\nteam_share = 0.25");
        assert_eq!(shared.unwrap().budgets[0].team_share, Some(0.25));
        assert_eq!(
            err("[[budgets]]\nperiod = \"day\"\nhard_limit_usd = -1").path,
            "budgets[0].hard_limit_usd"
        );
        assert_eq!(
            err("[[budgets]]\nperiod = \"day\"\nsoft_limit_usd = 5\nhard_limit_usd = 1").path,
            "budgets[0].soft_limit_usd"
        );
        assert_eq!(
            err("[[budgets]]\nperiod = \"day\"\nhard_limit_usd = 1\non_exhausted = \"panic\"").path,
            "budgets[0].on_exhausted"
        );
        assert_eq!(
            err("[[budgets]]\nperiod = \"day\"\nhard_limit_usd = 1\n[[budgets]]\nperiod = \"day\"\nsoft_limit_usd = 1").path,
            "budgets[1]"
        );
        assert_eq!(
            err("[[budgets]]\nperiod = \"day\"\nlimit = 1").path,
            "budgets[0].limit"
        );
    }

    #[test]
    fn a_misspelt_value_names_its_path_its_place_and_the_values_it_could_be() {
        let err = |b: &str| Policy::parse(&format!("{THREE}\n{b}")).unwrap_err();
        let e = err("[[budgets]]\nperiod = \"daily\"\nhard_limit_usd = 1");
        assert_eq!(e.path, "budgets[0].period");
        assert!(e.reason.starts_with("line "), "{}", e.reason);
        assert!(e.reason.contains("`day`, `week`, `month`"), "{}", e.reason);
        let e = err(
            "[[budgets]]\nperiod = \"day\"\nhard_limit_usd = 1\non_store_unavailable = \"open\"",
        );
        assert_eq!(e.path, "budgets[0].on_store_unavailable");
        assert!(e.reason.contains("`fail_open`"), "{}", e.reason);
    }
}
