// A loaded transformer: hyper-parameters read from GGUF metadata and views of the weight tensors,
// which stay in the memory-mapped file (the Model keeps the GgufFile alive).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "tensor/rope.h"
#include "tensor/weight_view.h"

namespace qleap {

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
  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
};

// Expert weights of one MoE block: views into the 3-D ffn_{gate,up,down}_exps tensors (ne2 = expert),
// one per expert, and the optional shared expert with its sigmoid gate.
struct MoeWeights {
  WeightView router;  // ffn_gate_inp: n_embd -> n_expert logits
  std::vector<WeightView> gate, up, down;
  WeightView gate_shexp, up_shexp, down_shexp;
  std::vector<float> shexp_gate;  // ffn_gate_inp_shexp (n_embd); empty: shared expert ungated
  int n_expert() const { return int(gate.size()); }
  bool has_shared() const { return gate_shexp.data != nullptr; }
};

// Weights of one block. Optional tensors are empty (vectors) / null (views) when absent.
struct LayerWeights {
  std::vector<float> attn_norm, ffn_norm;
  std::vector<float> q_norm, k_norm;  // per-head RMSNorm weights (head_dim), qwen3
  std::vector<float> bq, bk, bv;      // projection biases, qwen2
  WeightView wq, wk, wv, wo;
  WeightView w_gate, w_up, w_down;
  bool qk_norm_full = false;  // q_norm / k_norm span the whole projection (olmoe), not one head
  MoeWeights moe;             // MoE blocks: router non-null and w_gate/w_up/w_down null
  bool is_moe() const { return moe.router.data != nullptr; }
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

  const HParams& hparams() const { return hp_; }
  const std::string& arch() const { return arch_name_; }
  const ArchDef& arch_def() const { return *arch_; }
  int n_vocab() const { return hp_.n_vocab; }
  const GgufFile& file() const { return *file_; }
  const ModelWeights& weights() const { return w_; }
  // The matrices repacked for the CPU kernels at load (backend/cpu/packed_weights.h).
  const PreparedWeights& prepared() const { return *prepared_; }

 private:
  std::shared_ptr<GgufFile> file_;
  const ArchDef* arch_;
  std::string arch_name_;
  HParams hp_;
  ModelWeights w_;
  std::shared_ptr<const PreparedWeights> prepared_;
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
