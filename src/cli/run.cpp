// `qleap run`: one-shot or interactive generation with streaming output.
#include <fmt/format.h>
#include <unistd.h>

#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/common.h"
#include "cli/expert_options.h"
#include "core/error.h"
#include "core/timer.h"
#include "model/model.h"
#include "runtime/generation.h"
#include "runtime/session.h"
#include "sampling/sampler.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace qleap::cli {
namespace {

struct RunOptions {
  CommonOptions common;
  SamplerParams sampling;
  std::string prompt;
  std::string system;
  int n_predict = 512;
  bool raw = false;
  bool interactive = false;
  bool quiet = false;
  ExpertFlowCliOptions experts;
};

struct Stats {
  int prompt_tokens = 0;
  double prompt_s = 0;
  int gen_tokens = 0;
  double gen_s = 0;
};

// Evaluates the part of `tokens` the session has not seen yet (reusing the common prefix of the
// previous turn), then samples until an end-of-generation token, n_predict or a full context.
class Generator {
 public:
  Generator(std::shared_ptr<const Model> model, const RunOptions& o, const SessionOptions& so)
      : opt_(o), model_(std::move(model)), tok_(Tokenizer::from_gguf(model_->file())), session_(model_, so) {}

  const Tokenizer& tokenizer() const { return tok_; }
  Session& session() { return session_; }

  Stats generate(const std::vector<int32_t>& tokens, std::ostream& out) {
    Stats st;
    if (tokens.empty()) throw InvalidArgument("empty prompt: nothing to condition on");
    if (int(tokens.size()) >= session_.n_ctx()) {
      throw InvalidArgument(fmt::format("prompt is {} tokens but the context holds {} (raise --ctx)",
                                        tokens.size(), session_.n_ctx()));
    }
    // The previous turn's cache holds the common prefix of this one.
    const size_t common = reusable_prefix(history_, tokens);
    session_.truncate(int(common));
    history_.resize(common);
    std::vector<int32_t> fresh(tokens.begin() + long(common), tokens.end());

    Stopwatch sw;
    // eval() returns a reference into the session that stays valid until the next eval(): no copy
    // of the vocabulary-sized logits per token.
    const std::vector<float>* logits = &session_.eval(fresh);
    st.prompt_tokens = int(fresh.size());
    st.prompt_s = sw.elapsed();
    history_.insert(history_.end(), fresh.begin(), fresh.end());
    Generation gen(tok_, opt_.sampling, {}, opt_.n_predict);
    // Penalties see the whole conversation, as the sampler used across turns did.
    gen.accept_prompt(tokens);

    sw.reset();
    for (;;) {
      const Generation::Step step = gen.next(logits->data(), session_.n_vocab());
      out << step.text << std::flush;
      if (step.done) break;
      ++st.gen_tokens;
      if (session_.n_past() + 1 >= session_.n_ctx()) {
        out << gen.finish();
        std::cerr << fmt::format("\n[context full at {} tokens]\n", session_.n_ctx());
        history_.push_back(step.token);
        st.gen_s = sw.elapsed();
        return st;
      }
      logits = &session_.eval({step.token});
      history_.push_back(step.token);
    }
    // A stop at the length limit counted its token; an end-of-generation token is not text.
    st.gen_tokens = gen.n_generated();
    out << gen.finish() << std::flush;
    st.gen_s = sw.elapsed();
    return st;
  }

  // Text the model should continue for a chat turn, rendered through the model's template.
  std::vector<int32_t> render_chat(const nlohmann::json& messages) const {
    std::string tmpl = model_->file().get_string("tokenizer.chat_template", "");
    if (tmpl.empty()) tmpl = default_chat_template();
    nlohmann::json extra = {{"bos_token", tok_.token_to_piece(tok_.bos())},
                            {"eos_token", tok_.token_to_piece(tok_.eos())}};
    const std::string text = apply_chat_template(tmpl, messages, true, extra);
    std::vector<int32_t> ids = tok_.encode(text, tok_.wants_bos(), true);
    // Templates that write the BOS text themselves would otherwise get it twice.
    if (ids.size() >= 2 && ids[0] == tok_.bos() && ids[1] == tok_.bos()) ids.erase(ids.begin());
    return ids;
  }

  bool has_chat_template() const { return model_->file().has("tokenizer.chat_template"); }

 private:
  const RunOptions& opt_;
  std::shared_ptr<const Model> model_;
  Tokenizer tok_;
  Session session_;
  std::vector<int32_t> history_;
};

void print_stats(const Stats& s) {
  std::cerr << fmt::format(
      "\n[prompt: {} tokens in {:.2f} s, {:.1f} tok/s | generation: {} tokens in {:.2f} s, {:.1f} tok/s]\n",
      s.prompt_tokens, s.prompt_s, s.prompt_s > 0 ? s.prompt_tokens / s.prompt_s : 0.0, s.gen_tokens, s.gen_s,
      s.gen_s > 0 ? s.gen_tokens / s.gen_s : 0.0);
}

void run_command(RunOptions& o) {
  check_expert_flow_options(o.experts);
  const std::string path = resolve_model(o.common.model);
  Stopwatch load;
  // Flags the user gave win; the planner (or a stored `qleap tune` result) fills the rest.
  const SessionOptions so = auto_session_options(o.common, path, o.quiet);
  auto model = load_model(path);
  Generator gen(model, o, so);
  std::unique_ptr<ExpertProfile> expert_profile;
  const auto flow = make_cli_expert_flow(o.experts, *model, gen.session().n_batch(), o.quiet, expert_profile);
  gen.session().set_moe_executor(flow.get());
  if (!gen.session().placement().note.empty())
    fmt::print(stderr, "note: {}\n", gen.session().placement().note);
  if (!o.quiet) {
    std::cerr << fmt::format("[loaded {} in {:.2f} s; ctx {}, {} threads, KV {}]\n", path, load.elapsed(),
                             gen.session().n_ctx(), gen.session().pool().size(),
                             gen.session().kv_usage().type);
  }
  const bool chat = !o.raw && gen.has_chat_template();
  const bool interactive = o.interactive || (o.prompt.empty() && isatty(STDIN_FILENO) && chat);

  if (!interactive) {
    std::vector<int32_t> ids;
    if (chat) {
      nlohmann::json msgs = nlohmann::json::array();
      if (!o.system.empty()) msgs.push_back({{"role", "system"}, {"content", o.system}});
      msgs.push_back({{"role", "user"}, {"content", o.prompt}});
      ids = gen.render_chat(msgs);
    } else {
      ids = gen.tokenizer().encode(o.prompt, gen.tokenizer().wants_bos(), false);
      if (ids.empty()) ids.push_back(gen.tokenizer().bos());
      std::cout << o.prompt;
    }
    Stats st = gen.generate(ids, std::cout);
    std::cout << "\n";
    if (!o.quiet) print_stats(st);
    if (flow && !o.quiet) {
      const ExpertFlowStats fs = flow->stats();
      std::cerr << fmt::format(
          "[expert cache: {:.1f}% of expert selections on the {} tier, {} in flight, {} uploaded]\n",
          100 * fs.hit_rate(), flow->tier().name(), fs.in_flight, human_bytes(double(fs.upload_bytes)));
    }
    return;
  }

  nlohmann::json msgs = nlohmann::json::array();
  if (!o.system.empty()) msgs.push_back({{"role", "system"}, {"content", o.system}});
  std::cerr << "[interactive chat: type a message, /bye or Ctrl-D to quit]\n";
  std::string line = o.prompt;
  for (bool first = true;; first = false) {
    if (!first || line.empty()) {
      std::cerr << ">>> " << std::flush;
      if (!std::getline(std::cin, line)) break;
    }
    if (line == "/bye" || line == "/exit") break;
    if (line.empty()) continue;
    msgs.push_back({{"role", "user"}, {"content", line}});
    std::ostringstream reply;
    struct Tee : std::streambuf {
      std::ostream* a;
      std::ostream* b;
      int overflow(int c) override {
        a->put(char(c));
        b->put(char(c));
        return c;
      }
      std::streamsize xsputn(const char* s, std::streamsize n) override {
        a->write(s, n);
        b->write(s, n);
        return n;
      }
    } tee;
    tee.a = &std::cout;
    tee.b = &reply;
    std::ostream both(&tee);
    Stats st = gen.generate(gen.render_chat(msgs), both);
    std::cout << "\n";
    msgs.push_back({{"role", "assistant"}, {"content", reply.str()}});
    if (!o.quiet) print_stats(st);
    line.clear();
  }
}

}  // namespace

void register_run(CLI::App& app) {
  auto opt = std::make_shared<RunOptions>();
  opt->sampling.temperature = 0.7f;
  auto* cmd =
      app.add_subcommand("run", "Generate text from a model (one-shot with PROMPT, else interactive chat)");
  add_common_options(*cmd, opt->common);
  cmd->add_option("prompt", opt->prompt,
                  "prompt; chat models get it as a user message through their template");
  cmd->add_option("-n,--n-predict", opt->n_predict,
                  "maximum tokens to generate (-1: until end or full context)")
      ->capture_default_str();
  cmd->add_option("-s,--system", opt->system, "system message for chat models");
  cmd->add_flag("--raw", opt->raw, "plain text completion: no chat template");
  cmd->add_flag("-i,--interactive", opt->interactive,
                "chat interactively (default when no prompt and stdin is a terminal)");
  cmd->add_flag("-q,--quiet", opt->quiet, "no load/speed report on stderr");
  add_sampling_options(*cmd, opt->sampling);
  add_expert_flow_options(*cmd, opt->experts);
  cmd->callback([opt] { run_command(*opt); });
}

}  // namespace qleap::cli
