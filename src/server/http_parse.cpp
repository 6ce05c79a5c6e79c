#include "server/http_parse.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>

namespace qleap::server {

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = char(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = char(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

bool HttpRequest::has_header(std::string_view name) const {
  for (const auto& [k, v] : headers) {
    if (iequals(k, name)) return true;
  }
  return false;
}

std::string HttpRequest::get_header_value(std::string_view name) const {
  for (const auto& [k, v] : headers) {
    if (iequals(k, name)) return v;
  }
  return {};
}

bool HttpResponse::has_header(std::string_view name) const {
  for (const auto& [k, v] : headers) {
    if (iequals(k, name)) return true;
  }
  return false;
}

namespace {

// RFC 9110 token characters.
bool is_tchar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  switch (c) {
    case '!':
    case '#':
    case '$':
    case '%':
    case '&':
    case '\'':
    case '*':
    case '+':
    case '-':
    case '.':
    case '^':
    case '_':
    case '`':
    case '|':
    case '~':
      return true;
    default:
      return false;
  }
}

bool is_token(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), is_tchar);
}

std::string_view trim_ows(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Next line of buf from pos: [pos, end) without its CRLF / LF; next = start of the following line.
// false when no line end is there yet.
bool next_line(std::string_view buf, size_t pos, std::string_view& line, size_t& next) {
  const size_t lf = buf.find('\n', pos);
  if (lf == std::string_view::npos) return false;
  size_t end = lf;
  if (end > pos && buf[end - 1] == '\r') --end;
  line = buf.substr(pos, end - pos);
  next = lf + 1;
  return true;
}

ParseStatus fail(HttpError& err, int status, std::string msg) {
  err.status = status;
  err.message = std::move(msg);
  return ParseStatus::kError;
}

// Comma-separated list elements of a field value, trimmed, empty ones skipped.
template <class F>
void for_each_element(std::string_view v, F&& f) {
  size_t i = 0;
  while (i <= v.size()) {
    size_t c = v.find(',', i);
    if (c == std::string_view::npos) c = v.size();
    const std::string_view e = trim_ows(v.substr(i, c - i));
    if (!e.empty()) f(e);
    i = c + 1;
  }
}

}  // namespace

bool percent_decode_path(std::string_view in, std::string& out) {
  out.clear();
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out += in[i];
      continue;
    }
    if (i + 2 >= in.size()) return false;
    const int hi = hex_value(in[i + 1]), lo = hex_value(in[i + 2]);
    if (hi < 0 || lo < 0) return false;
    const char c = char(hi * 16 + lo);
    if (c == '\0') return false;
    out += c;
    i += 2;
  }
  return true;
}

ParseStatus parse_request_head(std::string_view buf, RequestHead& head, size_t& consumed, HttpError& err,
                               const HeadLimits& limits) {
  // RFC 9112 2.2: ignore empty lines before the request line.
  size_t pos = 0;
  while (pos < buf.size() && (buf[pos] == '\r' || buf[pos] == '\n')) {
    if (pos >= 64) return fail(err, 400, "malformed request: empty lines before the request line");
    ++pos;
  }
  const size_t start = pos;
  // Garbage (a TLS handshake, binary noise) is refused as soon as the method cannot be a token.
  for (size_t i = start; i < buf.size() && buf[i] != ' '; ++i) {
    if (buf[i] == '\r' || buf[i] == '\n') break;
    if (!is_tchar(buf[i])) return fail(err, 400, "malformed request line");
  }
  std::string_view line;
  size_t next = 0;
  if (!next_line(buf, pos, line, next)) {
    if (buf.size() - start > limits.max_request_line) return fail(err, 414, "request line too long");
    return ParseStatus::kIncomplete;
  }
  if (line.size() > limits.max_request_line) return fail(err, 414, "request line too long");

  // request-line = method SP request-target SP HTTP-version
  RequestHead h;
  const size_t sp1 = line.find(' ');
  const size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp1 == std::string_view::npos || sp2 == std::string_view::npos ||
      line.find(' ', sp2 + 1) != std::string_view::npos) {
    return fail(err, 400, "malformed request line");
  }
  h.method = std::string(line.substr(0, sp1));
  h.target = std::string(line.substr(sp1 + 1, sp2 - sp1 - 1));
  h.version = std::string(line.substr(sp2 + 1));
  if (!is_token(h.method)) return fail(err, 400, "malformed request line: bad method");
  if (h.target.empty()) return fail(err, 400, "malformed request line: empty target");
  for (char c : h.target) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) return fail(err, 400, "malformed request target");
  }
  if (h.version.size() != 8 || h.version.compare(0, 5, "HTTP/") != 0 || h.version[6] != '.' ||
      !std::isdigit(static_cast<unsigned char>(h.version[5])) ||
      !std::isdigit(static_cast<unsigned char>(h.version[7]))) {
    return fail(err, 400, "malformed request line: bad HTTP version");
  }
  if (h.version != "HTTP/1.1" && h.version != "HTTP/1.0") return fail(err, 505, "HTTP version not supported");

  // The whole head must be there before the fields are interpreted.
  size_t end_of_head = std::string_view::npos;
  {
    size_t p = next;
    std::string_view l;
    size_t n = 0;
    size_t fields = 0;
    while (next_line(buf, p, l, n)) {
      if (n - start > limits.max_head) return fail(err, 431, "request header section too large");
      if (l.empty()) {
        end_of_head = n;
        break;
      }
      if (++fields > limits.max_fields) return fail(err, 431, "too many header fields");
      p = n;
    }
    if (end_of_head == std::string_view::npos) {
      if (buf.size() - start > limits.max_head) return fail(err, 431, "request header section too large");
      return ParseStatus::kIncomplete;
    }
  }
  head = std::move(h);
  const bool http10 = head.version == "HTTP/1.0";

  std::string authority;
  std::string_view origin_form = head.target;
  if (head.target == "*") {
    if (head.method != "OPTIONS") return fail(err, 400, "malformed request target");
    origin_form = "*";
  } else if (head.target[0] != '/') {
    // absolute-form: http://authority/path
    const size_t scheme_end = head.target.find("://");
    if (scheme_end == std::string::npos || !(iequals(head.target.substr(0, scheme_end), "http") ||
                                             iequals(head.target.substr(0, scheme_end), "https"))) {
      return fail(err, 400, "malformed request target");
    }
    const size_t a = scheme_end + 3;
    size_t slash = head.target.find_first_of("/?", a);
    authority = head.target.substr(a, slash == std::string::npos ? std::string::npos : slash - a);
    if (authority.empty() || authority.find('@') != std::string::npos)
      return fail(err, 400, "malformed request target");
    origin_form = slash == std::string::npos ? std::string_view("/") : origin_form.substr(slash);
    if (origin_form[0] == '?') return fail(err, 400, "malformed request target");
  }
  const size_t q = origin_form.find('?');
  const std::string_view raw_path = origin_form.substr(0, q);
  if (q != std::string_view::npos) head.query = std::string(origin_form.substr(q + 1));
  if (!percent_decode_path(raw_path, head.path))
    return fail(err, 400, "malformed request target: bad escape");

  // Header fields.
  int n_host = 0;
  bool has_te = false;
  for (size_t p = next;;) {
    std::string_view l;
    size_t n = 0;
    next_line(buf, p, l, n);
    p = n;
    if (l.empty()) break;
    if (l[0] == ' ' || l[0] == '\t') return fail(err, 400, "malformed header: obsolete line folding");
    const size_t colon = l.find(':');
    if (colon == std::string_view::npos || colon == 0) return fail(err, 400, "malformed header field");
    const std::string_view name = l.substr(0, colon);
    if (!is_token(name)) return fail(err, 400, "malformed header field name");
    const std::string_view value = trim_ows(l.substr(colon + 1));
    for (char c : value) {
      const auto u = static_cast<unsigned char>(c);
      if ((u < 0x20 && c != '\t') || u == 0x7f) return fail(err, 400, "malformed header field value");
    }
    head.headers.emplace_back(std::string(name), std::string(value));

    if (iequals(name, "Content-Length")) {
      bool bad = false;
      for_each_element(value, [&](std::string_view e) {
        if (bad) return;
        if (!std::all_of(e.begin(), e.end(), [](char c) { return c >= '0' && c <= '9'; })) {
          bad = true;
          return;
        }
        // 20 digits and more cannot be a length this server takes.
        const uint64_t v = e.size() > 19 ? UINT64_MAX : std::stoull(std::string(e));
        if (head.content_length && *head.content_length != v) bad = true;
        head.content_length = v;
      });
      if (bad || !head.content_length) return fail(err, 400, "invalid Content-Length");
    } else if (iequals(name, "Transfer-Encoding")) {
      if (http10) return fail(err, 400, "Transfer-Encoding in an HTTP/1.0 request");
      std::string_view last;
      int n_codings = 0;
      for_each_element(value, [&](std::string_view e) {
        last = e;
        ++n_codings;
      });
      if (has_te || n_codings != 1 || !iequals(last, "chunked"))
        return fail(err, 501, "unsupported Transfer-Encoding (only chunked is)");
      has_te = true;
      head.chunked = true;
    } else if (iequals(name, "Host")) {
      ++n_host;
      head.host = std::string(value);
    } else if (iequals(name, "Connection")) {
      for_each_element(value, [&](std::string_view e) {
        if (iequals(e, "close")) head.keep_alive = false;
      });
    } else if (iequals(name, "Expect")) {
      if (!iequals(value, "100-continue")) return fail(err, 417, "unsupported Expect");
      head.expect_continue = true;
    }
  }
  if (head.chunked && head.content_length)
    return fail(err, 400, "both Content-Length and Transfer-Encoding: refused");
  if (head.content_length && *head.content_length == UINT64_MAX)
    return fail(err, 413, "request body too large");
  if (n_host > 1) return fail(err, 400, "more than one Host header");
  if (!http10 && n_host == 0 && authority.empty()) return fail(err, 400, "missing Host header");
  if (!authority.empty()) head.host = authority;  // RFC 9112 3.2.2
  if (http10) {
    head.keep_alive = false;
    for (const auto& [k, v] : head.headers) {
      if (!iequals(k, "Connection")) continue;
      for_each_element(v, [&](std::string_view e) {
        if (iequals(e, "keep-alive")) head.keep_alive = true;
      });
    }
  }
  consumed = end_of_head;
  return ParseStatus::kDone;
}

ParseStatus ChunkedDecoder::feed(std::string_view in, size_t& used, std::string& out, HttpError& err) {
  constexpr size_t kMaxLine = 4096;
  constexpr size_t kMaxTrailers = 16384;
  used = 0;
  while (used < in.size() || state_ == State::kDone) {
    switch (state_) {
      case State::kDone:
        return ParseStatus::kDone;
      case State::kData: {
        const size_t n = size_t(std::min<uint64_t>(remaining_, in.size() - used));
        out.append(in.data() + used, n);
        used += n;
        remaining_ -= n;
        if (remaining_ == 0) state_ = State::kDataEnd;
        break;
      }
      case State::kSize:
      case State::kDataEnd:
      case State::kTrailer: {
        const size_t lf = in.find('\n', used);
        const size_t take = lf == std::string_view::npos ? in.size() - used : lf + 1 - used;
        line_.append(in.data() + used, take);
        used += take;
        if (state_ == State::kDataEnd && std::string_view("\r\n").substr(0, line_.size()) != line_)
          return fail(err, 400, "malformed chunked body: missing CRLF after chunk data");
        if (line_.size() > kMaxLine) return fail(err, 400, "malformed chunked body: line too long");
        if (lf == std::string_view::npos) return ParseStatus::kIncomplete;
        line_.pop_back();
        if (!line_.empty() && line_.back() == '\r') line_.pop_back();
        std::string l;
        l.swap(line_);
        if (state_ == State::kDataEnd) {
          if (!l.empty()) return fail(err, 400, "malformed chunked body: missing CRLF after chunk data");
          state_ = State::kSize;
        } else if (state_ == State::kTrailer) {
          trailer_bytes_ += l.size() + 2;
          if (trailer_bytes_ > kMaxTrailers) return fail(err, 431, "chunked trailer section too large");
          if (l.empty()) {
            state_ = State::kDone;
          } else if (l.find(':') == std::string::npos || l[0] == ' ' || l[0] == '\t') {
            return fail(err, 400, "malformed chunked trailer");
          }
        } else {
          // chunk-size [ ; extensions ]
          size_t i = 0;
          uint64_t size = 0;
          while (i < l.size() && hex_value(l[i]) >= 0) {
            if (i >= 15) return fail(err, 413, "request body too large");
            size = size * 16 + uint64_t(hex_value(l[i]));
            ++i;
          }
          if (i == 0) return fail(err, 400, "malformed chunked body: bad chunk size");
          const std::string_view rest = trim_ows(std::string_view(l).substr(i));
          if (!rest.empty() && rest[0] != ';')
            return fail(err, 400, "malformed chunked body: bad chunk size");
          if (size > max_body_ || total_ + size > max_body_) return fail(err, 413, "request body too large");
          total_ += size;
          if (size == 0) {
            state_ = State::kTrailer;
          } else {
            remaining_ = size;
            state_ = State::kData;
          }
        }
        break;
      }
    }
  }
  return state_ == State::kDone ? ParseStatus::kDone : ParseStatus::kIncomplete;
}

}  // namespace qleap::server
