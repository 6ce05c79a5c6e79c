// `qleap profile MODEL FILE`: runs a MoE model over a text file and records which experts each
// token selects at each layer; writes a JSON profile (counts, co-activation, entropy,
// token-to-token reuse, next-layer prediction recall) and prints a summary. The profile seeds the
// expert cache (--expert-profile).
#include <fmt/format.h>

#include <filesystem>
#include <iostream>

#include "cli/common.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/timer.h"
#include "model/model.h"
#include "moe/expert_profile.h"
#include "moe/routing_trace.h"
#include "runtime/session.h"
#include "tokenizer/tokenizer.h"

namespace qleap::cli {
namespace {

struct ProfileOptions {
  CommonOptions common;
  std::string text_file;
  std::string out = "expert_profile.json";
  int max_tokens = 0;
  bool no_predict = false;
  int top = 8;
};

void profile_command(ProfileOptions& o) {
  const std::string text = read_file(o.text_file);  // before loading the model: a bad path fails fast
  const std::string path = resolve_model(o.common.model);
  auto model = load_model(path);
  if (model->hparams().n_expert == 0)
    throw InvalidArgument(fmt::format("'{}' is not a mixture-of-experts model", path));
  const Tokenizer tok = Tokenizer::from_gguf(model->file());
  std::vector<int32_t> ids = tok.encode(text, false, false);
  if (o.max_tokens > 0 && int(ids.size()) > o.max_tokens) ids.resize(size_t(o.max_tokens));
  if (ids.empty()) throw InvalidArgument(fmt::format("'{}' has no tokens", o.text_file));
  SessionOptions so{o.common.ctx == 0 ? 512 : o.common.ctx, o.common.threads, o.common.kv, o.common.batch};
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
  save_profile(p, o.out);
  std::cerr << fmt::format("[{} tokens in {:.1f} s; profile written to {}]\n", ids.size(), secs, o.out);
  fmt::print("{}", profile_summary(p, o.top));
}

}  // namespace

void register_profile(CLI::App& app) {
  auto opt = std::make_shared<ProfileOptions>();
  auto* cmd = app.add_subcommand("profile",
                                 "Record expert activations of a MoE model over a text file (JSON profile)");
  add_common_options(*cmd, opt->common);
  cmd->add_option("file", opt->text_file, "text file to run")->required();
  cmd->add_option("-o,--out", opt->out, "JSON profile to write")->capture_default_str();
  cmd->add_option("--max-tokens", opt->max_tokens, "use at most this many tokens of the file (0: all)");
  cmd->add_flag("--no-predict", opt->no_predict, "skip next-layer prediction (recall)");
  cmd->add_option("--top", opt->top, "experts listed per layer in the summary")->capture_default_str();
  cmd->callback([opt] { profile_command(*opt); });
}

}  // namespace qleap::cli
