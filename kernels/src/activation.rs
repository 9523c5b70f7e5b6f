//! Elementwise activations and their derivatives.

/// An elementwise activation `a = phi(s)`.
///
/// The derivative of each is expressed through the *output* `a`, so that a
/// forward pass that keeps only its outputs has all the backward pass needs:
/// `tanh' = 1 - a^2`, `sigmoid' = a (1 - a)`, `relu' = (a > 0)`, `identity' = 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// phi(s) = s.
    Identity,
    /// phi(s) = tanh(s).
    Tanh,
    /// phi(s) = 1 / (1 + exp(-s)).
    Sigmoid,
    /// phi(s) = max(s, 0).
    Relu,
}

impl Activation {
    /// phi(s), scalar reference.
    #[inline]
    pub fn apply(self, s: f32) -> f32 {
        match self {
            Activation::Identity => s,
            Activation::Tanh => s.tanh(),
            Activation::Sigmoid => 1.0 / (1.0 + (-s).exp()),
            Activation::Relu => s.max(0.0),
        }
    }

    /// phi'(s) written as a function of the output a = phi(s).
    #[inline]
    pub fn derivative_from_output(self, a: f32) -> f32 {
        match self {
            Activation::Identity => 1.0,
            // (1 - a)(1 + a) keeps its digits when |a| is near 1, unlike 1 - a^2.
            Activation::Tanh => (1.0 - a) * (1.0 + a),
            Activation::Sigmoid => a * (1.0 - a),
            Activation::Relu => {
                if a > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }
}
