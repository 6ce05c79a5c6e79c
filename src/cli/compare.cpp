// `qleap compare`: what a KV cache type costs against a baseline (f16 by default), on the same
// tokens. Two modes:
//  - prompts: greedy continuations with both caches (printed side by side), then both sessions are
//    teacher-forced over the baseline's continuation and every generated position gets
//    KL(P_base || P_test) and a top-1 agreement flag;
//  - --text FILE: the perplexity protocol (chunks of n_ctx starting with BOS, second half scored) run
//    with both caches: PPL of each, the paired PPL ratio, mean / p99 / max KLD and top-1 agreement.
//    --kv may list several types (a,b,c): the baseline is then evaluated once for all of them.
#include <fmt/format.h>

#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

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

// Splits "a,b,c" (no empty items).
std::vector<std::string> split_types(const std::string& list) {
  std::vector<std::string> out;
  std::stringstream ss(list);
  for (std::string t; std::getline(ss, t, ',');) {
    if (t.empty()) throw InvalidArgument(fmt::format("--kv '{}': empty type in the list", list));
    out.push_back(t);
  }
  if (out.empty()) throw InvalidArgument("--kv: no type given");
  return out;
}

nlohmann::json usage_json(const KvUsage& ub, const KvUsage& ut) {
  return {{"base", ub.bytes_per_token}, {"test", ut.bytes_per_token}};
}

// --text: the perplexity protocol with the baseline and every test type on the same chunks. Each chunk
// is fed to all sessions in pieces of n_batch tokens, and only the scored half's logits are requested
// and compared piece by piece, so memory does not grow with the context (32K x a 150K vocabulary
// would be 20 GB of logits) and the baseline runs once for all the types.
std::vector<CompareStats> compare_text(const CompareOptions& o, const Tokenizer& tok, Session& base,
                                       std::vector<std::unique_ptr<Session>>& tests,
                                       const std::vector<std::string>& types) {
  const int ctx = base.n_ctx(), nv = base.n_vocab(), piece = base.n_batch();
  size_t n_tokens = 0;
  const std::vector<std::vector<int32_t>> chunks =
      perplexity_chunks(tok, read_file(o.text_file), ctx, o.chunks, &n_tokens);
  const int n_chunks = int(chunks.size());
  if (n_chunks == 0) {
    throw InvalidArgument(
        fmt::format("'{}' has {} tokens, fewer than one context of {}", o.text_file, n_tokens, ctx));
  }
  std::cerr << fmt::format("[{} tokens, {} chunks of {}, KV {} vs {}]\n", n_tokens, n_chunks, ctx, o.base,
                           o.common.kv);
  std::vector<CompareStats> stats(tests.size());
  std::vector<float> lb;
  Stopwatch sw;
  for (int c = 0; c < n_chunks; ++c) {
    const std::vector<int32_t>& chunk = chunks[size_t(c)];
    base.reset();
    for (auto& t : tests) t->reset();
    for (int p0 = 0; p0 < ctx; p0 += piece) {
      const int p1 = std::min(ctx, p0 + piece);
      const std::vector<int32_t> toks(chunk.begin() + p0, chunk.begin() + p1);
      // Positions [ctx / 2, ctx - 1) are scored: position i predicts token i + 1.
      const bool scored = p1 > ctx / 2;
      const std::vector<float>& b = base.eval(toks, scored);
      if (scored) lb.assign(b.begin(), b.end());
      for (size_t k = 0; k < tests.size(); ++k) {
        const std::vector<float>& lt = tests[k]->eval(toks, scored);
        if (!scored) continue;
        for (int i = std::max(p0, ctx / 2); i < std::min(p1, ctx - 1); ++i)
          stats[k].add(compare_logits(lb.data() + size_t(i - p0) * nv, lt.data() + size_t(i - p0) * nv, nv,
                                      chunk[size_t(i) + 1]));
      }
    }
    for (size_t k = 0; k < tests.size(); ++k)
      std::cerr << fmt::format("[{}/{}] {}: mean KLD {:.6f}, PPL ratio {:+.3f}% ({:.1f} s)\n", c + 1,
                               n_chunks, types[k], stats[k].mean_kld(), 100 * stats[k].ppl_ratio_minus_1(),
                               sw.elapsed());
  }
  return stats;
}

void compare_command(CompareOptions& o) {
  const std::string path = resolve_model(o.common.model);
  auto model = load_model(path);
  const Tokenizer tok = Tokenizer::from_gguf(model->file());
  const bool text_mode = !o.text_file.empty();
  const std::vector<std::string> types = split_types(o.common.kv);
  if (types.size() > 1 && !text_mode)
    throw InvalidArgument("compare: several --kv types need --text (prompt mode compares one type)");
  int n_ctx = o.common.ctx;
  if (n_ctx == 0 && text_mode) n_ctx = 512;
  SessionOptions sb{n_ctx, o.common.threads, o.base, o.common.batch};
  // The model's KV calibration (and per-head allocation) is kept between runs, as for `run`.
  sb.kv_calibration_dir = default_kv_calibration_dir();
  Session base(model, sb);
  std::vector<std::unique_ptr<Session>> tests;
  for (const std::string& t : types) {
    SessionOptions st = sb;
    st.kv_type = t;
    tests.push_back(std::make_unique<Session>(model, st));
  }
  const int nv = base.n_vocab();
  const KvUsage ub = base.kv_usage();
  auto header = [&](const std::string& type, const KvUsage& ut) {
    nlohmann::json out;
    out["model"] = path;
    out["base"] = o.base;
    out["kv"] = type;
    out["kv_bytes_per_token"] = usage_json(ub, ut);
    // What the cache holds besides its per-position bytes (TurboQuant's exact sink and window rows).
    out["kv_fixed_bytes"] = {{"base", ub.fixed_bytes}, {"test", ut.fixed_bytes}};
    return out;
  };

  if (text_mode) {
    const std::vector<CompareStats> stats = compare_text(o, tok, base, tests, types);
    nlohmann::json all = nlohmann::json::array();
    for (size_t k = 0; k < types.size(); ++k) {
      const KvUsage ut = tests[k]->kv_usage();
      nlohmann::json out = header(types[k], ut);
      out["text"] = o.text_file;
      out["n_ctx"] = base.n_ctx();
      out["summary"] = summary_json(stats[k]);
      all.push_back(out);
      if (o.json) continue;
      const double bb = double(ub.bytes_per_token), bt = double(ut.bytes_per_token);
      fmt::print("KV {} vs {}: {} vs {} per token ({:.2f}x smaller)\n", types[k], o.base, human_bytes(bt),
                 human_bytes(bb), bb / bt);
      print_summary(stats[k], o.base, types[k], true);
      if (k + 1 < types.size()) fmt::print("\n");
    }
    // One type: one object (as before); several: a list of them.
    if (o.json) std::cout << (types.size() == 1 ? all[0] : all).dump(2) << "\n";
    return;
  }

  Session& test = *tests[0];
  const KvUsage ut = test.kv_usage();
  nlohmann::json out = header(types[0], ut);
  CompareStats total;
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
      throw InvalidArgument(fmt::format("compare: prompt of {} tokens + {} does not fit n_ctx {}", ids.size(),
                                        o.n_gen, base.n_ctx()));
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
               fmt::format("{} top-1", types[0]), "KLD");
    for (size_t i = 0; i < rows.size(); ++i) {
      const auto& r = rows[i];
      const std::string a = printable(tok.token_to_piece(seq[ids.size() + i]));
      const std::string b = printable(tok.token_to_piece(r.top1_test));
      fmt::print("  {:>4}  {:<20} {:<20} {:>10.6f}{}\n", i, fmt::format("'{}'", a), fmt::format("'{}'", b),
                 r.kld, r.top1_test == r.top1_base ? "" : "  *");
    }
    print_side_by_side(o.base + " greedy", tok.decode(ga), types[0] + " greedy", tok.decode(gb), o.width);
    fmt::print("  identical for the first {} of {} generated tokens\n", diverge, ga.size());
    print_summary(st, o.base, types[0], false);
    fmt::print("\n");
  }
  out["summary"] = summary_json(total);
  if (o.json) {
    std::cout << out.dump(2) << "\n";
    return;
  }
  const double bb = double(ub.bytes_per_token), bt = double(ut.bytes_per_token);
  fmt::print("KV {} vs {}: {} vs {} per token ({:.2f}x smaller)\n", types[0], o.base, human_bytes(bt),
             human_bytes(bb), bb / bt);
  print_summary(total, o.base, types[0], false);
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
