// qleap_cuda_bench: decode / prefill speed of a fully offloaded model at real shapes with
// synthetic weights generated in memory (no model file needed), plus the ceilings to judge them
// by: a device copy (practical bandwidth), each mat-vec kernel alone, and cuBLAS f16 GEMMs at the
// prefill shapes.
//
//   qleap_cuda_bench [--shape llama3-8b|qwen3-8b] [--type Q4_K|Q8_0|...] [--ctx N] [--prompt N]
//                    [--depth N] [--gen N] [--peak-gbs X] [--no-kernels] [--no-graph-compare]
//                    [--check] [--help]
//
// --check validates the flags and prints what a run would do and allocate, without a device (so a
// script's invocation is tested before GPU time is spent on it).
//
// All layers share one host copy of each synthetic matrix, but every layer gets its own device
// copy, so the decode step reads as many distinct bytes as a real model of that shape would.
#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "backend/cuda/cuda_api.h"
#include "core/error.h"
#include "core/fp16.h"
#include "core/timer.h"
#include "model/blocks.h"
#include "model/model.h"
#include "quant/ggml_type.h"
#include "runtime/session.h"

namespace qleap {
namespace {

struct Args {
  std::string shape = "llama3-8b";
  std::string type = "Q4_K";
  int ctx = 4096;
  int prompt = 512;
  int depth = -1;  // tokens in the cache before decode timing (default: prompt)
  int gen = 64;
  double peak_gbs = 3350.0;  // H100 SXM HBM3 datasheet figure
  bool kernels = true;
  bool graph_compare = true;
  bool check = false;
};

constexpr const char* kUsage =
    "usage: qleap_cuda_bench [options]\n"
    "  --shape S           llama3-8b (default) or qwen3-8b: synthetic weights of that shape\n"
    "  --type T            weight format: F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q4_K (default) Q5_K Q6_K\n"
    "  --ctx N             context length (default 4096)\n"
    "  --prompt N          prefill tokens timed as ppN (default 512)\n"
    "  --depth N           tokens in the cache before decode is timed (default: --prompt)\n"
    "  --gen N             decode steps timed (default 64)\n"
    "  --peak-gbs X        datasheet memory bandwidth to compare with (default 3350, H100 SXM)\n"
    "  --no-kernels        skip the table of mat-vec kernels alone\n"
    "  --no-graph-compare  time decode with CUDA graphs only (not also without)\n"
    "  --check             validate the flags and print the plan; needs no device\n"
    "  --help              this text\n";

// The formats the device mat-vec and GEMM paths implement (docs/cuda.md).
bool device_format(GgmlType t) {
  switch (t) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16:
    case GgmlType::Q8_0:
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K:
      return true;
    default:
      return false;
  }
}

int parse_int(const std::string& flag, const std::string& v) {
  size_t used = 0;
  int x = 0;
  try {
    x = std::stoi(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != v.size()) throw InvalidArgument(flag + ": expected an integer, got '" + v + "'");
  return x;
}

double parse_double(const std::string& flag, const std::string& v) {
  size_t used = 0;
  double x = 0;
  try {
    x = std::stod(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != v.size()) throw InvalidArgument(flag + ": expected a number, got '" + v + "'");
  return x;
}

// Everything about the arguments that can be wrong without a device.
void validate(const Args& a) {
  if (a.shape != "llama3-8b" && a.shape != "qwen3-8b")
    throw InvalidArgument("--shape: llama3-8b or qwen3-8b");
  const auto t = type_from_name(a.type);
  if (!t) throw InvalidArgument("--type: unknown format " + a.type);
  if (!device_format(*t)) throw InvalidArgument("--type: " + a.type + " has no device kernels");
  if (a.ctx <= 0) throw InvalidArgument("--ctx must be > 0");
  if (a.prompt <= 0 || a.prompt > a.ctx) throw InvalidArgument("--prompt must be in 1..--ctx");
  if (a.gen <= 0) throw InvalidArgument("--gen must be > 0");
  const int depth = a.depth < 0 ? a.prompt : a.depth;
  // The decode timing evaluates one untimed step and --gen timed steps after the fill.
  if (depth + a.gen + 1 > a.ctx)
    throw InvalidArgument(fmt::format("--depth {} + --gen {} + 1 exceed --ctx {}", depth, a.gen, a.ctx));
  if (!(a.peak_gbs > 0)) throw InvalidArgument("--peak-gbs must be > 0");
}

// Offsets of fp16 scale fields in one block, set to small sane values after random filling.
std::vector<std::pair<int, float>> scale_fields(GgmlType t) {
  switch (t) {
    case GgmlType::Q4_0:
    case GgmlType::Q8_0:
      return {{0, 0.002f}};
    case GgmlType::Q4_1:
      return {{0, 0.002f}, {2, -0.01f}};
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
      return {{0, 0.0005f}, {2, 0.0002f}};
    case GgmlType::Q6_K:
      return {{208, 0.0005f}};
    default:
      return {};
  }
}

std::shared_ptr<std::vector<uint8_t>> synth(GgmlType t, int64_t rows, int64_t cols, uint64_t seed) {
  const size_t rb = row_size(t, cols);
  auto buf = std::make_shared<std::vector<uint8_t>>(rb * size_t(rows));
  const size_t n = buf->size();
  const int nt = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> th;
  const bool is_float = t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16;
  for (int i = 0; i < nt; ++i) {
    th.emplace_back([&, i] {
      const size_t b = n * size_t(i) / size_t(nt), e = n * size_t(i + 1) / size_t(nt);
      uint64_t x = seed * 0x9E3779B97F4A7C15ull + uint64_t(i) * 0xD1B54A32D192ED03ull + 1;
      for (size_t j = b; j < e; ++j) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        (*buf)[j] = uint8_t(x >> 24);
      }
    });
  }
  for (auto& t2 : th) t2.join();
  if (is_float) {  // keep values finite and small: rewrite every element
    std::mt19937 rng(static_cast<uint32_t>(seed));
    std::uniform_real_distribution<float> u(-0.05f, 0.05f);
    const int64_t cnt = rows * cols;
    for (int64_t i = 0; i < cnt; ++i) {
      const float v = u(rng);
      if (t == GgmlType::F32) std::memcpy(buf->data() + 4 * i, &v, 4);
      const uint16_t h = t == GgmlType::F16 ? fp32_to_fp16_ref(v) : fp32_to_bf16(v);
      if (t != GgmlType::F32) std::memcpy(buf->data() + 2 * i, &h, 2);
    }
    return buf;
  }
  const size_t ts = type_traits(t).type_size;
  const auto fields = scale_fields(t);
  for (size_t off = 0; off < n; off += ts) {
    for (auto [f, v] : fields) {
      const uint16_t h = fp32_to_fp16_ref(v);
      std::memcpy(buf->data() + off + size_t(f), &h, 2);
    }
  }
  return buf;
}

struct Synthetic {
  std::vector<std::shared_ptr<std::vector<uint8_t>>> keep;
  std::shared_ptr<const Model> model;
  size_t layer_weight_bytes = 0;  // GGUF bytes of one layer's matrices
  size_t output_bytes = 0;
};

Synthetic make_model(const Args& a) {
  HParams hp;
  std::string arch = "llama";
  hp.n_embd = 4096;
  hp.n_heads = 32;
  hp.n_kv_heads = 8;
  hp.head_dim = 128;
  hp.rms_eps = 1e-5f;
  hp.rope.n_rot = 128;
  if (a.shape == "llama3-8b") {
    hp.n_layers = 32, hp.n_ff = 14336, hp.n_vocab = 128256;
    hp.rope.freq_base = 500000.0f;
    hp.rope.style = RopeStyle::kNormal;
  } else if (a.shape == "qwen3-8b") {
    arch = "qwen3";
    hp.n_layers = 36, hp.n_ff = 12288, hp.n_vocab = 151936;
    hp.rope.freq_base = 1000000.0f;
    hp.rope.style = RopeStyle::kNeox;
    hp.rms_eps = 1e-6f;
  } else {
    throw InvalidArgument("--shape: llama3-8b or qwen3-8b");
  }
  hp.n_ctx_train = std::max(a.ctx, 8192);
  const auto ot = type_from_name(a.type);
  if (!ot) throw InvalidArgument("--type: unknown format " + a.type);
  const GgmlType t = *ot;
  Synthetic s;
  uint64_t seed = 1;
  auto view = [&](int64_t rows, int64_t cols) {
    auto buf = synth(t, rows, cols, seed++);
    s.keep.push_back(buf);
    return WeightView{t, buf->data(), cols, rows, row_size(t, cols)};
  };
  ModelWeights w;
  LayerWeights lw;
  lw.attn_norm.assign(size_t(hp.n_embd), 1.0f);
  lw.ffn_norm.assign(size_t(hp.n_embd), 1.0f);
  if (arch == "qwen3") {
    lw.q_norm.assign(size_t(hp.head_dim), 1.0f);
    lw.k_norm.assign(size_t(hp.head_dim), 1.0f);
  }
  lw.wq = view(hp.q_dim(), hp.n_embd);
  lw.wk = view(hp.kv_dim(), hp.n_embd);
  lw.wv = view(hp.kv_dim(), hp.n_embd);
  lw.wo = view(hp.n_embd, hp.q_dim());
  lw.w_gate = view(hp.n_ff, hp.n_embd);
  lw.w_up = view(hp.n_ff, hp.n_embd);
  lw.w_down = view(hp.n_embd, hp.n_ff);
  for (const WeightView* v : {&lw.wq, &lw.wk, &lw.wv, &lw.wo, &lw.w_gate, &lw.w_up, &lw.w_down}) {
    s.layer_weight_bytes += v->row_bytes * size_t(v->rows);
  }
  w.layers.assign(size_t(hp.n_layers), lw);
  w.output = view(hp.n_vocab, hp.n_embd);
  w.token_embd = w.output;
  w.output_norm.assign(size_t(hp.n_embd), 1.0f);
  s.output_bytes = w.output.row_bytes * size_t(w.output.rows);
  const ArchDef* def = find_arch(arch);
  s.model = std::make_shared<Model>(nullptr, *def, hp, std::move(w));
  return s;
}

struct DecodeResult {
  double pp_tps = 0, tg_tps = 0;
  size_t device_bytes = 0;
};

DecodeResult run_session(const Synthetic& s, const Args& a, bool graphs) {
  setenv("QLEAP_CUDA_GRAPHS", graphs ? "1" : "0", 1);
  SessionOptions opt;
  opt.n_ctx = a.ctx;
  opt.n_threads = 4;
  opt.n_batch = std::min(512, a.ctx);
  opt.gpu_layers = -1;
  Session sess(s.model, opt);
  const int nv = sess.n_vocab();
  std::mt19937 rng(5);
  std::uniform_int_distribution<int32_t> pick(0, nv - 1);
  DecodeResult r;
  std::vector<int32_t> toks(size_t(a.prompt));
  for (auto& t : toks) t = pick(rng);
  sess.eval({1, 2, 3, 4});  // warm-up: kernels, cuBLAS handles
  sess.eval({5});
  sess.reset();
  Stopwatch sw;
  sess.eval(toks);
  r.pp_tps = a.prompt / sw.elapsed();
  // Fill the cache to the requested depth (prefill in chunks), then time single-token steps.
  const int depth = a.depth < 0 ? a.prompt : a.depth;
  if (depth > sess.n_past()) {
    std::vector<int32_t> more(size_t(depth - sess.n_past()));
    for (auto& t : more) t = pick(rng);
    sess.eval(more);
  } else {
    sess.truncate(depth);
  }
  int tok = pick(rng);
  sess.eval({tok});  // first decode step captures the graph
  sw.reset();
  for (int i = 0; i < a.gen; ++i) {
    const auto& l = sess.eval({tok});
    tok = int(std::max_element(l.begin(), l.end()) - l.begin());
  }
  r.tg_tps = a.gen / sw.elapsed();
  return r;
}

int run(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw InvalidArgument(k + " needs a value");
      return argv[++i];
    };
    if (k == "--shape")
      a.shape = next();
    else if (k == "--type")
      a.type = next();
    else if (k == "--ctx")
      a.ctx = parse_int(k, next());
    else if (k == "--prompt")
      a.prompt = parse_int(k, next());
    else if (k == "--depth")
      a.depth = parse_int(k, next());
    else if (k == "--gen")
      a.gen = parse_int(k, next());
    else if (k == "--peak-gbs")
      a.peak_gbs = parse_double(k, next());
    else if (k == "--no-kernels")
      a.kernels = false;
    else if (k == "--no-graph-compare")
      a.graph_compare = false;
    else if (k == "--check")
      a.check = true;
    else if (k == "--help" || k == "-h") {
      fmt::print("{}", kUsage);
      return 0;
    } else
      throw InvalidArgument("unknown option " + k + " (see --help)");
  }
  validate(a);
  if (a.check) {
    // The bytes the run will hold on the device: every layer's own copy of the weights, the output
    // matrix, and the f16 KV cache of the whole context.
    const bool qwen = a.shape == "qwen3-8b";
    const int64_t layers = qwen ? 36 : 32, ff = qwen ? 12288 : 14336, vocab = qwen ? 151936 : 128256;
    const int64_t embd = 4096, q_dim = 4096, kv_dim = 1024;
    const GgmlType t = *type_from_name(a.type);
    const double layer = double(row_size(t, embd)) * double(q_dim + 2 * kv_dim + 2 * ff) +
                         double(row_size(t, q_dim)) * double(embd) + double(row_size(t, ff)) * double(embd);
    const double out = double(row_size(t, embd)) * double(vocab);
    const double kv = 2.0 * 2.0 * double(kv_dim) * double(a.ctx) * double(layers);
    fmt::print(
        "check: {} {}, ctx {}, pp{}, tg{} at depth {}, kernels {}, graph compare {}, peak {:.0f} GB/s\n"
        "check: device memory needed ~{:.1f} GiB (weights {:.1f} + output {:.2f} + f16 KV {:.2f})\n",
        a.shape, a.type, a.ctx, a.prompt, a.gen, a.depth < 0 ? a.prompt : a.depth, a.kernels ? "on" : "off",
        a.graph_compare ? "on" : "off", a.peak_gbs, (layer * double(layers) + out + kv) / double(1 << 30),
        layer * double(layers) / double(1 << 30), out / double(1 << 30), kv / double(1 << 30));
    return 0;
  }
  const auto devs = cuda::devices();
  if (devs.empty()) {
    fmt::print(stderr, "qleap_cuda_bench: no CUDA device\n");
    return 2;
  }
  fmt::print("device: {} (compute {}.{}, {} SMs, {:.1f} GiB)\n", devs[0].name, devs[0].cc_major,
             devs[0].cc_minor, devs[0].sm_count, double(devs[0].total_bytes) / double(1 << 30));
  const double copy_gbs = cuda::measure_copy_gbs(size_t(1) << 30, 10);
  fmt::print("device copy (1 GiB, read + write): {:.0f} GB/s; datasheet peak used: {:.0f} GB/s\n", copy_gbs,
             a.peak_gbs);
  const Synthetic s = make_model(a);
  const HParams& hp = s.model->hparams();
  fmt::print("model: {} {} synthetic, {} layers, weights {:.2f} GiB (layers) + {:.2f} GiB (output)\n",
             a.shape, a.type, hp.n_layers, double(s.layer_weight_bytes) * hp.n_layers / double(1 << 30),
             double(s.output_bytes) / double(1 << 30));

  if (a.kernels) {
    fmt::print("\n| matrix | rows x cols | bytes | us | GB/s | % of copy |\n|---|---|---|---|---|---|\n");
    const LayerWeights& l = s.model->weights().layers[0];
    const std::pair<const char*, const WeightView*> mats[] = {
        {"attn_q", &l.wq},       {"attn_k", &l.wk},       {"attn_output", &l.wo},
        {"ffn_gate", &l.w_gate}, {"ffn_down", &l.w_down}, {"output", &s.model->weights().output}};
    for (auto [name, v] : mats) {
      const size_t bytes = v->row_bytes * size_t(v->rows);
      const int copies = int(std::min<size_t>(16, std::max<size_t>(2, (size_t(256) << 20) / bytes + 1)));
      const auto t = cuda::time_matvec(*v, 50, copies);
      const double gbs = double(t.bytes) / (t.us * 1e-6) / 1e9;
      fmt::print("| {} | {} x {} | {:.1f} MB | {:.1f} | {:.0f} | {:.0f}% |\n", name, v->rows, v->cols,
                 double(t.bytes) / 1e6, t.us, gbs, 100.0 * gbs / copy_gbs);
    }
  }

  // Bytes one decode step must read: every weight once plus the keys and values of the context.
  const int depth = a.depth < 0 ? a.prompt : a.depth;
  const double kv_bytes = 2.0 * hp.kv_dim() * 2.0 * (depth + a.gen / 2.0) * hp.n_layers;
  const double step_bytes = double(s.layer_weight_bytes) * hp.n_layers + double(s.output_bytes) + kv_bytes;

  fmt::print(
      "\n| CUDA graph | pp{} t/s | tg{} @ depth {} t/s | GB/s at decode | % of copy | % of peak |\n"
      "|---|---|---|---|---|---|\n",
      a.prompt, a.gen, depth);
  for (bool graphs : a.graph_compare ? std::vector<bool>{true, false} : std::vector<bool>{true}) {
    const DecodeResult r = run_session(s, a, graphs);
    const double gbs = step_bytes * r.tg_tps / 1e9;
    fmt::print("| {} | {:.0f} | {:.1f} | {:.0f} | {:.0f}% | {:.0f}% |\n", graphs ? "on" : "off", r.pp_tps,
               r.tg_tps, gbs, 100.0 * gbs / copy_gbs, 100.0 * gbs / a.peak_gbs);
  }
  fmt::print("(decode bytes per token: {:.2f} GB = weights {:.2f} + KV {:.3f})\n", step_bytes / 1e9,
             (step_bytes - kv_bytes) / 1e9, kv_bytes / 1e9);

  // Prefill ceiling: the layer GEMMs alone in cuBLAS f16 at m = prompt tokens.
  double gemm_us = 0;
  const int m = std::min(a.prompt, 512);
  for (auto [rows, cols] : {std::pair{hp.q_dim(), hp.n_embd},
                            {hp.kv_dim(), hp.n_embd},
                            {hp.kv_dim(), hp.n_embd},
                            {hp.n_embd, hp.q_dim()},
                            {hp.n_ff, hp.n_embd},
                            {hp.n_ff, hp.n_embd},
                            {hp.n_embd, hp.n_ff}}) {
    gemm_us += cuda::time_gemm_f16(m, rows, cols, 10);
  }
  const double bound_tps = m / (gemm_us * hp.n_layers * 1e-6);
  fmt::print("cuBLAS f16 GEMM bound for a {}-token chunk: {:.0f} t/s ({:.2f} ms per layer)\n", m, bound_tps,
             gemm_us / 1e3);
  return 0;
}

}  // namespace
}  // namespace qleap

int main(int argc, char** argv) {
  try {
    return qleap::run(argc, argv);
  } catch (const std::exception& e) {
    fmt::print(stderr, "qleap_cuda_bench: {}\n", e.what());
    return 1;
  }
}
