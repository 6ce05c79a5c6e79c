// `qleap profile MODEL FILE`: runs a MoE model over a text file and records which experts each
// token selects at each layer; writes a JSON profile (counts, co-activation, entropy,
// token-to-token reuse, next-layer prediction recall) and prints a summary. The profile seeds the
// expert cache (--expert-profile).
// `qleap profile MODEL FILE --kv-sensitivity`: measures, per layer and kv head, how much TurboQuant
// keys and values at 2, 3 and 4 bits change the attention output on chunks of the text, and writes
// the sensitivity profile that `--kv tq3:alloc=FILE` spends its bits by (turboquant/tq_sensitivity.h).
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>

#include "cli/common.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/timer.h"
#include "kv/kv_calibration.h"
#include "kv/kv_turboquant.h"
#include "model/model.h"
#include "moe/expert_profile.h"
#include "moe/routing_trace.h"
#include "runtime/kv_calibrate.h"
#include "runtime/session.h"
#include "tokenizer/tokenizer.h"
#include "turboquant/tq_sensitivity.h"

namespace qleap::cli {
namespace {

struct ProfileOptions {
  CommonOptions common;
  std::string text_file;
  std::string out;
  int max_tokens = 0;
  bool kv_sensitivity = false;
  int chunks = 4;
  bool no_predict = false;
  int top = 8;
};

// Each chunk of the text (one context, from BOS) runs through the model once, as one prefill batch,
// with float caches that keep its keys, values and queries; tq_measure_sensitivity then replays the
// chunk through the TurboQuant quantizer calibrated as every cache of this model is.
void kv_sensitivity_command(ProfileOptions& o, const std::string& text, const std::string& path) {
  auto model = load_model(path);
  const Tokenizer tok = Tokenizer::from_gguf(model->file());
  std::vector<int32_t> ids = tok.encode(text, false, false);
  if (o.max_tokens > 0 && int(ids.size()) > o.max_tokens) ids.resize(size_t(o.max_tokens));
  std::string kv = o.common.kv;
  std::optional<TqKvSpec> spec = parse_tq_kv_type(kv);
  if (!spec) {
    if (o.common.kv_opt && o.common.kv_opt->count() > 0)
      throw InvalidArgument(fmt::format("--kv-sensitivity measures a TurboQuant cache; '{}' is not one", kv));
    kv = "tq3";
    spec = parse_tq_kv_type(kv);
  }
  const int n_ctx = o.common.ctx == 0 ? 2048 : o.common.ctx;
  const int need = std::max(kTqMeasureMinTokens, spec->window + 64);
  if (n_ctx < need)
    throw InvalidArgument(fmt::format("--kv-sensitivity needs a context of at least {} tokens (-c)", need));
  const int n_chunks = std::min<int>(o.chunks, int(ids.size() / size_t(n_ctx)));
  if (n_chunks < 1)
    throw InvalidArgument(
        fmt::format("'{}' has {} tokens, fewer than one context of {} (-c)", o.text_file, ids.size(), n_ctx));
  KvCalibrationRecorder* rec = nullptr;
  EngineOptions eo;
  eo.n_ctx = n_ctx;
  eo.n_batch = n_ctx;
  eo.n_threads = o.common.threads;
  eo.make_host_kv = [&rec](const KvShape& s) {
    auto r = std::make_unique<KvCalibrationRecorder>(s, /*keep_rows=*/true);
    rec = r.get();
    return r;
  };
  Engine engine(model, eo);
  const auto cal = model_kv_calibration(model, engine.pool().size(), default_kv_calibration_dir());
  // The engine's cache shape: sliding windows, soft-capping and sinks are replayed as the model attends.
  const KvShape shape = rec->shape();
  std::optional<TqSensitivity> total;
  Stopwatch sw;
  for (int c = 0; c < n_chunks; ++c) {
    std::vector<int32_t> chunk(ids.begin() + long(c) * n_ctx, ids.begin() + long(c + 1) * n_ctx);
    if (tok.wants_bos()) chunk[0] = tok.bos();
    engine.reset(0);
    rec->reset();
    engine.prefill(0, chunk.data(), int(chunk.size()));
    const TqSensitivity s = tq_measure_sensitivity(*spec, shape, *cal, rec->rows(), &engine.pool());
    if (total) {
      total->merge(s);
    } else {
      total = s;
    }
    std::cerr << fmt::format("\r[chunk {}/{}: {:.1f} s]", c + 1, n_chunks, sw.elapsed()) << std::flush;
  }
  std::cerr << "\n";
  total->model = std::filesystem::path(path).filename().string();
  const std::string out = o.out.empty() ? "kv_sensitivity.json" : o.out;
  save_tq_sensitivity(*total, out);
  std::cerr << fmt::format("[{} chunks of {} tokens in {:.1f} s; profile written to {}]\n", n_chunks, n_ctx,
                           sw.elapsed(), out);
  // Summary: the spread across heads and what a 3-bit allocation does with it.
  const TqSensitivity& s = *total;
  const int n = s.n_heads_total();
  fmt::print(
      "{} layers x {} kv heads, head_dim {}; relative attention-output error per head (window {}, sink {})\n",
      s.n_layers, s.n_kv_heads, s.head_dim, s.window, s.sink);
  for (size_t r = 0; r < s.rates.size(); ++r) {
    std::vector<double> k, v;
    for (int h = 0; h < n; ++h) {
      k.push_back(s.k_err[size_t(h)][r]);
      v.push_back(s.v_err[size_t(h)][r]);
    }
    std::sort(k.begin(), k.end());
    std::sort(v.begin(), v.end());
    fmt::print(
        "  {} bits: keys min {:.2e} median {:.2e} max {:.2e} | values min {:.2e} median {:.2e} max {:.2e}\n",
        s.rates[r], k.front(), k[k.size() / 2], k.back(), v.front(), v[v.size() / 2], v.back());
  }
  for (float avg : {2.5f, 3.0f, 3.5f}) {
    if (avg <= float(s.rates.front()) || avg >= float(s.rates.back())) continue;
    const TqBitAllocation a = tq_allocate_bits(s, avg, tq_allocation_step(s.head_dim));
    double uni = 0, alloc = 0;
    for (int h = 0; h < n; ++h) {
      uni += s.error_at(s.k_err, h, avg) + s.error_at(s.v_err, h, avg);
      alloc += s.error_at(s.k_err, h, a.k_bits[size_t(h)]) + s.error_at(s.v_err, h, a.v_bits[size_t(h)]);
    }
    // How many heads the allocation puts at each rate.
    std::map<float, std::pair<int, int>> hist;
    for (int h = 0; h < n; ++h) {
      ++hist[a.k_bits[size_t(h)]].first;
      ++hist[a.v_bits[size_t(h)]].second;
    }
    std::string rates;
    for (const auto& [b, kv] : hist) rates += fmt::format(" {}:{}/{}", b, kv.first, kv.second);
    fmt::print("  mean {} bits: summed error {:.4g} uniform, {:.4g} allocated ({:.2f}x); bits:K/V heads{}\n",
               avg, uni, alloc, alloc > 0 ? uni / alloc : 0.0, rates);
  }
}

void profile_command(ProfileOptions& o) {
  const std::string text = read_file(o.text_file);  // before loading the model: a bad path fails fast
  const std::string path = resolve_model(o.common.model);
  if (o.kv_sensitivity) return kv_sensitivity_command(o, text, path);
  auto model = load_model(path);
  if (model->hparams().n_expert == 0)
    throw InvalidArgument(fmt::format("'{}' is not a mixture-of-experts model", path));
  const Tokenizer tok = Tokenizer::from_gguf(model->file());
  std::vector<int32_t> ids = tok.encode(text, false, false);
  if (o.max_tokens > 0 && int(ids.size()) > o.max_tokens) ids.resize(size_t(o.max_tokens));
  if (ids.empty()) throw InvalidArgument(fmt::format("'{}' has no tokens", o.text_file));
  SessionOptions so{o.common.ctx == 0 ? 512 : o.common.ctx, o.common.threads, o.common.kv, o.common.batch};
  so.kv_calibration_dir = default_kv_calibration_dir();  // calibrate once per model file
  Session session(model, so);
  RoutingRecorder rec(*model, !o.no_predict);
  session.set_moe_observer(&rec);
  const int n_ctx = session.n_ctx();
  Stopwatch sw;
  // Chunks of one context each, starting fresh (as perplexity does).
  for (size_t b = 0; b < ids.size(); b += size_t(n_ctx)) {
    std::vector<int32_t> chunk(ids.begin() + long(b),
                               ids.begin() + long(std::min(ids.size(), b + size_t(n_ctx))));
    if (tok.wants_bos()) chunk[0] = tok.bos();
    session.reset();
    session.eval(chunk);
  }
  const double secs = sw.elapsed();
  const ExpertProfile p = build_profile(rec.trace(), std::filesystem::path(path).filename().string());
  const std::string out = o.out.empty() ? "expert_profile.json" : o.out;
  save_profile(p, out);
  std::cerr << fmt::format("[{} tokens in {:.1f} s; profile written to {}]\n", ids.size(), secs, out);
  fmt::print("{}", profile_summary(p, o.top));
}

}  // namespace

void register_profile(CLI::App& app) {
  auto opt = std::make_shared<ProfileOptions>();
  auto* cmd = app.add_subcommand(
      "profile",
      "Record expert activations of a MoE model over a text file (JSON profile), or with --kv-sensitivity "
      "measure how much each attention head suffers from TurboQuant KV (for --kv tq3:alloc=FILE)");
  add_common_options(*cmd, opt->common);
  cmd->add_option("file", opt->text_file, "text file to run")->required();
  cmd->add_option("-o,--out", opt->out,
                  "JSON profile to write (default expert_profile.json, or kv_sensitivity.json)");
  cmd->add_flag("--kv-sensitivity", opt->kv_sensitivity,
                "measure per-head TurboQuant KV sensitivity (any model) instead of expert activations: "
                "chunks of -c tokens (default 2048), window/sink options from --kv (a tq type, default tq3)");
  cmd->add_option("--chunks", opt->chunks, "--kv-sensitivity: chunks of the text to measure and average")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  cmd->add_option("--max-tokens", opt->max_tokens, "use at most this many tokens of the file (0: all)");
  cmd->add_flag("--no-predict", opt->no_predict, "skip next-layer prediction (recall)");
  cmd->add_option("--top", opt->top, "experts listed per layer in the summary")->capture_default_str();
  cmd->callback([opt] { profile_command(*opt); });
}

}  // namespace qleap::cli
