#include "server/http_policy.h"

#include <arpa/inet.h>
#include <unistd.h>

#include <algorithm>

#include "server/http_types.h"

namespace qleap::server {

namespace {

char lower(char c) {
  return c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : c;
}

std::string lowered(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = lower(c);
  return out;
}

std::vector<std::string> split_list(const char* env) {
  std::vector<std::string> out;
  if (!env) return out;
  std::string_view s = env;
  size_t i = 0;
  while (i <= s.size()) {
    size_t c = s.find(',', i);
    if (c == std::string_view::npos) c = s.size();
    std::string_view e = s.substr(i, c - i);
    while (!e.empty() && (e.front() == ' ' || e.front() == '\t')) e.remove_prefix(1);
    while (!e.empty() && (e.back() == ' ' || e.back() == '\t' || e.back() == '/')) e.remove_suffix(1);
    if (!e.empty()) out.emplace_back(e);
    i = c + 1;
  }
  return out;
}

}  // namespace

std::vector<std::string> default_origins() {
  std::vector<std::string> o;
  for (const char* host : {"localhost", "127.0.0.1", "[::1]", "0.0.0.0"}) {
    for (const char* scheme : {"http", "https"}) {
      o.push_back(std::string(scheme) + "://" + host);
      o.push_back(std::string(scheme) + "://" + host + ":*");
    }
  }
  for (const char* s : {"app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"})
    o.push_back(s);
  return o;
}

AccessPolicy make_access_policy(const std::string& bound_host, const char* origins_env, const char* hosts_env,
                                const char* api_key_env) {
  AccessPolicy p;
  p.origins = default_origins();
  for (auto& o : split_list(origins_env)) p.origins.push_back(std::move(o));
  p.allowed_hosts = split_list(hosts_env);
  const std::string bound = host_name_of(bound_host);
  if (!bound.empty() && !is_ip_literal(bound)) p.allowed_hosts.push_back(bound);
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) == 0 && name[0]) p.allowed_hosts.push_back(lowered(name));
  if (api_key_env) p.api_key = api_key_env;
  return p;
}

bool glob_match(std::string_view pat, std::string_view s) {
  // Iterative wildcard match with one backtrack point (enough for '*' only).
  size_t p = 0, i = 0, star = std::string_view::npos, mark = 0;
  while (i < s.size()) {
    if (p < pat.size() && pat[p] == '*') {
      star = p++;
      mark = i;
    } else if (p < pat.size() && lower(pat[p]) == lower(s[i])) {
      ++p, ++i;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      i = ++mark;
    } else {
      return false;
    }
  }
  while (p < pat.size() && pat[p] == '*') ++p;
  return p == pat.size();
}

std::string host_name_of(std::string_view host) {
  std::string_view name = host;
  if (!name.empty() && name[0] == '[') {
    const size_t close = name.find(']');
    if (close == std::string_view::npos) return "";
    const std::string_view rest = name.substr(close + 1);
    if (!rest.empty() &&
        (rest[0] != ':' || rest.size() == 1 ||
         !std::all_of(rest.begin() + 1, rest.end(), [](char c) { return c >= '0' && c <= '9'; })))
      return "";
    return lowered(name.substr(1, close - 1));
  }
  const size_t colon = name.rfind(':');
  if (colon != std::string_view::npos) {
    const std::string_view port = name.substr(colon + 1);
    if (name.find(':') != colon) {
      // A bare IPv6 address (as --host may give it).
      return lowered(name);
    }
    if (port.empty() || !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; }))
      return "";
    name = name.substr(0, colon);
  }
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);  // "localhost." is "localhost"
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_')) return "";
  }
  return lowered(name);
}

bool is_ip_literal(std::string_view name) {
  const std::string n(name);
  unsigned char buf[16];
  return inet_pton(AF_INET, n.c_str(), buf) == 1 || inet_pton(AF_INET6, n.c_str(), buf) == 1;
}

bool is_loopback_host(std::string_view bound_host) {
  const std::string n = host_name_of(bound_host);
  if (n == "localhost") return true;
  unsigned char buf[16];
  if (inet_pton(AF_INET, n.c_str(), buf) == 1) return buf[0] == 127;
  if (inet_pton(AF_INET6, n.c_str(), buf) == 1) {
    static const unsigned char kLoop[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    return std::equal(buf, buf + 16, kLoop);
  }
  return false;
}

bool host_allowed(const AccessPolicy& p, std::string_view host) {
  if (host.empty()) return true;  // HTTP/1.0 without Host: not a browser
  const std::string name = host_name_of(host);
  if (name.empty()) return false;
  // Rebinding needs a name the attacker's DNS answers for; literal addresses cannot be rebound.
  if (is_ip_literal(name)) return true;
  if (name == "localhost" || (name.size() > 10 && name.compare(name.size() - 10, 10, ".localhost") == 0))
    return true;
  for (const auto& h : p.allowed_hosts) {
    if (glob_match(h, name)) return true;
  }
  return false;
}

bool origin_allowed(const AccessPolicy& p, std::string_view origin, std::string_view host) {
  for (const auto& o : p.origins) {
    if (glob_match(o, origin)) return true;
  }
  // Same origin: a page served by this server (the web UI, on whatever address it was opened).
  if (!host.empty()) {
    for (std::string_view scheme : {"http://", "https://"}) {
      if (origin.size() == scheme.size() + host.size() && iequals(origin.substr(0, scheme.size()), scheme) &&
          iequals(origin.substr(scheme.size()), host)) {
        return true;
      }
    }
  }
  return false;
}

bool api_key_ok(const AccessPolicy& p, std::string_view auth) {
  if (p.api_key.empty()) return true;
  if (auth.size() < 7 || !iequals(auth.substr(0, 7), "Bearer ")) return false;
  std::string_view given = auth.substr(7);
  while (!given.empty() && given.front() == ' ') given.remove_prefix(1);
  // Constant time in the key's content (the length is not secret enough to matter).
  const std::string& want = p.api_key;
  unsigned diff = given.size() != want.size() ? 1u : 0u;
  for (size_t i = 0; i < want.size(); ++i) {
    const char g = i < given.size() ? given[i] : '\0';
    diff |= unsigned(static_cast<unsigned char>(g) ^ static_cast<unsigned char>(want[i]));
  }
  return diff == 0;
}

bool api_key_exempt(std::string_view method, std::string_view path) {
  if (method == "OPTIONS") return true;
  if (method != "GET" && method != "HEAD") return false;
  return path == "/" || path == "/health" || path == "/ui" || path.substr(0, 4) == "/ui/";
}

}  // namespace qleap::server
