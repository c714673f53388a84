//! The reason text of a decision: which tier, and why, in one line built without formatting
//! machinery (every Route writes one).

use super::Candidate;

/// Appends a number with two decimals using integer arithmetic: `{:.2}` on a float takes the
/// exact-decimal path (Grisu with a Dragon fallback), which was ~1.5 µs of every Route call.
fn push_two(out: &mut String, x: f64) {
    let hundredths = (x * 100.0).round();
    if !hundredths.is_finite() || hundredths.abs() >= 1e15 {
        out.push_str(&format!("{x:.2}"));
        return;
    }
    let n = hundredths as i64;
    if n < 0 {
        out.push('-');
    }
    let n = n.unsigned_abs();
    match n / 100 {
        whole @ 0..=9 => out.push(char::from(b'0' + whole as u8)),
        whole => out.push_str(&whole.to_string()),
    }
    out.push('.');
    let frac = (n % 100) as u8;
    out.push(char::from(b'0' + frac / 10));
    out.push(char::from(b'0' + frac % 10));
}

/// How the plan chose, for the reason text.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Mode {
    Pinned,
    Average,
    PerTask,
}

/// What the reason is made from.
pub(super) struct Why<'a> {
    pub(super) candidates: &'a [Candidate],
    /// The curves the choice used: per task, a tier is held to the bar by its planning bound
    /// (`quality`), the estimate less its confidence margin, so the reason quotes that.
    pub(super) curves: &'a [crate::domain::learning::TierPlan],
    pub(super) band: usize,
    /// The task's premium gap, which moves each tier's bound.
    pub(super) gap: f64,
    pub(super) chosen: usize,
    pub(super) safe: usize,
    /// The tier an exploration pair also runs the task on (`explore_by = "pairs"`).
    pub(super) pair: Option<usize>,
    pub(super) complexity: f64,
    pub(super) scope: &'a str,
    pub(super) workflow: &'a str,
    pub(super) bar: f64,
    /// What the plan expects the scope to average on its traffic (`average` mode).
    pub(super) expected: f64,
    pub(super) mode: Mode,
    /// Whether the workflow (or its family) stands mostly on its own outcomes.
    pub(super) learned: bool,
}

/// A piece of a reason: text, or a number printed with two decimals.
enum Piece<'a> {
    Text(&'a str),
    Num(f64),
}

/// What an `average` plan claims of the scope's bar: that it keeps it only when its own
/// expectation on the scope's traffic reaches it; otherwise what it expects, short of it.
fn average_claim<'a>(w: &Why<'a>, how: &'a str) -> [Piece<'a>; 5] {
    use Piece::{Num, Text};
    if w.expected >= w.bar - 1e-6 {
        [
            Text(" keeps its average at the bar "),
            Num(w.bar),
            Text(how),
            Text(""),
            Text(""),
        ]
    } else {
        [
            Text(" expects an average of "),
            Num(w.expected),
            Text(", short of its bar "),
            Num(w.bar),
            Text(" on its recent traffic"),
        ]
    }
}

/// One line on why the chosen tier won, in the plan's own terms, assembled piece by piece (no
/// `format!` machinery on the hot path).
/// How a reason's exploration-pair clause begins; it runs to the next `; ` clause or the end.
const PAIR_CLAUSE: &str = "; exploring: also run it on ";

/// `reason` without its exploration-pair clause, for a decision that lost its pair (a budget
/// that bites allows no second call).
pub fn without_pair(reason: &str) -> String {
    let Some(start) = reason.find(PAIR_CLAUSE) else {
        return reason.to_string();
    };
    let rest = &reason[start + PAIR_CLAUSE.len()..];
    let end = rest
        .find("; ")
        .map_or(reason.len(), |i| start + PAIR_CLAUSE.len() + i);
    format!("{}{}", &reason[..start], &reason[end..])
}

pub(super) fn explain(w: &Why<'_>) -> String {
    use Piece::{Num, Text};
    let cands = w.candidates;
    let c = &cands[w.chosen];
    let basis = if w.learned {
        " from this workflow's outcomes"
    } else {
        " from the scope's prior"
    };
    let cheaper = w.chosen.checked_sub(1).map(|i| &cands[i]);
    // What the per-task rule compared with the bar: the estimate less its confidence margin.
    let bound = |i: usize| {
        w.curves
            .get(i)
            .map_or(0.0, |t| t.quality_for(w.band, w.gap))
    };
    const MARGIN: &str = " after its confidence margin,";
    let pieces: Vec<Piece<'_>> = if w.chosen != w.safe {
        vec![
            Text("exploring: "),
            Text(&c.name),
            Text(" instead of "),
            Text(&cands[w.safe].name),
            Text(" (complexity "),
            Num(w.complexity),
            Text("): a draw from each tier's estimate, predicted "),
            Num(c.predicted_quality),
            Text(" vs "),
            Num(cands[w.safe].predicted_quality),
            Text(", so scope "),
            Text(w.scope),
            Text(" keeps learning what each tier can do"),
        ]
    } else if cands.len() == 1 {
        vec![
            Text(&c.name),
            Text(" is the only allowed tier in scope "),
            Text(w.scope),
        ]
    } else {
        let mut p = vec![Text("complexity "), Num(w.complexity), Text(": ")];
        match (w.mode, cheaper) {
            (Mode::Pinned, _) => p.extend([
                Text(&c.name),
                Text(" by the pinned thresholds of scope "),
                Text(w.scope),
                Text(" (up to "),
                Num(c.threshold),
                Text(")"),
            ]),
            (Mode::PerTask, _) if bound(w.chosen) < w.bar - 1e-12 => p.extend([
                Text("no tier is expected to reach the bar "),
                Num(w.bar),
                Text(" on a task this hard, so the top tier: "),
                Text(&c.name),
                Text(" ("),
                Num(bound(w.chosen)),
                Text(MARGIN),
                Text(basis),
                Text(")"),
            ]),
            (Mode::PerTask, None) => p.extend([
                Text(&c.name),
                Text(", the cheapest tier, is expected to reach the bar "),
                Num(w.bar),
                Text(" ("),
                Num(bound(w.chosen)),
                Text(MARGIN),
                Text(basis),
                Text(")"),
            ]),
            (Mode::PerTask, Some(below)) => p.extend([
                Text(&c.name),
                Text(" is the cheapest tier expected to reach the bar "),
                Num(w.bar),
                Text(" ("),
                Num(bound(w.chosen)),
                Text(MARGIN),
                Text(basis),
                Text("; "),
                Text(&below.name),
                Text(" "),
                Num(bound(w.chosen - 1)),
                Text(")"),
            ]),
            (Mode::Average, None) => {
                p.extend([
                    Text(&c.name),
                    Text(" (predicted "),
                    Num(c.predicted_quality),
                    Text(basis),
                    Text(") is the cheapest tier; scope "),
                    Text(w.scope),
                ]);
                p.extend(average_claim(w, " with stronger tiers on harder tasks"));
            }
            (Mode::Average, Some(below)) => {
                p.extend([
                    Text(&c.name),
                    Text(" predicted "),
                    Num(c.predicted_quality),
                    Text(" vs "),
                    Num(below.predicted_quality),
                    Text(" on "),
                    Text(&below.name),
                    Text(basis),
                    Text(": worth the extra cost for scope "),
                    Text(w.scope),
                ]);
                p.extend(average_claim(w, ""));
            }
        }
        if w.workflow != crate::domain::labels::DEFAULT_WORKFLOW {
            p.extend([Text(" (workflow "), Text(w.workflow), Text(")")]);
        }
        if let Some(pair) = w.pair.and_then(|s| cands.get(s)) {
            p.extend([
                Text(PAIR_CLAUSE),
                Text(&pair.name),
                Text(" (predicted "),
                Num(pair.predicted_quality),
                Text(") as a shadow pair, so scope "),
                Text(w.scope),
                Text(" keeps learning what each tier can do"),
            ]);
        }
        p
    };
    let mut out = String::with_capacity(200);
    for p in &pieces {
        match p {
            Text(t) => out.push_str(t),
            Num(x) => push_two(&mut out, *x),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_loses_its_pair_clause_and_nothing_else() {
        let pair = "; exploring: also run it on small (predicted 0.87) as a shadow pair, so scope \
                    default keeps learning what each tier can do";
        let cap = "; expected_output_tokens capped at 100 by the policy's max_output_tokens";
        let head = "complexity 0.07: premium predicted 0.94";
        assert_eq!(without_pair(&format!("{head}{pair}")), head);
        assert_eq!(
            without_pair(&format!("{head}{pair}{cap}")),
            format!("{head}{cap}")
        );
        assert_eq!(without_pair(head), head);
    }

    #[test]
    fn two_decimals_without_float_formatting() {
        for (x, want) in [
            (0.0, "0.00"),
            (0.333, "0.33"),
            (0.8, "0.80"),
            (0.996, "1.00"),
            (1.0, "1.00"),
            (12.3456, "12.35"),
            (-0.25, "-0.25"),
            (-0.004, "0.00"),
        ] {
            let mut s = String::new();
            push_two(&mut s, x);
            assert_eq!(s, want, "{x}");
        }
        let mut s = String::new();
        push_two(&mut s, f64::NAN);
        assert_eq!(s, "NaN");
    }
}
