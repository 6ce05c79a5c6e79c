#include "tokenizer/harmony.h"

namespace qleap {

std::optional<HarmonyStream> HarmonyStream::detect(const Tokenizer& tok) {
  const auto start = tok.token_id("<|start|>"), channel = tok.token_id("<|channel|>"),
             message = tok.token_id("<|message|>");
  if (!start || !channel || !message) return std::nullopt;
  HarmonyStream h;
  h.tok_ = &tok;
  h.start_ = *start;
  h.channel_tok_ = *channel;
  h.message_ = *message;
  h.end_ = tok.token_id("<|end|>").value_or(-1);
  h.ret_ = tok.token_id("<|return|>").value_or(-1);
  h.call_ = tok.token_id("<|call|>").value_or(-1);
  h.constrain_ = tok.token_id("<|constrain|>").value_or(-1);
  return h;
}

HarmonyStream::Kind HarmonyStream::push(int32_t t) {
  if (t == start_) {
    state_ = State::kRole;  // "assistant" (possibly " to=..."), until <|channel|> or <|message|>
    channel_.clear();
    return Kind::kMarker;
  }
  if (t == channel_tok_) {
    state_ = State::kChannel;
    channel_.clear();
    return Kind::kMarker;
  }
  if (t == constrain_) {
    state_ = State::kConstrain;  // "<|constrain|>json": a content type in the header
    return Kind::kMarker;
  }
  if (t == message_) {
    // The channel name may carry a recipient or content type ("commentary to=functions.f json").
    const size_t sp = channel_.find(' ');
    if (sp != std::string::npos) channel_.resize(sp);
    state_ = State::kContent;
    return Kind::kMarker;
  }
  if (t == end_ || t == ret_ || t == call_) {
    state_ = State::kContent;
    return Kind::kMarker;
  }
  switch (state_) {
    case State::kRole:
    case State::kConstrain:
      return Kind::kMarker;
    case State::kChannel:
      channel_ += tok_->token_to_piece(t);
      return Kind::kMarker;
    case State::kContent:
      break;
  }
  if (channel_ == "final" || channel_.empty()) return Kind::kFinal;
  if (channel_ == "analysis") return Kind::kAnalysis;
  return Kind::kOther;
}

}  // namespace qleap
