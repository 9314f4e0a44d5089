//! `tollgate eval routing`: replays a labeled file (the format of ../shared/routing-eval) through
//! the real routing score and a real case bank, prequentially: rows are shuffled with the seed,
//! each prompt is routed using only the outcomes of the rows before it, then its outcome becomes
//! two cases (how the cheap tier and how the premium tier did). Prints APGR, CPT(50%), CPT(80%),
//! the share of strong calls and the accuracy at the policy's own operating point, next to a
//! random router on the same rows. Needs no servers: the case bank is the library itself
//! (`CaseService` over a `SqliteCaseStore` in a temporary directory, the built-in embedder).
//!
//! The `subject` field of the data is never read (it is not even deserialized).

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde::Deserialize;
use tollgate_casebank::embed::HashEmbedder;
use tollgate_casebank::model::{Case, CaseAction, EstimateQuery, Estimation, Tier as CaseTier};
use tollgate_casebank::service::CaseService;
use tollgate_casebank::store::SqliteCaseStore;
use tollgate_kit::money::Usd;
use tollgate_router::classify::Classifier;
use tollgate_router::policy::{
    self, CasebankSignal, Hints, PolicyConfig, RoutingInput, TierEstimate,
};
use tollgate_router::quality::{QualityCurve, ScoredOutcome};
use tollgate_router::scoring::{CaseEvidence, RoutingScorer};
use tollgate_router::tier::Tier;

pub type EvalResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

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
    /// What the router remembers of past outcomes: a real case bank in a temporary embedded
    /// store, or nothing (the classifier alone).
    #[arg(long, value_enum, default_value_t = MemoryKind::Casebank)]
    pub memory: MemoryKind,
    /// A routing policy file (the keys of `[router.policy]`) to replay instead of the built-in
    /// defaults, to see a policy's operating point before rolling it out.
    #[arg(long)]
    pub policy: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MemoryKind {
    None,
    Casebank,
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

/// What the memory says about one prompt, in the two forms the eval needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Recall {
    /// For the ranking score (the APGR/CPT curve).
    pub evidence_opt: Option<CaseEvidence>,
    /// For the policy's own decision (the operating point), as the live router passes it.
    pub signal: CasebankSignal,
}

/// A memory of past outcomes that the routing consults: the case bank.
pub trait OutcomeMemory {
    /// What the outcomes recorded so far say about prompts like this one.
    fn recall(&mut self, prompt: &str) -> impl Future<Output = EvalResult<Recall>>;
    /// Records how both tiers did on this prompt.
    fn record(
        &mut self,
        prompt: &str,
        weak_correct: bool,
        strong_correct: bool,
    ) -> impl Future<Output = EvalResult<()>>;
}

pub fn run(args: EvalArgs) -> std::process::ExitCode {
    match args.command {
        EvalCommand::Routing(args) => super::block_on(async move { routing(args).await }),
    }
}

async fn routing(args: RoutingEvalArgs) -> EvalResult<()> {
    let rows = load_rows(&args.data)?;
    let plot_opt = args.plot.as_deref();
    let policy = match &args.policy {
        Some(path) => policy::reload::load_file(path)?.0,
        None => PolicyConfig::default(),
    };
    let report = match args.memory {
        MemoryKind::None => evaluate(rows, args.seed, &policy, &mut NoMemory, plot_opt).await?,
        MemoryKind::Casebank => {
            let mut memory = CasebankMemory::open_temporary(&policy).await?;
            evaluate(rows, args.seed, &policy, &mut memory, plot_opt).await?
        }
    };
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
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMemory;

impl OutcomeMemory for NoMemory {
    async fn recall(&mut self, _: &str) -> EvalResult<Recall> {
        Ok(Recall {
            evidence_opt: None,
            signal: CasebankSignal::Off,
        })
    }
    async fn record(&mut self, _: &str, _: bool, _: bool) -> EvalResult<()> {
        Ok(())
    }
}

/// The tenant every case of a run belongs to.
const EVAL_TENANT: &str = "eval";

/// Nearest cases behind the ranking score's evidence. Each row is stored as two cases (cheap and
/// premium, same text), so this is 32 past prompts: K = 32-64 beat K = 8 for routing estimates
/// in the research (crates/router/research), and one value serves every data set.
pub const SCORE_NEIGHBOURS: usize = 64;
/// Every neighbour counts, weighted by its similarity (the estimate clamps weights at 0.01):
/// a similarity floor would turn most prompts of a diverse workload into cold starts.
pub const SCORE_MIN_SIMILARITY: f64 = -1.0;

/// The real case bank: `CaseService` over a `SqliteCaseStore` in a temporary directory (removed
/// when the memory is dropped) with the built-in embedder, the embedded default of `tollgate
/// serve`. Only the base rate of the gain is kept here, as a running mean.
#[derive(Debug)]
pub struct CasebankMemory {
    service: CaseService,
    /// The policy's own query: `[router.policy.casebank]` neighbours and min_similarity.
    policy_neighbours: usize,
    policy_min_similarity: f64,
    recorded: u64,
    gain_sum: f64,
    // Last: removed after the service (and its connections) are dropped.
    _dir: TempDir,
}

impl CasebankMemory {
    pub async fn open_temporary(policy: &PolicyConfig) -> EvalResult<Self> {
        let dir = TempDir::new()?;
        let store = SqliteCaseStore::open(&dir.0.join("casebank.sqlite")).await?;
        // The eval is not latency bound: a slow scan on a loaded machine must not read as an
        // unavailable case bank.
        let service = CaseService::new(
            Arc::new(store),
            Arc::new(HashEmbedder::default()),
            Duration::from_secs(60),
        );
        Ok(Self {
            service,
            policy_neighbours: usize::try_from(policy.casebank.neighbours)?,
            policy_min_similarity: policy.casebank.min_similarity,
            recorded: 0,
            gain_sum: 0.0,
            _dir: dir,
        })
    }

    async fn estimate(
        &self,
        prompt: &str,
        neighbours: usize,
        min_similarity: f64,
    ) -> EvalResult<Estimation> {
        // No candidates: an estimate for every tier seen among the neighbours, as the live
        // router asks (crates/router/src/pipeline/routing.rs).
        Ok(self
            .service
            .estimate(EstimateQuery {
                tenant: EVAL_TENANT.into(),
                task: prompt.into(),
                candidates: Vec::new(),
                neighbours,
                agent_opt: None,
                min_similarity,
            })
            .await?)
    }

    fn case(&self, prompt: &str, tier: CaseTier, correct: bool) -> Case {
        Case {
            // Deterministic ids: the store breaks similarity ties by id.
            id: format!("{:08}-{}", self.recorded, tier.name()),
            tenant: EVAL_TENANT.into(),
            agent: String::new(),
            task: prompt.into(),
            action: CaseAction {
                tier,
                ..CaseAction::default()
            },
            outcome: String::new(),
            reward: Some(if correct { 1.0 } else { 0.0 }),
            cost_usd: Usd::default(),
            latency_micros: 0,
            tags: Vec::new(),
            created_at: chrono::Utc::now(),
            embedder: String::new(),
            request_id: String::new(),
        }
    }
}

/// The evidence of an estimation for the ranking score: the gain of premium over cheap among
/// the neighbours (the same past prompts carry both, so this is their mean gain).
fn case_evidence(estimation: &Estimation, base_gain: f64) -> Option<CaseEvidence> {
    if estimation.cold_start {
        return None;
    }
    let of = |tier| {
        estimation
            .estimates
            .iter()
            .find(|e| e.action.tier == tier && e.evidence > 0)
    };
    let (cheap, premium) = (of(CaseTier::Cheap)?, of(CaseTier::Premium)?);
    let confidence = cheap.confidence.min(premium.confidence);
    Some(CaseEvidence {
        gain: premium.success - cheap.success,
        base_gain,
        confidence,
    })
}

/// The policy's view of an estimation, as the live router builds it from the Estimate answer.
fn casebank_signal(estimation: &Estimation) -> CasebankSignal {
    if estimation.cold_start {
        return CasebankSignal::ColdStart;
    }
    let estimates = estimation
        .estimates
        .iter()
        .filter_map(|e| {
            let tier = match e.action.tier {
                CaseTier::Local => Tier::Local,
                CaseTier::Cheap => Tier::Cheap,
                CaseTier::Standard => Tier::Standard,
                CaseTier::Premium => Tier::Premium,
                CaseTier::Unspecified => return None,
            };
            Some(TierEstimate {
                tier,
                success: e.success,
                evidence: e.evidence,
                confidence: e.confidence,
            })
        })
        .collect();
    CasebankSignal::Estimates(estimates)
}

impl OutcomeMemory for CasebankMemory {
    async fn recall(&mut self, prompt: &str) -> EvalResult<Recall> {
        if self.recorded == 0 {
            return Ok(Recall {
                evidence_opt: None,
                signal: CasebankSignal::ColdStart,
            });
        }
        let base_gain = self.gain_sum / self.recorded as f64;
        let for_score = self
            .estimate(prompt, SCORE_NEIGHBOURS, SCORE_MIN_SIMILARITY)
            .await?;
        let for_policy = self
            .estimate(prompt, self.policy_neighbours, self.policy_min_similarity)
            .await?;
        Ok(Recall {
            evidence_opt: case_evidence(&for_score, base_gain),
            signal: casebank_signal(&for_policy),
        })
    }

    async fn record(
        &mut self,
        prompt: &str,
        weak_correct: bool,
        strong_correct: bool,
    ) -> EvalResult<()> {
        self.service
            .store_case(self.case(prompt, CaseTier::Cheap, weak_correct))
            .await?;
        self.service
            .store_case(self.case(prompt, CaseTier::Premium, strong_correct))
            .await?;
        self.recorded += 1;
        self.gain_sum += f64::from(u8::from(strong_correct)) - f64::from(u8::from(weak_correct));
        Ok(())
    }
}

/// A directory of its own under the system's temporary directory, removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("tollgate-eval-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover directory under the temporary directory is harmless.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load_rows(path: &Path) -> EvalResult<Vec<Row>> {
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

/// The prequential replay: each row is routed with the memory of the rows before it, then
/// recorded in it. With [`NoMemory`] the score is the classifier's prior alone.
///
/// Two views of the same routing: the ranking score (classifier prior plus case-bank evidence,
/// [`RoutingScorer`]) sweeps every share of strong calls for APGR and CPT; the operating point
/// is where `policy` itself puts each prompt ([`policy::decide`], as the live router calls it):
/// a strong call is any tier above cheap.
pub async fn evaluate<M: OutcomeMemory>(
    mut rows: Vec<Row>,
    seed: u64,
    policy: &PolicyConfig,
    memory: &mut M,
    plot_opt: Option<&Path>,
) -> EvalResult<RoutingReport> {
    let mut rng = SplitMix64(seed);
    shuffle(&mut rows, &mut rng);
    let classifier = Classifier::new()?;
    let mut scorer = RoutingScorer::new(1.0);
    let progress = Progress::new(rows.len());

    let mut outcomes = Vec::with_capacity(rows.len());
    let (mut strong_calls, mut correct) = (0usize, 0usize);
    for (done, row) in rows.iter().enumerate() {
        let classification = classifier.classify(&row.prompt, 0);
        let recall = memory.recall(&row.prompt).await?;
        let score = scorer.score(classification.score, recall.evidence_opt);
        let decision = policy::decide(
            policy,
            &RoutingInput {
                agent: "",
                text: &row.prompt,
                has_images: false,
                classification: &classification,
                casebank: &recall.signal,
                hints: &Hints::default(),
                budget_soft_limit: false,
            },
        );
        let strong = decision.tier > Tier::Cheap;
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
        memory
            .record(&row.prompt, row.weak_correct, row.strong_correct)
            .await?;
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
        let n = outcomes.len() as f64;
        let operating_point = (
            strong_calls as f64 / n,
            (correct as f64 / n - curve.weak_accuracy)
                / (curve.strong_accuracy - curve.weak_accuracy),
        );
        std::fs::write(
            path,
            svg_plot(&curve, operating_point, &random_curve, &perfect_curve),
        )
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
        Self(std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} rows  {elapsed} elapsed, about {eta} left",
            ) {
                bar.set_style(style);
            }
            bar
        }))
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
/// The policy's own operating point (share of strong calls, PGR) is marked on its curve.
fn svg_plot(
    policy: &QualityCurve,
    operating_point: (f64, f64),
    random: &QualityCurve,
    perfect: &QualityCurve,
) -> String {
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
         {}{}{}\
         <circle cx=\"{ox:.1}\" cy=\"{oy:.1}\" r=\"5\" fill=\"#d62828\"/>\
         <text x=\"{lx:.0}\" y=\"{ly:.0}\" fill=\"#d62828\" font-size=\"13\">policy operating point \
         ({os:.0}% strong calls, PGR {op:.2})</text></svg>\n",
        line(perfect, "#2a9d2a", "perfect", 1.0),
        line(policy, "#1f5fbf", "tollgate routing score", 2.0),
        line(random, "#999999", "random", 3.0),
        ox = x(operating_point.0),
        oy = y(operating_point.1),
        lx = PAD + 10.0,
        ly = PAD + 60.0,
        os = operating_point.0 * 100.0,
        op = operating_point.1,
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

    fn block_on(future: impl Future<Output = EvalResult<RoutingReport>>) -> RoutingReport {
        block_on_unit(future)
    }

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
        let report = block_on(evaluate(
            rows,
            1,
            &PolicyConfig::default(),
            &mut NoMemory,
            None,
        ));
        // A perfect router reaches PGR 1 after a third of the calls: area 1 − (1/3)/2 ≈ 0.833.
        assert!(report.apgr > 0.82, "{report:?}");
        assert!((report.random_apgr - 0.5).abs() < 0.1, "{report:?}");
        assert!(report.accuracy > report.weak_accuracy);
    }

    /// 200 rows: short "convert" prompts the weak model fails, and longer chatty arithmetic
    /// prompts it solves. Length points the wrong way, so the classifier alone ranks the wrong
    /// family first; the case bank learns the failing family from its first outcomes.
    fn family_rows() -> Vec<Row> {
        let units = ["kelvin", "rankine", "fahrenheit", "celsius", "reaumur"];
        (0..200)
            .map(|i| {
                let hard = i % 4 == 0;
                Row {
                    prompt: if hard {
                        format!("Convert {i} {} to {}.", units[i % 5], units[(i + 2) % 5])
                    } else {
                        format!(
                            "Hello there, could you kindly tell me what {i} plus {} makes when \
                             added together? Thank you so much for your help with this one.",
                            i * 7 + 1
                        )
                    },
                    weak_correct: !hard,
                    strong_correct: true,
                }
            })
            .collect()
    }

    #[test]
    fn the_case_bank_learns_a_family_the_weak_model_fails_and_beats_no_memory() {
        let policy = PolicyConfig::default();
        let none = block_on(evaluate(family_rows(), 5, &policy, &mut NoMemory, None));
        let casebank = block_on(async {
            let mut memory = CasebankMemory::open_temporary(&policy).await?;
            evaluate(family_rows(), 5, &policy, &mut memory, None).await
        });
        assert!(
            none.apgr < 0.5,
            "length points the wrong way here: {none:?}"
        );
        assert!(casebank.apgr > 0.75, "{casebank:?}");
        assert!(casebank.apgr > none.apgr + 0.25, "{casebank:?} vs {none:?}");
        // The policy's own decision learns it too: the case bank's "cheap failed on similar
        // tasks" rule sends the family up, and "cheap succeeded" keeps the rest cheap.
        assert!(
            casebank.accuracy > none.accuracy + 0.15,
            "{casebank:?} vs {none:?}"
        );
        assert!(
            casebank.strong_share < none.strong_share,
            "{casebank:?} vs {none:?}"
        );
        assert_eq!(casebank.rows, 200);
        // Same rows, same seed: the random reference is the same for both memories.
        assert_eq!(casebank.random_apgr, none.random_apgr);
    }

    #[test]
    fn the_temporary_case_bank_is_removed_afterwards() {
        let dir = block_on_unit(async {
            let memory = CasebankMemory::open_temporary(&PolicyConfig::default()).await?;
            let dir = memory._dir.0.clone();
            assert!(dir.join("casebank.sqlite").exists());
            drop(memory);
            Ok(dir)
        });
        assert!(!dir.exists(), "{} left behind", dir.display());
    }

    fn block_on_unit<T>(future: impl Future<Output = EvalResult<T>>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
            .block_on(future)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}
