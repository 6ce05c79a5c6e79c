// Session and model loading on synthetic GGUF files: error paths, and the forward pass of each
// architecture (llama, qwen2 with q/k/v bias, qwen3 with per-head q/k norm and head_dim != embd/heads)
// against a straightforward double-precision reference written from the model definitions.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "model_test_util.h"
#include "runtime/session.h"

namespace qleap {
namespace {

using testing::GgufBuilder;
using testing::TinyConfig;

// Writes a builder to a unique temp file, removed when the guard dies.
struct TempGguf {
  std::string path;
  explicit TempGguf(const GgufBuilder& b) {
    static int counter = 0;
    path = (std::filesystem::temp_directory_path() /
            ("qleap_model_test_" + std::to_string(getpid()) + "_" + std::to_string(counter++) + ".gguf"))
               .string();
    b.write(path);
  }
  ~TempGguf() { std::filesystem::remove(path); }
};

template <class E>
std::string expect_throw_message(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
    return "";
  }
  ADD_FAILURE() << "no exception";
  return "";
}

// ---- reference forward ----

struct RefModel {
  const GgufFile& f;
  TinyConfig c;
  bool neox;
  std::vector<std::vector<double>> kcache, vcache;  // per layer: pos-major rows of kv_dim

  const float* t(const std::string& name) const {
    return reinterpret_cast<const float*>(f.tensor(name).data);
  }
  const float* maybe(const std::string& name) const {
    const GgufTensor* x = f.find_tensor(name);
    return x ? reinterpret_cast<const float*>(x->data) : nullptr;
  }
  // y = W x for W with ne0 = cols, ne1 = rows.
  static std::vector<double> mv(const float* w, const std::vector<double>& x, int rows) {
    const size_t cols = x.size();
    std::vector<double> y(static_cast<size_t>(rows));
    for (int r = 0; r < rows; ++r) {
      double s = 0;
      for (size_t c = 0; c < cols; ++c) s += double(w[size_t(r) * cols + c]) * x[c];
      y[size_t(r)] = s;
    }
    return y;
  }
  static void rmsnorm(double* x, const float* w, int n, double eps) {
    double ss = 0;
    for (int i = 0; i < n; ++i) ss += x[i] * x[i];
    const double s = 1.0 / std::sqrt(ss / n + eps);
    for (int i = 0; i < n; ++i) x[i] = x[i] * s * w[i];
  }
  void rope(double* v, int n_heads, int pos) const {
    const int hd = c.head_dim;
    for (int h = 0; h < n_heads; ++h) {
      for (int i = 0; i < hd / 2; ++i) {
        const double th = pos * std::pow(double(c.freq_base), -2.0 * i / hd);
        double* a = v + h * hd + (neox ? i : 2 * i);
        double* b = v + h * hd + (neox ? i + hd / 2 : 2 * i + 1);
        const double x0 = *a, x1 = *b;
        *a = x0 * std::cos(th) - x1 * std::sin(th);
        *b = x0 * std::sin(th) + x1 * std::cos(th);
      }
    }
  }

  std::vector<double> step(int token, int pos) {
    const int E = c.n_embd, hd = c.head_dim, Q = c.n_heads * hd, KV = c.n_kv_heads * hd;
    const double eps = 1e-6;
    kcache.resize(size_t(c.n_layers));
    vcache.resize(size_t(c.n_layers));
    std::vector<double> x(t("token_embd.weight") + size_t(token) * E,
                          t("token_embd.weight") + size_t(token + 1) * E);
    for (int il = 0; il < c.n_layers; ++il) {
      const std::string p = "blk." + std::to_string(il) + ".";
      std::vector<double> xn = x;
      rmsnorm(xn.data(), t(p + "attn_norm.weight"), E, eps);
      auto q = mv(t(p + "attn_q.weight"), xn, Q), k = mv(t(p + "attn_k.weight"), xn, KV),
           v = mv(t(p + "attn_v.weight"), xn, KV);
      if (const float* b = maybe(p + "attn_q.bias")) {
        for (int i = 0; i < Q; ++i) q[size_t(i)] += b[i];
        for (int i = 0; i < KV; ++i) k[size_t(i)] += maybe(p + "attn_k.bias")[i];
        for (int i = 0; i < KV; ++i) v[size_t(i)] += maybe(p + "attn_v.bias")[i];
      }
      if (const float* qn = maybe(p + "attn_q_norm.weight")) {
        for (int h = 0; h < c.n_heads; ++h) rmsnorm(q.data() + h * hd, qn, hd, eps);
        for (int h = 0; h < c.n_kv_heads; ++h)
          rmsnorm(k.data() + h * hd, t(p + "attn_k_norm.weight"), hd, eps);
      }
      rope(q.data(), c.n_heads, pos);
      rope(k.data(), c.n_kv_heads, pos);
      kcache[size_t(il)].insert(kcache[size_t(il)].end(), k.begin(), k.end());
      vcache[size_t(il)].insert(vcache[size_t(il)].end(), v.begin(), v.end());
      std::vector<double> attn(static_cast<size_t>(Q), 0.0);
      for (int h = 0; h < c.n_heads; ++h) {
        const int g = h / (c.n_heads / c.n_kv_heads);
        std::vector<double> sc(static_cast<size_t>(pos + 1));
        double mx = -1e300, sum = 0;
        for (int j = 0; j <= pos; ++j) {
          double d = 0;
          for (int i = 0; i < hd; ++i)
            d += q[size_t(h * hd + i)] * kcache[size_t(il)][size_t(j * KV + g * hd + i)];
          sc[size_t(j)] = d / std::sqrt(double(hd));
          mx = std::max(mx, sc[size_t(j)]);
        }
        for (auto& s : sc) sum += (s = std::exp(s - mx));
        for (int j = 0; j <= pos; ++j) {
          for (int i = 0; i < hd; ++i) {
            attn[size_t(h * hd + i)] += sc[size_t(j)] / sum * vcache[size_t(il)][size_t(j * KV + g * hd + i)];
          }
        }
      }
      const auto o = mv(t(p + "attn_output.weight"), attn, E);
      for (int i = 0; i < E; ++i) x[size_t(i)] += o[size_t(i)];
      xn = x;
      rmsnorm(xn.data(), t(p + "ffn_norm.weight"), E, eps);
      auto g = mv(t(p + "ffn_gate.weight"), xn, c.n_ff);
      const auto u = mv(t(p + "ffn_up.weight"), xn, c.n_ff);
      for (int i = 0; i < c.n_ff; ++i)
        g[size_t(i)] = g[size_t(i)] / (1 + std::exp(-g[size_t(i)])) * u[size_t(i)];
      const auto d = mv(t(p + "ffn_down.weight"), g, E);
      for (int i = 0; i < E; ++i) x[size_t(i)] += d[size_t(i)];
    }
    rmsnorm(x.data(), t("output_norm.weight"), E, eps);
    const float* out = maybe("output.weight");
    return mv(out ? out : t("token_embd.weight"), x, c.n_vocab);
  }
};

struct ArchCase {
  const char* name;
  TinyConfig cfg;
  bool neox;
};

void PrintTo(const ArchCase& c, std::ostream* os) {
  *os << c.name;
}

std::vector<ArchCase> arch_cases() {
  std::vector<ArchCase> v;
  TinyConfig llama;
  v.push_back({"llama", llama, false});
  TinyConfig tied = llama;
  tied.tied = true;
  tied.n_kv_heads = 4;  // plain multi-head attention
  v.push_back({"llama_tied_mha", tied, false});
  TinyConfig qwen2 = llama;
  qwen2.arch = "qwen2";
  qwen2.qkv_bias = true;
  qwen2.n_kv_heads = 1;  // multi-query
  qwen2.freq_base = 1000000.0f;
  v.push_back({"qwen2", qwen2, true});
  TinyConfig qwen3 = llama;
  qwen3.arch = "qwen3";
  qwen3.qk_norm = true;
  qwen3.head_dim = 16;  // q_dim 64 != n_embd 32
  v.push_back({"qwen3", qwen3, true});
  return v;
}

class ModelArch : public ::testing::TestWithParam<ArchCase> {};

TEST_P(ModelArch, MatchesReferenceForward) {
  const ArchCase ac = GetParam();
  const auto bytes = testing::tiny_model(ac.cfg, 11).build();
  auto file = GgufFile::parse(bytes.data(), bytes.size());
  auto model = load_model(file);
  EXPECT_EQ(model->arch(), ac.cfg.arch);
  EXPECT_EQ(model->weights().tied_embeddings, ac.cfg.tied);
  EXPECT_EQ(model->hparams().rope.style, ac.neox ? RopeStyle::kNeox : RopeStyle::kNormal);

  const std::vector<int32_t> toks = {3, 17, 5, 39, 0, 22, 8, 8, 31, 12, 1, 2, 30};
  RefModel ref{*file, ac.cfg, ac.neox, {}, {}};
  std::vector<std::vector<double>> want;
  for (size_t i = 0; i < toks.size(); ++i) want.push_back(ref.step(toks[i], int(i)));

  for (const int nb : {512, 4}) {
    for (const int threads : {1, 2}) {
      SessionOptions opt;
      opt.kv_type = "f32";
      opt.n_batch = nb;
      opt.n_threads = threads;
      Session s(model, opt);
      EXPECT_EQ(s.n_ctx(), 128);  // context_length of the tiny model
      const auto& got = s.eval(toks, true);
      const int nv = s.n_vocab();
      for (size_t t = 0; t < toks.size(); ++t) {
        for (int j = 0; j < nv; ++j) {
          ASSERT_NEAR(got[t * nv + j], want[t][size_t(j)], 2e-4 * (1 + std::fabs(want[t][size_t(j)])))
              << "token " << t << " logit " << j << " n_batch " << nb << " threads " << threads;
        }
      }
      // Incremental continuation equals the reference too.
      s.truncate(5);
      for (size_t t = 5; t < toks.size(); ++t) {
        const auto& l = s.eval({toks[t]});
        for (int j = 0; j < nv; ++j)
          ASSERT_NEAR(l[size_t(j)], want[t][size_t(j)], 2e-4 * (1 + std::fabs(want[t][size_t(j)])));
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Archs, ModelArch, ::testing::ValuesIn(arch_cases()),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(ModelLoad, UnknownArchitecture) {
  TinyConfig c;
  c.arch = "gpt2xl";
  TempGguf tmp(testing::tiny_model(c));
  const std::string msg = expect_throw_message<Unsupported>([&] { load_model(tmp.path); });
  EXPECT_EQ(
      msg,
      "unknown architecture 'gpt2xl' (supported: llama, qwen2, qwen3, qwen2moe, qwen3moe, olmoe, qwen35, "
      "qwen35moe, qwen3next, gemma2, gemma3, phi3, deepseek2, gpt-oss)");
}

TEST(ModelLoad, MissingFileIsIoError) {
  EXPECT_THROW(load_model("/nonexistent/dir/model.gguf"), IoError);
}

TEST(ModelLoad, MissingTensorNamed) {
  TinyConfig c;
  c.arch = "qwen3";
  c.qk_norm = false;  // qwen3 requires attn_q_norm
  TempGguf tmp(testing::tiny_model(c));
  const std::string msg = expect_throw_message<FormatError>([&] { load_model(tmp.path); });
  EXPECT_NE(msg.find("blk.0.attn_q_norm.weight"), std::string::npos) << msg;
  c.arch = "qwen2";  // qwen2 requires q/k/v biases
  TempGguf tmp2(testing::tiny_model(c));
  const std::string msg2 = expect_throw_message<FormatError>([&] { load_model(tmp2.path); });
  EXPECT_NE(msg2.find("blk.0.attn_q.bias"), std::string::npos) << msg2;
}

TEST(ModelLoad, BadShapeNamed) {
  GgufBuilder g;
  g.add_string("general.architecture", "llama");
  g.add_u32("llama.block_count", 1);
  g.add_u32("llama.embedding_length", 8);
  g.add_u32("llama.feed_forward_length", 16);
  g.add_u32("llama.attention.head_count", 2);
  std::vector<float> z(8 * 20, 0.5f);
  g.add_tensor("token_embd.weight", {8, 20}, z);
  g.add_tensor("output_norm.weight", {8}, std::vector<float>(8, 1.0f));
  g.add_tensor("blk.0.attn_norm.weight", {8}, std::vector<float>(8, 1.0f));
  g.add_tensor("blk.0.attn_q.weight", {8, 8}, std::vector<float>(64, 0.1f));
  g.add_tensor("blk.0.attn_k.weight", {8, 4}, std::vector<float>(32, 0.1f));  // should be [8, 8]
  TempGguf tmp(g);
  const std::string msg = expect_throw_message<FormatError>([&] { load_model(tmp.path); });
  EXPECT_NE(msg.find("blk.0.attn_k.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[8, 4]"), std::string::npos) << msg;
}

// A type id this build does not know, and a known one it cannot compute with, are named together
// with the tensor.
TEST(ModelLoad, UnknownAndUncomputableTensorTypesNamed) {
  TinyConfig c;
  c.n_embd = 128;
  c.head_dim = 32;
  GgufBuilder g = testing::tiny_model(c);
  g.set_type("blk.1.ffn_up.weight", 57);
  TempGguf tmp(g);
  const std::string msg = expect_throw_message<FormatError>([&] { load_model(tmp.path); });
  EXPECT_NE(msg.find("blk.1.ffn_up.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("57"), std::string::npos) << msg;
  g.set_type("blk.1.ffn_up.weight", uint32_t(GgmlType::Q1_0));
  TempGguf tmp2(g);
  const std::string msg2 = expect_throw_message<Unsupported>([&] { load_model(tmp2.path); });
  EXPECT_NE(msg2.find("blk.1.ffn_up.weight"), std::string::npos) << msg2;
  EXPECT_NE(msg2.find("Q1_0"), std::string::npos) << msg2;
}

TEST(ModelLoad, HParamsDefaultsAndScaling) {
  GgufBuilder g;
  g.add_string("general.architecture", "llama");
  g.add_u32("llama.block_count", 1);
  g.add_u32("llama.embedding_length", 64);
  g.add_u32("llama.feed_forward_length", 16);
  g.add_u32("llama.attention.head_count", 4);
  g.add_string("llama.rope.scaling.type", "yarn");
  g.add_f32("llama.rope.scaling.factor", 4.0f);
  g.add_u32("llama.rope.scaling.original_context_length", 2048);
  g.add_f32("llama.rope.freq_base", 500000.0f);
  g.add_tensor("token_embd.weight", {64, 10}, std::vector<float>(640, 0.0f));
  const auto bytes = g.build();
  auto f = GgufFile::parse(bytes.data(), bytes.size());
  const HParams hp = read_hparams(*f);
  EXPECT_EQ(hp.n_kv_heads, 4);
  EXPECT_EQ(hp.head_dim, 16);
  EXPECT_EQ(hp.rope.n_rot, 16);
  EXPECT_EQ(hp.n_vocab, 10);  // from token_embd rows
  EXPECT_EQ(hp.rope.scaling, RopeScaling::kYarn);
  EXPECT_FLOAT_EQ(hp.rope.factor, 4.0f);
  EXPECT_EQ(hp.rope.orig_ctx, 2048);
  EXPECT_FLOAT_EQ(hp.rope.freq_base, 500000.0f);
  EXPECT_FLOAT_EQ(hp.rms_eps, 1e-5f);

  GgufBuilder h;
  h.add_string("general.architecture", "llama");
  h.add_u32("llama.block_count", 1);
  h.add_u32("llama.embedding_length", 64);
  h.add_u32("llama.feed_forward_length", 16);
  h.add_u32("llama.attention.head_count", 4);
  h.add_string("llama.rope.scaling.type", "longrope");
  const auto b2 = h.build();
  EXPECT_THROW(read_hparams(*GgufFile::parse(b2.data(), b2.size())), Unsupported);
}

class SessionErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    bytes_ = testing::tiny_model(TinyConfig{}).build();
    model_ = load_model(GgufFile::parse(bytes_.data(), bytes_.size()));
  }
  std::vector<uint8_t> bytes_;
  std::shared_ptr<const Model> model_;
};

TEST_F(SessionErrors, ContextOverflow) {
  SessionOptions opt;
  opt.n_ctx = 16;
  opt.n_threads = 1;
  Session s(model_, opt);
  EXPECT_EQ(s.n_ctx(), 16);
  s.eval(std::vector<int32_t>(10, 3));
  EXPECT_THROW(s.eval(std::vector<int32_t>(7, 3)), InvalidArgument);
  EXPECT_EQ(s.n_past(), 10);  // a rejected eval changes nothing
  s.eval(std::vector<int32_t>(6, 3));
  EXPECT_EQ(s.n_past(), 16);
  EXPECT_THROW(s.eval({3}), InvalidArgument);
}

TEST_F(SessionErrors, BadTokenIds) {
  SessionOptions opt;
  opt.n_threads = 1;
  Session s(model_, opt);
  EXPECT_THROW(s.eval({3, -1}), InvalidArgument);
  EXPECT_THROW(s.eval({40}), InvalidArgument);  // n_vocab is 40
  EXPECT_THROW(s.eval({}), InvalidArgument);
  EXPECT_EQ(s.n_past(), 0);
  EXPECT_EQ(s.eval({39}).size(), 40u);
}

TEST_F(SessionErrors, BadOptions) {
  SessionOptions opt;
  opt.kv_type = "q4_k";
  EXPECT_THROW(Session(model_, opt), InvalidArgument);
  opt.kv_type = "f16";
  opt.n_batch = 0;
  EXPECT_THROW(Session(model_, opt), InvalidArgument);
  opt.n_batch = 512;
  opt.n_ctx = -3;
  EXPECT_THROW(Session(model_, opt), InvalidArgument);
}

TEST_F(SessionErrors, KvBytesAndDefaults) {
  SessionOptions opt;
  Session s(model_, opt);
  EXPECT_EQ(s.n_ctx(), 128);
  EXPECT_STREQ(s.kv().type_name(), "f16");
  // 2 layers x (K + V) x kv_dim 16 x 2 bytes.
  EXPECT_EQ(s.kv().bytes_per_token(), 2u * 2 * 16 * 2);
  EXPECT_EQ(s.kv().allocated_bytes(), s.kv().bytes_per_token() * 128);
  EXPECT_EQ(s.pool().size(), default_thread_count());
}

}  // namespace
}  // namespace qleap
