//! The graph builder: one graph per phase from the normalized spec, with the checkpoint's tensors checked
//! against the shapes the spec implies as they are referenced.

use crate::frontend::{Checkpoint, FrontendError};
use unicorn_ir::graph::rows;
use unicorn_ir::spec::ModelSpec;
use unicorn_ir::types::{DType, Dim, TensorType};
use unicorn_ir::{Graph, Module, NodeId, Op, Phase, WeightFormat, WeightId, WeightInfo, WeightRole};

/// The weight table under construction; a tensor used twice (tied embeddings) is one weight.
struct Weights<'a> {
    ck: &'a Checkpoint,
    table: Vec<WeightInfo>,
}

impl Weights<'_> {
    fn get(&mut self, name: &str, shape: &[usize], role: WeightRole) -> Result<WeightId, FrontendError> {
        if let Some(i) = self.table.iter().position(|w| w.name == name) {
            return Ok(WeightId(i as u32));
        }
        let t = self.ck.require(name, shape)?;
        self.table.push(WeightInfo {
            name: name.to_string(),
            shape: shape.to_vec(),
            role,
            format: match t.dtype {
                unicorn_ir::quant::SourceDType::F32 => WeightFormat::F32,
                unicorn_ir::quant::SourceDType::F16 => WeightFormat::F16,
                unicorn_ir::quant::SourceDType::Bf16 => WeightFormat::Bf16,
            },
        });
        Ok(WeightId(self.table.len() as u32 - 1))
    }
}

struct Builder<'w, 'a> {
    spec: &'w ModelSpec,
    w: &'w mut Weights<'a>,
    g: Graph,
}

impl Builder<'_, '_> {
    fn rows(&self) -> Dim {
        self.g.seq
    }

    fn node(&mut self, op: Op, width: usize, label: String, inputs: &[NodeId]) -> NodeId {
        let rows_dim = self.g.g[inputs[0]].ty.row_dim();
        self.g.add(op, rows(rows_dim, width), label, inputs)
    }

    fn norm(&mut self, x: NodeId, name: &str, len: usize) -> Result<NodeId, FrontendError> {
        let weight = self.w.get(name, &[len], WeightRole::Norm)?;
        let width = self.g.g[x].ty.row_width();
        let op = Op::RmsNorm { weight, eps: self.spec.norm_eps, unit_offset: self.spec.norm_unit_offset };
        Ok(self.node(op, width, name.trim_end_matches(".weight").into(), &[x]))
    }

    fn linear(&mut self, x: NodeId, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<NodeId, FrontendError> {
        let weight = self.w.get(&format!("{prefix}.weight"), &[out, inp], WeightRole::Matrix)?;
        let bias = if bias { Some(self.w.get(&format!("{prefix}.bias"), &[out], WeightRole::Bias)?) } else { None };
        Ok(self.node(Op::MatMul { weight, bias }, out, prefix.into(), &[x]))
    }

    fn layer(&mut self, x: NodeId, i: usize) -> Result<NodeId, FrontendError> {
        let s = self.spec;
        let (h, hd) = (s.hidden_size, s.head_dim);
        let p = format!("model.layers.{i}");
        let a = format!("{p}.self_attn");
        let n = self.norm(x, &format!("{p}.input_layernorm.weight"), h)?;
        let mut q = self.linear(n, &format!("{a}.q_proj"), s.q_width(), h, s.qkv_bias)?;
        let mut k = self.linear(n, &format!("{a}.k_proj"), s.kv_width(), h, s.qkv_bias)?;
        let v = self.linear(n, &format!("{a}.v_proj"), s.kv_width(), h, s.qkv_bias)?;
        if s.qk_norm {
            q = self.norm(q, &format!("{a}.q_norm.weight"), hd)?;
            k = self.norm(k, &format!("{a}.k_norm.weight"), hd)?;
        }
        let layer = &s.layers[i];
        let rope = Op::Rope { rope: layer.rope, head_dim: hd };
        q = self.node(rope.clone(), s.q_width(), format!("{a}.q_rope"), &[q]);
        k = self.node(rope, s.kv_width(), format!("{a}.k_rope"), &[k]);
        let attn = Op::Attention {
            layer: i,
            num_heads: s.num_heads,
            num_kv_heads: s.num_kv_heads,
            head_dim: hd,
            window: layer.window,
            scale: s.attn_scale,
        };
        let att = self.node(attn, s.q_width(), a.clone(), &[q, k, v]);
        let mut o = self.linear(att, &format!("{a}.o_proj"), h, s.q_width(), s.o_bias)?;
        let pre_mlp_norm = if s.sandwich_norms {
            o = self.norm(o, &format!("{p}.post_attention_layernorm.weight"), h)?;
            format!("{p}.pre_feedforward_layernorm.weight")
        } else {
            format!("{p}.post_attention_layernorm.weight")
        };
        let x = self.node(Op::Add, h, format!("{p}.attn_residual"), &[x, o]);
        let n = self.norm(x, &pre_mlp_norm, h)?;
        let m = format!("{p}.mlp");
        let f = s.intermediate_size;
        let gate = self.linear(n, &format!("{m}.gate_proj"), f, h, s.mlp_bias)?;
        let up = self.linear(n, &format!("{m}.up_proj"), f, h, s.mlp_bias)?;
        let act = self.node(Op::Glu { activation: s.activation }, f, format!("{m}.act"), &[gate, up]);
        let mut down = self.linear(act, &format!("{m}.down_proj"), h, f, s.mlp_bias)?;
        if s.sandwich_norms {
            down = self.norm(down, &format!("{p}.post_feedforward_layernorm.weight"), h)?;
        }
        Ok(self.node(Op::Add, h, format!("{p}.mlp_residual"), &[x, down]))
    }

    fn build(mut self) -> Result<Graph, FrontendError> {
        let s = self.spec;
        let (v, h) = (s.vocab_size, s.hidden_size);
        let tokens = self.g.add(Op::Tokens, TensorType::vector(DType::I32, self.rows()), "tokens", &[]);
        let table = self.w.get("model.embed_tokens.weight", &[v, h], WeightRole::Embedding)?;
        let mut x = self.g.add(Op::Embed { table, scale: 1.0 }, rows(self.rows(), h), "model.embed_tokens", &[tokens]);
        if let Some(factor) = s.embedding_scale {
            x = self.node(Op::Scale { factor }, h, "model.embed_scale".into(), &[x]);
        }
        for i in 0..s.num_layers {
            x = self.layer(x, i)?;
        }
        let out_rows = if self.rows() == Dim::Seq { Dim::Out } else { self.rows() };
        x = self.g.add(Op::SelectRows, rows(out_rows, h), "output_rows", &[x]);
        x = self.norm(x, "model.norm.weight", h)?;
        let head = if s.tie_embeddings { table } else { self.w.get("lm_head.weight", &[v, h], WeightRole::Matrix)? };
        let mut logits = self.node(Op::MatMul { weight: head, bias: None }, v, "lm_head".into(), &[x]);
        if let Some(cap) = s.final_logit_softcap {
            logits = self.node(Op::Softcap { cap }, v, "final_logit_softcap".into(), &[logits]);
        }
        self.node(Op::Output, v, "logits".into(), &[logits]);
        Ok(self.g)
    }
}

/// Build the module (prefill and decode graphs) for a checkpoint.
pub fn build_module(ck: &Checkpoint) -> Result<Module, FrontendError> {
    let mut weights = Weights { ck, table: Vec::new() };
    let mut graphs = Vec::new();
    for phase in [Phase::Prefill, Phase::Decode] {
        let b = Builder { spec: &ck.spec, w: &mut weights, g: Graph::new(phase) };
        graphs.push(b.build()?);
    }
    Ok(Module { spec: ck.spec.clone(), weights: weights.table, graphs })
}
