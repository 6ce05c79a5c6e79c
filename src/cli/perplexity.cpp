// `qleap perplexity`: perplexity of a text file, scored like llama-perplexity (chunks of n_ctx
// tokens starting with BOS; only the second half of each chunk is scored so every scored token has
// at least n_ctx/2 tokens of context).
#include <fmt/format.h>

#include <cmath>
#include <iostream>

#include "cli/common.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/timer.h"
#include "model/model.h"
#include "runtime/kv_calibrate.h"
#include "runtime/logit_compare.h"
#include "runtime/session.h"
#include "tokenizer/tokenizer.h"

namespace qleap::cli {
namespace {

struct PplOptions {
  CommonOptions common;
  std::string text_file;
  int chunks = -1;
};

void perplexity_command(PplOptions& o) {
  const std::string text = read_file(o.text_file);  // before loading the model: a bad path fails fast
  const std::string path = resolve_model(o.common.model);
  auto model = load_model(path);
  const Tokenizer tok = Tokenizer::from_gguf(model->file());
  SessionOptions so{o.common.ctx == 0 ? 512 : o.common.ctx, o.common.threads, o.common.kv, o.common.batch};
  so.kv_calibration_dir = default_kv_calibration_dir();                  // calibrate once per model file
  auto_session_options(o.common, path, /*quiet=*/true, &so.gpu_layers);  // only the GPU layer count
  Session session(model, so);
  const int n_ctx = session.n_ctx();
  size_t n_tokens = 0;
  const std::vector<std::vector<int32_t>> chunks = perplexity_chunks(tok, text, n_ctx, o.chunks, &n_tokens);
  const int n_chunks = int(chunks.size());
  if (n_chunks == 0) {
    throw InvalidArgument(
        fmt::format("'{}' has {} tokens, fewer than one context of {}", o.text_file, n_tokens, n_ctx));
  }
  std::cerr << fmt::format("[{} tokens, {} chunks of {}, KV {}]\n", n_tokens, n_chunks, n_ctx, o.common.kv);
  double sum = 0, sum2 = 0;
  int64_t count = 0;
  Stopwatch sw;
  for (int c = 0; c < n_chunks; ++c) {
    const std::vector<int32_t>& chunk = chunks[size_t(c)];
    session.reset();
    const std::vector<float>& logits = session.eval(chunk, true);
    const int nv = session.n_vocab();
    for (int i = n_ctx / 2; i < n_ctx - 1; ++i) {
      const float* l = logits.data() + size_t(i) * nv;
      float mx = l[0];
      for (int k = 1; k < nv; ++k) mx = std::max(mx, l[k]);
      double z = 0;
      for (int k = 0; k < nv; ++k) z += std::exp(double(l[k] - mx));
      const double nll = -(double(l[chunk[i + 1]] - mx) - std::log(z));
      sum += nll;
      sum2 += nll * nll;
      ++count;
    }
    const double mean = sum / double(count);
    std::cerr << fmt::format("[{}/{}] ppl {:.4f}  ({:.1f} s)\n", c + 1, n_chunks, std::exp(mean),
                             sw.elapsed());
  }
  const double mean = sum / double(count);
  const double var = std::max(0.0, sum2 / double(count) - mean * mean);
  const double ppl = std::exp(mean);
  // Delta method: the standard error of mean NLL scaled by dPPL/dNLL = PPL.
  const double se = ppl * std::sqrt(var / double(std::max<int64_t>(1, count - 1)));
  fmt::print("PPL = {:.4f} +/- {:.4f}  ({} tokens scored, KV {})\n", ppl, se, count, o.common.kv);
}

}  // namespace

void register_perplexity(CLI::App& app) {
  auto opt = std::make_shared<PplOptions>();
  auto* cmd = app.add_subcommand("perplexity", "Perplexity of a model on a text file (with standard error)");
  add_common_options(*cmd, opt->common);
  cmd->add_option("file", opt->text_file, "text file to score")->required();
  cmd->add_option("--chunks", opt->chunks, "score at most this many chunks");
  cmd->callback([opt] { perplexity_command(*opt); });
}

}  // namespace qleap::cli
