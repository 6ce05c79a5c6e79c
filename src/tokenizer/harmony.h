// The harmony output format (gpt-oss): what the model writes after "<|start|>assistant" is a sequence of
// messages "<|channel|>NAME<|message|>TEXT<|end|>", each further one opened by "<|start|>assistant", the
// last closed by <|return|> (or <|call|> for a tool call). The "final" channel is the answer the user
// sees; "analysis" is the model's reasoning; "commentary" carries tool calls and preambles. HarmonyStream
// follows the tokens and says which channel each content token belongs to, so the generation loop can
// show the final channel and keep the analysis apart (hidden, or shown as reasoning).
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "tokenizer/tokenizer.h"

namespace qleap {

class HarmonyStream {
 public:
  // What a token is, seen from the stream.
  enum class Kind {
    kMarker,    // a harmony control token or a message header (role, channel name): never shown
    kFinal,     // content of the final channel, or text outside any channel (a model that skips them)
    kAnalysis,  // content of the analysis channel (reasoning)
    kOther,     // content of another channel (commentary: tool calls, preambles)
  };

  // The harmony tokens of this vocabulary; nullopt when it has none (not a harmony model).
  static std::optional<HarmonyStream> detect(const Tokenizer& tok);

  Kind push(int32_t token);
  const std::string& channel() const { return channel_; }  // the current message's channel name

 private:
  enum class State { kContent, kRole, kChannel, kConstrain };
  const Tokenizer* tok_ = nullptr;
  int32_t start_ = -1, channel_tok_ = -1, message_ = -1, end_ = -1, ret_ = -1, call_ = -1, constrain_ = -1;
  State state_ = State::kContent;
  std::string channel_ = "final";  // before any header: text is shown
};

}  // namespace qleap
