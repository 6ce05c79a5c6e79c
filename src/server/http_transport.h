// The server's HTTP/1.1 transport. One reactor thread (epoll) accepts connections and reads
// request heads and bodies for all of them, so an idle or slow client costs a socket and a buffer,
// never a thread; a complete request goes to a worker thread, which runs the handler and writes
// the response (fixed or streamed), then hands the connection back for the next (pipelined or
// keep-alive) request, in order.
//
// Limits, each answered at once with a status and the connection closed after a lingering drain
// (so the answer is not lost to a reset): a malformed head or body framing (400, 413, 414, 417,
// 431, 501, 505, see http_parse.h), a body over max_body (413, without reading it), a head not
// complete within header_timeout_s of its first byte (408), a body that stalls for body_idle_s or
// ends early (400). At most max_connections are open: beyond it the oldest connection that is
// idle or still sending its request is closed to make room, and when all are running requests the
// new one gets 503. The listen backlog is sized for bursts of hundreds of clients.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "server/http_types.h"

namespace qleap::server {

struct TransportOptions {
  std::string host = "127.0.0.1";
  int port = 0;
  int backlog = 4096;          // the kernel caps it at net.core.somaxconn
  int max_connections = 1024;  // open sockets (clamped below the process's file limit)
  size_t max_body = 8u << 20;  // bytes
  double header_timeout_s = 10;
  double body_idle_s = 5;          // no body byte for this long: 400
  double body_timeout_s = 120;     // the whole body
  double keep_alive_s = 30;        // idle keep-alive connection
  double write_timeout_s = 60;     // a response write that makes no progress
  double linger_s = 2;             // draining unread input before closing
  size_t max_buffered_bodies = 0;  // request bytes held at once (0: 32 * max_body, at least 256 MiB)
};

// Counters the transport keeps (exported on /metrics).
struct TransportStats {
  std::atomic<uint64_t> connections_total{0};
  std::atomic<int64_t> connections_open{0};
  std::atomic<uint64_t> connections_rejected_total{0};  // 503 at max_connections
  std::atomic<uint64_t> connections_evicted_total{0};   // idle / slow ones closed to make room
  std::atomic<uint64_t> bad_requests_total{0};          // framing errors, timeouts, oversized
};

// Runs on a worker thread for every complete request; must fill res (never throw).
using HttpHandler = std::function<void(HttpRequest& req, HttpResponse& res)>;

class HttpTransport {
 public:
  HttpTransport(const TransportOptions& opt, HttpHandler handler);
  ~HttpTransport();
  HttpTransport(const HttpTransport&) = delete;
  HttpTransport& operator=(const HttpTransport&) = delete;

  // Binds and listens; returns the port. Throws IoError.
  int bind();
  // Serves until stop(); returns once every worker has finished.
  void serve();
  // Thread-safe; serve() returns soon after.
  void stop();
  const TransportStats& stats() const { return stats_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  TransportStats stats_;
};

// The status line's reason phrase.
const char* http_reason(int status);

}  // namespace qleap::server
