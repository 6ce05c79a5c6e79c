// `qleap bench`: prompt processing (pp) and generation (tg) throughput, peak memory, and decode
// bandwidth set against the machine's measured bandwidth. Same test definitions as llama-bench
// (random tokens; pp = one batch of N prompt tokens unless -b is given, tg = N single-token steps from an
// empty context) so the figures compare directly.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "autoconf/memory_bandwidth.h"
#include "autoconf/planner.h"
#include "backend/cpu/matmul.h"
#include "backend/cpu/packed_weights.h"
#include "cli/bench_moe.h"
#include "cli/common.h"
#include "core/cpu_features.h"
#include "core/error.h"
#include "core/timer.h"
#include "gguf/gguf.h"
#include "model/model.h"
#include "runtime/engine.h"
#include "runtime/kv_calibrate.h"
#include "runtime/session.h"

namespace qleap::cli {
namespace {

// CPU seconds used by this process (all threads). On a machine shared with other jobs, decode
// tokens per CPU-second (with one thread) is far more stable than wall-clock tok/s.
double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

struct BenchOptions {
  CommonOptions common;
  int n_prompt = 512;
  int n_gen = 128;
  int reps = 3;
  int depth = 0;     // tg after a context of this many tokens (long-context decode)
  int pp_depth = 0;  // pp after a context of this many tokens (long-prompt prefill)
  std::string fill = "prefill";
  bool json = false;
  bool no_membw = false;
  bool moe = false;
  bool compress = false;
  std::string mem_budget;  // --mem-budget: the largest context per KV type that fits (no timing)
  int parallel = 1;
  MoeBenchOptions moe_opt;
};

struct Sample {
  double mean = 0, sd = 0;
};

Sample summarize(const std::vector<double>& v) {
  Sample s;
  for (double x : v) s.mean += x;
  s.mean /= double(v.size());
  for (double x : v) s.sd += (x - s.mean) * (x - s.mean);
  s.sd = v.size() > 1 ? std::sqrt(s.sd / double(v.size() - 1)) : 0;
  return s;
}

// Weight bytes streamed from memory per generated token: every tensor except the embedding table
// (one row is read), unless the output projection is tied to it.
uint64_t decode_bytes_per_token(const GgufFile& f) {
  const bool tied = f.find_tensor("output.weight") == nullptr;
  uint64_t n = 0;
  for (const auto& t : f.tensors()) {
    if (t.name == "token_embd.weight" && !tied) {
      n += t.nbytes / uint64_t(std::max<int64_t>(1, t.ne(1)));
      continue;
    }
    n += t.nbytes;
  }
  return n;
}

// Fills the first `ctx.size()` positions for a decode-at-depth test: random K/V stored straight into
// the cache (--fill random) or a prefill of the given tokens. Not timed by the callers' rates.
void fill_depth(Session& s, const std::string& fill, const std::vector<int32_t>& ctx) {
  if (ctx.empty()) return;
  if (fill == "random") {
    s.fill_random_context(int(ctx.size()), 1234);
  } else {
    s.eval(ctx);
  }
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  size_t b = 0;
  while (b <= s.size()) {
    const size_t e = std::min(s.find(',', b), s.size());
    if (e > b) out.push_back(s.substr(b, e - b));
    b = e + 1;
  }
  return out;
}

// `--kv A,B,...`: decode speed of several KV cache types in one process. Each type gets its own
// session on the same weights and the same context (same random K/V or the same prefill tokens);
// the rounds are interleaved (A B C, A B C, ...) so that a drift in the machine's speed hits every
// type alike, and each type's rate is reported as the mean of its per-round ratios to the first type.
void bench_kv_compare(BenchOptions& o, const std::vector<std::string>& types) {
  if (o.n_gen <= 0) throw InvalidArgument("--kv with several types compares decode speed: give -n > 0");
  const std::string path = resolve_model(o.common.model);
  auto model = load_model(path);
  SessionOptions base{o.common.ctx, o.common.threads, types[0], o.common.batch};
  base.kv_calibration_dir = default_kv_calibration_dir();  // calibrate once per model file
  CommonOptions first = o.common;                          // the planner sees one type
  first.kv = types[0];
  auto_session_options(first, path, /*quiet=*/true, &base.gpu_layers);
  if (base.n_ctx == 0) base.n_ctx = o.depth + o.n_gen + 16;
  if (o.depth + o.n_gen > base.n_ctx)
    throw InvalidArgument(
        fmt::format("--depth {} + -n {} exceed the context {}", o.depth, o.n_gen, base.n_ctx));
  const HParams& hp = model->hparams();
  const double f16_bpt = 2.0 * 2.0 * hp.kv_layers() * hp.n_kv_heads * hp.head_dim;
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> pick(0, model->n_vocab() - 1);
  std::vector<int32_t> ctx(size_t(o.depth));
  for (auto& t : ctx) t = pick(rng);
  std::vector<int32_t> gen(size_t(o.n_gen) + 1);
  for (auto& t : gen) t = pick(rng);

  std::vector<std::unique_ptr<Session>> sessions;
  for (const auto& type : types) {
    SessionOptions so = base;
    so.kv_type = type;
    sessions.push_back(std::make_unique<Session>(model, so));
    Session& s = *sessions.back();
    Stopwatch sw;
    fill_depth(s, o.fill, ctx);
    s.eval({gen[0]});  // warm-up
    if (!o.json)
      std::cerr << fmt::format("[{}: context of {} tokens filled ({}) in {:.1f} s]\n", type, o.depth, o.fill,
                               sw.elapsed());
  }
  const size_t nt = types.size();
  std::vector<std::vector<double>> wall(nt), cpu(nt), ratio(nt);
  for (int r = 0; r < o.reps; ++r) {
    for (size_t i = 0; i < nt; ++i) {
      Session& s = *sessions[i];
      // A sliding-window model's rings cannot go back: fill the context again (not timed).
      if (s.truncate(o.depth) != o.depth) fill_depth(s, o.fill, ctx);
      const double c0 = process_cpu_seconds();
      Stopwatch sw;
      for (int g = 1; g <= o.n_gen; ++g) s.eval({gen[size_t(g)]});
      wall[i].push_back(o.n_gen / sw.elapsed());
      cpu[i].push_back(o.n_gen / std::max(1e-9, process_cpu_seconds() - c0));
    }
    for (size_t i = 0; i < nt; ++i) ratio[i].push_back(wall[i].back() / wall[0].back());
  }
  nlohmann::json out;
  out["model"] = path;
  out["threads"] = sessions[0]->pool().size();
  out["isa"] = isa_name(isa_level());
  out["depth"] = o.depth;
  out["fill"] = o.fill;
  out["n_gen"] = o.n_gen;
  out["reps"] = o.reps;
  out["baseline"] = types[0];
  if (!o.json) {
    fmt::print("model: {} ({} threads, {}), tg{} at depth {} ({} fill), {} interleaved rounds\n", path,
               sessions[0]->pool().size(), isa_name(isa_level()), o.n_gen, o.depth, o.fill, o.reps);
    fmt::print("| {:>10} | {:>10} | {:>7} | {:>16} | {:>16} | {:>15} |\n", "kv", "B/token", "vs f16", "tok/s",
               "tok/CPU-s", fmt::format("vs {}", types[0]));
    fmt::print("| {:->10} | {:->10} | {:->7} | {:->16} | {:->16} | {:->15} |\n", "", "", "", "", "", "");
  }
  for (size_t i = 0; i < nt; ++i) {
    const Sample w = summarize(wall[i]), c = summarize(cpu[i]), q = summarize(ratio[i]);
    const size_t bpt = sessions[i]->kv().bytes_per_token();
    out["types"].push_back({{"kv", types[i]},
                            {"kv_bytes_per_token", bpt},
                            {"kv_compression_vs_f16", f16_bpt / double(bpt)},
                            {"tps", w.mean},
                            {"sd", w.sd},
                            {"tokens_per_cpu_second", c.mean},
                            {"tokens_per_cpu_second_sd", c.sd},
                            {"ratio", q.mean},
                            {"ratio_sd", q.sd}});
    if (!o.json)
      fmt::print(
          "| {:>10} | {:>10} | {:>6.2f}x | {:>8.2f} ± {:<5.2f} | {:>8.2f} ± {:<5.2f} | {:>7.3f} ± {:<5.3f} "
          "|\n",
          types[i], bpt, f16_bpt / double(bpt), w.mean, w.sd, c.mean, c.sd, q.mean, q.sd);
  }
  if (o.json) std::cout << out.dump(2) << "\n";
}

// `--mem-budget B`: for each --kv type, the largest context whose RAM (weights + KV caches of all
// --parallel slots + activations of one batch + runtime, as the planner counts it, CPU only) fits in B.
// The KV bytes are the caches' own: bytes per position plus fixed rows (TurboQuant's exact sink and
// window, sliding-window rings), checked against their allocation in tests.
void bench_capacity(const BenchOptions& o) {
  const uint64_t budget = parse_bytes(o.mem_budget, "--mem-budget");
  const bool kv_given = o.common.kv_opt && o.common.kv_opt->count() > 0;
  const std::vector<std::string> types = kv_given ? split_commas(o.common.kv) : planner_kv_types();
  if (types.empty()) throw InvalidArgument("--kv: no type given");
  const std::string path = resolve_model(o.common.model);
  auto file = GgufFile::open(path);
  const ModelInfo m = model_info_from_gguf(*file, types);
  const int batch = o.common.batch;
  nlohmann::json out;
  out["model"] = path;
  out["mem_budget"] = budget;
  out["parallel"] = o.parallel;
  out["batch"] = batch;
  out["weight_bytes"] = m.weight_bytes();
  out["n_ctx_train"] = m.n_ctx_train;
  if (!o.json) {
    fmt::print("model: {} ({} of weights, trained context {}); RAM budget {}, {} slot{}, batch {}\n", path,
               human_bytes(double(m.weight_bytes())), m.n_ctx_train, human_bytes(double(budget)), o.parallel,
               o.parallel > 1 ? "s" : "", batch);
    fmt::print("| {:>10} | {:>10} | {:>11} | {:>18} | {:>12} | {:>9} |\n", "kv", "B/token", "fixed",
               "max context", "RAM at max", "vs first");
    fmt::print("| {:->10} | {:->10} | {:->11} | {:->18} | {:->12} | {:->9} |\n", "", "", "", "", "", "");
  }
  int first = -1;
  for (const auto& t : types) {
    const int n = max_context_in_budget(m, t, budget, batch, o.parallel);
    if (first < 0) first = n;
    const uint64_t ram = cpu_ram_bytes(m, t, n, batch, o.parallel);
    out["types"].push_back({{"kv", t},
                            {"kv_bytes_per_token", m.kv_bytes(t)},
                            {"kv_fixed_bytes", m.kv_fixed(t)},
                            {"max_ctx", n},
                            {"ram_bytes_at_max", ram}});
    if (!o.json) {
      fmt::print("| {:>10} | {:>10} | {:>11} | {:>18} | {:>12} | {:>9} |\n", t, m.kv_bytes(t),
                 human_bytes(double(m.kv_fixed(t))),
                 n > 0 ? fmt::format("{}{}", n, m.n_ctx_train > 0 && n > m.n_ctx_train ? " (> trained)" : "")
                       : "does not fit",
                 human_bytes(double(ram)),
                 first > 0 ? fmt::format("{:.2f}x", double(n) / double(first)) : "-");
    }
  }
  if (o.json) {
    std::cout << out.dump(2) << "\n";
  } else if (first == 0) {
    fmt::print("(weights, activations and runtime alone need {} with {})\n",
               human_bytes(double(cpu_ram_bytes(m, types[0], 0, batch, o.parallel))), types[0]);
  }
}

// `--parallel N` without --mem-budget: N sequences decode together (one token of each per step, as
// the server's parallel slots do; each step reads the weights once for all N) against one of them
// alone, in interleaved rounds on the same engine, so the ratio is immune to the machine's drift.
void bench_slots(const BenchOptions& o) {
  const int N = o.parallel;
  if (o.n_gen <= 0) throw InvalidArgument("--parallel without --mem-budget times decode: give -n > 0");
  const std::string path = resolve_model(o.common.model);
  auto model = load_model(path);
  SessionOptions so{o.common.ctx, o.common.threads, o.common.kv, o.common.batch};
  so.kv_calibration_dir = default_kv_calibration_dir();
  auto_session_options(o.common, path, /*quiet=*/true, &so.gpu_layers);
  if (so.n_ctx == 0) so.n_ctx = o.depth + o.n_gen + 16;
  if (o.depth + o.n_gen + 1 > so.n_ctx)
    throw InvalidArgument(
        fmt::format("--depth {} + -n {} exceed the context {}", o.depth, o.n_gen, so.n_ctx));
  Engine engine(model, engine_options(so, N));
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> pick(0, engine.n_vocab() - 1);
  std::vector<int> slots(static_cast<size_t>(N));
  std::vector<int32_t> toks(static_cast<size_t>(N));
  for (int i = 0; i < N; ++i) slots[size_t(i)] = i;
  // Every round starts each slot from the same context (untimed): depth positions, then one token.
  auto refill = [&](int slot) {
    engine.reset(slot);
    if (o.depth > 0) {
      if (o.fill == "random") {
        engine.fill_random_context(slot, o.depth, 1234 + uint64_t(slot));
      } else {
        std::vector<int32_t> ctx(size_t(o.depth));
        for (auto& t : ctx) t = pick(rng);
        engine.prefill(slot, ctx.data(), o.depth);
      }
    }
    const int32_t t = pick(rng);
    engine.prefill(slot, &t, 1);
  };
  auto steps = [&](int m) {  // n_gen steps of slots [0, m); tokens per second over all of them
    for (int s = 0; s < m; ++s) refill(s);
    Stopwatch sw;
    for (int i = 0; i < o.n_gen; ++i) {
      for (auto& t : toks) t = pick(rng);
      engine.decode(slots.data(), toks.data(), m);
    }
    return double(m) * o.n_gen / sw.elapsed();
  };
  steps(1);  // warm-up (page faults, calibration, thread start)
  std::vector<double> one, all, ratio;
  for (int r = 0; r < o.reps; ++r) {
    one.push_back(steps(1));
    all.push_back(steps(N));
    ratio.push_back(all.back() / one.back());
  }
  const Sample a = summarize(one), b = summarize(all), q = summarize(ratio);
  nlohmann::json out;
  out["model"] = path;
  out["threads"] = engine.pool().size();
  out["isa"] = isa_name(isa_level());
  out["kv"] = o.common.kv;
  out["slots"] = {{"n", N},          {"n_gen", o.n_gen},  {"depth", o.depth}, {"tps_one", a.mean},
                  {"sd_one", a.sd},  {"tps_all", b.mean}, {"sd_all", b.sd},   {"ratio", q.mean},
                  {"ratio_sd", q.sd}};
  if (o.json) {
    std::cout << out.dump(2) << "\n";
    return;
  }
  fmt::print("model: {} ({} threads, {}, KV {}), {} interleaved rounds\n", path, engine.pool().size(),
             isa_name(isa_level()), o.common.kv, o.reps);
  const std::string test =
      o.depth > 0 ? fmt::format("tg{}@d{}", o.n_gen, o.depth) : fmt::format("tg{}", o.n_gen);
  fmt::print("| {:>12} | {:>22} | {:>16} |\n", "test", "t/s (all slots)", "vs 1 slot");
  fmt::print("| {:->12} | {:->22} | {:->16} |\n", "", "", "");
  fmt::print("| {:>12} | {:>12.2f} ± {:<7.2f} | {:>16} |\n", test + " x1", a.mean, a.sd, "1.00");
  fmt::print("| {:>12} | {:>12.2f} ± {:<7.2f} | {:>8.2f}x ± {:<4.2f} |\n", fmt::format("{} x{}", test, N),
             b.mean, b.sd, q.mean, q.sd);
}

void bench_command(BenchOptions& o) {
  if (!o.mem_budget.empty()) {
    bench_capacity(o);
    return;
  }
  if (o.compress) {
    bench_compress_command(o.common, o.json);
    return;
  }
  if (o.parallel > 1) {
    bench_slots(o);
    return;
  }
  if (o.moe) {
    bench_moe_command(o.common, o.n_prompt, o.n_gen, o.reps, o.json, o.moe_opt);
    return;
  }
  if (const auto types = split_commas(o.common.kv); types.size() > 1) {
    bench_kv_compare(o, types);
    return;
  }
  const std::string path = resolve_model(o.common.model);
  auto model = load_model(path);
  const GgufFile& file = model->file();
  SessionOptions so{o.common.ctx, o.common.threads, o.common.kv, o.common.batch};
  so.kv_calibration_dir = default_kv_calibration_dir();                  // calibrate once per model file
  auto_session_options(o.common, path, /*quiet=*/true, &so.gpu_layers);  // only the GPU layer count
  if (so.n_ctx == 0) so.n_ctx = std::max(o.n_prompt + o.pp_depth, o.depth) + o.n_gen + 16;
  if (o.pp_depth + o.n_prompt > so.n_ctx)
    throw InvalidArgument(
        fmt::format("--pp-depth {} + -p {} exceed the context {}", o.pp_depth, o.n_prompt, so.n_ctx));
  if (o.depth + o.n_gen > so.n_ctx)
    throw InvalidArgument(
        fmt::format("--depth {} + -n {} exceed the context {}", o.depth, o.n_gen, so.n_ctx));
  const int n_train = model->hparams().n_ctx_train;
  if (n_train > 0 && so.n_ctx > n_train) {
    std::cerr << fmt::format(
        "warning: context {} exceeds the model's training context {} (speed is still "
        "meaningful, quality is not)\n",
        so.n_ctx, n_train);
  }
  // pp is one batch of N tokens unless -b is given: `-b 512` processes a long prompt in 512-token
  // batches, as run/serve and llama-bench (its -ub default) do, so long-prompt rates compare directly.
  const bool batch_given = o.common.batch_opt != nullptr && o.common.batch_opt->count() > 0;
  if (o.n_prompt > so.n_batch && !batch_given) so.n_batch = o.n_prompt;
  Session session(model, so);
  const int n_vocab = session.n_vocab();
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> pick(0, n_vocab - 1);

  nlohmann::json out;
  out["model"] = path;
  out["threads"] = session.pool().size();
  out["isa"] = isa_name(isa_level());
  out["kv"] = o.common.kv;
  out["placement"] = session.placement().describe();
  if (!session.placement().note.empty()) fmt::print(stderr, "note: {}\n", session.placement().note);
  out["weights_bytes"] = file.tensor_bytes();
  out["repacked_bytes"] = model->prepared().bytes();
  out["cpu_kernels"] = matmul_path_summary();

  if (!o.json) {
    fmt::print("model: {} ({}, {} threads, {}, KV {})\n", path, human_bytes(double(file.tensor_bytes())),
               session.pool().size(), isa_name(isa_level()), o.common.kv);
    fmt::print("placement: {}\n", session.placement().describe());
    fmt::print("CPU kernels: {}; repacked: {}\n", matmul_path_summary(), model->prepared().describe());
    fmt::print("| {:>8} | {:>16} |\n", "test", "t/s");
    fmt::print("| {:->8} | {:->16} |\n", "", "");
  }

  if (o.n_prompt > 0) {
    std::vector<int32_t> toks(size_t(o.n_prompt));
    for (auto& t : toks) t = pick(rng);
    session.reset();
    if (o.pp_depth > 0) {
      // The context is filled once (untimed); each repetition truncates back to it.
      std::vector<int32_t> ctx(size_t(o.pp_depth));
      for (auto& t : ctx) t = pick(rng);
      Stopwatch sw;
      fill_depth(session, o.fill, ctx);
      if (!o.json)
        std::cerr << fmt::format("[context of {} tokens filled ({}) in {:.1f} s]\n", o.pp_depth, o.fill,
                                 sw.elapsed());
    }
    session.eval(std::vector<int32_t>(toks.begin(), toks.begin() + std::min(o.n_prompt, 16)));  // warm-up
    std::vector<double> rates;
    for (int r = 0; r < o.reps; ++r) {
      session.truncate(o.pp_depth);
      Stopwatch sw;
      session.eval(toks);
      rates.push_back(o.n_prompt / sw.elapsed());
    }
    const Sample s = summarize(rates);
    out["pp"] = {{"n", o.n_prompt},
                 {"depth", o.pp_depth},
                 {"batch", std::min(so.n_batch, o.n_prompt)},
                 {"tps", s.mean},
                 {"sd", s.sd}};
    const std::string name =
        o.pp_depth > 0 ? fmt::format("pp{}@d{}", o.n_prompt, o.pp_depth) : fmt::format("pp{}", o.n_prompt);
    if (!o.json) fmt::print("| {:>8} | {:>8.2f} ± {:<5.2f} |\n", name, s.mean, s.sd);
  }
  if (o.n_gen > 0) {
    std::vector<double> rates;
    session.reset();
    std::vector<int32_t> ctx;
    if (o.depth > 0) {
      // The context is filled once (prefill of random tokens, not timed); each repetition then
      // truncates back to it and decodes n_gen tokens on top.
      ctx.resize(size_t(o.depth));
      for (auto& t : ctx) t = pick(rng);
      Stopwatch sw;
      fill_depth(session, o.fill, ctx);
      out["depth"] = {{"n", o.depth}, {"fill", o.fill}, {"fill_seconds", sw.elapsed()}};
      if (!o.json)
        std::cerr << fmt::format("[context of {} tokens filled ({}) in {:.1f} s]\n", o.depth, o.fill,
                                 sw.elapsed());
    }
    session.eval({pick(rng)});  // warm-up
    std::vector<double> cpu_rates;
    for (int r = 0; r < o.reps; ++r) {
      if (session.truncate(o.depth) != o.depth) fill_depth(session, o.fill, ctx);
      const double c0 = process_cpu_seconds();
      Stopwatch sw;
      for (int i = 0; i < o.n_gen; ++i) session.eval({pick(rng)});
      rates.push_back(o.n_gen / sw.elapsed());
      cpu_rates.push_back(o.n_gen / std::max(1e-9, process_cpu_seconds() - c0));
    }
    const Sample s = summarize(rates);
    const Sample cs = summarize(cpu_rates);
    const double bpt = double(decode_bytes_per_token(file));
    out["tg"] = {{"n", o.n_gen},
                 {"depth", o.depth},
                 {"tps", s.mean},
                 {"sd", s.sd},
                 {"tokens_per_cpu_second", cs.mean},
                 {"tokens_per_cpu_second_sd", cs.sd},
                 {"weight_bytes_per_token", bpt},
                 {"weight_gbps", bpt * s.mean / 1e9}};
    const std::string name =
        o.depth > 0 ? fmt::format("tg{}@d{}", o.n_gen, o.depth) : fmt::format("tg{}", o.n_gen);
    if (!o.json)
      fmt::print("| {:>8} | {:>8.2f} ± {:<5.2f} |   ({:.2f} ± {:.2f} tokens per CPU-second)\n", name, s.mean,
                 s.sd, cs.mean, cs.sd);
  }
  out["peak_rss_bytes"] = peak_rss_bytes();
  out["kv_bytes_per_token"] = session.kv_usage().bytes_per_token;
  const HParams& hp = model->hparams();
  const double f16_bpt = 2.0 * 2.0 * hp.kv_layers() * hp.n_kv_heads * hp.head_dim;
  out["kv_compression_vs_f16"] = f16_bpt / double(session.kv_usage().bytes_per_token);
  if (!o.no_membw) {
    const auto bw = measure_read_bandwidth(session.pool());
    out["machine_read_gbps"] = bw.read_gbps;
    out["machine_read_gbps_median"] = bw.median_gbps;
    out["machine_read_probes"] = bw.probes;
    if (bw.busy) out["machine_busy"] = bw.note;
  }
  if (o.json) {
    std::cout << out.dump(2) << "\n";
    return;
  }
  // Peak RSS as recorded before the bandwidth probe, whose buffer is not the model's.
  fmt::print("peak RSS: {}   KV: {} per token ({} B, {:.2f}x smaller than f16)\n",
             human_bytes(double(out["peak_rss_bytes"].get<size_t>())),
             human_bytes(double(session.kv_usage().bytes_per_token)), session.kv_usage().bytes_per_token,
             double(out["kv_compression_vs_f16"]));
  if (out.contains("tg")) {
    fmt::print("decode reads {} of weights per token: {:.2f} GB/s",
               human_bytes(out["tg"]["weight_bytes_per_token"]), double(out["tg"]["weight_gbps"]));
    if (out.contains("machine_read_gbps")) {
      // The best probe is the machine's capacity; the median shows how much it moved while measured
      // (a VM's neighbours), so a decode figure far from the best but near the median is the host's.
      const double m = out["machine_read_gbps"], med = out["machine_read_gbps_median"];
      const double w = out["tg"]["weight_gbps"];
      fmt::print(" vs machine {:.2f} GB/s measured ({:.0f}%; best of {} probes, median {:.2f} GB/s: {:.0f}%)",
                 m, 100.0 * w / m, int(out["machine_read_probes"]), med, 100.0 * w / med);
    }
    fmt::print("\n");
    if (out.contains("machine_busy"))
      fmt::print("the machine looked busy while probing: {}\n", out["machine_busy"].get<std::string>());
  }
}

}  // namespace

void register_bench(CLI::App& app) {
  auto opt = std::make_shared<BenchOptions>();
  auto* cmd =
      app.add_subcommand("bench", "Measure prompt (pp) and generation (tg) speed, peak memory and bandwidth");
  add_common_options(*cmd, opt->common);
  cmd->add_option("-p,--n-prompt", opt->n_prompt, "prompt tokens for the pp test (0: skip)")
      ->capture_default_str();
  cmd->add_option("-n,--n-gen", opt->n_gen, "generated tokens for the tg test (0: skip)")
      ->capture_default_str();
  cmd->add_option("-r,--reps", opt->reps, "repetitions of each test")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  cmd->add_option("-d,--depth", opt->depth,
                  "tg after a context of this many tokens (filled by an untimed prefill)")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--pp-depth", opt->pp_depth,
                  "pp after a context of this many tokens (filled once, untimed; each repetition "
                  "truncates back to it)")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--fill", opt->fill,
                  "how --depth / --pp-depth fill the context: prefill (evaluate random tokens) or random "
                  "(store random K/V "
                  "directly; decode cost does not depend on the values, and long contexts fill in seconds)")
      ->check(CLI::IsMember({"prefill", "random"}))
      ->capture_default_str();
  cmd->add_flag("--json", opt->json, "machine-readable output");
  cmd->add_flag("--no-membw", opt->no_membw, "skip the memory bandwidth measurement");
  cmd->add_flag("--moe", opt->moe,
                "MoE: measured CPU speed + simulated expert-cache policies on the same run");
  cmd->add_flag("--compress", opt->compress,
                "zstd / lz4 ratio and decompression speed on the FFN (expert) weights");
  cmd->add_option("--moe-budget", opt->moe_opt.budget_frac,
                  "--moe: expert cache budget, fraction of all expert bytes")
      ->capture_default_str();
  cmd->add_option("--expert-profile", opt->moe_opt.profile,
                  "--moe: profile (qleap profile) seeding the static policy");
  cmd->add_option("--moe-text", opt->moe_opt.text,
                  "--moe: take the tokens from this text file (default: random ids)");
  cmd->add_option("--admit-hits", opt->moe_opt.admit_hits, "--moe: hits within the window before promotion")
      ->capture_default_str();
  cmd->add_option("--window", opt->moe_opt.window, "--moe: hysteresis window in tokens")
      ->capture_default_str();
  cmd->add_option("--mem-budget", opt->mem_budget,
                  "report, per --kv type (default: f16,tq4,tq3), the largest context whose weights + KV + "
                  "activations fit in this much RAM (e.g. 2GiB, 512MiB); nothing is timed");
  cmd->add_option("--parallel", opt->parallel,
                  "slots, each with its own KV cache: with --mem-budget, counted; otherwise tg decodes one "
                  "token of each slot per step (the server's parallel slots), timed against one slot alone "
                  "in interleaved rounds")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  add_expert_flow_options(*cmd, opt->moe_opt.experts, false);  // --moe: measured with the ExpertFlow runtime
  if (auto* kv = cmd->get_option_no_throw("--kv"))
    kv->description(kv->get_description() +
                    ". bench: a comma list (e.g. f16,q8_0,tq3) times decode with each type in one process, "
                    "rounds interleaved, and reports each relative to the first");
  cmd->callback([opt] { bench_command(*opt); });
}

}  // namespace qleap::cli
