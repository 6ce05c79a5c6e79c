// Helpers for the model / kv / session tests: fixture paths, a minimal GGUF byte builder for
// synthetic models, and llama2.c-style piece decoding from the GGUF vocabulary.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "gguf/gguf.h"

namespace qleap::testing {

inline std::string source_dir() {
  if (const char* e = std::getenv("QLEAP_SOURCE_DIR"); e && *e) return e;
  return QLEAP_SOURCE_DIR;
}
// The real models the repository carries (tests/fixtures/models; $QLEAP_TEST_MODELS overrides).
inline std::string test_models_dir() {
  if (const char* e = std::getenv("QLEAP_TEST_MODELS"); e && *e) return e;
  return source_dir() + "/tests/fixtures/models";
}
inline std::string stories_path() {
  return test_models_dir() + "/stories260K.gguf";
}
inline std::string stories_expected_path() {
  return test_models_dir() + "/stories260K.expected.txt";
}

// SmolLM2-135M Q4_1 (downloaded by scripts/setup.sh, not committed): only through
// $QLEAP_DEFAULT_MODEL, which scripts/test.sh sets; "" when unset or missing.
inline std::string default_model_path() {
  const char* e = std::getenv("QLEAP_DEFAULT_MODEL");
  if (e && *e && std::filesystem::exists(e)) return e;
  return "";
}

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Piece text of a token the way llama2.c prints it: U+2581 -> ' ', <0xNN> -> the byte, and the
// leading space of the first piece after BOS (id 1) dropped.
inline std::string decode_piece(const std::vector<std::string>& vocab, int prev, int tok) {
  std::string p = vocab.at(size_t(tok));
  if (p.size() == 6 && p.rfind("<0x", 0) == 0 && p[5] == '>') {
    return std::string(1, char(std::stoi(p.substr(3, 2), nullptr, 16)));
  }
  std::string out;
  for (size_t i = 0; i < p.size();) {
    if (p.compare(i, 3, "\xE2\x96\x81") == 0) {
      out += ' ';
      i += 3;
    } else {
      out += p[i++];
    }
  }
  if (prev == 1 && !out.empty() && out[0] == ' ') out.erase(0, 1);
  return out;
}

// Minimal GGUF v3 writer: scalar/string metadata and F32 tensors.
class GgufBuilder {
 public:
  void add_string(const std::string& key, const std::string& v) {
    key_header(key, 8);
    put_str(kv_, v);
    ++n_kv_;
  }
  void add_u32(const std::string& key, uint32_t v) {
    key_header(key, 4);
    put(kv_, v);
    ++n_kv_;
  }
  void add_f32(const std::string& key, float v) {
    key_header(key, 6);
    put(kv_, v);
    ++n_kv_;
  }
  void add_tensor(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& data) {
    tensors_.push_back({name, std::move(shape), data});
  }
  // Declares tensor `name` with another type id; its data stays the F32 bytes (enough for any
  // type), so this tests the handling of type ids, not of their contents.
  void set_type(const std::string& name, uint32_t type_id) {
    for (auto& t : tensors_) {
      if (t.name == name) t.type = type_id;
    }
  }

  std::vector<uint8_t> build() const {
    std::vector<uint8_t> out;
    put(out, uint32_t(0x46554747));  // "GGUF"
    put(out, uint32_t(3));
    put(out, uint64_t(tensors_.size()));
    put(out, uint64_t(n_kv_));
    out.insert(out.end(), kv_.begin(), kv_.end());
    uint64_t off = 0;
    for (const auto& t : tensors_) {
      put_str(out, t.name);
      put(out, uint32_t(t.shape.size()));
      for (int64_t d : t.shape) put(out, uint64_t(d));
      put(out, t.type);
      put(out, off);
      off += align(t.data.size() * 4);
    }
    out.resize(align(out.size()), 0);
    for (const auto& t : tensors_) {
      const size_t at = out.size();
      out.resize(at + align(t.data.size() * 4), 0);
      std::memcpy(out.data() + at, t.data.data(), t.data.size() * 4);
    }
    return out;
  }

  void write(const std::string& path) const {
    const auto b = build();
    std::ofstream o(path, std::ios::binary);
    o.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
  }

 private:
  struct T {
    std::string name;
    std::vector<int64_t> shape;
    std::vector<float> data;
    uint32_t type = 0;  // F32
  };
  static size_t align(size_t n) { return (n + 31) / 32 * 32; }
  template <class V>
  static void put(std::vector<uint8_t>& o, V v) {
    const size_t at = o.size();
    o.resize(at + sizeof(V));
    std::memcpy(o.data() + at, &v, sizeof(V));
  }
  static void put_str(std::vector<uint8_t>& o, const std::string& s) {
    put(o, uint64_t(s.size()));
    o.insert(o.end(), s.begin(), s.end());
  }
  void key_header(const std::string& key, uint32_t type) {
    put_str(kv_, key);
    put(kv_, type);
  }
  std::vector<uint8_t> kv_;
  size_t n_kv_ = 0;
  std::vector<T> tensors_;
};

struct TinyConfig {
  std::string arch = "llama";
  int n_layers = 2, n_embd = 32, n_ff = 48, n_heads = 4, n_kv_heads = 2, head_dim = 8, n_vocab = 40;
  int n_ctx = 128;
  bool tied = false;
  bool qkv_bias = false;
  bool qk_norm = false;
  float freq_base = 10000.0f;
};

inline std::vector<float> random_vec(std::mt19937& rng, size_t n, float scale, float offset = 0.0f) {
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = offset + scale * d(rng);
  return v;
}

// A random model of the given architecture with all weights F32.
inline GgufBuilder tiny_model(const TinyConfig& c, uint32_t seed = 1) {
  std::mt19937 rng(seed);
  GgufBuilder b;
  const std::string a = c.arch;
  b.add_string("general.architecture", a);
  b.add_u32(a + ".block_count", uint32_t(c.n_layers));
  b.add_u32(a + ".embedding_length", uint32_t(c.n_embd));
  b.add_u32(a + ".feed_forward_length", uint32_t(c.n_ff));
  b.add_u32(a + ".attention.head_count", uint32_t(c.n_heads));
  b.add_u32(a + ".attention.head_count_kv", uint32_t(c.n_kv_heads));
  b.add_u32(a + ".attention.key_length", uint32_t(c.head_dim));
  b.add_u32(a + ".attention.value_length", uint32_t(c.head_dim));
  b.add_u32(a + ".context_length", uint32_t(c.n_ctx));
  b.add_f32(a + ".attention.layer_norm_rms_epsilon", 1e-6f);
  b.add_f32(a + ".rope.freq_base", c.freq_base);
  const int64_t E = c.n_embd, Q = int64_t(c.n_heads) * c.head_dim, KV = int64_t(c.n_kv_heads) * c.head_dim;
  const float ws = 0.3f;
  b.add_tensor("token_embd.weight", {E, c.n_vocab}, random_vec(rng, size_t(E * c.n_vocab), 1.0f));
  b.add_tensor("output_norm.weight", {E}, random_vec(rng, size_t(E), 0.1f, 1.0f));
  if (!c.tied) b.add_tensor("output.weight", {E, c.n_vocab}, random_vec(rng, size_t(E * c.n_vocab), ws));
  for (int il = 0; il < c.n_layers; ++il) {
    const std::string p = "blk." + std::to_string(il) + ".";
    b.add_tensor(p + "attn_norm.weight", {E}, random_vec(rng, size_t(E), 0.1f, 1.0f));
    b.add_tensor(p + "attn_q.weight", {E, Q}, random_vec(rng, size_t(E * Q), ws));
    b.add_tensor(p + "attn_k.weight", {E, KV}, random_vec(rng, size_t(E * KV), ws));
    b.add_tensor(p + "attn_v.weight", {E, KV}, random_vec(rng, size_t(E * KV), ws));
    b.add_tensor(p + "attn_output.weight", {Q, E}, random_vec(rng, size_t(Q * E), ws));
    if (c.qkv_bias) {
      b.add_tensor(p + "attn_q.bias", {Q}, random_vec(rng, size_t(Q), 0.2f));
      b.add_tensor(p + "attn_k.bias", {KV}, random_vec(rng, size_t(KV), 0.2f));
      b.add_tensor(p + "attn_v.bias", {KV}, random_vec(rng, size_t(KV), 0.2f));
    }
    if (c.qk_norm) {
      b.add_tensor(p + "attn_q_norm.weight", {c.head_dim}, random_vec(rng, size_t(c.head_dim), 0.1f, 1.0f));
      b.add_tensor(p + "attn_k_norm.weight", {c.head_dim}, random_vec(rng, size_t(c.head_dim), 0.1f, 1.0f));
    }
    b.add_tensor(p + "ffn_norm.weight", {E}, random_vec(rng, size_t(E), 0.1f, 1.0f));
    b.add_tensor(p + "ffn_gate.weight", {E, c.n_ff}, random_vec(rng, size_t(E * c.n_ff), ws));
    b.add_tensor(p + "ffn_up.weight", {E, c.n_ff}, random_vec(rng, size_t(E * c.n_ff), ws));
    b.add_tensor(p + "ffn_down.weight", {c.n_ff, E}, random_vec(rng, size_t(c.n_ff * E), ws));
  }
  return b;
}

}  // namespace qleap::testing
