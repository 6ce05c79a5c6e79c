#include "runtime/generation.h"

#include <algorithm>

namespace qleap {

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
}

std::string StopMatcher::push(const std::string& text) {
  if (stopped_) return "";
  held_ += text;
  size_t first = std::string::npos;
  for (const auto& s : stops_) first = std::min(first, held_.find(s));
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, first);
    held_.clear();
    return out;
  }
  // Keep the longest suffix that is a proper prefix of some stop sequence.
  size_t keep = 0;
  for (const auto& s : stops_) {
    for (size_t n = std::min(s.size() - 1, held_.size()); n > keep; --n) {
      if (held_.compare(held_.size() - n, n, s, 0, n) == 0) {
        keep = n;
        break;
      }
    }
  }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopMatcher::flush() {
  std::string out;
  out.swap(held_);
  return stopped_ ? "" : out;
}

size_t reusable_prefix(const std::vector<int32_t>& cached, const std::vector<int32_t>& prompt, size_t limit,
                       int chunk) {
  if (prompt.empty()) return 0;
  size_t common = 0;
  while (common < cached.size() && common < prompt.size() && cached[common] == prompt[common]) ++common;
  common = std::min({common, limit, prompt.size() - 1});
  if (chunk > 0) common -= common % size_t(chunk);
  return common;
}

Generation::Generation(const Tokenizer& tok, const SamplerParams& sampling, std::vector<std::string> stop,
                       int max_tokens, std::unique_ptr<TokenFilter> filter)
    : tok_(tok),
      sampler_(sampling),
      detok_(tok),
      reasoning_detok_(tok),
      harmony_(HarmonyStream::detect(tok)),
      stops_(std::move(stop)),
      max_tokens_(max_tokens),
      filter_(std::move(filter)) {}

void Generation::accept_prompt(const std::vector<int32_t>& prompt) {
  for (int32_t t : prompt) sampler_.accept(t);
}

Generation::Step Generation::next(const float* logits, int n_vocab) {
  Step st;
  if (done_) {
    st.done = true;
    st.reason = "stop";
    return st;
  }
  if (filter_) {
    masked_.assign(logits, logits + n_vocab);
    filter_->apply(masked_.data(), n_vocab);
    st.token = sampler_.sample(masked_.data(), n_vocab);
    filter_->accept(st.token);
  } else {
    st.token = sampler_.sample(logits, n_vocab);
  }
  sampler_.accept(st.token);
  const auto end = [&](const char* reason) {
    done_ = st.done = true;
    st.reason = reason;
    return st;
  };
  if (tok_.is_eog(st.token)) return end("stop");
  output_.push_back(st.token);
  const HarmonyStream::Kind kind = harmony_ ? harmony_->push(st.token) : HarmonyStream::Kind::kFinal;
  if (kind == HarmonyStream::Kind::kFinal) {
    st.text = stops_.push(detok_.push(st.token));
  } else if (kind == HarmonyStream::Kind::kAnalysis) {
    st.reasoning = reasoning_detok_.push(st.token);
  }
  if (stops_.stopped()) return end("stop");
  if (filter_ && filter_->complete()) return end("stop");
  if (max_tokens_ >= 0 && n_generated() >= max_tokens_) return end("length");
  return st;
}

std::string Generation::finish() {
  if (stops_.stopped()) return "";
  return stops_.push(detok_.flush()) + stops_.flush();
}

}  // namespace qleap
