//! The deep linear network, its Gaussian teacher-student problem, loss,
//! gradient and the closed-form natural gradient.

use faer::linalg::solvers::DenseSolveCore;
use faer::{Mat, MatRef, Side};

use super::dense::{mul, mul3, sym_eigen};

use crate::Error;

/// Default relative cut-off of [`psd_pseudoinverse`]: eigenvalues below
/// `PINV_RCOND * lambda_max` are treated as zero.
///
/// Why this value: a Gram matrix `B^T M B` formed in f64 carries rounding of
/// order `k * n * eps * lambda_max` in its null directions (`k` the number of
/// factors multiplied, `n` the width; at most about `16 * 100 * 2.2e-16 = 4e-13`
/// in this module's uses), while the genuine eigenvalues of the factors of a
/// well-conditioned network are many orders larger. `1e-10` sits between the
/// two with a margin of more than two decades on the rounding side.
pub const PINV_RCOND: f64 = 1e-10;

/// The Gaussian teacher-student problem of a deep linear network: input second
/// moment `C = E[x x^T]`, output noise covariance `S` and teacher map `W*`.
///
/// The loss of an end-to-end map `W` is `1/2 tr(S^-1 (W - W*) C (W - W*)^T)`,
/// the expected negative log-likelihood minus its value at `W*`, i.e. the
/// excess loss.
#[derive(Clone, Debug)]
pub struct Problem {
    input_moment: Mat<f64>,
    noise_precision: Mat<f64>,
    teacher: Mat<f64>,
}

impl Problem {
    /// A problem from `C` (`n_0 x n_0`), `S` (`n_L x n_L`) and `W*` (`n_L x n_0`).
    ///
    /// Errors: [`Error::Shape`] if the shapes disagree, [`Error::NonFinite`] on
    /// NaN or infinity, [`Error::NotPositiveDefinite`] if `C` or `S` is not
    /// symmetric positive definite.
    pub fn new(
        input_moment: Mat<f64>,
        noise_covariance: Mat<f64>,
        teacher: Mat<f64>,
    ) -> Result<Problem, Error> {
        let (n_out, n_in) = (teacher.nrows(), teacher.ncols());
        if input_moment.nrows() != n_in || input_moment.ncols() != n_in {
            return Err(Error::Shape(format!(
                "input second moment C is {}x{}, the teacher needs {n_in}x{n_in}",
                input_moment.nrows(),
                input_moment.ncols()
            )));
        }
        if noise_covariance.nrows() != n_out || noise_covariance.ncols() != n_out {
            return Err(Error::Shape(format!(
                "noise covariance S is {}x{}, the teacher needs {n_out}x{n_out}",
                noise_covariance.nrows(),
                noise_covariance.ncols()
            )));
        }
        check_finite(input_moment.as_ref(), "input second moment C")?;
        check_finite(noise_covariance.as_ref(), "noise covariance S")?;
        check_finite(teacher.as_ref(), "teacher map W*")?;
        check_spd(input_moment.as_ref(), "input second moment C")?;
        check_spd(noise_covariance.as_ref(), "noise covariance S")?;
        let noise_precision = noise_covariance
            .llt(Side::Lower)
            .map_err(|_| Error::NotPositiveDefinite("noise covariance S".into()))?
            .inverse();
        let noise_precision = symmetrize(noise_precision.as_ref());
        Ok(Problem {
            input_moment,
            noise_precision,
            teacher,
        })
    }

    /// The input second moment `C`.
    pub fn input_moment(&self) -> MatRef<'_, f64> {
        self.input_moment.as_ref()
    }

    /// The output noise precision `S^-1`.
    pub fn noise_precision(&self) -> MatRef<'_, f64> {
        self.noise_precision.as_ref()
    }

    /// The teacher map `W*`.
    pub fn teacher(&self) -> MatRef<'_, f64> {
        self.teacher.as_ref()
    }

    /// Excess loss `1/2 tr(S^-1 E C E^T)` of the end-to-end map `w`, `E = w - W*`.
    pub fn loss_of_map(&self, w: MatRef<'_, f64>) -> Result<f64, Error> {
        self.check_map(w)?;
        let e = w - self.teacher.as_ref();
        Ok(0.5 * weighted_inner(self, e.as_ref(), e.as_ref()))
    }

    fn check_map(&self, w: MatRef<'_, f64>) -> Result<(), Error> {
        if w.nrows() != self.teacher.nrows() || w.ncols() != self.teacher.ncols() {
            return Err(Error::Shape(format!(
                "network maps R^{} to R^{}, the problem's teacher maps R^{} to R^{}",
                w.ncols(),
                w.nrows(),
                self.teacher.ncols(),
                self.teacher.nrows()
            )));
        }
        Ok(())
    }
}

/// `tr(S^-1 A C B^T)`, the inner product of end-to-end maps that the loss and
/// the Fisher metric use.
fn weighted_inner(p: &Problem, a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> f64 {
    let left = mul(p.noise_precision.as_ref(), a);
    let right = mul(b, p.input_moment.as_ref());
    let mut acc = 0.0;
    for j in 0..left.ncols() {
        for i in 0..left.nrows() {
            acc += left[(i, j)] * right[(i, j)];
        }
    }
    acc
}

/// A pair of matrices: `(W_{>i}, W_{<i})` for [`DeepLinear::side_products`],
/// `(B_i, A_i)` for [`DeepLinear::fisher_factors`].
pub type MatPair = (Mat<f64>, Mat<f64>);

/// How the natural-gradient factors are damped.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Damping {
    /// No damping: Moore-Penrose pseudo-inverses of the factors.
    None,
    /// Tikhonov damping: `per_factor` added to the diagonal of both factors,
    /// `(B_i + g I)^-1 grad_i (A_i + g I)^-1`.
    Tikhonov {
        /// The value `g > 0` added to each factor.
        per_factor: f64,
    },
    /// The Levenberg-Marquardt rule of docs/math.md section 2.4: `sqrt(g)` added to
    /// each factor, and after every step `g *= 3/2` when the ratio `rho` of
    /// actual to predicted loss decrease is below 1/4, `g *= 2/3` when it is
    /// above 3/4. The local model is the Gauss-Newton quadratic
    /// `grad . d + 1/2 d^T F d`, which for this model is exact to second order
    /// in the end-to-end map.
    LevenbergMarquardt {
        /// The starting value of `g` (the paper uses 1).
        initial: f64,
    },
}

/// A deep linear network `x -> W_L ... W_1 x` with any width profile.
///
/// Layers are stored first to last: `layers()[0]` is `W_1` (`n_1 x n_0`).
#[derive(Clone, Debug)]
pub struct DeepLinear {
    layers: Vec<Mat<f64>>,
}

impl DeepLinear {
    /// A network from its layers, first to last.
    ///
    /// Errors: [`Error::Shape`] if there are no layers or consecutive shapes do
    /// not chain, [`Error::NonFinite`] on NaN or infinity.
    pub fn new(layers: Vec<Mat<f64>>) -> Result<DeepLinear, Error> {
        if layers.is_empty() {
            return Err(Error::Shape(
                "a deep linear network needs at least one layer".into(),
            ));
        }
        for (i, w) in layers.iter().enumerate() {
            if w.nrows() == 0 || w.ncols() == 0 {
                return Err(Error::Shape(format!("layer {} has an empty shape", i + 1)));
            }
            check_finite(w.as_ref(), &format!("layer {}", i + 1))?;
        }
        for i in 1..layers.len() {
            if layers[i].ncols() != layers[i - 1].nrows() {
                return Err(Error::Shape(format!(
                    "layer {} is {}x{} but layer {} outputs {} values",
                    i + 1,
                    layers[i].nrows(),
                    layers[i].ncols(),
                    i,
                    layers[i - 1].nrows()
                )));
            }
        }
        Ok(DeepLinear { layers })
    }

    /// The layers `W_1 .. W_L`.
    pub fn layers(&self) -> &[Mat<f64>] {
        &self.layers
    }

    /// Number of layers `L`.
    pub fn depth(&self) -> usize {
        self.layers.len()
    }

    /// The width profile `[n_0, n_1, .., n_L]`.
    pub fn widths(&self) -> Vec<usize> {
        let mut w = vec![self.layers[0].ncols()];
        w.extend(self.layers.iter().map(|l| l.nrows()));
        w
    }

    /// Total number of parameters `sum_i n_i n_{i-1}`.
    pub fn parameter_count(&self) -> usize {
        self.layers.iter().map(|l| l.nrows() * l.ncols()).sum()
    }

    /// The end-to-end map `W = W_L ... W_1`.
    pub fn end_to_end(&self) -> Mat<f64> {
        let mut w = self.layers[0].clone();
        for l in &self.layers[1..] {
            w = mul(l.as_ref(), w.as_ref());
        }
        w
    }

    /// For every layer `i` (0-based), the pair `(W_{>i}, W_{<i})`: the product
    /// of the layers after it (identity for the last) and before it (identity
    /// for the first).
    pub fn side_products(&self) -> Vec<MatPair> {
        let depth = self.layers.len();
        let mut before = Vec::with_capacity(depth);
        let mut acc = Mat::<f64>::identity(self.layers[0].ncols(), self.layers[0].ncols());
        for l in &self.layers {
            before.push(acc.clone());
            acc = mul(l.as_ref(), acc.as_ref());
        }
        let mut after = vec![Mat::<f64>::zeros(0, 0); depth];
        let n_out = self.layers[depth - 1].nrows();
        let mut acc = Mat::<f64>::identity(n_out, n_out);
        for i in (0..depth).rev() {
            after[i] = acc.clone();
            acc = mul(acc.as_ref(), self.layers[i].as_ref());
        }
        after.into_iter().zip(before).collect()
    }

    /// The excess loss `1/2 tr(S^-1 (W - W*) C (W - W*)^T)`.
    pub fn loss(&self, problem: &Problem) -> Result<f64, Error> {
        problem.loss_of_map(self.end_to_end().as_ref())
    }

    /// The gradient of every layer,
    /// `dL/dW_i = W_{>i}^T S^-1 (W - W*) C W_{<i}^T`.
    pub fn gradient(&self, problem: &Problem) -> Result<Vec<Mat<f64>>, Error> {
        let sides = self.side_products();
        self.gradient_with(problem, &sides)
    }

    fn gradient_with(&self, problem: &Problem, sides: &[MatPair]) -> Result<Vec<Mat<f64>>, Error> {
        let w = self.end_to_end();
        problem.check_map(w.as_ref())?;
        let e = &w - problem.teacher();
        let middle = mul3(
            problem.noise_precision(),
            e.as_ref(),
            problem.input_moment(),
        );
        Ok(sides
            .iter()
            .map(|(after, before)| mul3(after.transpose(), middle.as_ref(), before.transpose()))
            .collect())
    }

    /// The per-layer Fisher factors `(B_i, A_i)`:
    /// backward `B_i = W_{>i}^T S^-1 W_{>i}` (`n_i x n_i`) and forward
    /// `A_i = W_{<i} C W_{<i}^T` (`n_{i-1} x n_{i-1}`).
    pub fn fisher_factors(&self, problem: &Problem) -> Result<Vec<MatPair>, Error> {
        problem.check_map(self.end_to_end().as_ref())?;
        Ok(factors_from(problem, &self.side_products()))
    }

    /// The closed-form natural-gradient direction (without the `-eta`):
    /// `d_i = (1/L) (B_i + g I)^+ dL/dW_i (A_i + g I)^+`, with `g = damping`
    /// added to each factor (0 for the undamped, exact form).
    ///
    /// The update is `W_i -> W_i - eta d_i`. Pseudo-inverses cut eigenvalues
    /// below [`PINV_RCOND`] times the largest.
    ///
    /// Errors: [`Error::InvalidConfig`] for a negative or non-finite damping,
    /// [`Error::Shape`] if the network does not fit the problem,
    /// [`Error::NonFinite`] if the weights have overflowed.
    pub fn natural_gradient_direction(
        &self,
        problem: &Problem,
        damping: f64,
    ) -> Result<Vec<Mat<f64>>, Error> {
        let sides = self.side_products();
        let grads = self.gradient_with(problem, &sides)?;
        self.direction_with(problem, damping, &sides, &grads)
    }

    fn direction_with(
        &self,
        problem: &Problem,
        damping: f64,
        sides: &[MatPair],
        grads: &[Mat<f64>],
    ) -> Result<Vec<Mat<f64>>, Error> {
        if !(damping.is_finite() && damping >= 0.0) {
            return Err(Error::InvalidConfig(format!(
                "damping must be finite and >= 0, got {damping}"
            )));
        }
        let factors = factors_from(problem, sides);
        let scale = 1.0 / self.depth() as f64;
        let mut out = Vec::with_capacity(self.depth());
        for (g, (b, a)) in grads.iter().zip(&factors) {
            let b_pinv = psd_pseudoinverse(add_diagonal(b, damping).as_ref(), PINV_RCOND)?;
            let a_pinv = psd_pseudoinverse(add_diagonal(a, damping).as_ref(), PINV_RCOND)?;
            let mut d = mul3(b_pinv.as_ref(), g.as_ref(), a_pinv.as_ref());
            d *= faer::Scale(scale);
            out.push(d);
        }
        Ok(out)
    }

    /// The first-order change of the end-to-end map caused by the layer
    /// changes `delta`: `sum_i W_{>i} delta_i W_{<i}`.
    pub fn map_change(&self, delta: &[Mat<f64>]) -> Result<Mat<f64>, Error> {
        self.check_like(delta)?;
        Ok(self.map_change_with(delta, &self.side_products()))
    }

    fn map_change_with(&self, delta: &[Mat<f64>], sides: &[MatPair]) -> Mat<f64> {
        let widths = self.widths();
        let mut out = Mat::<f64>::zeros(widths[self.depth()], widths[0]);
        for ((after, before), d) in sides.iter().zip(delta) {
            out += mul3(after.as_ref(), d.as_ref(), before.as_ref());
        }
        out
    }

    /// `W_i -> W_i + scale * delta_i` for every layer.
    pub fn apply(&mut self, delta: &[Mat<f64>], scale: f64) -> Result<(), Error> {
        self.check_like(delta)?;
        for (w, d) in self.layers.iter_mut().zip(delta) {
            *w += d * faer::Scale(scale);
        }
        Ok(())
    }

    fn check_like(&self, delta: &[Mat<f64>]) -> Result<(), Error> {
        if delta.len() != self.depth()
            || delta
                .iter()
                .zip(&self.layers)
                .any(|(d, w)| d.nrows() != w.nrows() || d.ncols() != w.ncols())
        {
            return Err(Error::Shape(
                "per-layer changes must have one matrix per layer, shaped like the layer".into(),
            ));
        }
        Ok(())
    }
}

/// What one optimizer step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// Excess loss before the step.
    pub loss_before: f64,
    /// Excess loss after the step.
    pub loss_after: f64,
    /// The damping parameter in force for the next step (`g` for
    /// Levenberg-Marquardt, the per-factor value for Tikhonov, 0 otherwise).
    pub damping: f64,
}

/// The exact (closed-form) natural gradient optimizer for deep linear
/// networks: `W_i -> W_i - eta d_i` with `d_i` from
/// [`DeepLinear::natural_gradient_direction`].
#[derive(Clone, Debug)]
pub struct LinearNaturalGradient {
    eta: f64,
    damping: Damping,
    g: f64,
}

impl LinearNaturalGradient {
    /// An optimizer with learning rate `eta > 0` and the given damping.
    ///
    /// Errors: [`Error::InvalidConfig`] for a non-positive or non-finite
    /// `eta`, or a negative or non-finite damping value.
    pub fn new(eta: f64, damping: Damping) -> Result<Self, Error> {
        if !(eta.is_finite() && eta > 0.0) {
            return Err(Error::InvalidConfig(format!(
                "learning rate eta must be finite and > 0, got {eta}"
            )));
        }
        let g = match damping {
            Damping::None => 0.0,
            Damping::Tikhonov { per_factor: g } | Damping::LevenbergMarquardt { initial: g } => {
                if !(g.is_finite() && g >= 0.0) {
                    return Err(Error::InvalidConfig(format!(
                        "damping must be finite and >= 0, got {g}"
                    )));
                }
                g
            }
        };
        Ok(LinearNaturalGradient { eta, damping, g })
    }

    /// The current damping parameter (see [`StepReport::damping`]).
    pub fn damping_value(&self) -> f64 {
        self.g
    }

    /// One step on `net`.
    pub fn step(&mut self, net: &mut DeepLinear, problem: &Problem) -> Result<StepReport, Error> {
        let loss_before = net.loss(problem)?;
        let per_factor = match self.damping {
            Damping::None => 0.0,
            Damping::Tikhonov { per_factor } => per_factor,
            Damping::LevenbergMarquardt { .. } => self.g.sqrt(),
        };
        let sides = net.side_products();
        let grads = net.gradient_with(problem, &sides)?;
        let d = net.direction_with(problem, per_factor, &sides, &grads)?;
        let predicted = if let Damping::LevenbergMarquardt { .. } = self.damping {
            // Decrease predicted by the Gauss-Newton model for the step -eta d:
            // -(grad . (-eta d) + 1/2 eta^2 d^T F d), with d^T F d the
            // weighted norm of the first-order map change.
            let lin: f64 = grads
                .iter()
                .zip(&d)
                .map(|(g, di)| frobenius_inner(g, di))
                .sum();
            let dw = net.map_change_with(&d, &sides);
            let quad = weighted_inner(problem, dw.as_ref(), dw.as_ref());
            Some(self.eta * lin - 0.5 * self.eta * self.eta * quad)
        } else {
            None
        };
        net.apply(&d, -self.eta)?;
        let loss_after = net.loss(problem)?;
        if let Some(predicted) = predicted {
            let rho = (loss_before - loss_after) / predicted;
            // A NaN rho (non-finite loss) counts as a failed step.
            if rho.is_nan() || rho < 0.25 {
                self.g *= 1.5;
            } else if rho > 0.75 {
                self.g *= 2.0 / 3.0;
            }
        }
        Ok(StepReport {
            loss_before,
            loss_after,
            damping: self.g,
        })
    }
}

/// One plain gradient-descent step `W_i -> W_i - lr dL/dW_i` on the exact
/// (expected) gradient; returns `(loss_before, loss_after)`.
pub fn gradient_descent_step(
    net: &mut DeepLinear,
    problem: &Problem,
    lr: f64,
) -> Result<(f64, f64), Error> {
    if !(lr.is_finite() && lr > 0.0) {
        return Err(Error::InvalidConfig(format!(
            "learning rate must be finite and > 0, got {lr}"
        )));
    }
    let before = net.loss(problem)?;
    let g = net.gradient(problem)?;
    net.apply(&g, -lr)?;
    Ok((before, net.loss(problem)?))
}

/// Whether the closed form is the exact natural gradient for this width
/// profile `[n_0, .., n_L]`: no hidden width `n_1 .. n_{L-1}` below
/// `max(n_0, n_L)` (see the module docs). The input and output widths
/// themselves are unconstrained, and a single layer is always exact.
pub fn is_exact_profile(widths: &[usize]) -> bool {
    match (widths.first(), widths.last()) {
        (Some(&n0), Some(&nl)) if widths.len() >= 2 => {
            widths[1..widths.len() - 1].iter().all(|&n| n >= n0.max(nl))
        }
        _ => false,
    }
}

/// Moore-Penrose pseudo-inverse of a symmetric positive semi-definite matrix
/// through its eigendecomposition; eigenvalues at or below
/// `rcond * lambda_max` (and all negative ones, which are rounding) count as
/// zero.
///
/// Errors: [`Error::Shape`] if `a` is not square, [`Error::NonFinite`] on NaN
/// or infinity, [`Error::InvalidConfig`] if the eigensolver fails.
pub fn psd_pseudoinverse(a: MatRef<'_, f64>, rcond: f64) -> Result<Mat<f64>, Error> {
    if a.nrows() != a.ncols() {
        return Err(Error::Shape(format!(
            "pseudo-inverse of a non-square {}x{} matrix",
            a.nrows(),
            a.ncols()
        )));
    }
    check_finite(a, "matrix to pseudo-invert")?;
    let n = a.nrows();
    let sym = symmetrize(a);
    let (s, u) = sym_eigen(sym.as_ref())?;
    let lambda_max = (0..n).map(|i| s[i]).fold(0.0f64, f64::max);
    let cut = rcond * lambda_max;
    let mut scaled = u.clone();
    for j in 0..n {
        let inv = if s[j] > cut && s[j] > 0.0 {
            1.0 / s[j]
        } else {
            0.0
        };
        for i in 0..n {
            scaled[(i, j)] *= inv;
        }
    }
    Ok(symmetrize(mul(scaled.as_ref(), u.transpose()).as_ref()))
}

fn factors_from(problem: &Problem, sides: &[MatPair]) -> Vec<MatPair> {
    sides
        .iter()
        .map(|(after, before)| {
            let b = mul3(after.transpose(), problem.noise_precision(), after.as_ref());
            let a = mul3(before.as_ref(), problem.input_moment(), before.transpose());
            (symmetrize(b.as_ref()), symmetrize(a.as_ref()))
        })
        .collect()
}

/// `(a + a^T) / 2`.
pub(crate) fn symmetrize(a: MatRef<'_, f64>) -> Mat<f64> {
    Mat::from_fn(a.nrows(), a.ncols(), |i, j| 0.5 * (a[(i, j)] + a[(j, i)]))
}

fn add_diagonal(a: &Mat<f64>, g: f64) -> Mat<f64> {
    let mut out = a.clone();
    for i in 0..out.nrows().min(out.ncols()) {
        out[(i, i)] += g;
    }
    out
}

/// `sum_ij a_ij b_ij`.
pub(crate) fn frobenius_inner(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    let mut acc = 0.0;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            acc += a[(i, j)] * b[(i, j)];
        }
    }
    acc
}

pub(crate) fn check_finite(a: MatRef<'_, f64>, what: &str) -> Result<(), Error> {
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            if !a[(i, j)].is_finite() {
                return Err(Error::NonFinite(format!(
                    "{what} has a non-finite entry at ({i}, {j})"
                )));
            }
        }
    }
    Ok(())
}

fn check_spd(a: MatRef<'_, f64>, what: &str) -> Result<(), Error> {
    let n = a.nrows();
    let scale = (0..n)
        .map(|i| a[(i, i)].abs())
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE);
    for j in 0..n {
        for i in 0..j {
            // Symmetric up to rounding of whatever produced it.
            if (a[(i, j)] - a[(j, i)]).abs() > 1e-12 * scale {
                return Err(Error::NotPositiveDefinite(format!(
                    "{what} is not symmetric at ({i}, {j})"
                )));
            }
        }
    }
    a.llt(Side::Lower)
        .map(|_| ())
        .map_err(|_| Error::NotPositiveDefinite(format!("{what} is not positive definite")))
}
