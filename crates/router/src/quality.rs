//! Routing quality metrics from RouteLLM, as `tollgate eval routing` reports them: the router
//! gives each prompt a score (higher means "send to the strong model"); sweeping a threshold
//! over the scores gives, for each share c of strong calls, an accuracy acc(c).
//!
//! - PGR(c) = (acc(c) − weak accuracy) / (strong accuracy − weak accuracy)
//! - APGR = the area under PGR over c in [0, 1] (random routing ≈ 0.5)
//! - CPT(x) = the smallest share of strong calls with PGR ≥ x

/// One labeled prompt: the router's score and whether each model answered it correctly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoredOutcome {
    pub score: f64,
    pub weak_correct: bool,
    pub strong_correct: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QualityCurve {
    /// (share of strong calls, PGR), from 0 strong calls to all of them.
    pub points: Vec<(f64, f64)>,
    pub weak_accuracy: f64,
    pub strong_accuracy: f64,
}

impl QualityCurve {
    /// Routes the highest scores to the strong model first. Ties keep the input order, so the
    /// caller decides how ties break (shuffle the rows with a seed).
    pub fn from_outcomes(outcomes: &[ScoredOutcome]) -> Option<QualityCurve> {
        let n = outcomes.len();
        if n == 0 {
            return None;
        }
        let count = |f: fn(&ScoredOutcome) -> bool| outcomes.iter().filter(|o| f(o)).count() as f64;
        let weak_accuracy = count(|o| o.weak_correct) / n as f64;
        let strong_accuracy = count(|o| o.strong_correct) / n as f64;
        let spread = strong_accuracy - weak_accuracy;
        if spread.abs() < f64::EPSILON {
            return None;
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|a, b| outcomes[*b].score.total_cmp(&outcomes[*a].score));
        let mut points = Vec::with_capacity(n + 1);
        let mut correct = count(|o| o.weak_correct);
        points.push((0.0, 0.0));
        for (routed, index) in order.iter().enumerate() {
            let outcome = outcomes[*index];
            correct += f64::from(u8::from(outcome.strong_correct))
                - f64::from(u8::from(outcome.weak_correct));
            let accuracy = correct / n as f64;
            points.push((
                (routed + 1) as f64 / n as f64,
                (accuracy - weak_accuracy) / spread,
            ));
        }
        Some(QualityCurve {
            points,
            weak_accuracy,
            strong_accuracy,
        })
    }

    /// Area under PGR(c), by the trapezoid rule.
    pub fn apgr(&self) -> f64 {
        self.points
            .windows(2)
            .map(|pair| (pair[1].0 - pair[0].0) * (pair[0].1 + pair[1].1) / 2.0)
            .sum()
    }

    /// The smallest share of strong calls that reaches PGR ≥ `target`; 1 when none does.
    pub fn cpt(&self, target: f64) -> f64 {
        self.points
            .iter()
            .find(|(_, pgr)| *pgr >= target)
            .map_or(1.0, |(share, _)| *share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(score: f64, weak_correct: bool, strong_correct: bool) -> ScoredOutcome {
        ScoredOutcome {
            score,
            weak_correct,
            strong_correct,
        }
    }

    #[test]
    fn a_perfect_router_sends_exactly_the_gains_up_first() {
        // Two prompts only the strong model solves, two both solve.
        let outcomes = [
            outcome(1.0, false, true),
            outcome(0.9, false, true),
            outcome(0.1, true, true),
            outcome(0.0, true, true),
        ];
        let curve = QualityCurve::from_outcomes(&outcomes).unwrap_or_else(|| panic!("curve"));
        assert_eq!(curve.cpt(1.0), 0.5);
        // PGR: 0, 0.5, 1, 1, 1 at c = 0, .25, .5, .75, 1 → area 0.0625+0.1875+0.25+0.25 = 0.75.
        assert!((curve.apgr() - 0.75).abs() < 1e-12, "{}", curve.apgr());
    }

    #[test]
    fn a_reversed_router_scores_below_random() {
        let outcomes = [
            outcome(0.0, false, true),
            outcome(0.1, false, true),
            outcome(0.9, true, true),
            outcome(1.0, true, true),
        ];
        let curve = QualityCurve::from_outcomes(&outcomes).unwrap_or_else(|| panic!("curve"));
        assert!((curve.apgr() - 0.25).abs() < 1e-12, "{}", curve.apgr());
        assert_eq!(curve.cpt(0.5), 0.75);
    }

    #[test]
    fn no_curve_without_rows_or_without_a_difference_between_models() {
        assert!(QualityCurve::from_outcomes(&[]).is_none());
        assert!(QualityCurve::from_outcomes(&[outcome(1.0, true, true)]).is_none());
    }
}
