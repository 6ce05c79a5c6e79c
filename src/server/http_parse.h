// HTTP/1.1 request framing as pure functions over bytes (RFC 9112), so that the transport, the unit
// tests and the fuzzer share them: the request head (request line + header fields) and a
// chunked-body decoder. Strict where leniency lets requests be read two ways (request smuggling):
// Content-Length must be digits and agree with itself, Content-Length with Transfer-Encoding is
// refused, obsolete line folding is refused. Bare LF line ends are accepted.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "server/http_types.h"

namespace qleap::server {

struct RequestHead {
  std::string method;
  std::string target;
  std::string path;  // percent-decoded
  std::string query;
  std::string version;  // "HTTP/1.1" or "HTTP/1.0"
  HttpHeaders headers;
  std::string host;  // the Host field, or the authority of an absolute-form target
  bool keep_alive = true;
  bool chunked = false;
  bool expect_continue = false;
  std::optional<uint64_t> content_length;
};

struct HttpError {
  int status = 400;
  std::string message;
};

enum class ParseStatus { kIncomplete, kDone, kError };

struct HeadLimits {
  size_t max_request_line = 8192;  // longer: 414
  size_t max_head = 32768;         // request line + fields; larger: 431
  size_t max_fields = 100;         // more: 431
};

// Parses the request head at the start of buf (leading empty lines are skipped). kDone: head is
// filled and consumed is the number of bytes up to and including the blank line. kIncomplete: more
// bytes are needed (and none of the limits is exceeded yet). kError: err holds the status to answer
// (400, 413, 414, 417, 431, 501, 505) before closing the connection.
ParseStatus parse_request_head(std::string_view buf, RequestHead& head, size_t& consumed, HttpError& err,
                               const HeadLimits& limits = {});

// Decodes a chunked body incrementally. feed() consumes what it can of `in` (used = bytes taken)
// and appends the payload to out; kDone once the last chunk and the trailer section are read.
class ChunkedDecoder {
 public:
  explicit ChunkedDecoder(uint64_t max_body) : max_body_(max_body) {}
  ParseStatus feed(std::string_view in, size_t& used, std::string& out, HttpError& err);

 private:
  enum class State { kSize, kData, kDataEnd, kTrailer, kDone } state_ = State::kSize;
  uint64_t max_body_;
  uint64_t total_ = 0;
  uint64_t remaining_ = 0;  // kData: bytes left in this chunk
  std::string line_;        // the size line / trailer line so far
  size_t trailer_bytes_ = 0;
};

// Percent-decodes a path ("%3A" -> ':'); false on a malformed escape or a decoded NUL.
bool percent_decode_path(std::string_view in, std::string& out);

}  // namespace qleap::server
