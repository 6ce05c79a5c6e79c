// Who may use the server: the checks every request passes before its route runs.
//  - Host: a browser tricked by DNS rebinding sends the attacker's domain as Host, so only names
//    that cannot be rebound are served: IP literals, localhost (and *.localhost), this machine's
//    name, the --host name, and QLEAP_ALLOWED_HOSTS.
//  - Origin: browsers send it on cross-origin requests (and on same-origin POSTs); a request that
//    carries one is served only when it is same-origin or matches QLEAP_ORIGINS / the defaults
//    (localhost, 127.0.0.1, [::1] on any port and app://, file://, tauri://, vscode-webview://
//    style origins), like Ollama's OLLAMA_ORIGINS. Requests without Origin (CLI tools, SDKs) pass.
//  - QLEAP_API_KEY: when set, requests must carry "Authorization: Bearer <key>" (static web UI
//    files, /health and CORS preflights excepted).
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace qleap::server {

struct AccessPolicy {
  std::vector<std::string> origins;        // allowed Origin patterns ('*' matches any run)
  std::vector<std::string> allowed_hosts;  // extra Host names ('*' matches any run)
  std::string api_key;                     // "" = no key required
};

// Default origins plus the comma-separated patterns of origins_env (QLEAP_ORIGINS), the extra
// host names of hosts_env (QLEAP_ALLOWED_HOSTS; the bound name and this machine's name are added)
// and the key. Null env strings count as empty.
AccessPolicy make_access_policy(const std::string& bound_host, const char* origins_env, const char* hosts_env,
                                const char* api_key_env);
std::vector<std::string> default_origins();

// '*' in the pattern matches any run of characters; comparison ignores ASCII case.
bool glob_match(std::string_view pattern, std::string_view s);

// Host field value ("name", "name:port", "[v6]:port", "" for HTTP/1.0 without Host).
bool host_allowed(const AccessPolicy& p, std::string_view host);
// origin: the Origin field; host: the request's Host (for the same-origin rule).
bool origin_allowed(const AccessPolicy& p, std::string_view origin, std::string_view host);
// The Authorization field carries the key (always true when no key is set). Constant-time.
bool api_key_ok(const AccessPolicy& p, std::string_view authorization);
// Paths served without the key: the static web UI and /health.
bool api_key_exempt(std::string_view method, std::string_view path);

// "host[:port]" -> host without brackets or port, lower-cased; "" when malformed.
std::string host_name_of(std::string_view host);
bool is_ip_literal(std::string_view name);
bool is_loopback_host(std::string_view bound_host);

}  // namespace qleap::server
