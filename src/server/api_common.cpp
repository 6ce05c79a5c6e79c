#include "server/api_common.h"

#include <fmt/format.h>

#include "core/timer.h"

namespace qleap::server {

using nlohmann::json;

json normalize_messages(const json& messages) {
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
      if (it.key() == "images") continue;  // no vision models in this build
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
        } else if (part.is_object() && type_of(part) == "image_url") {
          throw RequestError(400, "image inputs are not supported by this server");
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
          json parsed = json::parse(fn["arguments"].get<std::string>(), nullptr, false);
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
      json p = json::parse(args.get<std::string>(), nullptr, false);
      if (!p.is_discarded()) args = p;
    }
    calls.push_back({{"name", j["name"]}, {"arguments", args}});
    return true;
  };
  const std::string open = "<tool_call>", close = "</tool_call>";
  for (size_t p = text.find(open); p != std::string::npos; p = text.find(open, p + 1)) {
    const size_t b = p + open.size();
    const size_t e = text.find(close, b);
    json j = json::parse(text.substr(b, e == std::string::npos ? std::string::npos : e - b), nullptr, false);
    if (!j.is_discarded()) add(j);
  }
  if (calls.empty()) {
    size_t b = text.find_first_not_of(" \t\r\n");
    if (b != std::string::npos && text[b] == '{') {
      json j = json::parse(text.substr(b), nullptr, false);
      if (!j.is_discarded() && (j.contains("arguments") || j.contains("parameters"))) add(j);
    }
  }
  return calls;
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
