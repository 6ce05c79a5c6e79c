// `qleap passkey`: long-context retrieval per KV cache type. A random number is hidden at several
// depths of N tokens of filler (runtime/passkey.h) and the model is asked to repeat it; the table
// says, for every --kv type, which depths it retrieved, and whether each type retrieves what the
// first one (f16 by default) retrieves. With --trials N every depth hides N different numbers: near
// the edge of a model's reach one greedy answer flips with any change to the cache (even f16 vs f32),
// so one trial per depth cannot tell a cache that loses keys from one that was unlucky.
#include "runtime/passkey.h"

#include <fmt/format.h>

#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/common.h"
#include "core/error.h"
#include "model/model.h"
#include "runtime/kv_calibrate.h"
#include "runtime/session.h"
#include "tokenizer/tokenizer.h"

namespace qleap::cli {
namespace {

struct PasskeyOptions {
  CommonOptions common;
  std::string tokens = "4096";
  std::string depths = "0.1,0.5,0.9";
  uint64_t seed = 1234;
  int trials = 1;
  int answer_tokens = 10;
  bool json = false;
};

std::vector<std::string> split_list(const std::string& list, const char* what) {
  std::vector<std::string> out;
  std::stringstream ss(list);
  for (std::string t; std::getline(ss, t, ',');) {
    if (t.empty()) throw InvalidArgument(fmt::format("{} '{}': empty item in the list", what, list));
    out.push_back(t);
  }
  if (out.empty()) throw InvalidArgument(fmt::format("{}: nothing given", what));
  return out;
}

double parse_number(const std::string& s, const char* what) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != s.size() || !std::isfinite(v))
    throw InvalidArgument(fmt::format("{}: '{}' is not a number", what, s));
  return v;
}

void passkey_command(const PasskeyOptions& o) {
  const std::vector<std::string> types = split_list(o.common.kv, "--kv");
  std::vector<int> lengths;
  for (const auto& s : split_list(o.tokens, "--tokens")) {
    const double v = parse_number(s, "--tokens");
    if (v < 64 || v > (1 << 20) || v != std::floor(v))
      throw InvalidArgument(fmt::format("--tokens: '{}' must be a whole number from 64 to 1048576", s));
    lengths.push_back(int(v));
  }
  std::vector<double> depths;
  for (const auto& s : split_list(o.depths, "--depths")) {
    const double d = parse_number(s, "--depths");
    if (d < 0 || d > 1) throw InvalidArgument(fmt::format("--depths: {} is outside [0, 1]", s));
    depths.push_back(d);
  }
  const std::string path = resolve_model(o.common.model);
  auto model = load_model(path);
  const Tokenizer tok = Tokenizer::from_gguf(model->file());
  const int n_train = model->hparams().n_ctx_train;

  nlohmann::json jr = nlohmann::json::array();
  // results[length][type][depth * trials + trial]
  const int nt = o.trials;
  std::vector<std::vector<std::vector<PasskeyTrial>>> results(lengths.size());
  for (size_t li = 0; li < lengths.size(); ++li) {
    const int n = lengths[li];
    const int need = n + o.answer_tokens;
    int n_ctx = o.common.ctx;
    if (n_ctx == 0) n_ctx = need;
    if (n_ctx < need)
      throw InvalidArgument(fmt::format("--ctx {} is too small for {} prompt tokens + {} answer tokens",
                                        n_ctx, n, o.answer_tokens));
    if (n_train > 0 && need > n_train && !o.json)
      std::cerr << fmt::format("[warning: {} tokens exceed the model's trained context of {}]\n", need,
                               n_train);
    std::vector<PasskeyPrompt> prompts;
    // Trial r of depth di hides key number di * trials + r: one trial per depth keeps the keys of
    // earlier versions.
    for (size_t di = 0; di < depths.size(); ++di)
      for (int r = 0; r < nt; ++r)
        prompts.push_back(make_passkey_prompt(tok, n, depths[di], passkey_key(o.seed, int(di) * nt + r)));
    results[li].resize(types.size());
    for (size_t ti = 0; ti < types.size(); ++ti) {
      SessionOptions so{n_ctx, o.common.threads, types[ti], o.common.batch};
      so.kv_calibration_dir = default_kv_calibration_dir();
      Session s(model, so);
      for (size_t pi = 0; pi < prompts.size(); ++pi) {
        const size_t di = pi / size_t(nt);
        const PasskeyTrial t = run_passkey(s, tok, prompts[pi], o.answer_tokens);
        results[li][ti].push_back(t);
        nlohmann::json j = {{"tokens", n},
                            {"kv", types[ti]},
                            {"depth_asked", depths[di]},
                            {"trial", int(pi % size_t(nt))},
                            {"depth", t.depth},
                            {"key", t.key},
                            {"answer", t.answer},
                            {"found", t.found},
                            {"prompt_s", t.prompt_s},
                            {"n_ctx", n_ctx},
                            {"kv_bytes_per_token", s.kv_usage().bytes_per_token}};
        jr.push_back(j);
        // Progress on stderr in both modes: long prompts take minutes each.
        std::cerr << fmt::format("[{} tokens, --kv {}, depth {:.2f}: key {}, answer '{}' -> {} ({:.1f} s)]\n",
                                 n, types[ti], t.depth, t.key, t.answer, t.found ? "found" : "NOT found",
                                 t.prompt_s);
      }
    }
  }
  if (o.json) {
    std::cout << nlohmann::json{{"model", path}, {"seed", o.seed}, {"trials", jr}}.dump(2) << "\n";
    return;
  }
  fmt::print("passkey retrieval, {} (greedy, seed {}{})\n", path, o.seed,
             nt > 1 ? fmt::format(", {} trials per depth", nt) : "");
  for (size_t li = 0; li < lengths.size(); ++li) {
    fmt::print("\n{} tokens | ", lengths[li]);
    for (double d : depths) fmt::print("depth {:<5.2f} | ", d);
    fmt::print("retrieves what {} retrieves\n", types[0]);
    const auto& base = results[li][0];
    for (size_t ti = 0; ti < types.size(); ++ti) {
      const auto& mine = results[li][ti];
      fmt::print("{:>12} | ", types[ti]);
      for (size_t di = 0; di < depths.size(); ++di) {
        int found = 0;
        for (int r = 0; r < nt; ++r) found += mine[di * size_t(nt) + size_t(r)].found;
        if (nt == 1)
          fmt::print("{:<11} | ", found ? "yes" : "no");
        else
          fmt::print("{:<11} | ", fmt::format("{}/{}", found, nt));
      }
      // Paired over the same prompts: keys the first type found and this one missed, and the reverse.
      int lost = 0, gained = 0;
      for (size_t i = 0; i < mine.size(); ++i) {
        lost += base[i].found && !mine[i].found;
        gained += !base[i].found && mine[i].found;
      }
      if (ti == 0)
        fmt::print("-\n");
      else if (nt == 1)
        fmt::print("{}\n", lost == 0 ? "yes" : "NO");
      else
        fmt::print("{} (lost {}, gained {})\n", lost == 0 ? "yes" : "NO", lost, gained);
    }
  }
}

}  // namespace

void register_passkey(CLI::App& app) {
  auto opt = std::make_shared<PasskeyOptions>();
  auto* cmd = app.add_subcommand(
      "passkey",
      "Long-context retrieval per KV cache type: hide a number at several depths of N tokens of filler and "
      "ask the model to repeat it");
  add_common_options(*cmd, opt->common);
  cmd->add_option("--tokens", opt->tokens, "prompt lengths in tokens, comma-separated (e.g. 8192,16384)")
      ->capture_default_str();
  cmd->add_option("--depths", opt->depths, "where the number is hidden, as fractions of the filler")
      ->capture_default_str();
  cmd->add_option("--seed", opt->seed, "seed of the hidden numbers (same seed: same prompts)")
      ->capture_default_str();
  cmd->add_option("--trials", opt->trials,
                  "numbers hidden per depth (different keys); the table counts them, and pairs each type's "
                  "answers with the first type's")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  cmd->add_option("--answer-tokens", opt->answer_tokens, "tokens generated for the answer")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  cmd->add_flag("--json", opt->json, "machine-readable output");
  cmd->callback([opt] { passkey_command(*opt); });
}

}  // namespace qleap::cli
