//! The planner's curves stage: every level's curves in a plan being made (the scope, then its
//! families, then its workflows), computed from the slots and the evidence or, in a re-plan,
//! kept from the previous plan, in one typed index the later stages read.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::estimate::{Curves, curves};
use super::evidence::{Level, ScopeEvidence, is_discovered};
use super::params::{BANDS, REPLAN_LEVELS};
use super::scope_plan::{ScopePlan, WorkflowPlan};
use super::slots::Slots;
use crate::domain::labels::{family_of, workflow_key};

/// What a re-plan may keep of the previous plan of a level.
#[derive(Clone, Copy)]
pub(super) struct Reuse<'a> {
    pub(super) plan: &'a ScopePlan,
    /// The plan was made under other clusters than the scope's now: its discovered levels were
    /// rebuilt since.
    pub(super) clusters_changed: bool,
}

/// A level's curves in a plan being made: computed now, or kept from the previous plan.
pub(super) enum LevelCurves<'a> {
    Fresh(Curves),
    Kept(&'a Arc<WorkflowPlan>),
}

impl LevelCurves<'_> {
    /// The planning bound of slot `s` in band `b`.
    pub(super) fn quality(&self, s: usize, b: usize) -> f64 {
        match self {
            Self::Fresh(c) => c.quality[s][b],
            Self::Kept(p) => p.tiers[s].quality[b],
        }
    }

    /// The estimate of slot `s`.
    pub(super) fn predicted(&self, s: usize) -> [f64; BANDS] {
        match self {
            Self::Fresh(c) => c.predicted[s],
            Self::Kept(p) => p.tiers[s].predicted,
        }
    }

    /// What each slot's estimate stands on, in outcomes.
    pub(super) fn strengths(&self) -> Vec<f64> {
        match self {
            Self::Fresh(c) => c.strength.clone(),
            Self::Kept(p) => p.tiers.iter().map(|t| t.strength).collect(),
        }
    }
}

/// Every level's curves in a plan being made, by level: what a task of any workflow is priced
/// on ([`PlanCurves::for_workflow`]) and what each level's plan is assembled from.
pub(super) struct PlanCurves<'a, 'e> {
    /// The scope's curves (for workflows and families it has not seen).
    pub(super) scope: LevelCurves<'a>,
    /// Family → its curves.
    pub(super) families: HashMap<&'e str, LevelCurves<'a>>,
    /// Workflow → its curves.
    pub(super) workflows: HashMap<&'e str, LevelCurves<'a>>,
}

impl<'a, 'e> PlanCurves<'a, 'e> {
    /// The curves of every level of `evidence` (the scope alone without any): the scope's from
    /// the slots' priors, each family's from the scope's, each workflow's from its family's
    /// (the scope's when its family has none). A level `reuse` may keep, and
    /// [`kept_levels`] picks, keeps the previous plan's curves instead.
    pub(super) fn build(
        slots: &Slots<'_>,
        evidence: Option<&'e ScopeEvidence>,
        reuse: Option<Reuse<'a>>,
    ) -> Self {
        let mut workflows: Vec<(&'e String, &'e Level)> = evidence
            .map(|e| e.workflows.iter().collect())
            .unwrap_or_default();
        workflows.sort_by(|a, b| a.0.cmp(b.0));
        let expect = slots.expected(&slots.priors, &workflows, |w| slots.scope_shift(w));
        let zero = vec![0.0; slots.len()];
        let scope = LevelCurves::Fresh(curves(
            &slots.tiers,
            slots.scope_start(&expect),
            &zero,
            evidence.map(|e| &e.scope),
            None,
        ));
        let Some(e) = evidence else {
            return Self {
                scope,
                families: HashMap::new(),
                workflows: HashMap::new(),
            };
        };
        let below = Below {
            slots,
            e,
            workflows,
            reuse,
            keep: reuse.map(|r| kept_levels(r, e)).unwrap_or_default(),
        };
        let families = below.families(&scope);
        let workflows = below.workflows(&scope, &families);
        Self {
            scope,
            families,
            workflows,
        }
    }

    /// The curves a task of `workflow` is priced on: its own, else its family's, else the
    /// scope's.
    pub(super) fn for_workflow(&self, workflow: &str) -> &LevelCurves<'a> {
        let w = workflow_key(workflow);
        self.workflows
            .get(w)
            .or_else(|| family_of(w).and_then(|f| self.families.get(f)))
            .unwrap_or(&self.scope)
    }
}

/// What the levels below the scope are built from: the slots, the evidence with its workflows
/// in name order, and what a re-plan keeps.
struct Below<'s, 'a, 'e> {
    slots: &'s Slots<'s>,
    e: &'e ScopeEvidence,
    /// The scope's workflows, in name order.
    workflows: Vec<(&'e String, &'e Level)>,
    reuse: Option<Reuse<'a>>,
    keep: KeptLevels<'e>,
}

impl<'a, 'e> Below<'_, 'a, 'e> {
    /// Each family's curves (in name order), from the scope's: its prior is the scope's
    /// curves shifted by the family's own label shift, and its outcomes were expected to score
    /// that prior moved by each of its workflows' shifts.
    fn families(&self, scope: &LevelCurves<'a>) -> HashMap<&'e str, LevelCurves<'a>> {
        let (slots, e) = (self.slots, self.e);
        let mut names: Vec<&'e str> = e.families.keys().map(String::as_str).collect();
        names.sort();
        // Each family's workflows, grouped once (not a scan of every workflow per family).
        let mut members_of: HashMap<&str, Vec<(&String, &Level)>> = HashMap::new();
        for &(w, l) in &self.workflows {
            if let Some(f) = family_of(w) {
                members_of.entry(f).or_default().push((w, l));
            }
        }
        let levels = names.into_iter().map(|f| (f, ()));
        self.each(
            levels,
            |p| &p.families,
            &self.keep.families,
            |f, ()| {
                let prior = slots.shifted(|s| scope.predicted(s), f);
                let members = members_of.get(f).map_or(&[][..], Vec::as_slice);
                let expect = slots.expected(&prior, members, |w| slots.own_shift(w));
                curves(
                    &slots.tiers,
                    slots.family_start(f, &prior, &expect),
                    &scope.strengths(),
                    e.families.get(f),
                    Some(&e.scope),
                )
            },
        )
    }

    /// Each workflow's curves (in name order), from its family's in `families` (the scope's
    /// when its family has none), shifted by the workflow's own label shift.
    fn workflows(
        &self,
        scope: &LevelCurves<'a>,
        families: &HashMap<&'e str, LevelCurves<'a>>,
    ) -> HashMap<&'e str, LevelCurves<'a>> {
        let (slots, e) = (self.slots, self.e);
        let levels = self.workflows.iter().map(|&(w, l)| (w.as_str(), l));
        self.each(
            levels,
            |p| &p.workflows,
            &self.keep.workflows,
            |w, level| {
                let family = family_of(w).and_then(|f| Some((f, families.get(f)?)));
                let (parent, parent_level) = match family {
                    Some((f, c)) => (c, e.families.get(f)),
                    None => (scope, Some(&e.scope)),
                };
                let prior = slots.shifted(|s| parent.predicted(s), w);
                curves(
                    &slots.tiers,
                    slots.workflow_start(w, &prior),
                    &parent.strengths(),
                    Some(level),
                    parent_level,
                )
            },
        )
    }

    /// The curves of `levels` (name and what `fresh` needs, in order): each one `keep` holds
    /// as the previous plan had it (in its map `previous`), each other computed by `fresh`.
    fn each<T>(
        &self,
        levels: impl Iterator<Item = (&'e str, T)>,
        previous: impl Fn(&'a ScopePlan) -> &'a HashMap<String, Arc<WorkflowPlan>>,
        keep: &HashSet<&str>,
        mut fresh: impl FnMut(&'e str, T) -> Curves,
    ) -> HashMap<&'e str, LevelCurves<'a>> {
        let mut out = HashMap::new();
        for (name, level) in levels {
            let kept = self.reuse.and_then(|r| kept(previous(r.plan), keep, name));
            let curves = match kept {
                Some(p) => LevelCurves::Kept(p),
                None => LevelCurves::Fresh(fresh(name, level)),
            };
            out.insert(name, curves);
        }
        out
    }
}

/// The previous plan's curves of `name` among `plans` when `keep` holds it.
fn kept<'a>(
    plans: &'a HashMap<String, Arc<WorkflowPlan>>,
    keep: &HashSet<&str>,
    name: &str,
) -> Option<&'a Arc<WorkflowPlan>> {
    keep.contains(name).then(|| plans.get(name)).flatten()
}

/// The family and the workflow levels whose curves a re-plan keeps from the previous plan.
#[derive(Default)]
pub(super) struct KeptLevels<'e> {
    pub(super) families: HashSet<&'e str>,
    pub(super) workflows: HashSet<&'e str>,
}

/// Which kind of level below the scope a quiet level is (families sort first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Family,
    Workflow,
}

/// The family and the workflow levels of `e` that keep `reuse`'s curves: none while the levels
/// with new outcomes (which never keep theirs) and the others recomputed longest ago fit in
/// [`REPLAN_LEVELS`]; past that, the ones recomputed most recently (families before
/// workflows at equal age).
pub(super) fn kept_levels<'e>(reuse: Reuse<'_>, e: &'e ScopeEvidence) -> KeptLevels<'e> {
    let mut dirty = 0;
    let mut quiet: Vec<(u64, Kind, &'e str)> = Vec::new();
    let levels = [
        (Kind::Family, &e.families, &reuse.plan.families),
        (Kind::Workflow, &e.workflows, &reuse.plan.workflows),
    ];
    for (kind, levels, before) in levels {
        for (name, level) in levels {
            match before.get(name) {
                Some(p)
                    if level.last_seen <= p.planned_at
                        && !(reuse.clusters_changed && is_discovered(name)) =>
                {
                    quiet.push((p.planned_at, kind, name.as_str()));
                }
                _ => dirty += 1,
            }
        }
    }
    let mut kept = KeptLevels::default();
    let budget = REPLAN_LEVELS.saturating_sub(dirty);
    if quiet.len() > budget {
        quiet.sort_unstable();
        for (_, kind, name) in quiet.into_iter().skip(budget) {
            match kind {
                Kind::Family => kept.families.insert(name),
                Kind::Workflow => kept.workflows.insert(name),
            };
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::learning::slots::tests::with_slots;
    use crate::domain::learning::tests::{calibration, shape_in};

    #[test]
    fn without_evidence_a_tier_plans_on_its_prior_less_a_tenth_of_a_standard_error() {
        with_slots(&calibration(), |slots, _| {
            let c = PlanCurves::build(slots, None, None);
            let LevelCurves::Fresh(scope) = &c.scope else {
                panic!("a fresh plan keeps nothing");
            };
            // σ ≤ 0.5 over the prior's worth: 30 outcomes for `small`, 4 for `medium`.
            for (s, n) in [(0, 30.0), (1, 4.0)] {
                let margin = 0.1 * (0.25f64 / n).sqrt();
                for b in 0..BANDS {
                    let prior = slots.priors[s][b];
                    assert_eq!(scope.predicted[s][b], prior);
                    assert!((scope.quality[s][b] - (prior - margin)).abs() < 1e-15);
                }
            }
        });
    }

    #[test]
    fn a_task_is_priced_on_its_workflow_else_its_family_else_the_scope() {
        let mut ev = ScopeEvidence::default();
        ev.observe("small", shape_in("law/contracts", 3, 500, 256), 1.0);
        ev.observe("small", shape_in("solo", 3, 500, 256), 0.0);
        with_slots(&calibration(), |slots, _| {
            let c = PlanCurves::build(slots, Some(&ev), None);
            let is = |a: &LevelCurves<'_>, b: &LevelCurves<'_>| std::ptr::eq(a, b);
            assert_eq!(c.families.len(), 1);
            assert_eq!(c.workflows.len(), 2);
            assert!(is(
                c.for_workflow("law/contracts"),
                &c.workflows["law/contracts"]
            ));
            assert!(is(c.for_workflow("law/torts"), &c.families["law"]));
            assert!(is(c.for_workflow("solo"), &c.workflows["solo"]));
            assert!(is(c.for_workflow("other"), &c.scope));
            assert!(is(c.for_workflow(""), &c.scope));
        });
    }
}
