//! The normalized model spec: every supported architecture, whatever its config spelling, is described by these
//! few switches. The graph builder reads only this.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// SiLU-gated linear unit: silu(gate) * up (Llama, Mistral, Qwen).
    Silu,
    /// GELU (tanh approximation) gated linear unit (Gemma).
    GeluTanh,
}

/// How RoPE frequencies are scaled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (equivalently, every inverse frequency divided by it).
    Linear {
        factor: f64,
    },
    /// Llama 3.x: long wavelengths divided by `factor`, short kept, a smooth blend between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position: f64,
    },
}

/// Rotary embedding of one kind of layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeSpec {
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl RopeSpec {
    /// Inverse frequencies for the `head_dim / 2` rotated pairs (the "rotate half" convention: element `i` is
    /// paired with element `i + head_dim / 2`).
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f32> {
        let half = head_dim / 2;
        (0..half)
            .map(|i| {
                let base = 1.0 / self.theta.powf((2 * i) as f64 / head_dim as f64);
                let f = match self.scaling {
                    RopeScaling::None => base,
                    RopeScaling::Linear { factor } => base / factor,
                    RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position } => {
                        let low_wavelen = original_max_position / low_freq_factor;
                        let high_wavelen = original_max_position / high_freq_factor;
                        let wavelen = 2.0 * std::f64::consts::PI / base;
                        if wavelen > low_wavelen {
                            base / factor
                        } else if wavelen < high_wavelen {
                            base
                        } else {
                            let smooth = (original_max_position / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * base / factor + smooth * base
                        }
                    }
                };
                f as f32
            })
            .collect()
    }
}

/// Per-layer attention settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSpec {
    /// Sliding-window size: a query at position i sees keys at positions j with 0 <= i - j < window.
    pub window: Option<usize>,
    /// Index into [`ModelSpec::ropes`].
    pub rope: usize,
}

/// The supported model families (normalized from Hugging Face `architectures`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma3,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// The Hugging Face architecture name the checkpoint declared.
    pub architecture: String,
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub norm_eps: f32,
    /// RMSNorm multiplies by `1 + w` instead of `w` (Gemma).
    pub norm_unit_offset: bool,
    pub activation: Activation,
    /// Biases on the q, k and v projections (Qwen2; Llama's `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the attention output projection (Llama's `attention_bias`).
    pub o_bias: bool,
    /// Biases on the MLP projections (Llama's `mlp_bias`).
    pub mlp_bias: bool,
    /// Per-head RMSNorm of q and k before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Extra norms after attention and around the MLP (Gemma's post_attention / pre_ and post_feedforward norms).
    pub sandwich_norms: bool,
    /// Embeddings are multiplied by this (Gemma: sqrt(hidden_size)).
    pub embedding_scale: Option<f32>,
    /// Scale applied to q.k before softmax.
    pub attn_scale: f32,
    /// logits = cap * tanh(logits / cap).
    pub final_logit_softcap: Option<f32>,
    pub tie_embeddings: bool,
    pub ropes: Vec<RopeSpec>,
    pub layers: Vec<LayerSpec>,
    /// Longest sequence a plan accepts (prompt plus generated tokens).
    pub max_context: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// Rows of one prefill execution unless the context is shorter: long enough that the matmuls run at full
/// speed, short enough that the activations of a full-context prompt stay small.
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

impl ModelSpec {
    /// Rows of one prefill execution of a plan of this model: [`DEFAULT_PREFILL_CHUNK`], or the context where
    /// that is shorter.
    pub fn prefill_chunk(&self) -> u64 {
        DEFAULT_PREFILL_CHUNK.min(self.max_context) as u64
    }

    pub fn q_width(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_width(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}
