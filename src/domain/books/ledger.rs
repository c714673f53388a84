//! The ledger's format: counter hash and field formats (written and read only here), capped
//! labels, and the typed counts the books tell their observer (the metric names are what the
//! books count, in `books`).

use crate::domain::calendar::HOUR_MS;

/// Distinct team labels the ledger counts separately; later ones are counted as [`OTHER`] (not
/// learning's cap on teams with evidence of their own, `learning::MAX_TEAMS`).
pub const MAX_LEDGER_TEAMS: usize = 100;
/// Distinct workflow labels the ledger counts separately per team; a team's later ones are counted as
/// [`OTHER`] (so one team's junk labels never push another team's workflows there).
pub const MAX_LEDGER_WORKFLOWS: usize = 200;
/// Label of everything over a cardinality cap.
pub const OTHER: &str = "other";
/// Separator of the parts of a ledger field name (never inside a label: see [`clean`]).
pub(super) const SEP: char = '\u{1f}';

/// Prefix of every ledger counter hash.
pub const LEDGER_PREFIX: &str = "ledger:";

/// Counter hash of the ledger hour containing `ms`.
pub fn ledger_hash(ms: u64) -> String {
    ledger_hash_of_hour(ms / HOUR_MS)
}

/// Counter hash of ledger hour `hour` (hours since the epoch).
pub fn ledger_hash_of_hour(hour: u64) -> String {
    format!("{LEDGER_PREFIX}{hour}")
}

/// Counter hash of a budget's period (field [`BUDGET_USED`]): one hash per period, so old
/// periods expire with the store's retention and a read touches only the current one.
pub fn budget_hash(id: &str, period_start_ms: u64) -> String {
    format!("budget:{id}:{period_start_ms}")
}

/// Field of a budget period hash that holds its usage, micro-USD.
pub const BUDGET_USED: &str = "used";

/// Where the books keep one team's part of a budget shared by several teams (one with a
/// `team_share`): beside the whole in the local usage, under this key.
pub(super) fn team_usage_key(budget: &str, team: &str) -> String {
    format!("{budget}{SEP}{team}")
}

/// The budget and team of a [`team_usage_key`]; `None` for a whole budget's key.
pub(super) fn split_team_usage_key(key: &str) -> Option<(&str, &str)> {
    key.split_once(SEP)
}

/// Field of a budget period hash that holds one team's part of its usage, micro-USD.
pub(super) fn team_used_field(team: &str) -> String {
    format!("{BUDGET_USED}:{team}")
}

/// Field name of a ledger metric for one cell.
pub fn ledger_field(metric: &str, team: &str, workflow: &str, tier: &str) -> String {
    format!("{metric}{SEP}{team}{SEP}{workflow}{SEP}{tier}")
}

/// Splits a ledger field into (metric, team, workflow, tier).
pub fn parse_ledger_field(field: &str) -> Option<(&str, &str, &str, &str)> {
    let mut it = field.split(SEP);
    let r = (it.next()?, it.next()?, it.next()?, it.next()?);
    it.next().is_none().then_some(r)
}

/// A label with control characters replaced, so it can never break a field name.
pub(super) fn clean(label: &str) -> std::borrow::Cow<'_, str> {
    if label.chars().any(char::is_control) {
        label
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect::<String>()
            .into()
    } else {
        label.into()
    }
}

/// Caps the number of distinct label values, so metrics and the ledger stay bounded: teams
/// overall, workflows per (admitted) team.
#[derive(Default)]
pub(super) struct Labels {
    teams: hashbrown::HashSet<String>,
    workflows: hashbrown::HashMap<String, hashbrown::HashSet<String>>,
}

impl Labels {
    pub(super) fn admit<'a>(
        set: &mut hashbrown::HashSet<String>,
        cap: usize,
        label: &'a str,
    ) -> &'a str {
        if label.is_empty() || set.contains(label) {
            return label;
        }
        if set.len() >= cap {
            return OTHER;
        }
        set.insert(label.to_string());
        label
    }

    pub(super) fn team<'a>(&mut self, t: &'a str) -> &'a str {
        Self::admit(&mut self.teams, MAX_LEDGER_TEAMS, t)
    }

    /// Workflow `w` of `team` (a label the caps admitted, or [`OTHER`]).
    pub(super) fn workflow<'a>(&mut self, team: &str, w: &'a str) -> &'a str {
        if w.is_empty() {
            return w;
        }
        let set = match self.workflows.get_mut(team) {
            Some(set) => set,
            None => self.workflows.entry(team.to_string()).or_default(),
        };
        Self::admit(set, MAX_LEDGER_WORKFLOWS, w)
    }
}

/// One ledger increment the books sent to the store, in typed form: what their [`Observer`]
/// sees (the metrics count these, so the exported metrics and the report agree).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Counted<'a> {
    /// One of [`metric`](super::metric).
    pub metric: &'a str,
    /// The decision's team label (capped).
    pub team: &'a str,
    /// Its workflow label (capped).
    pub workflow: &'a str,
    /// The tier that ran (empty for a refused call).
    pub tier: &'a str,
    /// The increment.
    pub delta: i64,
}

/// Told of every ledger increment the books send to the store (the metrics face implements
/// it; the books know nothing of metrics).
pub trait Observer: Send + Sync {
    /// One increment, once it is sent.
    fn counted(&self, c: Counted<'_>);
}

/// Observes nothing (books without metrics, in tests).
pub(super) struct Unobserved;

impl Observer for Unobserved {
    fn counted(&self, _: Counted<'_>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_over_the_cap_count_as_other() {
        let mut l = Labels::default();
        for i in 0..MAX_LEDGER_WORKFLOWS {
            assert_eq!(l.workflow("ads", &format!("w{i}")), format!("w{i}"));
        }
        assert_eq!(l.workflow("ads", "one-too-many"), OTHER);
        assert_eq!(l.workflow("ads", "w7"), "w7");
        assert_eq!(l.workflow("ads", ""), "");
        // Another team's workflows have caps of their own.
        assert_eq!(l.workflow("search", "one-too-many"), "one-too-many");
        assert_eq!(clean("a\u{1f}b\nc"), "a?b?c");
        let f = ledger_field("spend", "t", "w", "small");
        assert_eq!(parse_ledger_field(&f), Some(("spend", "t", "w", "small")));
        assert_eq!(parse_ledger_field("spend"), None);
    }
}
