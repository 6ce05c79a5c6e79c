// A loaded transformer: hyper-parameters read from GGUF metadata and views of the weight tensors,
// which stay in the memory-mapped file (the Model keeps the GgufFile alive).
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "tensor/rope.h"
#include "tensor/weight_view.h"

namespace qleap {

// The Gated DeltaNet (linear attention) layers of hybrid models (qwen35, qwen35moe, qwen3next), from the
// ssm.* keys as llama.cpp writes them. n_v_heads is 0 for other models.
struct DeltaNetParams {
  int conv_kernel = 0;   // ssm.conv_kernel
  int n_k_heads = 0;     // ssm.group_count
  int n_v_heads = 0;     // ssm.time_step_rank
  int head_k_dim = 0;    // ssm.state_size
  int head_v_dim = 0;    // ssm.inner_size / n_v_heads
  bool v_tiled = false;  // value head h reads key head h % n_k_heads (qwen35 files), else h / (n_v / n_k)
  int key_dim() const { return n_k_heads * head_k_dim; }
  int value_dim() const { return n_v_heads * head_v_dim; }
  int conv_dim() const { return 2 * key_dim() + value_dim(); }
};

// Multi-head Latent Attention (deepseek2: DeepSeek-V2/V3, Kimi-K2-style), from the attention.*_lora_rank
// keys. The KV cache holds one latent "head" per position, [k_pe (rope_dim) | c_kv (kv_lora_rank)]:
// HParams::head_dim is then rope_dim + kv_lora_rank and n_kv_heads 1 (model/mla_block.h).
struct MlaParams {
  int q_lora_rank = 0;   // 0: one query projection (DeepSeek-V2-Lite)
  int kv_lora_rank = 0;  // 0: not an MLA model
  int nope_dim = 0;      // qk_nope_head_dim
  int rope_dim = 0;      // qk_rope_head_dim
  int v_dim = 0;         // v_head_dim
  int qk_dim() const { return nope_dim + rope_dim; }
  int latent_dim() const { return rope_dim + kv_lora_rank; }
};

// How a MoE router turns logits into the top-k weights beyond plain softmax top-k (deepseek2).
enum class ExpertGating { kSoftmax, kSigmoid };

struct HParams {
  int n_layers = 0;
  int n_embd = 0;
  int n_ff = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;     // attention.key_length (default n_embd / n_heads)
  int n_ctx_train = 0;  // context_length (0 when absent)
  int n_vocab = 0;
  float rms_eps = 1e-5f;
  RopeParams rope;
  // Mixture of experts (0 / false for dense models). n_ff_exp: rows of one expert's gate/up
  // (expert_feed_forward_length, default n_ff); n_ff_shexp: the shared expert's (qwen2moe).
  int n_expert = 0;
  int n_expert_used = 0;
  int n_ff_exp = 0;
  int n_ff_shexp = 0;
  bool expert_weights_norm = false;  // renormalize the top-k softmax weights to sum to 1
  // DeepSeek-style routing (moe_block.h moe_route_grouped): sigmoid or softmax scores, selection among
  // the best expert_group_used of expert_group_count groups (sigmoid: a group's best two scores plus
  // the experts' selection bias; softmax: its best score), weights times expert_weights_scale.
  ExpertGating expert_gating = ExpertGating::kSoftmax;
  float expert_weights_scale = 1.0f;
  int n_expert_group = 0, n_expert_group_used = 0;
  bool routing_grouped() const {
    return expert_gating != ExpertGating::kSoftmax || expert_weights_scale != 1.0f || n_expert_group > 1;
  }
  MlaParams mla;
  bool is_mla() const { return mla.kv_lora_rank > 0; }
  // The experts' activation: 0 for silu(gate) * up; > 0 for gpt-oss's clamped SwiGLU with this alpha:
  // g = min(gate, limit), u = clamp(up, -limit, limit), (u + 1) * g * sigmoid(alpha * g).
  float expert_swiglu_alpha = 0;
  float expert_swiglu_limit = 0;
  // Architecture extras (gemma2/3, phi3), read by an ArchDef's read_hparams; the defaults change
  // nothing for the other architectures.
  float attn_scale = 0;          // attention score scale; 0: 1 / sqrt(head_dim)
  float embd_scale = 0;          // token embeddings are multiplied by this (gemma: sqrt(n_embd)); 0: not
  float attn_softcap = 0;        // attention logit soft-capping (gemma2); 0: none
  float final_softcap = 0;       // output logit soft-capping (gemma2): cap * tanh(logit / cap); 0: none
  int n_swa = 0;                 // sliding window in positions (0: none) of the layers marked in swa_layers
  std::vector<bool> swa_layers;  // per layer (empty: none)
  bool has_rope_swa = false;     // sliding-window layers rotate with rope_swa (gemma3), not rope
  RopeParams rope_swa;
  // The sliding window of layer il (0: full attention).
  int window(int il) const {
    return n_swa > 0 && size_t(il) < swa_layers.size() && swa_layers[size_t(il)] ? n_swa : 0;
  }
  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
  // Hybrid models: which layers are DeltaNet layers, with a recurrent state instead of a KV cache.
  DeltaNetParams delta;
  std::vector<uint8_t> recurrent;  // per layer, 1: DeltaNet; empty: every layer attends
  bool is_recurrent(int il) const { return !recurrent.empty() && recurrent[size_t(il)] != 0; }
  // How many of the layers [0, il) have a KV cache (il when none is recurrent) / a recurrent state:
  // a layer's index in the caches and states of a range of layers.
  int kv_layers_before(int il) const {
    int n = 0;
    for (int i = 0; i < il; ++i) n += is_recurrent(i) ? 0 : 1;
    return n;
  }
  int recurrent_layers_before(int il) const { return il - kv_layers_before(il); }
  int kv_layers() const { return kv_layers_before(n_layers); }  // the layers a KV cache holds
};

// Expert weights of one MoE block: views into the 3-D ffn_{gate,up,down}_exps tensors (ne2 = expert),
// one per expert, and the optional shared expert with its sigmoid gate.
struct MoeWeights {
  WeightView router;  // ffn_gate_inp: n_embd -> n_expert logits
  std::vector<WeightView> gate, up, down;
  WeightView gate_shexp, up_shexp, down_shexp;
  std::vector<float> shexp_gate;  // ffn_gate_inp_shexp (n_embd); empty: shared expert ungated
  std::vector<float> probs_bias;  // exp_probs_b (n_expert): added to the scores for selection only
  // gpt-oss: router bias (n_expert) and the experts' biases, [expert][n_ff_exp] for gate and up,
  // [expert][n_embd] for down; empty: none.
  std::vector<float> router_b, gate_b, up_b, down_b;
  int n_expert() const { return int(gate.size()); }
  bool has_shared() const { return gate_shexp.data != nullptr; }
};

// A DeltaNet layer's mixer (DeltaNetArgs, backend/backend.h): input projections (q|k|v into the conv,
// the output gate z, and the write strength and decay inputs, or qwen3next's fused ba), the conv kernel
// (conv_dim x kernel), dt bias, a = -exp(A_log), the gated norm and the output projection.
struct DeltaNetWeights {
  WeightView qkv, gate, beta, alpha, ba, out;
  std::vector<float> conv, dt_bias, a, norm;
  // qkv and gate when they were regrouped at load from a file's fused ssm_in (their rows).
  std::shared_ptr<const std::vector<uint8_t>> owned;
};

// Weights of one block. Optional tensors are empty (vectors) / null (views) when absent.
struct LayerWeights {
  std::vector<float> attn_norm, ffn_norm;
  std::vector<float> attn_post_norm, ffn_post_norm;  // gemma2/3: norms of the attention / FFN outputs
  std::vector<float> q_norm, k_norm;                 // per-head RMSNorm weights (head_dim), qwen3
  std::vector<float> bq, bk, bv;                     // projection biases, qwen2
  std::vector<float> bo;                             // output projection bias (gpt-oss)
  std::vector<float> attn_sinks;  // per query head sink logit (gpt-oss, KvShape::attn_sinks)
  WeightView wq, wk, wv, wo;
  WeightView w_gate, w_up, w_down;
  bool qk_norm_full = false;  // q_norm / k_norm span the whole projection (olmoe), not one head
  MoeWeights moe;             // MoE blocks: router non-null and w_gate/w_up/w_down null
  bool is_moe() const { return moe.router.data != nullptr; }
  // MLA (deepseek2): wq is attn_q or attn_q_b, wk attn_kv_a_mqa, wo attn_output; per head h, k_b[h]
  // (kv_lora_rank x nope_dim) takes q_nope into the latent space and v_b[h] (v_dim x kv_lora_rank) the
  // attended latent out of it. mla_owned holds k_b when it had to be made from a fused attn_kv_b.
  WeightView wq_a;
  std::vector<float> q_a_norm, kv_a_norm;
  std::vector<WeightView> k_b, v_b;
  std::shared_ptr<const std::vector<float>> mla_owned;
  bool is_mla() const { return wk.data != nullptr && !k_b.empty(); }
  DeltaNetWeights delta;  // DeltaNet layers (hybrid models): delta.out non-null and no attention weights
  bool is_recurrent() const { return delta.out.data != nullptr; }
};

struct ModelWeights {
  WeightView token_embd;
  WeightView output;  // token_embd when the embeddings are tied
  bool tied_embeddings = false;
  std::vector<float> output_norm;
  std::vector<LayerWeights> layers;
};

struct ArchDef;
class PreparedWeights;

class Model {
 public:
  Model(std::shared_ptr<GgufFile> file, const ArchDef& arch, HParams hp, ModelWeights w);
  ~Model();

  const HParams& hparams() const { return hp_; }
  const std::string& arch() const { return arch_name_; }
  const ArchDef& arch_def() const { return *arch_; }
  int n_vocab() const { return hp_.n_vocab; }
  const GgufFile& file() const { return *file_; }
  const ModelWeights& weights() const { return w_; }
  // Repacks the matrices of layers [first, end) (and the output head when `head`) into the CPU
  // kernels' layout (backend/cpu/packed_weights.h), once each. Called by the driver for the layers
  // its CPU segment runs, so layers placed on a GPU keep no host copy; a matrix never prepared is
  // still computed correctly from its GGUF layout, only more slowly. Thread-safe, but must not run
  // while another engine computes over the same layers (it rewrites their views). `experts`: the
  // routed experts' matrices too (MoE layers), when experts_fit_host_memory().
  void prepare_host(int first, int end, bool head, bool experts = false) const;
  // Whether repacking every routed expert is safe for memory: their GGUF bytes take at most half of
  // the machine's RAM. A repacked copy is anonymous memory that cannot be evicted, where the mapped
  // file's pages can (a MoE model larger than RAM runs from the page cache, slowly but without an
  // out-of-memory kill). False for a model without experts.
  bool experts_fit_host_memory() const;
  // Every matrix repacked so far.
  const PreparedWeights& prepared() const;

 private:
  std::shared_ptr<GgufFile> file_;
  const ArchDef* arch_;
  std::string arch_name_;
  HParams hp_;
  ModelWeights w_;
  mutable std::mutex prepare_mu_;
  mutable std::unique_ptr<PreparedWeights> prepared_;
  mutable std::vector<char> layer_prepared_, experts_prepared_;
  mutable bool head_prepared_ = false;
};

// The context a model gets when none is asked for: its training context (when the file gives one),
// at most 4096, so a model trained on 128K does not allocate 128K positions by default.
inline int default_context(int n_ctx_train) {
  return n_ctx_train > 0 && n_ctx_train < 4096 ? n_ctx_train : 4096;
}

// Opens and maps a GGUF model. Throws IoError / FormatError / Unsupported.
std::shared_ptr<const Model> load_model(const std::string& path);
// Builds a model over an already parsed file (tests, in-memory files).
std::shared_ptr<const Model> load_model(std::shared_ptr<GgufFile> file);

// Reads the hyper-parameters of `arch` from the file's metadata (exposed for tests and `qleap info`).
HParams read_hparams(const GgufFile& f);

}  // namespace qleap
