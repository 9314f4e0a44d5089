//! `tollgate eval routing`: replays a labeled file (the format of ../shared/routing-eval) through
//! the real routing score, prequentially: rows are shuffled with the seed, each prompt is scored
//! using only the outcomes of the rows before it, then its outcome becomes a case. Prints APGR,
//! CPT(50%), CPT(80%), the share of strong calls and the accuracy at the policy's own operating
//! point, next to a random router on the same rows. Needs no servers.
//!
//! The `subject` field of the data is never read (it is not even deserialized).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde::Deserialize;
use tollgate_router::classify::Classifier;
use tollgate_router::quality::{QualityCurve, ScoredOutcome};
use tollgate_router::scoring::{CaseEvidence, RoutingScorer};

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub command: EvalCommand,
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Routing quality on a labeled JSONL file (APGR, CPT, operating point, random baseline).
    Routing(RoutingEvalArgs),
}

#[derive(Debug, Args)]
pub struct RoutingEvalArgs {
    /// JSONL rows with `prompt`, `weak_correct`, `strong_correct`.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// One JSON object: apgr, cpt50, cpt80, strong_share, accuracy, random_apgr.
    #[arg(long)]
    pub json: bool,
    /// Draw the quality-versus-cost curve (with the random and perfect routers) as SVG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// One labeled row. Only these fields are read.
#[derive(Debug, Deserialize)]
pub struct Row {
    pub prompt: String,
    pub weak_correct: bool,
    pub strong_correct: bool,
}

/// What the eval reports.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RoutingReport {
    pub rows: usize,
    pub apgr: f64,
    pub cpt50: f64,
    pub cpt80: f64,
    pub strong_share: f64,
    pub accuracy: f64,
    pub random_apgr: f64,
    pub weak_accuracy: f64,
    pub strong_accuracy: f64,
}

/// A memory of past outcomes that the score consults: the case bank.
pub trait OutcomeMemory {
    /// Evidence about prompts like this one, from the outcomes recorded so far.
    fn evidence(
        &mut self,
        prompt: &str,
    ) -> Result<Option<CaseEvidence>, Box<dyn std::error::Error + Send + Sync>>;
    /// Records how both tiers did on this prompt.
    fn record(
        &mut self,
        prompt: &str,
        weak_correct: bool,
        strong_correct: bool,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}

/// The policy's operating point: a prompt goes to the strong tier when its score is at least
/// this many standard deviations above the mean prior.
pub const STRONG_THRESHOLD: f64 = 0.5;

pub fn run(args: EvalArgs) -> std::process::ExitCode {
    match args.command {
        EvalCommand::Routing(args) => super::block_on(async move { routing(args).await }),
    }
}

async fn routing(args: RoutingEvalArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let rows = load_rows(&args.data)?;
    let report = evaluate(rows, args.seed, None::<&mut NoMemory>, args.plot.as_deref())?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        writeln!(
            out,
            "rows {}   weak accuracy {:.3}   strong accuracy {:.3}",
            report.rows, report.weak_accuracy, report.strong_accuracy
        )?;
        writeln!(
            out,
            "APGR {:.3}   CPT(50%) {:.3}   CPT(80%) {:.3}",
            report.apgr, report.cpt50, report.cpt80
        )?;
        writeln!(
            out,
            "operating point: {:.1}% strong calls, accuracy {:.3}",
            report.strong_share * 100.0,
            report.accuracy
        )?;
        writeln!(
            out,
            "random router on the same rows: APGR {:.3}",
            report.random_apgr
        )?;
    }
    Ok(())
}

/// No memory: the policy routes on the classifier alone (case-bank coupling off).
#[derive(Debug)]
pub enum NoMemory {}

impl OutcomeMemory for NoMemory {
    fn evidence(
        &mut self,
        _: &str,
    ) -> Result<Option<CaseEvidence>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(None)
    }
    fn record(
        &mut self,
        _: &str,
        _: bool,
        _: bool,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(())
    }
}

fn load_rows(path: &Path) -> Result<Vec<Row>, Box<dyn std::error::Error + Send + Sync>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--data {}: {e}", path.display()))?;
    let mut rows = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: Row = serde_json::from_str(line)
            .map_err(|e| format!("{} line {}: {e}", path.display(), index + 1))?;
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(format!("--data {}: no rows", path.display()).into());
    }
    Ok(rows)
}

/// The prequential replay. With `memory_opt` None the score is the classifier's prior alone.
pub fn evaluate<M: OutcomeMemory>(
    mut rows: Vec<Row>,
    seed: u64,
    mut memory_opt: Option<&mut M>,
    plot_opt: Option<&Path>,
) -> Result<RoutingReport, Box<dyn std::error::Error + Send + Sync>> {
    let mut rng = SplitMix64(seed);
    shuffle(&mut rows, &mut rng);
    let classifier = Classifier::new()?;
    let mut scorer = RoutingScorer::new(if memory_opt.is_some() { 1.0 } else { 0.0 });
    let progress = Progress::new(rows.len());

    let mut outcomes = Vec::with_capacity(rows.len());
    let (mut strong_calls, mut correct) = (0usize, 0usize);
    for (done, row) in rows.iter().enumerate() {
        let prior = classifier.classify(&row.prompt, 0).score;
        let evidence_opt = match memory_opt.as_deref_mut() {
            Some(memory) => memory.evidence(&row.prompt)?,
            None => None,
        };
        let score = scorer.score(prior, evidence_opt);
        let strong = score >= STRONG_THRESHOLD;
        strong_calls += usize::from(strong);
        correct += usize::from(if strong {
            row.strong_correct
        } else {
            row.weak_correct
        });
        outcomes.push(ScoredOutcome {
            score,
            weak_correct: row.weak_correct,
            strong_correct: row.strong_correct,
        });
        if let Some(memory) = memory_opt.as_deref_mut() {
            memory.record(&row.prompt, row.weak_correct, row.strong_correct)?;
        }
        progress.tick(done + 1);
    }
    progress.finish();

    let curve = QualityCurve::from_outcomes(&outcomes)
        .ok_or("both models are equally accurate on these rows: no curve")?;
    let random: Vec<ScoredOutcome> = outcomes
        .iter()
        .map(|o| ScoredOutcome {
            score: rng.next_f64(),
            ..*o
        })
        .collect();
    let random_curve = QualityCurve::from_outcomes(&random).ok_or("no random curve")?;
    if let Some(path) = plot_opt {
        let perfect: Vec<ScoredOutcome> = outcomes
            .iter()
            .map(|o| ScoredOutcome {
                score: f64::from(u8::from(o.strong_correct)) - f64::from(u8::from(o.weak_correct)),
                ..*o
            })
            .collect();
        let perfect_curve = QualityCurve::from_outcomes(&perfect).ok_or("no perfect curve")?;
        std::fs::write(path, svg_plot(&curve, &random_curve, &perfect_curve))
            .map_err(|e| format!("--plot {}: {e}", path.display()))?;
    }
    let n = outcomes.len() as f64;
    Ok(RoutingReport {
        rows: outcomes.len(),
        apgr: curve.apgr(),
        cpt50: curve.cpt(0.5),
        cpt80: curve.cpt(0.8),
        strong_share: strong_calls as f64 / n,
        accuracy: correct as f64 / n,
        random_apgr: random_curve.apgr(),
        weak_accuracy: curve.weak_accuracy,
        strong_accuracy: curve.strong_accuracy,
    })
}

/// A small deterministic generator (SplitMix64): the same seed gives the same order everywhere.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn shuffle<T>(items: &mut [T], rng: &mut SplitMix64) {
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// A progress bar on a terminal, nothing otherwise.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(total: usize) -> Self {
        use std::io::IsTerminal;
        Self(
            std::io::stderr()
                .is_terminal()
                .then(|| indicatif::ProgressBar::new(total as u64)),
        )
    }
    fn tick(&self, done: usize) {
        if let Some(bar) = &self.0
            && done.is_multiple_of(64)
        {
            bar.set_position(done as u64);
        }
    }
    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// PGR against the share of strong calls, for the policy, a random and a perfect router.
fn svg_plot(policy: &QualityCurve, random: &QualityCurve, perfect: &QualityCurve) -> String {
    const W: f64 = 640.0;
    const H: f64 = 420.0;
    const PAD: f64 = 50.0;
    let max_pgr = perfect.points.iter().map(|p| p.1).fold(1.0_f64, f64::max);
    let x = |share: f64| PAD + share * (W - 2.0 * PAD);
    let y = |pgr: f64| H - PAD - pgr.max(0.0) / max_pgr * (H - 2.0 * PAD);
    let line = |curve: &QualityCurve, color: &str, label: &str, row: f64| {
        let step = (curve.points.len() / 400).max(1);
        let points: Vec<String> = curve
            .points
            .iter()
            .step_by(step)
            .chain(curve.points.last())
            .map(|(share, pgr)| format!("{:.1},{:.1}", x(*share), y(*pgr)))
            .collect();
        format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\
             <text x=\"{:.0}\" y=\"{:.0}\" fill=\"{color}\" font-size=\"13\">{label} (APGR {:.3})</text>",
            points.join(" "),
            PAD + 10.0,
            PAD + 15.0 * row,
            curve.apgr()
        )
    };
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <line x1=\"{PAD}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\
         <line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{b}\" stroke=\"black\"/>\
         <text x=\"{cx}\" y=\"{lb}\" font-size=\"13\" text-anchor=\"middle\">share of strong calls (cost)</text>\
         <text x=\"15\" y=\"{cy}\" font-size=\"13\" transform=\"rotate(-90 15 {cy})\" text-anchor=\"middle\">PGR (quality)</text>\
         {}{}{}</svg>\n",
        line(perfect, "#2a9d2a", "perfect", 1.0),
        line(policy, "#1f5fbf", "tollgate policy", 2.0),
        line(random, "#999999", "random", 3.0),
        b = H - PAD,
        r = W - PAD,
        cx = W / 2.0,
        lb = H - 15.0,
        cy = H / 2.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shuffle_is_deterministic_per_seed() {
        let mut a: Vec<u32> = (0..100).collect();
        let mut b = a.clone();
        shuffle(&mut a, &mut SplitMix64(7));
        shuffle(&mut b, &mut SplitMix64(7));
        assert_eq!(a, b);
        let mut c: Vec<u32> = (0..100).collect();
        shuffle(&mut c, &mut SplitMix64(8));
        assert_ne!(a, c);
    }

    #[test]
    fn longer_prompts_that_need_the_strong_model_give_an_apgr_above_random() {
        // Synthetic: long prompts are solved only by the strong model.
        let rows: Vec<Row> = (0..400)
            .map(|i| {
                let long = i % 3 == 0;
                Row {
                    prompt: if long {
                        "Explain step by step why ".repeat(20 + i % 7)
                    } else {
                        format!("short {i}")
                    },
                    weak_correct: !long,
                    strong_correct: true,
                }
            })
            .collect();
        let report =
            evaluate(rows, 1, None::<&mut NoMemory>, None).unwrap_or_else(|e| panic!("{e}"));
        // A perfect router reaches PGR 1 after a third of the calls: area 1 − (1/3)/2 ≈ 0.833.
        assert!(report.apgr > 0.82, "{report:?}");
        assert!((report.random_apgr - 0.5).abs() < 0.1, "{report:?}");
        assert!(report.accuracy > report.weak_accuracy);
    }
}
