//! What the online experiment measured: curves, the per-network summary
//! against SGD (time and examples to reach SGD's final test error), and its
//! CSV, JSON and terminal table.

use std::fmt::Write as _;

use super::experiment::json_f64;
use super::online_config::OnlineConfig;

/// A method of the online experiment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnlineMethod {
    /// The online natural gradient (minibatch statistics, sampled targets).
    NaturalGradient,
    /// Minibatch SGD.
    Sgd,
    /// The exact closed form on the population statistics.
    ExactClosedForm,
}

impl OnlineMethod {
    /// The name used in the outputs: `ng`, `sgd`, `exact`.
    pub fn name(self) -> &'static str {
        match self {
            OnlineMethod::NaturalGradient => "ng",
            OnlineMethod::Sgd => "sgd",
            OnlineMethod::ExactClosedForm => "exact",
        }
    }
}

/// One evaluation of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OnlinePoint {
    /// Steps taken.
    pub step: usize,
    /// Examples seen (`step x batch`; for the closed form, the natural
    /// gradient's minibatch per step).
    pub examples: usize,
    /// Training seconds so far (evaluation excluded).
    pub seconds: f64,
    /// Test error `1/2 mean |W x - y|^2`.
    pub test_error: f64,
}

/// One method's run on one network.
#[derive(Clone, Debug, PartialEq)]
pub struct OnlineRun {
    /// The network's name.
    pub network: String,
    /// Its width profile.
    pub widths: Vec<usize>,
    /// The method.
    pub method: OnlineMethod,
    /// Examples per step.
    pub batch: usize,
    /// Evaluations, the initial one first.
    pub curve: Vec<OnlinePoint>,
    /// Whether the run diverged (and stopped).
    pub diverged: bool,
    /// Natural-gradient steps taken back (0 for the other methods).
    pub rejected_steps: usize,
}

impl OnlineRun {
    /// The last evaluation.
    pub fn last(&self) -> OnlinePoint {
        // A run always has its initial evaluation.
        self.curve[self.curve.len() - 1]
    }

    /// The first `(seconds, examples)` at which the test error reached
    /// `target`, interpolated linearly between evaluations; `None` if never.
    pub fn reached(&self, target: f64) -> Option<(f64, f64)> {
        let c = &self.curve;
        if c[0].test_error <= target {
            return Some((0.0, 0.0));
        }
        c.windows(2).find(|w| w[1].test_error <= target).map(|w| {
            let (a, b) = (w[0], w[1]);
            let f = (a.test_error - target) / (a.test_error - b.test_error);
            (
                a.seconds + f * (b.seconds - a.seconds),
                a.examples as f64 + f * (b.examples as f64 - a.examples as f64),
            )
        })
    }

    /// The test error at `examples` seen, interpolated linearly in the
    /// examples between evaluations; `None` outside the curve.
    pub fn test_error_at(&self, examples: f64) -> Option<f64> {
        let c = &self.curve;
        c.windows(2)
            .find(|w| (w[0].examples as f64..=w[1].examples as f64).contains(&examples))
            .map(|w| {
                let (a, b) = (w[0], w[1]);
                let span = (b.examples - a.examples) as f64;
                let f = if span > 0.0 {
                    (examples - a.examples as f64) / span
                } else {
                    0.0
                };
                a.test_error + f * (b.test_error - a.test_error)
            })
    }
}

/// The runs on one network.
#[derive(Clone, Debug, PartialEq)]
pub struct OnlineNetworkReport {
    /// The network's name.
    pub network: String,
    /// Its width profile.
    pub widths: Vec<usize>,
    /// SGD's step on it.
    pub sgd_learning_rate: f32,
    /// The teacher's own test error (the output noise's floor).
    pub noise_floor: f64,
    /// One run per method.
    pub runs: Vec<OnlineRun>,
}

impl OnlineNetworkReport {
    /// The run of `method`, if there is one.
    pub fn run(&self, method: OnlineMethod) -> Option<&OnlineRun> {
        self.runs.iter().find(|r| r.method == method)
    }

    /// The target of the comparison: SGD's final test error.
    pub fn target(&self) -> Option<f64> {
        self.run(OnlineMethod::Sgd)
            .map(|r| r.last().test_error)
            .filter(|t| t.is_finite())
    }

    /// `(seconds, examples)` at which `method` reached SGD's final error.
    pub fn reached_target(&self, method: OnlineMethod) -> Option<(f64, f64)> {
        self.run(method)?.reached(self.target()?)
    }

    /// `(time, examples)` speedups of `method` over SGD to SGD's final
    /// error: SGD's seconds (examples) to it over `method`'s.
    pub fn speedup_vs_sgd(&self, method: OnlineMethod) -> Option<(f64, f64)> {
        let (s_sgd, e_sgd) = self.reached_target(OnlineMethod::Sgd)?;
        let (s, e) = self.reached_target(method)?;
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::INFINITY };
        Some((ratio(s_sgd, s), ratio(e_sgd, e)))
    }
}

/// Everything the online experiment produced.
#[derive(Clone, Debug, PartialEq)]
pub struct OnlineReport {
    /// The settings it ran with.
    pub config: OnlineConfig,
    /// One report per network.
    pub networks: Vec<OnlineNetworkReport>,
}

fn opt_json(v: Option<f64>) -> String {
    v.map_or("null".into(), json_f64)
}

/// An f32 setting as the decimal it was written as (0.01, not
/// 0.009999999776482582).
fn f32_json(x: f32) -> String {
    json_f64(x.to_string().parse::<f64>().unwrap_or(x as f64))
}

impl OnlineReport {
    /// The curves as CSV: `network,method,step,examples,seconds,test_error`.
    pub fn csv(&self) -> String {
        let mut out = String::from("network,method,step,examples,seconds,test_error\n");
        for n in &self.networks {
            for r in &n.runs {
                for p in &r.curve {
                    let _ = writeln!(
                        out,
                        "{},{},{},{},{:.6},{:e}",
                        r.network,
                        r.method.name(),
                        p.step,
                        p.examples,
                        p.seconds,
                        p.test_error
                    );
                }
            }
        }
        out
    }

    /// The summary as one JSON object: the settings, and per network and
    /// method the final test error, examples, training seconds, the seconds
    /// and examples to reach SGD's final error and the speedups over SGD.
    pub fn summary_json(&self) -> String {
        let c = &self.config;
        let networks: Vec<String> = self
            .networks
            .iter()
            .map(|n| {
                let runs: Vec<String> = n
                    .runs
                    .iter()
                    .map(|r| {
                        let last = r.last();
                        let reached = n.reached_target(r.method);
                        let speedup = n.speedup_vs_sgd(r.method);
                        format!(
                            "{{\"method\": \"{}\", \"batch\": {}, \"steps\": {}, \"examples\": {}, \"seconds\": {}, \"final_test_error\": {}, \"seconds_to_target\": {}, \"examples_to_target\": {}, \"speedup_vs_sgd\": {}, \"examples_speedup_vs_sgd\": {}, \"diverged\": {}, \"rejected_steps\": {}}}",
                            r.method.name(),
                            r.batch,
                            last.step,
                            last.examples,
                            json_f64(last.seconds),
                            json_f64(last.test_error),
                            opt_json(reached.map(|x| x.0)),
                            opt_json(reached.map(|x| x.1)),
                            opt_json(speedup.map(|x| x.0)),
                            opt_json(speedup.map(|x| x.1)),
                            r.diverged,
                            r.rejected_steps
                        )
                    })
                    .collect();
                let widths: Vec<String> = n.widths.iter().map(|w| w.to_string()).collect();
                format!(
                    "{{\"network\": \"{}\", \"widths\": [{}], \"sgd_learning_rate\": {}, \"noise_floor\": {}, \"target_test_error\": {}, \"runs\": [{}]}}",
                    n.network,
                    widths.join(", "),
                    f32_json(n.sgd_learning_rate),
                    json_f64(n.noise_floor),
                    opt_json(n.target()),
                    runs.join(", ")
                )
            })
            .collect();
        format!(
            "{{\"experiment\": \"linear-online\", \"examples\": {}, \"train_size\": {}, \"test_size\": {}, \"ng_batch\": {}, \"sgd_batch\": {}, \"ng_eta\": {}, \"ng_initial_damping\": {}, \"threads\": 1, \"seed\": {}, \"networks\": [{}]}}",
            c.examples,
            c.train_size,
            c.test_size,
            c.ng_batch,
            c.sgd_batch,
            f32_json(c.ng_eta),
            f32_json(c.ng_initial_damping),
            c.seed,
            networks.join(", ")
        )
    }

    /// The terminal table: per network and method, steps, examples,
    /// seconds, final test error, and time, examples and speedups to SGD's
    /// final test error.
    pub fn table(&self) -> String {
        let mut s = String::new();
        for n in &self.networks {
            let widths: Vec<String> = n.widths.iter().map(|w| w.to_string()).collect();
            let _ = writeln!(
                s,
                "\n{} ({}); noise floor {:.3e}; target = SGD's final test error {}",
                n.network,
                widths.join("-"),
                n.noise_floor,
                n.target().map_or("-".into(), |t| format!("{t:.3e}"))
            );
            let _ = writeln!(
                s,
                "method  batch  steps  examples  seconds  test error  secs to target  examples to target  speedup (time)  speedup (examples)"
            );
            for r in &n.runs {
                let last = r.last();
                let reached = n.reached_target(r.method);
                let speedup = n.speedup_vs_sgd(r.method);
                let _ = writeln!(
                    s,
                    "{:<6} {:>6} {:>6} {:>9} {:>8.2} {:>11.3e} {:>15} {:>19} {:>15} {:>19}{}",
                    r.method.name(),
                    r.batch,
                    last.step,
                    last.examples,
                    last.seconds,
                    last.test_error,
                    reached.map_or("never".into(), |x| format!("{:.2}", x.0)),
                    reached.map_or("never".into(), |x| format!("{:.0}", x.1)),
                    speedup.map_or("-".into(), |x| format!("{:.2}x", x.0)),
                    speedup.map_or("-".into(), |x| format!("{:.2}x", x.1)),
                    if r.diverged { "  (diverged)" } else { "" }
                );
            }
        }
        s
    }
}
