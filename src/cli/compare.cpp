// `qleap compare`: what a KV cache type costs against a baseline (f16 by default), on the same
// tokens. Two modes:
//  - prompts: greedy continuations with both caches (printed side by side), then both sessions are
//    teacher-forced over the baseline's continuation and every generated position gets
//    KL(P_base || P_test) and a top-1 agreement flag;
//  - --text FILE: the perplexity protocol (chunks of n_ctx starting with BOS, second half scored) run
//    with both caches: PPL of each, the paired PPL ratio, mean / p99 / max KLD and top-1 agreement.
#include <fmt/format.h>

#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/common.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/timer.h"
#include "model/model.h"
#include "runtime/logit_compare.h"
#include "runtime/session.h"
#include "tokenizer/tokenizer.h"

namespace qleap::cli {
namespace {

struct CompareOptions {
  CommonOptions common;
  std::string base = "f16";
  std::string prompt;
  std::string prompts_file;
  std::string text_file;
  int n_gen = 32;
  int chunks = -1;
  int width = 48;  // characters per column of the side-by-side continuations
  bool json = false;
};

int32_t argmax(const float* x, int n) {
  int32_t a = 0;
  for (int i = 1; i < n; ++i)
    if (x[i] > x[a]) a = i;
  return a;
}

std::vector<int32_t> greedy(Session& s, const Tokenizer& tok, const std::vector<int32_t>& prompt, int n) {
  s.reset();
  std::vector<int32_t> out;
  const std::vector<float>* logits = &s.eval(prompt);
  for (int i = 0; i < n; ++i) {
    const int32_t t = argmax(logits->data(), s.n_vocab());
    if (tok.is_eog(t)) break;
    out.push_back(t);
    if (i + 1 < n) logits = &s.eval({t});
  }
  return out;
}

std::string printable(std::string s) {
  std::string r;
  for (char c : s) {
    if (c == '\n') {
      r += "\\n";
    } else if (c == '\t') {
      r += "\\t";
    } else {
      r += c;
    }
  }
  return r;
}

// Splits text into lines of at most width bytes (never inside a UTF-8 sequence), breaking at '\n'.
std::vector<std::string> wrap(const std::string& text, int width) {
  std::vector<std::string> lines(1);
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == '\n') {
      lines.emplace_back();
      continue;
    }
    if (int(lines.back().size()) >= width && (c & 0xC0) != 0x80) lines.emplace_back();
    lines.back() += char(c);
  }
  return lines;
}

// Display width of a UTF-8 string (code points; good enough for the side-by-side layout).
size_t display_width(const std::string& s) {
  size_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80 ? 1 : 0;
  return n;
}

void print_side_by_side(const std::string& a_name, const std::string& a, const std::string& b_name,
                        const std::string& b, int width) {
  const auto la = wrap(a, width), lb = wrap(b, width);
  fmt::print("  {:<{}} | {}\n", a_name, width, b_name);
  fmt::print("  {:-<{}}-+-{:-<{}}\n", "", width, "", width);
  for (size_t i = 0; i < std::max(la.size(), lb.size()); ++i) {
    const std::string& x = i < la.size() ? la[i] : std::string();
    const std::string& y = i < lb.size() ? lb[i] : std::string();
    fmt::print("  {}{} | {}\n", x,
               std::string(size_t(width) - std::min<size_t>(width, display_width(x)), ' '), y);
  }
}

nlohmann::json summary_json(const CompareStats& st) {
  return {{"tokens", st.count()},
          {"mean_kld", st.mean_kld()},
          {"se_kld", st.se_kld()},
          {"p99_kld", st.kld_quantile(0.99)},
          {"max_kld", st.max_kld()},
          {"top1_agreement", st.top1_agreement()},
          {"ppl_base", st.ppl_base()},
          {"se_ppl_base", st.se_ppl_base()},
          {"ppl_test", st.ppl_test()},
          {"se_ppl_test", st.se_ppl_test()},
          {"ppl_ratio_minus_1", st.ppl_ratio_minus_1()},
          {"se_ppl_ratio", st.se_ppl_ratio()}};
}

void print_summary(const CompareStats& st, const std::string& base, const std::string& test, bool with_ppl) {
  if (with_ppl) {
    fmt::print("PPL {:<6} = {:.4f} +/- {:.4f}\n", base, st.ppl_base(), st.se_ppl_base());
    fmt::print("PPL {:<6} = {:.4f} +/- {:.4f}\n", test, st.ppl_test(), st.se_ppl_test());
    fmt::print("PPL ratio  = {:+.3f}% +/- {:.3f}%  (paired over the same tokens)\n",
               100 * st.ppl_ratio_minus_1(), 100 * st.se_ppl_ratio());
  }
  fmt::print("mean KLD   = {:.6f} +/- {:.6f}  (p99 {:.5f}, max {:.5f}) over {} tokens\n", st.mean_kld(),
             st.se_kld(), st.kld_quantile(0.99), st.max_kld(), st.count());
  fmt::print("top-1 agreement = {:.2f}%\n", 100 * st.top1_agreement());
}

void compare_command(CompareOptions& o) {
  const std::string path = resolve_model(o.common.model);
  auto model = load_model(path);
  const Tokenizer tok = Tokenizer::from_gguf(model->file());
  const bool text_mode = !o.text_file.empty();
  int n_ctx = o.common.ctx;
  if (n_ctx == 0 && text_mode) n_ctx = 512;
  SessionOptions sb{n_ctx, o.common.threads, o.base, o.common.batch};
  SessionOptions stest = sb;
  stest.kv_type = o.common.kv;
  Session base(model, sb), test(model, stest);
  const int nv = base.n_vocab();
  nlohmann::json out;
  out["model"] = path;
  out["base"] = o.base;
  out["kv"] = o.common.kv;
  const KvUsage ub = base.kv_usage(), ut = test.kv_usage();
  out["kv_bytes_per_token"] = {{"base", ub.bytes_per_token}, {"test", ut.bytes_per_token}};
  // What the cache holds besides its per-position bytes (TurboQuant's exact sink and window rows).
  out["kv_fixed_bytes"] = {{"base", ub.fixed_bytes}, {"test", ut.fixed_bytes}};

  CompareStats total;
  if (text_mode) {
    const std::vector<int32_t> ids = tok.encode(read_file(o.text_file), false, false);
    const int ctx = base.n_ctx();
    int n_chunks = int(ids.size()) / ctx;
    if (o.chunks > 0) n_chunks = std::min(n_chunks, o.chunks);
    if (n_chunks == 0) {
      throw InvalidArgument(
          fmt::format("'{}' has {} tokens, fewer than one context of {}", o.text_file, ids.size(), ctx));
    }
    std::cerr << fmt::format("[{} tokens, {} chunks of {}, KV {} vs {}]\n", ids.size(), n_chunks, ctx, o.base,
                             o.common.kv);
    Stopwatch sw;
    for (int c = 0; c < n_chunks; ++c) {
      std::vector<int32_t> chunk(ids.begin() + long(c) * ctx, ids.begin() + long(c + 1) * ctx);
      if (tok.wants_bos()) chunk[0] = tok.bos();
      base.reset();
      test.reset();
      const std::vector<float>& lb = base.eval(chunk, true);
      const std::vector<float>& lt = test.eval(chunk, true);
      for (int i = ctx / 2; i < ctx - 1; ++i) {
        total.add(compare_logits(lb.data() + size_t(i) * nv, lt.data() + size_t(i) * nv, nv, chunk[i + 1]));
      }
      std::cerr << fmt::format("[{}/{}] mean KLD {:.6f}, PPL ratio {:+.3f}% ({:.1f} s)\n", c + 1, n_chunks,
                               total.mean_kld(), 100 * total.ppl_ratio_minus_1(), sw.elapsed());
    }
    out["text"] = o.text_file;
    out["n_ctx"] = ctx;
  } else {
    std::vector<std::string> prompts;
    if (!o.prompts_file.empty()) {
      std::istringstream in(read_file(o.prompts_file));
      for (std::string line; std::getline(in, line);) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (!line.empty()) prompts.push_back(line);
      }
    }
    if (!o.prompt.empty()) prompts.push_back(o.prompt);
    if (prompts.empty()) throw InvalidArgument("compare: give a prompt, --prompts FILE or --text FILE");
    out["prompts"] = nlohmann::json::array();
    for (const std::string& p : prompts) {
      const std::vector<int32_t> ids = tok.encode(p, tok.wants_bos(), false);
      if (ids.empty()) throw InvalidArgument("compare: empty prompt");
      if (int(ids.size()) + o.n_gen > base.n_ctx())
        throw InvalidArgument(fmt::format("compare: prompt of {} tokens + {} does not fit n_ctx {}",
                                          ids.size(), o.n_gen, base.n_ctx()));
      const std::vector<int32_t> ga = greedy(base, tok, ids, o.n_gen);
      const std::vector<int32_t> gb = greedy(test, tok, ids, o.n_gen);
      // Teacher forcing on the baseline's continuation: both caches see exactly the same tokens.
      std::vector<int32_t> seq = ids;
      seq.insert(seq.end(), ga.begin(), ga.end());
      base.reset();
      test.reset();
      const std::vector<float>& lb = base.eval(seq, true);
      const std::vector<float>& lt = test.eval(seq, true);
      CompareStats st;
      std::vector<TokenCompare> rows;
      for (size_t i = ids.size() - 1; i + 1 < seq.size(); ++i) {
        rows.push_back(compare_logits(lb.data() + i * nv, lt.data() + i * nv, nv, seq[i + 1]));
        st.add(rows.back());
        total.add(rows.back());
      }
      size_t diverge = 0;
      while (diverge < ga.size() && diverge < gb.size() && ga[diverge] == gb[diverge]) ++diverge;
      nlohmann::json pj = summary_json(st);
      pj["prompt"] = p;
      pj["continuation_base"] = tok.decode(ga);
      pj["continuation_test"] = tok.decode(gb);
      pj["identical_prefix_tokens"] = diverge;
      pj["kld"] = nlohmann::json::array();
      for (const auto& r : rows) pj["kld"].push_back(r.kld);
      out["prompts"].push_back(pj);
      if (o.json) continue;
      fmt::print("prompt: {}\n", printable(p));
      fmt::print("  {:>4}  {:<20} {:<20} {:>10}\n", "pos", fmt::format("{} (forced)", o.base),
                 fmt::format("{} top-1", o.common.kv), "KLD");
      for (size_t i = 0; i < rows.size(); ++i) {
        const auto& r = rows[i];
        const std::string a = printable(tok.token_to_piece(seq[ids.size() + i]));
        const std::string b = printable(tok.token_to_piece(r.top1_test));
        fmt::print("  {:>4}  {:<20} {:<20} {:>10.6f}{}\n", i, fmt::format("'{}'", a), fmt::format("'{}'", b),
                   r.kld, r.top1_test == r.top1_base ? "" : "  *");
      }
      print_side_by_side(o.base + " greedy", tok.decode(ga), o.common.kv + " greedy", tok.decode(gb),
                         o.width);
      fmt::print("  identical for the first {} of {} generated tokens\n", diverge, ga.size());
      print_summary(st, o.base, o.common.kv, false);
      fmt::print("\n");
    }
  }
  out["summary"] = summary_json(total);
  if (o.json) {
    std::cout << out.dump(2) << "\n";
    return;
  }
  const double bb = double(ub.bytes_per_token), bt = double(ut.bytes_per_token);
  fmt::print("KV {} vs {}: {} vs {} per token ({:.2f}x smaller)\n", o.common.kv, o.base, human_bytes(bt),
             human_bytes(bb), bb / bt);
  print_summary(total, o.base, o.common.kv, text_mode);
}

}  // namespace

void register_compare(CLI::App& app) {
  auto opt = std::make_shared<CompareOptions>();
  auto* cmd = app.add_subcommand(
      "compare",
      "Compare a KV cache type (--kv) against a baseline on the same tokens: KL divergence, top-1 agreement, "
      "perplexity, greedy continuations side by side");
  add_common_options(*cmd, opt->common);
  cmd->add_option("prompt", opt->prompt, "prompt to continue (or --prompts / --text)");
  cmd->add_option("--base", opt->base, "baseline KV cache type")->capture_default_str();
  cmd->add_option("--prompts", opt->prompts_file, "file with one prompt per line");
  cmd->add_option("--text", opt->text_file, "score a text file like `qleap perplexity` with both caches");
  cmd->add_option("-n,--n-predict", opt->n_gen, "tokens to generate per prompt")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--chunks", opt->chunks, "--text: score at most this many chunks");
  cmd->add_option("--width", opt->width, "column width of the side-by-side text")->check(CLI::Range(8, 400));
  cmd->add_flag("--json", opt->json, "machine-readable output");
  cmd->callback([opt] { compare_command(*opt); });
}

}  // namespace qleap::cli
