#include "server/api_common.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/timer.h"

namespace qleap::server {

using nlohmann::json;

json normalize_messages(const json& messages, bool* has_images) {
  auto saw_image = [has_images] {
    if (!has_images) throw RequestError(400, "image inputs are not supported by this server");
    *has_images = true;
  };
  if (!messages.is_array()) throw RequestError(400, "'messages' must be an array");
  json out = json::array();
  auto type_of = [](const json& part) {
    auto t = part.find("type");
    return t != part.end() && t->is_string() ? t->get<std::string>() : std::string();
  };
  for (const auto& m : messages) {
    if (!m.is_object()) throw RequestError(400, "each message must be an object");
    auto role = m.find("role");
    if (role == m.end() || !role->is_string()) throw RequestError(400, "each message needs a string 'role'");
    json msg = json::object();
    for (auto it = m.begin(); it != m.end(); ++it) {
      if (it.key() == "images") {  // no vision models in this build
        const json& im = it.value();
        if (!im.is_null() && !im.is_array()) throw RequestError(400, "message 'images' must be an array");
        if (im.is_array() && !im.empty()) saw_image();
        continue;
      }
      msg[it.key()] = it.value();
    }
    auto c = m.find("content");
    if (c == m.end() || c->is_null()) {
      msg["content"] = "";
    } else if (c->is_array()) {
      std::string text;
      for (const auto& part : *c) {
        if (part.is_object() && type_of(part) == "text" && part.contains("text") &&
            part["text"].is_string()) {
          text += part["text"].get<std::string>();
        } else if (part.is_string()) {
          text += part.get<std::string>();
        } else if (part.is_object() && (type_of(part) == "image_url" || type_of(part) == "input_image" ||
                                        type_of(part) == "image")) {
          saw_image();
        } else {
          throw RequestError(400, "message content parts must be {\"type\":\"text\",\"text\":...}");
        }
      }
      msg["content"] = text;
    } else if (!c->is_string()) {
      throw RequestError(400, "message 'content' must be a string");
    }
    // Templates expect tool-call arguments as objects; OpenAI clients send them as JSON strings.
    if (auto tc = msg.find("tool_calls"); tc != msg.end() && tc->is_array()) {
      for (auto& call : *tc) {
        if (!call.is_object() || !call.contains("function") || !call["function"].is_object()) continue;
        json& fn = call["function"];
        if (fn.contains("arguments") && fn["arguments"].is_string()) {
          json parsed = parse_json_bounded(fn["arguments"].get<std::string>());
          if (!parsed.is_discarded()) fn["arguments"] = parsed;
        }
      }
    }
    out.push_back(std::move(msg));
  }
  return out;
}

json parse_tool_calls(const std::string& text) {
  json calls = json::array();
  auto add = [&calls](const json& j) {
    if (!j.is_object() || !j.contains("name") || !j["name"].is_string()) return false;
    json args = j.contains("arguments")    ? j["arguments"]
                : j.contains("parameters") ? j["parameters"]
                                           : json::object();
    if (args.is_string()) {
      json p = parse_json_bounded(args.get<std::string>());
      if (!p.is_discarded()) args = p;
    }
    calls.push_back({{"name", j["name"]}, {"arguments", args}});
    return true;
  };
  const std::string open = "<tool_call>", close = "</tool_call>";
  for (size_t p = text.find(open); p != std::string::npos; p = text.find(open, p + 1)) {
    const size_t b = p + open.size();
    const size_t e = text.find(close, b);
    json j = parse_json_bounded(text.substr(b, e == std::string::npos ? std::string::npos : e - b));
    if (!j.is_discarded()) add(j);
  }
  if (calls.empty()) {
    size_t b = text.find_first_not_of(" \t\r\n");
    if (b != std::string::npos && text[b] == '{') {
      json j = parse_json_bounded(text.substr(b));
      if (!j.is_discarded() && (j.contains("arguments") || j.contains("parameters"))) add(j);
    }
  }
  return calls;
}

void refuse_images(const std::string& model_name) {
  throw RequestError(400, fmt::format("model '{}' does not support images: it is a text-only model "
                                      "(this build runs no vision models)",
                                      model_name));
}

int generation_budget(const GenOptions& opt, int n_ctx, size_t prompt_tokens) {
  const int ctx = opt.num_ctx > 0 ? std::min(opt.num_ctx, n_ctx) : n_ctx;
  // As truncate_prompt leaves it; the runner stops once the context is full.
  int p = int(std::min<size_t>(prompt_tokens, size_t(INT32_MAX)));
  if (ctx >= 1 && p >= ctx) p = std::max(1, ctx / 2);
  int budget = std::max(1, ctx - p + 1);
  if (opt.num_predict > 0) budget = std::min(budget, opt.num_predict);
  return budget;
}

namespace {

json token_json(int32_t id, float logprob, const Tokenizer& tok) {
  const std::string piece = tok.token_to_piece(id);
  json bytes = json::array();
  for (unsigned char c : piece) bytes.push_back(int(c));
  return {{"token", piece}, {"logprob", logprob}, {"bytes", bytes}};
}

}  // namespace

json logprobs_json(const std::vector<LogprobEntry>& entries, size_t from, size_t to, bool with_top,
                   const Tokenizer& tok) {
  json out = json::array();
  for (size_t i = from; i < to && i < entries.size(); ++i) {
    const LogprobEntry& e = entries[i];
    json j = token_json(e.token, e.logprob, tok);
    json top = json::array();
    if (with_top) {
      for (const auto& t : e.top) top.push_back(token_json(t.token, t.logprob, tok));
    }
    j["top_logprobs"] = top;
    out.push_back(std::move(j));
  }
  return out;
}

std::vector<LogprobEntry> LogprobCursor::take(Job& job, const Tokenizer& tok, size_t emitted, bool all) {
  std::vector<LogprobEntry> out;
  std::lock_guard<std::mutex> lk(job.mu);
  while (sent_ < job.logprobs.size()) {
    const size_t n = tok.token_to_piece(job.logprobs[sent_].token).size();
    // One byte of slack: SentencePiece models drop the first token's leading space.
    if (!all && bytes_ + n > emitted + 1) break;
    bytes_ += n;
    out.push_back(job.logprobs[sent_++]);
  }
  return out;
}

json completion_logprobs_json(const std::vector<LogprobEntry>& entries, size_t from, size_t to, bool with_top,
                              const Tokenizer& tok, size_t text_offset) {
  json tokens = json::array(), lps = json::array(), tops = json::array(), offsets = json::array();
  for (size_t i = from; i < to && i < entries.size(); ++i) {
    const LogprobEntry& e = entries[i];
    const std::string piece = tok.token_to_piece(e.token);
    tokens.push_back(piece);
    lps.push_back(e.logprob);
    offsets.push_back(text_offset);
    text_offset += piece.size();
    json t = json::object();
    if (with_top) {
      for (const auto& a : e.top) t[tok.token_to_piece(a.token)] = a.logprob;
    }
    tops.push_back(std::move(t));
  }
  return {{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

Acquired acquire_model(ApiContext& ctx, const std::string& name) {
  if (name.empty()) throw RequestError(400, "model is required");
  Stopwatch sw;
  const size_t before = ctx.metrics.model_loads_total.load();
  Acquired a;
  a.lease = ctx.sched.acquire(name);
  a.load_s = ctx.metrics.model_loads_total.load() != before ? sw.elapsed() : 0.0;
  return a;
}

void submit_or_503(ModelRunner& r, const std::shared_ptr<Job>& job) {
  if (!r.submit(job)) throw RequestError(503, "server busy: the request queue is full, retry later");
}

}  // namespace qleap::server
