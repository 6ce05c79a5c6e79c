// The request and response a route handler sees. The server's own HTTP/1.1 transport
// (http_transport.cpp) fills HttpRequest from the wire and writes HttpResponse back, fixed-size or
// streamed through a content provider.
#pragma once
#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qleap::server {

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

// Case-insensitive ASCII comparison (header names, tokens).
bool iequals(std::string_view a, std::string_view b);

struct HttpRequest {
  std::string method;   // "GET", "POST", ...
  std::string target;   // as sent: "/api/tags?x=1"
  std::string path;     // target without the query
  std::string query;    // after '?', undecoded
  std::string version;  // "HTTP/1.1" or "HTTP/1.0"
  HttpHeaders headers;
  std::string body;
  std::vector<std::string> matches;  // regex route: whole path, then the groups
  std::string remote_addr;

  bool has_header(std::string_view name) const;
  // The first header of that name; "" when absent.
  std::string get_header_value(std::string_view name) const;
};

// Handed to a content provider: write() sends bytes (false once the client is gone), done() ends
// the body.
class DataSink {
 public:
  std::function<bool(const char* data, size_t n)> write;
  std::function<void()> done;
};

struct HttpResponse {
  using Provider = std::function<bool(size_t offset, DataSink& sink)>;
  using Releaser = std::function<void(bool success)>;

  int status = -1;  // -1: 200, or 404 when no route matched
  HttpHeaders headers;
  std::string body;
  std::string content_type;
  // Streaming: called until it calls sink.done() or returns false (the connection then closes).
  Provider provider;
  Releaser releaser;  // called once with whether the stream completed

  HttpResponse() = default;
  HttpResponse(const HttpResponse&) = delete;
  HttpResponse& operator=(const HttpResponse&) = delete;
  ~HttpResponse() { release(false); }

  void set_content(std::string b, std::string type) {
    body = std::move(b);
    content_type = std::move(type);
  }
  void set_header(std::string name, std::string value) {
    headers.emplace_back(std::move(name), std::move(value));
  }
  bool has_header(std::string_view name) const;
  void set_chunked_content_provider(std::string type, Provider p, Releaser r = {}) {
    content_type = std::move(type);
    provider = std::move(p);
    releaser = std::move(r);
  }
  // Runs the releaser once (the transport calls it when a stream ends; the destructor otherwise).
  void release(bool success) {
    if (releaser) {
      Releaser r = std::move(releaser);
      releaser = nullptr;
      r(success);
    }
  }
};

}  // namespace qleap::server
