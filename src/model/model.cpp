#include "model/model.h"

#include <fmt/format.h>

#if defined(__linux__)
#include <unistd.h>
#endif

#include "backend/cpu/packed_weights.h"
#include "core/error.h"
#include "model/blocks.h"
#include "model/delta_net_block.h"

namespace qleap {

extern const ArchDef kArchLlama;
extern const ArchDef kArchQwen2;
extern const ArchDef kArchQwen3;
extern const ArchDef kArchQwen2Moe;
extern const ArchDef kArchQwen3Moe;
extern const ArchDef kArchOlmoe;
extern const ArchDef kArchQwen35;
extern const ArchDef kArchQwen35Moe;
extern const ArchDef kArchQwen3Next;
extern const ArchDef kArchGemma2;
extern const ArchDef kArchGemma3;
extern const ArchDef kArchPhi3;
extern const ArchDef kArchDeepseek2;
extern const ArchDef kArchGptOss;

namespace {

// An explicit table rather than self-registration: static constructors in a static library are
// dropped by the linker when nothing references their object file.
const ArchDef* const kArchs[] = {&kArchLlama,  &kArchQwen2,  &kArchQwen3,     &kArchQwen2Moe,  &kArchQwen3Moe,
                                 &kArchOlmoe,  &kArchQwen35, &kArchQwen35Moe, &kArchQwen3Next, &kArchGemma2,
                                 &kArchGemma3, &kArchPhi3,   &kArchDeepseek2, &kArchGptOss};

int64_t arch_int(const GgufFile& f, std::string_view suffix, int64_t def, bool required) {
  const GgufValue* v = f.find_arch(suffix);
  if (v == nullptr) {
    if (required) throw FormatError(fmt::format("missing metadata key '{}.{}'", f.architecture(), suffix));
    return def;
  }
  // Every caller keeps the value in an int; a larger one would wrap into a plausible small size.
  const int64_t x = v->as_int();
  if (x < -(int64_t(1) << 30) || x > (int64_t(1) << 30))
    throw FormatError(fmt::format("metadata key '{}.{}' is out of range: {}", f.architecture(), suffix, x));
  return x;
}

double arch_float(const GgufFile& f, std::string_view suffix, double def) {
  const GgufValue* v = f.find_arch(suffix);
  return v ? v->as_double() : def;
}

}  // namespace

const ArchDef* find_arch(std::string_view name) {
  for (const ArchDef* a : kArchs) {
    if (name == a->name) return a;
  }
  return nullptr;
}

std::string supported_architectures() {
  std::string s;
  for (const ArchDef* a : kArchs) s += (s.empty() ? "" : ", ") + std::string(a->name);
  return s;
}

// More blocks than any model has (the largest have a few hundred).
constexpr int64_t kMaxBlocks = 65536;

HParams read_hparams(const GgufFile& f) {
  const std::string arch = f.architecture();
  if (arch.empty()) throw FormatError("missing metadata key 'general.architecture'");
  HParams hp;
  // Per-layer tables are sized by this count (load_model also bounds it by the file's tensors).
  const int64_t blocks = arch_int(f, "block_count", 0, true);
  if (blocks > kMaxBlocks) throw FormatError(fmt::format("bad block_count {}", blocks));
  hp.n_layers = int(blocks);
  hp.n_embd = int(arch_int(f, "embedding_length", 0, true));
  // MoE files may give only the experts' FFN size (llama.cpp's qwen35moe).
  const bool moe_file = f.find_arch("expert_count") != nullptr;
  hp.n_ff = int(arch_int(f, "feed_forward_length", 0, !moe_file));
  if (hp.n_ff == 0 && moe_file) hp.n_ff = int(arch_int(f, "expert_feed_forward_length", 0, true));
  hp.n_heads = int(arch_int(f, "attention.head_count", 0, true));
  hp.n_kv_heads = int(arch_int(f, "attention.head_count_kv", hp.n_heads, false));
  if (hp.n_layers <= 0 || hp.n_embd <= 0 || hp.n_ff <= 0 || hp.n_heads <= 0 || hp.n_kv_heads <= 0 ||
      hp.n_heads % hp.n_kv_heads != 0) {
    throw FormatError(fmt::format("bad hyper-parameters: layers {}, embd {}, ff {}, heads {}/{}", hp.n_layers,
                                  hp.n_embd, hp.n_ff, hp.n_heads, hp.n_kv_heads));
  }
  hp.head_dim = int(arch_int(f, "attention.key_length", hp.n_embd / hp.n_heads, false));
  const int head_dim_v = int(arch_int(f, "attention.value_length", hp.head_dim, false));
  if (hp.head_dim <= 0) throw FormatError("bad attention.key_length");
  // MLA's key and value widths differ by design; its ArchDef reads them (arch_deepseek2.cpp).
  if (head_dim_v != hp.head_dim && arch != "deepseek2") {
    throw Unsupported(fmt::format("key_length {} != value_length {}", hp.head_dim, head_dim_v));
  }
  hp.n_ctx_train = int(arch_int(f, "context_length", 0, false));
  hp.rms_eps = float(arch_float(f, "attention.layer_norm_rms_epsilon", 1e-5));
  hp.n_vocab = int(arch_int(f, "vocab_size", 0, false));
  if (hp.n_vocab == 0) {
    if (const GgufTensor* t = f.find_tensor("token_embd.weight")) hp.n_vocab = int(t->ne(1));
  }

  hp.n_expert = int(arch_int(f, "expert_count", 0, false));
  hp.n_expert_used = int(arch_int(f, "expert_used_count", 0, false));
  if (hp.n_expert < 0 || hp.n_expert_used < 0 || hp.n_expert_used > hp.n_expert ||
      (hp.n_expert > 0 && hp.n_expert_used == 0)) {
    throw FormatError(
        fmt::format("bad expert_count {} / expert_used_count {}", hp.n_expert, hp.n_expert_used));
  }
  hp.n_ff_exp = int(arch_int(f, "expert_feed_forward_length", hp.n_ff, false));
  hp.n_ff_shexp = int(arch_int(f, "expert_shared_feed_forward_length", 0, false));
  if (hp.n_ff_exp <= 0 || hp.n_ff_shexp < 0) throw FormatError("bad expert_feed_forward_length");
  // Transformers' defaults: Mixtral and Qwen3-MoE checkpoints renormalize the top-k weights,
  // qwen2moe and olmoe configs default to norm_topk_prob = false.
  hp.expert_weights_norm = arch == "llama" || arch == "qwen3moe" || is_hybrid_arch(arch);
  if (const GgufValue* v = f.find_arch("expert_weights_norm")) hp.expert_weights_norm = v->as_bool();

  RopeParams& r = hp.rope;
  r.n_rot = int(arch_int(f, "rope.dimension_count", hp.head_dim, false));
  if (r.n_rot <= 0 || r.n_rot > hp.head_dim || r.n_rot % 2 != 0) {
    throw FormatError(fmt::format("bad rope.dimension_count {} (head_dim {})", r.n_rot, hp.head_dim));
  }
  r.freq_base = float(arch_float(f, "rope.freq_base", 10000.0));
  r.factor = float(arch_float(f, "rope.scaling.factor", arch_float(f, "rope.scale_linear", 1.0)));
  std::string type;
  if (const GgufValue* v = f.find_arch("rope.scaling.type")) type = v->as_string();
  if (type.empty()) type = r.factor != 1.0f ? "linear" : "none";
  if (type == "none") {
    r.scaling = RopeScaling::kNone;
  } else if (type == "linear") {
    r.scaling = RopeScaling::kLinear;
  } else if (type == "yarn") {
    r.scaling = RopeScaling::kYarn;
  } else {
    throw Unsupported(fmt::format("rope scaling type '{}' (supported: none, linear, yarn)", type));
  }
  if (r.scaling != RopeScaling::kNone && !(r.factor > 0)) throw FormatError("bad rope.scaling.factor");
  r.orig_ctx = int(arch_int(f, "rope.scaling.original_context_length", hp.n_ctx_train, false));
  r.attn_factor = float(arch_float(f, "rope.scaling.attn_factor", 1.0) *
                        arch_float(f, "rope.scaling.yarn_attn_factor", 1.0));
  r.ext_factor = float(arch_float(f, "rope.scaling.yarn_ext_factor", -1.0));
  r.beta_fast = float(arch_float(f, "rope.scaling.yarn_beta_fast", 32.0));
  r.beta_slow = float(arch_float(f, "rope.scaling.yarn_beta_slow", 1.0));
  if (const GgufValue* v = f.find_arch("rope.scaling.yarn_truncate")) r.yarn_truncate = v->as_bool();
  if (is_hybrid_arch(arch)) read_delta_net_params(f, hp);
  return hp;
}

Model::Model(std::shared_ptr<GgufFile> file, const ArchDef& arch, HParams hp, ModelWeights w)
    : file_(std::move(file)),
      arch_(&arch),
      arch_name_(arch.name),
      hp_(std::move(hp)),
      w_(std::move(w)),
      prepared_(std::make_unique<PreparedWeights>()),
      layer_prepared_(w_.layers.size(), 0),
      experts_prepared_(w_.layers.size(), 0) {}

Model::~Model() = default;

bool Model::experts_fit_host_memory() const {
  size_t bytes = 0;
  for (const LayerWeights& l : w_.layers)
    for (const auto* vs : {&l.moe.gate, &l.moe.up, &l.moe.down})
      for (const WeightView& v : *vs) bytes += v.row_bytes * size_t(v.rows);
  if (bytes == 0) return false;
#if defined(__linux__)
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 && bytes <= size_t(pages) * size_t(page) / 2;
#else
  return false;
#endif
}

void Model::prepare_host(int first, int end, bool head, bool experts) const {
  std::lock_guard<std::mutex> lk(prepare_mu_);
  // The matrices go to the CPU kernels' interleaved layout; the GGUF pages of a mapped file are then
  // released (expert matrices only when asked: ExpertFlow's tiers copy them around in GGUF layout,
  // and a model larger than RAM must keep running from the page cache).
  // The views are rewritten in place (their `packed` pointer): the weights are logically const.
  auto& w = const_cast<ModelWeights&>(w_);
  std::vector<WeightView*> views;
  if (head && !head_prepared_) {
    views.push_back(&w.output);
    head_prepared_ = true;
  }
  first = std::max(first, 0);
  end = std::min(end, int(w.layers.size()));
  experts = experts && experts_fit_host_memory();
  for (int il = first; il < end; ++il) {
    LayerWeights& l = w.layers[size_t(il)];
    if (!layer_prepared_[size_t(il)]) {
      layer_prepared_[size_t(il)] = 1;
      for (WeightView* v : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down, &l.moe.gate_shexp,
                            &l.moe.up_shexp, &l.moe.down_shexp, &l.wq_a})
        views.push_back(v);
    }
    // The experts after the layer's other matrices, so decode still reads one stream per layer.
    if (experts && !experts_prepared_[size_t(il)] && !l.moe.gate.empty()) {
      experts_prepared_[size_t(il)] = 1;
      for (auto* vs : {&l.moe.gate, &l.moe.up, &l.moe.down})
        for (WeightView& v : *vs) views.push_back(&v);
    }
  }
  if (views.empty()) return;
  prepared_->merge(PreparedWeights::prepare(views, /*release_source=*/!file_->path().empty()));
}

const PreparedWeights& Model::prepared() const {
  std::lock_guard<std::mutex> lk(prepare_mu_);
  return *prepared_;
}

std::shared_ptr<const Model> load_model(std::shared_ptr<GgufFile> file) {
  const GgufFile& f = *file;
  const std::string arch_name = f.architecture();
  const ArchDef* arch = find_arch(arch_name);
  if (arch == nullptr) {
    throw Unsupported(
        fmt::format("unknown architecture '{}' (supported: {})", arch_name, supported_architectures()));
  }
  HParams hp = read_hparams(f);
  hp.rope.style = arch->rope_style;
  if (arch->read_hparams != nullptr) arch->read_hparams(f, hp);
  if (const GgufTensor* t = f.find_tensor("rope_freqs.weight")) {
    hp.rope.freq_factors = load_vector(f, "rope_freqs.weight", t->ne(0), true);
    if (int(hp.rope.freq_factors.size()) < hp.rope.n_rot / 2) {
      throw FormatError(fmt::format("tensor 'rope_freqs.weight' has {} entries, expected {}",
                                    hp.rope.freq_factors.size(), hp.rope.n_rot / 2));
    }
  }

  ModelWeights w;
  const GgufTensor& emb = f.tensor("token_embd.weight");
  if (hp.n_vocab <= 0 || emb.ne(1) != hp.n_vocab) {
    throw FormatError(
        fmt::format("tensor 'token_embd.weight' has {} rows, vocab_size is {}", emb.ne(1), hp.n_vocab));
  }
  w.token_embd = load_matrix(f, "token_embd.weight", hp.n_embd, hp.n_vocab);
  w.output_norm = load_vector(f, "output_norm.weight", hp.n_embd, true);
  if (f.find_tensor("output.weight") != nullptr) {
    w.output = load_matrix(f, "output.weight", hp.n_embd, hp.n_vocab);
  } else {
    w.output = w.token_embd;
    w.tied_embeddings = true;
  }
  // Every block holds tensors of its own: a corrupt count must not size the layer table.
  if (size_t(hp.n_layers) > f.tensors().size())
    throw FormatError(
        fmt::format("bad block_count {} for a file of {} tensors", hp.n_layers, f.tensors().size()));
  w.layers.resize(size_t(hp.n_layers));
  for (int il = 0; il < hp.n_layers; ++il) arch->load_layer(f, hp, il, w.layers[size_t(il)]);
  return std::make_shared<const Model>(std::move(file), *arch, std::move(hp), std::move(w));
}

std::shared_ptr<const Model> load_model(const std::string& path) {
  return load_model(GgufFile::open(path));
}

}  // namespace qleap
