#include "server/http_transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "server/http_parse.h"

namespace qleap::server {

using Clock = std::chrono::steady_clock;

const char* http_reason(int s) {
  switch (s) {
    case 100:
      return "Continue";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 204:
      return "No Content";
    case 304:
      return "Not Modified";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 409:
      return "Conflict";
    case 411:
      return "Length Required";
    case 413:
      return "Content Too Large";
    case 414:
      return "URI Too Long";
    case 417:
      return "Expectation Failed";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 503:
      return "Service Unavailable";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return s < 300 ? "OK" : s < 500 ? "Bad Request" : "Internal Server Error";
  }
}

namespace {

std::string http_date() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  const size_t n = std::strftime(buf, sizeof(buf), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  return std::string(buf, n);
}

// Header values come from handlers (some echo request fields): no CR/LF may reach the wire.
std::string header_safe(const std::string& s) {
  std::string out = s;
  for (char& c : out) {
    if (c == '\r' || c == '\n' || c == '\0') c = ' ';
  }
  return out;
}

// Sends everything, waiting up to timeout for each bit of progress. False once the peer is gone.
bool send_all(int fd, const char* p, size_t n, double timeout_s) {
  while (n > 0) {
    const ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (k > 0) {
      p += k;
      n -= size_t(k);
      continue;
    }
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd pfd{fd, POLLOUT, 0};
      const int r = ::poll(&pfd, 1, int(timeout_s * 1000));
      if (r <= 0 || (pfd.revents & (POLLERR | POLLHUP | POLLNVAL))) {
        if (r < 0 && errno == EINTR) continue;
        return false;
      }
      continue;
    }
    return false;
  }
  return true;
}

bool send_all(int fd, const std::string& s, double timeout_s) {
  return send_all(fd, s.data(), s.size(), timeout_s);
}

std::string error_json(const std::string& msg) {
  std::string out = "{\"error\":\"";
  for (char c : msg) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    out += c;
  }
  return out + "\"}";
}

std::string error_answer(int status, const std::string& msg) {
  const std::string body = error_json(msg);
  return fmt::format(
      "HTTP/1.1 {} {}\r\nDate: {}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n"
      "Connection: close\r\n\r\n{}",
      status, http_reason(status), http_date(), body.size(), body);
}

// Threads for requests: grows on demand up to max (one per connection at most), shrinks when idle.
class WorkerPool {
 public:
  explicit WorkerPool(size_t max) : max_(std::max<size_t>(1, max)) {}
  ~WorkerPool() { shutdown(); }

  void submit(std::function<void()> f) {
    std::vector<std::thread> finished;
    {
      std::lock_guard<std::mutex> lk(mu_);
      take_exited(finished);
      tasks_.push_back(std::move(f));
      if (idle_ > 0) {
        // Reserve a waiting thread, so that a burst of requests does not count it twice and start
        // more threads than it needs (every new thread's stack stays in RSS).
        --idle_;
        ++wakeups_;
        cv_.notify_one();
      } else if (threads_.size() - exited_.size() < max_) {
        std::thread t([this] { run(); });
        const auto id = t.get_id();
        threads_.emplace(id, std::move(t));
      }
    }
    for (auto& t : finished) t.join();
  }

  void shutdown() {
    for (;;) {
      std::vector<std::thread> all;
      {
        std::lock_guard<std::mutex> lk(mu_);
        stop_ = true;
        cv_.notify_all();
        for (auto& [id, t] : threads_) all.push_back(std::move(t));
        threads_.clear();
        exited_.clear();
      }
      if (all.empty()) return;
      for (auto& t : all) t.join();
    }
  }

 private:
  static constexpr size_t kKeep = 8;  // threads kept when idle

  void take_exited(std::vector<std::thread>& out) {
    for (const auto& id : exited_) {
      auto it = threads_.find(id);
      if (it == threads_.end()) continue;
      out.push_back(std::move(it->second));
      threads_.erase(it);
    }
    exited_.clear();
  }

  void run() {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      if (!tasks_.empty()) {
        std::function<void()> f = std::move(tasks_.front());
        tasks_.pop_front();
        lk.unlock();
        f();
        f = nullptr;
        lk.lock();
        continue;
      }
      if (stop_) return;
      ++idle_;
      const bool woke = cv_.wait_for(lk, std::chrono::seconds(30), [&] { return stop_ || wakeups_ > 0; });
      if (wakeups_ > 0) {
        --wakeups_;  // reserved by submit(), which took it off idle_
        continue;
      }
      --idle_;
      if (stop_) return;
      if (!woke && threads_.size() - exited_.size() > kKeep) {
        exited_.push_back(std::this_thread::get_id());
        return;
      }
    }
  }

  size_t max_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  std::unordered_map<std::thread::id, std::thread> threads_;
  std::vector<std::thread::id> exited_;
  size_t idle_ = 0;     // threads waiting for work, not yet reserved
  size_t wakeups_ = 0;  // reservations not yet picked up
  bool stop_ = false;
};

struct Conn {
  enum class St { kIdle, kHead, kBody, kBusy, kLinger };
  int fd = -1;
  std::string peer;
  St st = St::kIdle;
  std::string in;  // received, not yet consumed
  RequestHead head;
  std::string body;
  std::optional<ChunkedDecoder> chunked;
  uint64_t reserved = 0;  // of the buffered-bodies budget
  Clock::time_point since;
  Clock::time_point deadline;  // kIdle, kHead, kLinger
  Clock::time_point last_byte;
  Clock::time_point body_deadline;
  uint64_t served = 0;
  std::string out;  // answers the reactor writes (errors, 100 Continue)
  size_t out_off = 0;
  bool shut_wr = false;
  size_t drained = 0;
  uint32_t events = 0;
};

}  // namespace

struct HttpTransport::Impl {
  Impl(const TransportOptions& o, HttpHandler h, TransportStats& s)
      : opt(o), handler(std::move(h)), stats(s), pool(size_t(std::max(1, o.max_connections))) {}

  TransportOptions opt;
  HttpHandler handler;
  TransportStats& stats;
  WorkerPool pool;
  int listen_fd = -1, ep = -1, wake_fd = -1;
  std::atomic<bool> stopping{false};
  std::unordered_map<int, std::unique_ptr<Conn>> conns;  // reactor thread only
  int n_linger = 0;
  uint64_t buffered = 0;
  uint64_t max_buffered = 0;
  bool accept_paused = false;
  Clock::time_point accept_resume;

  std::mutex ret_mu;
  std::vector<std::pair<Conn*, bool>> returned;  // from workers: (connection, keep alive)

  static constexpr int kMaxLinger = 512;
  static constexpr size_t kMaxDrain = 64u << 20;
  static constexpr size_t kReadChunk = 65536;

  Clock::time_point now() const { return Clock::now(); }
  static Clock::duration secs(double s) {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
  }

  void set_events(Conn& c, uint32_t ev) {
    if (ev == c.events) return;
    epoll_event e{};
    e.events = ev;
    e.data.fd = c.fd;
    if (c.events == 0) {
      epoll_ctl(ep, EPOLL_CTL_ADD, c.fd, &e);
    } else if (ev == 0) {
      epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr);
    } else {
      epoll_ctl(ep, EPOLL_CTL_MOD, c.fd, &e);
    }
    c.events = ev;
  }

  void release_reservation(Conn& c) {
    buffered -= c.reserved;
    c.reserved = 0;
  }

  void close_conn(int fd) {
    auto it = conns.find(fd);
    if (it == conns.end()) return;
    Conn& c = *it->second;
    if (c.events) epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
    if (c.st == Conn::St::kLinger) --n_linger;
    release_reservation(c);
    ::close(fd);
    --stats.connections_open;
    conns.erase(it);
  }

  // Writes what the reactor owes the client; true once all is out.
  bool flush_out(Conn& c) {
    while (c.out_off < c.out.size()) {
      const ssize_t k =
          ::send(c.fd, c.out.data() + c.out_off, c.out.size() - c.out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (k > 0) {
        c.out_off += size_t(k);
      } else if (k < 0 && errno == EINTR) {
        continue;
      } else if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        return false;
      } else {
        c.out.clear();
        c.out_off = 0;
        return true;  // the peer is gone: nothing more to write
      }
    }
    c.out.clear();
    c.out_off = 0;
    return true;
  }

  // Answers (optionally) and closes after draining what the client still sends, so that the
  // answer is read rather than lost to a reset.
  void start_close(Conn& c, std::string answer) {
    release_reservation(c);
    c.in.clear();
    c.in.shrink_to_fit();
    c.body.clear();
    c.body.shrink_to_fit();
    c.chunked.reset();
    c.out += answer;
    if (n_linger >= kMaxLinger) {
      flush_out(c);
      close_conn(c.fd);
      return;
    }
    if (c.st != Conn::St::kLinger) ++n_linger;
    c.st = Conn::St::kLinger;
    c.since = now();
    c.deadline = c.since + secs(opt.linger_s);
    if (flush_out(c)) {
      ::shutdown(c.fd, SHUT_WR);
      c.shut_wr = true;
      set_events(c, EPOLLIN | EPOLLRDHUP);
    } else {
      set_events(c, EPOLLIN | EPOLLOUT | EPOLLRDHUP);
    }
  }

  void answer_error(Conn& c, int status, const std::string& msg) {
    ++stats.bad_requests_total;
    start_close(c, error_answer(status, msg));
  }

  // A connection that looks idle may already hold a whole request in its socket buffer, not yet read
  // because this loop has not come to its event (a loaded machine): read those before choosing whom
  // to evict, so that a client which has sent its request is never taken for an idle one.
  void take_waiting_requests(const Conn* except) {
    std::vector<int> fds;
    for (auto& [fd, cp] : conns) {
      if (cp.get() != except && cp->st == Conn::St::kIdle && cp->in.empty()) fds.push_back(fd);
    }
    for (int fd : fds) on_event(fd, EPOLLIN);
  }

  bool evict_one(const Conn* except) {
    Conn* best = nullptr;
    auto rank = [](const Conn& c) {
      if (c.st == Conn::St::kIdle && c.in.empty()) return 0;
      if (c.st == Conn::St::kIdle || c.st == Conn::St::kHead) return 1;
      if (c.st == Conn::St::kBody) return 2;
      return 3;
    };
    for (auto& [fd, cp] : conns) {
      const int r = rank(*cp);
      if (r == 3 || cp.get() == except) continue;
      if (!best || r < rank(*best) || (r == rank(*best) && cp->since < best->since)) best = cp.get();
    }
    if (!best) return false;
    ++stats.connections_evicted_total;
    if (rank(*best) == 0) {
      start_close(*best, "");
    } else {
      answer_error(*best, 503, "server at its connection limit: request not completed in time");
    }
    return true;
  }

  void accept_all() {
    for (;;) {
      sockaddr_storage ss{};
      socklen_t len = sizeof(ss);
      const int fd =
          ::accept4(listen_fd, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
          // Out of descriptors: stop accepting for a moment rather than spin.
          epoll_ctl(ep, EPOLL_CTL_DEL, listen_fd, nullptr);
          accept_paused = true;
          accept_resume = now() + std::chrono::milliseconds(100);
        }
        return;
      }
      ++stats.connections_total;
      ++stats.connections_open;
      const int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      auto c = std::make_unique<Conn>();
      c->fd = fd;
      char host[INET6_ADDRSTRLEN] = {};
      if (ss.ss_family == AF_INET) {
        inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr, host, sizeof(host));
      } else if (ss.ss_family == AF_INET6) {
        inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr, host, sizeof(host));
      }
      c->peer = host;
      c->since = now();
      c->deadline = c->since + secs(opt.header_timeout_s);
      Conn& ref = *c;
      conns.emplace(fd, std::move(c));
      if (int(conns.size()) - n_linger > opt.max_connections) take_waiting_requests(&ref);
      if (int(conns.size()) - n_linger > opt.max_connections && !evict_one(&ref)) {
        ++stats.connections_rejected_total;
        answer_error(ref, 503, "server busy: too many connections, retry later");
        continue;
      }
      set_events(ref, EPOLLIN | EPOLLRDHUP);
    }
  }

  void dispatch(Conn& c) {
    auto req = std::make_shared<HttpRequest>();
    req->method = std::move(c.head.method);
    req->target = std::move(c.head.target);
    req->path = std::move(c.head.path);
    req->query = std::move(c.head.query);
    req->version = std::move(c.head.version);
    req->headers = std::move(c.head.headers);
    if (!c.head.host.empty() && req->get_header_value("Host") != c.head.host) {
      std::erase_if(req->headers, [](const auto& h) { return iequals(h.first, "Host"); });
      req->headers.emplace_back("Host", c.head.host);
    }
    req->body = std::move(c.body);
    req->remote_addr = c.peer;
    c.body = std::string();
    c.chunked.reset();
    const bool keep = c.head.keep_alive;
    const bool http10 = req->version == "HTTP/1.0";
    std::string pending = c.out.substr(c.out_off);  // an unsent "100 Continue"
    c.out.clear();
    c.out_off = 0;
    set_events(c, 0);
    c.st = Conn::St::kBusy;
    ++c.served;
    Conn* cp = &c;
    pool.submit([this, cp, req, keep, http10, pending = std::move(pending)] {
      bool ok = pending.empty() || send_all(cp->fd, pending, opt.write_timeout_s);
      bool keep_alive = keep && !stopping.load();
      if (ok) {
        HttpResponse res;
        try {
          handler(*req, res);
        } catch (const std::exception& e) {
          res.provider = nullptr;
          res.release(false);
          res.status = 500;
          res.set_content(error_json(e.what()), "application/json; charset=utf-8");
        }
        ok = write_response(cp->fd, *req, res, keep_alive, http10);
      }
      {
        std::lock_guard<std::mutex> lk(ret_mu);
        returned.emplace_back(cp, ok && keep_alive);
      }
      const uint64_t one = 1;
      [[maybe_unused]] const ssize_t w = ::write(wake_fd, &one, sizeof(one));
    });
  }

  bool write_response(int fd, const HttpRequest& req, HttpResponse& res, bool& keep_alive, bool http10) {
    const int status = res.status < 0 ? 200 : res.status;
    const bool head_only = req.method == "HEAD";
    const bool streaming = bool(res.provider);
    const bool no_body = head_only || status == 204 || status == 304;
    const bool chunked = streaming && !http10;
    if (streaming && http10) keep_alive = false;  // the end of the body is the end of the connection
    std::string h = fmt::format("HTTP/1.1 {} {}\r\nDate: {}\r\n", status, http_reason(status), http_date());
    if (!res.content_type.empty()) h += "Content-Type: " + header_safe(res.content_type) + "\r\n";
    for (const auto& [k, v] : res.headers) h += header_safe(k) + ": " + header_safe(v) + "\r\n";
    if (!streaming && status != 204 && status != 304)
      h += fmt::format("Content-Length: {}\r\n", res.body.size());
    if (chunked) h += "Transfer-Encoding: chunked\r\n";
    h += keep_alive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n";
    const double to = opt.write_timeout_s;
    if (!streaming) {
      if (!no_body) h += res.body;
      return send_all(fd, h, to);
    }
    if (!send_all(fd, h, to)) {
      res.release(false);
      return false;
    }
    if (no_body) {
      res.release(false);
      return true;
    }
    bool ok = true, done = false;
    DataSink sink;
    sink.write = [&](const char* d, size_t n) {
      if (!ok) return false;
      if (n == 0) return true;
      if (chunked) {
        std::string frame = fmt::format("{:x}\r\n", n);
        frame.append(d, n);
        frame += "\r\n";
        ok = send_all(fd, frame, to);
      } else {
        ok = send_all(fd, d, n, to);
      }
      return ok;
    };
    sink.done = [&] { done = true; };
    while (ok && !done) {
      if (stopping.load()) ok = false;
      if (ok && !res.provider(0, sink)) ok = false;
    }
    if (ok && chunked) ok = send_all(fd, std::string("0\r\n\r\n"), to);
    res.release(ok && done);
    if (!chunked) keep_alive = false;
    return ok && done;
  }

  // Advances a connection's request as far as the buffered bytes allow.
  void process(Conn& c) {
    for (;;) {
      if (c.st == Conn::St::kIdle || c.st == Conn::St::kHead) {
        if (c.in.empty()) return;
        if (c.st == Conn::St::kIdle) {
          c.st = Conn::St::kHead;
          c.since = now();
          c.deadline = c.since + secs(opt.header_timeout_s);
        }
        size_t used = 0;
        HttpError err;
        const ParseStatus ps = parse_request_head(c.in, c.head, used, err);
        if (ps == ParseStatus::kIncomplete) return;
        if (ps == ParseStatus::kError) return answer_error(c, err.status, err.message);
        c.in.erase(0, used);
        const uint64_t want = c.head.chunked ? uint64_t(opt.max_body) : c.head.content_length.value_or(0);
        if (c.head.content_length && *c.head.content_length > opt.max_body) {
          return answer_error(c, 413, fmt::format("request body too large (limit {} bytes)", opt.max_body));
        }
        if (want == 0) return dispatch(c);
        if (buffered + want > max_buffered) {
          return answer_error(c, 503, "server busy: too many request bodies in flight, retry later");
        }
        buffered += want;
        c.reserved = want;
        c.body.clear();
        if (c.head.chunked) c.chunked.emplace(opt.max_body);
        c.st = Conn::St::kBody;
        c.last_byte = now();
        c.body_deadline = c.last_byte + secs(opt.body_timeout_s);
        if (c.head.expect_continue && c.in.empty()) {
          c.out += "HTTP/1.1 100 Continue\r\n\r\n";
          if (!flush_out(c)) set_events(c, EPOLLIN | EPOLLOUT | EPOLLRDHUP);
        }
      }
      if (c.st == Conn::St::kBody) {
        if (c.chunked) {
          size_t used = 0;
          HttpError err;
          const ParseStatus ps = c.chunked->feed(c.in, used, c.body, err);
          c.in.erase(0, used);
          if (ps == ParseStatus::kError) return answer_error(c, err.status, err.message);
          if (ps == ParseStatus::kIncomplete) return;
          return dispatch(c);
        }
        const uint64_t need = *c.head.content_length - c.body.size();
        const size_t take = size_t(std::min<uint64_t>(need, c.in.size()));
        c.body.append(c.in, 0, take);
        c.in.erase(0, take);
        if (c.body.size() < *c.head.content_length) return;
        return dispatch(c);
      }
      return;
    }
  }

  void on_event(int fd, uint32_t ev) {
    auto it = conns.find(fd);
    if (it == conns.end()) return;
    Conn& c = *it->second;
    if (c.st == Conn::St::kBusy) return;
    if ((ev & EPOLLOUT) && !c.out.empty()) {
      if (flush_out(c)) {
        if (c.st == Conn::St::kLinger && !c.shut_wr) {
          ::shutdown(c.fd, SHUT_WR);
          c.shut_wr = true;
        }
        set_events(c, EPOLLIN | EPOLLRDHUP);
      }
    }
    if (!(ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) return;
    char buf[kReadChunk];
    for (int rounds = 0; rounds < 16; ++rounds) {
      const ssize_t k = ::recv(c.fd, buf, sizeof(buf), 0);
      if (k > 0) {
        if (c.st == Conn::St::kLinger) {
          c.drained += size_t(k);
          if (c.drained > kMaxDrain) return close_conn(fd);
          continue;
        }
        c.in.append(buf, size_t(k));
        if (c.st == Conn::St::kBody) c.last_byte = now();
        process(c);
        if (conns.find(fd) == conns.end() || c.st == Conn::St::kBusy) return;
        continue;
      }
      if (k < 0 && errno == EINTR) continue;
      if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      // EOF or error.
      if (c.st == Conn::St::kLinger || c.st == Conn::St::kIdle) return close_conn(fd);
      if (k < 0) return close_conn(fd);
      if (c.st == Conn::St::kHead) return answer_error(c, 400, "incomplete request head");
      if (c.st == Conn::St::kBody) {
        return answer_error(c, 400,
                            c.chunked
                                ? "incomplete chunked request body"
                                : fmt::format("request body shorter than Content-Length ({} of {} bytes)",
                                              c.body.size(), *c.head.content_length));
      }
      return;
    }
  }

  void on_returned() {
    std::vector<std::pair<Conn*, bool>> back;
    {
      std::lock_guard<std::mutex> lk(ret_mu);
      back.swap(returned);
    }
    for (auto& [c, keep] : back) {
      release_reservation(*c);
      if (stopping.load()) {
        close_conn(c->fd);
        continue;
      }
      c->head = RequestHead{};
      if (!keep) {
        c->st = Conn::St::kIdle;
        start_close(*c, "");
        continue;
      }
      c->st = Conn::St::kIdle;
      c->since = now();
      c->deadline = c->since + secs(opt.keep_alive_s);
      set_events(*c, EPOLLIN | EPOLLRDHUP);
      process(*c);  // a pipelined request already buffered
    }
  }

  void check_deadlines() {
    const auto t = now();
    std::vector<int> fds;
    for (auto& [fd, c] : conns) {
      switch (c->st) {
        case Conn::St::kIdle:
        case Conn::St::kHead:
        case Conn::St::kLinger:
          if (t >= c->deadline) fds.push_back(fd);
          break;
        case Conn::St::kBody:
          if (t - c->last_byte >= secs(opt.body_idle_s) || t >= c->body_deadline) fds.push_back(fd);
          break;
        case Conn::St::kBusy:
          break;
      }
    }
    for (int fd : fds) {
      auto it = conns.find(fd);
      if (it == conns.end()) continue;
      Conn& c = *it->second;
      if (c.st == Conn::St::kLinger || (c.st == Conn::St::kIdle && c.in.empty())) {
        close_conn(fd);
      } else if (c.st == Conn::St::kHead || c.st == Conn::St::kIdle) {
        answer_error(c, 408, "request head not received in time");
      } else if (c.st == Conn::St::kBody) {
        answer_error(c, 400,
                     c.chunked
                         ? "incomplete chunked request body (timed out)"
                         : fmt::format("request body shorter than Content-Length ({} of {} bytes; timed out)",
                                       c.body.size(), *c.head.content_length));
      }
    }
  }

  void loop() {
    epoll_event evs[256];
    auto last_scan = now();
    while (!stopping.load()) {
      const int n = epoll_wait(ep, evs, 256, 100);
      if (n < 0 && errno != EINTR) break;
      for (int i = 0; i < n; ++i) {
        const int fd = evs[i].data.fd;
        if (fd == listen_fd) {
          accept_all();
        } else if (fd == wake_fd) {
          uint64_t v;
          [[maybe_unused]] const ssize_t r = ::read(wake_fd, &v, sizeof(v));
          on_returned();
        } else {
          on_event(fd, evs[i].events);
        }
      }
      const auto t = now();
      if (accept_paused && t >= accept_resume) {
        epoll_event e{};
        e.events = EPOLLIN;
        e.data.fd = listen_fd;
        epoll_ctl(ep, EPOLL_CTL_ADD, listen_fd, &e);
        accept_paused = false;
      }
      if (t - last_scan >= std::chrono::milliseconds(100)) {
        last_scan = t;
        check_deadlines();
      }
    }
  }
};

HttpTransport::HttpTransport(const TransportOptions& opt, HttpHandler handler) {
  TransportOptions o = opt;
  // Every connection needs a descriptor: take the hard limit, and keep room for model files.
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    if (rl.rlim_cur < rl.rlim_max) {
      rlimit want = rl;
      want.rlim_cur = std::min<rlim_t>(rl.rlim_max, 1u << 16);
      if (setrlimit(RLIMIT_NOFILE, &want) == 0) rl = want;
    }
    const int64_t room = int64_t(rl.rlim_cur) - 128;
    o.max_connections = int(std::max<int64_t>(16, std::min<int64_t>(o.max_connections, room)));
  }
  impl_ = std::make_unique<Impl>(o, std::move(handler), stats_);
  impl_->max_buffered =
      o.max_buffered_bodies ? o.max_buffered_bodies : std::max<uint64_t>(256ull << 20, 32ull * o.max_body);
}

HttpTransport::~HttpTransport() {
  stop();
  impl_->pool.shutdown();
  for (auto& [fd, c] : impl_->conns) ::close(fd);
  impl_->conns.clear();
  if (impl_->listen_fd >= 0) ::close(impl_->listen_fd);
  if (impl_->ep >= 0) ::close(impl_->ep);
  if (impl_->wake_fd >= 0) ::close(impl_->wake_fd);
}

int HttpTransport::bind() {
  Impl& m = *impl_;
  std::string host = m.opt.host;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(m.opt.port);
  if (getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &res) != 0 || !res) {
    throw IoError(fmt::format("cannot bind {}:{}: unknown address", m.opt.host, m.opt.port));
  }
  int fd = -1;
  int last_errno = 0;
  for (addrinfo* a = res; a; a = a->ai_next) {
    fd = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, m.opt.backlog) == 0) break;
    last_errno = errno;
    ::close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0) {
    throw IoError(fmt::format("cannot bind {}:{}: {}", m.opt.host, m.opt.port,
                              last_errno ? std::strerror(last_errno) : "address not available"));
  }
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  const int bound = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                             : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  m.listen_fd = fd;
  m.ep = epoll_create1(EPOLL_CLOEXEC);
  m.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (m.ep < 0 || m.wake_fd < 0) throw IoError("cannot create the server's event loop");
  epoll_event e{};
  e.events = EPOLLIN;
  e.data.fd = fd;
  epoll_ctl(m.ep, EPOLL_CTL_ADD, fd, &e);
  e.data.fd = m.wake_fd;
  epoll_ctl(m.ep, EPOLL_CTL_ADD, m.wake_fd, &e);
  return bound;
}

void HttpTransport::serve() {
  Impl& m = *impl_;
  if (m.listen_fd < 0) bind();
  m.loop();
  // Stopping: no new connections; running requests see their sockets shut and end.
  ::close(m.listen_fd);
  m.listen_fd = -1;
  std::vector<int> idle;
  for (auto& [fd, c] : m.conns) {
    if (c->st == Conn::St::kBusy) {
      ::shutdown(fd, SHUT_RDWR);
    } else {
      idle.push_back(fd);
    }
  }
  for (int fd : idle) m.close_conn(fd);
  m.pool.shutdown();
  m.on_returned();
  std::vector<int> rest;
  for (auto& [fd, c] : m.conns) rest.push_back(fd);
  for (int fd : rest) m.close_conn(fd);
}

void HttpTransport::stop() {
  if (!impl_) return;
  impl_->stopping = true;
  if (impl_->wake_fd >= 0) {
    const uint64_t one = 1;
    [[maybe_unused]] const ssize_t w = ::write(impl_->wake_fd, &one, sizeof(one));
  }
}

}  // namespace qleap::server
