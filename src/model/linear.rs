//! `AdaptedLinear`: a base linear (dense now; quantized with the quantization issue) plus an
//! optional adapter. Every projection of the model goes through [`AdaptedLinear::forward`], so an
//! adapter method plugs in by implementing [`Adapter`] and nothing else in the model changes.

use crate::kernels::qmatmul::PackedWeight;
use burn::tensor::Tensor;

/// The frozen base weight of a linear layer, `[out, in]` as in HF.
#[derive(Debug, Clone)]
pub enum BaseLinear {
    /// Dense f32 weight on the device.
    Dense(Tensor<2>),
    /// Block-quantized weight kept packed on the GPU, multiplied by our fused WGSL kernel.
    Packed(PackedWeight),
}

impl BaseLinear {
    /// `y = x · Wᵀ` for `x` of shape `[.., in]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        match self {
            BaseLinear::Dense(w) => {
                let [b, t, i] = x.dims();
                let out = w.dims()[0];
                x.reshape([b * t, i])
                    .matmul(w.clone().transpose())
                    .reshape([b, t, out])
            }
            BaseLinear::Packed(w) => {
                let [b, t, i] = x.dims();
                w.matmul_t(x.reshape([b * t, i]))
                    .reshape([b, t, w.layout.n])
            }
        }
    }

    /// `[out, in]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            BaseLinear::Dense(w) => w.dims(),
            BaseLinear::Packed(w) => [w.layout.n, w.layout.k],
        }
    }

    /// The dense weight (for merging, the weight-centric OFT baseline, gradients of the base in
    /// tests, and dumps); a packed weight is dequantized on the device for the occasion.
    pub fn dense(&self) -> Tensor<2> {
        match self {
            BaseLinear::Dense(w) => w.clone(),
            BaseLinear::Packed(w) => w.dequantize(),
        }
    }
}

/// An adapter on one linear layer (LoRA, OFT, ...). Methods live in `crate::adapters`; the model
/// only calls this trait.
pub trait Adapter: std::fmt::Debug + Send + Sync {
    /// The adapted output for input `x` given the frozen base layer.
    fn forward(&self, x: Tensor<3>, base: &BaseLinear) -> Tensor<3>;
    /// The trainable tensors with their peft key suffix (e.g. `lora_A.weight`).
    fn parameters(&self) -> Vec<(&'static str, Tensor<2>)>;
    /// Mutable access to the trainable tensors (the optimizer replaces them after each step).
    fn parameters_mut(&mut self) -> Vec<(&'static str, &mut Tensor<2>)>;
    /// Switch training behaviour (dropout) on or off.
    fn set_training(&mut self, _on: bool) {}
    /// In-place work on the parameters before each training step (COFT projection).
    fn prepare(&mut self) {}
    /// The merged dense weight `W'` that gives the same outputs without the adapter.
    fn merge(&self, base: &Tensor<2>) -> Tensor<2>;
    /// A copy for inference on the inner (non-autodiff) backend, dropout off. See
    /// [`crate::model::decoder::Decoder::without_autodiff`].
    fn without_autodiff(&self) -> Box<dyn Adapter>;
}

/// A base linear with an optional bias and an optional adapter.
#[derive(Debug)]
pub struct AdaptedLinear {
    /// Frozen base weight.
    pub base: BaseLinear,
    /// Frozen bias `[out]` (Qwen2's q/k/v). Added after the adapter's output, which is where
    /// peft's base layer adds it for both LoRA (`base(x) + b + lora(x)`) and OFT (`base(R·x) + b`).
    pub bias: Option<Tensor<1>>,
    /// Adapter in front of / beside the base, if any.
    pub adapter: Option<Box<dyn Adapter>>,
}

impl BaseLinear {
    /// The same weight on the inner (non-autodiff) backend; shares the device memory.
    pub fn without_autodiff(&self) -> BaseLinear {
        match self {
            BaseLinear::Dense(w) => BaseLinear::Dense(w.clone().inner()),
            BaseLinear::Packed(p) => BaseLinear::Packed(p.without_autodiff()),
        }
    }
}

impl AdaptedLinear {
    /// The layer and its adapter on the inner (non-autodiff) backend, for inference.
    pub fn without_autodiff(&self) -> AdaptedLinear {
        AdaptedLinear {
            base: self.base.without_autodiff(),
            bias: self.bias.clone().map(|b| b.inner()),
            adapter: self.adapter.as_ref().map(|a| a.without_autodiff()),
        }
    }

    /// A plain linear without adapter.
    pub fn new(weight: Tensor<2>) -> Self {
        Self {
            base: BaseLinear::Dense(weight),
            bias: None,
            adapter: None,
        }
    }

    /// Apply the layer (through its adapter when one is attached), then its bias.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let y = match &self.adapter {
            Some(a) => a.forward(x, &self.base),
            None => self.base.forward(x),
        };
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze::<3>(),
            None => y,
        }
    }
}
